"""Flow ``monitor``: ingest a new batch, check it for drift, raise an event when it drifted."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event

from kmflow.cluster.session import cluster_session
from kmflow.flows._report import publish_metrics, publish_report
from kmflow.params import IngestParams, MonitorParams
from kmflow.storage.fs import redact_url
from kmflow.tasks.drift import check_drift_task, save_drift_report_task
from kmflow.tasks.ingest import ingest_images
from kmflow.tasks.registry import load_model_task

__all__ = ["DRIFT_EVENT", "batch_id", "dataset_resource_id", "monitor_flow"]

#: The event a drifted batch raises; the ``retrain`` deployment is triggered by it.
DRIFT_EVENT = "kmflow.drift.detected"


def dataset_resource_id(store: str) -> str:
    """The Prefect resource id naming a dataset (pixel store): ``kmflow.dataset.<store>``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", redact_url(store)).strip("-")
    return f"kmflow.dataset.{name}"


def batch_id(sha256s: list[str]) -> str:
    """Identity of a batch: sha256 over its images' sorted content hashes."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


@flow(name="monitor", description="Ingest new images and check them for drift.")
def monitor_flow(params: MonitorParams = MonitorParams()) -> dict[str, Any]:  # noqa: B008
    """Ingest ``params.sources``; compare the images it added with the champion's reference.

    A batch is the set of images this run added to the store (images already stored are
    not checked again). On drift, the flow emits :data:`DRIFT_EVENT` with the store, the
    model, the champion version, the batch and every statistic in its payload, on the
    resource :func:`dataset_resource_id` of the store.

    Returns
    -------
    dict
        ``drifted``, ``batch_id``, ``n_images`` (new), ``report`` (the drift report as a
        dict), ``report_url``, ``champion_version``, ``event_id``.
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    with cluster_session():
        summary = ingest_images(
            IngestParams(sources=params.sources, store=params.store, pattern=params.pattern)
        )
        added = summary["added"]
        if not added:
            logger.info("no new images in %s: nothing to check", params.sources)
            return {
                "drifted": False,
                "batch_id": None,
                "n_images": 0,
                "report": None,
                "report_url": None,
                "champion_version": None,
                "event_id": None,
                "errors": summary["errors"],
            }
        champion = load_model_task(params.model, None)
        report = check_drift_task(params.store, champion, added, params.thresholds)
    batch = batch_id([image["sha256"] for image in added])
    version = champion.record.version
    payload = {
        "store": params.store,
        "model": params.model,
        "champion_version": version,
        "batch_id": batch,
        "batch": [image["relpath"] for image in added],
        "n_images": len(added),
        "n_pixels": sum(image["height"] * image["width"] for image in added),
        "drifted": report["drifted"],
        "statistics": report["statistics"],
    }
    report_url = save_drift_report_task(params.reports, batch, {**payload, "report": report})
    publish_metrics(
        params.model,
        "drift",
        {name: s["value"] for name, s in report["statistics"].items()}
        | {"drifted": report["drifted"]},
    )
    publish_report(
        params.model,
        "drift",
        f"Drift of batch {batch[:12]} against {params.model} version {version}: "
        + ("DRIFTED" if report["drifted"] else "no drift"),
        {
            "Statistics": [{"statistic": name, **s} for name, s in report["statistics"].items()],
            "Batch": {
                "images": len(added),
                "pixels": payload["n_pixels"],
                "batch id": batch,
                "report": report_url,
            },
            "Images": [{"image": image["relpath"]} for image in added],
            "Timings (s)": {"total": round(time.perf_counter() - t0, 3)},
        },
    )
    event_id = None
    if report["drifted"]:
        event = emit_event(
            DRIFT_EVENT,
            resource={
                "prefect.resource.id": dataset_resource_id(params.store),
                "prefect.resource.name": redact_url(params.store),
            },
            payload={**payload, "report_url": report_url},
        )
        event_id = None if event is None else str(event.id)
        logger.warning(
            "batch %s drifted from %s version %d (%s): event %s emitted",
            batch[:12],
            params.model,
            version,
            ", ".join(n for n, s in report["statistics"].items() if s["drifted"]),
            DRIFT_EVENT,
        )
    else:
        logger.info("batch %s: no drift from %s version %d", batch[:12], params.model, version)
    return {
        "drifted": report["drifted"],
        "batch_id": batch,
        "n_images": len(added),
        "report": report,
        "report_url": report_url,
        "champion_version": version,
        "event_id": event_id,
        "errors": summary["errors"],
    }
