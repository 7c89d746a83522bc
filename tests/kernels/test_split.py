"""Seeded train / held-out splits: deterministic, chunk-invariant, never empty on either side."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from kmflow.errors import InvalidInputError
from kmflow.kernels.split import holdout_items, holdout_rows


def test_holdout_items_depends_only_on_key_and_seed() -> None:
    keys = [f"sha-{i}" for i in range(200)]
    held = holdout_items(keys, 0.25, seed=7)
    # Order does not matter: each item's side is a function of its own key.
    perm = np.random.default_rng(0).permutation(len(keys))
    held_perm = holdout_items([keys[i] for i in perm], 0.25, seed=7)
    np.testing.assert_array_equal(held_perm, held[perm])
    assert 0.15 < held.mean() < 0.35
    assert not np.array_equal(held, holdout_items(keys, 0.25, seed=8))


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_holdout_items_keeps_both_sides_non_empty(fraction: float) -> None:
    held = holdout_items(["a", "b"], fraction, seed=0)
    assert held.sum() == 1


def test_holdout_rows_is_chunk_invariant_and_near_the_fraction() -> None:
    X = da.zeros((10_000, 3), chunks=(2_500, 3))
    mask = holdout_rows(X, 0.3, seed=4).compute()
    for chunks in [((10_000,), (3,)), ((7, 0, 4_993, 5_000), (3,)), ((333,) * 30 + (10,), (3,))]:
        other = holdout_rows(X.rechunk(chunks), 0.3, seed=4).compute()
        np.testing.assert_array_equal(other, mask)
    assert mask.dtype == bool
    assert mask.shape == (10_000,)
    assert abs(mask.mean() - 0.3) < 0.02
    assert (mask != holdout_rows(X, 0.3, seed=5).compute()).any()


def test_holdout_rows_reads_no_data() -> None:
    X = da.from_array(np.full((100, 3), np.nan), chunks=(10, 3))
    # The mask only depends on row indices: NaN data is irrelevant and never loaded.
    assert holdout_rows(X, 0.5, seed=0).compute().shape == (100,)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction_is_rejected(fraction: float) -> None:
    with pytest.raises(InvalidInputError, match=r"holdout fraction must be in \(0, 1\)"):
        holdout_items(["a", "b", "c"], fraction, seed=0)
    with pytest.raises(InvalidInputError, match=r"holdout fraction must be in \(0, 1\)"):
        holdout_rows(da.zeros((4, 3)), fraction, seed=0)


def test_split_by_image_needs_two_images() -> None:
    with pytest.raises(InvalidInputError, match="at least 2 images; the store holds 1"):
        holdout_items(["only"], 0.5, seed=0)
