"""The KMeans estimator: quality against scikit-learn, weights, errors, clusters, streaming."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster, wait
from sklearn.base import clone
from sklearn.cluster import KMeans as SKKMeans
from sklearn.metrics import adjusted_rand_score

from kmflow import InvalidInputError, KMeans, NotFittedError, TooFewDistinctPointsError
from kmflow.cluster.resources import ResidentBlocks


def _true_inertia(X: np.ndarray, C: np.ndarray) -> float:
    Xf = X.astype(np.float64)
    return float(((Xf[:, None, :] - C[None]) ** 2).sum(-1).min(1).sum())


# --------------------------------------------------------------------------- quality
@pytest.mark.parametrize("data", ["blobs", "pixels"])
def test_inertia_within_one_percent_of_sklearn_best_of_ten(request, data) -> None:
    # k-means is randomised: over ten seeds, the median fit is within 1% of scikit-learn's
    # best of ten inits, no fit is more than 5% worse, and a typical fit is at least as good
    # as a typical single scikit-learn init (k-means++, same tol).
    X = request.getfixturevalue(data)
    X = X[0] if isinstance(X, tuple) else X
    k = 8 if data == "blobs" else 16
    Xf = X.astype(np.float64)
    best = SKKMeans(k, n_init=10, random_state=0).fit(Xf).inertia_
    ours, single = [], []
    for seed in range(10):
        km = KMeans(k, random_state=seed).fit(X)
        assert km.inertia_ == pytest.approx(_true_inertia(X, km.cluster_centers_), rel=1e-9)
        ours.append(km.inertia_ / best)
        single.append(SKKMeans(k, n_init=1, random_state=seed).fit(Xf).inertia_ / best)
    assert np.median(ours) <= 1.01, ours
    assert max(ours) <= 1.05, ours
    assert np.median(ours) <= np.median(single) + 1e-9, (ours, single)


def test_separated_blobs_recovered_exactly(separated) -> None:
    X, y = separated
    for seed in range(5):
        labels = KMeans(5, random_state=seed).fit_predict(X)
        assert adjusted_rand_score(y, labels) == 1.0


# Random seeding is known to land in poor local minima (the reason k-means++ exists).
@pytest.mark.parametrize(
    ("init", "bound"), [("k-means||", 1.05), ("k-means++", 1.05), ("random", 1.5)]
)
def test_every_init_reaches_a_good_solution(blobs, init, bound) -> None:
    X = blobs[0]
    best = SKKMeans(8, n_init=10, random_state=0).fit(X).inertia_
    km = KMeans(8, init=init, random_state=0).fit(X)
    assert best * 0.999 <= km.inertia_ <= best * bound
    assert km.converged_


# --------------------------------------------------------------------------- weights
def test_weighted_unique_rows_equal_repeated_rows(separated) -> None:
    X, _ = separated
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 5, size=len(X))
    repeated = np.repeat(X, counts, axis=0)
    a = KMeans(5, random_state=0).fit(repeated)
    b = KMeans(5, random_state=0).fit(X, sample_weight=counts)
    order_a = np.lexsort(a.cluster_centers_.T)
    order_b = np.lexsort(b.cluster_centers_.T)
    np.testing.assert_allclose(b.cluster_centers_[order_b], a.cluster_centers_[order_a], rtol=1e-10)
    assert b.inertia_ == pytest.approx(a.inertia_, rel=1e-10)
    # And from identical initial centers on data with ties and overlaps (pixels).


def test_histogram_fit_equals_pixel_fit_from_same_init(pixels) -> None:
    colors, counts = np.unique(pixels, axis=0, return_counts=True)
    init = colors[:: len(colors) // 12][:12].astype(float)
    a = KMeans(12, init=init, tol=0).fit(pixels)
    b = KMeans(12, init=init, tol=0).fit(colors, sample_weight=counts)
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=1e-12)
    assert b.inertia_ == pytest.approx(a.inertia_, rel=1e-12)
    assert b.n_iter_ == a.n_iter_


# --------------------------------------------------------------------------- determinism
def test_deterministic_for_a_seed_whatever_the_chunking(pixels) -> None:
    ref = KMeans(16, random_state=11).fit(pixels)
    for chunks in [(60_000, 3), (4_999, 3), ((0, 10_000, 0, 50_000), (3,)), (20_000, 1)]:
        km = KMeans(16, random_state=11).fit(da.from_array(pixels, chunks=chunks))
        np.testing.assert_allclose(km.cluster_centers_, ref.cluster_centers_, rtol=1e-9)
        assert km.n_iter_ == ref.n_iter_
    other = KMeans(16, random_state=12).fit(pixels)
    assert not np.allclose(other.cluster_centers_, ref.cluster_centers_)


def test_warm_start_from_converged_model_stops_after_one_iteration(blobs) -> None:
    X = blobs[0]
    first = KMeans(8, random_state=0, tol=0).fit(X)
    assert first.converged_
    warm = KMeans(8, init=first.cluster_centers_).fit(X)
    assert warm.n_iter_ == 1
    assert warm.converged_
    np.testing.assert_allclose(warm.cluster_centers_, first.cluster_centers_)


# --------------------------------------------------------------------------- API
def test_predict_transform_score_agree(blobs) -> None:
    X = blobs[0]
    km = KMeans(8, random_state=0).fit(X)
    labels = km.predict(X)
    dist = km.transform(X)
    assert isinstance(labels, np.ndarray)
    assert labels.dtype == np.int32
    assert dist.shape == (len(X), 8)
    np.testing.assert_array_equal(dist.argmin(1), labels)
    assert km.score(X) == pytest.approx(-km.inertia_, rel=1e-9)
    assert km.score(X) == pytest.approx(-(dist.min(1) ** 2).sum(), rel=1e-9)
    lazy = km.predict(da.from_array(X, chunks=1000))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), labels)


def test_sklearn_compatibility(blobs) -> None:
    km = KMeans(4, init="random", max_iter=7, random_state=1)
    assert clone(km).get_params() == km.get_params()
    assert "n_clusters=4" in repr(km)
    X = blobs[0].astype(np.float32)
    km.fit(X)
    assert km.cluster_centers_.dtype == np.float32
    assert km.n_features_in_ == 4
    assert km.n_iter_ <= 7


def test_callback_reports_progress(blobs) -> None:
    seen = []
    km = KMeans(8, random_state=0, callback=seen.append).fit(blobs[0])
    assert [i.iteration for i in seen] == list(range(1, km.n_iter_ + 1))
    assert km.history_ == tuple(seen)
    assert seen[-1].inertia >= km.inertia_ - 1e-6


def test_logs_every_iteration(blobs, caplog) -> None:
    caplog.set_level("INFO", logger="kmflow")
    km = KMeans(8, random_state=0).fit(blobs[0])
    lines = [r.getMessage() for r in caplog.records if "Lloyd iteration" in r.getMessage()]
    assert len(lines) == km.n_iter_
    assert "inertia=" in lines[0]
    assert "shift=" in lines[0]


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_clusters": 0}, "n_clusters must be an integer >= 1; got 0"),
        ({"n_clusters": 2.5}, "n_clusters must be an integer"),
        ({"n_clusters": 2, "max_iter": 0}, "max_iter must be"),
        ({"n_clusters": 2, "tol": -1}, "tol must be"),
        ({"n_clusters": 2, "init": "kmeans"}, "init must be 'k-means||'"),
        ({"n_clusters": 2, "oversampling_factor": 0}, "oversampling_factor must be > 0"),
        ({"n_clusters": 2, "init_rounds": 0}, "init_rounds must be"),
    ],
)
def test_bad_parameters(kwargs, message) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("|", r"\|")):
        KMeans(**kwargs).fit(np.random.default_rng(0).normal(size=(20, 2)))


def test_more_clusters_than_distinct_points() -> None:
    X = np.repeat(np.eye(3), 10, axis=0)
    with pytest.raises(TooFewDistinctPointsError, match="n_clusters=4 but only 3 distinct points"):
        KMeans(4, random_state=0).fit(X)
    with pytest.raises(InvalidInputError, match="n_clusters=40 but X has only 30 rows"):
        KMeans(40).fit(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(bad) -> None:
    X = np.random.default_rng(0).normal(size=(100, 3))
    X[57, 1] = bad
    with pytest.raises(
        InvalidInputError, match=r"NaN or infinity in 1 row\(s\) \(first at row 57\)"
    ):
        KMeans(2).fit(da.from_array(X, chunks=10))


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.zeros(10), r"X must be 2-D \(n_samples, n_features\); got shape \(10,\)"),
        (np.zeros((4, 4, 3), dtype=np.uint8), "an image: reshape it to pixels"),
        (np.zeros((0, 3)), "X has no rows"),
        (np.array([["a", "b"]]), "real numeric dtype"),
    ],
)
def test_wrong_shapes_and_dtypes(X, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        KMeans(1).fit(X)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(9), "sample_weight has length 9 but X has 10 rows"),
        (np.r_[np.ones(9), -1.0], r"non-negative; 1 value\(s\) are negative \(min -1\)"),
        (np.r_[np.ones(9), np.nan], "NaN or infinite"),
        (np.zeros(10), "sums to zero"),
        (np.ones((10, 1)), "sample_weight must be 1-D"),
    ],
)
def test_bad_sample_weight(weights, message) -> None:
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(InvalidInputError, match=message):
        KMeans(2).fit(X, sample_weight=weights)


def test_init_array_of_wrong_shape() -> None:
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(
        InvalidInputError,
        match=r"init centers must have shape \(3, 2\) .*got shape \(3, 3\)",
    ):
        KMeans(3, init=np.zeros((3, 3))).fit(X)
    with pytest.raises(InvalidInputError, match="init centers contain 1 NaN or infinite values"):
        KMeans(2, init=np.array([[0.0, np.nan], [1.0, 1.0]])).fit(X)


def test_predict_errors(blobs) -> None:
    km = KMeans(3)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        km.predict(blobs[0])
    km.fit(blobs[0])
    with pytest.raises(
        InvalidInputError, match="X has 2 features, but KMeans is expecting 4 features as input"
    ):
        km.predict(blobs[0][:, :2])
    bad = blobs[0].copy()
    bad[3, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN or infinity"):
        km.predict(bad)


# --------------------------------------------------------------------------- clusters
def test_same_fit_on_a_multiprocess_cluster(dask_client, pixels) -> None:
    local = KMeans(16, random_state=5).fit(pixels)
    km = KMeans(16, random_state=5).fit(da.from_array(pixels, chunks=(15_000, 3)))
    assert km.persisted_
    np.testing.assert_allclose(km.cluster_centers_, local.cluster_centers_, rtol=1e-9)
    assert km.inertia_ == pytest.approx(local.inertia_, rel=1e-9)
    assert km.n_iter_ == local.n_iter_
    # In-memory input is scattered to the workers (no data embedded in task graphs), weights too.
    counts = np.arange(len(pixels)) % 3 + 1
    on_cluster = KMeans(16, random_state=5).fit(pixels, sample_weight=counts)
    in_process_w = KMeans(16, random_state=5)
    with dask.config.set(scheduler="threads"):
        in_process_w.fit(pixels, sample_weight=counts)
    np.testing.assert_allclose(
        on_cluster.cluster_centers_, in_process_w.cluster_centers_, rtol=1e-9
    )
    # The work ran on the worker processes: they hold compiled kernels and ran tasks.
    ran = dask_client.run(
        lambda dask_worker: len(dask_worker.data) >= 0 and dask_worker.state.executed_count
    )
    assert sum(ran.values()) > 0
    assert len(ran) == 2


def test_fit_on_persisted_data_passes_through_held_blocks(dask_client, pixels, monkeypatch) -> None:
    X = da.from_array(pixels, chunks=(15_000, 3)).persist()
    wait(X)
    init = pixels[:8].astype(np.float64) + 0.5
    passes: list[str] = []
    real_map = ResidentBlocks.map

    def counting_map(self, func, *args):
        passes.append(func.__name__)
        return real_map(self, func, *args)

    def executed() -> int:
        counts = dask_client.run(lambda dask_worker: dask_worker.state.executed_count)
        return sum(counts.values())

    monkeypatch.setattr(ResidentBlocks, "map", counting_map)
    before = executed()
    held = KMeans(8, init=init, max_iter=4, tol=0).fit(X)
    tasks = executed() - before
    assert held.persisted_
    assert (held.n_iter_, held.converged_) == (4, False)
    # One validation pass, one per iteration, one for the final inertia: nothing else.
    assert passes == ["_stats_block"] + ["_lloyd_block"] * 4 + ["_cost_block"]
    # And no task graph for any of them: the only tasks started one holder per worker.
    assert 1 <= tasks <= len(dask_client.scheduler_info()["workers"])
    # The same numbers as when every pass is a task graph.
    monkeypatch.setattr("kmflow.estimator.hold_blocks", lambda *args: None)
    graph = KMeans(8, init=init, max_iter=4, tol=0).fit(X)
    np.testing.assert_array_equal(held.cluster_centers_, graph.cluster_centers_)
    assert held.inertia_ == graph.inertia_
    steps = [(i.inertia, i.center_shift, i.n_relocated) for i in held.history_]
    assert steps == [(i.inertia, i.center_shift, i.n_relocated) for i in graph.history_]


def test_non_finite_values_in_persisted_data_on_a_cluster(dask_client) -> None:
    X = np.random.default_rng(0).normal(size=(30_000, 3))
    X[23_456, 2] = np.nan
    with pytest.raises(
        InvalidInputError, match=r"NaN or infinity in 1 row\(s\) \(first at row 23456\)"
    ):
        KMeans(4).fit(da.from_array(X, chunks=5_000).persist())


@pytest.mark.slow
@pytest.mark.integration
def test_fit_streams_an_array_larger_than_cluster_memory() -> None:
    # 2 workers x 700 MiB, and a 1.5 GiB lazily generated array: it cannot be persisted, so
    # every pass regenerates it block by block on the workers. Pausing is off: an idle worker
    # process already holds ~420 MiB of libraries (more while numba compiles on a cold cache),
    # and a paused worker would stall the test instead of failing it.
    memory = {
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
    }
    with (
        dask.config.set(memory),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit="700MiB",
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        X = da.random.default_rng(0).random((24_000_000, 8), chunks=(250_000, 8))
        total_limit = sum(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
        assert X.nbytes > total_limit
        km = KMeans(4, init="random", max_iter=3, tol=0, random_state=0).fit(X)
        assert not km.persisted_
        assert km.n_iter_ == 3
        # Uniform data on [0, 1]^8: the centers stay inside the cube and the mean squared
        # distance falls below that to the cube's center (8/12 per row).
        assert np.all((km.cluster_centers_ > 0) & (km.cluster_centers_ < 1))
        assert 0 < km.inertia_ / X.shape[0] < 8 / 12
        assert km.history_[-1].inertia >= km.inertia_ - 1e-6 * km.inertia_
