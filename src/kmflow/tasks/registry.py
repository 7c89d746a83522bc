"""Tasks: load, register and promote models in the registry."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from kmflow.core.model import Model, ModelRecord
from kmflow.jobs.palette import Evaluation, Palette
from kmflow.params import TrainParams
from kmflow.tasks._common import open_registry, retry_on_transient_io, run_logger
from kmflow.tasks.report import palette_sample_files

__all__ = [
    "find_champion_task",
    "find_run_key_task",
    "load_model_task",
    "promote_model_task",
    "register_model_task",
]


@task(
    name="load-model",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def load_model_task(name: str, version: int | None = None) -> Model:
    """A registered model with its centers; ``version=None`` means the champion."""
    model = open_registry().load(name, "champion" if version is None else version)
    run_logger().info(
        "loaded %s version %d (k=%d)", name, model.record.version, model.record.n_clusters
    )
    return model


# Idempotent under retry: the run key (flow run id) makes a second attempt return the version
# the first one published; model.json is written last, so a crash leaves nothing visible.
@task(
    name="register-model",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def register_model_task(
    params: TrainParams,
    palette: Palette,
    evaluation: Evaluation,
    fingerprint: str,
    parent: int | None = None,
    promotion: dict[str, Any] | None = None,
    reference: Evaluation | None = None,
) -> ModelRecord:
    """Register the fitted palette with its evaluation and reference statistics.

    The run key is ``params.idempotency_key`` if set, else the flow run id: a retry (or a
    second run with the same key) returns the version already registered.
    ``promotion`` (the decision and its reason) is stored with the metrics. The drift
    reference comes from ``reference`` (the palette measured on all of its training data)
    when given, else from ``evaluation``.
    """
    run_id = flow_run.get_id()
    run_key = params.idempotency_key or (f"{run_id}:register" if run_id else None)
    record = open_registry().register(
        params.model,
        palette.centers,
        init="warm-start" if params.init == "warm-start" else params.init,
        seed=palette.seed,
        n_iter=palette.n_iter,
        converged=palette.converged,
        inertia=palette.inertia,
        fingerprint=fingerprint,
        kind="palette",
        preprocessing=palette.preprocessing().to_json(),
        params={
            **params.model_dump(mode="json"),
            "n_pixels": palette.n_pixels,
            "n_colors": palette.n_colors,
            "fit_seconds": palette.fit_seconds,
        },
        metrics={
            **evaluation.metrics,
            "part": evaluation.part,
            "sizes": evaluation.sizes,
            "promotion": promotion or {},
        },
        reference=(reference or evaluation).reference_statistics(),
        files=palette_sample_files(params),
        parent=parent,
        run_key=run_key,
    )
    run_logger().info("registered %s version %d", record.name, record.version)
    return record


@task(
    name="promote-model",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def promote_model_task(name: str, version: int) -> ModelRecord:
    """Make ``version`` the champion (atomic pointer replacement)."""
    record = open_registry().promote(name, version)
    run_logger().info("promoted %s version %d to champion", name, version)
    return record


@task(
    name="find-champion",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def find_champion_task(name: str) -> Model | None:
    """The champion of ``name`` with its centers, or ``None`` if it has none yet."""
    registry = open_registry()
    if name not in registry.names():  # a model's first version has no champion to beat
        return None
    record = registry.champion(name)
    return None if record is None else registry.load(name, record.version)


@task(name="find-run-key", cache_policy=NO_CACHE)
def find_run_key_task(name: str, run_key: str) -> ModelRecord | None:
    """The version an earlier run with this idempotency key registered, if any."""
    registry = open_registry()
    if name not in registry.names():
        return None
    return registry.find_run_key(name, run_key)
