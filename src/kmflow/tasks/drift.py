"""Tasks: check a batch for drift against the champion, and save the report."""

from __future__ import annotations

import json
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from kmflow.config import get_settings
from kmflow.core.model import Model
from kmflow.jobs.palette import batch_drift, palette_from_model
from kmflow.kernels.drift import DriftThresholds
from kmflow.storage.fs import join_url, storage_options_for, write_bytes_atomic
from kmflow.storage.pixelstore import ImageRecord
from kmflow.tasks._common import open_registry, open_store, retry_on_transient_io, run_logger

__all__ = ["check_drift_task", "drift_log_entry", "log_drift_task", "save_drift_report_task"]


# Read-only: always measured on the batch as stored now.
@task(name="check-drift", cache_policy=NO_CACHE)
def check_drift_task(
    store_url: str,
    model: Model,
    batch: list[dict[str, Any]],
    thresholds: DriftThresholds,
) -> dict[str, Any]:
    """The drift report (as a dict) of the batch's images against ``model``'s reference.

    ``batch`` holds the images as the ingest task reports them (ImageRecord fields).
    """
    record = model.record
    palette = palette_from_model(model)
    images = [ImageRecord(**image) for image in batch]
    report = batch_drift(
        open_store(store_url),
        palette,
        record.reference,
        images,
        thresholds,
    )
    logger = run_logger()
    for stat in report.statistics:
        logger.info(
            "%s = %.4g (threshold %.4g)%s",
            stat.name,
            stat.value,
            stat.threshold,
            " DRIFT" if stat.drifted else "",
        )
    return report.to_dict()


# The report's name is the batch id, and it is written whole (temp + rename, or one PUT):
# a retry rewrites the same file.
@task(
    name="save-drift-report",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def save_drift_report_task(reports: str, batch_id: str, payload: dict[str, Any]) -> str:
    """Write ``payload`` as ``<reports>/<batch_id>.json``; returns its URL."""
    url = join_url(reports, f"{batch_id}.json")
    data = json.dumps(payload, indent=2, default=str).encode()
    write_bytes_atomic(url, data, storage_options_for(url, get_settings().storage))
    return url


def drift_log_entry(
    version: int, batch_id: str, report: dict[str, Any], *, size: int, report_url: str
) -> dict[str, Any]:
    """What the model's history keeps of one checked batch: the champion version checked,
    the batch, ``drifted``, each statistic's value, threshold and verdict, the batch size
    and where the full report is."""
    return {
        "version": int(version),
        "batch_id": batch_id,
        "drifted": bool(report["drifted"]),
        "size": int(size),
        "report_url": report_url,
        "statistics": {
            name: {
                "value": stat.get("value"),
                "threshold": stat.get("threshold"),
                "drifted": bool(stat.get("drifted")),
            }
            for name, stat in report["statistics"].items()
        },
    }


# One new file per call, named by time and a random UUID: concurrent monitors never collide.
@task(
    name="log-drift",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def log_drift_task(model: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append the checked batch (:func:`drift_log_entry`) to the model's history."""
    event = open_registry().log_event(model, "drift", entry)
    run_logger().info("drift check of batch %s logged in %s's history", entry["batch_id"], model)
    return event
