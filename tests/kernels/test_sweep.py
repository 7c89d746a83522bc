"""The k sweep: scikit-learn's metrics, lloyd's centers, one pass per iteration, the cluster."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import kmeans_plusplus
from sklearn.datasets import make_blobs
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from kmflow.core.sweep import choose_k
from kmflow.errors import InvalidInputError, TooFewDistinctPointsError
from kmflow.kernels import sweep as sweep_mod
from kmflow.kernels._numba import accumulate, accumulate_multi
from kmflow.kernels.dense import nearest
from kmflow.kernels.lloyd import lloyd
from kmflow.kernels.sweep import SweepInfo, parse_ks, sweep

REL = 1e-6


def _blobs(n: int, d: int, k: int, seed: int, std: float = 1.0) -> np.ndarray:
    X, _ = make_blobs(n, n_features=d, centers=k, cluster_std=std, random_state=seed)
    return X


def _datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "blobs-4-in-5d": _blobs(1500, 5, 4, 0),
        "blobs-6-in-20d-float32-offset": (_blobs(1200, 20, 6, 1, std=2.0) + 100).astype(np.float32),
        "uint8-pixels": rng.integers(0, 256, size=(1000, 3)).astype(np.uint8),
    }


DATASETS = _datasets()


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_metrics_equal_sklearn(name: str) -> None:
    X = DATASETS[name]
    res = sweep(X, "2..7", seed=0, silhouette_sample_size=10_000)
    assert list(res.results) == [2, 3, 4, 5, 6, 7]
    assert res.sample_size == len(X)  # every row: the silhouette is exact
    for k, r in res.results.items():
        labels = nearest(X, r.centers)
        Xf = X.astype(np.float64)
        assert _rel(r.davies_bouldin, davies_bouldin_score(Xf, labels)) < REL, k
        assert _rel(r.calinski_harabasz, calinski_harabasz_score(Xf, labels)) < REL, k
        assert _rel(r.silhouette, silhouette_score(Xf, labels)) < REL, k
        inertia = float(((Xf - r.centers[labels]) ** 2).sum())
        assert _rel(r.inertia, inertia) < 1e-9, k
        np.testing.assert_array_equal(r.sizes, np.bincount(labels, minlength=k))
        assert r.seconds > 0
        assert r.n_iter >= 1


def test_weighted_metrics_equal_repeated_rows() -> None:
    X = _blobs(400, 4, 3, 5)
    w = np.random.default_rng(0).integers(0, 4, size=len(X))
    res = sweep(X, [2, 3, 4], sample_weight=w, seed=1, silhouette_sample_size=int(w.sum()))
    Xr = np.repeat(X, w, axis=0)
    for k, r in res.results.items():
        labels = nearest(Xr, r.centers)
        assert _rel(r.davies_bouldin, davies_bouldin_score(Xr, labels)) < REL, k
        assert _rel(r.calinski_harabasz, calinski_harabasz_score(Xr, labels)) < REL, k
        # sample size = total weight: every row drawn exactly w times
        assert _rel(r.silhouette, silhouette_score(Xr, labels)) < REL, k


def test_multi_kernel_equals_single_set_kernel() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 7)) + 50
    w = rng.random(3000)
    sets = [rng.normal(size=(k, 7)) + 50 for k in (1, 2, 5, 9)]
    sets.append(np.vstack([sets[2], sets[2][:2]]))  # exact ties: the lower index wins
    cat_t = np.ascontiguousarray(np.vstack(sets).T)
    starts = np.concatenate([[0], np.cumsum([len(c) for c in sets])]).astype(np.int64)
    K = cat_t.shape[1]
    for has_w in (False, True):
        sums, counts = np.zeros((K, 7)), np.zeros(K)
        sizes, inertias = np.zeros(K, np.int64), np.zeros(len(sets))
        wv = w if has_w else np.empty(0)
        accumulate_multi(X, wv, has_w, cat_t, starts, X.mean(0), sums, counts, sizes, inertias)
        for g, c in enumerate(sets):
            s1, c1 = np.zeros_like(c), np.zeros(len(c))
            i1 = accumulate(X, wv, has_w, np.ascontiguousarray(c.T), s1, c1)
            a, b = starts[g], starts[g + 1]
            np.testing.assert_array_equal(sums[a:b], s1)  # bit for bit
            np.testing.assert_array_equal(counts[a:b], c1)
            assert inertias[g] == i1


def test_each_k_equals_lloyd_from_the_same_centers() -> None:
    X = _blobs(2000, 6, 5, 2, std=2.5)
    ks = [2, 3, 5, 8]
    init = {k: kmeans_plusplus(X, k, random_state=k)[0] for k in ks}
    res = sweep(X, ks, init=init, seed=0, max_iter=100, tol=1e-4)
    for k in ks:
        single = lloyd(X, init[k], max_iter=100, tol=1e-4)
        r = res.results[k]
        np.testing.assert_allclose(r.centers, single.centers, rtol=0, atol=1e-9)
        assert r.n_iter == single.n_iter
        assert r.converged == single.converged
        assert _rel(r.inertia, single.inertia) < 1e-9
        assert [h.center_shift for h in r.history] == pytest.approx(
            [h.center_shift for h in single.history], rel=1e-9, abs=1e-12
        )


def test_one_pass_per_lloyd_iteration_for_every_k(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = sweep_mod.map_reduce

    def counting(blocks: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(func.__name__)
        return real(blocks, func, *args, **kwargs)

    monkeypatch.setattr(sweep_mod, "map_reduce", counting)
    infos: list[SweepInfo] = []
    X = _blobs(3000, 4, 4, 7)
    res = sweep(X, "2..12", seed=3, callback=infos.append)
    n_iters = max(r.n_iter for r in res.results.values())
    lloyd_infos = [i for i in infos if i.stage == "lloyd"]
    # one map_reduce (one kernel call per block) per iteration, whatever the number of k
    assert calls.count("_multi_block") == n_iters == len(lloyd_infos)
    assert calls.count("_far_many_block") == sum(i.stage == "relocate" for i in infos)
    assert calls.count("_moments_block") == 1
    assert calls.count("_spread_block") == 1
    # the first iteration serves all 11 k; a k leaves once it converged
    assert lloyd_infos[0].active == tuple(range(2, 13))
    for k, r in res.results.items():
        served = [i.iteration for i in lloyd_infos if k in i.active]
        assert served == list(range(1, r.n_iter + 1)), k
    assert infos[-1].passes == res.n_passes
    assert [i.stage for i in infos][:2] == ["validate", "init"]
    assert sum(r.seconds for r in res.results.values()) <= res.seconds * 1.01


def test_deterministic_and_independent_of_chunking() -> None:
    X = _blobs(2500, 3, 5, 11, std=1.5)
    a = sweep(da.from_array(X, chunks=(2500, 3)), "2..6", seed=42, silhouette_sample_size=500)
    b = sweep(da.from_array(X, chunks=(310, 3)), "2..6", seed=42, silhouette_sample_size=500)
    c = sweep(da.from_array(X, chunks=(310, 3)), "2..6", seed=42, silhouette_sample_size=500)
    for k in a.results:
        ra, rb, rc = a.results[k], b.results[k], c.results[k]
        np.testing.assert_array_equal(rb.centers, rc.centers)  # same seed, same result
        assert rb.to_dict() | {"seconds": 0} == rc.to_dict() | {"seconds": 0}
        np.testing.assert_allclose(ra.centers, rb.centers, rtol=0, atol=1e-9)
        assert ra.n_iter == rb.n_iter
        for m in ("inertia", "davies_bouldin", "calinski_harabasz", "silhouette"):
            assert getattr(ra, m) == pytest.approx(getattr(rb, m), rel=1e-9), (k, m)
    d = sweep(X, "2..6", seed=43, silhouette_sample_size=500)
    assert (
        any(not np.allclose(d.results[k].centers, a.results[k].centers) for k in a.results)
        or d.results[2].silhouette != a.results[2].silhouette
    )


def test_planted_k_is_the_best_k() -> None:
    X = _blobs(4000, 8, 4, 21, std=1.0)
    res = sweep(X, "2..10", seed=0, silhouette_sample_size=2000)
    rows = [r.to_dict() for r in res.results.values()]
    assert choose_k(rows, "db").k == 4
    assert choose_k(rows, "silhouette").k == 4
    db = {k: r.davies_bouldin for k, r in res.results.items()}
    assert min(db, key=db.__getitem__) == 4
    d = res.to_dict()
    assert [r["k"] for r in d["results"]] == list(range(2, 11))
    assert set(d["results"][0]) == {
        "k",
        "inertia",
        "davies_bouldin",
        "calinski_harabasz",
        "silhouette",
        "seconds",
        "n_iter",
        "converged",
    }


def test_k1_is_fitted_with_undefined_scores() -> None:
    X = _blobs(300, 2, 2, 0)
    res = sweep(X, [1, 2], seed=0)
    r1 = res.results[1]
    np.testing.assert_allclose(r1.centers[0], X.mean(axis=0))
    assert r1.inertia == pytest.approx(float(((X - X.mean(axis=0)) ** 2).sum()))
    assert np.isnan(r1.davies_bouldin)
    assert np.isnan(r1.calinski_harabasz)
    assert np.isnan(r1.silhouette)
    assert res.to_dict()["results"][0]["silhouette"] is None
    assert np.isnan(sweep(X, [2], seed=0, silhouette_sample_size=0).results[2].silhouette)


@pytest.mark.parametrize("ks", [[], [0], [2, -1], [2.5], [True], "a..b", "5..2", ["3"]], ids=repr)
def test_bad_ks(ks: Any) -> None:
    with pytest.raises(InvalidInputError, match="k"):
        sweep(np.random.default_rng(0).normal(size=(50, 2)), ks, seed=0)


def test_parse_ks() -> None:
    assert parse_ks("2..12") == list(range(2, 13))
    assert parse_ks("2..4, 8,3") == [2, 3, 4, 8]
    assert parse_ks(5) == [5]
    assert parse_ks([4, 2, 4]) == [2, 4]


def test_k_larger_than_distinct_rows() -> None:
    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(5, 3)), 40, axis=0)
    with pytest.raises(TooFewDistinctPointsError, match=r"k=8 but X has only 5 distinct rows"):
        sweep(X, "2..8", seed=0)
    res = sweep(X, "2..5", seed=0)
    assert res.results[5].inertia == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InvalidInputError, match=r"k=6\.\.7 but X has only 5 rows"):
        sweep(X[:5], [2, 6, 7], seed=0)


def test_bad_parameters() -> None:
    X = _blobs(100, 2, 2, 0)
    with pytest.raises(InvalidInputError, match="silhouette_sample_size"):
        sweep(X, [2], seed=0, silhouette_sample_size=1)
    with pytest.raises(InvalidInputError, match="max_iter"):
        sweep(X, [2], seed=0, max_iter=0)
    with pytest.raises(InvalidInputError, match="no centers for k=3"):
        sweep(X, [2, 3], init={2: X[:2]}, seed=0)
    with pytest.raises(InvalidInputError, match="NaN"):
        sweep(np.vstack([X, [[np.nan, 0.0]]]), [2], seed=0)


def test_distributed_equals_local(dask_client: Any) -> None:
    from kmflow.cluster.sweep import sweep_fit

    X = _blobs(6000, 5, 4, 9, std=1.5)
    Xd = da.from_array(X, chunks=(1000, 5))
    w = np.random.default_rng(1).random(len(X))

    with dask.config.set(scheduler="threads"):
        local = sweep(Xd, "2..6", seed=5, silhouette_sample_size=1500)
        local_w = sweep(X, "2..6", sample_weight=w, seed=5, silhouette_sample_size=1500)
    on_cluster = sweep_fit(Xd, "2..6", seed=5, silhouette_sample_size=1500)  # placed blocks
    graphs = sweep(Xd, "2..6", seed=5, silhouette_sample_size=1500)  # task graphs on the client
    in_memory = sweep_fit(X, "2..6", sample_weight=w, seed=5, silhouette_sample_size=1500)
    for other, ref in ((on_cluster, local), (graphs, local), (in_memory, local_w)):
        for k, r in ref.results.items():
            o = other.results[k]
            np.testing.assert_array_equal(o.centers, r.centers)
            assert o.to_dict() | {"seconds": 0} == r.to_dict() | {"seconds": 0}
