"""Input checks shared by every kernel entry point and the estimator.

``check_array`` turns what a user passes (numpy, dask, Zarr-backed dask, uint8 pixels) into a
dask array with one chunk along features; ``data_stats`` makes the single validation pass that
also yields the weighted per-feature variance scikit-learn scales ``tol`` by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from kmflow.errors import InvalidInputError
from kmflow.kernels import _numba
from kmflow.kernels._blocks import Blocks, map_reduce

__all__ = ["DataStats", "check_array", "check_centers", "check_sample_weight", "data_stats"]

#: Row-chunk target when wrapping an in-memory array: at most 64 MiB and 2**19 rows a block,
#: so even a few million rows are split across the workers.
DEFAULT_CHUNK_BYTES = 64 * 2**20
DEFAULT_CHUNK_ROWS = 2**19

_NO_WEIGHTS = np.empty(0)


def check_array(
    X: Any, *, name: str = "X", n_features: int | None = None, estimator: str | None = None
) -> da.Array:
    """Validate ``X``'s shape and dtype and return it as a dask array.

    Parameters
    ----------
    X : array-like or dask.array.Array of shape (n_samples, n_features)
        Any real numeric dtype; ``uint8`` pixels are kept as ``uint8`` (never copied to float).
        An in-memory array of dtype ``object`` is converted to float64.
    name : str
        Name used in error messages.
    n_features : int, optional
        Expected number of features (for ``predict`` on a fitted model).
    estimator : str, optional
        Name of the fitted estimator, for the message when ``n_features`` does not match.

    Returns
    -------
    dask.array.Array of shape (n_samples, n_features)
        One chunk along the feature axis; row chunks as given (numpy input is split into
        blocks of at most 2**19 rows and 64 MiB).

    Raises
    ------
    InvalidInputError
        A sparse matrix, wrong number of dimensions, no rows, no features, a complex or
        other non-numeric dtype, or the wrong number of features. Messages use
        scikit-learn's wording ("Reshape your data", "Complex data not supported",
        "0 feature(s) (shape=(12, 0)) while a minimum of 1 is required", "X has 2
        features, but KMeans is expecting 4 features as input").
    TypeError
        An ``object`` array holding something that is not a number (numpy's message).

    Notes
    -----
    No computation: NaN/inf are found by :func:`data_stats`.
    """
    if type(X).__module__.startswith("scipy.sparse"):
        raise InvalidInputError(
            f"{name} is a sparse {type(X).__name__}: sparse input is not supported; pass a "
            f"dense array ({name}.toarray())"
        )
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        if X.dtype == object:
            X = _object_to_float(X, name)
    if X.ndim != 2:
        hint = (
            f". Reshape your data with {name}.reshape(-1, 1) if it has a single feature or "
            f"{name}.reshape(1, -1) if it is a single sample"
            if X.ndim < 2
            else ""
        )
        if X.ndim == 3 and X.shape[-1] in (3, 4):
            hint = f" (an image: reshape it to pixels with {name}.reshape(-1, {name}.shape[-1]))"
        raise InvalidInputError(
            f"{name} must be 2-D (n_samples, n_features); got shape {X.shape}{hint}"
        )
    if X.dtype.kind == "c":
        raise InvalidInputError(
            f"Complex data not supported: {name} has dtype {X.dtype}; pass real features "
            f"(for example {name}.real and {name}.imag side by side)"
        )
    if X.dtype.kind not in "uif":
        raise InvalidInputError(
            f"{name} must have a real numeric dtype (uint8 pixels, integers or floats); "
            f"got {X.dtype}"
        )
    if X.dtype == np.float16:
        X = X.astype(np.float32)
    if isinstance(X, np.ndarray):
        row_bytes = max(1, X.shape[1] * X.dtype.itemsize)
        rows = max(1, min(DEFAULT_CHUNK_ROWS, DEFAULT_CHUNK_BYTES // row_bytes))
        X = da.from_array(X, chunks=(rows, -1))
    elif any(np.isnan(c) for c in X.chunks[0]):
        X = X.compute_chunk_sizes()
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})
    n_samples, n_feat = X.shape
    shape = f"(shape=({n_samples}, {n_feat}))"
    if n_samples == 0:
        raise InvalidInputError(
            f"{name} has no rows: found 0 sample(s) {shape} while a minimum of 1 is required."
        )
    if n_feat == 0:
        raise InvalidInputError(
            f"{name} has no features: found 0 feature(s) {shape} while a minimum of 1 is required."
        )
    if n_features is not None and n_feat != n_features:
        raise InvalidInputError(
            f"{name} has {n_feat} features, but {estimator or 'the model'} is expecting "
            f"{n_features} features as input (the number it was fitted with)"
        )
    return X


def _object_to_float(X: np.ndarray, name: str) -> np.ndarray:
    """An ``object`` array of numbers as float64 (scikit-learn treats them as numeric)."""
    try:
        return X.astype(np.float64)
    except TypeError as exc:  # a dict, list or other non-number inside
        raise TypeError(
            f"{name} has dtype object and holds a value that is not a number: {exc}"
        ) from exc
    except ValueError as exc:  # a string that is not a number
        raise InvalidInputError(
            f"{name} has dtype object and holds a value that is not a number: {exc}"
        ) from exc


def check_sample_weight(sample_weight: Any, X: da.Array) -> da.Array | None:
    """Return ``sample_weight`` as a float64 dask array with ``X``'s row chunks (or None).

    Raises
    ------
    InvalidInputError
        If it is not 1-D or its length differs from ``X``'s number of rows. Negative, NaN and
        all-zero weights are found by :func:`data_stats`.
    """
    if sample_weight is None:
        return None
    if not isinstance(sample_weight, da.Array):
        sample_weight = np.asarray(sample_weight)
    if sample_weight.ndim != 1:
        raise InvalidInputError(
            f"sample_weight must be 1-D of length {X.shape[0]}; got shape {sample_weight.shape}"
        )
    if sample_weight.dtype.kind not in "uif":
        raise InvalidInputError(f"sample_weight must be numeric; got {sample_weight.dtype}")
    if sample_weight.shape[0] != X.shape[0]:
        raise InvalidInputError(
            f"sample_weight has length {sample_weight.shape[0]} but X has {X.shape[0]} rows"
        )
    if isinstance(sample_weight, np.ndarray):
        return da.from_array(sample_weight.astype(np.float64, copy=False), chunks=(X.chunks[0],))
    return sample_weight.astype(np.float64).rechunk((X.chunks[0],))


def check_centers(
    centers: Any,
    n_clusters: int | None = None,
    n_features: int | None = None,
    *,
    name: str = "centers",
    shape_from: str | None = None,
) -> np.ndarray:
    """Validate an array of cluster centers; return it as a fresh C-contiguous float64 array.

    The one check of centers: initial centers (the estimator, Lloyd, the sweep), centers to
    measure (metrics, drift), centers to register (the registry), a model's centers and a
    palette's.

    Parameters
    ----------
    centers : array-like or dask array
    n_clusters, n_features : int, optional
        The expected number of rows and columns; ``None`` accepts any (at least 1).
    name : str, default "centers"
        What the centers are, in messages (e.g. ``"init centers"``).
    shape_from : str, optional
        Where the expected shape comes from, in messages (e.g. ``"X has 3 features"``).

    Returns
    -------
    ndarray of shape (n_clusters, n_features), float64
        A copy: the caller may freeze or modify it.

    Raises
    ------
    InvalidInputError
        Not an array of real numbers (booleans and integers are accepted), not a non-empty
        2-D array, not of the expected shape, or NaN or infinite values.
    """
    try:
        raw = np.asarray(centers.compute() if isinstance(centers, da.Array) else centers)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{name} are not an array: {exc}") from exc
    if raw.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name} must be real numbers; got dtype {raw.dtype}")
    if raw.ndim != 2 or raw.size == 0:
        raise InvalidInputError(
            f"{name} must be a non-empty 2-D array (n_clusters, n_features); got shape {raw.shape}"
        )
    if (n_clusters is not None and raw.shape[0] != n_clusters) or (
        n_features is not None and raw.shape[1] != n_features
    ):
        rows = "n_clusters" if n_clusters is None else str(n_clusters)
        cols = "n_features" if n_features is None else str(n_features)
        why = "" if shape_from is None else f" ({shape_from})"
        raise InvalidInputError(
            f"{name} must have shape ({rows}, {cols}){why}; got shape {raw.shape}"
        )
    array = np.array(raw, dtype=np.float64, order="C", copy=True)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise InvalidInputError(f"{name} contain {bad} NaN or infinite values")
    return array


@dataclass(frozen=True)
class DataStats:
    """What the validation pass learns about the data.

    Attributes
    ----------
    n_samples : int
    n_positive : int
        Rows with positive weight (all rows when unweighted).
    total_weight : float
    mean, variance : ndarray of shape (n_features,)
        Weighted per-feature mean and (population) variance.
    """

    n_samples: int
    n_positive: int
    total_weight: float
    mean: np.ndarray
    variance: np.ndarray


# Per-block partial: (n_bad_x, first_bad_row, n_bad_w, n_neg_w, min_w, n_pos, W, mean, M2)
_Partial = tuple[int, int, int, int, float, int, float, np.ndarray, np.ndarray]


def _stats_block(x: np.ndarray, w: np.ndarray | None, offset: int) -> _Partial:
    d = x.shape[1]
    mean, m2 = np.zeros(d), np.zeros(d)
    has_w = w is not None
    n_bad_x, first, n_bad_w, n_neg_w, min_w, n_pos, total = _numba.block_stats(
        x, w if has_w else _NO_WEIGHTS, has_w, x.dtype.kind == "f", mean, m2
    )
    first_bad = offset + int(first) if n_bad_x else -1
    return (
        int(n_bad_x),
        first_bad,
        int(n_bad_w),
        int(n_neg_w),
        float(min_w),
        int(n_pos),
        float(total),
        mean,
        m2,
    )


def _stats_combine(a: _Partial, b: _Partial) -> _Partial:
    first = a[1] if a[1] >= 0 else b[1]
    Wa, Wb = a[6], b[6]
    W = Wa + Wb
    if W > 0:
        delta = b[7] - a[7]
        mean = a[7] + delta * (Wb / W)
        M2 = a[8] + b[8] + delta**2 * (Wa * Wb / W)
    else:
        mean, M2 = a[7], a[8]
    return (a[0] + b[0], first, a[2] + b[2], a[3] + b[3], min(a[4], b[4]), a[5] + b[5], W, mean, M2)


def data_stats(blocks: Blocks) -> DataStats:
    """One pass over the data: reject NaN/inf and bad weights, return counts and variance.

    Raises
    ------
    InvalidInputError
        NaN or infinity in ``X``; NaN, infinite or negative weights; all weights zero.

    Notes
    -----
    One ``compute``. Each block's mean and sum of squared deviations come from a compiled
    two-pass loop (:func:`kmflow.kernels._numba.block_stats`); blocks are merged with Chan et
    al.'s pairwise update, so they stay accurate for data far from the origin.
    """
    r = map_reduce(blocks, _stats_block, _stats_combine)
    n_bad_x, first_bad, n_bad_w, n_neg_w, min_w, n_pos, W, mean, M2 = r
    if n_bad_x:
        raise InvalidInputError(
            f"X contains NaN or infinity in {n_bad_x} row(s) (first at row {first_bad}); "
            "drop or impute them before fitting"
        )
    if n_bad_w:
        raise InvalidInputError(f"sample_weight contains {n_bad_w} NaN or infinite value(s)")
    if n_neg_w:
        raise InvalidInputError(
            f"sample_weight must be non-negative; {n_neg_w} value(s) are negative (min {min_w:g})"
        )
    if W <= 0:
        raise InvalidInputError("sample_weight sums to zero: no row has positive weight")
    return DataStats(
        n_samples=int(blocks.X.shape[0]),
        n_positive=n_pos,
        total_weight=W,
        mean=mean,
        variance=M2 / W,
    )
