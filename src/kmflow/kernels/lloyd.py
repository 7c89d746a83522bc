"""Lloyd iterations as one MapReduce pass per iteration, and nearest-center assignment.

Each row block returns ``(sums[k, d], counts[k], inertia)`` in float64 (the map and the
combiner); a tree reduction adds them (the reduce); the new centers are ``sums / counts``.
Clusters that end an iteration empty are re-seeded from the points farthest from their centers,
never left at zero or dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from kmflow.kernels import _numba
from kmflow.kernels._blocks import Blocks, map_reduce
from kmflow.kernels.dense import _assign_block, _require_finite, tolerance
from kmflow.kernels.validation import (
    check_array,
    check_centers,
    check_sample_weight,
    data_stats,
)

__all__ = [
    "IterationInfo",
    "LloydResult",
    "assign",
    "inertia",
    "lloyd",
]

logger = logging.getLogger(__name__)

_NO_WEIGHTS = np.empty(0)


@dataclass(frozen=True)
class IterationInfo:
    """What a progress callback receives after each Lloyd iteration.

    Attributes
    ----------
    iteration : int
        1-based iteration number.
    max_iter : int
    inertia : float
        Weighted sum of squared distances to the centers the iteration started from.
    center_shift : float
        Sum over centers of the squared distance each center moved.
    n_relocated : int
        Empty clusters re-seeded in this iteration.
    seconds : float
        Wall time of the iteration.
    """

    iteration: int
    max_iter: int
    inertia: float
    center_shift: float
    n_relocated: int
    seconds: float


@dataclass(frozen=True)
class LloydResult:
    """Outcome of :func:`lloyd`.

    Attributes
    ----------
    centers : ndarray of float64, shape (n_clusters, n_features)
    inertia : float
        Weighted sum of squared distances to ``centers`` (the final ones).
    n_iter : int
    converged : bool
        True when the center shift fell to ``tol`` or labels stopped changing before
        ``max_iter``.
    history : tuple of IterationInfo
    """

    centers: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    history: tuple[IterationInfo, ...] = field(default=())


Callback = Callable[[IterationInfo], Any]


# --------------------------------------------------------------------------- block functions
_Partial = tuple[np.ndarray, np.ndarray, float]


def _lloyd_block(
    x: np.ndarray, w: np.ndarray | None, offset: int, centers_t: np.ndarray
) -> _Partial:
    d, k = centers_t.shape
    sums = np.zeros((k, d))
    counts = np.zeros(k)
    has_w = w is not None
    inertia = _numba.accumulate(x, w if has_w else _NO_WEIGHTS, has_w, centers_t, sums, counts)
    return sums, counts, float(inertia)


def _lloyd_combine(a: _Partial, b: _Partial) -> _Partial:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def _cost_block(x: np.ndarray, w: np.ndarray | None, offset: int, centers_t: np.ndarray) -> float:
    has_w = w is not None
    return float(_numba.cost(x, w if has_w else _NO_WEIGHTS, has_w, centers_t))


def _add(a: float, b: float) -> float:
    return a + b


# Far points: (d2, global index, label, weight, rows), sorted by d2 descending then index.
_Far = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _top_far(far: _Far, m: int) -> _Far:
    d2, idx = far[0], far[1]
    order = np.lexsort((idx, -d2))[:m]
    return tuple(a[order] for a in far)  # type: ignore[return-value]


def _far_block(
    x: np.ndarray, w: np.ndarray | None, offset: int, centers_t: np.ndarray, m: int
) -> _Far:
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int32)
    d2 = np.empty(n)
    _numba.assign(x, centers_t, labels, d2)
    wv = np.ones(n) if w is None else w
    keep = wv > 0
    d2 = np.where(keep, d2, -1.0)
    idx = np.arange(offset, offset + n, dtype=np.int64)
    part = np.argpartition(-d2, m - 1)[:m] if n > m else np.arange(n)
    far = (d2[part], idx[part], labels[part], wv[part], x[part].astype(np.float64))
    return _top_far(far, m)


def _far_combine(a: _Far, b: _Far) -> _Far:
    m = max(len(a[0]), len(b[0]))
    return _top_far(tuple(np.concatenate([p, q]) for p, q in zip(a, b, strict=True)), m)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- passes
def _lloyd_pass(blocks: Blocks, centers: np.ndarray) -> _Partial:
    return map_reduce(blocks, _lloyd_block, _lloyd_combine, np.ascontiguousarray(centers.T))


def _cost_pass(blocks: Blocks, centers: np.ndarray) -> float:
    """Inertia under ``centers``: the third value of :func:`_lloyd_pass`, the same number
    (same per-block order, same reduction tree), without accumulating the sums."""
    return map_reduce(blocks, _cost_block, _add, np.ascontiguousarray(centers.T))


def _relocate_empty(
    blocks: Blocks, centers: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, int]:
    """New centers from ``sums / counts`` with empty clusters moved to far points.

    As scikit-learn does, each empty cluster takes the point farthest from its assigned
    center (among positively weighted points), and that point is removed from the sums of
    the cluster it left, so the other centers stay means of their members.

    Notes
    -----
    One extra ``compute`` (a pass to find far points), only in iterations that left a
    cluster empty.
    """
    empty = np.flatnonzero(counts <= 0)
    sums = sums.copy()
    counts = counts.copy()
    new = centers.copy()
    n_relocated = 0
    if empty.size:
        m = int(empty.size)
        far_d2, _, far_lab, far_w, far_x = map_reduce(
            blocks, _far_block, _far_combine, np.ascontiguousarray(centers.T), m
        )
        for e, d2, lab, wt, row in zip(empty, far_d2, far_lab, far_w, far_x, strict=False):
            if d2 <= 0 or counts[lab] - wt <= 0:
                continue  # no point strictly away from its center, or it would empty another
            sums[lab] -= wt * row
            counts[lab] -= wt
            sums[e] = wt * row
            counts[e] = wt
            n_relocated += 1
        logger.info("re-seeded %d of %d empty cluster(s) from far points", n_relocated, m)
    nonzero = counts > 0
    new[nonzero] = sums[nonzero] / counts[nonzero, None]
    return new, n_relocated


def _lloyd(
    blocks: Blocks,
    centers: np.ndarray,
    *,
    max_iter: int,
    tol_abs: float,
    callback: Callback | None = None,
) -> LloydResult:
    """Lloyd iterations on validated blocks (the private twin of :func:`lloyd`).

    Notes
    -----
    One ``compute`` per iteration (plus one when a cluster empties), and one final pass for
    the inertia of the final centers (distances only, no sums) unless labels stopped changing
    (then the last pass already measured it).
    """
    centers = np.asarray(centers, dtype=np.float64).copy()
    history: list[IterationInfo] = []
    converged = False
    last_inertia = np.nan
    shift = np.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        t0 = time.perf_counter()
        sums, counts, last_inertia = _lloyd_pass(blocks, centers)
        new, n_relocated = _relocate_empty(blocks, centers, sums, counts)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        info = IterationInfo(
            iteration=n_iter,
            max_iter=max_iter,
            inertia=float(last_inertia),
            center_shift=shift,
            n_relocated=n_relocated,
            seconds=time.perf_counter() - t0,
        )
        history.append(info)
        logger.info(
            "Lloyd iteration %d/%d: inertia=%.6g shift=%.3g (%.3fs)",
            n_iter,
            max_iter,
            info.inertia,
            shift,
            info.seconds,
        )
        if callback is not None:
            callback(info)
        if shift == 0.0:
            converged = True  # labels unchanged: the sums, and so the centers, are identical
            logger.info("converged at iteration %d: labels unchanged", n_iter)
            break
        if shift <= tol_abs:
            converged = True
            logger.info(
                "converged at iteration %d: center shift %.3g <= tol %.3g", n_iter, shift, tol_abs
            )
            break
    final_inertia = float(last_inertia) if shift == 0.0 else _cost_pass(blocks, centers)
    return LloydResult(
        centers=centers,
        inertia=final_inertia,
        n_iter=n_iter,
        converged=converged,
        history=tuple(history),
    )


def lloyd(
    X: Any,
    centers: Any,
    *,
    sample_weight: Any = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    callback: Callback | None = None,
) -> LloydResult:
    """Run Lloyd iterations from the given centers.

    Parameters
    ----------
    X : array-like or dask.array.Array of shape (n_samples, n_features)
    centers : array-like of shape (n_clusters, n_features)
        Initial centers.
    sample_weight : array-like or dask.array.Array of shape (n_samples,), optional
    max_iter : int, default 300
    tol : float, default 1e-4
        Relative tolerance: iterations stop when the summed squared center shift is at most
        ``tol`` times the mean per-feature (weighted) variance of ``X``.
    callback : callable, optional
        Called with an :class:`IterationInfo` after every iteration.

    Returns
    -------
    LloydResult

    Raises
    ------
    InvalidInputError
        Malformed ``X``, weights or centers (see :mod:`kmflow.kernels.validation`).

    Notes
    -----
    One validation pass, then one ``compute`` per iteration; see :func:`_lloyd`.
    """
    Xd = check_array(X)
    W = check_sample_weight(sample_weight, Xd)
    c = check_centers(centers, None, Xd.shape[1], shape_from=f"X has {Xd.shape[1]} features")
    blocks = Blocks(Xd, W)
    stats = data_stats(blocks)
    return _lloyd(
        blocks, c, max_iter=max_iter, tol_abs=tolerance(stats.variance, tol), callback=callback
    )


def inertia(X: Any, centers: Any, *, sample_weight: Any = None) -> float:
    """Weighted sum of squared distances from each row to its nearest center.

    Notes
    -----
    One ``compute``; no validation pass beyond shapes.
    """
    Xd = check_array(X)
    W = check_sample_weight(sample_weight, Xd)
    c = check_centers(centers, None, Xd.shape[1], shape_from=f"X has {Xd.shape[1]} features")
    return _cost_pass(Blocks(Xd, W), c)


def assign(X: da.Array, centers: np.ndarray) -> da.Array:
    """Index of the nearest center of every row, lazily.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features)
        One chunk along features (see :func:`~kmflow.kernels.validation.check_array`).
    centers : ndarray of shape (n_clusters, n_features)

    Returns
    -------
    dask.array.Array of int32, shape (n_samples,)
        Computing it raises :class:`~kmflow.errors.InvalidInputError` on NaN/inf rows.

    Notes
    -----
    No ``compute``: a ``map_blocks`` the caller computes or stores.
    """
    centers_t = np.ascontiguousarray(np.asarray(centers, dtype=np.float64).T)
    return da.map_blocks(
        _assign_block, X, centers_t, drop_axis=1, dtype=np.int32, meta=np.empty(0, np.int32)
    )


def _distances_block(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    _require_finite(x)
    xf = x.astype(np.float64)
    d2 = (
        np.einsum("ij,ij->i", xf, xf)[:, None]
        - 2.0 * (xf @ centers.T)
        + np.einsum("ij,ij->i", centers, centers)[None, :]
    )
    return np.sqrt(np.maximum(d2, 0.0))


def distances(X: da.Array, centers: np.ndarray) -> da.Array:
    """Euclidean distance from every row to every center, lazily, shape (n_samples, k)."""
    c = np.asarray(centers, dtype=np.float64)
    return da.map_blocks(
        _distances_block,
        X,
        c,
        chunks=(X.chunks[0], (c.shape[0],)),
        dtype=np.float64,
        meta=np.empty((0, 0)),
    )
