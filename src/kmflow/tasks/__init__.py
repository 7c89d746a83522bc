"""Prefect tasks: thin wrappers over kmflow's library code.

Each task calls one library step (:mod:`kmflow.jobs.palette`, :mod:`kmflow.storage`), logs with
Prefect's run logger and returns something small and picklable: parameter models, metric
dicts, a :class:`~kmflow.jobs.palette.Palette` (k centers), a
:class:`~kmflow.core.model.ModelRecord`. Never a Dask array, a client or an open store. Tasks find
the flow run's Dask cluster as Dask's default client (see :mod:`kmflow.cluster.session`).

Retries only where I/O can fail transiently (:func:`~kmflow.tasks._common.retry_on_transient_io`);
every cache policy is explicit; every task is idempotent under retry.
"""

from kmflow.tasks.apply import apply_palette_task, quantize_per_image_task
from kmflow.tasks.drift import check_drift_task, save_drift_report_task
from kmflow.tasks.evaluate import evaluate_palette_task
from kmflow.tasks.ingest import ingest_images
from kmflow.tasks.registry import (
    find_champion_task,
    load_model_task,
    promote_model_task,
    register_model_task,
)
from kmflow.tasks.train import fit_palette_task, training_fingerprint_task

__all__ = [
    "apply_palette_task",
    "check_drift_task",
    "evaluate_palette_task",
    "find_champion_task",
    "fit_palette_task",
    "ingest_images",
    "load_model_task",
    "promote_model_task",
    "quantize_per_image_task",
    "register_model_task",
    "save_drift_report_task",
    "training_fingerprint_task",
]
