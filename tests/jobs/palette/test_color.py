"""Color conversions and CIEDE2000 against published values and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab

from kmflow.jobs.palette._compiled import atan2_degrees_into, cbrt_into, exp_neg_into
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


def test_a_gray_has_no_chroma_in_either_conversion() -> None:
    """CIEDE2000 jumps at zero chroma: rounding must not give a gray a hue."""
    gray = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    for compiled in (False, True):
        lab = srgb_to_lab(gray, compiled=compiled)
        assert np.all(lab[:, 1:] == 0.0)
        np.testing.assert_allclose(lab[[0, 255], 0], [0.0, 100.0], atol=1e-12)
        assert np.all(np.diff(lab[:, 0]) > 0)
    # A gray painted with another gray: the ΔE of two L* values, no hue terms.
    lab = srgb_to_lab(gray)
    np.testing.assert_allclose(
        ciede2000(lab[40], lab[200]), deltaE_ciede2000(lab[40], lab[200]), atol=1e-9
    )


def test_compiled_cube_root_arctangent_and_exponential_match_libm() -> None:
    """The straight-line versions the compiled passes inline, over the ranges they get."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(2.0**-9, 1.01, 200_000), np.geomspace(2.0**-9, 1.01, 5000)])
    out = np.empty_like(x)
    cbrt_into(x, out, len(x))
    exact = np.cbrt(x.astype(np.longdouble))
    assert float(np.max(np.abs(out - exact) / np.spacing(np.cbrt(x)))) <= 1.0  # libm: 3.3 here

    y = rng.normal(size=100_000) * 10.0 ** rng.integers(-6, 4, 100_000)
    xs = rng.normal(size=100_000)
    out = np.empty_like(y)
    atan2_degrees_into(y, xs, out, len(y))
    np.testing.assert_allclose(out, np.degrees(np.arctan2(y, xs)) % 360.0, rtol=0, atol=2e-13)
    # The axes, the origin, and an angle just below 360° (rounds to 360: reported as 0).
    y = np.array([0.0, 0.0, 1.0, -1.0, 0.0, -1e-300, 1.0])
    xs = np.array([1.0, -1.0, 0.0, 0.0, 0.0, 1.0, -1e-300])
    out = np.empty_like(y)
    atan2_degrees_into(y, xs, out, len(y))
    assert out.tolist() == [0.0, 180.0, 90.0, 270.0, 0.0, 0.0, 90.0]

    z = np.concatenate([rng.uniform(0.0, 60.0, 100_000), rng.uniform(0.0, 700.0, 1000), [0.0]])
    out = np.empty_like(z)
    exp_neg_into(z, out, len(z))
    ref = np.exp(-z)
    assert float(np.max(np.abs(out - ref) / np.spacing(ref))) <= 4.0
    assert out[-1] == 1.0
