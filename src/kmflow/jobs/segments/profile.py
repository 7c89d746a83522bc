"""Segment profiles: who is in each segment, in the table's own units.

Per segment: size and share; the mean, median and standard deviation (pandas' ``ddof=1``)
of every numeric feature column in its original units (missing cells skipped, as pandas
does); the share of each flag; the top levels of each categorical with their shares; the
target rate per class (or the target mean, for a numeric target); and the five prepared
features that most distinguish the segment from the rest, by standardised mean difference
``(mean_in - mean_out) / sqrt((var_in + var_out) / 2)`` on the model's features.

Everything is computed with Dask over the partitions (exact medians by a shuffle of the
group-by); only the per-segment results reach the driver.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd

from kmflow.jobs.segments.prepare import (
    MISSING_LEVEL,
    ColumnPlan,
    Preprocessing,
    _flags,
    _numbers,
    _text,
)

__all__ = [
    "Profiles",
    "SegmentProfile",
    "class_name",
    "decode_partition",
    "profile_segments",
    "target_is_numeric",
]

SEGMENT = "segment"
_TOP_LEVELS = 3
_TOP_FEATURES = 5


@dataclass(frozen=True)
class SegmentProfile:
    """One segment's profile (see the module docstring)."""

    segment: int
    size: int
    share: float
    numeric: dict[str, dict[str, float]] = field(default_factory=dict)
    flags: dict[str, float] = field(default_factory=dict)
    categories: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    target: dict[str, float] = field(default_factory=dict)
    distinguishing: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "size": self.size,
            "share": self.share,
            "numeric": self.numeric,
            "flags": self.flags,
            "categories": {c: [list(t) for t in top] for c, top in self.categories.items()},
            "target": self.target,
            "distinguishing": [list(t) for t in self.distinguishing],
        }


@dataclass(frozen=True)
class Profiles:
    """Every segment's profile, and the table they flatten to (``profiles.csv``)."""

    segments: tuple[SegmentProfile, ...]
    target: str | None = None
    target_kind: str | None = None  # "classes" or "numeric"

    def to_dicts(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.segments]

    def table(self) -> pd.DataFrame:
        """One row per segment: size, share, ``<col> mean|median|std``, flag shares,
        ``<col> top`` levels, the target rate(s) or mean, and the distinguishing features."""
        rows = []
        for p in self.segments:
            row: dict[str, Any] = {SEGMENT: p.segment, "size": p.size, "share": p.share}
            for name, stats in p.numeric.items():
                for stat in ("mean", "median", "std"):
                    row[f"{name} {stat}"] = stats[stat]
            for name, share in p.flags.items():
                row[f"{name} share"] = share
            for name, top in p.categories.items():
                row[f"{name} top"] = "; ".join(f"{lvl} {s:.0%}" for lvl, s in top)
            for name, value in p.target.items():
                row[name] = value
            row["distinguishing"] = "; ".join(f"{f} {d:+.2f}" for f, d in p.distinguishing)
            rows.append(row)
        return pd.DataFrame(rows)


def target_is_numeric(frame: Any, target: str) -> bool:
    """Whether every non-blank cell of the target column, in the whole table, is a number."""

    def part(pdf: pd.DataFrame) -> tuple[bool, bool]:
        _, blank, bad = _numbers(pdf[target])
        return bool(bad.any()), bool((~blank).any())

    parts = dask.compute(*[dask.delayed(part)(p) for p in frame.to_delayed()])
    return not any(bad for bad, _ in parts) and any(some for _, some in parts)


def class_name(value: Any) -> str:
    """A target class as text: integral numbers without a decimal point (``1``, not ``1.0``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def decode_partition(
    pdf: pd.DataFrame, plan: ColumnPlan, prep: Preprocessing, numeric_target: bool = False
) -> pd.DataFrame:
    """The plan's feature (and target) columns in their own units, rows as the model keeps them.

    Numbers as float64 (NaN where missing), flags as 0/1 float64 (NaN where missing or
    unseen), categoricals as text (``missing`` where blank), the target as numbers when
    every non-blank cell of the whole column is one (`numeric_target`, from
    :func:`target_is_numeric`), else as text. With the ``drop`` policy, the rows the
    preprocessing drops are dropped here too, so the rows line up with the model's rows.
    """
    out: dict[str, Any] = {}
    keep = np.ones(len(pdf), dtype=bool)
    for spec in plan.features:
        values = pdf[spec.name]
        if spec.kind == "numeric":
            x, blank, _ = _numbers(values)
            out[spec.name] = x
            keep &= ~blank
        elif spec.kind == "flag":
            x, blank, odd = _flags(values, spec.true_values, spec.false_values)
            out[spec.name] = x
            keep &= ~(blank | odd)
        else:
            text, blank = _text(values)
            out[spec.name] = np.where(blank, MISSING_LEVEL, text).astype(object)
    if plan.target is not None:
        values = pdf[plan.target]
        if numeric_target:
            out[plan.target] = _numbers(values)[0]
        else:
            text, blank = _text(values)
            out[plan.target] = np.where(blank, MISSING_LEVEL, text).astype(object)
    frame = pd.DataFrame(out, index=pdf.index)
    if prep.missing == "drop":
        frame = frame[keep]
    return frame


def _with_segments(part: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    part = part.copy()
    part[SEGMENT] = labels.astype(np.int64)
    return part


def _moments(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, x.shape[1]))
    sq = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    np.add.at(sq, labels, x * x)
    return counts, sums, sq


def _add(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return tuple(p + q for p, q in zip(a, b, strict=True))


def _distinguishing(
    X: da.Array, labels: da.Array, k: int, names: Sequence[str]
) -> list[list[tuple[str, float]]]:
    parts = [
        dask.delayed(_moments)(xb, lb, k)
        for xb, lb in zip(X.to_delayed().ravel(), labels.to_delayed().ravel(), strict=True)
    ]
    while len(parts) > 1:
        parts = [
            dask.delayed(_add)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    counts, sums, sq = dask.compute(parts[0])[0]
    total_n, total_s, total_q = counts.sum(), sums.sum(axis=0), sq.sum(axis=0)
    out: list[list[tuple[str, float]]] = []
    for s in range(k):
        n_in, n_out = counts[s], total_n - counts[s]
        if n_in < 1 or n_out < 1:
            out.append([])
            continue
        m_in = sums[s] / n_in
        m_out = (total_s - sums[s]) / n_out
        v_in = np.maximum(sq[s] / n_in - m_in**2, 0.0)
        v_out = np.maximum((total_q - sq[s]) / n_out - m_out**2, 0.0)
        pooled = np.sqrt((v_in + v_out) / 2.0)
        smd = np.where(pooled > 0, (m_in - m_out) / np.where(pooled > 0, pooled, 1.0), 0.0)
        order = np.lexsort((np.arange(len(smd)), -np.abs(smd)))[:_TOP_FEATURES]
        out.append([(str(names[j]), float(smd[j])) for j in order])
    return out


def profile_segments(
    frame: Any,
    plan: ColumnPlan,
    prep: Preprocessing,
    X: da.Array,
    labels: da.Array,
    k: int,
) -> Profiles:
    """Profiles of `k` segments.

    Parameters
    ----------
    frame : dask.dataframe.DataFrame
        The table as read (the frame the preprocessing transformed into `X`).
    plan, prep
        The column plan and the fitted preprocessing.
    X : dask.array.Array of shape (n_rows, n_features)
        The prepared features, one row block per partition of `frame`.
    labels : dask.array.Array of int, shape (n_rows,)
        Each prepared row's segment, chunked like `X`.
    k : int
        Number of segments (empty ones get a zero-size profile).
    """
    labels = labels.rechunk((X.chunks[0],))
    target = plan.target
    target_numeric = target is not None and target_is_numeric(frame, target)
    meta = decode_partition(frame._meta, plan, prep, target_numeric)
    meta[SEGMENT] = np.array([], dtype=np.int64)
    parts = [
        dask.delayed(_with_segments)(
            dask.delayed(decode_partition)(p, plan, prep, target_numeric), lb
        )
        for p, lb in zip(frame.to_delayed(), labels.to_delayed().ravel(), strict=True)
    ]
    df = dd.from_delayed(parts, meta=meta, verify_meta=False)
    numeric = [c.name for c in plan.features if c.kind == "numeric"]
    flags = [c.name for c in plan.features if c.kind == "flag"]
    cats = [c.name for c in plan.features if c.kind == "categorical"]
    target_binary_numeric = False
    grouped = df.groupby(SEGMENT)
    jobs: dict[str, Any] = {"size": grouped.size()}
    if numeric:
        jobs["stats"] = grouped[numeric].agg(["mean", "std"])
        jobs["median"] = grouped[numeric].median(shuffle_method="tasks")
    if flags:
        jobs["flags"] = grouped[flags].mean()
    for c in cats:
        jobs[f"cat:{c}"] = df.groupby([SEGMENT, c]).size()
    if target is not None:
        if target_numeric:
            jobs["target_mean"] = grouped[target].mean()
            jobs["target_levels"] = df[target].dropna().unique()
        else:
            jobs["target_classes"] = df.groupby([SEGMENT, target]).size()
    computed = dict(zip(jobs, dask.compute(*jobs.values()), strict=True))
    smd = _distinguishing(X, labels, k, prep.feature_names)
    sizes = computed["size"].reindex(range(k), fill_value=0)
    total = int(sizes.sum())
    target_kind = None
    if target is not None:
        levels = computed.get("target_levels")
        if target_numeric and levels is not None and set(np.asarray(levels)) <= {0.0, 1.0}:
            target_binary_numeric = True
        target_kind = "numeric" if target_numeric and not target_binary_numeric else "classes"
    profiles = []
    for s in range(k):
        size = int(sizes.loc[s])
        p = SegmentProfile(segment=s, size=size, share=size / total if total else 0.0)
        present = size > 0
        for c in numeric:
            p.numeric[c] = {
                "mean": _f(computed["stats"].loc[s, (c, "mean")]) if present else math.nan,
                "median": _f(computed["median"].loc[s, c]) if present else math.nan,
                "std": _f(computed["stats"].loc[s, (c, "std")]) if present else math.nan,
            }
        for c in flags:
            p.flags[c] = _f(computed["flags"].loc[s, c]) if present else math.nan
        for c in cats:
            counts = computed[f"cat:{c}"]
            if present and s in counts.index.get_level_values(0):
                seg = counts.loc[s].sort_index()
                seg = seg.sort_values(ascending=False, kind="stable")[:_TOP_LEVELS]
                p.categories[c] = [(str(lvl), float(n) / size) for lvl, n in seg.items()]
            else:
                p.categories[c] = []
        if target is not None:
            if target_kind == "numeric":
                p.target[f"{target} mean"] = (
                    _f(computed["target_mean"].loc[s]) if present else math.nan
                )
            elif target_binary_numeric:
                p.target[f"{target} rate"] = (
                    _f(computed["target_mean"].loc[s]) if present else math.nan
                )
            else:
                counts = computed["target_classes"]
                classes = sorted({class_name(v) for v in counts.index.get_level_values(1)})
                seg = counts.loc[s] if present and s in counts.index.get_level_values(0) else None
                for cls in classes:
                    n = 0 if seg is None else int(seg.rename(index=class_name).get(cls, 0))
                    p.target[f"{target}={cls} rate"] = n / size if size else math.nan
        p.distinguishing.extend(smd[s])
        profiles.append(p)
    return Profiles(segments=tuple(profiles), target=target, target_kind=target_kind)


def _f(value: Any) -> float:
    return float(value) if value is not None and not pd.isna(value) else math.nan
