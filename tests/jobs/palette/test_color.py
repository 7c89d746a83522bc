"""Color conversions and CIEDE2000 against published values and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab

from kmflow.jobs.palette.color import ciede2000, lab_to_srgb, psnr, srgb_to_lab

# Pairs and ΔE00 from Sharma, Wu & Dalal (2005), supplementary test data.
SHARMA = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
]


@pytest.mark.parametrize(("lab1", "lab2", "expected"), SHARMA)
def test_ciede2000_published_pairs(lab1, lab2, expected) -> None:
    assert ciede2000(np.array(lab1), np.array(lab2)) == pytest.approx(expected, abs=1e-4)
    assert ciede2000(np.array(lab2), np.array(lab1)) == pytest.approx(expected, abs=1e-4)


def test_ciede2000_matches_scikit_image_on_random_colors() -> None:
    rng = np.random.default_rng(0)
    a = srgb_to_lab(rng.integers(0, 256, size=(5000, 3)))
    b = srgb_to_lab(rng.integers(0, 256, size=(5000, 3)))
    np.testing.assert_allclose(ciede2000(a, b), deltaE_ciede2000(a, b), atol=1e-6)
    assert np.all(ciede2000(a, a) == 0)


def test_srgb_lab_matches_scikit_image_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(10_000, 3), dtype=np.uint8)
    lab = srgb_to_lab(rgb)
    np.testing.assert_allclose(lab, rgb2lab(rgb[None] / 255.0)[0], atol=0.02)
    np.testing.assert_array_equal(lab_to_srgb(lab), rgb)
    np.testing.assert_allclose(
        lab_to_srgb(lab[:50]) / 255.0, lab2rgb(lab[None, :50])[0], atol=1 / 255
    )
    np.testing.assert_allclose(srgb_to_lab(np.array([255, 255, 255])), [100, 0, 0], atol=1e-6)
    np.testing.assert_allclose(srgb_to_lab(np.array([0, 0, 0])), [0, 0, 0], atol=1e-9)


def test_psnr() -> None:
    assert psnr(0.0) == float("inf")
    assert psnr(255.0**2) == pytest.approx(0.0)
    assert psnr(1.0) == pytest.approx(48.1308, abs=1e-4)


def test_compiled_lab_agrees_with_the_reference_on_every_color() -> None:
    every = np.arange(1 << 24, dtype=np.uint32)[::97]
    rgb = np.stack([(every >> 16) & 255, (every >> 8) & 255, every & 255], axis=1).astype(np.uint8)
    np.testing.assert_allclose(
        srgb_to_lab(rgb, compiled=True), srgb_to_lab(rgb), rtol=0, atol=1e-11
    )
    assert srgb_to_lab(rgb[:7].reshape(7, 1, 3), compiled=True).shape == (7, 1, 3)
