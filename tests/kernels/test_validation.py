"""The validation pass: bad values found with their first row, weighted mean and variance."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pytest

from kmflow.errors import InvalidInputError
from kmflow.kernels._blocks import Blocks
from kmflow.kernels.validation import data_stats


def _stats(X, w=None, chunks=1_000):
    Xd = da.from_array(X, chunks=(chunks, -1))
    Wd = None if w is None else da.from_array(w, chunks=(chunks,))
    return data_stats(Blocks(Xd, Wd))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
def test_weighted_mean_and_variance_match_numpy(dtype) -> None:
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(10_007, 3)).astype(dtype)
    w = rng.integers(0, 4, size=len(X)).astype(np.float64)
    for weights in (None, w):
        s = _stats(X, weights, chunks=997)
        ww = np.ones(len(X)) if weights is None else weights
        mean = (ww @ X.astype(np.float64)) / ww.sum()
        var = (ww @ (X.astype(np.float64) - mean) ** 2) / ww.sum()
        np.testing.assert_allclose(s.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(s.variance, var, rtol=1e-12)
        assert s.total_weight == pytest.approx(ww.sum(), rel=1e-15)
        assert s.n_positive == int((ww > 0).sum())
        assert s.n_samples == len(X)


def test_variance_stays_accurate_far_from_the_origin() -> None:
    rng = np.random.default_rng(1)
    X = 1e9 + rng.normal(size=(20_000, 2))
    s = _stats(X, chunks=3_001)
    np.testing.assert_allclose(s.variance, (X - 1e9).var(axis=0), rtol=1e-6)


def test_first_bad_row_is_global_and_the_earliest() -> None:
    X = np.zeros((5_000, 3))
    X[4_321, 0] = np.inf
    X[1_234, 2] = np.nan
    X[1_234, 1] = -np.inf
    with pytest.raises(InvalidInputError, match=r"in 2 row\(s\) \(first at row 1234\)"):
        _stats(X, chunks=1_000)


def test_empty_blocks_and_zero_weights_are_neutral() -> None:
    X = np.arange(30, dtype=np.float64).reshape(10, 3)
    Xd = da.from_array(X, chunks=((0, 4, 0, 6, 0), (3,)))
    w = np.r_[np.zeros(4), np.ones(6)]
    s = data_stats(Blocks(Xd, da.from_array(w, chunks=((0, 4, 0, 6, 0),))))
    np.testing.assert_allclose(s.mean, X[4:].mean(axis=0))
    np.testing.assert_allclose(s.variance, X[4:].var(axis=0))
    assert s.n_positive == 6


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.r_[np.ones(9), -2.0], r"1 value\(s\) are negative \(min -2\)"),
        (np.r_[np.ones(8), np.inf, np.nan], r"2 NaN or infinite value\(s\)"),
        (np.zeros(10), "sums to zero"),
    ],
)
def test_bad_weights(weights, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        _stats(np.ones((10, 2)), weights, chunks=3)


def test_check_centers_is_the_one_check_of_centers() -> None:
    from kmflow.kernels.validation import check_centers

    given = np.array([[1, 2], [3, 4]], dtype=np.int32)
    c = check_centers(given)
    assert c.dtype == np.float64
    assert c.flags.c_contiguous
    assert c.flags.owndata
    assert check_centers(np.asfortranarray(given), 2, 2).tolist() == [[1, 2], [3, 4]]
    bad: list[tuple[Any, dict[str, Any], str]] = [
        ([[1.0, 2.0], [3.0]], {}, "centers are not an array"),
        (np.array([["a"]]), {}, "centers must be real numbers; got dtype <U1"),
        (np.zeros(3), {}, r"non-empty 2-D array .*got shape \(3,\)"),
        (np.zeros((0, 2)), {"n_features": 2}, r"non-empty 2-D array .*got shape \(0, 2\)"),
        (given, {"n_clusters": 3}, r"centers must have shape \(3, n_features\); got"),
        (
            given,
            {"n_features": 3, "name": "init centers", "shape_from": "X has 3 features"},
            r"init centers must have shape \(n_clusters, 3\) \(X has 3 features\); got shape",
        ),
        (np.array([[np.nan, np.inf]]), {}, "centers contain 2 NaN or infinite values"),
    ]
    for centers, kwargs, message in bad:
        with pytest.raises(InvalidInputError, match=message):
            check_centers(centers, **kwargs)
