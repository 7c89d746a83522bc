"""Initialisation: k-means||, k-means++ and random centers."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from kmflow.errors import TooFewDistinctPointsError
from kmflow.kernels import kmeans_parallel, kmeans_plusplus, random_centers
from kmflow.kernels._random import uniform
from kmflow.kernels.init import _reduce_candidates


def _nearest(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    return ((X[:, None, :] - C[None]) ** 2).sum(-1).argmin(1)


def test_uniform_stream_is_keyed_on_global_row_index() -> None:
    whole = uniform(42, 7, 0, 1000)
    np.testing.assert_array_equal(
        np.concatenate([uniform(42, 7, 0, 300), uniform(42, 7, 300, 700)]), whole
    )
    assert np.all((whole > 0) & (whole < 1))
    assert not np.array_equal(uniform(42, 8, 0, 1000), whole)
    assert not np.array_equal(uniform(43, 7, 0, 1000), whole)
    # Roughly uniform: mean and a coarse histogram.
    big = uniform(1, 1, 0, 200_000)
    assert abs(big.mean() - 0.5) < 0.005
    hist = np.histogram(big, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(hist - 20_000) < 800)


@pytest.mark.parametrize("init", [kmeans_parallel, kmeans_plusplus, random_centers])
def test_init_is_independent_of_chunking(blobs, init) -> None:
    X = blobs[0]
    a = init(X, 8, random_state=3)
    b = init(da.from_array(X, chunks=((0, 123, 877, 0, 3000), (4,))), 8, random_state=3)
    np.testing.assert_allclose(a, b, rtol=1e-10)
    assert a.shape == (8, 4)


@pytest.mark.parametrize("init", [kmeans_parallel, kmeans_plusplus])
def test_seeding_finds_every_separated_blob(separated, init) -> None:
    X, y = separated
    for seed in range(3):
        C = init(X, 5, random_state=seed)
        assert adjusted_rand_score(y, _nearest(X, C)) == pytest.approx(1.0)


def test_kmeans_parallel_same_with_or_without_kept_state(blobs) -> None:
    from kmflow.kernels._blocks import Blocks
    from kmflow.kernels.init import _kmeans_parallel

    blocks = Blocks(da.from_array(blobs[0], chunks=(500, 4)), None)
    kw = {"key": 123, "oversampling_factor": 2.0, "n_rounds": 5}
    kept = _kmeans_parallel(blocks, 8, keep_state=True, **kw)
    streamed = _kmeans_parallel(blocks, 8, keep_state=False, **kw)
    np.testing.assert_array_equal(kept, streamed)


def test_random_centers_are_distinct_data_rows(blobs) -> None:
    X = blobs[0]
    C = random_centers(X, 8, random_state=0)
    assert len(np.unique(C, axis=0)) == 8
    rows = {tuple(r) for r in X}
    assert all(tuple(c) in rows for c in C)


def test_kmeans_parallel_oversamples_about_ell_per_round(blobs, caplog) -> None:
    caplog.set_level("INFO", logger="kmflow.kernels.init")
    kmeans_parallel(blobs[0], 8, oversampling_factor=2.0, n_rounds=5, random_state=0)
    new = [
        int(r.getMessage().split(", ")[1].split()[0])
        for r in caplog.records
        if "new candidates" in r.getMessage()
    ]
    assert len(new) == 5
    # l = 2 * 8 = 16 expected per round (Bahmani et al.); dask-ml's variant takes 2.
    assert 8 <= np.mean(new) <= 24


def test_zero_weight_rows_are_never_chosen() -> None:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 1000])
    w = np.r_[np.ones(100), np.zeros(100)]
    for init in (kmeans_parallel, kmeans_plusplus, random_centers):
        C = init(X, 3, sample_weight=w, random_state=1)
        assert np.all(np.abs(C) < 100), init.__name__


@pytest.mark.parametrize("init", [kmeans_parallel, kmeans_plusplus, random_centers])
def test_too_few_distinct_points_is_a_clear_error(init) -> None:
    X = np.repeat(np.arange(9 * 3, dtype=np.uint8).reshape(9, 3), 50, axis=0)
    with pytest.raises(
        TooFewDistinctPointsError, match=r"n_clusters=16 but only 9 distinct points"
    ):
        init(X, 16, random_state=0)
    assert init(X, 9, random_state=0).shape == (9, 3)


def test_reduce_candidates_honours_weights() -> None:
    # Two heavy candidates and many light ones: k=2 must land on the heavy ones.
    rng = np.random.default_rng(0)
    cand = np.vstack([[0.0, 0.0], [100.0, 0.0], rng.uniform(40, 60, size=(30, 2))])
    w = np.r_[1e6, 1e6, np.ones(30)]
    C = _reduce_candidates(cand, w, 2, rng)
    C = C[np.argsort(C[:, 0])]
    np.testing.assert_allclose(C, [[0.0, 0.0], [100.0, 0.0]], atol=0.1)


@pytest.mark.parametrize("init", ["random", "k-means||", "k-means++"])
def test_blocks_smaller_than_the_sample_lose_no_rows(init: str) -> None:
    # 60 distinct rows in 3-row blocks: merging two blocks' samples must keep up to the
    # requested size, not the larger of the two blocks' counts.
    x = np.random.default_rng(0).normal(size=(60, 2))
    funcs = {"random": random_centers, "k-means||": kmeans_parallel, "k-means++": kmeans_plusplus}
    tiny = funcs[init](da.from_array(x, chunks=(3, 2)), 8, random_state=0)
    whole = funcs[init](da.from_array(x, chunks=(60, 2)), 8, random_state=0)
    assert tiny.shape == (8, 2)
    assert len(np.unique(tiny, axis=0)) == 8
    np.testing.assert_array_equal(tiny, whole)  # chunk-invariant as everywhere else
