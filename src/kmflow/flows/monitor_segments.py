"""Flow ``monitor-segments``: check new records for drift against a segment model's champion.

The records counterpart of :mod:`kmflow.flows.monitor`: the same statistics (occupancy PSI
and JS distance, the distance ratio) plus per-feature PSI and Wasserstein
(:mod:`kmflow.jobs.segments.drift`), the same report files and the same event
(:data:`kmflow.flows.monitor.DRIFT_EVENT`). The event's resource is
``kmflow.records.<model>``; the ``kmflow-segment`` deployment is triggered by it and trains a
challenger on the champion's training tables plus the batch, promoted only if it is not worse
(:mod:`kmflow.core.promotion`).

An image model (``kmflow cluster-images``) is checked by the same flow: the batch is a set of
new images, read as the model's training images were, and the statistics are computed on
their features (its stored chain). Its event's resource is ``kmflow.image-clusters.<model>``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from kmflow.cluster.session import cluster_session
from kmflow.config import get_settings
from kmflow.core.jsonable import json_ready
from kmflow.errors import InvalidInputError
from kmflow.flows._report import Cell, link, publish_metrics, publish_report, timings_table
from kmflow.flows.monitor import announce_drift
from kmflow.flows.results import SegmentMonitorResult
from kmflow.jobs.segments.drift import RecordsDrift, check_records
from kmflow.params import SegmentMonitorParams
from kmflow.storage.fs import storage_options_for
from kmflow.storage.tables import read_table
from kmflow.tasks.drift import drift_log_entry, log_drift_task, save_drift_report_task
from kmflow.tasks.registry import load_model_task

__all__ = ["monitor_segments_flow", "records_resource_id"]


def records_resource_id(model: str, kind: str = "segments") -> str:
    """The Prefect resource id of a model's data: ``kmflow.records.<model>`` for a segment
    model, ``kmflow.image-clusters.<model>`` for an image model (which no segment run
    is triggered by)."""
    prefix = "kmflow.image-clusters." if kind == "images" else "kmflow.records."
    return prefix + re.sub(r"[^A-Za-z0-9._-]+", "-", model)


@task(name="check-records-drift", cache_policy=NO_CACHE)
def check_records_task(model: Any, params: SegmentMonitorParams) -> tuple[str, RecordsDrift]:
    """The batch's fingerprint and its drift against the champion."""
    if model.record.kind == "images":
        from kmflow.jobs.image_clusters.inputs import load_images
        from kmflow.jobs.image_clusters.job import input_params

        images = load_images(input_params(model.record, list(params.source)), optional_labels=True)
        return images.fingerprint, check_records(model, images.rows(), params.thresholds)
    options = storage_options_for(params.source[0], get_settings().storage)
    table = read_table(params.source, storage_options=options)
    return table.fingerprint, check_records(model, table, params.thresholds)


@flow(name="monitor-segments", log_prints=True, validate_parameters=True)
def monitor_segments_flow(params: SegmentMonitorParams) -> SegmentMonitorResult:
    """Check a batch of new records against the champion; emit the drift event on drift."""
    t0 = time.perf_counter()
    with cluster_session(paths=[*params.source, params.reports]):
        champion = load_model_task(params.model)
        if champion.record.kind not in ("segments", "images"):
            raise InvalidInputError(
                f"model {params.model} is a {champion.record.kind!r} model; monitor-segments "
                "checks records against a 'segments' model, or images against an 'images' one"
            )
        batch, drift = check_records_task(champion, params)
    version = champion.record.version
    report = drift.to_dict()
    trained_on = list(champion.record.params.get("source", []))
    retrain_sources = [*trained_on, *[s for s in params.source if s not in trained_on]]
    payload = {
        "model": params.model,
        "champion_version": version,
        "batch_id": batch,
        "sources": retrain_sources,
        "batch": list(params.source),
        "k": str(champion.record.params.get("k", champion.record.n_clusters)),
        **(
            {
                "features": str(champion.record.params.get("features", "")),
                "image_shape": str(champion.record.params.get("image_shape", "")),
            }
            if champion.record.kind == "images"
            else {}
        ),
        "n_rows": drift.n_rows,
        "drifted": drift.drifted,
        "statistics": report["statistics"],
    }
    report_url = save_drift_report_task(
        params.reports, batch, json_ready({**payload, "report": report})
    )
    entry = drift_log_entry(version, batch, report, size=drift.n_rows, report_url=report_url)
    log_drift_task(params.model, json_ready(entry))
    publish_metrics(
        params.model,
        "drift",
        {name: s["value"] for name, s in report["statistics"].items()} | {"drifted": drift.drifted},
    )
    publish_report(
        params.model,
        "drift",
        f"Drift of batch {batch[:12]} against {params.model} version {version}: "
        + ("DRIFTED" if drift.drifted else "no drift"),
        {
            "Statistics": [{"statistic": n, **s} for n, s in report["statistics"].items()],
            "Features": [{"feature": n, **s} for n, s in drift.features.items()],
            "Batch": {"rows": drift.n_rows, "batch id": batch, "report": Cell(link(report_url))},
            "Timings": timings_table({"total": time.perf_counter() - t0}),
        },
    )
    event_id = announce_drift(
        report,
        resource={
            "prefect.resource.id": records_resource_id(params.model, champion.record.kind),
            "prefect.resource.name": params.model,
        },
        payload=json_ready({**payload, "report_url": report_url}),
        what=f"batch {batch[:12]}",
        against=f"{params.model} version {version}",
    )
    return SegmentMonitorResult(
        drifted=drift.drifted,
        batch_id=batch,
        n_rows=drift.n_rows,
        report=report,
        report_url=report_url,
        champion_version=version,
        event_id=event_id,
        retrain_sources=retrain_sources,
    )
