"""A sweep over k: fit k-means for several k at once and score every k.

:func:`sweep` fits every k of ``ks`` together: each Lloyd iteration is ONE pass over the data
that serves every k still iterating (one compiled kernel call per block measures the
distances to all their centers, :func:`kmflow.kernels._numba.accumulate_multi`), and the
metrics of every k come from two more passes for all of them. Per k it reports the inertia,
Davies-Bouldin, Calinski-Harabasz, a sampled silhouette and the fit seconds attributed to it.

Passes over the data (each one ``map_reduce``):

1. the validation pass (:func:`~kmflow.kernels.validation.data_stats`: NaN/inf, weights, the
   variance that scales ``tol``);
2. one k-means|| run for the largest k (``init_rounds + 2`` passes), shared by every k (see
   :func:`sweep`, Notes);
3. one pass per Lloyd iteration for all k still iterating (plus one, for all of them, in an
   iteration that left some cluster empty);
4. the metrics: one pass for every k's per-cluster weights, sums and inertia under its final
   centers, one for every k's per-cluster distances to the means of its labels and the
   silhouette sample (weighted data: its blocks' total weights come from the first).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kmflow.errors import InvalidInputError, TooFewDistinctPointsError
from kmflow.kernels import _numba
from kmflow.kernels._blocks import Blocks, StatesLost, map_persist_reduce, map_reduce
from kmflow.kernels._random import derive_key, uniform
from kmflow.kernels.dense import tolerance
from kmflow.kernels.init import (
    _STREAM_FIRST,
    _STREAM_ROUND,
    _add,
    _dedupe,
    _over_combine,
    _race,
    _reduce_candidates,
    _round_block,
    _round_block_stateless,
    _weight_block,
)
from kmflow.kernels.lloyd import IterationInfo, _far_block, _far_combine
from kmflow.kernels.metrics import _davies_bouldin
from kmflow.kernels.validation import (
    DataStats,
    check_array,
    check_centers,
    check_sample_weight,
    data_stats,
)

__all__ = ["KResult", "SweepInfo", "SweepResult", "parse_ks", "sweep"]

logger = logging.getLogger(__name__)

#: Random stream of the sweep's silhouette sample (the inits use 0 .. 3_999, the
#: silhouette_sample metric 4_000).
_STREAM_SAMPLE = 4_100

#: Bytes of one block of pairwise distances in the silhouette of the sample.
_SILHOUETTE_BLOCK_BYTES = 2**25

_NO_WEIGHTS = np.empty(0)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class KResult:
    """The fit and the scores of one k of a sweep.

    Attributes
    ----------
    k : int
    centers : ndarray of float64, shape (k, n_features)
        The final Lloyd centers.
    inertia : float
        Weighted sum of squared distances of the rows to their nearest final center.
    n_iter : int
        Lloyd iterations run for this k.
    converged : bool
        The center shift reached 0 or ``tol`` before ``max_iter``.
    davies_bouldin, calinski_harabasz : float
        Of the labels the final centers give (nearest center), with the means of the
        labelled rows as centroids, as scikit-learn computes them; NaN when undefined (fewer
        than 2 non-empty clusters, or as many as rows of positive weight).
    silhouette : float
        Mean silhouette of the shared row sample labelled by the final centers (exact over
        all rows when they fit in the sample); NaN when the sample size is 0 or the sample
        holds fewer than 2 or as many clusters as rows.
    seconds : float
        Fit time attributed to this k: of every pass shared by several k (validation,
        k-means||, Lloyd iterations, metrics), a share proportional to k among the k it
        served (its share of the distance computations), plus the in-memory work done for
        this k alone (its k-means++ reduction of the candidates); the silhouettes of the
        sample, computed together, are shared the same way. The seconds of all k add up
        to the sweep's wall time, up to bookkeeping.
    sizes : ndarray of int64, shape (k,)
        Rows per cluster (an unweighted count).
    history : tuple of IterationInfo
        Per Lloyd iteration: inertia under the centers it started from, center shift, empty
        clusters re-seeded, and the pass's wall seconds (shared by every k in it).
    """

    k: int
    centers: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    davies_bouldin: float
    calinski_harabasz: float
    silhouette: float
    seconds: float
    sizes: np.ndarray
    history: tuple[IterationInfo, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: k, inertia, the three scores, seconds, n_iter, converged (NaN → None)."""
        return {
            "k": int(self.k),
            "inertia": _json_float(self.inertia),
            "davies_bouldin": _json_float(self.davies_bouldin),
            "calinski_harabasz": _json_float(self.calinski_harabasz),
            "silhouette": _json_float(self.silhouette),
            "seconds": float(self.seconds),
            "n_iter": int(self.n_iter),
            "converged": bool(self.converged),
        }


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


@dataclass(frozen=True)
class SweepInfo:
    """What the progress callback receives after every pass of a sweep.

    Attributes
    ----------
    stage : str
        ``"validate"``, ``"init"`` (k-means|| done), ``"lloyd"`` (one iteration for every
        active k), ``"relocate"`` (the far points of the k with empty clusters),
        ``"moments"`` or ``"spread"`` (the two metrics passes).
    iteration : int
        Lloyd iteration (0 outside Lloyd).
    passes : int
        Passes over the data so far (k-means|| counted with all its passes).
    active : tuple of int
        The k this pass served.
    inertia : dict of int to float
        Per active k: the inertia the pass measured (Lloyd: under the centers it started
        from; moments: under the final centers); empty for other stages.
    seconds : float
        Wall time of the pass.
    """

    stage: str
    iteration: int
    passes: int
    active: tuple[int, ...]
    inertia: dict[int, float]
    seconds: float


@dataclass(frozen=True)
class SweepResult:
    """Outcome of :func:`sweep`.

    Attributes
    ----------
    results : dict of int to KResult
        One per k, in increasing k.
    n_passes : int
        Passes over the data, validation and k-means|| included.
    seconds : float
        Wall time of the whole sweep.
    sample_size : int
        Rows in the silhouette sample (draws, with weights).
    seed : int
        The 63-bit key every random choice was drawn from.
    """

    results: dict[int, KResult]
    n_passes: int
    seconds: float
    sample_size: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the per-k dicts (:meth:`KResult.to_dict`) and the sweep's totals."""
        return {
            "results": [r.to_dict() for r in self.results.values()],
            "n_passes": int(self.n_passes),
            "seconds": float(self.seconds),
            "sample_size": int(self.sample_size),
        }


SweepCallback = Callable[[SweepInfo], Any]


# --------------------------------------------------------------------------- parameters
def parse_ks(spec: str | int | Sequence[int]) -> list[int]:
    """The k of a sweep from ``"2..12"``, ``"2,4,8"``, ``"2..6,10"``, an int or a sequence.

    Returns
    -------
    list of int
        Sorted, without duplicates.

    Raises
    ------
    InvalidInputError
        Not integers, a k below 1, an empty range or nothing at all.
    """
    if isinstance(spec, str):
        ks: list[Any] = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise InvalidInputError(f"empty range of k {part!r}: {hi} < {lo}")
                ks.extend(range(lo, hi + 1))
            elif re.fullmatch(r"-?\d+", part):
                ks.append(int(part))
            else:
                raise InvalidInputError(
                    f"cannot read k from {part!r}: give integers and ranges like '2..12,16'"
                )
    elif isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        ks = [int(spec)]
    elif isinstance(spec, str | bytes) or not isinstance(spec, Sequence):
        raise InvalidInputError(f"ks must be a string, an int or a sequence of ints; got {spec!r}")
    else:
        ks = list(spec)
    return _check_ks(ks)


def _check_ks(ks: Sequence[Any]) -> list[int]:
    if len(ks) == 0:
        raise InvalidInputError("ks is empty: give at least one k")
    out = set()
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise InvalidInputError(f"every k must be an integer; got {k!r}")
        if k < 1:
            raise InvalidInputError(f"every k must be >= 1; got {k}")
        out.add(int(k))
    return sorted(out)


# --------------------------------------------------------------------------- block functions
# Lloyd / moments partial: (sums (K, d), weights (K,), sizes (K,), inertias (S,))
_Multi = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _multi_block(
    x: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    centers_t: np.ndarray,
    starts: np.ndarray,
    shift: np.ndarray,
) -> _Multi:
    d, k = centers_t.shape
    sums = np.zeros((k, d))
    weights = np.zeros(k)
    sizes = np.zeros(k, dtype=np.int64)
    inertias = np.zeros(len(starts) - 1)
    has_w = w is not None
    _numba.accumulate_multi(
        x,
        w if has_w else _NO_WEIGHTS,
        has_w,
        centers_t,
        starts,
        shift,
        sums,
        weights,
        sizes,
        inertias,
    )
    return sums, weights, sizes, inertias


def _multi_combine(a: _Multi, b: _Multi) -> _Multi:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]


def _moments_block(
    x: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    centers_t: np.ndarray,
    starts: np.ndarray,
    shift: np.ndarray,
) -> tuple[_Multi, np.ndarray]:
    """:func:`_multi_block`, and the block's total weight (for a weighted sample)."""
    total = np.array([float(x.shape[0]) if w is None else float(np.sum(w, dtype=np.float64))])
    return _multi_block(x, w, offset, centers_t, starts, shift), total


def _moments_combine(
    a: tuple[_Multi, np.ndarray], b: tuple[_Multi, np.ndarray]
) -> tuple[_Multi, np.ndarray]:
    return _multi_combine(a[0], b[0]), np.concatenate([a[1], b[1]])


# A sample: (keys, global row indices, rows as float64, times drawn); sorted by key, index.
_Sample = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _empty_sample(d: int) -> _Sample:
    return np.empty(0), np.empty(0, np.int64), np.empty((0, d)), np.empty(0, np.int64)


def _top_sample(s: _Sample, m: int) -> _Sample:
    order = np.lexsort((s[1], s[0]))[:m]
    return s[0][order], s[1][order], s[2][order], s[3][order]


def _uniform_draw(x: np.ndarray, offset: int, key: int, m: int) -> _Sample:
    """The ``m`` rows of the block with the smallest keys ``-log(u)`` (ties: lowest index)."""
    n = x.shape[0]
    if m <= 0 or n == 0:
        return _empty_sample(x.shape[1])
    keys = -np.log(uniform(key, _STREAM_SAMPLE, offset, n))
    keep = np.arange(n)
    if n > m:
        kth = np.partition(keys, m - 1)[m - 1]
        keep = np.flatnonzero(keys <= kth)
    return _top_sample(
        (
            keys[keep],
            offset + keep.astype(np.int64),
            x[keep].astype(np.float64),
            np.ones(keep.size, np.int64),
        ),
        m,
    )


def _systematic_draw(
    x: np.ndarray, w: np.ndarray, offset: int, before: float, start: float, step: float, m: int
) -> _Sample:
    """Rows hit by the points ``start + j * step`` (j < m) on the cumulative-weight axis, with
    how many points each got (as :func:`kmflow.kernels.metrics.silhouette_sample` draws)."""
    wv = np.asarray(w, dtype=np.float64)
    upper = before + np.cumsum(wv)
    lower = upper - wv

    def points_up_to(c: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((c - start) / step) + 1, 0, m).astype(np.int64)

    counts = points_up_to(upper) - points_up_to(lower)
    keep = np.flatnonzero(counts > 0)
    idx = offset + keep.astype(np.int64)
    return idx.astype(np.float64), idx, x[keep].astype(np.float64), counts[keep]


# Spread partial: (dist (K,), sqd (K,), sample)
_Spread = tuple[np.ndarray, np.ndarray, _Sample]


def _spread_block(
    x: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    centers_t: np.ndarray,
    starts: np.ndarray,
    shift: np.ndarray,
    means: np.ndarray,
    draw: tuple[Any, ...],
) -> _Spread:
    k = centers_t.shape[1]
    dist = np.zeros(k)
    sqd = np.zeros(k)
    has_w = w is not None
    _numba.spread_multi(
        x, w if has_w else _NO_WEIGHTS, has_w, centers_t, starts, shift, means, dist, sqd
    )
    if draw[0] == "uniform":
        sample = _uniform_draw(x, offset, draw[1], draw[2])
    elif draw[0] == "systematic":
        _, befores, start, step, m = draw
        i = int(np.searchsorted(befores[0], offset))
        assert w is not None
        sample = _systematic_draw(x, w, offset, float(befores[1][i]), start, step, m)
    else:
        sample = _empty_sample(x.shape[1])
    return dist, sqd, sample


def _spread_combine(a: _Spread, b: _Spread, m: int, top: bool) -> _Spread:
    s = tuple(
        np.concatenate([p, q]) if p.ndim == 1 else np.vstack([p, q])
        for p, q in zip(a[2], b[2], strict=True)
    )
    sample: _Sample = _top_sample(s, m) if top else s  # type: ignore[arg-type,assignment]
    return a[0] + b[0], a[1] + b[1], sample


def _far_many_block(
    x: np.ndarray, w: np.ndarray | None, offset: int, jobs: tuple[tuple[np.ndarray, int], ...]
) -> list[Any]:
    """Lloyd's far points (``_far_block``) for several center sets in one pass."""
    return [_far_block(x, w, offset, ct, m) for ct, m in jobs]


def _far_many_combine(a: list[Any], b: list[Any]) -> list[Any]:
    return [_far_combine(p, q) for p, q in zip(a, b, strict=True)]


# --------------------------------------------------------------------------- pieces
class _Clock:
    """Pass count, per-k attributed seconds and the callback."""

    def __init__(self, ks: list[int], callback: SweepCallback | None) -> None:
        self.passes = 0
        self.seconds = dict.fromkeys(ks, 0.0)
        self.callback = callback

    def share(self, seconds: float, served: Sequence[int]) -> None:
        """Split a shared pass's seconds between the k it served, in proportion to k."""
        total = float(sum(served))
        for k in served:
            self.seconds[k] += seconds * k / total

    def done(
        self,
        stage: str,
        seconds: float,
        served: Sequence[int],
        *,
        passes: int = 1,
        iteration: int = 0,
        inertia: dict[int, float] | None = None,
    ) -> None:
        self.passes += passes
        self.share(seconds, served)
        if self.callback is not None:
            self.callback(
                SweepInfo(
                    stage=stage,
                    iteration=iteration,
                    passes=self.passes,
                    active=tuple(served),
                    inertia=dict(inertia or {}),
                    seconds=seconds,
                )
            )


def _stack(centers: Mapping[int, np.ndarray], ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The centers of ``ks`` side by side, transposed (d, K), and the column ranges."""
    starts = np.concatenate([[0], np.cumsum([centers[k].shape[0] for k in ks])]).astype(np.int64)
    cat = np.vstack([centers[k] for k in ks])
    return np.ascontiguousarray(cat.T), starts


def _candidates(
    blocks: Blocks,
    k_max: int,
    *,
    key: int,
    oversampling_factor: float,
    n_rounds: int,
    keep_state: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """k-means|| for ``k_max`` up to its weighted candidates: (candidates, weights, passes).

    The passes of :func:`kmflow.kernels.init._kmeans_parallel` (the same random streams, so
    the same candidates), stopping before the reduction to ``k_max`` centers.
    """
    while True:
        try:
            return _candidates_once(
                blocks,
                k_max,
                key=key,
                oversampling_factor=oversampling_factor,
                n_rounds=n_rounds,
                keep_state=keep_state,
            )
        except StatesLost as exc:
            logger.warning("k-means|| of the sweep starts over: %s", exc)


def _candidates_once(
    blocks: Blocks,
    k_max: int,
    *,
    key: int,
    oversampling_factor: float,
    n_rounds: int,
    keep_state: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    ell = oversampling_factor * k_max
    cand, _ = _race(blocks, key, _STREAM_FIRST, None, 1)
    passes = 1
    states: list[Any] = [None] * len(blocks)
    start = 0
    buffer = int(4 * ell + 64)
    r = 0
    while True:
        r += 1
        cand_t = np.ascontiguousarray(cand.T)
        while True:
            args = (cand_t, start, key, _STREAM_ROUND + r, ell, buffer)
            combine = functools.partial(_over_combine, m=buffer)
            if keep_state:
                new_states, (psi, t, _idx, rows) = map_persist_reduce(
                    blocks, _round_block, combine, states, *args
                )
            else:
                psi, t, _idx, rows = map_reduce(blocks, _round_block_stateless, combine, *args)
            passes += 1
            if not (len(t) == buffer and t.min() > psi):
                break
            buffer *= 4
        if keep_state:
            states, start = new_states, len(cand)
        if psi <= 0:
            break
        cand = np.vstack([cand, _dedupe(rows[t > psi])])
        if r >= n_rounds and len(cand) >= k_max:
            break
        if r >= n_rounds + 50:
            raise InvalidInputError(
                f"k-means|| found only {len(cand)} candidates for k={k_max} after {r} rounds; "
                "raise oversampling_factor"
            )
    if len(cand) < k_max:
        # Every row (of positive weight) is a candidate: len(cand) is the distinct rows.
        err = TooFewDistinctPointsError(k_max, len(cand))
        err.args = (
            f"k={k_max} but X has only {len(cand)} distinct rows (with positive weight): "
            f"a sweep's k can be at most {len(cand)}",
        )
        raise err
    cand_t = np.ascontiguousarray(cand.T)
    if keep_state:
        weights = map_reduce(blocks, _weight_block, _add, cand_t, start, states=states)
    else:
        weights = map_reduce(blocks, _weight_block, _add, None, cand_t, 0)
    passes += 1
    keep = weights > 0
    return cand[keep], weights[keep], passes


def _relocate_many(
    blocks: Blocks,
    todo: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[int, tuple[np.ndarray, int]]:
    """:func:`kmflow.kernels.lloyd._relocate_empty` for several k in one pass.

    ``todo[k] = (centers, sums, counts)``; returns the new centers and relocations per k.
    Only the k with an empty cluster need the pass; the others are just ``sums / counts``.
    """
    out: dict[int, tuple[np.ndarray, int]] = {}
    need = [k for k, (_, _, counts) in todo.items() if np.any(counts <= 0)]
    far: dict[int, Any] = {}
    if need:
        jobs = tuple(
            (np.ascontiguousarray(todo[k][0].T), int(np.count_nonzero(todo[k][2] <= 0)))
            for k in need
        )
        parts = map_reduce(blocks, _far_many_block, _far_many_combine, jobs)
        far = dict(zip(need, parts, strict=True))
    for k, (centers, sums, counts) in todo.items():
        sums = sums.copy()
        counts = counts.copy()
        new = centers.copy()
        n_relocated = 0
        if k in far:
            empty = np.flatnonzero(counts <= 0)
            far_d2, _, far_lab, far_w, far_x = far[k]
            for e, d2, lab, wt, row in zip(empty, far_d2, far_lab, far_w, far_x, strict=False):
                if d2 <= 0 or counts[lab] - wt <= 0:
                    continue
                sums[lab] -= wt * row
                counts[lab] -= wt
                sums[e] = wt * row
                counts[e] = wt
                n_relocated += 1
            logger.info(
                "k=%d: re-seeded %d of %d empty cluster(s) from far points",
                k,
                n_relocated,
                empty.size,
            )
        nonzero = counts > 0
        new[nonzero] = sums[nonzero] / counts[nonzero, None]
        out[k] = (new, n_relocated)
    return out


def _silhouettes(rows: np.ndarray, labels: dict[int, np.ndarray]) -> dict[int, float]:
    """Mean silhouette of the in-memory ``rows`` under every labelling, sharing the distances.

    The pairwise distances are formed once per row block (GEMM of the rows centered on their
    mean, as scikit-learn's Euclidean distances, self-distances 0) and serve every k: one
    product with the one-hot matrix of all labellings gives each row's summed distance to
    every cluster of every k. As scikit-learn: ``s = (b - a) / max(a, b)``, 0 for a row alone
    in its cluster; only clusters present in the sample count. NaN for a labelling with fewer
    than 2 or as many clusters as rows.
    """
    n = rows.shape[0]
    out: dict[int, float] = {}
    ks: list[int] = []
    encs: list[np.ndarray] = []
    for k, lab in labels.items():
        classes, enc = np.unique(lab, return_inverse=True)
        if not 2 <= classes.size <= n - 1:
            out[k] = float("nan")
            continue
        ks.append(k)
        encs.append(enc.astype(np.int64))
    if not ks:
        return out
    sizes = [int(e.max()) + 1 for e in encs]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    H = np.zeros((n, int(starts[-1])))
    for g, enc in enumerate(encs):
        H[np.arange(n), starts[g] + enc] = 1.0
    freqs = H.sum(axis=0)
    xc = rows - rows.mean(axis=0)
    sq = np.einsum("ij,ij->i", xc, xc)
    step = max(1, _SILHOUETTE_BLOCK_BYTES // (8 * n))
    s = np.empty((len(ks), n))
    for a in range(0, n, step):
        b = min(n, a + step)
        D = xc[a:b] @ xc.T
        D *= -2.0
        D += sq[a:b, None]
        D += sq[None, :]
        np.maximum(D, 0.0, out=D)
        np.sqrt(D, out=D)
        D[np.arange(b - a), np.arange(a, b)] = 0.0
        S = D @ H  # (rows, all clusters of all k): summed distances
        r = np.arange(b - a)
        for g in range(len(ks)):
            seg = slice(int(starts[g]), int(starts[g + 1]))
            own = encs[g][a:b]
            f = freqs[seg]
            per = S[:, seg]
            intra = per[r, own]
            mean_other = per / f
            mean_other[r, own] = np.inf
            inter = mean_other.min(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                intra = intra / (f[own] - 1)
                sil = (inter - intra) / np.maximum(intra, inter)
            s[g, a:b] = np.nan_to_num(sil)
    for g, k in enumerate(ks):
        out[k] = float(np.mean(s[g]))
    return out


# --------------------------------------------------------------------------- the sweep
def sweep(
    X: Any,
    ks: str | int | Sequence[int],
    *,
    sample_weight: Any = None,
    init: str | Mapping[int, Any] = "k-means||",
    seed: int | np.random.Generator | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    oversampling_factor: float = 2.0,
    init_rounds: int = 5,
    silhouette_sample_size: int = 10_000,
    keep_state: bool = True,
    callback: SweepCallback | None = None,
) -> SweepResult:
    """Fit k-means for every k of ``ks`` at once and score each k.

    Parameters
    ----------
    X : array-like, dask.array.Array of shape (n_samples, n_features), or Blocks
        The data; a :class:`~kmflow.kernels._blocks.Blocks` (from a cluster placement, with
        its ``resident`` runner) is used as it is, with its own weights.
    ks : str, int or sequence of int
        The k to fit: ``"2..12"``, ``[2, 4, 8]``, ... (see :func:`parse_ks`). k = 1 is
        fitted, its scores are NaN.
    sample_weight : array-like or dask.array.Array of shape (n_samples,), optional
        Non-negative weights. The metrics then weigh every row (a weight ``w`` counts as
        ``w`` copies of the row; scikit-learn's metrics have no weights, so they match
        scikit-learn only on the rows repeated), and the silhouette sample draws rows in
        proportion to their weight.
    init : "k-means||" or mapping of int to array-like, default "k-means||"
        ``"k-means||"``: one shared k-means|| candidate set (see Notes). A mapping gives the
        initial centers of every k (shape (k, n_features)).
    seed : int, numpy Generator or None
        Seeds k-means||, the k-means++ reductions and the silhouette sample; the same seed
        gives the same result for any chunking of the same data.
    max_iter : int, default 300
        Lloyd iterations at most, per k.
    tol : float, default 1e-4
        As :func:`kmflow.kernels.lloyd.lloyd`: a k stops when its summed squared center
        shift is 0 or at most ``tol`` times the mean per-feature (weighted) variance.
    oversampling_factor : float, default 2.0
        k-means|| samples about ``oversampling_factor * max(ks)`` candidates per round.
    init_rounds : int, default 5
        k-means|| rounds.
    silhouette_sample_size : int, default 10_000
        Rows in the silhouette sample (every row when ``n_samples`` is at most this, which
        makes the silhouette exact); 0 skips the silhouette (NaN).
    keep_state : bool, default True
        Keep each row's distance to its nearest k-means|| candidate (8 bytes a row) between
        the rounds (as :class:`~kmflow.KMeans` does when it fits in memory).
    callback : callable, optional
        Called with a :class:`SweepInfo` after every pass (k-means|| once, with its passes).

    Returns
    -------
    SweepResult

    Raises
    ------
    InvalidInputError
        Bad ``ks`` or parameters; malformed ``X``, weights or init arrays; NaN/inf in ``X``;
        a k larger than the rows of positive weight.
    TooFewDistinctPointsError
        The largest k exceeds the number of distinct rows (of positive weight): the message
        names that k and the number of distinct rows.

    Notes
    -----
    Initialisation: ONE k-means|| run (Bahmani et al.) for ``k_max = max(ks)``:
    ``init_rounds`` rounds oversampling about ``oversampling_factor * k_max`` candidates
    each, then one pass weighting every candidate by the total weight of the rows nearest to
    it (the passes and random streams of :func:`kmflow.kernels.init.kmeans_parallel`, so the
    largest k starts where ``KMeans(k_max, init="k-means||")`` with the same seed would).
    Every k then reduces the same weighted candidates in memory to k centers, by weighted
    greedy k-means++ and local weighted Lloyd steps, best of 10 restarts
    (:func:`kmflow.kernels.init._reduce_candidates`), each k with its own generator seeded
    by ``(seed key, k)``. A smaller k gets more candidates than its own k-means|| would
    draw, which only widens the choice. So the initialisation costs ``init_rounds + 2``
    passes for the whole sweep instead of per k.

    Lloyd: each iteration is one ``map_reduce`` whose block function measures the distances
    of every row to the centers of all k still iterating in one kernel call (a GEMM per tile
    of rows; nearest centers confirmed with per-feature differences whenever two are within
    a rounding margin, so each k's labels, sums and inertia are those of
    :func:`kmflow.kernels.lloyd.lloyd` from the same centers), and reduces per k the
    per-cluster sums, weights and inertia. A k leaves the active set when its shift is 0 or
    at most the tolerance, or at ``max_iter``. Clusters left empty are re-seeded from far
    points as in :func:`kmflow.kernels.lloyd.lloyd`, with one extra pass for all such k.

    Metrics: one pass for every k's per-cluster weights, sums, row counts and inertia under
    its final centers; then one pass for every k's per-cluster weighted sums of Euclidean
    and squared Euclidean distances to the means of the labelled rows, which also draws the
    silhouette sample. Davies-Bouldin and Calinski-Harabasz then follow
    :func:`kmflow.kernels.metrics.internal_metrics` (equal to scikit-learn's on the labels);
    the silhouette of the sample is computed in memory for every k at once (see
    :func:`_silhouettes`). The sample: unweighted, the rows with the smallest
    ``-log(u)`` keys of their global index (all rows when they fit); weighted, systematic
    draws on the cumulative-weight axis, as :func:`kmflow.kernels.metrics.silhouette_sample`.
    """
    t_start = time.perf_counter()
    k_list = parse_ks(ks)
    _check_params(max_iter, tol, oversampling_factor, init_rounds, silhouette_sample_size)
    if isinstance(X, Blocks):
        if sample_weight is not None:
            raise InvalidInputError("pass the weights inside the Blocks, not as sample_weight")
        blocks = X
    else:
        Xd = check_array(X)
        blocks = Blocks(Xd, check_sample_weight(sample_weight, Xd))
    given: dict[int, np.ndarray] | None = None
    d = int(blocks.X.shape[1])
    if not isinstance(init, str):
        given = {}
        for k in k_list:
            if k not in init:
                raise InvalidInputError(f"init gives no centers for k={k}")
            given[k] = check_centers(init[k], k, d)
    elif init != "k-means||":
        raise InvalidInputError(f"init must be 'k-means||' or a mapping k -> centers; got {init!r}")
    return _sweep(
        blocks,
        k_list,
        given=given,
        key=derive_key(seed),
        max_iter=int(max_iter),
        tol=float(tol),
        oversampling_factor=float(oversampling_factor),
        init_rounds=int(init_rounds),
        sample_size=int(silhouette_sample_size),
        keep_state=keep_state,
        callback=callback,
        t_start=t_start,
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_params(
    max_iter: Any, tol: Any, oversampling_factor: Any, init_rounds: Any, sample_size: Any
) -> None:
    if not _is_int(max_iter) or int(max_iter) < 1:
        raise InvalidInputError(f"max_iter must be an integer >= 1; got {max_iter!r}")
    if not isinstance(tol, numbers.Real) or not float(tol) >= 0:
        raise InvalidInputError(f"tol must be a number >= 0; got {tol!r}")
    if not isinstance(oversampling_factor, numbers.Real) or not float(oversampling_factor) > 0:
        raise InvalidInputError(f"oversampling_factor must be > 0; got {oversampling_factor!r}")
    if not _is_int(init_rounds) or int(init_rounds) < 1:
        raise InvalidInputError(f"init_rounds must be an integer >= 1; got {init_rounds!r}")
    if not _is_int(sample_size) or int(sample_size) < 0 or int(sample_size) == 1:
        raise InvalidInputError(
            f"silhouette_sample_size must be 0 (no silhouette) or an integer >= 2; "
            f"got {sample_size!r}"
        )


def _sweep(
    blocks: Blocks,
    ks: list[int],
    *,
    given: dict[int, np.ndarray] | None,
    key: int,
    max_iter: int,
    tol: float,
    oversampling_factor: float,
    init_rounds: int,
    sample_size: int,
    keep_state: bool,
    callback: SweepCallback | None,
    t_start: float | None = None,
) -> SweepResult:
    """The sweep on prepared blocks (the private twin of :func:`sweep`)."""
    t_start = time.perf_counter() if t_start is None else t_start
    clock = _Clock(ks, callback)
    t0 = time.perf_counter()
    stats = data_stats(blocks)
    clock.done("validate", time.perf_counter() - t0, ks)
    k_max = ks[-1]
    if stats.n_positive < k_max:
        too_many = [k for k in ks if k > stats.n_positive]
        raise InvalidInputError(
            f"k={too_many[0]}"
            + (f"..{too_many[-1]}" if len(too_many) > 1 else "")
            + f" but X has only {stats.n_positive} rows"
            + (" with positive weight" if blocks.sample_weight is not None else "")
        )
    shift = np.asarray(stats.mean, dtype=np.float64)

    # ---- initialisation
    centers: dict[int, np.ndarray] = {}
    if given is not None:
        centers = {k: c.copy() for k, c in given.items()}
    else:
        t0 = time.perf_counter()
        cand, cand_w, passes = _candidates(
            blocks,
            k_max,
            key=key,
            oversampling_factor=oversampling_factor,
            n_rounds=init_rounds,
            keep_state=keep_state,
        )
        clock.done("init", time.perf_counter() - t0, ks, passes=passes)
        for k in ks:
            t0 = time.perf_counter()
            rng = np.random.default_rng([key, k])
            centers[k] = _reduce_candidates(cand, cand_w, k, rng)
            clock.seconds[k] += time.perf_counter() - t0
        logger.info(
            "sweep init: %d k-means|| candidates for k=%d, reduced for every k", len(cand), k_max
        )

    # ---- Lloyd, every active k in one pass per iteration
    tol_abs = tolerance(stats.variance, tol)
    history: dict[int, list[IterationInfo]] = {k: [] for k in ks}
    n_iter = dict.fromkeys(ks, 0)
    converged = dict.fromkeys(ks, False)
    active = list(ks)
    iteration = 0
    while active:
        iteration += 1
        t0 = time.perf_counter()
        centers_t, starts = _stack(centers, active)
        sums, weights, _, inertias = map_reduce(
            blocks, _multi_block, _multi_combine, centers_t, starts, shift
        )
        t_pass = time.perf_counter() - t0
        clock.done(
            "lloyd",
            t_pass,
            active,
            iteration=iteration,
            inertia={k: float(inertias[g]) for g, k in enumerate(active)},
        )
        todo = {
            k: (centers[k], sums[starts[g] : starts[g + 1]], weights[starts[g] : starts[g + 1]])
            for g, k in enumerate(active)
        }
        t1 = time.perf_counter()
        moved = _relocate_many(blocks, todo)
        t_rel = time.perf_counter() - t1
        relocated = [k for k in active if np.any(todo[k][2] <= 0)]
        if relocated:
            clock.done("relocate", t_rel, relocated, iteration=iteration)
        still = []
        for g, k in enumerate(active):
            new, n_relocated = moved[k]
            shift_k = float(((new - centers[k]) ** 2).sum())
            centers[k] = new
            n_iter[k] = iteration
            history[k].append(
                IterationInfo(
                    iteration=iteration,
                    max_iter=max_iter,
                    inertia=float(inertias[g]),
                    center_shift=shift_k,
                    n_relocated=n_relocated,
                    seconds=t_pass + (t_rel if k in relocated else 0.0),
                )
            )
            if shift_k == 0.0 or shift_k <= tol_abs:
                converged[k] = True
            elif iteration < max_iter:
                still.append(k)
        logger.info(
            "sweep iteration %d: %d k active (%.3fs), %d still iterating",
            iteration,
            len(active),
            t_pass,
            len(still),
        )
        active = still

    # ---- metrics: two passes for every k
    return _score(
        blocks,
        ks,
        centers,
        stats,
        shift,
        clock,
        history,
        n_iter,
        converged,
        key,
        sample_size,
        t_start,
    )


def _score(
    blocks: Blocks,
    ks: list[int],
    centers: dict[int, np.ndarray],
    stats: DataStats,
    shift: np.ndarray,
    clock: _Clock,
    history: dict[int, list[IterationInfo]],
    n_iter: dict[int, int],
    converged: dict[int, bool],
    key: int,
    sample_size: int,
    t_start: float,
) -> SweepResult:
    centers_t, starts = _stack(centers, ks)
    t0 = time.perf_counter()
    (sums, weights, sizes, inertias), totals = map_reduce(
        blocks, _moments_block, _moments_combine, centers_t, starts, shift
    )
    clock.done(
        "moments",
        time.perf_counter() - t0,
        ks,
        inertia={k: float(inertias[g]) for g, k in enumerate(ks)},
    )
    means = np.zeros_like(sums)
    nonempty = weights > 0
    means[nonempty] = sums[nonempty] / weights[nonempty, None]

    n = stats.n_samples
    weighted = blocks.sample_weight is not None
    m = 0
    draw: tuple[Any, ...] = ("none",)
    if sample_size > 0:
        if not weighted:
            m = min(sample_size, n)
            draw = ("uniform", key, m)
        else:
            m = sample_size
            total = float(np.sum(totals))
            befores = (
                np.asarray(blocks.offsets, dtype=np.int64),
                np.concatenate([[0.0], np.cumsum(totals)[:-1]]),
            )
            step = total / m
            start = float(np.random.default_rng([key, 1]).random()) * step
            draw = ("systematic", befores, start, step, m)
    t0 = time.perf_counter()
    dist, sqd, sample = map_reduce(
        blocks,
        _spread_block,
        functools.partial(_spread_combine, m=max(m, 1), top=not weighted),
        centers_t,
        starts,
        shift,
        means,
        draw,
    )
    clock.done("spread", time.perf_counter() - t0, ks)

    # per-k scores
    results: dict[int, KResult] = {}
    sil: dict[int, float] = {}
    if m > 0:
        t0 = time.perf_counter()
        _, idx, rows, reps = sample
        order = np.argsort(idx, kind="stable")
        rows = np.repeat(rows[order], reps[order], axis=0)
        labels = np.empty((rows.shape[0], len(ks)), dtype=np.int64)
        _numba.assign_multi(rows, centers_t, starts, shift, labels)
        sil = _silhouettes(rows, {k: labels[:, g] for g, k in enumerate(ks)})
        clock.share(time.perf_counter() - t0, ks)
        m = rows.shape[0]
    for g, k in enumerate(ks):
        seg = slice(int(starts[g]), int(starts[g + 1]))
        w_k, s_k, nz = weights[seg], sums[seg], nonempty[seg]
        total = float(w_k.sum())
        k_used = int(nz.sum())
        db = ch = float("nan")
        if 2 <= k_used < stats.n_positive:
            m_used, w_used = means[seg][nz], w_k[nz]
            grand = s_k.sum(axis=0) / total
            between = float(np.sum(w_used * np.sum((m_used - grand) ** 2, axis=1)))
            within = float(np.sum(sqd[seg][nz]))
            ch = 1.0 if within == 0.0 else between * (total - k_used) / (within * (k_used - 1.0))
            db = _davies_bouldin(dist[seg][nz] / w_used, m_used)
        results[k] = KResult(
            k=k,
            centers=centers[k],
            inertia=float(inertias[g]),
            n_iter=n_iter[k],
            converged=converged[k],
            davies_bouldin=float(db),
            calinski_harabasz=float(ch),
            silhouette=sil.get(k, float("nan")),
            seconds=clock.seconds[k],
            sizes=sizes[seg].copy(),
            history=tuple(history[k]),
        )
    seconds = time.perf_counter() - t_start
    return SweepResult(
        results=results, n_passes=clock.passes, seconds=seconds, sample_size=m, seed=key
    )
