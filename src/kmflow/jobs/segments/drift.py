"""Drift of new records against a segment model: per feature, occupancy and distances.

A batch (a table of new records) goes through the model's stored preprocessing, then:

- the occupancy of the segments against the training occupancy: PSI and Jensen-Shannon
  distance, and the mean squared distance to the nearest center over the training one
  (:func:`kmflow.kernels.drift.drift_report`, the same statistics as for palettes);
- per prepared feature, the histogram on the reference's bins against the reference's
  histogram: PSI (``feature_psi``) and Wasserstein-1 in the feature's prepared units
  (``feature_wasserstein``); the statistic of the worst feature is reported, with every
  feature's values alongside.

Any statistic above its threshold (:class:`kmflow.kernels.drift.DriftThresholds`) is drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from kmflow.errors import InvalidInputError
from kmflow.kernels.drift import (
    DriftReport,
    DriftStatistic,
    DriftThresholds,
    batch_statistics,
    drift_report,
    population_stability_index,
    wasserstein_histogram,
)

__all__ = ["RecordsDrift", "check_records"]


@dataclass(frozen=True)
class RecordsDrift:
    """The drift report of a batch of records and its per-feature statistics."""

    report: DriftReport
    features: dict[str, dict[str, float]]
    n_rows: int
    missing: dict[str, int]
    unseen: dict[str, int]

    @property
    def drifted(self) -> bool:
        return self.report.drifted

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.report.to_dict(),
            "features": self.features,
            "n_rows": self.n_rows,
            "missing": self.missing,
            "unseen": self.unseen,
        }


def _hist_block(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    out = np.zeros((edges.shape[0], edges.shape[1] - 1))
    for j in range(edges.shape[0]):
        lo, hi = edges[j, 0], edges[j, -1]
        out[j] = np.histogram(np.clip(x[:, j], lo, hi), bins=edges[j])[0]
    return out


def check_records(model: Any, data: Any, thresholds: DriftThresholds | None = None) -> RecordsDrift:
    """Compare new records with what a segment model was trained on.

    Parameters
    ----------
    model : kmflow.core.model.Model
        A "segments" (or "images") model whose reference holds ``feature_histograms``.
    data : Table, dask or pandas DataFrame, or records
        The batch, raw (the model's preprocessing is applied); for an image model, uint8
        image rows of its shape (the stored feature chain is applied).
    thresholds : DriftThresholds, optional

    Raises
    ------
    InvalidInputError
        Not a segment model, a reference without feature histograms, or a batch without
        the model's columns or rows.
    """
    thresholds = DriftThresholds() if thresholds is None else thresholds
    record = model.record
    if record.kind not in ("segments", "images"):
        raise InvalidInputError(
            f"model {record.name} v{record.version} is a {record.kind!r} model, not a segment "
            "or image model"
        )
    reference = record.reference
    hist = reference.get("feature_histograms")
    if not hist:
        raise InvalidInputError(
            f"model {record.name} v{record.version} has no feature histograms to compare with"
        )
    if record.kind == "images":
        X, missing, unseen = model.preprocessor.transform(data), {}, {}
    else:
        X, transformed = model.preprocessor.transform(data, report=True)
        missing, unseen = dict(transformed.missing), dict(transformed.unseen)
    if not isinstance(X, da.Array):
        X = da.from_array(np.asarray(X), chunks=(max(1, min(len(X), 262_144)), -1))
    if np.isnan(X.shape[0]):
        X = X.compute_chunk_sizes()
    if X.shape[0] == 0:
        raise InvalidInputError("the batch has no rows to check")
    batch = batch_statistics(X, model.centers)
    base = drift_report(
        {k: v for k, v in reference.items() if k != "channel_histograms"}, batch, thresholds
    )
    edges = np.asarray(hist["edges"], dtype=np.float64)
    ref_counts = np.asarray(hist["counts"], dtype=np.float64)
    names = list(hist["names"])
    parts = [dask.delayed(_hist_block)(b, edges) for b in X.to_delayed().ravel()]
    counts = np.sum(dask.compute(*parts), axis=0)
    features: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        width = float(edges[j, 1] - edges[j, 0])
        features[name] = {
            "psi": population_stability_index(ref_counts[j], counts[j]),
            "wasserstein": wasserstein_histogram(ref_counts[j], counts[j], bin_width=width),
        }
    stats = list(base.statistics)
    for stat, threshold in (
        ("psi", thresholds.feature_psi),
        ("wasserstein", thresholds.feature_wasserstein),
    ):
        worst = max(names, key=lambda n: features[n][stat])
        value = features[worst][stat]
        stats.append(
            DriftStatistic(
                name=f"feature_{stat}",
                value=value,
                threshold=float(threshold),
                drifted=value > threshold,
            )
        )
    report = DriftReport(
        statistics=stats,
        drifted=any(s.drifted for s in stats),
        n_samples=base.n_samples,
        occupancy=base.occupancy,
        reference_occupancy=base.reference_occupancy,
    )
    return RecordsDrift(
        report=report,
        features=features,
        n_rows=int(X.shape[0]),
        missing=missing,
        unseen=unseen,
    )
