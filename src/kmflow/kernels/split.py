"""Seeded train / held-out splits, by item (image) or by row, independent of chunking.

Both splits are deterministic functions of the seed and of what is split: an image's side
depends only on its content hash, a row's side only on its global row index, so the same seed
gives the same split whatever the order of ingestion or the chunking of the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from kmflow.errors import InvalidInputError
from kmflow.kernels._random import uniform

__all__ = ["holdout_items", "holdout_row_numbers", "holdout_rows"]

# Stream of kmflow.kernels._random reserved for row splits (k-means|| and inits use 1..99).
_SPLIT_STREAM = 1_000_003


def _check_fraction(fraction: float) -> float:
    if not 0.0 < fraction < 1.0:
        raise InvalidInputError(f"holdout fraction must be in (0, 1); got {fraction!r}")
    return float(fraction)


def _item_uniform(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2.0**64


def holdout_items(keys: Sequence[str], fraction: float, *, seed: int) -> np.ndarray:
    """Which items (images) are held out for evaluation.

    Parameters
    ----------
    keys : sequence of str
        One stable identity per item (an image's sha256).
    fraction : float in (0, 1)
        Expected share of items held out.
    seed : int

    Returns
    -------
    ndarray of bool, shape (len(keys),)
        True for a held-out item. With two or more items, at least one is held out and at
        least one is kept for training.

    Raises
    ------
    InvalidInputError
        If ``fraction`` is outside (0, 1) or there are fewer than two items.
    """
    fraction = _check_fraction(fraction)
    if len(keys) < 2:
        raise InvalidInputError(
            f"a split by image needs at least 2 images; the store holds {len(keys)}"
        )
    u = np.array([_item_uniform(k, seed) for k in keys])
    held = u < fraction
    if not held.any():
        held[np.argmin(u)] = True
    if held.all():
        held[np.argmax(u)] = False
    return held


def _mask_block(key: int, fraction: float, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    if block_info is None:  # dask's meta probe
        return np.empty(0, dtype=bool)
    start, stop = block_info[None]["array-location"][0]
    return uniform(key, _SPLIT_STREAM, int(start), int(stop) - int(start)) < fraction


def holdout_rows(X: da.Array, fraction: float, *, seed: int) -> da.Array:
    """Which rows of ``X`` are held out for evaluation, lazily.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features)
    fraction : float in (0, 1)
        Probability that a row is held out.
    seed : int

    Returns
    -------
    dask.array.Array of bool, shape (n_samples,), chunked like ``X``'s rows
        Row ``i`` is held out iff a counter-based uniform keyed on ``(seed, i)`` is below
        ``fraction``; the same for any chunking.

    Notes
    -----
    No ``compute``, and ``X`` is not read: only its row chunks are used.
    """
    fraction = _check_fraction(fraction)
    key = int(np.random.default_rng(seed).integers(0, 2**63 - 1))
    return da.map_blocks(
        _mask_block,
        key,
        fraction,
        chunks=(X.chunks[0],),
        dtype=bool,
        meta=np.empty(0, dtype=bool),
    )


def _ids_block(ids: np.ndarray, key: int, fraction: float) -> np.ndarray:
    if ids.size == 0:
        return np.zeros(0, dtype=bool)
    lo, hi = int(ids.min()), int(ids.max())
    return uniform(key, _SPLIT_STREAM, lo, hi - lo + 1)[ids - lo] < fraction


def holdout_row_numbers(rows: da.Array, fraction: float, *, seed: int) -> da.Array:
    """:func:`holdout_rows` for rows named by their global row numbers.

    Row number ``i`` is held out exactly when :func:`holdout_rows` holds out row ``i`` of the
    full data, so a subset of the rows (e.g. a table after dropping rows with missing
    values) keeps every row's side.

    Parameters
    ----------
    rows : dask.array.Array of int64, shape (n,)
        Non-negative global row numbers (any order, gaps allowed).
    fraction : float in (0, 1)
    seed : int
    """
    fraction = _check_fraction(fraction)
    key = int(np.random.default_rng(seed).integers(0, 2**63 - 1))
    return da.map_blocks(_ids_block, rows, key, fraction, dtype=bool, meta=np.empty(0, dtype=bool))
