"""Pictures of a clustering: the contingency heatmap and the contact sheets of the clusters.

- :func:`contingency_heatmap`: PNG bytes of the classes x clusters table, counts in the cells,
  clusters ordered by :func:`diagonal_order` (the Hungarian matching of
  :func:`kmflow.kernels.metrics.hungarian_matching`)
- :func:`contact_sheet`: uint8 images of any sizes, gray or RGB, as one RGB grid, each image
  fitted into a square tile (nearest-neighbour when enlarged, Lanczos when reduced), with an
  optional caption strip on top
- :func:`cluster_sheet`: a cluster's contact sheet: its images nearest the center, then a few
  random members on a new row, captioned ``cluster 3 · 178 images · nearest 8, random 8``
- :func:`encode_png`: RGB pixels as a PNG file (:func:`kmflow.storage.images.encode_png`)

The heatmap is drawn on its own :class:`matplotlib.figure.Figure` with a
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, never through ``pyplot``: no
display, no global figure registry, so reports can be drawn from several threads at once.
"""

from __future__ import annotations

import functools
import io
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from kmflow.errors import InvalidInputError
from kmflow.kernels.metrics import hungarian_matching
from kmflow.storage.images import encode_png

__all__ = [
    "CAPTION_HEIGHT",
    "cluster_sheet",
    "contact_sheet",
    "contingency_heatmap",
    "diagonal_order",
    "encode_png",
]

#: Height in pixels of the caption strip on top of a contact sheet.
CAPTION_HEIGHT = 16

#: Left and right margin of the caption text, in pixels.
_CAPTION_PAD = 4

_CAPTION_COLOR = (40, 40, 40)

#: Background of a contact sheet: the gaps, the caption strip and the unused part of a tile.
_BACKGROUND = (240, 240, 240)

#: Tables with at most this many rows and columns get full-size cells and fonts.
_READABLE_CELLS = 20

#: Beyond this many rows or columns the counts are no longer written in the cells.
_MAX_ANNOTATED_CELLS = 60

# FreeType faces are not safe to share between threads: one caption drawn at a time.
_FONT_LOCK = threading.Lock()


# --------------------------------------------------------------------------- heatmap
def _check_table(table: Any) -> np.ndarray:
    t = np.asarray(table)
    if t.ndim != 2 or t.size == 0:
        raise InvalidInputError(
            f"table must be a non-empty 2-D array (classes x clusters); got shape {t.shape}"
        )
    if t.dtype.kind not in "iuf":
        raise InvalidInputError(f"table must hold numbers; got dtype {t.dtype}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise InvalidInputError("table must hold finite, non-negative counts")
    return t


def _check_matching(matching: Mapping[int, int], shape: tuple[int, int]) -> dict[int, int]:
    n_classes, n_clusters = shape
    out: dict[int, int] = {}
    for j, i in matching.items():
        if not (0 <= int(j) < n_clusters and 0 <= int(i) < n_classes):
            raise InvalidInputError(
                f"matching pairs cluster column {j} with class row {i}; the table has "
                f"{n_clusters} columns and {n_classes} rows"
            )
        out[int(j)] = int(i)
    if len(set(out.values())) != len(out):
        raise InvalidInputError("matching must pair each class with at most one cluster")
    return out


def diagonal_order(table: Any, matching: Mapping[int, int] | None = None) -> np.ndarray:
    """Column order of a contingency table that puts the matched counts on the diagonal.

    Parameters
    ----------
    table : array-like of shape (n_classes, n_clusters)
        Non-negative counts, classes in rows, clusters in columns.
    matching : mapping of int to int, optional
        Cluster column index to class row index, one-to-one. Default:
        :func:`kmflow.kernels.metrics.hungarian_matching` of ``table``.

    Returns
    -------
    ndarray of intp, shape (n_clusters,)
        A permutation of the column indices: ``table[:, order]`` is the table to draw.

    Raises
    ------
    InvalidInputError
        ``table`` not a non-empty 2-D array of finite non-negative numbers, or ``matching``
        naming columns or rows outside it, or one class twice.

    Notes
    -----
    Every column gets a class: its matched class, or, for a cluster left unmatched (more
    clusters than classes), its majority class. Columns are sorted by that class, a matched
    column before the unmatched ones of the same class, those by decreasing count, then by
    index. A permuted perfect clustering comes out as the identity table; a class split into
    several clusters shows as a run of cells along its row next to the diagonal.
    """
    t = _check_table(table)
    match = hungarian_matching(t) if matching is None else _check_matching(matching, t.shape)
    n_clusters = t.shape[1]
    columns = np.arange(n_clusters)
    majority = np.argmax(t, axis=0)
    cls = np.array([match.get(j, int(majority[j])) for j in range(n_clusters)])
    unmatched = np.array([j not in match for j in range(n_clusters)])
    count = t[cls, columns].astype(np.float64)
    return np.lexsort((columns, -count, unmatched, cls))


def _default_figsize(n_classes: int, n_clusters: int, longest_name: int) -> tuple[float, float]:
    """Inches: half-inch cells up to 20 x 20, smaller beyond, room for the class names."""
    cells = max(n_classes, n_clusters)
    cell = 0.5 if cells <= _READABLE_CELLS else max(0.16, 10.0 / cells)
    width = 2.6 + 0.075 * min(longest_name, 30) + cell * n_clusters
    height = 1.9 + cell * n_classes
    return round(width, 2), round(height, 2)


def contingency_heatmap(
    table: Any,
    class_names: Sequence[str],
    *,
    title: str = "classes x clusters",
    matching: Mapping[int, int] | None = None,
    cluster_names: Sequence[str | int] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> bytes:
    """A PNG of the contingency table: classes x clusters, counts in the cells, a colorbar.

    Parameters
    ----------
    table : array-like of shape (n_classes, n_clusters)
        ``table[i, j]`` rows of class ``i`` in cluster ``j``, as the third result of
        :func:`kmflow.kernels.metrics.contingency_table`.
    class_names : sequence of str
        A label per row of ``table``; empty for the row numbers.
    title : str, default "classes x clusters"
        Drawn above the table.
    matching : mapping of int to int, optional
        Cluster column index to class row index, as returned by
        :func:`kmflow.kernels.metrics.hungarian_matching` (computed when not given).
    cluster_names : sequence of str or int, optional
        A label per column of ``table`` (e.g. the cluster ids, the second result of
        :func:`~kmflow.kernels.metrics.contingency_table`); default the column numbers.
    figsize : (float, float), optional
        Width and height in inches. Default: half-inch cells up to 20 rows and columns,
        smaller cells beyond, plus room for the names, the title and the colorbar.
    dpi : int, default 100
        Pixels per inch: the PNG is ``round(figsize * dpi)`` pixels.

    Returns
    -------
    bytes
        The PNG file (RGBA).

    Raises
    ------
    InvalidInputError
        ``table`` not a non-empty 2-D array of finite non-negative numbers, names not one
        per row or column, a ``matching`` outside the table, or ``dpi`` or ``figsize`` not
        positive.

    Notes
    -----
    Columns are reordered by :func:`diagonal_order`, so a good clustering shows a strong
    diagonal; the x axis names the clusters in that order. The color is the count (matplotlib's
    "Blues", 0 white); non-zero counts are written in the cells in black, or in white on dark
    cells, in 9 pt up to 20 rows and columns, smaller beyond, and not at all beyond 60.
    Drawn with :class:`~matplotlib.figure.Figure` and the Agg canvas, never ``pyplot``.
    """
    t = _check_table(table)
    n_classes, n_clusters = t.shape
    rows = [str(v) for v in class_names] if len(class_names) else [str(i) for i in range(n_classes)]
    if len(rows) != n_classes:
        raise InvalidInputError(
            f"class_names has {len(rows)} names for a table of {n_classes} classes (rows)"
        )
    if cluster_names is None:
        columns = [str(j) for j in range(n_clusters)]
    else:
        columns = [str(v) for v in cluster_names]
        if len(columns) != n_clusters:
            raise InvalidInputError(
                f"cluster_names has {len(columns)} names for a table of {n_clusters} "
                "clusters (columns)"
            )
    if isinstance(dpi, bool) or not isinstance(dpi, int | np.integer) or dpi < 1:
        raise InvalidInputError(f"dpi must be a positive integer; got {dpi!r}")
    if figsize is None:
        figsize = _default_figsize(n_classes, n_clusters, max(len(r) for r in rows))
    elif len(figsize) != 2 or not all(math.isfinite(v) and v > 0 for v in figsize):
        raise InvalidInputError(f"figsize must be two positive numbers; got {figsize!r}")

    order = diagonal_order(t, matching)
    data = t[:, order].astype(np.float64)
    names = [columns[j] for j in order]
    cells = max(n_classes, n_clusters)
    fontsize = 9.0 if cells <= _READABLE_CELLS else max(4.0, 9.0 * _READABLE_CELLS / cells)
    ticksize = max(5.0, min(9.0, fontsize))

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vmax = float(data.max()) if data.max() > 0 else 1.0
    image = ax.imshow(
        data, cmap=colormaps["Blues"], vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest"
    )
    if cells <= _MAX_ANNOTATED_CELLS:
        integral = bool(np.all(data == np.round(data)))
        for i, j in zip(*np.nonzero(data), strict=True):
            value = data[i, j]
            text = f"{int(value)}" if integral else f"{value:.3g}"
            color = "white" if value > 0.55 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
    ax.set_xticks(np.arange(n_clusters), labels=names, fontsize=ticksize)
    ax.set_yticks(np.arange(n_classes), labels=rows, fontsize=ticksize)
    if n_clusters > 12 or max(len(c) for c in names) > 3:
        ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel("cluster")
    ax.set_ylabel("class")
    ax.set_title(title, fontsize=11)
    fig.colorbar(image, ax=ax, label="rows", shrink=0.9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


# --------------------------------------------------------------------------- contact sheets
@functools.cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default()


def _check_tile(tile: Any, index: int) -> np.ndarray:
    a = np.asarray(tile)
    if a.dtype != np.uint8:
        raise InvalidInputError(f"tiles[{index}] must be uint8; got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or a.shape[0] < 1 or a.shape[1] < 1:
        raise InvalidInputError(
            f"tiles[{index}] must be a gray (H, W) or RGB (H, W, 3) image; got shape {a.shape}"
        )
    return a


def _fit(image: np.ndarray, tile_size: int) -> np.ndarray:
    """``image`` resized to fit a ``tile_size`` square, aspect ratio kept, as RGB."""
    h, w = image.shape[:2]
    scale = tile_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        image = np.asarray(Image.fromarray(image).resize(size, resample=resample))
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def contact_sheet(
    tiles: Sequence[np.ndarray | None],
    *,
    columns: int,
    tile_size: int = 64,
    caption: str | None = None,
    border: int = 2,
) -> np.ndarray:
    """Images composed into one RGB grid of square tiles, with an optional caption on top.

    Parameters
    ----------
    tiles : sequence of ndarray or None
        uint8 images, gray ``(H, W)`` (or ``(H, W, 1)``) or RGB ``(H, W, 3)``, any size each,
        in reading order (left to right, then down); ``None`` leaves a cell empty.
    columns : int
        Tiles per row; the sheet has ``ceil(len(tiles) / columns)`` rows.
    tile_size : int, default 64
        Side of each square tile in pixels.
    caption : str, optional
        A line of text in a strip of :data:`CAPTION_HEIGHT` pixels above the grid, drawn with
        Pillow's default font; none when ``None`` or empty.
    border : int, default 2
        Gap in pixels between tiles and around the grid.

    Returns
    -------
    ndarray of uint8, shape (height, width, 3)
        ``height = CAPTION_HEIGHT * (caption given) + rows * tile_size + (rows + 1) * border``
        and ``width = columns * tile_size + (columns + 1) * border``, or wider when the
        caption needs it (the grid stays on the left).

    Raises
    ------
    InvalidInputError
        No tiles; a tile not a non-empty uint8 gray or RGB image; ``columns`` or
        ``tile_size`` below 1; ``border`` below 0.

    Notes
    -----
    Each image is scaled so that its longer side is ``tile_size`` (aspect ratio kept) and
    centered in its tile: enlarged with nearest-neighbour resampling, so small images such as
    8 x 8 digits stay crisp (an integer factor repeats every pixel exactly), reduced with
    Lanczos; an image already ``tile_size`` on its longer side is copied as is. Gray images
    become three equal channels. The background (gaps, caption strip, the unused part of a
    tile that is not square) is a light gray, the caption dark gray.
    """
    if len(tiles) == 0:
        raise InvalidInputError("contact_sheet needs at least one tile; got none")
    columns = _positive_int(columns, "columns")
    tile_size = _positive_int(tile_size, "tile_size")
    border = _positive_int(border, "border", minimum=0)
    images = [None if t is None else _check_tile(t, i) for i, t in enumerate(tiles)]
    rows = math.ceil(len(images) / columns)
    grid_w = columns * tile_size + (columns + 1) * border
    grid_h = rows * tile_size + (rows + 1) * border
    top = CAPTION_HEIGHT if caption else 0
    width = grid_w
    if caption:
        with _FONT_LOCK:
            text_w = math.ceil(_font().getlength(caption))
        width = max(grid_w, text_w + 2 * _CAPTION_PAD)
    sheet = np.empty((top + grid_h, width, 3), dtype=np.uint8)
    sheet[...] = _BACKGROUND
    for index, image in enumerate(images):
        if image is None:
            continue
        fitted = _fit(image, tile_size)
        h, w = fitted.shape[:2]
        r, c = divmod(index, columns)
        y = top + border + r * (tile_size + border) + (tile_size - h) // 2
        x = border + c * (tile_size + border) + (tile_size - w) // 2
        sheet[y : y + h, x : x + w] = fitted
    if caption:
        canvas = Image.fromarray(sheet)
        draw = ImageDraw.Draw(canvas)
        with _FONT_LOCK:
            font = _font()
            _, upper, _, lower = draw.textbbox((0, 0), caption, font=font)
            y_text = (CAPTION_HEIGHT - (lower - upper)) // 2 - upper
            draw.text((_CAPTION_PAD, y_text), caption, fill=_CAPTION_COLOR, font=font)
        sheet = np.asarray(canvas).copy()
    return sheet


def cluster_sheet(
    nearest: Sequence[np.ndarray],
    random: Sequence[np.ndarray],
    *,
    cluster: int,
    size: int,
    tile_size: int = 64,
    columns: int | None = None,
    border: int = 2,
) -> np.ndarray:
    """A cluster's contact sheet: the images nearest its center, then random members.

    Parameters
    ----------
    nearest : sequence of ndarray
        The cluster's images nearest the center, nearest first (uint8, gray or RGB, as
        :func:`contact_sheet` takes them).
    random : sequence of ndarray
        A few other members drawn at random; they start on a new row.
    cluster : int
        The cluster's number, for the caption.
    size : int
        Images in the cluster (all of them, not only those shown), for the caption.
    tile_size : int, default 64
        Side of each square tile in pixels.
    columns : int, optional
        Tiles per row; default ``max(len(nearest), len(random))``: one row of nearest
        images above one row of random ones.
    border : int, default 2
        Gap in pixels between tiles and around the grid.

    Returns
    -------
    ndarray of uint8, shape (height, width, 3)
        The sheet (:func:`contact_sheet`) under the caption
        ``"cluster 3 · 178 images · nearest 8, random 8"``. An empty cluster (no images at
        all) gives the caption over one empty tile.

    Raises
    ------
    InvalidInputError
        An image not a non-empty uint8 gray or RGB image; ``columns`` or ``tile_size``
        below 1; ``border`` or ``size`` below 0.

    Examples
    --------
    >>> digit = np.zeros((8, 8), dtype=np.uint8)
    >>> cluster_sheet([digit] * 8, [digit] * 8, cluster=3, size=178).shape
    (150, 530, 3)
    """
    size = _positive_int(size, "size", minimum=0)
    n_near, n_rand = len(nearest), len(random)
    if columns is None:
        columns = max(n_near, n_rand, 1)
    columns = _positive_int(columns, "columns")
    tiles: list[np.ndarray | None] = list(nearest)
    if n_rand:
        tiles += [None] * (-n_near % columns) + list(random)
    if not tiles:
        tiles = [None]
    noun = "image" if size == 1 else "images"
    caption = f"cluster {cluster} · {size} {noun} · nearest {n_near}, random {n_rand}"
    return contact_sheet(
        tiles, columns=columns, tile_size=tile_size, caption=caption, border=border
    )
