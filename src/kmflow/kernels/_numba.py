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

__all__ = ["accumulate", "assign", "min_sqdist", "update_nearest"]


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
    k = centers_t.shape[1]
    dist = np.empty(k)
    inertia = 0.0
    for i in range(n):
        for j in range(k):
            dist[j] = 0.0
        for f in range(d):
            xf = np.float64(X[i, f])
            for j in range(k):
                t = xf - centers_t[f, j]
                dist[j] += t * t
        best = dist[0]
        bj = 0
        for j in range(1, k):
            if dist[j] < best:
                best = dist[j]
                bj = j
        wi = np.float64(w[i]) if has_w else 1.0
        counts[bj] += wi
        for f in range(d):
            sums[bj, f] += wi * np.float64(X[i, f])
        inertia += wi * best
    return inertia


@nb.njit(nogil=True, cache=True)
def assign(X, centers_t, labels, d2):  # type: ignore[no-untyped-def]
    """Nearest center of every row: ``labels[i]`` and its squared distance ``d2[i]``."""
    n, d = X.shape
    k = centers_t.shape[1]
    dist = np.empty(k)
    for i in range(n):
        for j in range(k):
            dist[j] = 0.0
        for f in range(d):
            xf = np.float64(X[i, f])
            for j in range(k):
                t = xf - centers_t[f, j]
                dist[j] += t * t
        best = dist[0]
        bj = 0
        for j in range(1, k):
            if dist[j] < best:
                best = dist[j]
                bj = j
        labels[i] = bj
        d2[i] = best


@nb.njit(nogil=True, cache=True)
def min_sqdist(X, centers_t, d2):  # type: ignore[no-untyped-def]
    """Update ``d2[i] = min(d2[i], min_j ||X[i] - c_j||^2)`` for the given centers."""
    n, d = X.shape
    k = centers_t.shape[1]
    for i in range(n):
        best = d2[i]
        for j in range(k):
            s = 0.0
            for f in range(d):
                t = np.float64(X[i, f]) - centers_t[f, j]
                s += t * t
            if s < best:
                best = s
        d2[i] = best


@nb.njit(nogil=True, cache=True)
def update_nearest(X, centers_t, base, d2, labels):  # type: ignore[no-untyped-def]
    """Fold new centers into a running nearest-center state.

    For each row, if one of the centers ``centers_t[:, j]`` is closer than ``d2[i]``, set
    ``d2[i]`` to that squared distance and ``labels[i] = base + j``. ``d2`` may be float32
    (k-means|| sampling state); distances are computed in float64.
    """
    n, d = X.shape
    k = centers_t.shape[1]
    dist = np.empty(k)
    for i in range(n):
        for j in range(k):
            dist[j] = 0.0
        for f in range(d):
            xf = np.float64(X[i, f])
            for j in range(k):
                t = xf - centers_t[f, j]
                dist[j] += t * t
        best = np.float64(d2[i])
        bj = -1
        for j in range(k):
            if dist[j] < best:
                best = dist[j]
                bj = j
        if bj >= 0:
            d2[i] = best
            labels[i] = base + bj


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
