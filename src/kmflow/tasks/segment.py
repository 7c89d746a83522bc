"""Tasks of the records job: prepare, sweep, describe, measure the champion, register."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from kmflow.config import get_settings
from kmflow.core.jsonable import json_ready
from kmflow.core.model import Model, ModelRecord
from kmflow.jobs.segments.job import (
    Described,
    Fitted,
    Prepared,
    describe_segments,
    fit_segments,
    prepare,
)
from kmflow.kernels.sweep import SweepInfo
from kmflow.params import SegmentParams
from kmflow.storage.fs import storage_options_for
from kmflow.tasks._common import (
    ProgressArtifact,
    artifact_key,
    open_registry,
    retry_on_transient_io,
    run_logger,
)
from kmflow.tasks.report import segments_sample_files

__all__ = [
    "PROGRESS_LOGGER",
    "champion_score_task",
    "describe_segments_task",
    "prepare_table_task",
    "register_segments_task",
    "sweep_progress",
    "sweep_task",
]

#: Logger the sweep reports each pass to (``extra={"kmflow_progress": (done, total, text)}``):
#: the CLI draws its progress bar from it.
PROGRESS_LOGGER = "kmflow.progress.sweep"


def _options(url: str) -> dict[str, Any]:
    return storage_options_for(url, get_settings().storage)


@task(
    name="prepare-table",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def prepare_table_task(params: SegmentParams) -> Prepared:
    """Read the table, plan its columns, fit the preprocessing, store the prepared matrix."""
    by = f"flow run {flow_run.get_name()}" if flow_run.get_id() else None
    prepared = prepare(params, storage_options=_options(params.source[0]), by=by)
    log = run_logger()
    for line in prepared.report:
        log.info("%s", line)
    log.info(
        "%d rows -> %d prepared rows x %d features (%s)",
        prepared.n_rows,
        prepared.n_prepared,
        len(prepared.feature_names),
        "reused the stored matrix" if prepared.reused else "stored",
    )
    return prepared


def sweep_progress(model: str, k: str, ks: list[int]) -> tuple[ProgressArtifact, Any]:
    """A progress artifact of a sweep over `ks` and the sweep callback that updates it (and
    logs each pass to :data:`PROGRESS_LOGGER`, which the CLI draws its bar from)."""
    progress = ProgressArtifact(artifact_key(model, "sweep"), f"Sweep k={k} for {model}")
    reporter = logging.getLogger(PROGRESS_LOGGER)
    finished: set[int] = set()
    active_before: set[int] = set(ks)

    def callback(info: SweepInfo) -> None:
        if info.stage == "lloyd":
            finished.update(active_before - set(info.active))
            active_before.intersection_update(info.active)
        elif info.stage in ("moments", "spread"):
            finished.update(ks)
        text = f"pass {info.passes} ({info.stage}), {len(finished)}/{len(ks)} k done"
        progress.update(len(finished), len(ks))
        reporter.info(text, extra={"kmflow_progress": (len(finished), len(ks), text)})

    return progress, callback


@task(name="sweep-k", cache_policy=NO_CACHE)
def sweep_task(prepared: Prepared, params: SegmentParams) -> Fitted:
    """Fit every k of the sweep in shared passes, choose k by the rule, evaluate it."""
    progress, callback = sweep_progress(params.model, params.k, params.ks)
    fitted = fit_segments(prepared, params, callback=callback)
    progress.done()
    run_logger().info("sweep over k=%s: %s", params.k, fitted.choice.describe())
    return fitted


@task(name="describe-segments", cache_policy=NO_CACHE)
def describe_segments_task(
    prepared: Prepared, params: SegmentParams, centers: list[list[float]]
) -> Described:
    """Labels, segments.csv, profiles and the per-segment classifiers."""
    described = describe_segments(prepared, params, np.asarray(centers), out=params.out)
    run_logger().info("segment sizes: %s", described.sizes)
    return described


@task(name="champion-score", cache_policy=NO_CACHE)
def champion_score_task(champion: Model, prepared: Prepared) -> float:
    """The champion's Davies-Bouldin index on this table, through its own preprocessing.

    Inertias of differently scaled features are not comparable; the Davies-Bouldin index
    (a ratio of distances) is scale-free. NaN when the champion cannot read the table (it
    was trained on other columns).
    """
    from kmflow.errors import InvalidInputError
    from kmflow.kernels.metrics import internal_metrics
    from kmflow.storage.tables import read_table

    if champion.record.kind != "segments":
        return math.nan
    table = read_table(prepared.files, storage_options=_options(prepared.files[0]))
    try:
        X = champion.transform(table)
        return float(internal_metrics(X, champion.centers, undefined="nan").davies_bouldin)
    except InvalidInputError as exc:
        run_logger().warning("champion cannot be measured on this table: %s", exc)
        return math.nan


def reference_statistics(X: Any, centers: np.ndarray, names: list[str]) -> dict[str, Any]:
    """What drift checks of later batches compare with: occupancy, mean squared distance and
    a histogram of every feature (column of `X`, named `names`), over every row.

    Shared by the segment and image-clustering jobs (their features: prepared columns, or
    the images' fitted feature chain)."""
    from kmflow.kernels.drift import batch_statistics
    from kmflow.kernels.metrics import feature_histograms

    stats = batch_statistics(X, centers)
    # 10 bins, as PSI is usually read (deciles): its sampling noise, about
    # (bins - 1) * (1 / n_batch + 1 / n_reference), stays below the threshold for a few
    # hundred rows.
    edges, counts = feature_histograms(X, bins=10)
    return {
        "part": "all",
        "n_rows": int(X.shape[0]),
        "cluster_fractions": (stats.cluster_weights / stats.cluster_weights.sum()).tolist(),
        "mean_sqdist": float(stats.mean_sqdist),
        "feature_histograms": {
            "names": list(names),
            "edges": edges.tolist(),
            "counts": counts.tolist(),
        },
    }


@task(
    name="register-segments",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def register_segments_task(
    params: SegmentParams,
    prepared: Prepared,
    fitted: Fitted,
    described: Described,
    promotion: dict[str, Any],
) -> ModelRecord:
    """Register the segmentation: centers, preprocessing, classifiers, metrics, reference."""
    run_id = flow_run.get_id()
    prep = prepared.preprocessing
    models = described.segment_models
    metrics: dict[str, Any] = {
        **fitted.metrics,
        "sweep": fitted.sweep,
        "sizes": described.sizes,
        "external": described.external,
        "segment_models": models.scores if models else None,
        "classes": models.classes if models else None,
        "promotion": promotion,
    }
    record = open_registry().register(
        params.model,
        fitted.centers,
        init="k-means||",
        seed=fitted.seed,
        n_iter=fitted.n_iter,
        converged=fitted.converged,
        inertia=fitted.inertia,
        fingerprint=prepared.table_fingerprint,
        kind="segments",
        preprocessing=prep.to_json(),
        arrays=prep.arrays(),
        files={**(models.files if models else {}), **segments_sample_files(prepared, params)},
        params={**params.model_dump(mode="json"), "row_store": prepared.store},
        metrics=json_ready(metrics),
        reference=reference_statistics(
            prepared.open().rows().astype(np.float64), fitted.centers, prepared.feature_names
        ),
        run_key=f"{run_id}:register" if run_id else None,
    )
    run_logger().info("registered %s version %d", record.name, record.version)
    return record
