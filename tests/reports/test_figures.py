"""Report figures: the contingency heatmap PNG and the contact sheets' exact pixels."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kmflow.errors import InvalidInputError
from kmflow.kernels.metrics import contingency_table, hungarian_matching
from kmflow.reports import (
    CAPTION_HEIGHT,
    cluster_sheet,
    contact_sheet,
    contingency_heatmap,
    diagonal_order,
    encode_png,
)
from kmflow.reports.figures import _BACKGROUND

BACKGROUND = np.array(_BACKGROUND, dtype=np.uint8)


def _decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _permuted_perfect(n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A perfect clustering with the clusters renamed: class ``i`` is cluster ``perm[i]``."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_classes)
    truth = np.repeat(np.arange(n_classes), rng.integers(5, 40, n_classes))
    return contingency_table(truth, perm[truth])[2], perm


# --------------------------------------------------------------------------- heatmap
def test_heatmap_is_a_png_of_the_given_size_and_not_blank() -> None:
    table = np.array([[40, 2, 0, 1], [3, 35, 4, 0], [0, 5, 1, 50]])
    png = contingency_heatmap(table, ["cat", "dog", "bird"], title="t", figsize=(6.0, 4.0), dpi=100)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = _decode(png)
    assert image.format == "PNG"
    assert image.size == (600, 400)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20  # cells, text, colorbar: many colors
    assert _decode(contingency_heatmap(table, ["a", "b", "c"], dpi=50)).size[0] < image.size[0]


def test_heatmap_default_size_grows_with_the_table_and_fonts_shrink_beyond_20() -> None:
    small = _decode(contingency_heatmap(np.eye(3, dtype=int) * 9 + 1, ["a", "b", "c"])).size
    middle = _decode(contingency_heatmap(np.eye(20, dtype=int) * 9 + 1, []))
    large = _decode(contingency_heatmap(np.ones((70, 80), dtype=int), []))  # no counts written
    assert small[0] < middle.size[0]
    assert small[1] < middle.size[1]
    assert middle.size[0] <= 1400
    assert middle.size[1] <= 1300
    assert large.size[0] <= 1800
    assert large.size[1] <= 1600


def test_a_permuted_perfect_clustering_is_drawn_as_a_diagonal() -> None:
    table, perm = _permuted_perfect(7, seed=3)
    inverse = np.argsort(perm)
    assert hungarian_matching(table) == {j: int(inverse[j]) for j in range(7)}
    order = diagonal_order(table)
    np.testing.assert_array_equal(order, perm)  # row i's cluster perm[i] in column i
    reordered = table[:, order]
    np.testing.assert_array_equal(reordered, np.diag(np.diag(reordered)))
    # The drawing of the permuted table is the drawing of the diagonal one, columns named by
    # their original cluster numbers.
    names = [f"class {i}" for i in range(7)]
    drawn = contingency_heatmap(table, names)
    expected = contingency_heatmap(reordered, names, cluster_names=[int(j) for j in order])
    np.testing.assert_array_equal(np.asarray(_decode(drawn)), np.asarray(_decode(expected)))


def test_diagonal_order_of_rectangular_tables() -> None:
    # More clusters than classes: class 0 split over clusters 3 and 1 (3 the larger part),
    # class 1 over clusters 0, 4 and 2. Unmatched clusters follow their class's matched one.
    table = np.array([[0, 10, 0, 30, 0], [20, 0, 5, 0, 12]])
    assert hungarian_matching(table) == {0: 1, 3: 0}
    np.testing.assert_array_equal(diagonal_order(table), [3, 1, 0, 4, 2])
    # Fewer clusters than classes: each cluster at its matched class.
    table = np.array([[1, 0], [0, 9], [8, 2]])
    assert hungarian_matching(table) == {0: 2, 1: 1}
    np.testing.assert_array_equal(diagonal_order(table), [1, 0])
    # A given matching is used as given.
    np.testing.assert_array_equal(diagonal_order(table, {0: 0, 1: 1}), [0, 1])


def test_heatmaps_drawn_from_threads_equal_those_drawn_one_by_one() -> None:
    tables = [_permuted_perfect(n, seed=n)[0] for n in (3, 4, 5, 6)]

    def draw(table: np.ndarray) -> bytes:
        return contingency_heatmap(table, [], title=f"{table.shape}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(draw, tables))
    for png, table in zip(threaded, tables, strict=True):
        assert np.array_equal(np.asarray(_decode(png)), np.asarray(_decode(draw(table))))


@pytest.mark.parametrize(
    ("table", "kwargs", "match"),
    [
        (np.zeros((0, 2)), {}, "non-empty 2-D array"),
        ([1, 2], {}, "non-empty 2-D array"),
        ([[1, -2]], {}, "finite, non-negative"),
        ([[1, 2], [3, 4]], {"class_names": ["a"]}, "class_names has 1 names .* 2 classes"),
        ([[1, 2], [3, 4]], {"cluster_names": [1, 2, 3]}, "cluster_names has 3 names"),
        ([[1, 2], [3, 4]], {"matching": {5: 0}}, "cluster column 5 with class row 0"),
        ([[1, 2], [3, 4]], {"matching": {0: 1, 1: 1}}, "at most one cluster"),
        ([[1, 2], [3, 4]], {"dpi": 0}, "dpi must be a positive integer"),
        ([[1, 2], [3, 4]], {"figsize": (3.0, -1.0)}, "figsize must be two positive"),
    ],
)
def test_heatmap_errors(table: Any, kwargs: dict[str, Any], match: str) -> None:
    kwargs = {"class_names": [], **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        contingency_heatmap(table, **kwargs)


# --------------------------------------------------------------------------- contact sheets
def _origin(index: int, *, columns: int, tile_size: int, border: int, top: int) -> tuple[int, int]:
    """Top-left pixel (y, x) of tile ``index`` in a sheet."""
    r, c = divmod(index, columns)
    return top + border + r * (tile_size + border), border + c * (tile_size + border)


@pytest.mark.parametrize(
    ("n_tiles", "columns", "tile_size", "border", "caption"),
    [(12, 5, 32, 3, None), (12, 5, 32, 3, "c"), (1, 1, 64, 0, None), (7, 7, 20, 1, "x")],
)
def test_sheet_size_is_the_grid_and_the_caption(
    n_tiles: int, columns: int, tile_size: int, border: int, caption: str | None
) -> None:
    tiles = [np.full((10, 10), 7, dtype=np.uint8)] * n_tiles
    sheet = contact_sheet(
        tiles, columns=columns, tile_size=tile_size, caption=caption, border=border
    )
    rows = -(-n_tiles // columns)
    height = rows * tile_size + (rows + 1) * border + (CAPTION_HEIGHT if caption else 0)
    assert sheet.shape == (height, columns * tile_size + (columns + 1) * border, 3)
    assert sheet.dtype == np.uint8


def test_small_gray_tiles_are_enlarged_pixel_for_pixel() -> None:
    rng = np.random.default_rng(0)
    digits = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)]
    sheet = contact_sheet(digits, columns=2, tile_size=64, border=2)
    assert sheet.shape == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2, 3)
    for index, digit in enumerate(digits):
        y, x = _origin(index, columns=2, tile_size=64, border=2, top=0)
        expected = np.kron(digit, np.ones((8, 8), dtype=np.uint8))  # every pixel 8 x 8
        for channel in range(3):
            np.testing.assert_array_equal(sheet[y : y + 64, x : x + 64, channel], expected)
    # The gaps and the unused fourth cell are background.
    assert (sheet[:2] == BACKGROUND).all()
    assert (sheet[:, 66:68] == BACKGROUND).all()
    y, x = _origin(3, columns=2, tile_size=64, border=2, top=0)
    assert (sheet[y : y + 64, x : x + 64] == BACKGROUND).all()


def test_rgb_and_gray_tiles_share_a_sheet() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)  # (H, W, 1) is gray too
    exact = rng.integers(0, 256, (64, 40, 3), dtype=np.uint8)  # longer side = tile: copied
    sheet = contact_sheet([rgb, gray, exact], columns=3, tile_size=64, border=2, caption="ab")
    top = CAPTION_HEIGHT
    y, x = _origin(0, columns=3, tile_size=64, border=2, top=top)
    np.testing.assert_array_equal(
        sheet[y : y + 64, x : x + 64], np.kron(rgb, np.ones((4, 4, 1), dtype=np.uint8))
    )
    y, x = _origin(1, columns=3, tile_size=64, border=2, top=top)
    enlarged = np.kron(gray[:, :, 0], np.ones((2, 2), dtype=np.uint8))
    np.testing.assert_array_equal(sheet[y : y + 64, x : x + 64], np.dstack([enlarged] * 3))
    y, x = _origin(2, columns=3, tile_size=64, border=2, top=top)
    np.testing.assert_array_equal(sheet[y : y + 64, x + 12 : x + 52], exact)  # centered
    assert (sheet[y : y + 64, x : x + 12] == BACKGROUND).all()
    assert (sheet[y : y + 64, x + 52 : x + 64] == BACKGROUND).all()


def test_tiles_keep_their_aspect_ratio_and_large_ones_are_reduced() -> None:
    wide = np.full((8, 16), 200, dtype=np.uint8)  # 2:1 -> 64 x 32, centered vertically
    large = np.zeros((256, 128, 3), dtype=np.uint8)
    large[...] = (10, 120, 250)  # a flat color stays flat through Lanczos
    sheet = contact_sheet([wide, large], columns=2, tile_size=64, border=0)
    tile = sheet[:, :64, 0]
    assert (tile[16:48] == 200).all()
    assert (sheet[:16, :64] == BACKGROUND).all()
    assert (sheet[48:, :64] == BACKGROUND).all()
    assert (sheet[:, 64 + 16 : 64 + 48] == (10, 120, 250)).all()  # 64 x 32, centered
    assert (sheet[:, 64 : 64 + 16] == BACKGROUND).all()


def test_caption_is_drawn_and_widens_the_sheet_when_needed() -> None:
    tile = [np.zeros((8, 8), dtype=np.uint8)]
    plain = contact_sheet(tile, columns=1, tile_size=32, border=2)
    short = contact_sheet(tile, columns=4, tile_size=32, border=2, caption="a")
    long = contact_sheet(tile, columns=1, tile_size=32, border=2, caption="a much longer line")
    assert plain.shape == (36, 36, 3)
    assert short.shape == (36 + CAPTION_HEIGHT, 4 * 32 + 5 * 2, 3)
    assert long.shape[0] == 36 + CAPTION_HEIGHT
    assert long.shape[1] > 36
    for sheet in (short, long):
        strip = sheet[:CAPTION_HEIGHT]
        assert (strip != BACKGROUND).any(axis=2).sum() > 5  # some text
        assert (sheet[CAPTION_HEIGHT + 2 : CAPTION_HEIGHT + 34, 2:34] == 0).all()  # the tile
    assert (long[CAPTION_HEIGHT:, 36:] == BACKGROUND).all()  # the grid stays on the left
    assert contact_sheet(tile, columns=1, tile_size=32, border=2, caption="").shape == (36, 36, 3)


def test_cluster_sheet_puts_the_random_members_on_a_new_row() -> None:
    near = [np.full((8, 8), 10 * (i + 1), dtype=np.uint8) for i in range(3)]
    rand = [np.full((8, 8), 200 + i, dtype=np.uint8) for i in range(2)]
    sheet = cluster_sheet(near, rand, cluster=3, size=178, tile_size=80, border=2)
    assert sheet.shape == (CAPTION_HEIGHT + 2 * 80 + 3 * 2, 3 * 80 + 4 * 2, 3)
    wider = cluster_sheet(near, rand, cluster=3, size=178, tile_size=80, border=2, columns=4)
    assert wider.shape == (CAPTION_HEIGHT + 2 * 80 + 3 * 2, 4 * 80 + 5 * 2, 3)
    for s, columns in ((sheet, 3), (wider, 4)):
        grid = {"columns": columns, "tile_size": 80, "border": 2, "top": CAPTION_HEIGHT}
        for i in range(3):
            y, x = _origin(i, **grid)
            assert (s[y : y + 80, x : x + 80] == 10 * (i + 1)).all()
        for i in range(2):
            y, x = _origin(columns + i, **grid)
            assert (s[y : y + 80, x : x + 80] == 200 + i).all()
    y, x = _origin(3, columns=4, tile_size=80, border=2, top=CAPTION_HEIGHT)
    assert (wider[y : y + 80, x : x + 80] == BACKGROUND).all()  # row one's unused cell
    # The caption says which cluster, how big, and what is shown.
    caption = "cluster 3 · 178 images · nearest 3, random 2"
    expected = contact_sheet(
        [*near, None, *rand], columns=4, tile_size=80, border=2, caption=caption
    )
    np.testing.assert_array_equal(wider, expected)
    one = cluster_sheet(near[:1], [], cluster=7, size=1, tile_size=80)
    expected = contact_sheet(
        near[:1], columns=1, tile_size=80, caption="cluster 7 · 1 image · nearest 1, random 0"
    )
    np.testing.assert_array_equal(one, expected)
    # The default layout of the image-clusters job: 8 nearest above 8 random.
    digit = np.zeros((8, 8), dtype=np.uint8)
    assert cluster_sheet([digit] * 8, [digit] * 8, cluster=3, size=178).shape == (150, 530, 3)
    # A small cluster: no random members, nearest only.
    assert cluster_sheet(near[:2], [], cluster=0, size=2, tile_size=32).shape[0] == (
        CAPTION_HEIGHT + 32 + 2 * 2
    )


def test_an_empty_cluster_gets_its_caption_over_an_empty_tile() -> None:
    sheet = cluster_sheet([], [], cluster=5, size=0, tile_size=32, border=2)
    assert sheet.shape[0] == CAPTION_HEIGHT + 32 + 2 * 2
    assert sheet.shape[1] > 36  # widened for the caption
    assert (sheet[CAPTION_HEIGHT:] == BACKGROUND).all()
    assert (sheet[:CAPTION_HEIGHT] != BACKGROUND).any()


def test_sheet_encodes_as_a_lossless_png() -> None:
    rng = np.random.default_rng(2)
    sheet = contact_sheet(
        [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)], columns=2, caption="cluster 0 · 1"
    )
    image = _decode(encode_png(sheet))
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), sheet)


@pytest.mark.parametrize(
    ("tiles", "kwargs", "match"),
    [
        ([], {}, "at least one tile; got none"),
        ([np.zeros((4, 4), dtype=np.float64)], {}, r"tiles\[0\] must be uint8"),
        (
            [np.zeros((4, 4), dtype=np.uint8), np.zeros((4, 4, 4), dtype=np.uint8)],
            {},
            r"tiles\[1\] must be a gray \(H, W\) or RGB \(H, W, 3\) image",
        ),
        ([np.zeros((0, 4), dtype=np.uint8)], {}, r"tiles\[0\] must be a gray"),
        ([np.zeros((4, 4), dtype=np.uint8)], {"columns": 0}, "columns must be an integer >= 1"),
        ([np.zeros((4, 4), dtype=np.uint8)], {"tile_size": 0}, "tile_size must be"),
        ([np.zeros((4, 4), dtype=np.uint8)], {"border": -1}, "border must be an integer >= 0"),
    ],
)
def test_sheet_errors(tiles: list[np.ndarray], kwargs: dict[str, Any], match: str) -> None:
    kwargs = {"columns": 2, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        contact_sheet(tiles, **kwargs)


def test_cluster_sheet_errors() -> None:
    digit = np.zeros((8, 8), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match="size must be an integer >= 0"):
        cluster_sheet([digit], [], cluster=0, size=-1)
    with pytest.raises(InvalidInputError, match="columns must be"):
        cluster_sheet([digit], [], cluster=0, size=1, columns=0)
