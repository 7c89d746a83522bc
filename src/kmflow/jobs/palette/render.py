"""Painting one image with a palette, in one pass, and measuring what was written.

An image is read once: its color histogram (unique colors, counts and each pixel's color
index) gives the palette index of every pixel by labelling the unique colors only, the
indexed PNG is encoded from that, and PSNR and the mean CIEDE2000 ΔE come from the unique
colors weighted by their counts in float64, exactly as a per-pixel sum would give them.
With Floyd–Steinberg dithering the index of a pixel no longer follows from its color alone,
so the figures are then summed over (color, index) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from kmflow.errors import InvalidInputError
from kmflow.jobs.palette._compiled import floyd_steinberg, histogram_error_sums, image_histogram
from kmflow.jobs.palette.color import (
    _LINEAR_OF_UINT8,
    _RATIOS_FROM_RGB,
    psnr,
    srgb_to_lab,
)
from kmflow.kernels.dense import nearest
from kmflow.storage.images import encode_png, encode_png_indexed

__all__ = [
    "ColorHistogram",
    "ColorPreprocessing",
    "Painted",
    "histogram_error",
    "paint",
    "to_fit_space",
]

ColorSpace = Literal["rgb", "lab"]


def to_fit_space(rgb: np.ndarray, color_space: ColorSpace) -> np.ndarray:
    """sRGB colors in the space a palette is fitted in (RGB as is, or CIE Lab)."""
    return srgb_to_lab(rgb) if color_space == "lab" else rgb


@dataclass(frozen=True)
class ColorPreprocessing:
    """A palette's preprocessing: sRGB pixels to the color space its centers live in.

    Stored in the model record as ``{"type": "color", "color_space": "rgb" | "lab"}`` (no
    arrays). :meth:`transform` takes ``(n, 3)`` sRGB values in 0-255 (uint8 or numbers).
    """

    color_space: ColorSpace
    n_features: int = 3

    def transform(self, data: object) -> np.ndarray:
        rgb = np.asarray(data)
        if rgb.ndim != 2 or rgb.shape[1] != 3 or rgb.dtype.kind not in "biuf":
            raise InvalidInputError(
                f"pixels must be an (n, 3) array of sRGB values; got shape {rgb.shape}, "
                f"dtype {rgb.dtype}"
            )
        bad = rgb.dtype != np.uint8 and (
            not np.isfinite(rgb).all() or rgb.min(initial=0) < 0 or rgb.max(initial=0) > 255
        )
        if bad:
            raise InvalidInputError("pixels must be finite sRGB values in 0..255")
        return np.asarray(to_fit_space(rgb.astype(np.float64), self.color_space), np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"type": "color", "color_space": self.color_space}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_json(cls, spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> ColorPreprocessing:
        space = spec.get("color_space")
        if space not in ("rgb", "lab"):
            raise InvalidInputError(
                f"a palette's color space must be 'rgb' or 'lab'; got {space!r}"
            )
        return cls(color_space=space)


@dataclass(eq=False)
class ColorHistogram:
    """One image's unique colors, their counts, and each pixel's color index.

    Attributes
    ----------
    colors : ndarray of uint8, shape (n_colors, 3)
    counts : ndarray of int64, shape (n_colors,)
    inverse : ndarray of int32, shape (n_pixels,)
        ``colors[inverse]`` is the image's pixels.
    """

    colors: np.ndarray
    counts: np.ndarray
    inverse: np.ndarray
    _lab: np.ndarray | None = None

    @classmethod
    def of(cls, pixels: np.ndarray) -> ColorHistogram:
        return cls(*image_histogram(pixels))

    @property
    def n_pixels(self) -> int:
        return int(self.inverse.shape[0])

    @property
    def lab(self) -> np.ndarray:
        """``srgb_to_lab(colors)`` (computed once): a fit or an assignment in Lab needs it."""
        if self._lab is None:
            self._lab = srgb_to_lab(self.colors)
        return self._lab

    def in_space(self, color_space: ColorSpace) -> np.ndarray:
        """The unique colors in the fit space (float64 Lab, or the uint8 RGB rows)."""
        return self.lab if color_space == "lab" else self.colors


def histogram_error(
    colors: np.ndarray,
    counts: np.ndarray,
    labels: np.ndarray,
    palette_rgb: np.ndarray,
    colors_lab: np.ndarray | None = None,
) -> tuple[float, float]:
    """Pooled squared error and count-weighted mean ΔE00 of unique colors painted by label.

    Parameters
    ----------
    colors : ndarray of uint8, shape (n_colors, 3)
    counts : ndarray of int, shape (n_colors,)
    labels : ndarray of int, shape (n_colors,)
        Palette index each color is painted with.
    palette_rgb : ndarray of uint8, shape (k, 3)
    colors_lab : ndarray of float64, shape (n_colors, 3), optional
        ``srgb_to_lab(colors)`` if already known (else each color's Lab is computed in the
        same pass, as ``srgb_to_lab(colors, compiled=True)`` gives it).

    Returns
    -------
    sse : float
        Sum over pixels and channels of the squared difference (float64: no overflow).
    delta_e : float
        Mean CIEDE2000 difference per pixel (NaN for no pixels).

    Notes
    -----
    Vectorised compiled passes over chunks of colors (``_compiled.histogram_error_sums``),
    nothing allocated per color; the palette's Lab is computed once, with the conversion the
    colors' Lab comes from (a color painted as itself has a ΔE of exactly 0, not 1e-13).
    """
    sse, de, total = histogram_error_sums(
        colors,
        counts,
        labels,
        palette_rgb,
        # k rows, converted as the colors are: a color painted as itself has ΔE 0 exactly.
        srgb_to_lab(palette_rgb, compiled=colors_lab is None),
        colors_lab,
        _LINEAR_OF_UINT8,
        _RATIOS_FROM_RGB,
    )
    return sse, de / total if total else float("nan")


@dataclass(frozen=True)
class Painted:
    """An image painted with a palette: the encoded PNG and how close it is to the original."""

    png: bytes
    n_pixels: int
    sse: float
    delta_e: float
    colors_used: int

    @property
    def psnr(self) -> float:
        return psnr(self.sse / (3 * self.n_pixels)) if self.n_pixels else float("nan")


def paint(
    hist: ColorHistogram,
    height: int,
    width: int,
    centers: np.ndarray,
    palette_rgb: np.ndarray,
    color_space: ColorSpace,
    *,
    dither: bool = False,
    labels: np.ndarray | None = None,
) -> Painted:
    """Paint one image with a palette and encode it as PNG (indexed up to 256 colors).

    Parameters
    ----------
    hist : ColorHistogram
        The image's histogram (:meth:`ColorHistogram.of` its pixels).
    height, width : int
    centers : ndarray of float64, shape (k, 3)
        The palette in ``color_space``; each color goes to its nearest center.
    palette_rgb : ndarray of uint8, shape (k, 3)
        What each center is painted as.
    color_space : {"rgb", "lab"}
    dither : bool, default False
        Floyd–Steinberg error diffusion (in sRGB) instead of the nearest center.
    labels : ndarray of int, shape (n_colors,), optional
        The nearest center of each histogram color if already known (a fit computes them);
        ignored with ``dither``.

    Returns
    -------
    Painted
    """
    n = hist.n_pixels
    if not dither:
        if labels is None:
            labels = nearest(hist.in_space(color_space), centers)
        known_lab = hist.lab if color_space == "lab" else None
        sse, delta_e = histogram_error(hist.colors, hist.counts, labels, palette_rgb, known_lab)
        index = labels[hist.inverse]
        used = int(np.count_nonzero(np.bincount(labels, minlength=len(palette_rgb))))
    else:
        image = hist.colors[hist.inverse].reshape(height, width, 3)
        index = floyd_steinberg(image, palette_rgb).reshape(-1)
        # A pixel's index depends on its neighbours: sum over distinct (color, index) pairs.
        pairs, counts = np.unique(
            hist.inverse.astype(np.int64) * len(palette_rgb) + index, return_counts=True
        )
        color_of, label_of = np.divmod(pairs, len(palette_rgb))
        sse, delta_e = histogram_error(hist.colors[color_of], counts, label_of, palette_rgb)
        used = int(np.count_nonzero(np.bincount(label_of, minlength=len(palette_rgb))))
    shape = (height, width)
    if len(palette_rgb) <= 256:
        png = encode_png_indexed(index.reshape(shape), palette_rgb)
    else:
        png = encode_png(palette_rgb[index].reshape(*shape, 3))
    return Painted(png=png, n_pixels=n, sse=sse, delta_e=delta_e, colors_used=used)
