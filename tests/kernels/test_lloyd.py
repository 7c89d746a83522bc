"""Lloyd iterations: hand-computed cases, the scikit-learn oracle, invariances, properties."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans as SKKMeans

from kmflow.kernels.dense import tolerance
from kmflow.kernels.lloyd import assign, inertia, lloyd

# The worked example: six RGB points, three initial centroids (pure red, green, blue).
TOY_POINTS = np.array(
    [[255, 0, 0], [254, 1, 2], [0, 255, 0], [1, 254, 1], [0, 1, 255], [2, 2, 250]],
    dtype=np.uint8,
)
TOY_CENTERS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.float64)


def test_one_iteration_matches_hand_computation() -> None:
    r = lloyd(TOY_POINTS, TOY_CENTERS, max_iter=1)
    expected = [[254.5, 0.5, 1.0], [0.5, 254.5, 0.5], [1.0, 1.5, 252.5]]
    np.testing.assert_allclose(r.centers, expected, rtol=0, atol=1e-12)
    # Inertia under the initial centers: 0 + (1+1+4) + 0 + (1+1+1) + (0+1+0) + (4+4+25) = 43.
    assert r.history[0].inertia == pytest.approx(43.0)
    # Inertia under the final centers: each pair is split evenly around its mean.
    final = sum(
        ((p - c) ** 2).sum()
        for p, c in zip(TOY_POINTS, np.repeat(expected, 2, axis=0), strict=True)
    )
    assert r.inertia == pytest.approx(final)
    assert r.n_iter == 1


def test_second_iteration_detects_unchanged_labels() -> None:
    r = lloyd(TOY_POINTS, TOY_CENTERS, max_iter=10, tol=0.0)
    assert r.n_iter == 2  # the second pass reproduces the same sums: labels did not change
    assert r.converged
    assert r.history[-1].center_shift == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_sklearn_from_identical_centers(blobs, dtype) -> None:
    X = blobs[0].astype(dtype)
    init = X[np.random.default_rng(1).choice(len(X), 8, replace=False)].astype(np.float64)
    sk = SKKMeans(8, init=init.astype(dtype), n_init=1, algorithm="lloyd", max_iter=300, tol=1e-4)
    sk.fit(X)
    r = lloyd(da.from_array(X, chunks=(700, 4)), init, max_iter=300, tol=1e-4)
    np.testing.assert_allclose(r.centers, sk.cluster_centers_, rtol=1e-4, atol=1e-4)
    assert r.inertia == pytest.approx(sk.inertia_, rel=1e-4)
    assert r.n_iter == sk.n_iter_


def test_inertia_is_true_sum_of_squares(blobs) -> None:
    X = blobs[0]
    c = X[:8]
    d2 = ((X[:, None, :] - c[None]) ** 2).sum(-1).min(1)
    assert inertia(X, c) == pytest.approx(d2.sum(), rel=1e-12)
    w = np.linspace(0, 2, len(X))
    assert inertia(X, c, sample_weight=w) == pytest.approx((w * d2).sum(), rel=1e-12)


def test_weighted_unique_rows_equal_repeated_rows(pixels) -> None:
    colors, counts = np.unique(pixels, axis=0, return_counts=True)
    assert len(colors) < len(pixels)  # real duplicates, so the weights matter
    init = colors[np.random.default_rng(0).choice(len(colors), 6, replace=False)].astype(float)
    a = lloyd(pixels, init, max_iter=50, tol=0)
    b = lloyd(colors, init, sample_weight=counts, max_iter=50, tol=0)
    np.testing.assert_allclose(b.centers, a.centers, rtol=1e-12)
    assert b.inertia == pytest.approx(a.inertia, rel=1e-12)
    assert b.n_iter == a.n_iter


@pytest.mark.parametrize(
    "chunks",
    [
        ((4000,), (4,)),  # one chunk
        ((97,) * 41 + (23,), (4,)),  # many chunks
        ((0, 1000, 0, 0, 3000, 0), (4,)),  # empty chunks
        ((1000,) * 4, (2, 2)),  # split along features too
    ],
)
def test_chunking_invariance(blobs, chunks) -> None:
    X = blobs[0]
    init = X[:8].copy()
    ref = lloyd(X, init, max_iter=100)
    r = lloyd(da.from_array(X, chunks=chunks), init, max_iter=100)
    np.testing.assert_allclose(r.centers, ref.centers, rtol=1e-10)
    assert r.inertia == pytest.approx(ref.inertia, rel=1e-10)
    assert r.n_iter == ref.n_iter


def test_uint8_pixels_are_exact_and_chunking_invariant_bit_for_bit(pixels) -> None:
    init = pixels[:16].astype(float) + 0.25
    a = lloyd(pixels, init, max_iter=15, tol=0)
    b = lloyd(da.from_array(pixels, chunks=(7_001, 3)), init, max_iter=15, tol=0)
    # Integer data: every partial sum and count is exact in float64, so the order of the
    # reduction does not change the centers at all (inertia involves fractions: rounding only).
    np.testing.assert_array_equal(a.centers, b.centers)
    assert a.inertia == pytest.approx(b.inertia, rel=1e-12)


def test_empty_cluster_is_reseeded_not_zeroed() -> None:
    X = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 10.0], [10.1, 10.0], [50.0, 50.0]])
    # Two centers far from every point: they get no points in the first iteration.
    init = np.array([[0.0, 0.0], [1000.0, 1000.0], [-1000.0, -1000.0]])
    r = lloyd(X, init, max_iter=20)
    assert r.history[0].n_relocated == 2
    assert not np.any(np.all(r.centers == 0, axis=1))
    labels = assign(da.from_array(X), r.centers).compute()
    assert len(np.unique(labels)) == 3  # every cluster has members
    # The far points (50,50) and then one of (10,10)/(10.1,10) took the empty clusters.
    assert any(np.allclose(c, [50.0, 50.0]) for c in r.centers)


def test_warm_start_from_converged_centers_stops_after_one_iteration(blobs) -> None:
    X = blobs[0]
    first = lloyd(X, X[:8].copy(), max_iter=300, tol=0)
    assert first.converged
    again = lloyd(X, first.centers, max_iter=300)
    assert again.n_iter == 1
    assert again.converged
    np.testing.assert_array_equal(again.centers, first.centers)


def test_tolerance_scales_with_variance() -> None:
    assert tolerance(np.array([1.0, 3.0]), 1e-4) == pytest.approx(2e-4)


def test_callback_receives_every_iteration(blobs) -> None:
    seen = []
    r = lloyd(blobs[0], blobs[0][:8].copy(), max_iter=5, tol=0, callback=seen.append)
    assert [i.iteration for i in seen] == list(range(1, r.n_iter + 1))
    assert all(i.seconds >= 0 and i.max_iter == 5 for i in seen)
    assert seen == list(r.history)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(5, 200),
    k=st.integers(1, 5),
    d=st.integers(1, 4),
)
def test_inertia_never_increases_and_labels_in_range(seed: int, n: int, k: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10)
    w = rng.integers(0, 4, size=n).astype(float)
    w[0] = 1.0
    init = X[rng.choice(n, k, replace=False)]
    r = lloyd(da.from_array(X, chunks=max(1, n // 3)), init, sample_weight=w, max_iter=30, tol=0)
    inertias = [i.inertia for i in r.history if i.n_relocated == 0] + [r.inertia]
    for before, after in itertools.pairwise(inertias):
        assert after <= before * (1 + 1e-9) + 1e-9
    labels = assign(da.from_array(X), r.centers).compute()
    assert labels.min() >= 0
    assert labels.max() < k


@pytest.mark.parametrize("d", [1, 3, 5])
@pytest.mark.parametrize("k", [1, 3, 4, 6, 9])
def test_compiled_kernels_match_a_numpy_reference(d: int, k: int) -> None:
    # Small integers: every distance is exact, so ties are real ties and must go to the lowest
    # center index (k = 4, 6, 9 cover the four-centers-at-a-time sweep and its remainder).
    from kmflow.kernels import _numba

    rng = np.random.default_rng(10 * d + k)
    X = rng.integers(0, 6, size=(1500, d)).astype(np.uint8)
    C = rng.integers(0, 6, size=(k, d)).astype(np.float64)
    C[-1] = C[0]
    ct = np.ascontiguousarray(C.T)
    d2 = ((X[:, None, :].astype(np.float64) - C[None]) ** 2).sum(-1)
    ref_labels = d2.argmin(1)
    labels = np.empty(len(X), np.int32)
    dist = np.empty(len(X))
    _numba.assign(X, ct, labels, dist)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(dist, d2.min(1))
    w = rng.random(len(X))
    for has_w, weights in [(False, np.ones(len(X))), (True, w)]:
        sums, counts = np.zeros((k, d)), np.zeros(k)
        got = _numba.accumulate(X, w if has_w else np.empty(0), has_w, ct, sums, counts)
        np.testing.assert_allclose(counts, np.bincount(ref_labels, weights, minlength=k))
        ref_sums = np.zeros((k, d))
        np.add.at(ref_sums, ref_labels, weights[:, None] * X)
        np.testing.assert_allclose(sums, ref_sums, rtol=1e-12)
        assert got == pytest.approx(float(weights @ d2.min(1)), rel=1e-12)
        # The inertia-only kernel adds the same numbers in the same order: bit for bit.
        assert _numba.cost(X, w if has_w else np.empty(0), has_w, ct) == got
