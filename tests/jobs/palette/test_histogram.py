"""Color histograms and the weighted fit they enable."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from kmflow import InvalidInputError, KMeans
from kmflow.jobs.palette.histogram import color_histogram, pack_rgb, unpack_rgb


def test_pack_unpack_round_trip() -> None:
    rgb = np.array([[0, 0, 0], [255, 255, 255], [1, 2, 3], [200, 10, 255]], dtype=np.uint8)
    packed = pack_rgb(rgb)
    assert packed.tolist() == [0, 0xFFFFFF, 0x010203, 0xC80AFF]
    np.testing.assert_array_equal(unpack_rgb(packed), rgb)


@pytest.mark.parametrize(
    "chunks", [(60_000, 3), (7_001, 3), ((0, 30_000, 0, 30_000), (3,)), (20_000, 1)]
)
def test_histogram_matches_numpy_unique_for_any_chunking(pixels, chunks) -> None:
    colors, counts = color_histogram(da.from_array(pixels, chunks=chunks))
    ref_colors, ref_counts = np.unique(pixels, axis=0, return_counts=True)
    np.testing.assert_array_equal(colors, ref_colors)
    np.testing.assert_array_equal(counts, ref_counts)
    assert counts.sum() == len(pixels)
    assert counts.dtype == np.int64


def test_histogram_fit_equals_full_pixel_fit(pixels) -> None:
    colors, counts = color_histogram(da.from_array(pixels, chunks=(10_000, 3)))
    init = pixels[:: len(pixels) // 16][:16].astype(np.float64) + 0.5
    full = KMeans(16, init=init, tol=0).fit(pixels)
    hist = KMeans(16, init=init, tol=0).fit(colors, sample_weight=counts)
    np.testing.assert_allclose(hist.cluster_centers_, full.cluster_centers_, rtol=1e-12)
    assert hist.inertia_ == pytest.approx(full.inertia_, rel=1e-12)


def test_histogram_rejects_non_rgb() -> None:
    with pytest.raises(InvalidInputError, match=r"needs \(n, 3\) uint8 RGB pixels"):
        color_histogram(da.zeros((10, 3), dtype=np.float32))
    with pytest.raises(InvalidInputError, match=r"needs \(n, 3\) uint8"):
        color_histogram(da.zeros((10, 4), dtype=np.uint8))


def test_masked_histogram_counts_only_selected_rows() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(5_000, 3), dtype=np.uint8)
    mask = rng.random(5_000) < 0.3
    colors, counts = color_histogram(
        da.from_array(x, chunks=(700, 3)), mask=da.from_array(mask, chunks=1_000)
    )
    want_colors, want_counts = np.unique(x[mask], axis=0, return_counts=True)
    np.testing.assert_array_equal(colors, want_colors)
    np.testing.assert_array_equal(counts, want_counts)
    assert counts.sum() == mask.sum()


def test_mask_of_the_wrong_length_is_rejected() -> None:
    x = da.zeros((10, 3), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match=r"mask must be one bool per pixel, shape \(10,\)"):
        color_histogram(x, mask=da.ones(9, dtype=bool))
