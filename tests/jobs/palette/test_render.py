"""One-pass rendering: the per-image histogram, PSNR/ΔE from unique colors, dithering."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kmflow.jobs.palette._compiled import image_histogram
from kmflow.jobs.palette.color import ciede2000, psnr, srgb_to_lab
from kmflow.jobs.palette.render import ColorHistogram, paint


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def _random_image(rng: np.random.Generator, h: int, w: int, levels: int = 256) -> np.ndarray:
    return (rng.integers(0, levels, size=(h, w, 3)) * (255 // max(1, levels - 1))).astype(np.uint8)


def test_image_histogram_matches_numpy_unique() -> None:
    rng = np.random.default_rng(0)
    for levels in (2, 7, 256):
        px = _random_image(rng, 120, 90, levels).reshape(-1, 3)
        colors, counts, inverse = image_histogram(px)
        np.testing.assert_array_equal(colors[inverse], px)
        ref, ref_counts = np.unique(px, axis=0, return_counts=True)
        order = np.lexsort(colors.T[::-1])
        np.testing.assert_array_equal(colors[order], ref)
        np.testing.assert_array_equal(counts[order], ref_counts)
        assert counts.sum() == len(px)
    # The scratch table is left clean: a second image is not polluted by the first.
    one = np.full((50, 3), 7, np.uint8)
    colors, counts, _ = image_histogram(one)
    np.testing.assert_array_equal(colors, [[7, 7, 7]])
    np.testing.assert_array_equal(counts, [50])


def _per_pixel(original: np.ndarray, rendered: np.ndarray) -> tuple[float, float]:
    diff = original.reshape(-1, 3).astype(np.float64) - rendered.reshape(-1, 3)
    sse = float((diff * diff).sum())
    de = ciede2000(srgb_to_lab(original.reshape(-1, 3)), srgb_to_lab(rendered.reshape(-1, 3)))
    return psnr(sse / diff.size), float(de.mean())


@pytest.mark.parametrize("dither", [False, True])
@pytest.mark.parametrize("color_space", ["rgb", "lab"])
def test_paint_figures_equal_the_per_pixel_computation(dither: bool, color_space: str) -> None:
    rng = np.random.default_rng(1)
    image = _random_image(rng, 64, 80, levels=40)
    palette = rng.integers(0, 256, size=(12, 3)).astype(np.uint8)
    centers = srgb_to_lab(palette) if color_space == "lab" else palette.astype(np.float64)
    hist = ColorHistogram.of(image.reshape(-1, 3))
    painted = paint(hist, 64, 80, centers, palette, color_space, dither=dither)  # type: ignore[arg-type]
    rendered = _decode(painted.png)
    assert rendered.shape == image.shape
    assert {tuple(c) for c in rendered.reshape(-1, 3)} <= {tuple(c) for c in palette}
    ref_psnr, ref_de = _per_pixel(image, rendered)
    assert painted.psnr == pytest.approx(ref_psnr, rel=1e-12)
    assert painted.delta_e == pytest.approx(ref_de, rel=1e-9)
    if not dither:  # every pixel takes its nearest center
        d2 = ((hist.in_space(color_space).astype(float)[:, None] - centers[None]) ** 2).sum(-1)  # type: ignore[arg-type]
        expected = palette[d2.argmin(1)][hist.inverse].reshape(image.shape)
        np.testing.assert_array_equal(rendered, expected)


def test_psnr_of_a_20_megapixel_image_does_not_overflow() -> None:
    """Squared errors of 20 MP add up far past int32: they are summed in float64."""
    h, w = 4000, 5000
    rng = np.random.default_rng(2)
    tile = rng.integers(0, 256, size=(40, 50, 3)).astype(np.uint8)
    image = np.tile(tile, (h // 40, w // 50, 1))
    palette = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
    hist = ColorHistogram.of(image.reshape(-1, 3))
    painted = paint(hist, h, w, palette.astype(np.float64), palette, "rgb")
    rendered = _decode(painted.png)
    sse = 0.0
    for rows in range(0, h, 500):  # per pixel, in float64, a band at a time
        diff = image[rows : rows + 500].astype(np.float64) - rendered[rows : rows + 500]
        sse += float((diff * diff).sum())
    assert sse > 2**36  # int32 sums wrapped around long before this
    assert painted.sse == pytest.approx(sse, rel=1e-12)
    assert painted.psnr == pytest.approx(psnr(sse / (3 * h * w)), rel=1e-12)
    assert 0 < painted.psnr < 20


def test_dithering_keeps_the_local_mean_of_a_gradient() -> None:
    ramp = np.repeat(np.linspace(0, 255, 256)[None, :], 64, axis=0)
    image = np.repeat(ramp[..., None], 3, axis=2).astype(np.uint8)
    palette = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
    hist = ColorHistogram.of(image.reshape(-1, 3))
    plain = _decode(paint(hist, 64, 256, palette.astype(float), palette, "rgb").png)
    dithered = _decode(paint(hist, 64, 256, palette.astype(float), palette, "rgb", dither=True).png)

    def block_error(x: np.ndarray) -> float:  # mean color of 8x8 blocks vs the original's
        b = x[..., 0].astype(float).reshape(8, 8, 32, 8).mean(axis=(1, 3))
        o = image[..., 0].astype(float).reshape(8, 8, 32, 8).mean(axis=(1, 3))
        return float(np.abs(b - o).mean())

    assert block_error(dithered) < 0.2 * block_error(plain)
    assert len(np.unique(dithered.reshape(-1, 3), axis=0)) == 2
