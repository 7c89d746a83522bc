"""One-pass rendering: the per-image histogram, PSNR/ΔE from unique colors, dithering."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage.color import deltaE_ciede2000

from kmflow.jobs.palette._compiled import histogram_error_sums, image_histogram
from kmflow.jobs.palette.color import (
    _LINEAR_OF_UINT8,
    _RATIOS_FROM_RGB,
    ciede2000,
    psnr,
    srgb_to_lab,
)
from kmflow.jobs.palette.render import ColorHistogram, histogram_error, paint


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


def _numpy_histogram_error(
    colors: np.ndarray, counts: np.ndarray, labels: np.ndarray, palette: np.ndarray
) -> tuple[float, float, float]:
    """The reference: numpy Lab, the CIEDE2000 ufunc and scikit-image's, weighted means."""
    quant = palette[labels]
    diff = colors.astype(np.float64) - quant.astype(np.float64)
    w = counts.astype(np.float64)
    lab, quant_lab = srgb_to_lab(colors), srgb_to_lab(quant)
    return (
        float(w @ (diff * diff).sum(axis=1)),
        float(w @ ciede2000(lab, quant_lab) / w.sum()),
        float(w @ deltaE_ciede2000(lab, quant_lab) / w.sum()),
    )


def _edge_colors(rng: np.random.Generator) -> np.ndarray:
    """Random colors, every gray, near-grays, primaries and pairs with opposite hues."""
    gray = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    near_gray = np.clip(gray.astype(int) + rng.integers(-1, 2, size=gray.shape), 0, 255)
    corners = np.array(
        [[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], dtype=np.uint8
    )
    opposite = np.array(
        [[255, 0, 0], [0, 255, 255], [0, 0, 255], [255, 255, 0], [128, 0, 128], [0, 128, 0]],
        dtype=np.uint8,
    )
    random = rng.integers(0, 256, size=(20_000, 3))
    return np.concatenate([gray, near_gray, corners, opposite, random]).astype(np.uint8)


@pytest.mark.parametrize("known_lab", [False, True])
def test_fused_histogram_error_equals_the_numpy_reference(known_lab: bool) -> None:
    """The compiled pass gives the numpy path's figures, where CIEDE2000's hue terms
    degenerate too: gray colors or palette entries (zero chroma), opposite hues, a color
    equal to its palette entry."""
    rng = np.random.default_rng(3)
    colors = _edge_colors(rng)
    counts = rng.integers(1, 5000, size=len(colors))
    # Palettes with grays, black, white and the edge colors themselves.
    gray_palette = np.array([[0, 0, 0], [255, 255, 255], [128, 128, 128], [37, 37, 37]], np.uint8)
    for palette in (
        gray_palette,
        np.concatenate([gray_palette, rng.integers(0, 256, size=(12, 3)).astype(np.uint8)]),
        colors[rng.choice(len(colors), size=64, replace=False)],
    ):
        for labels in (
            rng.integers(0, len(palette), size=len(colors)),  # any pairing
            ((colors[:, None].astype(float) - palette[None]) ** 2).sum(-1).argmin(1),  # nearest
        ):
            lab = srgb_to_lab(colors) if known_lab else None
            sse, delta_e = histogram_error(colors, counts, labels.astype(np.int32), palette, lab)
            ref_sse, ref_de, skimage_de = _numpy_histogram_error(colors, counts, labels, palette)
            assert sse == ref_sse  # integer squared errors: exact in float64
            # Computed in the pass, a color's Lab is the compiled conversion's (last bits
            # apart from numpy's, which near-grays' hues amplify a little).
            rel = 1e-12 if known_lab else 1e-10
            assert delta_e == pytest.approx(ref_de, rel=rel, abs=1e-12)
            assert delta_e == pytest.approx(skimage_de, rel=rel, abs=1e-12)
            if not known_lab:
                compiled_lab = srgb_to_lab(colors, compiled=True)
                _, given = histogram_error(colors, counts, labels, palette, compiled_lab)
                assert delta_e == pytest.approx(given, rel=1e-13)
    # Colors painted as themselves (a gray, a blue), and no colors at all.
    for one in (np.array([[90, 90, 90]], np.uint8), np.array([[90, 20, 200]], np.uint8)):
        assert histogram_error(one, np.array([7]), np.array([0]), one) == (0.0, 0.0)
        assert histogram_error(one, np.array([7]), np.array([0]), one, srgb_to_lab(one)) == (
            0.0,
            0.0,
        )
    sse, delta_e = histogram_error(
        np.empty((0, 3), np.uint8), np.empty(0, np.int64), np.empty(0, np.int64), one
    )
    assert sse == 0.0
    assert np.isnan(delta_e)


def test_fused_ciede2000_per_pair_on_degenerate_lab_pairs() -> None:
    """Pair by pair, on Lab pairs built to hit the kernel's branches: zero chroma, hues
    exactly or nearly opposite, equal hues, the mean hue at 0°/360° (mirrored hues)."""
    rng = np.random.default_rng(4)
    base = srgb_to_lab(rng.integers(0, 256, size=(300, 3)).astype(np.uint8))
    base[::11, 1:] = 0.0  # exact grays
    chroma = np.hypot(base[:, 1], base[:, 2])
    hue = np.arctan2(base[:, 2], base[:, 1])
    zero_rgb = np.zeros((1, 3), np.uint8)  # the squared error is not under test here
    # Exactly opposite hues and a mean hue at 0° are CIEDE2000's discontinuities, where
    # implementations' conventions (and roundings) differ: there the kernel must give what
    # the reference ufunc gives; elsewhere scikit-image agrees too.
    for shift, knife_edge in (
        (np.pi, True),
        (-2 * hue, True),  # mirrored hues: the mean hue is 0° or 180°
        (np.pi - 1e-3, False),
        (np.pi + 0.02, False),
        (1e-7, False),
        (0.0, False),
    ):
        h2 = hue + shift
        other = np.stack([base[::-1, 0], chroma[::-1] * np.cos(h2), chroma[::-1] * np.sin(h2)], 1)
        other[::5, 1:] = 0.0  # a gray partner
        ref = ciede2000(base, other)
        if not knife_edge:
            np.testing.assert_allclose(ref, deltaE_ciede2000(base, other), rtol=0, atol=1e-9)
        for i in range(len(base)):
            _, de, total = histogram_error_sums(
                zero_rgb,
                np.array([1]),
                np.array([0]),
                zero_rgb,
                other[i : i + 1],
                base[i : i + 1],
                _LINEAR_OF_UINT8,
                _RATIOS_FROM_RGB,
            )
            assert total == 1.0
            assert de == pytest.approx(ref[i], rel=1e-11, abs=1e-11)
