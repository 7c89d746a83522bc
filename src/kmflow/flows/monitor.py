"""Flow ``monitor``: ingest a new batch, check it for drift, raise an event when it drifted."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event

from kmflow.cluster.session import cluster_session
from kmflow.config import get_settings
from kmflow.errors import InvalidInputError, SourceNotFoundError
from kmflow.fingerprint import fingerprint
from kmflow.flows._report import Cell, link, publish_metrics, publish_report, timings_table
from kmflow.flows.results import MonitorResult
from kmflow.params import IngestParams, MonitorParams
from kmflow.storage.fs import (
    join_url,
    read_bytes,
    redact_url,
    storage_options_for,
    write_bytes_atomic,
)
from kmflow.tasks._common import open_store
from kmflow.tasks.drift import (
    check_drift_task,
    drift_log_entry,
    log_drift_task,
    save_drift_report_task,
)
from kmflow.tasks.ingest import ingest_images
from kmflow.tasks.registry import load_model_task

__all__ = [
    "DRIFT_EVENT",
    "announce_drift",
    "batch_id",
    "dataset_resource_id",
    "monitor_flow",
]

#: The event a drifted batch raises; the ``retrain`` deployment is triggered by it.
DRIFT_EVENT = "kmflow.drift.detected"


def dataset_resource_id(store: str) -> str:
    """The Prefect resource id naming a dataset (pixel store): ``kmflow.dataset.<store>``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", redact_url(store)).strip("-")
    return f"kmflow.dataset.{name}"


def batch_id(sha256s: list[str]) -> str:
    """Identity of a batch: the data fingerprint of its images' content hashes."""
    return fingerprint(sha256s)


def announce_drift(
    report: dict[str, Any],
    *,
    resource: dict[str, str],
    payload: dict[str, Any],
    what: str,
    against: str,
) -> str | None:
    """Emit :data:`DRIFT_EVENT` for a drifted batch and log the decision either way.

    Returns the event's id (None when the batch did not drift, or when no event could be
    emitted outside a Prefect run).
    """
    logger = get_run_logger()
    if not report["drifted"]:
        logger.info("%s: no drift from %s", what, against)
        return None
    event = emit_event(DRIFT_EVENT, resource=resource, payload=payload)
    logger.warning(
        "%s drifted from %s (%s): event %s emitted",
        what,
        against,
        ", ".join(n for n, s in report["statistics"].items() if s["drifted"]),
        DRIFT_EVENT,
    )
    return None if event is None else str(event.id)


def _cursor_url(reports: str, store: str) -> str:
    return join_url(reports, "cursors", f"{dataset_resource_id(store)}.json")


def _batch_url(reports: str, batch: str) -> str:
    return join_url(reports, "batches", f"{batch}.json")


def _read_json(url: str) -> Any | None:
    """The JSON document at ``url``, or None if there is none."""
    try:
        return json.loads(read_bytes(url, storage_options_for(url, get_settings().storage)))
    except SourceNotFoundError:
        return None


def _write_json(url: str, document: Any) -> None:
    data = json.dumps(document, indent=2, default=str).encode()
    write_bytes_atomic(url, data, storage_options_for(url, get_settings().storage))


def _unchecked_images(params: MonitorParams, before: int) -> tuple[list[dict[str, Any]], int]:
    """The store's images no saved drift report covers yet, and the store's image count.

    The store is append-only, so "checked" is a cursor: the number of images, in commit
    order, that saved reports cover (``<reports>/cursors/<dataset>.json``). The first
    monitor run on a store and report folder writes it before its ingest, so the images
    stored before monitoring began (training data) count as covered.
    """
    images = [asdict(record) for record in open_store(params.store).images()]
    cursor = _read_json(_cursor_url(params.reports, params.store))
    start = before if cursor is None else int(cursor["n_images"])
    if start > len(images):
        get_run_logger().warning(
            "the drift cursor of %s says %d images were checked but the store holds %d "
            "(was it recreated?): checking the images this run added",
            redact_url(params.store),
            start,
            len(images),
        )
        start = before
    return images[start:], len(images)


@flow(name="monitor", description="Ingest new images and check them for drift.")
def monitor_flow(params: MonitorParams = MonitorParams()) -> MonitorResult:  # noqa: B008
    """Ingest ``params.sources``; check every image not yet checked against the champion.

    A batch is every image of the store that no saved drift report covers: the images this
    run added, plus those of earlier runs that failed before saving their report (an
    unknown model, a crash, storage down). A batch counts as checked only once its report
    is saved. With ``params.batch`` the flow ingests nothing and checks that recorded batch
    again (every batch's image list is kept in ``<reports>/batches/<id>.json``).

    On drift, the flow emits :data:`DRIFT_EVENT` with the store, the model, the champion
    version, the batch and every statistic in its payload, on the resource
    :func:`dataset_resource_id` of the store.

    Returns
    -------
    MonitorResult
        ``drifted``, ``batch_id``, ``n_images`` (in the batch), ``report`` (the drift
        report as a dict), ``report_url``, ``champion_version``, ``event_id``, ``errors``
        (images the ingest could not read).
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    errors: list[Any] = []
    with cluster_session(paths=[*params.sources, params.store, params.reports]):
        # The champion first: an unknown model fails the run before anything is ingested.
        champion = load_model_task(params.model, None)
        n_store = None
        if params.batch is not None:
            recorded = _read_json(_batch_url(params.reports, params.batch))
            if recorded is None:
                raise InvalidInputError(
                    f"no recorded batch {params.batch} in {redact_url(params.reports)!r}"
                )
            added = list(recorded["images"])
        else:
            store = open_store(params.store)
            before = store.n_images if store.exists() else 0
            cursor_url = _cursor_url(params.reports, params.store)
            if _read_json(cursor_url) is None:  # monitoring starts: what is stored is covered
                _write_json(cursor_url, {"store": redact_url(params.store), "n_images": before})
            summary = ingest_images(
                IngestParams(sources=params.sources, store=params.store, pattern=params.pattern)
            )
            errors = summary["errors"]
            added, n_store = _unchecked_images(params, before)
            if len(added) > len(summary["added"]):
                logger.info(
                    "%d image(s) of earlier runs were never checked: checking them too",
                    len(added) - len(summary["added"]),
                )
        if not added:
            logger.info("no new images in %s: nothing to check", params.sources)
            return MonitorResult.nothing_new(errors)
        batch = batch_id([image["sha256"] for image in added])
        if params.batch is None:
            _write_json(_batch_url(params.reports, batch), {"store": params.store, "images": added})
        report = check_drift_task(params.store, champion, added, params.thresholds)
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
    log_drift_task(
        params.model,
        drift_log_entry(version, batch, report, size=len(added), report_url=report_url),
    )
    if n_store is not None:  # the batch is checked: move the cursor past it
        _write_json(
            _cursor_url(params.reports, params.store),
            {"store": redact_url(params.store), "n_images": n_store, "batch_id": batch},
        )
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
                "report": Cell(link(report_url)),
            },
            "Images": [{"image": image["relpath"]} for image in added],
            "Timings": timings_table({"total": time.perf_counter() - t0}),
        },
    )
    event_id = announce_drift(
        report,
        resource={
            "prefect.resource.id": dataset_resource_id(params.store),
            "prefect.resource.name": redact_url(params.store),
        },
        payload={**payload, "report_url": report_url},
        what=f"batch {batch[:12]}",
        against=f"{params.model} version {version}",
    )
    return MonitorResult(
        drifted=report["drifted"],
        batch_id=batch,
        n_images=len(added),
        report=report,
        report_url=report_url,
        champion_version=version,
        event_id=event_id,
        errors=errors,
    )
