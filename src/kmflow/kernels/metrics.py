"""Evaluation metrics of a clustering, computed in distributed passes over Dask arrays.

- :func:`internal_metrics`: inertia, Calinski-Harabasz and Davies-Bouldin (two passes)
- :func:`silhouette_sample`: exact silhouette of a seeded, chunk-invariant sample (one pass)
- :func:`contingency_table` / :func:`external_metrics`: ARI, AMI, NMI, FMI, purity, entropy,
  pairwise F1 and Hungarian-matched accuracy against reference labels (one pass);
  :func:`hungarian_matching`: the cluster-to-class matching behind the accuracy
- :func:`feature_histograms`: weighted per-feature histograms, reference statistics for drift

Each metric equals scikit-learn's on data small enough to compare. Sample weights generalise the
internal metrics so that an integer weight ``w`` gives exactly the result of repeating the row
``w`` times; rows of weight zero count as absent.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import gammaln

from kmflow.errors import InvalidInputError
from kmflow.kernels import _numba
from kmflow.kernels._blocks import Blocks, map_reduce
from kmflow.kernels._random import derive_key, uniform
from kmflow.kernels.dense import _require_finite
from kmflow.kernels.validation import (
    DEFAULT_CHUNK_ROWS,
    check_array,
    check_centers,
    check_sample_weight,
)

__all__ = [
    "ExternalMetrics",
    "InternalMetrics",
    "contingency_table",
    "external_metrics",
    "feature_histograms",
    "hungarian_matching",
    "internal_metrics",
    "silhouette_sample",
]

#: Random stream of the silhouette sample (k-means|| and the other inits use 0 .. 3_999).
_STREAM_SILHOUETTE = 4_000

#: Bytes of one pairwise-distance block in the in-memory silhouette (two such buffers).
_SILHOUETTE_BLOCK_BYTES = 2**25

#: Terms of the expected mutual information evaluated at once (a few arrays of this length).
_EMI_BATCH_TERMS = 2**20

#: Hypergeometric tail left out of the expected mutual information: values of ``n_ij`` whose
#: tail probability is below ``exp(-_EMI_TAIL)`` (Hoeffding's bound) are not summed.
_EMI_TAIL = 80.0


# --------------------------------------------------------------------------- shared helpers
def _as_labels(labels: Any, name: str) -> da.Array:
    """``labels`` as a 1-D integer dask array with known chunk sizes."""
    if not isinstance(labels, da.Array):
        labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InvalidInputError(f"{name} must be 1-D; got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise InvalidInputError(f"{name} must be integers; got dtype {labels.dtype}")
    if isinstance(labels, np.ndarray):
        return da.from_array(labels, chunks=(DEFAULT_CHUNK_ROWS,))
    if any(np.isnan(c) for c in labels.chunks[0]):
        labels = labels.compute_chunk_sizes()
    return labels


def _check_labels(labels: Any, n_samples: int, *, name: str, other: str) -> da.Array:
    """:func:`_as_labels`, and the length must be ``n_samples`` (the length of ``other``)."""
    lab = _as_labels(labels, name)
    if lab.shape[0] != n_samples:
        raise InvalidInputError(
            f"{name} has length {lab.shape[0]} but {other} has length {n_samples}"
        )
    return lab


def _label_blocks(labels: da.Array, chunks: tuple[int, ...]) -> list[Any]:
    """One delayed label block per row block (``labels`` rechunked to ``chunks``)."""
    return list(labels.rechunk((chunks,)).to_delayed(optimize_graph=True).ravel())


def _block_weights(w: np.ndarray | None, n: int, offset: int) -> np.ndarray:
    """The block's weights as float64 (ones when unweighted); rejects NaN, inf and negatives."""
    if w is None:
        return np.ones(n)
    wv = np.asarray(w, dtype=np.float64)
    bad = ~np.isfinite(wv) | (wv < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidInputError(
            f"sample_weight must be finite and non-negative; {int(bad.sum())} value(s) are "
            f"not (first: {float(wv[i])!r} at row {offset + i})"
        )
    return wv


# --------------------------------------------------------------------------- internal metrics
@dataclass(frozen=True)
class InternalMetrics:
    """Internal (label-free) quality of a clustering; the result of :func:`internal_metrics`.

    Attributes
    ----------
    n_samples : int
        Rows of ``X``.
    total_weight : float
        Sum of the sample weights (``n_samples`` when unweighted).
    n_clusters : int
        Number of centers given (empty clusters included).
    inertia : float
        Weighted sum of squared distances of each row to its nearest given center (to the
        center its label names when labels were given).
    calinski_harabasz : float
        Variance ratio criterion over the non-empty clusters, with the clusters' weighted
        means as centroids (higher is better).
    davies_bouldin : float
        Mean over the non-empty clusters of the worst ratio of summed scatter to centroid
        separation (lower is better; 0 is the minimum).
    sizes : ndarray of int64, shape (n_clusters,)
        Rows per cluster (an unweighted count, rows of weight zero included).
    weights : ndarray of float64, shape (n_clusters,)
        Total sample weight per cluster.
    """

    n_samples: int
    total_weight: float
    n_clusters: int
    inertia: float
    calinski_harabasz: float
    davies_bouldin: float
    sizes: np.ndarray
    weights: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: Python ints, floats and lists."""
        return {
            "n_samples": int(self.n_samples),
            "total_weight": float(self.total_weight),
            "n_clusters": int(self.n_clusters),
            "inertia": float(self.inertia),
            "calinski_harabasz": float(self.calinski_harabasz),
            "davies_bouldin": float(self.davies_bouldin),
            "sizes": [int(v) for v in self.sizes],
            "weights": [float(v) for v in self.weights],
        }


def _block_labels(
    x: np.ndarray, lab: np.ndarray | None, centers: np.ndarray, centers_t: np.ndarray, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels of a block's rows and their squared distances to the labelled centers.

    Without ``lab``, the nearest center (lloyd's compiled assignment kernel); with it, the
    given labels, checked to lie in ``[0, n_clusters)``.
    """
    _require_finite(x)
    n = x.shape[0]
    if lab is None:
        labels = np.empty(n, dtype=np.int32)
        d2 = np.empty(n)
        _numba.assign(x, centers_t, labels, d2)
        return labels, d2
    labels = np.asarray(lab)
    k = centers.shape[0]
    bad = (labels < 0) | (labels >= k)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidInputError(
            f"labels must lie in [0, {k}) (one per center); {int(bad.sum())} do not "
            f"(first: {int(labels[i])} at row {offset + i})"
        )
    labels = labels.astype(np.intp, copy=False)  # bincount takes no uint64
    diff = x.astype(np.float64) - centers[labels]
    return labels, np.einsum("ij,ij->i", diff, diff)


# Pass 1 partial: (weighted sums (k, d), weights (k,), counts (k,), inertia, n positive rows)
_Moments = tuple[np.ndarray, np.ndarray, np.ndarray, float, int]


def _moments_block(
    x: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    lab: np.ndarray | None,
    centers: np.ndarray,
    centers_t: np.ndarray,
) -> _Moments:
    k, d = centers.shape
    n = x.shape[0]
    labels, d2 = _block_labels(x, lab, centers, centers_t, offset)
    wv = _block_weights(w, n, offset)
    xf = x.astype(np.float64)
    sums = np.empty((k, d))
    for f in range(d):
        sums[:, f] = np.bincount(labels, weights=wv * xf[:, f], minlength=k)
    weights = np.bincount(labels, weights=wv, minlength=k).astype(np.float64)
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    return sums, weights, counts, float(wv @ d2), int(np.count_nonzero(wv > 0))


def _moments_combine(a: _Moments, b: _Moments) -> _Moments:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4]


# Pass 2 partial: per-cluster weighted sums of distances and of squared distances to the means.
_Spread = tuple[np.ndarray, np.ndarray]


def _spread_block(
    x: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    lab: np.ndarray | None,
    centers: np.ndarray,
    centers_t: np.ndarray,
    means: np.ndarray,
) -> _Spread:
    k = centers.shape[0]
    labels, _ = _block_labels(x, lab, centers, centers_t, offset)
    wv = _block_weights(w, x.shape[0], offset)
    diff = x.astype(np.float64) - means[labels]
    sq = np.einsum("ij,ij->i", diff, diff)
    dist = np.bincount(labels, weights=wv * np.sqrt(sq), minlength=k).astype(np.float64)
    sqd = np.bincount(labels, weights=wv * sq, minlength=k).astype(np.float64)
    return dist, sqd


def _spread_combine(a: _Spread, b: _Spread) -> _Spread:
    return a[0] + b[0], a[1] + b[1]


def _davies_bouldin(scatter: np.ndarray, centroids: np.ndarray) -> float:
    """Davies-Bouldin from per-cluster mean distances to centroids, as scikit-learn does it."""
    diff = centroids[:, None, :] - centroids[None, :, :]
    separation = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    if np.allclose(scatter, 0.0) or np.allclose(separation, 0.0):
        return 0.0
    separation[separation == 0] = np.inf
    ratios = (scatter[:, None] + scatter[None, :]) / separation
    return float(np.mean(np.max(ratios, axis=1)))


def internal_metrics(
    X: Any,
    centers: Any,
    *,
    sample_weight: Any = None,
    labels: Any = None,
    undefined: Literal["raise", "nan"] = "raise",
) -> InternalMetrics:
    """Inertia, Calinski-Harabasz and Davies-Bouldin of a clustering of ``X``.

    Parameters
    ----------
    X : array-like or dask.array.Array of shape (n_samples, n_features)
    centers : array-like of shape (n_clusters, n_features)
        The model's centers; they define the inertia and, without ``labels``, the labels.
    sample_weight : array-like or dask.array.Array of shape (n_samples,), optional
        Non-negative weights; an integer weight ``w`` counts as ``w`` copies of the row.
    labels : array-like or dask.array.Array of int, shape (n_samples,), optional
        The cluster of each row, in ``[0, n_clusters)``. Default: the nearest center.
    undefined : {"raise", "nan"}, default "raise"
        What to do when Calinski-Harabasz and Davies-Bouldin are undefined (fewer than 2
        non-empty clusters, or every row its own cluster): raise, as scikit-learn does, or
        return them as NaN with the inertia and cluster sizes still measured (an evaluation
        of a small held-out set should not fail for it).

    Returns
    -------
    InternalMetrics

    Raises
    ------
    InvalidInputError
        Malformed ``X``, ``centers``, weights or labels (shape, dtype, length, labels out of
        range); NaN or infinity in ``X``; NaN, infinite or negative weights, or all weights
        zero; fewer than 2 non-empty clusters; or as many non-empty clusters as rows of
        positive weight (scikit-learn's valid range is 2 to n_samples - 1).

    Notes
    -----
    Two ``compute`` calls: pass 1 sums, per cluster, the weighted rows, the weights and the
    row counts, and the weighted squared distances to the given centers (the inertia); pass 2
    sums, per cluster, the weighted Euclidean and squared Euclidean distances to the clusters'
    weighted means (directly, not as a sum of squares minus a squared mean, which cancels).
    A lazy ``labels`` array (and the nearest-center assignment without it) is evaluated in
    both passes; persist an expensive one first. A dask array with unknown chunk sizes costs
    one more compute to learn them.

    Calinski-Harabasz and Davies-Bouldin follow
    :func:`sklearn.metrics.calinski_harabasz_score` and
    :func:`sklearn.metrics.davies_bouldin_score` on ``(X, labels)``: centroids are the
    means of the labelled rows (not the given centers), only non-empty clusters count (a
    cluster is non-empty when its weight is positive), and with weights every count becomes
    a sum of weights. So CH = ``B (W - k) / (S (k - 1))`` with ``W`` the total weight, ``k``
    the non-empty clusters, ``B = sum_j W_j |m_j - m|^2``, ``S = sum_i w_i |x_i - m_j|^2``;
    CH is 1.0 when ``S`` is 0. DB is 0.0 when every scatter or every centroid separation is
    close to 0 (``np.allclose``), and coincident centroids are ignored, as in scikit-learn.
    Complexity O(n_samples * n_clusters * n_features) (the assignment), memory per block
    O(block rows * n_features), plus O(n_clusters^2 * n_features) in memory for the centroid
    separations of Davies-Bouldin.

    References
    ----------
    .. [1] T. Calinski and J. Harabasz, "A dendrite method for cluster analysis",
       Communications in Statistics, 1974.
    .. [2] D. L. Davies and D. W. Bouldin, "A cluster separation measure", IEEE TPAMI, 1979.
    """
    Xd = check_array(X)
    W = check_sample_weight(sample_weight, Xd)
    c = check_centers(centers, None, Xd.shape[1], shape_from=f"X has {Xd.shape[1]} features")
    n_samples = int(Xd.shape[0])
    blocks = Blocks(Xd, W)
    if labels is None:
        states: list[Any] = [None] * len(blocks)
    else:
        lab = _check_labels(labels, n_samples, name="labels", other="X")
        states = _label_blocks(lab, Xd.chunks[0])
    k = c.shape[0]
    c_t = np.ascontiguousarray(c.T)

    sums, weights, counts, inertia, n_positive = map_reduce(
        blocks, _moments_block, _moments_combine, c, c_t, states=states
    )
    total = float(weights.sum())
    if total <= 0:
        raise InvalidInputError("sample_weight sums to zero: no row has positive weight")
    nonempty = weights > 0
    k_used = int(nonempty.sum())
    if undefined == "nan" and not 2 <= k_used < n_positive:
        return InternalMetrics(
            n_samples=n_samples,
            total_weight=total,
            n_clusters=k,
            inertia=float(inertia),
            calinski_harabasz=float("nan"),
            davies_bouldin=float("nan"),
            sizes=counts,
            weights=weights,
        )
    if k_used < 2:
        raise InvalidInputError(
            f"the metrics need at least 2 non-empty clusters; got {k_used} "
            f"(of {k} centers): every row of positive weight has the same label"
        )
    if k_used >= n_positive:
        raise InvalidInputError(
            f"{k_used} non-empty clusters for {n_positive} rows of positive weight: every row "
            "is its own cluster (valid: 2 to n_samples - 1 clusters)"
        )
    means = np.zeros_like(sums)
    means[nonempty] = sums[nonempty] / weights[nonempty, None]

    dist, sqd = map_reduce(blocks, _spread_block, _spread_combine, c, c_t, means, states=states)
    grand_mean = sums.sum(axis=0) / total
    w_used, m_used = weights[nonempty], means[nonempty]
    between = float(np.sum(w_used * np.sum((m_used - grand_mean) ** 2, axis=1)))
    within = float(np.sum(sqd[nonempty]))
    ch = 1.0 if within == 0.0 else between * (total - k_used) / (within * (k_used - 1.0))
    db = _davies_bouldin(dist[nonempty] / w_used, m_used)
    return InternalMetrics(
        n_samples=n_samples,
        total_weight=total,
        n_clusters=k,
        inertia=float(inertia),
        calinski_harabasz=float(ch),
        davies_bouldin=db,
        sizes=counts,
        weights=weights,
    )


# --------------------------------------------------------------------------- silhouette
# A sample: (keys, global row indices, rows, labels), sorted by key then index.
_Sample = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _top_sample(s: _Sample, m: int) -> _Sample:
    order = np.lexsort((s[1], s[0]))[:m]
    return s[0][order], s[1][order], s[2][order], s[3][order]


def _sample_block(
    x: np.ndarray, w: np.ndarray | None, offset: int, lab: np.ndarray, key: int, m: int
) -> _Sample:
    """The ``m`` rows of this block with the smallest keys ``-log(u)`` (ties: lowest index).

    Unweighted data only (weighted data is drawn by :func:`_weighted_sample`).
    """
    _require_finite(x)
    n = x.shape[0]
    keys = -np.log(uniform(key, _STREAM_SILHOUETTE, offset, n))
    keep = np.arange(n)
    if n > m:
        # Everything up to the m-th smallest key, ties included, so the block never drops a
        # row that the global (key, index) order would keep.
        kth = np.partition(keys, m - 1)[m - 1]
        keep = np.flatnonzero(keys <= kth)
    labels = np.asarray(lab)
    return _top_sample((keys[keep], offset + keep.astype(np.int64), x[keep], labels[keep]), m)


def _concat4(
    a: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.concatenate([a[0], b[0]]),
        np.concatenate([a[1], b[1]]),
        np.concatenate([a[2], b[2]]),
        np.concatenate([a[3], b[3]]),
    )


def _sample_combine(a: _Sample, b: _Sample, m: int) -> _Sample:
    return _top_sample(_concat4(a, b), m)


def _sample(
    blocks: Blocks, label_blocks: list[Any], key: int, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded uniform sample of up to ``m`` rows of unweighted data: (global indices, rows as
    float64, labels), by index.

    Notes
    -----
    One ``compute``. The sample depends only on ``key`` and the data, not on the chunking:
    keys come from the global row index, each block keeps its ``m`` smallest, and the tree
    merge keeps the ``m`` smallest of the union.
    """
    _, idx, rows, labels = map_reduce(
        blocks,
        _sample_block,
        functools.partial(_sample_combine, m=m),
        key,
        m,
        states=label_blocks,
    )
    order = np.argsort(idx, kind="stable")
    return idx[order], rows[order].astype(np.float64), labels[order]


# A systematic sample: (global row indices, rows, labels, how many sample points each got).
_Drawn = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _weight_total_block(x: np.ndarray, w: np.ndarray | None, offset: int) -> float:
    return float(np.sum(_block_weights(w, x.shape[0], offset), dtype=np.float64))


def _drawn_block(
    x: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    state: tuple[Any, float],
    start: float,
    step: float,
    m: int,
) -> _Drawn:
    """Rows of this block hit by the sample points ``start + j * step`` (j < m) on the
    cumulative-weight axis; ``state`` is (labels of the block, weight before the block)."""
    _require_finite(x)
    lab, before = state
    wv = _block_weights(w, x.shape[0], offset)
    upper = before + np.cumsum(wv)
    lower = upper - wv

    def points_up_to(c: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((c - start) / step) + 1, 0, m).astype(np.int64)

    counts = points_up_to(upper) - points_up_to(lower)
    keep = np.flatnonzero(counts > 0)
    labels = np.asarray(lab)
    return offset + keep.astype(np.int64), x[keep], labels[keep], counts[keep]


def _weighted_sample(
    blocks: Blocks, label_blocks: list[Any], key: int, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """``m`` draws with probability proportional to weight: (rows as float64, labels).

    Systematic sampling on the cumulative-weight axis (one seeded offset, then every
    ``total / m``): a row of weight ``w`` is drawn about ``w * m / total`` times, so the
    sample is what sampling the data with each row repeated ``w`` times would give (pixels
    from a color histogram). With integer weights and ``m`` equal to their sum, every row is
    drawn exactly ``w`` times.

    Notes
    -----
    Two ``compute`` calls: the weight of each block, then the draw. The cumulative weights
    follow the global row order, so the draw does not depend on the chunking (exactly so
    for integer weights, whose sums are exact).
    """
    totals = dask.compute(
        *[
            dask.delayed(_weight_total_block, pure=True)(x, w, off)
            for x, w, off in zip(blocks.xs, blocks.ws, blocks.offsets, strict=True)
        ]
    )
    before = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
    total = float(np.sum(totals))
    step = total / m
    start = float(np.random.default_rng(key).random()) * step
    states = [(lab, float(b)) for lab, b in zip(label_blocks, before, strict=True)]
    idx, rows, labels, counts = map_reduce(
        blocks, _drawn_block, _concat4, start, step, m, states=states
    )
    order = np.argsort(idx, kind="stable")
    reps = counts[order]
    return np.repeat(rows[order].astype(np.float64), reps, axis=0), np.repeat(labels[order], reps)


def _silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """Exact mean silhouette of in-memory rows (scikit-learn's definition, Euclidean).

    Pairwise distances are formed one row block at a time (``rows x n`` of them, at most
    ``_SILHOUETTE_BLOCK_BYTES``) from per-feature differences, so they are exact: identical
    rows are at distance 0. O(n^2 * n_features) time, O(block * n) memory.
    """
    classes, enc = np.unique(labels, return_inverse=True)
    n, k = enc.shape[0], classes.shape[0]
    if not 2 <= k <= n - 1:
        raise InvalidInputError(
            f"the silhouette needs 2 to n_samples - 1 clusters in the sample; the sample of "
            f"{n} rows has {k}"
        )
    order = np.argsort(enc, kind="stable")  # rows grouped by cluster, so reduceat sums them
    Xt = np.ascontiguousarray(X[order].T)
    enc = enc[order]
    freqs = np.bincount(enc, minlength=k)
    starts = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    step = max(1, _SILHOUETTE_BLOCK_BYTES // (8 * n))
    D = np.empty((min(step, n), n))
    T = np.empty_like(D)
    s = np.empty(n)
    for a in range(0, n, step):
        b = min(n, a + step)
        d, t = D[: b - a], T[: b - a]
        d.fill(0.0)
        for f in range(Xt.shape[0]):
            np.subtract(Xt[f, a:b, None], Xt[f, None, :], out=t)
            np.multiply(t, t, out=t)
            d += t
        np.sqrt(d, out=d)
        per_cluster = np.add.reduceat(d, starts, axis=1)  # (rows, k) summed distances
        own = enc[a:b]
        r = np.arange(b - a)
        intra = per_cluster[r, own]
        mean_other = per_cluster / freqs
        mean_other[r, own] = np.inf
        inter = mean_other.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            intra = intra / (freqs[own] - 1)
            sil = (inter - intra) / np.maximum(intra, inter)
        s[a:b] = np.nan_to_num(sil)  # singletons (0 / 0) and a == b == 0 score 0
    return float(np.mean(s))


def silhouette_sample(
    X: Any,
    labels: Any,
    *,
    sample_size: int = 10_000,
    sample_weight: Any = None,
    random_state: int | np.random.Generator | None = None,
) -> float:
    """Mean silhouette coefficient of a seeded sample of at most ``sample_size`` rows.

    Parameters
    ----------
    X : array-like or dask.array.Array of shape (n_samples, n_features)
    labels : array-like or dask.array.Array of int, shape (n_samples,)
    sample_size : int, default 10_000
        Rows in the sample (all rows when ``n_samples`` is smaller). The exact silhouette of
        the sample costs O(sample_size^2 * n_features).
    sample_weight : array-like or dask.array.Array of shape (n_samples,), optional
        Non-negative weights acting as repeated rows: ``sample_size`` draws with probability
        proportional to weight (systematic sampling), a row drawn ``c`` times counting ``c``
        times, rows of weight zero never. So the unique colors of a histogram weighted by
        their counts give the silhouette of a sample of the pixels themselves.
    random_state : int, numpy Generator or None
        Seed of the sample; the same seed draws the same rows for any chunking of the data.

    Returns
    -------
    float
        In [-1, 1]. Equals :func:`sklearn.metrics.silhouette_score` (Euclidean) when the
        sample holds every row (``sample_size >= n_samples``, unweighted).

    Raises
    ------
    InvalidInputError
        Malformed ``X``, labels or weights; NaN or infinity in ``X``; ``sample_size`` below
        2; fewer than 2 clusters in the sample, or as many clusters as sampled rows.

    Notes
    -----
    Unweighted, one ``compute`` draws the sample: each row gets the key ``-log(u)`` with
    ``u`` the counter-based uniform of its global row index
    (:func:`kmflow.kernels._random.uniform`), each block keeps its ``sample_size`` smallest
    keys, and a tree merge keeps the ``sample_size`` smallest overall (ties broken by row
    index). Weighted, two: the blocks' total weights, then a systematic draw on the
    cumulative-weight axis. The silhouette of the sample
    is then computed in memory with numpy, in row blocks of pairwise distances
    (O(sample_size * block) memory). As in scikit-learn, ``s(i) = (b - a) / max(a, b)`` and
    ``s(i) = 0`` for a row alone in its cluster. A dask array with unknown chunk sizes costs
    one more compute to learn them.

    References
    ----------
    .. [1] P. J. Rousseeuw, "Silhouettes: a graphical aid to the interpretation and
       validation of cluster analysis", J. Comput. Appl. Math., 1987.
    """
    if isinstance(sample_size, bool) or not isinstance(sample_size, int | np.integer):
        raise InvalidInputError(f"sample_size must be an integer; got {sample_size!r}")
    if sample_size < 2:
        raise InvalidInputError(f"sample_size must be at least 2; got {sample_size}")
    Xd = check_array(X)
    W = check_sample_weight(sample_weight, Xd)
    lab = _check_labels(labels, int(Xd.shape[0]), name="labels", other="X")
    blocks = Blocks(Xd, W)
    key = derive_key(random_state)
    label_blocks = _label_blocks(lab, Xd.chunks[0])
    if W is None:
        _, rows, sampled = _sample(blocks, label_blocks, key, int(sample_size))
    else:
        rows, sampled = _weighted_sample(blocks, label_blocks, key, int(sample_size))
    return _silhouette(rows, sampled)


# --------------------------------------------------------------------------- external metrics
@dataclass(frozen=True)
class ExternalMetrics:
    """Agreement of a clustering with reference classes; the result of :func:`external_metrics`.

    Attributes
    ----------
    ari : float
        Adjusted Rand index (1 = identical partitions, about 0 = chance).
    ami : float
        Adjusted mutual information, arithmetic-mean normalisation (1 = identical
        partitions, about 0 = chance).
    nmi : float
        Normalized mutual information, arithmetic-mean normalisation.
    fmi : float
        Fowlkes-Mallows index, ``sqrt(P * R)`` over pairs of points.
    purity : float
        Fraction of rows in their cluster's majority class.
    entropy : float
        Weighted mean class entropy of the clusters over ``log(n_classes)`` (0 = pure).
    f1 : float
        Pairwise F1: harmonic mean of pair precision ``P`` and recall ``R``.
    accuracy : float
        Fraction of rows whose cluster is matched to their class by the one-to-one matching
        of clusters to classes that maximises it (:func:`hungarian_matching`).
    n_samples, n_classes, n_clusters : int
        Rows, distinct true labels and distinct predicted labels.
    """

    ari: float
    ami: float
    nmi: float
    fmi: float
    purity: float
    entropy: float
    f1: float
    accuracy: float
    n_samples: int
    n_classes: int
    n_clusters: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: Python ints and floats."""
        return {
            "ari": float(self.ari),
            "ami": float(self.ami),
            "nmi": float(self.nmi),
            "fmi": float(self.fmi),
            "purity": float(self.purity),
            "entropy": float(self.entropy),
            "f1": float(self.f1),
            "accuracy": float(self.accuracy),
            "n_samples": int(self.n_samples),
            "n_classes": int(self.n_classes),
            "n_clusters": int(self.n_clusters),
        }


# Distinct (true, pred) pairs with their counts, sorted by true label then predicted label.
_Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def _unique_pairs(t: np.ndarray, p: np.ndarray, c: np.ndarray) -> _Pairs:
    if t.size == 0:
        return t, p, c
    order = np.lexsort((p, t))
    t, p, c = t[order], p[order], c[order]
    first = np.empty(t.size, dtype=bool)
    first[0] = True
    first[1:] = (t[1:] != t[:-1]) | (p[1:] != p[:-1])
    starts = np.flatnonzero(first)
    return t[starts], p[starts], np.add.reduceat(c, starts)


def _pairs_block(x: np.ndarray, w: None, offset: int, pred: np.ndarray) -> _Pairs:
    t = x[:, 0]
    return _unique_pairs(t, np.asarray(pred), np.ones(t.shape[0], dtype=np.int64))


def _pairs_combine(a: _Pairs, b: _Pairs) -> _Pairs:
    return _unique_pairs(
        np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]])
    )


def _check_label_pair(labels_true: Any, labels_pred: Any) -> tuple[da.Array, da.Array]:
    lt = _as_labels(labels_true, "labels_true")
    n = int(lt.shape[0])
    lp = _check_labels(labels_pred, n, name="labels_pred", other="labels_true")
    if n == 0:
        raise InvalidInputError("labels_true and labels_pred are empty")
    return lt, lp


def contingency_table(
    labels_true: Any, labels_pred: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency table of two labelings: how many rows have each (class, cluster) pair.

    Parameters
    ----------
    labels_true : array-like or dask.array.Array of int, shape (n_samples,)
        Reference classes; any integers, negative ones included.
    labels_pred : array-like or dask.array.Array of int, shape (n_samples,)
        Predicted clusters; any chunking (rechunked to ``labels_true``'s).

    Returns
    -------
    classes : ndarray, shape (n_classes,)
        Sorted distinct values of ``labels_true``.
    clusters : ndarray, shape (n_clusters,)
        Sorted distinct values of ``labels_pred``.
    table : ndarray of int64, shape (n_classes, n_clusters)
        ``table[i, j]`` rows of class ``classes[i]`` in cluster ``clusters[j]``; as
        :func:`sklearn.metrics.cluster.contingency_matrix`.

    Raises
    ------
    InvalidInputError
        Not 1-D integer arrays, different lengths, or empty.

    Notes
    -----
    One ``compute``: each block counts its distinct (true, pred) pairs (a lexsort), the tree
    reduction merges the partial counts, so memory is O(distinct pairs), not O(n_samples).
    """
    lt, lp = _check_label_pair(labels_true, labels_pred)
    return _contingency_table(lt, lp)


def _contingency_table(lt: da.Array, lp: da.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    blocks = Blocks(lt[:, None], None)
    t, p, c = map_reduce(
        blocks, _pairs_block, _pairs_combine, states=_label_blocks(lp, lt.chunks[0])
    )
    classes = np.unique(t)
    clusters = np.unique(p)
    table = np.zeros((classes.size, clusters.size), dtype=np.int64)
    table[np.searchsorted(classes, t), np.searchsorted(clusters, p)] = c
    return classes, clusters, table


def _entropy(counts: np.ndarray) -> float:
    """Entropy (natural log) of a distribution given by positive counts, as scikit-learn."""
    if counts.size == 1:
        return 0.0
    pi = counts.astype(np.float64)
    total = pi.sum()
    return float(-np.sum((pi / total) * (np.log(pi) - math.log(total))))


def _mutual_info(table: np.ndarray) -> float:
    """Mutual information (natural log) of a contingency table, as scikit-learn computes it."""
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    if rows.size == 1 or cols.size == 1:
        return 0.0
    nzx, nzy = np.nonzero(table)
    nz = table[nzx, nzy].astype(np.float64)
    n = float(nz.sum())
    p_nz = nz / n
    outer = rows[nzx].astype(np.float64) * cols[nzy].astype(np.float64)
    log_outer = -np.log(outer) + math.log(float(rows.sum())) + math.log(float(cols.sum()))
    mi = p_nz * (np.log(nz) - math.log(n)) + p_nz * log_outer
    mi = np.where(np.abs(mi) < np.finfo(mi.dtype).eps, 0.0, mi)
    return float(np.clip(mi.sum(), 0.0, None))


def _expected_mutual_info(rows: np.ndarray, cols: np.ndarray) -> float:
    """Expected mutual information (natural log) of two labelings with these class sizes.

    The mean of the mutual information over every pair of labelings with row sizes ``rows``
    (``a_i``) and column sizes ``cols`` (``b_j``), as scikit-learn's
    ``expected_mutual_information`` (Vinh, Epps and Bailey, JMLR 2010)::

        EMI = sum_ij sum_nij (nij / n) log(n nij / (a_i b_j)) P(nij; n, a_i, b_j)

    with ``P`` the hypergeometric probability of ``nij`` of the ``b_j`` rows of a column among
    ``a_i`` rows drawn from ``n``, computed in log space with :func:`scipy.special.gammaln`.
    ``nij`` runs over ``max(1, a_i + b_j - n) .. min(a_i, b_j)``, clipped to
    ``mean +- (sqrt(min(a_i, b_j) * _EMI_TAIL / 2) + 1)``: by Hoeffding's bound the values left
    out have probability below ``2 exp(-_EMI_TAIL)``, and each term's weight is below
    ``2 log(n)``, so the sum changes by far less than a rounding error, while the work per
    pair drops from ``min(a_i, b_j)`` terms to ``O(sqrt(min(a_i, b_j)))``. The terms are
    evaluated in batches of ``_EMI_BATCH_TERMS``: memory stays bounded for any ``n``.
    """
    if rows.size == 1 or cols.size == 1:
        return 0.0  # a labeling with zero entropy shares no information with any other
    a = np.repeat(rows.astype(np.int64), cols.size)  # the pairs (i, j), row-major
    b = np.tile(cols.astype(np.int64), rows.size)
    n = int(rows.sum())
    smaller = np.minimum(a, b)
    mean = a.astype(np.float64) * b.astype(np.float64) / n
    half = np.sqrt(smaller * (_EMI_TAIL / 2.0)) + 1.0
    lo = np.maximum(np.maximum(1, a + b - n), np.floor(mean - half).astype(np.int64))
    hi = np.minimum(smaller, np.ceil(mean + half).astype(np.int64))
    counts = np.maximum(hi - lo + 1, 0)
    # The part of log P that depends on the pair only: log(a! b! (n - a)! (n - b)! / n!).
    log_const = gammaln(a + 1) + gammaln(b + 1) + gammaln(n - a + 1) + gammaln(n - b + 1)
    log_const -= gammaln(n + 1)
    log_ab = np.log(a) + np.log(b)
    log_n = math.log(n)
    ends = np.cumsum(counts)
    emi = 0.0
    start = 0
    while start < a.size:
        done = int(ends[start - 1]) if start else 0
        stop = max(int(np.searchsorted(ends, done + _EMI_BATCH_TERMS, side="right")), start + 1)
        c = counts[start:stop]
        pair = np.repeat(np.arange(start, stop), c)
        nij = (lo[pair] + np.arange(pair.size) - np.repeat(np.cumsum(c) - c, c)).astype(np.float64)
        ai, bj = a[pair], b[pair]
        log_p = (
            log_const[pair]
            - gammaln(nij + 1)
            - gammaln(ai - nij + 1)
            - gammaln(bj - nij + 1)
            - gammaln(n - ai - bj + nij + 1)
        )
        emi += float(np.sum(nij / n * (log_n + np.log(nij) - log_ab[pair]) * np.exp(log_p)))
        start = stop
    return emi


def _adjusted_mutual_info(
    table: np.ndarray, class_sizes: np.ndarray, cluster_sizes: np.ndarray
) -> float:
    """AMI, arithmetic mean, as :func:`sklearn.metrics.adjusted_mutual_info_score`."""
    n_classes, n_clusters = table.shape
    if n_classes == n_clusters == 1:
        return 1.0  # neither labeling splits the data: a perfect match
    if n_classes == 1 or n_clusters == 1:
        return 0.0
    mi = _mutual_info(table)
    emi = _expected_mutual_info(class_sizes, cluster_sizes)
    normalizer = (_entropy(class_sizes) + _entropy(cluster_sizes)) / 2.0
    # As scikit-learn: numerator and denominator kept at least eps away from 0, their sign
    # preserved (the expectation can exceed the maximum by a rounding error).
    eps = float(np.finfo(np.float64).eps)
    denominator = normalizer - emi
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    numerator = mi - emi
    numerator = min(numerator, -eps) if numerator < 0 else max(numerator, eps)
    return float(numerator / denominator)


def _matching(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the one-to-one matching of largest total (sorted by column)."""
    rows, cols = linear_sum_assignment(table, maximize=True)
    order = np.argsort(cols, kind="stable")
    return rows[order], cols[order]


def hungarian_matching(table: Any) -> dict[int, int]:
    """The one-to-one matching of clusters to classes that keeps the most rows in the diagonal.

    Parameters
    ----------
    table : array-like of shape (n_classes, n_clusters)
        Non-negative counts (or weights): ``table[i, j]`` rows of class ``i`` in cluster
        ``j``, as the third result of :func:`contingency_table`. Rectangular tables are
        allowed: more clusters than classes or fewer.

    Returns
    -------
    dict of int to int
        Cluster column index to class row index, ordered by column. Exactly
        ``min(n_classes, n_clusters)`` clusters are matched, each to a different class, so
        that ``sum(table[i, j] for j, i in matching.items())`` is as large as possible (the
        matched rows of :attr:`ExternalMetrics.accuracy`); the other clusters are absent.

    Raises
    ------
    InvalidInputError
        ``table`` not a non-empty 2-D array of finite, non-negative numbers.

    Notes
    -----
    :func:`scipy.optimize.linear_sum_assignment` (the Hungarian method's modern form,
    O(n_classes * n_clusters * min(n_classes, n_clusters))) maximising the matched count.
    Among equally good matchings, the one SciPy returns (deterministic for a given table).

    Examples
    --------
    >>> hungarian_matching([[0, 9, 1], [8, 0, 0]])
    {0: 1, 1: 0}
    """
    t = np.asarray(table)
    if t.ndim != 2 or t.size == 0:
        raise InvalidInputError(
            f"table must be a non-empty 2-D array (classes x clusters); got shape {t.shape}"
        )
    if t.dtype.kind not in "iuf":
        raise InvalidInputError(f"table must hold numbers; got dtype {t.dtype}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise InvalidInputError("table must hold finite, non-negative counts")
    rows, cols = _matching(t)
    return {int(c): int(r) for r, c in zip(rows, cols, strict=True)}


def _metrics_from_table(table: np.ndarray) -> ExternalMetrics:
    n_classes, n_clusters = table.shape
    cells = [int(v) for v in table[table > 0]]
    class_sizes = table.sum(axis=1)
    cluster_sizes = table.sum(axis=0)
    n = sum(cells)
    # Pair counts in exact integer arithmetic (any n): ordered pairs, as scikit-learn's
    # pair_confusion_matrix; same-class-same-cluster, same-cluster, same-class.
    sum_sq = sum(v * v for v in cells)
    same_cluster = sum(int(v) ** 2 for v in cluster_sizes)
    same_class = sum(int(v) ** 2 for v in class_sizes)
    tp = sum_sq - n
    fp = same_cluster - sum_sq
    fn = same_class - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        ari = 1.0
    else:
        ari = 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    ami = _adjusted_mutual_info(table, class_sizes, cluster_sizes)
    if n_classes == n_clusters == 1:
        nmi = 1.0
    else:
        mi = _mutual_info(table)
        if mi == 0:
            nmi = 0.0
        else:
            h = (_entropy(class_sizes) + _entropy(cluster_sizes)) / 2.0
            nmi = float(mi / h)
    pk, qk = same_cluster - n, same_class - n
    fmi = float(math.sqrt(tp / pk) * math.sqrt(tp / qk)) if tp != 0 else 0.0
    f1 = 2.0 * tp / (pk + qk) if tp != 0 else 0.0
    purity = float(table.max(axis=0).sum()) / n
    if n_classes == 1:
        entropy = 0.0
    else:
        h_clusters = np.array([_entropy(col[col > 0]) for col in table.T])
        entropy = float(np.sum(cluster_sizes / n * h_clusters) / math.log(n_classes))
    matched_rows, matched_cols = _matching(table)
    accuracy = int(table[matched_rows, matched_cols].sum()) / n
    return ExternalMetrics(
        ari=float(ari),
        ami=ami,
        nmi=nmi,
        fmi=fmi,
        purity=purity,
        entropy=entropy,
        f1=float(f1),
        accuracy=accuracy,
        n_samples=n,
        n_classes=n_classes,
        n_clusters=n_clusters,
    )


def external_metrics(labels_true: Any, labels_pred: Any) -> ExternalMetrics:
    """ARI, AMI, NMI, FMI, purity, entropy, pairwise F1 and accuracy of a clustering.

    The clustering ``labels_pred`` is compared with the reference classes ``labels_true``.

    Parameters
    ----------
    labels_true : array-like or dask.array.Array of int, shape (n_samples,)
        Reference classes; any integers, negative ones included.
    labels_pred : array-like or dask.array.Array of int, shape (n_samples,)
        Predicted clusters; any chunking.

    Returns
    -------
    ExternalMetrics

    Raises
    ------
    InvalidInputError
        Not 1-D integer arrays, different lengths, or empty.

    Notes
    -----
    One ``compute`` (:func:`contingency_table`); everything else comes from the table
    ``n_ij`` (class ``i``, cluster ``j``; sizes ``n_i.`` and ``n_.j``):

    - ARI as :func:`sklearn.metrics.adjusted_rand_score`, from the pair confusion matrix in
      exact integer arithmetic; 1.0 when no pair is split differently by the two labelings
      (e.g. two identical one-cluster labelings, or all singletons on both sides).
    - NMI as :func:`sklearn.metrics.normalized_mutual_info_score` (arithmetic mean of the
      entropies): 1.0 when both labelings have a single label, 0.0 when the mutual
      information is 0 otherwise (e.g. one side a single label).
    - AMI as :func:`sklearn.metrics.adjusted_mutual_info_score` (arithmetic mean):
      ``(MI - EMI) / (mean(H_true, H_pred) - EMI)``, with the expected mutual information
      ``EMI`` of labelings of the same sizes drawn at random [3]_ computed from the table's
      margins (hypergeometric terms in log space, the negligible tails left out: error far
      below 1e-12); numerator and denominator kept at least ``eps`` away from 0 with their
      sign, as scikit-learn does. 1.0 when both labelings have a single label, 0.0 when one
      of them does.
    - Pairwise precision ``P = sum C(n_ij, 2) / sum_j C(n_.j, 2)`` and recall
      ``R = sum C(n_ij, 2) / sum_i C(n_i., 2)``; FMI ``= sqrt(P R)`` as
      :func:`sklearn.metrics.fowlkes_mallows_score`, F1 ``= 2 P R / (P + R)``; both 0.0 when
      no pair is together in both labelings (``sum C(n_ij, 2) = 0``).
    - Purity ``= sum_j max_i n_ij / n``.
    - Entropy ``= sum_j (n_.j / n) H(class | cluster j) / log(n_classes)`` [1]_; 0.0 when
      there is one class.
    - Accuracy ``= sum_j n_{m(j) j} / n`` over the clusters ``j`` matched to a class ``m(j)``
      by :func:`hungarian_matching` (one-to-one, ``min(n_classes, n_clusters)`` pairs); rows
      of unmatched clusters (more clusters than classes) or of unmatched classes (fewer)
      count as wrong. 1.0 exactly when the labelings are identical up to renaming.

    References
    ----------
    .. [1] Y. Zhao and G. Karypis, "Criterion functions for document clustering:
       experiments and analysis", Technical Report 01-40, University of Minnesota, 2001.
    .. [2] L. Hubert and P. Arabie, "Comparing partitions", Journal of Classification, 1985.
    .. [3] N. X. Vinh, J. Epps and J. Bailey, "Information theoretic measures for clusterings
       comparison: variants, properties, normalization and correction for chance", JMLR, 2010.
    """
    lt, lp = _check_label_pair(labels_true, labels_pred)
    _, _, table = _contingency_table(lt, lp)
    return _metrics_from_table(table)


# --------------------------------------------------------------------------- histograms
def _range_block(x: np.ndarray, w: np.ndarray | None, offset: int) -> tuple[np.ndarray, np.ndarray]:
    _require_finite(x)
    if x.shape[0] == 0:
        return np.full(x.shape[1], np.inf), np.full(x.shape[1], -np.inf)
    return x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)


def _range_combine(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    return np.minimum(a[0], b[0]), np.maximum(a[1], b[1])


def _hist_block(
    x: np.ndarray, w: np.ndarray | None, offset: int, edges: np.ndarray, direct: bool
) -> np.ndarray:
    _require_finite(x)
    n, d = x.shape
    bins = edges.shape[1] - 1
    wv = None if w is None else _block_weights(w, n, offset)
    counts = np.empty((d, bins))
    for f in range(d):
        if direct:  # uint8 with one bin per value: the value is the bin
            idx = x[:, f]
        else:
            idx = np.searchsorted(edges[f], x[:, f].astype(np.float64), side="right") - 1
            np.clip(idx, 0, bins - 1, out=idx)
        counts[f] = np.bincount(idx, weights=wv, minlength=bins)
    return counts


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def feature_histograms(
    X: Any,
    *,
    sample_weight: Any = None,
    bins: int = 256,
    value_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted histogram of every feature: reference statistics for drift checks.

    Parameters
    ----------
    X : array-like or dask.array.Array of shape (n_samples, n_features)
    sample_weight : array-like or dask.array.Array of shape (n_samples,), optional
        Non-negative weights added to the bins (default: 1 per row).
    bins : int, default 256
        Equal-width bins per feature.
    value_range : (float, float), optional
        ``(lo, hi)`` shared by every feature. Default: ``(0, 256)`` for ``uint8`` data (one
        bin per value with the default ``bins``), otherwise each feature's own min and max.
        Values outside it are counted in the first or last bin. ``lo == hi`` is widened to
        ``(lo - 0.5, hi + 0.5)``, as :func:`numpy.histogram` does.

    Returns
    -------
    edges : ndarray of float64, shape (n_features, bins + 1)
        ``np.linspace(lo, hi, bins + 1)`` per feature.
    counts : ndarray of float64, shape (n_features, bins)
        Total weight per bin: bin ``b`` holds ``edges[b] <= x < edges[b + 1]``, the last bin
        also ``x == hi``; equal to ``np.histogram(np.clip(x, lo, hi), edges)`` per feature
        (values compared in float64).

    Raises
    ------
    InvalidInputError
        Malformed ``X`` or weights; NaN or infinity in ``X``; NaN, infinite or negative
        weights; ``bins`` below 1; ``value_range`` not two finite numbers with ``lo <= hi``.

    Notes
    -----
    One ``compute`` (the binning pass) when the range is known (``value_range`` given, or
    ``uint8`` data); otherwise two: a first pass for the per-feature min and max. Memory per
    block O(n_features * bins).
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise InvalidInputError(f"bins must be a positive integer; got {bins!r}")
    Xd = check_array(X)
    W = check_sample_weight(sample_weight, Xd)
    blocks = Blocks(Xd, W)
    d = int(Xd.shape[1])
    if value_range is not None:
        try:
            lo_v, hi_v = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"value_range must be two numbers (lo, hi); got {value_range!r}"
            ) from None
        if not (math.isfinite(lo_v) and math.isfinite(hi_v)) or lo_v > hi_v:
            raise InvalidInputError(
                f"value_range must be finite with lo <= hi; got ({lo_v}, {hi_v})"
            )
        lo, hi = np.full(d, lo_v), np.full(d, hi_v)
    elif Xd.dtype == np.uint8:
        lo, hi = np.zeros(d), np.full(d, 256.0)
    else:
        lo, hi = map_reduce(blocks, _range_block, _range_combine)
    same = lo == hi
    lo = np.where(same, lo - 0.5, lo)
    hi = np.where(same, hi + 0.5, hi)
    edges = np.stack([np.linspace(a, b, int(bins) + 1) for a, b in zip(lo, hi, strict=True)])
    direct = bool(
        Xd.dtype == np.uint8 and bins == 256 and np.all(lo == 0.0) and np.all(hi == 256.0)
    )
    counts = map_reduce(blocks, _hist_block, _add, edges, direct)
    return edges, counts
