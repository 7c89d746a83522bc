"""k-means math on one in-memory numpy array: what a single task runs, without Dask.

Kept apart from :mod:`kmflow.kernels.lloyd` (which imports ``dask.array``) so that a worker
running per-image tasks imports only numpy and the compiled loops.
"""

from __future__ import annotations

import numpy as np

from kmflow.errors import InvalidInputError
from kmflow.kernels import _numba

__all__ = ["nearest", "tolerance"]


def tolerance(variance: np.ndarray, tol: float) -> float:
    """Absolute tolerance on the summed squared center shift: ``tol * mean(variance)``.

    The same scaling as scikit-learn, with the variance weighted by ``sample_weight``.
    """
    return float(np.mean(variance) * tol)


def _require_finite(x: np.ndarray) -> None:
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise InvalidInputError(
                f"X contains NaN or infinity in {int(bad.sum())} row(s) of a block; "
                "drop or impute them first"
            )


def _assign_block(x: np.ndarray, centers_t: np.ndarray) -> np.ndarray:
    _require_finite(x)
    labels = np.empty(x.shape[0], dtype=np.int32)
    d2 = np.empty(x.shape[0])
    _numba.assign(x, centers_t, labels, d2)
    return labels


def nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center of every row of an in-memory array.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
    centers : ndarray of shape (n_clusters, n_features)

    Returns
    -------
    ndarray of int32, shape (n_samples,)

    Raises
    ------
    InvalidInputError
        On NaN/inf rows.
    """
    return _assign_block(x, np.ascontiguousarray(np.asarray(centers, dtype=np.float64).T))
