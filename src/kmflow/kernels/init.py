"""Initial centers: k-means|| (scalable k-means++), k-means++ and random, over row blocks.

Every random choice is keyed on the global row index (:mod:`kmflow.kernels._random`), so the
centers do not depend on how the data is chunked. Weighted sampling uses exponential races
(the row with the smallest ``-log(u) / weight`` wins), which merge across blocks by taking
minima.

References
----------
.. [1] B. Bahmani, B. Moseley, A. Vattani, R. Kumar, S. Vassilvitskii. "Scalable K-Means++".
   Proc. VLDB Endowment 5(7), 2012.
.. [2] D. Arthur, S. Vassilvitskii. "k-means++: the advantages of careful seeding". SODA 2007.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from kmflow.errors import InvalidInputError, TooFewDistinctPointsError
from kmflow.kernels import _numba
from kmflow.kernels._blocks import Blocks, StatesLost, map_persist_reduce, map_reduce
from kmflow.kernels._random import derive_key, stream_base, uniform
from kmflow.kernels.validation import check_array, check_sample_weight, data_stats

__all__ = ["kmeans_parallel", "kmeans_plusplus", "random_centers"]

logger = logging.getLogger(__name__)

#: Streams of the counter-based generator, one per kind of sampling pass.
_STREAM_FIRST = 0
_STREAM_ROUND = 1_000
_STREAM_RANDOM = 2_000
_STREAM_PLUSPLUS = 3_000

#: Lloyd steps on the weighted candidates when reducing them to k centers (as Spark does).
LOCAL_LLOYD_STEPS = 30
#: Seeded restarts of the in-memory reduction; the cheapest on the weighted candidates wins.
#: The candidates number about ``init_rounds * oversampling_factor * k``, so this is cheap.
LOCAL_RESTARTS = 10

_NO_WEIGHTS = np.empty(0)


# --------------------------------------------------------------------------- block helpers
def _block_d2(x: np.ndarray, centers_t: np.ndarray | None) -> np.ndarray:
    d2 = np.full(x.shape[0], np.inf)
    if centers_t is not None and centers_t.shape[1]:
        _numba.update_nearest(x, centers_t, 0, d2, np.zeros(x.shape[0], dtype=np.int64))
    return d2


# A race result: (keys, global indices, rows); sorted by key then index.
_Race = tuple[np.ndarray, np.ndarray, np.ndarray]


def _top_race(r: _Race, m: int) -> _Race:
    order = np.lexsort((r[1], r[0]))[:m]
    return r[0][order], r[1][order], r[2][order]


def _race_block(
    x: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    key: int,
    stream: int,
    centers_t: np.ndarray | None,
    m: int,
) -> _Race:
    """The ``m`` rows of this block with the smallest race keys ``-log(u) / (w * d2)``.

    Rows whose weight (times squared distance to ``centers_t``, when given) is zero never win.
    """
    n = x.shape[0]
    mass = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    if centers_t is not None:
        mass = mass * _block_d2(x, centers_t)
    u = uniform(key, stream, offset, n)
    with np.errstate(divide="ignore"):
        keys = np.where(mass > 0, -np.log(u) / mass, np.inf)
    finite = np.flatnonzero(np.isfinite(keys))
    if finite.size > m:
        finite = finite[np.argpartition(keys[finite], m - 1)[:m]]
    idx = offset + finite.astype(np.int64)
    return _top_race((keys[finite], idx, x[finite].astype(np.float64)), m)


def _race_combine(a: _Race, b: _Race, m: int) -> _Race:
    # ``m`` is passed in: blocks smaller than ``m`` return fewer rows, and merging two of
    # them must keep up to ``m``, not the larger of their lengths.
    return _top_race(
        (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), np.vstack([a[2], b[2]])), m
    )


def _race(
    blocks: Blocks, key: int, stream: int, centers: np.ndarray | None, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sample of up to ``m`` rows without replacement; returns (rows, indices).

    Probability is proportional to the sample weight, times ``d2`` to ``centers`` if given.
    """
    centers_t = None if centers is None else np.ascontiguousarray(centers.T)
    _, idx, rows = map_reduce(
        blocks, _race_block, functools.partial(_race_combine, m=m), key, stream, centers_t, m
    )
    return rows, idx


# k-means|| round: (psi, thresholds, global indices, rows); top by threshold descending.
_Over = tuple[float, np.ndarray, np.ndarray, np.ndarray]


def _top_over(o: _Over, m: int) -> _Over:
    order = np.lexsort((o[2], -o[1]))[:m]
    return o[0], o[1][order], o[2][order], o[3][order]


# Per-block k-means|| state: squared distance to the nearest candidate (float32) and its index.
_State = tuple[np.ndarray, np.ndarray]


def _nearest_state(x: np.ndarray, state: _State | None, cand_t: np.ndarray, start: int) -> _State:
    """Fold candidates ``start:`` into ``state`` (or all of them into a fresh state)."""
    if state is None:
        d2 = np.full(x.shape[0], np.inf, dtype=np.float32)
        labels = np.zeros(x.shape[0], dtype=np.int32)
        start = 0
    else:
        d2, labels = state[0].copy(), state[1].copy()
    if cand_t.shape[1] > start:
        _numba.update_nearest(x, np.ascontiguousarray(cand_t[:, start:]), start, d2, labels)
    return d2, labels


def _round_block(
    x: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    state: _State | None,
    cand_t: np.ndarray,
    start: int,
    key: int,
    stream: int,
    ell: float,
    m: int,
) -> tuple[_State, _Over]:
    """One k-means|| round on a block: update nearest candidates, measure ``psi``, sample.

    A row is kept when ``u < ell * w * d2 / psi``, i.e. when its threshold
    ``t = ell * w * d2 / u`` exceeds the (global, not yet known) ``psi``. Returning each
    block's ``m`` largest thresholds lets one pass both measure ``psi`` and sample.
    """
    n = x.shape[0]
    if state is None:
        d2 = np.full(n, np.inf, dtype=np.float32)
        labels = np.zeros(n, dtype=np.int32)
        start = 0
    else:
        d2, labels = state[0].copy(), state[1].copy()
    t = np.empty(n)
    has_w = w is not None
    psi = _numba.round_thresholds(
        x,
        w if has_w else _NO_WEIGHTS,
        has_w,
        np.ascontiguousarray(cand_t[:, start:]),
        start,
        d2,
        labels,
        stream_base(key, stream),
        offset,
        ell,
        t,
    )
    state = (d2, labels)
    pos = np.flatnonzero(t > 0)
    if pos.size > m:
        pos = pos[np.argpartition(-t[pos], m - 1)[:m]]
    over = (float(psi), t[pos], offset + pos.astype(np.int64), x[pos].astype(np.float64))
    return state, _top_over(over, m)


def _round_block_stateless(x: np.ndarray, w: np.ndarray | None, offset: int, *args: Any) -> _Over:
    return _round_block(x, w, offset, None, *args)[1]


def _over_combine(a: _Over, b: _Over, m: int) -> _Over:
    merged = (
        a[0] + b[0],
        np.concatenate([a[1], b[1]]),
        np.concatenate([a[2], b[2]]),
        np.vstack([a[3], b[3]]),
    )
    return _top_over(merged, m)


def _weight_block(
    x: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    state: _State | None,
    cand_t: np.ndarray,
    start: int,
) -> np.ndarray:
    """Total sample weight of the rows nearest to each candidate."""
    _, labels = _nearest_state(x, state, cand_t, start)
    return np.bincount(labels, weights=w, minlength=cand_t.shape[1]).astype(np.float64)


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


# --------------------------------------------------------------------------- local (in-memory)
def _sqdist_to(points: np.ndarray, c: np.ndarray) -> np.ndarray:
    diff = points - c
    return np.einsum("ij,ij->i", diff, diff)


def _local_kmeans_plusplus(
    points: np.ndarray, weights: np.ndarray, n_clusters: int, rng: np.random.Generator
) -> np.ndarray:
    """Greedy weighted k-means++ on a small in-memory set of distinct points."""
    n_trials = 2 + int(np.log(n_clusters))
    p = weights / weights.sum()
    chosen = [int(rng.choice(len(points), p=p))]
    d2 = _sqdist_to(points, points[chosen[0]])
    pot = float(weights @ d2)
    for _ in range(1, n_clusters):
        cum = np.cumsum(weights * d2)
        trials = np.searchsorted(cum, rng.random(n_trials) * cum[-1], side="right")
        trials = np.minimum(trials, len(points) - 1)
        best, best_pot, best_d2 = -1, np.inf, d2
        for t in trials:
            cand_d2 = np.minimum(d2, _sqdist_to(points, points[t]))
            cand_pot = float(weights @ cand_d2)
            if cand_pot < best_pot:
                best, best_pot, best_d2 = int(t), cand_pot, cand_d2
        chosen.append(best)
        d2, pot = best_d2, best_pot
    del pot
    return points[chosen].copy()


def _local_lloyd(
    points: np.ndarray, weights: np.ndarray, centers: np.ndarray, n_steps: int
) -> np.ndarray:
    """A few weighted Lloyd steps in memory; an emptied center keeps its position."""
    centers = centers.copy()
    k, d = centers.shape
    for _ in range(n_steps):
        sums = np.zeros((k, d))
        counts = np.zeros(k)
        _numba.accumulate(points, weights, True, np.ascontiguousarray(centers.T), sums, counts)
        new = centers.copy()
        nz = counts > 0
        new[nz] = sums[nz] / counts[nz, None]
        if np.array_equal(new, centers):
            break
        centers = new
    return centers


def _dedupe(rows: np.ndarray) -> np.ndarray:
    """Distinct rows, in first-seen order."""
    _, first = np.unique(rows, axis=0, return_index=True)
    return rows[np.sort(first)]


# --------------------------------------------------------------------------- k-means||
def _kmeans_parallel(
    blocks: Blocks,
    n_clusters: int,
    *,
    key: int,
    oversampling_factor: float,
    n_rounds: int,
    keep_state: bool = True,
) -> np.ndarray:
    """k-means|| on validated blocks (the private twin of :func:`kmeans_parallel`).

    Parameters
    ----------
    keep_state : bool, default True
        Keep each row's distance to its nearest candidate (8 bytes a row) in memory between
        rounds, so a round only measures distances to the previous round's new candidates.
        Without it (data streamed from its source), every round measures all candidates.

    Notes
    -----
    ``n_rounds + 2`` passes: the first center, one per round (measuring the cost ``psi`` and
    sampling in the same pass), and one weighting the candidates. A round whose thresholds
    overflow the per-block buffer is redone with a larger buffer (same random numbers, so
    the same result); in practice this does not happen. If a worker holding the kept state
    is lost, the data is placed again and k-means|| starts over from its first pass (the same
    random numbers, so the same centers).
    """
    while True:
        try:
            return _kmeans_parallel_once(
                blocks,
                n_clusters,
                key=key,
                oversampling_factor=oversampling_factor,
                n_rounds=n_rounds,
                keep_state=keep_state,
            )
        except StatesLost as exc:
            logger.warning("k-means|| starts over: %s", exc)


def _kmeans_parallel_once(
    blocks: Blocks,
    n_clusters: int,
    *,
    key: int,
    oversampling_factor: float,
    n_rounds: int,
    keep_state: bool,
) -> np.ndarray:
    """One run of k-means|| (see :func:`_kmeans_parallel`)."""
    ell = oversampling_factor * n_clusters
    cand, _ = _race(blocks, key, _STREAM_FIRST, None, 1)
    states: list[Any] = [None] * len(blocks)
    start = 0  # candidates from index `start` on are not yet folded into `states`
    buffer = int(4 * ell + 64)
    r = 0
    while True:
        r += 1
        cand_t = np.ascontiguousarray(cand.T)
        while True:
            args = (cand_t, start, key, _STREAM_ROUND + r, ell, buffer)
            if keep_state:
                new_states, (psi, t, _idx, rows) = map_persist_reduce(
                    blocks, _round_block, functools.partial(_over_combine, m=buffer), states, *args
                )
            else:
                psi, t, _idx, rows = map_reduce(
                    blocks,
                    _round_block_stateless,
                    functools.partial(_over_combine, m=buffer),
                    *args,
                )
            if not (len(t) == buffer and t.min() > psi):
                break
            buffer *= 4
        if keep_state:
            states, start = new_states, len(cand)
        if psi <= 0:
            logger.info("k-means|| round %d: every point coincides with a candidate", r)
            break
        new = _dedupe(rows[t > psi])
        cand = np.vstack([cand, new])
        logger.info(
            "k-means|| round %d: cost %.6g, %d new candidates (%d in all)",
            r,
            psi,
            len(new),
            len(cand),
        )
        if r >= n_rounds and len(cand) >= n_clusters:
            break
        if r >= n_rounds + 50:
            raise InvalidInputError(
                f"k-means|| found only {len(cand)} candidates for n_clusters={n_clusters} "
                f"after {r} rounds; raise oversampling_factor or use init='k-means++'"
            )
    if len(cand) < n_clusters:
        raise TooFewDistinctPointsError(n_clusters, len(cand))
    cand_t = np.ascontiguousarray(cand.T)
    if keep_state:
        weights = map_reduce(blocks, _weight_block, _add, cand_t, start, states=states)
    else:
        weights = map_reduce(blocks, _weight_block, _add, None, cand_t, 0)
    keep = weights > 0
    cand, weights = cand[keep], weights[keep]
    return _reduce_candidates(cand, weights, n_clusters, np.random.default_rng(key))


def _reduce_candidates(
    cand: np.ndarray, weights: np.ndarray, n_clusters: int, rng: np.random.Generator
) -> np.ndarray:
    """Weighted k-means++ plus local Lloyd on the candidates, best of ``LOCAL_RESTARTS``."""
    best, best_cost = cand[:n_clusters], np.inf
    for _ in range(LOCAL_RESTARTS):
        centers = _local_kmeans_plusplus(cand, weights, n_clusters, rng)
        centers = _local_lloyd(cand, weights, centers, LOCAL_LLOYD_STEPS)
        sums = np.zeros_like(centers)
        counts = np.zeros(n_clusters)
        cost = _numba.accumulate(cand, weights, True, np.ascontiguousarray(centers.T), sums, counts)
        if cost < best_cost:
            best, best_cost = centers, cost
    return best


def _kmeans_plusplus(blocks: Blocks, n_clusters: int, *, key: int) -> np.ndarray:
    """Greedy k-means++ over all rows (the private twin of :func:`kmeans_plusplus`).

    Notes
    -----
    ``2 * n_clusters - 1`` computes: for each new center one pass sampling
    ``2 + log(k)`` trial rows with probability proportional to ``w * d2`` and one pass
    measuring the cost each trial would leave; the cheapest trial is kept. Prefer k-means||
    (``n_rounds + 2`` passes) on large data.
    """
    n_trials = 2 + int(np.log(n_clusters))
    centers, _ = _race(blocks, key, _STREAM_FIRST, None, 1)
    for c in range(1, n_clusters):
        trials, _ = _race(blocks, key, _STREAM_PLUSPLUS + c, centers, n_trials)
        if len(trials) == 0:
            raise TooFewDistinctPointsError(n_clusters, len(centers))
        pots = map_reduce(
            blocks,
            _trial_cost_block,
            _add,
            np.ascontiguousarray(centers.T),
            trials,
        )
        centers = np.vstack([centers, trials[int(np.argmin(pots))]])
    return centers


def _trial_cost_block(
    x: np.ndarray, w: np.ndarray | None, offset: int, centers_t: np.ndarray, trials: np.ndarray
) -> np.ndarray:
    d2 = _block_d2(x, centers_t)
    out = np.empty(len(trials))
    for i, t in enumerate(trials):
        dt = d2.copy()
        _numba.update_nearest(
            x, np.ascontiguousarray(t[:, None]), 0, dt, np.zeros(x.shape[0], dtype=np.int64)
        )
        out[i] = float(dt.sum() if w is None else dt @ w)
    return out


def _random_centers(blocks: Blocks, n_clusters: int, *, key: int) -> np.ndarray:
    """``n_clusters`` distinct rows drawn with probability proportional to their weight.

    Notes
    -----
    One ``compute`` normally; if the draw holds duplicates, one pass checks whether the data
    has enough distinct rows and a larger draw follows.
    """
    m = 2 * n_clusters + 16
    while True:
        rows, _ = _race(blocks, key, _STREAM_RANDOM, None, m)
        distinct = _dedupe(rows)
        if len(distinct) >= n_clusters:
            return distinct[:n_clusters]
        if len(rows) < m:  # every positively weighted row was drawn
            raise TooFewDistinctPointsError(n_clusters, len(distinct))
        # Many duplicates: does any row lie off the distinct ones drawn so far?
        extra, _ = _race(blocks, key, _STREAM_RANDOM + 1, distinct, 1)
        if len(extra) == 0:
            raise TooFewDistinctPointsError(n_clusters, len(distinct))
        m *= 4


# --------------------------------------------------------------------------- public twins
def _prepare(X: Any, sample_weight: Any, n_clusters: int) -> Blocks:
    if not isinstance(n_clusters, int | np.integer) or n_clusters < 1:
        raise InvalidInputError(f"n_clusters must be a positive integer; got {n_clusters!r}")
    Xd = check_array(X)
    blocks = Blocks(Xd, check_sample_weight(sample_weight, Xd))
    data_stats(blocks)
    return blocks


def kmeans_parallel(
    X: Any,
    n_clusters: int,
    *,
    sample_weight: Any = None,
    oversampling_factor: float = 2.0,
    n_rounds: int = 5,
    random_state: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Initial centers by k-means|| [1]_.

    A seeded first center; then ``n_rounds`` rounds, each keeping every row with
    probability ``min(1, l * w * d2 / psi)`` where ``l = oversampling_factor * n_clusters``,
    ``d2`` is its squared distance to the nearest candidate and ``psi`` the weighted cost of
    all rows (about ``l`` new candidates a round). Candidates are weighted by the total
    sample weight of the rows nearest to them, then reduced to ``n_clusters`` by weighted
    greedy k-means++ and a few weighted Lloyd steps.

    Parameters
    ----------
    X : array-like or dask.array.Array of shape (n_samples, n_features)
    n_clusters : int
    sample_weight : array-like of shape (n_samples,), optional
    oversampling_factor : float, default 2.0
    n_rounds : int, default 5
    random_state : int, numpy Generator or None

    Returns
    -------
    ndarray of float64, shape (n_clusters, n_features)

    Raises
    ------
    TooFewDistinctPointsError
        Fewer distinct positively weighted rows than ``n_clusters``.
    InvalidInputError
        Malformed input.

    Notes
    -----
    One validation pass, then ``n_rounds + 2`` passes (see :func:`_kmeans_parallel`).
    """
    if oversampling_factor <= 0:
        raise InvalidInputError(f"oversampling_factor must be > 0; got {oversampling_factor}")
    if n_rounds < 1:
        raise InvalidInputError(f"n_rounds must be >= 1; got {n_rounds}")
    blocks = _prepare(X, sample_weight, n_clusters)
    return _kmeans_parallel(
        blocks,
        int(n_clusters),
        key=derive_key(random_state),
        oversampling_factor=oversampling_factor,
        n_rounds=n_rounds,
    )


def kmeans_plusplus(
    X: Any,
    n_clusters: int,
    *,
    sample_weight: Any = None,
    random_state: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Initial centers by greedy k-means++ [2]_ over all rows (``2k - 1`` passes).

    Returns
    -------
    ndarray of float64, shape (n_clusters, n_features)
    """
    blocks = _prepare(X, sample_weight, n_clusters)
    return _kmeans_plusplus(blocks, int(n_clusters), key=derive_key(random_state))


def random_centers(
    X: Any,
    n_clusters: int,
    *,
    sample_weight: Any = None,
    random_state: int | np.random.Generator | None = None,
) -> np.ndarray:
    """``n_clusters`` distinct rows of ``X`` drawn with probability proportional to weight.

    Returns
    -------
    ndarray of float64, shape (n_clusters, n_features)
    """
    blocks = _prepare(X, sample_weight, n_clusters)
    return _random_centers(blocks, int(n_clusters), key=derive_key(random_state))
