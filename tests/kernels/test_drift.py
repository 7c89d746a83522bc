"""Drift statistics: hand-computed cases, scipy as the oracle, realistic pixel batches."""

from __future__ import annotations

import json
import math
from typing import Any

import dask.array as da
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from kmflow.errors import InvalidInputError
from kmflow.estimator import KMeans
from kmflow.kernels.drift import (
    BatchStatistics,
    DriftReport,
    DriftStatistic,
    DriftThresholds,
    batch_statistics,
    drift_report,
    jensen_shannon_distance,
    population_stability_index,
    wasserstein_histogram,
)
from kmflow.kernels.metrics import internal_metrics

ALL = ["psi", "js_distance", "sqdist_ratio", "wasserstein"]


# --------------------------------------------------------------------------- PSI
def test_psi_hand_computed() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    #   = 0.25 ln 2 + 0.25 ln 1.5 = 0.173287 + 0.101366 = 0.274653
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert population_stability_index([0.5, 0.5], [0.25, 0.75]) == pytest.approx(
        expected, rel=1e-14
    )
    # Counts are normalised first: the same distributions.
    assert population_stability_index([2, 2], [1, 3]) == pytest.approx(expected, rel=1e-14)


def test_psi_clips_empty_bins_at_eps() -> None:
    # expected [1, 0] -> clipped [1, 1e-4] -> renormalised e = [0.99990001, 0.000099990001];
    # actual a = [0.5, 0.5]; PSI = (0.5 - e0) ln(0.5 / e0) + (0.5 - e1) ln(0.5 / e1)
    #   = (-0.4999)(-0.693047) + (0.4999)(8.517393) = 0.346454 + 4.257795 = 4.604249
    assert population_stability_index([1, 0], [1, 1]) == pytest.approx(4.6042492440, rel=1e-10)
    # A larger floor bounds the same term more tightly: e = [1, 0.01] / 1.01.
    e = np.array([1, 0.01]) / 1.01
    by_hand = float(np.sum((0.5 - e) * np.log(0.5 / e)))
    assert population_stability_index([1, 0], [1, 1], eps=0.01) == pytest.approx(by_hand)
    assert by_hand < 4.6


def test_psi_zero_for_identical_positive_and_symmetric_otherwise() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(8)), rng.dirichlet(np.ones(8))
        assert population_stability_index(p, p) == 0.0
        psi = population_stability_index(p, q)
        assert psi > 0
        # No bin below eps: the formula is symmetric (symmetrised KL divergence).
        assert population_stability_index(q, p) == pytest.approx(psi, rel=1e-12)


@pytest.mark.parametrize(
    ("expected", "actual", "kwargs", "match"),
    [
        ([0.5, 0.5], [1.0], {}, "expected has 2 bins but actual has 1"),
        ([0.5, -0.5], [0.5, 0.5], {}, "expected must be finite and non-negative"),
        ([0, 0], [0.5, 0.5], {}, "expected sums to zero"),
        ([0.5, np.nan], [0.5, 0.5], {}, "finite and non-negative"),
        ([[0.5, 0.5]], [[0.5, 0.5]], {}, "must be a non-empty 1-D array"),
        ([0.5, 0.5], [0.5, 0.5], {"eps": 0.0}, r"eps must be in \(0, 1\)"),
        ([0.5, 0.5], [0.5, 0.5], {"eps": 1.0}, r"eps must be in \(0, 1\)"),
    ],
)
def test_psi_rejects_malformed_input(
    expected: Any, actual: Any, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        population_stability_index(expected, actual, **kwargs)


# --------------------------------------------------------------------------- JS distance
def test_js_distance_hand_computed() -> None:
    # Disjoint supports: the maximum, 1 bit of divergence.
    assert jensen_shannon_distance([1, 0], [0, 1]) == 1.0
    assert jensen_shannon_distance([3, 1], [3, 1]) == 0.0
    # p = [0.5, 0.5], q = [1, 0], m = [0.75, 0.25]:
    # KL(p || m) = 0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25) = -0.292481 + 0.5 = 0.207519
    # KL(q || m) = log2(1/0.75) = 0.415037; JS = 0.311278; distance sqrt(JS) = 0.557923
    assert jensen_shannon_distance([1, 1], [1, 0]) == pytest.approx(0.5579230452841, rel=1e-12)


def test_js_distance_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    for n in (2, 6, 64):
        p, q = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(n)) * 7  # q unnormalised
        q[0] = 0.0  # an empty bin on one side
        ours = jensen_shannon_distance(p, q)
        assert ours == pytest.approx(float(jensenshannon(p, q, base=2)), rel=1e-10, abs=1e-12)
        assert 0.0 < ours <= 1.0
        assert jensen_shannon_distance(q, p) == pytest.approx(ours, rel=1e-12)


def test_js_distance_rejects_malformed_input() -> None:
    with pytest.raises(InvalidInputError, match="p has 3 bins but q has 2"):
        jensen_shannon_distance([1, 1, 1], [1, 1])
    with pytest.raises(InvalidInputError, match="q sums to zero"):
        jensen_shannon_distance([1, 1], [0, 0])


# --------------------------------------------------------------------------- Wasserstein
def test_wasserstein_hand_computed() -> None:
    # All mass moves from bin 0 to bin 2: CDFs [1, 1, 1] vs [0, 0, 1], |diff| = [1, 1, 0].
    assert wasserstein_histogram([1, 0, 0], [0, 0, 1]) == 2.0
    assert wasserstein_histogram([5, 0, 0], [0, 0, 2], bin_width=2.5) == 5.0
    # CDFs [0.5, 1, 1, 1] vs [0, 0.5, 1, 1]: |diff| = [0.5, 0.5, 0, 0], W1 = 1 bin.
    assert wasserstein_histogram([1, 1, 0, 0], [0, 1, 1, 0]) == 1.0
    assert wasserstein_histogram([4, 1, 3], [8, 2, 6]) == 0.0


def test_wasserstein_matches_scipy_and_measures_shifts() -> None:
    rng = np.random.default_rng(2)
    centers = np.arange(256) + 0.5
    for width in (1.0, 4.0):
        p = rng.integers(0, 50, 256).astype(float)
        q = rng.integers(0, 50, 256).astype(float)
        oracle = wasserstein_distance(centers * width, centers * width, p, q)
        assert wasserstein_histogram(p, q, bin_width=width) == pytest.approx(oracle, rel=1e-10)
    # A histogram shifted by 17 bins moved every unit of mass by 17 bins.
    p = np.zeros(256)
    p[20:60] = rng.integers(1, 9, 40)
    assert wasserstein_histogram(p, np.roll(p, 17)) == pytest.approx(17.0, rel=1e-12)


@pytest.mark.parametrize("width", [0.0, -1.0, math.inf, math.nan])
def test_wasserstein_rejects_bad_bin_width(width: float) -> None:
    with pytest.raises(InvalidInputError, match="bin_width must be a positive finite number"):
        wasserstein_histogram([1, 0], [0, 1], bin_width=width)


# --------------------------------------------------------------------------- synthetic images
# Six color clusters of an "image collection" (sky, grass, skin, shadow, paper, red), sRGB
# noise sd 12 per channel, fixed mixture weights; NEW_COLOR (magenta) is ~185 or more from
# every one of them.
COLORS = np.array(
    [[70, 130, 200], [60, 150, 60], [220, 180, 150], [30, 30, 40], [235, 235, 230], [200, 40, 40]],
    dtype=np.float64,
)
WEIGHTS = np.array([0.30, 0.25, 0.15, 0.12, 0.10, 0.08])
NEW_COLOR = np.array([230.0, 40.0, 230.0])


def _pixels(
    n: int, seed: int, weights: np.ndarray = WEIGHTS, colors: np.ndarray = COLORS
) -> np.ndarray:
    """``n`` uint8 RGB pixels from the color mixture (Gaussian noise, rounded and clipped)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(weights), size=n, p=weights)
    x = colors[labels] + rng.normal(0.0, 12.0, (n, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _channel_counts(pixels: np.ndarray) -> np.ndarray:
    return np.stack([np.bincount(pixels[:, c], minlength=256) for c in range(3)])


def _batch(pixels: np.ndarray, centers: np.ndarray) -> BatchStatistics:
    return batch_statistics(pixels, centers, channel_counts=_channel_counts(pixels))


@pytest.fixture(scope="module")
def model() -> tuple[np.ndarray, dict[str, Any]]:
    """Centers fitted on 200,000 training pixels and the reference a model record stores.

    The reference is built as training builds it: ``internal_metrics`` (weights and inertia
    per pixel, not this module's code) feeds an ``Evaluation`` whose
    ``reference_statistics()`` is what the registry writes.
    """
    from kmflow.jobs.palette import Evaluation

    train = _pixels(200_000, seed=0)
    centers = KMeans(6, random_state=0).fit(train).cluster_centers_
    internal = internal_metrics(train, centers)
    evaluation = Evaluation(
        part="all",
        metrics={"inertia_per_pixel": internal.inertia / len(train)},
        sizes=[round(float(w)) for w in internal.weights],
        images=[],
        channel_counts=_channel_counts(train).tolist(),
        n_pixels=len(train),
        n_colors=0,
        silhouette_sample_size=0,
        seconds=0.0,
    )
    return centers, evaluation.reference_statistics()


def test_fitted_centers_recover_the_colors(model: tuple[np.ndarray, dict[str, Any]]) -> None:
    centers, reference = model
    # Each true color has a center within 1 level (noise sd 12 over >= 16,000 pixels).
    d = np.sqrt(((COLORS[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2))
    assert d.min(axis=1).max() < 1.0
    order = d.argmin(axis=1)
    np.testing.assert_allclose(np.array(reference["cluster_fractions"])[order], WEIGHTS, atol=0.005)
    # Mean squared distance of isotropic noise sd 12 in 3 channels: 3 * 144 = 432 (rounding
    # to integers adds 3/12).
    assert reference["mean_sqdist"] == pytest.approx(432.25, rel=0.02)


def test_training_data_against_itself_has_zero_drift(
    model: tuple[np.ndarray, dict[str, Any]],
) -> None:
    centers, reference = model
    report = drift_report(reference, _batch(_pixels(200_000, seed=0), centers))
    values = {s.name: s.value for s in report.statistics}
    assert values["psi"] == pytest.approx(0.0, abs=1e-12)
    assert values["js_distance"] == pytest.approx(0.0, abs=1e-6)  # sqrt of a ~1e-16 rounding
    assert values["sqdist_ratio"] == pytest.approx(1.0, rel=1e-12)
    assert values["wasserstein"] == 0.0
    assert report.n_samples == 200_000.0
    assert not report.drifted


# Measured (200,000 training pixels, 50,000 per batch):
#   seed  psi      js_distance  sqdist_ratio  wasserstein
#   1     0.00001  0.0030       0.9996        0.45
#   2     0.00016  0.0063       1.0036        0.63
#   3     0.00015  0.0061       1.0009        0.70
#   4     0.00020  0.0070       0.9995        1.00
#   5     0.00006  0.0039       1.0043        0.33
# so each default threshold is 8x (wasserstein) to 1000x (psi) above the sampling noise.
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_no_drift_on_fresh_samples_of_the_training_distribution(
    model: tuple[np.ndarray, dict[str, Any]], seed: int
) -> None:
    centers, reference = model
    report = drift_report(reference, _batch(_pixels(50_000, seed=seed), centers))
    values = {s.name: s.value for s in report.statistics}
    assert list(values) == ALL
    assert report.fired == []
    assert not report.drifted
    assert values["psi"] < 0.001
    assert values["js_distance"] < 0.02
    assert abs(values["sqdist_ratio"] - 1.0) < 0.02
    assert values["wasserstein"] < 2.0


def _shifted(pixels: np.ndarray) -> np.ndarray:
    x = pixels.astype(np.int64)
    x[:, 2] += 40
    return np.clip(x, 0, 255).astype(np.uint8)


def _brighter(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels * 1.35), 0, 255).astype(np.uint8)


# Measured values (thresholds 0.2, 0.1, 1.5, 8.0) and why each statistic fires or not:
# - shift (+40 on blue, every pixel): psi 0.003, js 0.023, ratio 4.38, W1 38.7. Clusters are
#   >= 100 apart, so a 40-level shift leaves almost every pixel with its own center: the
#   occupancy barely moves, but every pixel is ~40 farther from it (432 -> ~1900) and the
#   blue histogram moved by ~40 levels (less where clipped at 255).
# - brightness (x1.35, clipped): psi 0.75, js 0.30, ratio 8.8, W1 40.1. Bright colors move
#   by up to 80 levels, far enough to change their nearest center (skin -> paper, ...).
# - new content (30 % magenta, far from all): psi 0.34, js 0.24, ratio 19.3, W1 35.9. The
#   new pixels land in the skin cluster (its occupancy 0.15 -> 0.40), 162 levels from it.
# - mixture reversed (same colors, weights reversed): psi 0.88, js 0.39, ratio 0.99, W1 50.3.
#   Each pixel is as close to its center as in training (the ratio stays ~1), but the
#   clusters are far apart in color, so the per-channel histograms move as much as the
#   occupancy does.
DRIFT_CASES = {
    "shifted colors": (lambda: _shifted(_pixels(50_000, seed=11)), ["sqdist_ratio", "wasserstein"]),
    "brightness": (lambda: _brighter(_pixels(50_000, seed=11)), ALL),
    "new content": (
        lambda: _pixels(
            50_000,
            seed=12,
            weights=np.r_[0.7 * WEIGHTS, 0.3],
            colors=np.vstack([COLORS, NEW_COLOR]),
        ),
        ALL,
    ),
    "changed mixture": (
        lambda: _pixels(50_000, seed=13, weights=WEIGHTS[::-1]),
        ["psi", "js_distance", "wasserstein"],
    ),
}


@pytest.mark.parametrize("case", list(DRIFT_CASES))
def test_clear_drift_is_detected(model: tuple[np.ndarray, dict[str, Any]], case: str) -> None:
    centers, reference = model
    make, fired = DRIFT_CASES[case]
    report = drift_report(reference, _batch(make(), centers))
    assert report.drifted
    assert report.fired == fired
    for s in report.statistics:  # clear: every firing statistic 1.5x its threshold or more
        if s.drifted:
            assert s.value > 1.5 * s.threshold


def test_new_content_lands_in_the_nearest_cluster(
    model: tuple[np.ndarray, dict[str, Any]],
) -> None:
    centers, reference = model
    make, _ = DRIFT_CASES["new content"]
    report = drift_report(reference, _batch(make(), centers))
    # Magenta (230, 40, 230) is 162 from skin (220, 180, 150), 186 from sky, 192 from red:
    # nearly all of the 30 % lands in the skin cluster.
    dist = np.sqrt(((centers - NEW_COLOR) ** 2).sum(axis=1))
    skin = int(np.argmin(dist))
    np.testing.assert_allclose(centers[skin], COLORS[2], atol=1.0)
    grown = np.array(report.occupancy) - np.array(report.reference_occupancy)
    assert int(np.argmax(grown)) == skin
    # 0.7 * 0.15 + 0.3 = 0.405 expected, against 0.15 in training.
    assert report.occupancy[skin] == pytest.approx(0.405, abs=0.01)
    assert sum(report.occupancy) == pytest.approx(1.0, rel=1e-12)
    # Mean squared distance: 70 % at the noise level (432.25), 30 % at 162^2 plus the noise:
    # 0.7 * 432.25 + 0.3 * (161.66^2 + 432.25) = 8272, 19.3 times the reference.
    expected = 0.7 * 432.25 + 0.3 * (dist[skin] ** 2 + 432.25)
    ratio = report.statistic("sqdist_ratio").value
    assert ratio * reference["mean_sqdist"] == pytest.approx(expected, rel=0.02)


def test_thresholds_decide(model: tuple[np.ndarray, dict[str, Any]]) -> None:
    centers, reference = model
    batch = _batch(_shifted(_pixels(20_000, seed=21)), centers)
    strict = drift_report(reference, batch, DriftThresholds(psi=1e-6))
    assert strict.fired == ["psi", "sqdist_ratio", "wasserstein"]
    lenient = drift_report(
        reference, batch, DriftThresholds(sqdist_ratio=math.inf, wasserstein=math.inf)
    )
    assert not lenient.drifted
    assert lenient.statistic("wasserstein").threshold == math.inf


# --------------------------------------------------------------------------- chunking, weights
def _chunkings(n: int) -> list[tuple[int, ...]]:
    """One chunk, many uneven chunks, and chunkings with empty blocks."""
    return [
        (n,),
        (37,) * (n // 37) + (n % 37,),
        (0, 5, 0, n - 5),
        (n - 1000, 0, 0, 1000, 0),
    ]


@pytest.mark.parametrize("drifted", [False, True])
def test_report_is_identical_for_any_chunking(
    model: tuple[np.ndarray, dict[str, Any]], drifted: bool
) -> None:
    centers, reference = model
    pixels = _pixels(6_000, seed=31)
    if drifted:
        pixels = _brighter(pixels)
    counts = _channel_counts(pixels)
    dicts = []
    for chunks in _chunkings(len(pixels)):
        X = da.from_array(pixels, chunks=(chunks, 3))
        batch = batch_statistics(X, centers, channel_counts=counts)
        dicts.append(drift_report(reference, batch).to_dict())
    assert all(d == dicts[0] for d in dicts[1:])  # bit for bit: the sums are exact
    assert dicts[0]["drifted"] is drifted


def test_weighted_statistics_are_chunk_invariant_and_equal_repeated_rows() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3_000, 4)) * [1.0, 10.0, 100.0, 1e-3]
    w = rng.integers(0, 5, 3_000).astype(np.float64)
    w[:7] = 0.0  # rows of weight zero count as absent
    centers = X[rng.choice(3_000, 5, replace=False)]
    results = []
    for chunks in _chunkings(3_000):
        Xd = da.from_array(X, chunks=(chunks, 4))
        wd = da.from_array(w, chunks=(chunks,))
        results.append(batch_statistics(Xd, centers, sample_weight=wd))
    for r in results[1:]:
        np.testing.assert_array_equal(r.cluster_weights, results[0].cluster_weights)
        assert r.mean_sqdist == results[0].mean_sqdist
        assert r.n_samples == results[0].n_samples == w.sum()
    repeated = batch_statistics(np.repeat(X, w.astype(np.int64), axis=0), centers)
    np.testing.assert_array_equal(repeated.cluster_weights, results[0].cluster_weights)
    # w * d2 is rounded once per row: equal to the repeated rows to rounding only.
    assert repeated.mean_sqdist == pytest.approx(results[0].mean_sqdist, rel=1e-14)


def test_batch_statistics_match_an_independent_computation() -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(2_000, 3))
    w = rng.random(2_000)
    centers = rng.normal(size=(4, 3))
    d2 = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    labels = d2.argmin(axis=1)
    stats = batch_statistics(X, centers, sample_weight=w)
    np.testing.assert_allclose(
        stats.cluster_weights, np.bincount(labels, weights=w, minlength=4), rtol=1e-13
    )
    assert stats.n_samples == pytest.approx(w.sum(), rel=1e-14)
    assert stats.mean_sqdist == pytest.approx(float(w @ d2.min(axis=1)) / w.sum(), rel=1e-13)
    np.testing.assert_allclose(stats.occupancy.sum(), 1.0, rtol=1e-14)
    assert stats.channel_counts is None
    internal = internal_metrics(X, centers, sample_weight=w)
    np.testing.assert_allclose(stats.cluster_weights, internal.weights, rtol=1e-13)
    assert stats.mean_sqdist * stats.n_samples == pytest.approx(internal.inertia, rel=1e-13)


def test_tabular_data_without_histograms_omits_wasserstein() -> None:
    rng = np.random.default_rng(7)
    train = rng.normal(size=(5_000, 2))
    centers = np.array([[-1.0, 0.0], [1.0, 0.0]])
    ref_stats = batch_statistics(train, centers)
    reference = {
        "cluster_fractions": ref_stats.occupancy.tolist(),
        "mean_sqdist": ref_stats.mean_sqdist,
    }
    same = drift_report(reference, batch_statistics(rng.normal(size=(5_000, 2)), centers))
    assert [s.name for s in same.statistics] == ["psi", "js_distance", "sqdist_ratio"]
    assert not same.drifted
    moved = drift_report(reference, batch_statistics(rng.normal(size=(5_000, 2)) + 1.5, centers))
    assert moved.fired == ["psi", "js_distance", "sqdist_ratio"]
    with pytest.raises(KeyError, match="no drift statistic 'wasserstein'"):
        moved.statistic("wasserstein")
    # Histograms on one side only: omitted too.
    with_counts = BatchStatistics(
        n_samples=10.0,
        cluster_weights=np.array([5.0, 5.0]),
        mean_sqdist=1.0,
        channel_counts=np.ones((2, 4)),
    )
    assert "wasserstein" not in drift_report(reference, with_counts).to_dict()["statistics"]


def test_zero_reference_distance_gives_an_infinite_or_unit_ratio() -> None:
    reference = {"cluster_fractions": [0.5, 0.5], "mean_sqdist": 0.0}
    centers = np.array([[0.0], [10.0]])
    on_centers = batch_statistics(np.array([[0.0], [10.0]]), centers)
    assert drift_report(reference, on_centers).statistic("sqdist_ratio").value == 1.0
    off = drift_report(reference, batch_statistics(np.array([[1.0], [10.0]]), centers))
    ratio = off.statistic("sqdist_ratio")
    assert ratio.value == math.inf
    assert ratio.drifted
    assert off.fired == ["sqdist_ratio"]
    again = DriftReport.from_dict(json.loads(json.dumps(off.to_dict())))
    assert again == off


# --------------------------------------------------------------------------- serialisation
def test_report_round_trips_through_json(model: tuple[np.ndarray, dict[str, Any]]) -> None:
    centers, reference = model
    report = drift_report(reference, _batch(_brighter(_pixels(5_000, seed=41)), centers))
    d = report.to_dict()
    assert d["drifted"] is True
    assert set(d) == {"drifted", "n_samples", "statistics", "occupancy", "reference_occupancy"}
    assert list(d["statistics"]) == ALL
    for name, s in d["statistics"].items():
        assert set(s) == {"value", "threshold", "drifted"}
        assert type(s["drifted"]) is bool
        assert type(s["value"]) is float
        assert s["threshold"] == getattr(DriftThresholds(), name)
    text = json.dumps(d, allow_nan=False)
    again = DriftReport.from_dict(json.loads(text))
    assert again == report
    assert again.to_dict() == d
    assert again.statistics[0] == DriftStatistic("psi", d["statistics"]["psi"]["value"], 0.2, True)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("statistics"), "needs the key 'statistics'"),
        (lambda d: d["statistics"]["psi"].pop("value"), "needs the key 'value'"),
        (lambda d: d.update(drifted="yes"), "drifted must be a boolean; got 'yes'"),
        (lambda d: d.update(drifted=False), "drifted=False contradicts the statistics"),
        (lambda d: d.update(occupancy=[1.0]), "occupancy has 1 clusters"),
        (lambda d: d.update(n_samples="many"), "malformed drift report"),
    ],
)
def test_from_dict_rejects_malformed_reports(mutate: Any, match: str) -> None:
    d = DriftReport(
        statistics=[DriftStatistic("psi", 0.3, 0.2, True)],
        drifted=True,
        n_samples=4.0,
        occupancy=[0.5, 0.5],
        reference_occupancy=[0.25, 0.75],
    ).to_dict()
    mutate(d)
    with pytest.raises(InvalidInputError, match=match):
        DriftReport.from_dict(d)


# --------------------------------------------------------------------------- errors
def test_cluster_count_mismatch_names_both_numbers(
    model: tuple[np.ndarray, dict[str, Any]],
) -> None:
    centers, reference = model
    batch = _batch(_pixels(1_000, seed=51), centers[:5])
    with pytest.raises(
        InvalidInputError, match="6 cluster fractions but the batch was assigned to 5"
    ):
        drift_report(reference, batch)


def test_empty_batch_is_rejected(model: tuple[np.ndarray, dict[str, Any]]) -> None:
    centers, reference = model
    with pytest.raises(InvalidInputError, match="X has no rows"):
        batch_statistics(np.empty((0, 3), dtype=np.uint8), centers)
    with pytest.raises(InvalidInputError, match="the batch is empty: sample_weight sums to zero"):
        batch_statistics(np.zeros((4, 3)), centers, sample_weight=np.zeros(4))
    empty = BatchStatistics(n_samples=0.0, cluster_weights=np.zeros(6), mean_sqdist=0.0)
    with pytest.raises(InvalidInputError, match=r"the batch is empty \(n_samples == 0\)"):
        drift_report(reference, empty)


def test_negative_weights_and_nan_rows_are_rejected() -> None:
    X = np.arange(20.0).reshape(10, 2)
    centers = X[:3]
    w = np.ones(10)
    w[6] = -2.0
    with pytest.raises(InvalidInputError, match=r"non-negative; 1 value\(s\) are not .* at row 6"):
        batch_statistics(da.from_array(X, chunks=4), centers, sample_weight=w)
    X[3, 1] = np.nan
    with pytest.raises(InvalidInputError, match=r"X contains NaN or infinity in 1 row\(s\)"):
        batch_statistics(X, centers)


@pytest.mark.parametrize(
    ("reference", "match"),
    [
        ({"mean_sqdist": 1.0}, "lack 'cluster_fractions'"),
        ({"cluster_fractions": [0.5, 0.5]}, "lack 'mean_sqdist'"),
        ({"cluster_fractions": [0.5, 0.5], "mean_sqdist": -1.0}, "mean_sqdist must be finite"),
        ({"cluster_fractions": [0.5, 0.5], "mean_sqdist": None}, "mean_sqdist must be finite"),
        ({"cluster_fractions": [0, 0], "mean_sqdist": 1.0}, "cluster_fractions sums to zero"),
        (
            {"cluster_fractions": [0.5, 0.5], "mean_sqdist": 1.0, "channel_histograms": [1]},
            "must be a dict with 'counts'",
        ),
        (
            {
                "cluster_fractions": [0.5, 0.5],
                "mean_sqdist": 1.0,
                "channel_histograms": {"space": "srgb", "bins": 256, "counts": [[1, 2, 3]]},
            },
            "says bins=256 but its counts have 3 bins",
        ),
        (
            {
                "cluster_fractions": [0.5, 0.5],
                "mean_sqdist": 1.0,
                "channel_histograms": {"space": "srgb", "bins": 4, "counts": [[1, 2, 3, 4]]},
            },
            r"shape \(2, 4\) \(channels, bins\) but the reference's \(1, 4\)",
        ),
        (
            {
                "cluster_fractions": [0.5, 0.5],
                "mean_sqdist": 1.0,
                "channel_histograms": {"bins": 4, "counts": [[1, 2, 3, 4], [0, 0, 0, 0]]},
            },
            "channel 1 of the reference histograms is empty",
        ),
        (
            {
                "cluster_fractions": [0.5, 0.5],
                "mean_sqdist": 1.0,
                "channel_histograms": {"bins": 4, "range": [1, 1], "counts": [[1, 2, 3, 4]] * 2},
            },
            r"range must be \[lo, hi\] with lo < hi; got \[1, 1\]",
        ),
    ],
)
def test_malformed_references_are_rejected(reference: dict[str, Any], match: str) -> None:
    batch = BatchStatistics(
        n_samples=10.0,
        cluster_weights=np.array([4.0, 6.0]),
        mean_sqdist=1.0,
        channel_counts=np.ones((2, 4)),
    )
    with pytest.raises(InvalidInputError, match=match):
        drift_report(reference, batch)


def test_histogram_bin_width_comes_from_the_reference() -> None:
    counts = [[1, 0, 0, 0]]
    batch = BatchStatistics(
        n_samples=1.0,
        cluster_weights=np.array([1.0]),
        mean_sqdist=0.0,
        channel_counts=np.array([[0, 0, 0, 1]]),
    )
    base = {"cluster_fractions": [1.0], "mean_sqdist": 0.0}
    w1 = {
        # 3 bins apart: 4 sRGB bins are 64 levels wide; a range (0, 1) makes them 0.25 wide.
        "srgb": 192.0,
        "range": 0.75,
        "none": 3.0,
    }
    hists = {
        "srgb": {"space": "srgb", "bins": 4, "counts": counts},
        "range": {"space": "lab", "bins": 4, "range": [0, 1], "counts": counts},
        "none": {"bins": 4, "counts": counts},
    }
    for key, hist in hists.items():
        report = drift_report({**base, "channel_histograms": hist}, batch)
        assert report.statistic("wasserstein").value == w1[key]


def test_thresholds_accept_any_positive_real() -> None:
    t = DriftThresholds(psi=np.int64(1), js_distance=np.float32(0.5), wasserstein=math.inf)
    assert (t.psi, t.js_distance, t.sqdist_ratio, t.wasserstein) == (1.0, 0.5, 1.5, math.inf)
    assert type(t.psi) is float


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"psi": 0.0}, "psi must be a positive number; got 0.0"),
        ({"js_distance": -0.1}, "js_distance must be a positive number"),
        ({"sqdist_ratio": math.nan}, "sqdist_ratio must be a positive number"),
        ({"wasserstein": "8"}, "wasserstein must be a positive number; got '8'"),
        ({"psi": True}, "psi must be a positive number; got True"),
        ({"js_distance": 1.5}, "js_distance must be at most 1; got 1.5"),
        ({"sqdist_ratio": 1.0}, "sqdist_ratio must be above 1; got 1.0"),
    ],
)
def test_thresholds_must_be_positive(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        DriftThresholds(**kwargs)


def test_batch_statistics_validates_its_fields() -> None:
    with pytest.raises(InvalidInputError, match="cluster_weights must be finite and non-negative"):
        BatchStatistics(n_samples=1.0, cluster_weights=np.array([1.0, -1.0]), mean_sqdist=0.0)
    with pytest.raises(InvalidInputError, match="channel_counts must be a non-empty 2-D array"):
        batch_statistics(np.zeros((2, 1)), [[0.0]], channel_counts=[1, 2, 3])
    with pytest.raises(InvalidInputError, match="mean_sqdist must be finite and >= 0"):
        BatchStatistics(n_samples=1.0, cluster_weights=np.ones(1), mean_sqdist=math.inf)


def test_thresholds_as_a_parameter_model_field() -> None:
    """The monitor flow's parameters take the kernel's thresholds: errors name the field."""
    from pydantic import ValidationError

    from kmflow.params import MonitorParams

    params = MonitorParams(thresholds={"psi": 0.3})  # type: ignore[arg-type]
    assert params.thresholds == DriftThresholds(psi=0.3)
    assert MonitorParams.model_validate(params.model_dump(mode="json")) == params
    for bad in ({"psi": 0}, {"js_distance": 2}, {"sqdist_ratio": 1}, {"bogus": 1.0}):
        with pytest.raises(ValidationError) as info:
            MonitorParams(thresholds=bad)  # type: ignore[arg-type]
        assert info.value.errors()[0]["loc"] == ("thresholds", next(iter(bad)))
