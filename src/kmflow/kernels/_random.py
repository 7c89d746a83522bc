"""Counter-based randomness keyed on the global row index.

``uniform(key, stream, start, n)`` gives the same numbers for rows ``start .. start+n`` whatever
block they sit in, so every random choice kmflow makes over a dataset (first center, k-means||
oversampling, random init) is the same for any chunking of the same data. The generator is the
SplitMix64 finaliser applied to ``key + stream * K1 + index * K2``: not cryptographic, but
equidistributed and independent enough for sampling.
"""

from __future__ import annotations

import numpy as np

from kmflow.kernels import _numba

__all__ = ["derive_key", "stream_base", "uniform"]

_STREAM = np.uint64(0xD1B54A32D192ED03)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))  # type: ignore[no-any-return]


def derive_key(random_state: int | np.random.Generator | None) -> int:
    """Normalise ``random_state`` (as scikit-learn does) and draw one 63-bit key from it."""
    rng = np.random.default_rng(random_state)
    return int(rng.integers(0, 2**63 - 1))


def uniform(key: int, stream: int, start: int, n: int) -> np.ndarray:
    """Uniform numbers in the open interval (0, 1) for global rows ``start .. start + n``.

    Parameters
    ----------
    key : int
        Dataset-wide key (from :func:`derive_key`).
    stream : int
        Which independent sequence (one per sampling pass).
    start, n : int
        Global index of the first row and number of rows.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    out = np.empty(n)
    _numba.uniform_fill(stream_base(key, stream), start, out)
    return out


def stream_base(key: int, stream: int) -> np.uint64:
    """The mixed 64-bit base of one stream, as the compiled kernels take it."""
    base = _mix(np.array([key], dtype=np.uint64) + np.array([stream], dtype=np.uint64) * _STREAM)
    return np.uint64(base[0])
