"""The small sample of evaluation rows a model version keeps for its report's figures.

A report is drawn from the registry alone, long after training: its scatter on the first
two principal components, its per-cluster silhouette and (for palettes) its RGB cube need
some of the rows the model was evaluated on. Each training flow stores a bounded, seeded
sample of them with the version, as the file :data:`SAMPLE_FILE` (a plain ``.npy``, listed
in the record's ``artifacts`` and checked by SHA-256 like every other file; never a
pickle):

- palettes: raw sRGB pixels, uint8 of shape (n, 3) (the report maps them to the centers'
  color space with the model's own preprocessing);
- segment and image models: rows already in the centers' space, float32 of shape (n, d).

The labels are not stored: they are the nearest centers, recomputed by the report.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

__all__ = ["MAX_SAMPLE_BYTES", "MAX_SAMPLE_ROWS", "SAMPLE_FILE", "sample_file", "sample_rows"]

#: Name of the sample file in a version's folder.
SAMPLE_FILE = "report.sample.npy"
#: At most this many rows are kept ...
MAX_SAMPLE_ROWS = 2000
#: ... and at most this many bytes (fewer rows for wide feature rows).
MAX_SAMPLE_BYTES = 1 << 20


def sample_rows(
    X: Any,
    *,
    mask: Any = None,
    size: int = MAX_SAMPLE_ROWS,
    seed: int | None = 0,
    dtype: Any = np.float32,
) -> np.ndarray:
    """A seeded uniform sample (without replacement) of the rows of `X` where `mask` holds.

    Parameters
    ----------
    X : numpy.ndarray or dask.array.Array of shape (n_samples, n_features)
    mask : array-like or dask.array.Array of bool, shape (n_samples,), optional
        Rows that may be drawn (e.g. the held-out part); default every row.
    size : int, default MAX_SAMPLE_ROWS
        Rows wanted; fewer when fewer are eligible or when ``size`` rows of `dtype` would
        exceed :data:`MAX_SAMPLE_BYTES`.
    seed : int or None
        Seed of the draw.
    dtype : numpy dtype, default float32
        Dtype of the result.

    Returns
    -------
    numpy.ndarray of shape (m, n_features)
        The rows in their original order (the drawn indices sorted).

    Notes
    -----
    One ``compute`` for the mask (when it is a dask array) and one for the drawn rows.
    """
    n, d = int(X.shape[0]), int(X.shape[1])
    itemsize = np.dtype(dtype).itemsize
    size = max(0, min(int(size), MAX_SAMPLE_BYTES // max(1, d * itemsize)))
    if mask is None:
        eligible = np.arange(n)
    else:
        m = mask.compute() if hasattr(mask, "compute") else mask
        eligible = np.flatnonzero(np.asarray(m, dtype=bool))
    rng = np.random.default_rng(seed)
    if len(eligible) > size:
        eligible = np.sort(rng.choice(eligible, size=size, replace=False))
    rows = X[eligible]
    if hasattr(rows, "compute"):
        rows = rows.compute()
    return np.ascontiguousarray(np.asarray(rows), dtype=dtype).reshape(len(eligible), d)


def sample_file(rows: np.ndarray) -> dict[str, bytes]:
    """``{SAMPLE_FILE: <.npy bytes>}``: the ``files`` argument of a registration."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(rows), allow_pickle=False)
    return {SAMPLE_FILE: buffer.getvalue()}
