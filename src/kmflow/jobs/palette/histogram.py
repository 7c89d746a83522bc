"""Color histograms: N pixels to U <= 2**24 unique colors with counts.

Fitting k-means on the unique colors weighted by their counts gives exactly the same centers
as fitting on every pixel (each Lloyd pass sums the same values), at O(U) instead of O(N) per
iteration. Photos have far fewer unique colors than pixels.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from kmflow.errors import InvalidInputError
from kmflow.kernels._blocks import Blocks, map_reduce

__all__ = ["color_histogram", "pack_rgb", "unpack_rgb"]

_Hist = tuple[np.ndarray, np.ndarray]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Pack (n, 3) uint8 RGB rows into uint32 ``r << 16 | g << 8 | b``."""
    c = rgb.astype(np.uint32)
    return (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb`: uint32 to (n, 3) uint8."""
    p = packed.astype(np.uint32)
    return np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], axis=1).astype(np.uint8)


def _hist_block(x: np.ndarray, w: np.ndarray | None, offset: int) -> _Hist:
    if w is not None:  # a row mask: only the selected rows count
        x = x[w]
    colors, counts = np.unique(pack_rgb(x), return_counts=True)
    return colors, counts.astype(np.int64)


def _hist_combine(a: _Hist, b: _Hist) -> _Hist:
    colors, inverse = np.unique(np.concatenate([a[0], b[0]]), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate([a[1], b[1]]), minlength=len(colors))
    return colors, counts.astype(np.int64)


def color_histogram(
    pixels: da.Array, *, mask: da.Array | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Unique colors of RGB pixels and how often each occurs.

    Parameters
    ----------
    pixels : dask.array.Array of uint8, shape (n_pixels, 3)
    mask : dask.array.Array of bool, shape (n_pixels,), optional
        Count only the rows where it is True (a train or held-out split); rechunked to the
        pixels' row chunks if needed.

    Returns
    -------
    colors : ndarray of uint8, shape (n_colors, 3)
        Sorted by packed value (R, then G, then B).
    counts : ndarray of int64, shape (n_colors,)
        Sums to ``n_pixels`` (to the number of selected rows with ``mask``).

    Raises
    ------
    InvalidInputError
        If ``pixels`` is not (n, 3) uint8, or ``mask`` is not one bool per pixel.

    Notes
    -----
    One ``compute``: each block sorts its packed colors (``np.unique``), a tree of merges
    adds the counts of equal colors.
    """
    if pixels.ndim != 2 or pixels.shape[1] != 3 or pixels.dtype != np.uint8:
        raise InvalidInputError(
            f"color_histogram needs (n, 3) uint8 RGB pixels; got shape {pixels.shape} "
            f"and dtype {pixels.dtype}"
        )
    if len(pixels.chunks[1]) != 1:
        pixels = pixels.rechunk({1: -1})
    if mask is not None:
        if mask.shape != (pixels.shape[0],) or mask.dtype != bool:
            raise InvalidInputError(
                f"mask must be one bool per pixel, shape ({pixels.shape[0]},); got shape "
                f"{mask.shape} and dtype {mask.dtype}"
            )
        if mask.chunks[0] != pixels.chunks[0]:
            mask = mask.rechunk((pixels.chunks[0],))
    colors, counts = map_reduce(Blocks(pixels, mask), _hist_block, _hist_combine)
    return unpack_rgb(colors), counts
