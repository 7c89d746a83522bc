"""Clustering metrics: hand-computed cases, scikit-learn as the oracle, weights, chunking."""

from __future__ import annotations

import itertools
import math
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import get_task_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.metrics.cluster import contingency_matrix, pair_confusion_matrix

from kmflow.errors import InvalidInputError
from kmflow.kernels._blocks import Blocks
from kmflow.kernels.metrics import (
    ExternalMetrics,
    InternalMetrics,
    _sample,
    _weighted_sample,
    contingency_table,
    external_metrics,
    feature_histograms,
    hungarian_matching,
    internal_metrics,
    silhouette_sample,
)
from kmflow.kernels.validation import check_array, check_sample_weight


def _nearest(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Nearest-center labels computed independently of kmflow (ties: lowest index)."""
    d2 = ((X[:, None, :].astype(np.float64) - centers[None, :, :]) ** 2).sum(axis=2)
    return np.argmin(d2, axis=1)


def _chunkings(n: int) -> list[tuple[int, ...]]:
    """Row chunkings to compare: one chunk, many chunks, and one with empty chunks."""
    return [(n,), (37,) * (n // 37) + ((n % 37,) if n % 37 else ()), (0, 5, 0, n - 5)]


def _rows(X: np.ndarray, rows: tuple[int, ...]) -> da.Array:
    return da.from_array(X, chunks=(rows, (X.shape[1],)))


def _assert_dicts_close(a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=0, err_msg=key)


@pytest.fixture(scope="module")
def blob_centers(blobs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    X = blobs[0]
    return X[np.random.default_rng(1).choice(len(X), 8, replace=False)]


# --------------------------------------------------------------------------- internal metrics
# Five 1-D points in two clusters, A = {0, 2} (mean 1) and B = {10, 12, 14} (mean 12), and
# centers 0, 13 and 100 (the last one empty). Nearest centers: 0, 2 -> 0; 10, 12, 14 -> 13.
# Inertia to the given centers: 0 + 4 + 9 + 1 + 1 = 15.
# Calinski-Harabasz uses the means: grand mean 38 / 5 = 7.6,
#   between = 2 * (1 - 7.6)^2 + 3 * (12 - 7.6)^2 = 87.12 + 58.08 = 145.2,
#   within = (1 + 1) + (4 + 0 + 4) = 10, k = 2 non-empty clusters, n = 5:
#   CH = 145.2 * (5 - 2) / (10 * (2 - 1)) = 43.56.
# Davies-Bouldin: mean distance to the mean, A: (1 + 1) / 2 = 1, B: (2 + 0 + 2) / 3 = 4/3;
#   separation |12 - 1| = 11; both clusters' worst ratio is (1 + 4/3) / 11 = 7/33: DB = 7/33.
TOY_X = np.array([[0.0], [2.0], [10.0], [12.0], [14.0]])
TOY_CENTERS = np.array([[0.0], [13.0], [100.0]])


def test_internal_toy_hand_computed() -> None:
    m = internal_metrics(TOY_X, TOY_CENTERS)
    assert m.inertia == pytest.approx(15.0, rel=1e-15)
    assert m.calinski_harabasz == pytest.approx(43.56, rel=1e-13)
    assert m.davies_bouldin == pytest.approx(7 / 33, rel=1e-13)
    assert m.n_samples == 5
    assert m.total_weight == 5.0
    assert m.n_clusters == 3
    np.testing.assert_array_equal(m.sizes, [2, 3, 0])
    assert m.sizes.dtype == np.int64
    np.testing.assert_array_equal(m.weights, [2.0, 3.0, 0.0])
    labels = np.array([0, 0, 1, 1, 1])
    assert m.calinski_harabasz == pytest.approx(skm.calinski_harabasz_score(TOY_X, labels))
    assert m.davies_bouldin == pytest.approx(skm.davies_bouldin_score(TOY_X, labels))
    # The same labels given explicitly (unsigned): same numbers.
    g = internal_metrics(TOY_X, TOY_CENTERS, labels=labels.astype(np.uint64))
    _assert_dicts_close(g.to_dict(), m.to_dict())


def test_internal_to_dict_is_json_ready() -> None:
    d = internal_metrics(TOY_X, TOY_CENTERS).to_dict()
    assert d["sizes"] == [2, 3, 0]
    assert d["weights"] == [2.0, 3.0, 0.0]
    assert d["n_clusters"] == 3
    assert all(type(v) in (int, float, list) for v in d.values())
    assert all(type(v) is int for v in d["sizes"])
    assert isinstance(internal_metrics(TOY_X, TOY_CENTERS), InternalMetrics)


def test_internal_matches_sklearn_on_blobs(blobs, blob_centers) -> None:
    X = blobs[0]
    m = internal_metrics(da.from_array(X, chunks=(700, 4)), blob_centers)
    labels = _nearest(X, blob_centers)
    assert m.calinski_harabasz == pytest.approx(skm.calinski_harabasz_score(X, labels), rel=1e-9)
    assert m.davies_bouldin == pytest.approx(skm.davies_bouldin_score(X, labels), rel=1e-9)
    expected_inertia = ((X - blob_centers[labels]) ** 2).sum()
    assert m.inertia == pytest.approx(expected_inertia, rel=1e-12)
    np.testing.assert_array_equal(m.sizes, np.bincount(labels, minlength=8))
    np.testing.assert_array_equal(m.weights, np.bincount(labels, minlength=8))


def test_internal_matches_sklearn_on_uint8_pixels(pixels) -> None:
    centers = pixels[np.random.default_rng(2).choice(len(pixels), 6, replace=False)].astype(
        np.float64
    )
    m = internal_metrics(pixels, centers)
    labels = _nearest(pixels, centers)
    assert m.calinski_harabasz == pytest.approx(
        skm.calinski_harabasz_score(pixels, labels), rel=1e-9
    )
    assert m.davies_bouldin == pytest.approx(skm.davies_bouldin_score(pixels, labels), rel=1e-9)
    assert m.inertia == pytest.approx(((pixels - centers[labels]) ** 2).sum(), rel=1e-12)


def test_internal_with_given_labels_uses_label_centers(separated) -> None:
    X, y = separated
    centers = np.zeros((5, 3))
    # Labels as a dask array chunked differently from X: they are rechunked to X's rows.
    m = internal_metrics(
        da.from_array(X, chunks=(300, 3)), centers, labels=da.from_array(y, chunks=450)
    )
    assert m.inertia == pytest.approx((X**2).sum(), rel=1e-12)  # every center is the origin
    assert m.calinski_harabasz == pytest.approx(skm.calinski_harabasz_score(X, y), rel=1e-9)
    assert m.davies_bouldin == pytest.approx(skm.davies_bouldin_score(X, y), rel=1e-9)
    np.testing.assert_array_equal(m.sizes, np.bincount(y))


def test_internal_empty_center_does_not_count(blobs, blob_centers) -> None:
    X = blobs[0]
    base = internal_metrics(X, blob_centers)
    far = np.vstack([blob_centers, np.full((1, 4), 1e6)])
    m = internal_metrics(X, far)
    assert m.n_clusters == 9
    assert m.sizes[-1] == 0
    assert m.weights[-1] == 0.0
    assert m.calinski_harabasz == pytest.approx(base.calinski_harabasz, rel=1e-12)
    assert m.davies_bouldin == pytest.approx(base.davies_bouldin, rel=1e-12)
    assert m.inertia == pytest.approx(base.inertia, rel=1e-12)


def test_internal_integer_weights_equal_repeated_rows(blobs, blob_centers) -> None:
    X = blobs[0][:600]
    w = np.random.default_rng(3).integers(0, 4, size=len(X))  # zeros included
    rep = np.repeat(X, w, axis=0)
    labels = _nearest(X, blob_centers)
    rep_labels = np.repeat(labels, w)
    m = internal_metrics(
        da.from_array(X, chunks=(111, 4)), blob_centers, sample_weight=w.astype(np.float64)
    )
    assert m.total_weight == float(w.sum()) == float(len(rep))
    assert m.calinski_harabasz == pytest.approx(
        skm.calinski_harabasz_score(rep, rep_labels), rel=1e-9
    )
    assert m.davies_bouldin == pytest.approx(skm.davies_bouldin_score(rep, rep_labels), rel=1e-9)
    r = internal_metrics(rep, blob_centers)
    assert m.inertia == pytest.approx(r.inertia, rel=1e-12)
    np.testing.assert_allclose(m.weights, r.sizes, rtol=0, atol=0)
    np.testing.assert_array_equal(m.sizes, np.bincount(labels, minlength=8))  # rows, not weight


def test_internal_chunking_invariance(blobs, blob_centers) -> None:
    X, y = blobs
    w = np.random.default_rng(4).uniform(0.5, 2.0, size=len(X))
    ref = internal_metrics(X, blob_centers, sample_weight=w).to_dict()
    ref_lab = internal_metrics(X, blob_centers, labels=y).to_dict()
    for rows in _chunkings(len(X)):
        got = internal_metrics(_rows(X, rows), blob_centers, sample_weight=w).to_dict()
        _assert_dicts_close(got, ref)
        got_lab = internal_metrics(_rows(X, rows), blob_centers, labels=y).to_dict()
        _assert_dicts_close(got_lab, ref_lab)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"X": [[0.0], [np.nan], [2.0]]}, "NaN or infinity in 1 row"),
        ({"labels": np.zeros(4, dtype=int)}, "labels has length 4 but X has length 5"),
        ({"labels": np.zeros(5)}, "labels must be integers; got dtype float64"),
        ({"labels": np.array([0, 0, 1, 5, 1])}, r"labels must lie in \[0, 3\).*first: 5 at row 3"),
        ({"labels": np.array([1, 1, 1, 1, 1])}, "at least 2 non-empty clusters; got 1 "),
        ({"centers": TOY_X}, "5 non-empty clusters for 5 rows .* every row is its own cluster"),
        ({"centers": np.zeros((2, 3))}, r"centers must have shape \(n_clusters, 1\).*\(2, 3\)"),
        ({"centers": [[0.0], [np.inf]]}, "centers contain 1 NaN or infinite values"),
        ({"sample_weight": [1.0, 1.0, -1.0, 1.0, 1.0]}, r"non-negative; 1 .*-1\.0 at row 2"),
        ({"sample_weight": [np.nan, 1.0, 1.0, 1.0, 1.0]}, r"first: nan at row 0"),
        ({"sample_weight": np.zeros(5)}, "sample_weight sums to zero"),
        ({"sample_weight": [1.0, 1.0, 0.0, 0.0, 0.0]}, "at least 2 non-empty clusters; got 1 "),
    ],
)
def test_internal_errors(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"X": TOY_X, "centers": TOY_CENTERS}
    args.update(kwargs)
    X, centers = args.pop("X"), args.pop("centers")
    with pytest.raises(InvalidInputError, match=match):
        internal_metrics(X, centers, **args)


# --------------------------------------------------------------------------- silhouette
# Three 1-D points, A = {0, 2}, B = {10}: s(0) = (10 - 2) / 10 = 0.8, s(2) = (8 - 2) / 8 = 0.75,
# s(10) = 0 (alone in its cluster): mean 1.55 / 3 = 31 / 60.
def test_silhouette_toy_hand_computed() -> None:
    X = np.array([[0.0], [2.0], [10.0]])
    labels = np.array([0, 0, 1])
    s = silhouette_sample(X, labels)
    assert s == pytest.approx(31 / 60, rel=1e-15)
    assert s == pytest.approx(skm.silhouette_score(X, labels), rel=1e-15)


def test_silhouette_full_sample_matches_sklearn(blobs, separated) -> None:
    X, y = blobs
    assert silhouette_sample(X, y, sample_size=len(X)) == pytest.approx(
        skm.silhouette_score(X, y), rel=1e-9
    )
    Xs, ys = separated
    s = silhouette_sample(da.from_array(Xs, chunks=(333, 3)), da.from_array(ys, chunks=500))
    assert s == pytest.approx(skm.silhouette_score(Xs, ys), rel=1e-9)


def test_silhouette_full_sample_with_duplicates_and_singletons(pixels) -> None:
    X = pixels[:2500]  # uint8 pixels: many duplicate rows (distance exactly 0)
    centers = X[:7].astype(np.float64)
    labels = _nearest(X, centers)
    labels[[10, 20]] = [40, 41]  # two singleton clusters, s = 0
    assert len(np.unique(X, axis=0)) < len(X)
    assert silhouette_sample(X, labels) == pytest.approx(skm.silhouette_score(X, labels), rel=1e-9)


def test_silhouette_sample_is_seeded_and_chunk_invariant(blobs) -> None:
    X, y = blobs
    ref = silhouette_sample(X, y, sample_size=500, random_state=11)
    assert silhouette_sample(X, y, sample_size=500, random_state=11) == ref
    other = silhouette_sample(X, y, sample_size=500, random_state=12)
    assert other != ref
    full = skm.silhouette_score(X, y)
    assert abs(ref - full) < 0.05  # a 500-row estimate of the full value (sd about 0.01)
    assert abs(other - full) < 0.05
    for rows in _chunkings(len(X)):
        got = silhouette_sample(_rows(X, rows), y, sample_size=500, random_state=11)
        assert got == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_sample_rows_depend_only_on_seed(blobs) -> None:
    X, y = blobs
    n = len(X)
    drawn = []
    for rows in _chunkings(n):
        Xd = _rows(X, rows)
        lab = list(da.from_array(y, chunks=(rows,)).to_delayed().ravel())
        idx, sample_rows, sample_labels = _sample(Blocks(Xd, None), lab, key=5, m=200)
        np.testing.assert_array_equal(sample_rows, X[idx])
        np.testing.assert_array_equal(sample_labels, y[idx])
        drawn.append(idx)
    for idx in drawn[1:]:
        np.testing.assert_array_equal(idx, drawn[0])
    assert len(np.unique(drawn[0])) == 200


def test_weighted_draws_follow_the_weights(blobs) -> None:
    X, y = blobs
    n = len(X)
    w = np.where(np.arange(n) < n // 2, 1.0, 99.0)
    w[n // 2 : n // 2 + 100] = 0.0  # heavy half, but 100 rows that must never be drawn
    drawn = []
    for rows in _chunkings(n):
        Xd = _rows(X, rows)
        lab = list(da.from_array(y, chunks=(rows,)).to_delayed().ravel())
        blocks = Blocks(Xd, check_sample_weight(w, Xd))
        drawn.append(_weighted_sample(blocks, lab, key=5, m=500))
    for sample_rows, sample_labels in drawn[1:]:
        np.testing.assert_array_equal(sample_rows, drawn[0][0])
        np.testing.assert_array_equal(sample_labels, drawn[0][1])
    sample_rows, _ = drawn[0]
    assert len(sample_rows) == 500
    # Which rows were drawn: match each sampled row back to its index in X.
    index = {tuple(r): i for i, r in enumerate(X)}
    idx = np.array([index[tuple(r)] for r in sample_rows])
    assert np.all(w[idx] > 0)
    # Light rows carry 2000 of the ~198,000 total weight: about 5 of 500 draws.
    assert np.count_nonzero(w[idx] == 1.0) < 15


def test_silhouette_weights_act_as_repeated_rows(blobs) -> None:
    X, y = blobs
    X, y = X[:600], y[:600]
    w = np.random.default_rng(0).integers(0, 4, size=len(X))  # zeros included
    keep = w > 0
    # Integer weights and a sample as large as their sum: every row drawn exactly w times,
    # which is scikit-learn's silhouette of the repeated rows.
    for seed in (0, 1):
        s = silhouette_sample(X, y, sample_weight=w, sample_size=int(w.sum()), random_state=seed)
        want = skm.silhouette_score(
            np.repeat(X[keep], w[keep], axis=0), np.repeat(y[keep], w[keep])
        )
        assert s == pytest.approx(want, rel=1e-9)
    for rows in _chunkings(len(X)):
        got = silhouette_sample(_rows(X, rows), y, sample_weight=w, sample_size=500, random_state=4)
        ref = silhouette_sample(X, y, sample_weight=w, sample_size=500, random_state=4)
        assert got == pytest.approx(ref, rel=1e-12)


def test_histogram_silhouette_estimates_the_pixel_silhouette(pixels) -> None:
    # Unique colors weighted by their counts stand for the pixels: the weighted sample's
    # silhouette estimates the pixels' silhouette (not the distinct colors' one).
    centers = np.array([[40.0, 40, 40], [120, 120, 110], [200, 190, 170], [90, 110, 150]])
    labels = ((pixels[:, None, :].astype(float) - centers) ** 2).sum(-1).argmin(1)
    colors, inverse, counts = np.unique(pixels, axis=0, return_inverse=True, return_counts=True)
    color_labels = np.zeros(len(colors), dtype=np.int64)
    color_labels[inverse.ravel()] = labels
    ours = np.mean(
        [
            silhouette_sample(
                colors, color_labels, sample_weight=counts, sample_size=3000, random_state=seed
            )
            for seed in range(4)
        ]
    )
    theirs = np.mean(
        [
            skm.silhouette_score(pixels, labels, sample_size=3000, random_state=seed)
            for seed in range(4)
        ]
    )
    distinct = skm.silhouette_score(colors, color_labels, sample_size=3000, random_state=0)
    assert abs(ours - theirs) < 0.02  # 4 x 3000-pixel estimates, sd about 0.005 each
    assert abs(distinct - theirs) > 2 * abs(ours - theirs)  # the distinct colors differ


@pytest.mark.parametrize(
    ("X", "labels", "kwargs", "match"),
    [
        ([[0.0], [1.0], [2.0]], [4, 4, 4], {}, "sample of 3 rows has 1"),
        ([[0.0], [1.0], [2.0]], [0, 1, 2], {}, "sample of 3 rows has 3"),
        ([[0.0], [1.0], [2.0]], [0, 0, 1], {"sample_size": 1}, "at least 2; got 1"),
        ([[0.0], [1.0], [2.0]], [0, 0, 1], {"sample_size": 2.5}, "must be an integer; got 2.5"),
        ([[0.0], [1.0], [2.0]], [0, 1], {}, "labels has length 2 but X has length 3"),
        ([[0.0], [np.inf], [2.0]], [0, 0, 1], {}, "NaN or infinity"),
        ([[0.0], [1.0], [2.0]], [0, 0, 1], {"sample_weight": [1, -2, 1]}, "non-negative"),
    ],
)
def test_silhouette_errors(X: Any, labels: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        silhouette_sample(np.asarray(X), np.asarray(labels), **kwargs)


# --------------------------------------------------------------------------- external metrics
# Classes [0 0 0 1 1 1] against clusters [0 0 1 1 2 2]: table rows (classes) [[2 1 0], [0 1 2]].
# Pairs together in both: C(2,2) + C(2,2) = 2; in one cluster: 3 * C(2,2) = 3; in one class:
# 2 * C(3,2) = 6. P = 2/3, R = 2/6 = 1/3: F1 = 2 (2/9) / 1 = 4/9, FMI = sqrt(2/9) = sqrt(2)/3.
# ARI = (2 - 6 * 3 / C(6,2)) / ((6 + 3) / 2 - 6 * 3 / C(6,2)) = 0.8 / 3.3 = 8/33.
# Purity: (2 + 1 + 2) / 6 = 5/6. Entropy: clusters 0 and 2 are pure, cluster 1 (one of each
# class, weight 2/6) has entropy log 2: (2/6) log 2 / log 2 = 1/3. Accuracy: clusters 0 and 2
# matched to classes 0 and 1 (cluster 1 left over): (2 + 2) / 6 = 2/3.
TOY_TRUE = np.array([0, 0, 0, 1, 1, 1])
TOY_PRED = np.array([0, 0, 1, 1, 2, 2])


def test_external_toy_hand_computed() -> None:
    e = external_metrics(TOY_TRUE, TOY_PRED)
    assert e.ari == pytest.approx(8 / 33, rel=1e-14)
    assert e.fmi == pytest.approx(math.sqrt(2) / 3, rel=1e-14)
    assert e.f1 == pytest.approx(4 / 9, rel=1e-14)
    assert e.purity == pytest.approx(5 / 6, rel=1e-14)
    assert e.entropy == pytest.approx(1 / 3, rel=1e-14)
    assert e.nmi == pytest.approx(skm.normalized_mutual_info_score(TOY_TRUE, TOY_PRED), rel=1e-14)
    assert (e.n_samples, e.n_classes, e.n_clusters) == (6, 2, 3)
    assert e.ari == pytest.approx(skm.adjusted_rand_score(TOY_TRUE, TOY_PRED), rel=1e-14)
    assert e.ami == pytest.approx(skm.adjusted_mutual_info_score(TOY_TRUE, TOY_PRED), rel=1e-12)
    assert e.accuracy == pytest.approx(2 / 3, rel=1e-15)
    d = e.to_dict()
    assert list(d) == [
        "ari",
        "ami",
        "nmi",
        "fmi",
        "purity",
        "entropy",
        "f1",
        "accuracy",
        "n_samples",
        "n_classes",
        "n_clusters",
    ]
    assert d["n_clusters"] == 3
    assert type(d["n_samples"]) is int
    assert type(d["ari"]) is float
    assert isinstance(e, ExternalMetrics)


def _purity_entropy(table: np.ndarray) -> tuple[float, float]:
    """Reference purity and Zhao-Karypis entropy, written straight from the definitions."""
    n = table.sum()
    purity = table.max(axis=0).sum() / n
    total = 0.0
    for col in table.T:
        p = col[col > 0] / col.sum()
        total += col.sum() / n * -(p * np.log(p)).sum()
    return purity, total / np.log(table.shape[0])


def test_external_matches_sklearn(blobs, blob_centers) -> None:
    X, y = blobs
    truth = y - 4  # negative classes too
    pred = _nearest(X, blob_centers) * 3 + 1  # sparse cluster ids
    e = external_metrics(da.from_array(truth, chunks=900), da.from_array(pred, chunks=1300))
    assert e.ari == pytest.approx(skm.adjusted_rand_score(truth, pred), rel=1e-12)
    assert e.nmi == pytest.approx(skm.normalized_mutual_info_score(truth, pred), rel=1e-12)
    assert e.ami == pytest.approx(skm.adjusted_mutual_info_score(truth, pred), abs=1e-10)
    assert e.fmi == pytest.approx(skm.fowlkes_mallows_score(truth, pred), rel=1e-12)
    (_, fp), (fn, tp) = pair_confusion_matrix(truth, pred)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert e.f1 == pytest.approx(2 * precision * recall / (precision + recall), rel=1e-12)
    assert e.fmi == pytest.approx(math.sqrt(precision * recall), rel=1e-12)
    purity, entropy = _purity_entropy(contingency_matrix(truth, pred))
    assert e.purity == pytest.approx(purity, rel=1e-12)
    assert e.entropy == pytest.approx(entropy, rel=1e-12)
    assert 0.0 < e.entropy < 1.0
    assert (e.n_samples, e.n_classes, e.n_clusters) == (len(X), 8, len(np.unique(pred)))


def test_contingency_table_matches_sklearn_for_any_chunking(blobs, blob_centers) -> None:
    X, y = blobs
    truth = y - 4
    pred = _nearest(X, blob_centers) * 3 + 1
    expected = contingency_matrix(truth, pred)
    for rows in _chunkings(len(y)):
        classes, clusters, table = contingency_table(
            da.from_array(truth, chunks=(rows,)), da.from_array(pred, chunks=250)
        )
        np.testing.assert_array_equal(classes, np.unique(truth))
        np.testing.assert_array_equal(clusters, np.unique(pred))
        np.testing.assert_array_equal(table, expected)
        assert table.dtype == np.int64
        e = external_metrics(
            da.from_array(truth, chunks=(rows,)), da.from_array(pred, chunks=(rows,))
        )
        _assert_dicts_close(e.to_dict(), external_metrics(truth, pred).to_dict())
    # Unknown chunk sizes (a boolean-masked dask array) are measured first.
    lt = da.from_array(truth, chunks=700)
    masked = lt[lt > -100]
    assert np.isnan(masked.chunks[0][0])
    np.testing.assert_array_equal(contingency_table(masked, pred)[2], expected)


@pytest.mark.parametrize(
    ("truth", "pred", "purity", "entropy", "f1", "ami", "accuracy"),
    [
        ([0, 0, 0, 0], [1, 1, 1, 1], 1.0, 0.0, 1.0, 1.0, 1.0),  # identical single clusters
        ([0, 1, 2, 3], [5, 6, 7, 8], 1.0, 0.0, 0.0, 1.0, 1.0),  # all singletons on both sides
        ([0, 0, 0, 0], [0, 1, 2, 3], 1.0, 0.0, 0.0, 0.0, 0.25),  # one class, all own clusters
        ([0, 1, 2, 3], [0, 0, 0, 0], 0.25, 1.0, 0.0, 0.0, 0.25),  # one cluster holding 4
        ([3, 3, 7, 7, 9], [1, 1, 0, 0, 2], 1.0, 0.0, 1.0, 1.0, 1.0),  # identical up to renaming
        ([0, 0, 1, 1], [0, 1, 0, 1], 0.5, 1.0, 0.0, -0.5, 0.5),  # independent: AMI below 0
    ],
)
def test_external_degenerate_cases_follow_sklearn(
    truth: list[int],
    pred: list[int],
    purity: float,
    entropy: float,
    f1: float,
    ami: float,
    accuracy: float,
) -> None:
    e = external_metrics(np.array(truth), np.array(pred))
    assert e.ami == pytest.approx(skm.adjusted_mutual_info_score(truth, pred), abs=1e-12)
    assert e.ami == pytest.approx(ami, abs=1e-12)
    assert e.accuracy == accuracy
    assert e.ari == pytest.approx(skm.adjusted_rand_score(truth, pred), abs=1e-15)
    assert e.nmi == pytest.approx(skm.normalized_mutual_info_score(truth, pred), abs=1e-15)
    assert e.fmi == pytest.approx(skm.fowlkes_mallows_score(truth, pred), abs=1e-15)
    assert e.purity == pytest.approx(purity, abs=1e-15)
    assert e.entropy == pytest.approx(entropy, abs=1e-15)
    assert e.f1 == pytest.approx(f1, abs=1e-15)


def _labelings(seed: int, n: int, n_classes: int, n_clusters: int, agree: float) -> Any:
    """Random labelings: ``pred`` copies the class (shifted) with probability ``agree``."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n)
    pred = rng.integers(0, n_clusters, n)
    pred = np.where(rng.random(n) < agree, truth % n_clusters + 3, pred)
    return truth, pred


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3000),
    n_classes=st.integers(1, 50),
    n_clusters=st.integers(1, 50),
    agree=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
)
def test_ami_equals_sklearn_on_random_labelings(
    seed: int, n: int, n_classes: int, n_clusters: int, agree: float
) -> None:
    truth, pred = _labelings(seed, n, n_classes, n_clusters, agree)
    e = external_metrics(truth, pred)
    assert e.ami == pytest.approx(skm.adjusted_mutual_info_score(truth, pred), abs=1e-10)


@pytest.mark.parametrize(
    ("n", "n_classes", "n_clusters", "agree"),
    [
        (200_000, 3, 4, 0.0),  # big classes: the hypergeometric tails are left out
        (200_000, 50, 50, 0.0),
        (200_000, 10, 12, 0.8),
        (50_000, 50, 2, 0.3),
        (7, 50, 50, 0.0),  # more labels than rows: about every row its own class and cluster
    ],
)
def test_ami_equals_sklearn_on_large_and_sparse_tables(
    n: int, n_classes: int, n_clusters: int, agree: float
) -> None:
    truth, pred = _labelings(n, n, n_classes, n_clusters, agree)
    expected = skm.adjusted_mutual_info_score(truth, pred)
    assert external_metrics(truth, pred).ami == pytest.approx(expected, abs=1e-10)


def _brute_force_matched(table: np.ndarray) -> int:
    """Largest total of a one-to-one matching of columns to rows, by trying every one."""
    r, c = table.shape
    if r <= c:
        return max(
            sum(table[i, j] for i, j in enumerate(cols))
            for cols in itertools.permutations(range(c), r)
        )
    return max(
        sum(table[i, j] for j, i in enumerate(rows)) for rows in itertools.permutations(range(r), c)
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_classes=st.integers(1, 6),
    n_clusters=st.integers(1, 6),
    high=st.sampled_from([1, 3, 30]),
)
def test_accuracy_is_the_best_one_to_one_matching(
    seed: int, n_classes: int, n_clusters: int, high: int
) -> None:
    rng = np.random.default_rng(seed)
    table = rng.integers(1, high + 1, size=(n_classes, n_clusters))  # no empty class/cluster
    table[rng.random(table.shape) < 0.3] = 0
    table[:, table.sum(axis=0) == 0] = 1
    table[table.sum(axis=1) == 0] = 1
    best = _brute_force_matched(table)
    matching = hungarian_matching(table)
    assert len(matching) == min(n_classes, n_clusters)
    assert len(set(matching.values())) == len(matching)  # one-to-one
    assert list(matching) == sorted(matching)
    assert sum(table[i, j] for j, i in matching.items()) == best
    # The same table as labelings: the accuracy is the matched rows over all rows.
    rows, cols = np.nonzero(table)
    counts = table[rows, cols]
    truth, pred = np.repeat(rows * 7 - 5, counts), np.repeat(cols * 2 + 1, counts)
    e = external_metrics(truth, pred)
    assert e.accuracy == best / table.sum()
    np.testing.assert_array_equal(contingency_table(truth, pred)[2], table)


@pytest.mark.parametrize(
    ("truth", "pred", "accuracy", "matching"),
    [
        # More clusters than classes: each class split in two, one half of each matched.
        ([0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2, 3, 3], 0.5, None),
        ([0, 0, 0, 1, 1, 1], [0, 0, 1, 2, 2, 2], 5 / 6, {0: 0, 2: 1}),
        # Fewer clusters than classes: two classes per cluster, one of each matched.
        ([0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 0, 0, 1, 1, 1, 1], 0.5, None),
        ([0, 0, 0, 1, 2, 2], [0, 0, 0, 0, 1, 1], 5 / 6, {0: 0, 1: 2}),
        # The Hungarian matching is not the greedy one: cluster 0's majority is class 0, but
        # matching cluster 0 to class 1 and cluster 1 to class 0 keeps more rows (5 + 4).
        ([0] * 6 + [1] * 5 + [0] * 4, [0] * 6 + [0] * 5 + [1] * 4, 9 / 15, {0: 1, 1: 0}),
    ],
)
def test_accuracy_on_rectangular_tables(
    truth: list[int], pred: list[int], accuracy: float, matching: dict[int, int] | None
) -> None:
    e = external_metrics(np.array(truth), np.array(pred))
    assert e.accuracy == pytest.approx(accuracy, rel=1e-15)
    table = contingency_table(np.array(truth), np.array(pred))[2]
    found = hungarian_matching(table)
    assert len(found) == min(table.shape)
    if matching is not None:
        assert found == matching


def test_hungarian_matching_of_a_permuted_perfect_clustering_is_the_inverse() -> None:
    rng = np.random.default_rng(5)
    perm = rng.permutation(12)
    truth = rng.integers(0, 12, 3000)
    table = contingency_table(truth, perm[truth])[2]  # class i is cluster perm[i]
    inverse = np.argsort(perm)
    assert hungarian_matching(table) == {j: int(inverse[j]) for j in range(12)}
    assert external_metrics(truth, perm[truth]).accuracy == 1.0


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ([1, 2, 3], r"non-empty 2-D array .*shape \(3,\)"),
        (np.zeros((0, 3)), "non-empty 2-D array"),
        ([["a", "b"]], "must hold numbers"),
        ([[1, -1]], "finite, non-negative"),
        ([[1.0, np.nan]], "finite, non-negative"),
    ],
)
def test_hungarian_matching_errors(table: Any, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        hungarian_matching(table)


@pytest.mark.parametrize(
    ("truth", "pred", "match"),
    [
        ([0, 1, 1, 0, 2], [0, 1, 1, 0], "labels_pred has length 4 but labels_true has length 5"),
        ([0.0, 1.0], [0, 1], "labels_true must be integers; got dtype float64"),
        ([0, 1], ["a", "b"], "labels_pred must be integers"),
        ([[0, 1]], [0, 1], r"labels_true must be 1-D; got shape \(1, 2\)"),
        (np.zeros(0, dtype=int), np.zeros(0, dtype=int), "are empty"),
    ],
)
def test_external_errors(truth: Any, pred: Any, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        external_metrics(truth, pred)
    with pytest.raises(InvalidInputError, match=match):
        contingency_table(truth, pred)


# --------------------------------------------------------------------------- histograms
def test_histograms_uint8_default_one_bin_per_value(pixels) -> None:
    edges, counts = feature_histograms(pixels)
    np.testing.assert_array_equal(edges, np.tile(np.arange(257.0), (3, 1)))
    for f in range(3):
        ref, ref_edges = np.histogram(pixels[:, f], bins=256, range=(0, 256))
        np.testing.assert_array_equal(counts[f], ref)
        np.testing.assert_array_equal(edges[f], ref_edges)
    for rows in _chunkings(len(pixels)):
        np.testing.assert_array_equal(feature_histograms(_rows(pixels, rows))[1], counts)
    # Through the general (searchsorted) path, the same bins.
    e16, c16 = feature_histograms(pixels, bins=16)
    for f in range(3):
        np.testing.assert_array_equal(c16[f], np.histogram(pixels[:, f], 16, range=(0, 256))[0])
    np.testing.assert_array_equal(e16[0], np.linspace(0, 256, 17))


def test_histograms_float_default_range_matches_numpy(blobs) -> None:
    X = blobs[0]
    w = np.random.default_rng(5).uniform(0.0, 3.0, size=len(X))
    edges, counts = feature_histograms(da.from_array(X, chunks=(450, 4)), bins=32)
    _, wcounts = feature_histograms(X, bins=32, sample_weight=w)
    assert edges.shape == (4, 33)
    assert counts.shape == (4, 32)
    assert edges.dtype == counts.dtype == np.float64
    for f in range(4):
        ref, ref_edges = np.histogram(X[:, f], bins=32)
        np.testing.assert_array_equal(edges[f], ref_edges)
        np.testing.assert_array_equal(counts[f], ref)
        np.testing.assert_allclose(
            wcounts[f], np.histogram(X[:, f], bins=32, weights=w)[0], rtol=1e-12, atol=1e-12
        )
    for rows in _chunkings(len(X)):
        e, c = feature_histograms(_rows(X, rows), bins=32, sample_weight=w)
        np.testing.assert_array_equal(e, edges)
        np.testing.assert_allclose(c, wcounts, rtol=1e-12, atol=1e-12)


def test_histograms_value_range_clips_into_edge_bins(blobs) -> None:
    X = blobs[0]
    edges, counts = feature_histograms(X, bins=10, value_range=(-2, 3))
    for f in range(4):
        ref, ref_edges = np.histogram(np.clip(X[:, f], -2, 3), bins=10, range=(-2, 3))
        np.testing.assert_array_equal(counts[f], ref)
        np.testing.assert_array_equal(edges[f], ref_edges)
        assert counts[f].sum() == len(X)
        assert counts[f, 0] == np.count_nonzero(X[:, f] < -1.5)


def test_histograms_integer_weights_equal_repeated_rows_and_constant_feature() -> None:
    rng = np.random.default_rng(6)
    X = np.column_stack([rng.normal(size=500), np.full(500, 5.0)])
    w = rng.integers(0, 4, size=500)
    edges, counts = feature_histograms(X, bins=8, sample_weight=w)
    rep = np.repeat(X, w, axis=0)
    _, rep_counts = feature_histograms(rep, bins=8)
    np.testing.assert_array_equal(counts, rep_counts)
    # The range comes from every row (weights do not change it), as np.histogram's does.
    np.testing.assert_array_equal(edges[0], np.histogram(X[:, 0], bins=8)[1])
    # A constant feature: range widened to (4.5, 5.5), all weight in the middle bins' edge.
    ref, ref_edges = np.histogram(X[:, 1], bins=8, weights=w)
    np.testing.assert_array_equal(edges[1], ref_edges)
    np.testing.assert_array_equal(edges[1], np.linspace(4.5, 5.5, 9))
    np.testing.assert_array_equal(counts[1], ref)
    assert counts[1, 4] == w.sum()


@pytest.mark.parametrize(
    ("X", "kwargs", "match"),
    [
        (np.zeros((3, 2)), {"bins": 0}, "bins must be a positive integer; got 0"),
        (np.zeros((3, 2)), {"value_range": (3, 1)}, r"lo <= hi; got \(3.0, 1.0\)"),
        (np.zeros((3, 2)), {"value_range": (0, np.nan)}, "must be finite"),
        (np.zeros((3, 2)), {"value_range": (0,)}, r"two numbers \(lo, hi\); got \(0,\)"),
        (np.array([[0.0, 1.0], [np.nan, 1.0]]), {}, "NaN or infinity in 1 row"),
        (
            np.array([[0.0, 1.0], [np.nan, 1.0]]),
            {"value_range": (0, 1)},
            "NaN or infinity in 1 row",
        ),
        (np.zeros((3, 2)), {"sample_weight": [1.0, -1.0, 0.0]}, "-1.0 at row 1"),
    ],
)
def test_histogram_errors(X: np.ndarray, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        feature_histograms(X, **kwargs)


# --------------------------------------------------------------------------- real cluster
def _all_metrics(
    X: np.ndarray, y: np.ndarray, centers: np.ndarray, w: np.ndarray
) -> dict[str, Any]:
    Xd = check_array(da.from_array(X, chunks=(400, X.shape[1])))
    pred = _nearest(X, centers)
    edges, counts = feature_histograms(Xd, bins=20, sample_weight=w)
    return {
        "internal": internal_metrics(Xd, centers, sample_weight=w).to_dict(),
        "silhouette": silhouette_sample(Xd, y, sample_size=700, random_state=9),
        "external": external_metrics(da.from_array(y, chunks=650), pred).to_dict(),
        "edges": edges,
        "counts": counts,
    }


def test_same_numbers_on_a_multiprocess_cluster(dask_client, blobs, blob_centers) -> None:
    X, y = blobs
    w = np.random.default_rng(8).uniform(0.1, 2.0, size=len(X))
    with dask.config.set(scheduler="threads"):
        local = _all_metrics(X, y, blob_centers, w)
    with get_task_stream(client=dask_client) as ts:
        remote = _all_metrics(X, y, blob_centers, w)
    assert len(ts.data) > 0  # the passes ran on the cluster's workers
    assert len({t["worker"] for t in ts.data}) == 2
    _assert_dicts_close(remote["internal"], local["internal"])
    _assert_dicts_close(remote["external"], local["external"])
    assert remote["silhouette"] == pytest.approx(local["silhouette"], rel=1e-12)
    np.testing.assert_array_equal(remote["edges"], local["edges"])
    np.testing.assert_allclose(remote["counts"], local["counts"], rtol=1e-12)
    assert local["internal"]["calinski_harabasz"] > 0
    assert -1 < local["silhouette"] < 1


def test_undefined_scores_can_be_nan_instead_of_an_error() -> None:
    X = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]])
    centers = np.array([[0.0, 0.0], [9.0, 9.0]])  # every row nearest the first center
    with pytest.raises(InvalidInputError, match="at least 2 non-empty clusters; got 1"):
        internal_metrics(X, centers)
    got = internal_metrics(X, centers, undefined="nan")
    assert np.isnan(got.calinski_harabasz)
    assert np.isnan(got.davies_bouldin)
    assert got.inertia == pytest.approx(0.02)
    assert got.sizes.tolist() == [3, 0]
    assert got.weights.tolist() == [3.0, 0.0]
