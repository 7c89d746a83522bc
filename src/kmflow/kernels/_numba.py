"""Compiled per-block kernels: the inner loops of Lloyd and k-means||.

Each function works on one in-memory block of rows and never allocates per row. They accept
``uint8``, integer, ``float32`` or ``float64`` rows and always compute distances and accumulate
in float64, so a block of ``uint8`` pixels is read once, as 3 bytes a pixel, without a float copy.

``nogil=True`` lets Dask's threaded workers run them side by side; ``cache=True`` keeps the
compiled code on disk so each worker process compiles once per dtype.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = [
    "accumulate",
    "accumulate_multi",
    "assign",
    "assign_multi",
    "block_stats",
    "cost",
    "round_thresholds",
    "spread_multi",
    "uniform_fill",
    "update_nearest",
]


#: Rows per tile: a tile is copied to a small float64 structure-of-arrays buffer, then the
#: distances to one center are computed for the whole tile at once (SIMD across rows) and the
#: nearest center is kept with branch-free selects. Ties go to the lowest center index.
TILE = 512


@nb.njit(nogil=True, cache=True)
def _load_tile(X, s, m, xs, best, lab, init_best, init_lab):  # type: ignore[no-untyped-def]
    d = X.shape[1]
    if d == 3:  # RGB pixels: unrolled, so the strided uint8 loads and casts vectorise
        for i in range(m):
            xs[0, i] = X[s + i, 0]
            xs[1, i] = X[s + i, 1]
            xs[2, i] = X[s + i, 2]
    else:
        for i in range(m):
            for f in range(d):
                xs[f, i] = X[s + i, f]
    for i in range(m):
        best[i] = init_best
        lab[i] = init_lab


@nb.njit(nogil=True, cache=True, inline="always")
def _fold3(x0, x1, x2, c0, c1, c2, lj, b, lb):  # type: ignore[no-untyped-def]
    """One center into one row's (best, label): strict ``<``, so ties keep the earlier one."""
    t0 = x0 - c0
    t1 = x1 - c1
    t2 = x2 - c2
    v = t0 * t0 + t1 * t1 + t2 * t2
    better = v < b
    return (v if better else b), (lj if better else lb)


@nb.njit(nogil=True, cache=True)
def _tile_nearest3(xs, m, centers_t, base, best, lab):  # type: ignore[no-untyped-def]
    """``_tile_nearest`` for 3 features, four centers per sweep of the tile.

    A row's running (best, label) stays in registers across four centers, in the same order
    and with the same arithmetic as one center at a time, so the result is identical; the tile
    is read and written a quarter as often.
    """
    k = centers_t.shape[1]
    j = 0
    while j + 4 <= k:
        a0, a1, a2 = centers_t[0, j], centers_t[1, j], centers_t[2, j]
        b0, b1, b2 = centers_t[0, j + 1], centers_t[1, j + 1], centers_t[2, j + 1]
        c0, c1, c2 = centers_t[0, j + 2], centers_t[1, j + 2], centers_t[2, j + 2]
        e0, e1, e2 = centers_t[0, j + 3], centers_t[1, j + 3], centers_t[2, j + 3]
        lj = base + j
        for i in range(m):
            x0 = xs[0, i]
            x1 = xs[1, i]
            x2 = xs[2, i]
            b, lb = _fold3(x0, x1, x2, a0, a1, a2, lj, best[i], lab[i])
            b, lb = _fold3(x0, x1, x2, b0, b1, b2, lj + 1, b, lb)
            b, lb = _fold3(x0, x1, x2, c0, c1, c2, lj + 2, b, lb)
            b, lb = _fold3(x0, x1, x2, e0, e1, e2, lj + 3, b, lb)
            best[i] = b
            lab[i] = lb
        j += 4
    while j < k:
        a0, a1, a2 = centers_t[0, j], centers_t[1, j], centers_t[2, j]
        lj = base + j
        for i in range(m):
            best[i], lab[i] = _fold3(xs[0, i], xs[1, i], xs[2, i], a0, a1, a2, lj, best[i], lab[i])
        j += 1


@nb.njit(nogil=True, cache=True)
def _tile_nearest(xs, m, centers_t, base, best, lab, dd):  # type: ignore[no-untyped-def]
    """For rows ``0..m`` of the tile, fold centers into (best squared distance, label)."""
    d = xs.shape[0]
    k = centers_t.shape[1]
    if d == 3:  # RGB pixels: the main job, fully unrolled
        _tile_nearest3(xs, m, centers_t, base, best, lab)
        return
    for j in range(k):
        c = centers_t[0, j]
        for i in range(m):
            t = xs[0, i] - c
            dd[i] = t * t
        for f in range(1, d):
            c = centers_t[f, j]
            for i in range(m):
                t = xs[f, i] - c
                dd[i] += t * t
        lj = base + j
        for i in range(m):
            better = dd[i] < best[i]
            best[i] = dd[i] if better else best[i]
            lab[i] = lj if better else lab[i]


@nb.njit(nogil=True, cache=True)
def accumulate(X, w, has_w, centers_t, sums, counts):  # type: ignore[no-untyped-def]
    """Assign rows to their nearest center and add them to per-center sums.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    w : ndarray of shape (n,) (ignored unless ``has_w``)
    has_w : bool
    centers_t : float64 ndarray of shape (d, k), the centers transposed
    sums : float64 ndarray of shape (k, d), added to in place
    counts : float64 ndarray of shape (k,), added to in place

    Returns
    -------
    inertia : float
        Weighted sum of squared distances to the nearest center.
    """
    n, d = X.shape
    xs = np.empty((d, TILE))
    best = np.empty(TILE)
    lab = np.empty(TILE, np.int64)
    dd = np.empty(TILE)
    inertia = 0.0
    for s in range(0, n, TILE):
        m = min(TILE, n - s)
        _load_tile(X, s, m, xs, best, lab, np.inf, 0)
        _tile_nearest(xs, m, centers_t, 0, best, lab, dd)
        # One loop per case, each adding the same values in the same order (an unweighted
        # row adds ``x`` where the weighted formula would add ``1.0 * x``: the same number).
        if has_w:
            for i in range(m):
                bj = lab[i]
                wi = np.float64(w[s + i])
                counts[bj] += wi
                for f in range(d):
                    sums[bj, f] += wi * xs[f, i]
                inertia += wi * best[i]
        elif d == 3:
            for i in range(m):
                bj = lab[i]
                counts[bj] += 1.0
                sums[bj, 0] += xs[0, i]
                sums[bj, 1] += xs[1, i]
                sums[bj, 2] += xs[2, i]
                inertia += best[i]
        else:
            for i in range(m):
                bj = lab[i]
                counts[bj] += 1.0
                for f in range(d):
                    sums[bj, f] += xs[f, i]
                inertia += best[i]
    return inertia


@nb.njit(nogil=True, cache=True)
def assign(X, centers_t, labels, d2):  # type: ignore[no-untyped-def]
    """Nearest center of every row: ``labels[i]`` and its squared distance ``d2[i]``."""
    n, d = X.shape
    xs = np.empty((d, TILE))
    best = np.empty(TILE)
    lab = np.empty(TILE, np.int64)
    dd = np.empty(TILE)
    for s in range(0, n, TILE):
        m = min(TILE, n - s)
        _load_tile(X, s, m, xs, best, lab, np.inf, 0)
        _tile_nearest(xs, m, centers_t, 0, best, lab, dd)
        for i in range(m):
            d2[s + i] = best[i]
            labels[s + i] = lab[i]


@nb.njit(nogil=True, cache=True)
def cost(X, w, has_w, centers_t):  # type: ignore[no-untyped-def]
    """Weighted sum of squared distances to the nearest center: what :func:`accumulate`
    returns, added in the same order (so the same number), without the per-center sums."""
    n, d = X.shape
    xs = np.empty((d, TILE))
    best = np.empty(TILE)
    lab = np.empty(TILE, np.int64)
    dd = np.empty(TILE)
    inertia = 0.0
    for s in range(0, n, TILE):
        m = min(TILE, n - s)
        _load_tile(X, s, m, xs, best, lab, np.inf, 0)
        _tile_nearest(xs, m, centers_t, 0, best, lab, dd)
        if has_w:
            for i in range(m):
                inertia += np.float64(w[s + i]) * best[i]
        else:
            for i in range(m):
                inertia += best[i]
    return inertia


@nb.njit(nogil=True, cache=True)
def update_nearest(X, centers_t, base, d2, labels):  # type: ignore[no-untyped-def]
    """Fold new centers into a running nearest-center state.

    For each row, if one of the centers ``centers_t[:, j]`` is closer than ``d2[i]``, set
    ``d2[i]`` to that squared distance and ``labels[i] = base + j``. ``d2`` may be float32
    (k-means|| sampling state); distances are computed in float64.
    """
    n, d = X.shape
    xs = np.empty((d, TILE))
    best = np.empty(TILE)
    lab = np.empty(TILE, np.int64)
    dd = np.empty(TILE)
    for s in range(0, n, TILE):
        m = min(TILE, n - s)
        _load_tile(X, s, m, xs, best, lab, np.inf, 0)
        for i in range(m):
            best[i] = d2[s + i]
            lab[i] = labels[s + i]
        _tile_nearest(xs, m, centers_t, base, best, lab, dd)
        for i in range(m):
            d2[s + i] = best[i]
            labels[s + i] = lab[i]


@nb.njit(nogil=True, cache=True)
def block_stats(X, w, has_w, check_finite, mean, m2):  # type: ignore[no-untyped-def]
    """One block's validation counts and weighted per-feature mean and sum of squares.

    With ``check_finite`` (float data), rows holding NaN or infinity are counted; if there
    are any, nothing else is measured (the caller rejects the data). A NaN or infinite weight
    counts as bad, a negative one as negative; both then weigh 0. Fills ``mean`` and ``m2``
    (float64, shape (d,), zero on entry) in two passes: the weighted mean, then the weighted
    sum of squared deviations from it.

    Returns
    -------
    (n_bad_x, first_bad, n_bad_w, n_neg_w, min_w, n_pos, total_weight)
        ``first_bad`` is the block-local index of the first bad row (-1 if none); ``min_w``
        the smallest weight once NaN/inf are zeroed (inf without weights or rows).
    """
    n, d = X.shape
    n_bad_x = 0
    first_bad = -1
    if check_finite:
        for i in range(n):
            ok = True
            for f in range(d):
                ok = ok and np.isfinite(X[i, f])
            if not ok:
                n_bad_x += 1
                if first_bad < 0:
                    first_bad = i
        if n_bad_x:
            return n_bad_x, first_bad, 0, 0, np.inf, 0, 0.0
    n_bad_w = 0
    n_neg_w = 0
    min_w = np.inf
    if has_w:
        wv = np.empty(n)
        n_pos = 0
        total = 0.0
        for i in range(n):
            wi = float(w[i])
            if not np.isfinite(wi):
                n_bad_w += 1
                wi = 0.0
            min_w = min(min_w, wi)
            if wi < 0:
                n_neg_w += 1
                wi = 0.0
            wv[i] = wi
            if wi > 0:
                n_pos += 1
            total += wi
    else:
        wv = np.empty(0)
        n_pos = n
        total = float(n)
    if total > 0:
        for f in range(d):
            mean[f] = _wsum(X, f, wv, has_w, 0.0, False) / total
        for f in range(d):
            m2[f] = _wsum(X, f, wv, has_w, mean[f], True)
    return n_bad_x, first_bad, n_bad_w, n_neg_w, min_w, n_pos, total


@nb.njit(nogil=True, cache=True)
def _wsum(X, f, wv, has_w, mu, square):  # type: ignore[no-untyped-def]
    """``sum(wv * (X[:, f] - mu))``, or of ``wv * (X[:, f] - mu) ** 2`` with ``square``
    (weights 1 without ``has_w``).

    Four interleaved partial sums, so the additions do not wait on one another.
    """
    n = X.shape[0]
    a = np.zeros(4)
    i = 0
    while i + 4 <= n:
        for r in range(4):
            t = np.float64(X[i + r, f]) - mu
            if square:
                t = t * t
            a[r] += wv[i + r] * t if has_w else t
        i += 4
    while i < n:
        t = np.float64(X[i, f]) - mu
        if square:
            t = t * t
        a[0] += wv[i] * t if has_w else t
        i += 1
    return (a[0] + a[1]) + (a[2] + a[3])


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53


@nb.njit(nogil=True, cache=True, inline="always")
def _mix64(z):  # type: ignore[no-untyped-def]
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


@nb.njit(nogil=True, cache=True)
def uniform_fill(base, start, out):  # type: ignore[no-untyped-def]
    """``out[i]`` = uniform in (0, 1) for global row ``start + i`` of the stream ``base``."""
    for i in range(out.shape[0]):
        z = _mix64(np.uint64(start + i) * _GOLDEN + base)
        out[i] = (np.float64(z >> np.uint64(11)) + 0.5) * _TO_UNIT


@nb.njit(nogil=True, cache=True)
def round_thresholds(X, w, has_w, centers_t, base_label, d2, labels, base, start, ell, t):  # type: ignore[no-untyped-def]
    """One k-means|| round on a block, fused: fold new centers into ``(d2, labels)``, then
    ``t[i] = ell * w[i] * d2[i] / u[i]`` with ``u`` from stream ``base``; returns ``psi``,
    the block's weighted cost ``sum(w * d2)``."""
    update_nearest(X, centers_t, base_label, d2, labels)
    psi = 0.0
    for i in range(X.shape[0]):
        wd2 = np.float64(d2[i]) * (np.float64(w[i]) if has_w else 1.0)
        psi += wd2
        z = _mix64(np.uint64(start + i) * _GOLDEN + base)
        u = (np.float64(z >> np.uint64(11)) + 0.5) * _TO_UNIT
        t[i] = ell * wd2 / u
    return psi


#: Rows per tile of the multi-set kernels: the tile's products with every center (one GEMM)
#: stay in cache.
GEMM_TILE = 128
#: Relative margin of the GEMM distances: when the two nearest centers of a set are closer than
#: this times ``|x - shift|^2 + max |c - shift|^2``, the row's nearest center is found again
#: from per-feature differences (float64 rounding of the GEMM form is far below it).
GEMM_MARGIN = 1e-9


@nb.njit(nogil=True, cache=True)
def _prepare_sets(centers_t, shift, starts):  # type: ignore[no-untyped-def]
    """Centered centers (K, d) for the GEMM, their squared norms (K,), and per set the
    largest squared norm (S,)."""
    d, k = centers_t.shape
    cent = np.empty((k, d))
    cc = np.zeros(k)
    for j in range(k):
        for f in range(d):
            t = centers_t[f, j] - shift[f]
            cent[j, f] = t
            cc[j] += t * t
    n_sets = starts.shape[0] - 1
    ccmax = np.zeros(n_sets)
    for g in range(n_sets):
        for j in range(starts[g], starts[g + 1]):
            ccmax[g] = max(ccmax[g], cc[j])
    return cent, cc, ccmax


@nb.njit(nogil=True, cache=True)
def _label_tile(X, s, m, shift, centers_t, cent, cc, ccmax, starts, xs, xc, G, b1, b2, labs, bests):  # type: ignore[no-untyped-def]
    """Nearest center within every set for rows ``s .. s + m`` of ``X``.

    Distances to all centers come from one GEMM of the centered rows (``G = cent @ xc``,
    shape (K, tile)); each set's nearest is the smallest ``|c|^2 - 2 x.c``, found for the
    whole tile at once, unless the runner-up is within the margin (:data:`GEMM_MARGIN`):
    then the row's set is scanned again with per-feature differences. The winner's squared
    distance is always computed from per-feature differences, in the order
    :func:`_tile_nearest` adds them, and exact ties go to the lowest index, so ``labs[g, i]``
    and ``bests[g, i]`` are what :func:`assign` gives for that set alone. ``xs`` receives the
    tile as float64 (d, tile).
    """
    d = X.shape[1]
    T = xs.shape[1]
    for i in range(m):
        for f in range(d):
            v = np.float64(X[s + i, f])
            xs[f, i] = v
            xc[f, i] = v - shift[f]
    np.dot(cent, xc, G)
    xx = b2  # scratch: squared norms of the centered rows
    for i in range(T):
        xx[i] = 0.0
    for f in range(d):
        for i in range(T):
            xx[i] += xc[f, i] * xc[f, i]
    n_sets = starts.shape[0] - 1
    q = bests[0]
    for g in range(n_sets):
        a = starts[g]
        b = starts[g + 1]
        lab = labs[g]
        best = bests[g]
        for i in range(T):
            b1[i] = np.inf
            best[i] = np.inf  # the runner-up, for now
            lab[i] = a
        for j in range(a, b):
            c = cc[j]
            for i in range(T):
                v = c - 2.0 * G[j, i]
                lt = v < b1[i]
                best[i] = min(best[i], max(v, b1[i]))
                lab[i] = j if lt else lab[i]
                b1[i] = v if lt else b1[i]
        margin = GEMM_MARGIN * ccmax[g]
        for i in range(m):
            if best[i] - b1[i] <= margin + GEMM_MARGIN * xx[i]:
                b1[i] = -1.0  # ambiguous: rescanned below
            else:
                b1[i] = 0.0
        q = best
        for i in range(T):
            q[i] = 0.0
        for i in range(m):
            if b1[i] < 0:
                bq = np.inf
                for j in range(a, b):
                    t = xs[0, i] - centers_t[0, j]
                    dq = t * t
                    for f in range(1, d):
                        t = xs[f, i] - centers_t[f, j]
                        dq += t * t
                    if dq < bq:
                        bq = dq
                        lab[i] = j
        t0 = xs[0]
        for i in range(m):
            t = t0[i] - centers_t[0, lab[i]]
            q[i] = t * t
        for f in range(1, d):
            xf = xs[f]
            for i in range(m):
                t = xf[i] - centers_t[f, lab[i]]
                q[i] += t * t


@nb.njit(nogil=True, cache=True)
def _multi_buffers(d, k, n_sets):  # type: ignore[no-untyped-def]
    T = GEMM_TILE
    xs = np.zeros((d, T))
    xc = np.zeros((d, T))
    G = np.empty((k, T))
    b1 = np.empty(T)
    b2 = np.empty(T)
    labs = np.zeros((n_sets, T), np.int64)
    bests = np.empty((n_sets, T))
    return xs, xc, G, b1, b2, labs, bests


@nb.njit(nogil=True, cache=True)
def accumulate_multi(X, w, has_w, centers_t, starts, shift, sums, counts, sizes, inertias):  # type: ignore[no-untyped-def]
    """:func:`accumulate` for several center sets at once, reading each row once.

    The center sets are the column ranges ``starts[g]:starts[g + 1]`` of ``centers_t``. Every
    row is assigned to its nearest center within each set (labels are global columns; see
    :func:`_label_tile`: the same labels and squared distances as :func:`accumulate` on that
    set alone) and added to that set's sums in row order, so each set's sums, counts and
    inertia are the numbers :func:`accumulate` gives on the same block.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    w : ndarray of shape (n,) (ignored unless ``has_w``)
    has_w : bool
    centers_t : float64 ndarray of shape (d, K), every set's centers transposed, side by side
    starts : int64 ndarray of shape (S + 1,), column ranges of the S sets
    shift : float64 ndarray of shape (d,), subtracted from rows and centers before the GEMM
        (the data mean keeps it accurate for data far from the origin)
    sums : float64 ndarray of shape (K, d), added to in place
    counts : float64 ndarray of shape (K,), weights added to in place
    sizes : int64 ndarray of shape (K,), rows added to in place
    inertias : float64 ndarray of shape (S,), weighted squared distances added to in place
    """
    n, d = X.shape
    n_sets = starts.shape[0] - 1
    cent, cc, ccmax = _prepare_sets(centers_t, shift, starts)
    xs, xc, G, b1, b2, labs, bests = _multi_buffers(d, centers_t.shape[1], n_sets)
    for s in range(0, n, GEMM_TILE):
        m = min(GEMM_TILE, n - s)
        _label_tile(
            X, s, m, shift, centers_t, cent, cc, ccmax, starts, xs, xc, G, b1, b2, labs, bests
        )
        for g in range(n_sets):
            inertia = inertias[g]
            if has_w:
                for i in range(m):
                    bj = labs[g, i]
                    wi = np.float64(w[s + i])
                    counts[bj] += wi
                    sizes[bj] += 1
                    for f in range(d):
                        sums[bj, f] += wi * xs[f, i]
                    inertia += wi * bests[g, i]
            else:
                for i in range(m):
                    bj = labs[g, i]
                    counts[bj] += 1.0
                    sizes[bj] += 1
                    for f in range(d):
                        sums[bj, f] += xs[f, i]
                    inertia += bests[g, i]
            inertias[g] = inertia


@nb.njit(nogil=True, cache=True)
def spread_multi(X, w, has_w, centers_t, starts, shift, means, dist, sqd):  # type: ignore[no-untyped-def]
    """Per-cluster spread around the clusters' means, for several center sets at once.

    Each row is labelled by its nearest center within every set (as in
    :func:`accumulate_multi`); then its weighted Euclidean and squared Euclidean distances to
    the mean of that cluster (``means[label]``, shape (K, d)) are added to ``dist[label]`` and
    ``sqd[label]`` (float64, shape (K,)), from per-feature differences (no cancellation).
    """
    n, d = X.shape
    n_sets = starts.shape[0] - 1
    cent, cc, ccmax = _prepare_sets(centers_t, shift, starts)
    xs, xc, G, b1, b2, labs, bests = _multi_buffers(d, centers_t.shape[1], n_sets)
    for s in range(0, n, GEMM_TILE):
        m = min(GEMM_TILE, n - s)
        _label_tile(
            X, s, m, shift, centers_t, cent, cc, ccmax, starts, xs, xc, G, b1, b2, labs, bests
        )
        for g in range(n_sets):
            for i in range(m):
                bj = labs[g, i]
                q = 0.0
                for f in range(d):
                    t = xs[f, i] - means[bj, f]
                    q += t * t
                wi = np.float64(w[s + i]) if has_w else 1.0
                dist[bj] += wi * np.sqrt(q)
                sqd[bj] += wi * q


@nb.njit(nogil=True, cache=True)
def assign_multi(X, centers_t, starts, shift, labels):  # type: ignore[no-untyped-def]
    """Nearest center within every set (as :func:`accumulate_multi`): ``labels[i, g]`` is
    the global column of row ``i``'s nearest center in set ``g`` (int64, shape (n, S))."""
    n, d = X.shape
    n_sets = starts.shape[0] - 1
    cent, cc, ccmax = _prepare_sets(centers_t, shift, starts)
    xs, xc, G, b1, b2, labs, bests = _multi_buffers(d, centers_t.shape[1], n_sets)
    for s in range(0, n, GEMM_TILE):
        m = min(GEMM_TILE, n - s)
        _label_tile(
            X, s, m, shift, centers_t, cent, cc, ccmax, starts, xs, xc, G, b1, b2, labs, bests
        )
        for g in range(n_sets):
            for i in range(m):
                labels[s + i, g] = labs[g, i]
