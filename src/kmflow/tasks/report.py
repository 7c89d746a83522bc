"""Tasks: the evaluation sample a version keeps for its report, and the report itself.

The samples (:mod:`kmflow.core.report_sample`) are drawn while the flow's Dask cluster is up,
just before registration, and stored with the version; the report is then built from the
registry alone (:func:`kmflow.reports.build.build_report`), exactly as ``kmflow report``
builds it later.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from kmflow.core.report_sample import sample_file, sample_rows
from kmflow.core.split import active_split
from kmflow.errors import KmflowError
from kmflow.tasks._common import open_registry, open_store, run_logger, window_images

__all__ = [
    "images_sample_files",
    "palette_sample_files",
    "report_task",
    "segments_sample_files",
]


def _guarded(what: str, draw: Any) -> dict[str, bytes]:
    """The sample file, or none (with a warning) when it cannot be drawn: a report without
    a scatter is better than a training run that fails after its fit."""
    try:
        return sample_file(draw())
    except KmflowError as exc:
        run_logger().warning("no evaluation sample for the report of %s: %s", what, exc)
        return {}


def palette_sample_files(params: Any) -> dict[str, bytes]:
    """Raw sRGB pixels of the evaluated part (held out, else all) of a palette's training."""
    from kmflow.jobs.palette import select

    def draw() -> np.ndarray:
        store = open_store(params.store)
        split = active_split(params.holdout)
        sel = select(store, split, "eval" if split else "all", window_images(store, params.window))
        seed = split.seed if split is not None else 0
        return sample_rows(sel.pixels, mask=sel.mask, seed=seed, dtype=np.uint8)

    return _guarded(params.model, draw)


def segments_sample_files(prepared: Any, params: Any) -> dict[str, bytes]:
    """Prepared rows (the centers' space) of the evaluated part of a segmentation."""
    from kmflow.jobs.segments.job import evaluation_rows

    def draw() -> np.ndarray:
        X, mask = evaluation_rows(prepared, params)
        return sample_rows(X, mask=mask, seed=params.seed)

    return _guarded(params.model, draw)


def images_sample_files(featurized: Any, params: Any) -> dict[str, bytes]:
    """Feature rows (the centers' space) of the evaluated images of an image clustering."""

    def draw() -> np.ndarray:
        held = featurized.held_out()
        return sample_rows(featurized.X(), mask=held if held.any() else None, seed=params.seed)

    return _guarded(params.model, draw)


@task(name="report", cache_policy=NO_CACHE)
def report_task(name: str, version: int) -> tuple[Any, Any] | None:
    """Build the report of ``name`` ``version`` and write it next to the model.

    Returns
    -------
    (Report, ReportFiles) or None
        None (with a warning) when it could not be built or written: the version stays
        registered either way.
    """
    from kmflow.reports.build import build_report, default_report_url, write_report

    registry = open_registry()
    logger = run_logger()
    try:
        report = build_report(registry, name, version)
        files = write_report(
            report, default_report_url(registry, name, version), registry.storage_options
        )
    except KmflowError as exc:
        logger.warning("no report for %s version %d: %s", name, version, exc)
        return None
    logger.info(
        "report of %s version %d: %d figures (%s not available) in %s",
        name,
        version,
        len(report.pictures),
        ", ".join(m.name for m in report.missing) or "none",
        files.html,
    )
    return report, files
