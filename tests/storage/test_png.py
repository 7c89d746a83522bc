"""kmflow's own PNG paths: the fast RGB decoder agrees with Pillow, or hands the file to it.

Every file is built here: by Pillow (adaptive filters, several IDAT chunks), or by a small
writer below that applies one chosen scanline filter to every row, so each of the five
filter types is decoded on its own, at widths and heights down to one pixel.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kmflow.errors import ImageDecodeError
from kmflow.storage import png
from kmflow.storage.images import decode_image

LIMIT = 89_478_485


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filtered_png(rgb: np.ndarray, kind: int, extra: list[bytes] | None = None) -> bytes:
    """An 8-bit RGB PNG whose every scanline uses filter ``kind`` (0-4)."""
    h, w, _ = rgb.shape
    x = rgb.reshape(h, 3 * w).astype(np.int64)
    up = np.vstack([np.zeros((1, 3 * w), np.int64), x[:-1]])
    left = np.hstack([np.zeros((h, 3), np.int64), x[:, :-3]])
    up_left = np.hstack([np.zeros((h, 3), np.int64), up[:, :-3]])
    pred = [0 * x, left, up, (left + up) // 2, _paeth(left, up, up_left)][kind]
    rows = np.hstack([np.full((h, 1), kind), (x - pred) % 256]).astype(np.uint8)
    z = zlib.compress(rows.tobytes())
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"".join(
        [
            png.SIGNATURE,
            _chunk(b"IHDR", header),
            *(extra or []),
            _chunk(b"IDAT", z[: len(z) // 2]),  # split: the stream spans two chunks
            _chunk(b"IDAT", z[len(z) // 2 :]),
            _chunk(b"IEND", b""),
        ]
    )


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 7), (9, 1), (13, 17)])
def test_every_filter_type_decodes_to_the_pixels(kind: int, h: int, w: int) -> None:
    rgb = np.random.default_rng(kind * 100 + h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    data = _filtered_png(rgb, kind)
    fast = png.decode_rgb8(data, LIMIT)
    assert fast is not None
    np.testing.assert_array_equal(fast, rgb)
    with Image.open(io.BytesIO(data)) as im:  # the writer above is right: Pillow agrees
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), rgb)


def test_pillow_written_photos_decode_exactly_as_pillow_decodes_them() -> None:
    """Pillow's adaptive filters mix all five types; big enough for several IDAT chunks."""
    y, x = np.mgrid[0:300, 0:401]
    rng = np.random.default_rng(0)
    rgb = np.stack([x % 256, (y * 3) % 256, (x * y) % 256], -1).astype(np.uint8)
    rgb[100:200] = rng.integers(0, 256, (100, 401, 3), dtype=np.uint8)
    for level in (1, 6, 9):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=level)
        data = buffer.getvalue()
        assert data.count(b"IDAT") > 1
        fast = png.decode_rgb8(data, LIMIT)
        assert fast is not None
        np.testing.assert_array_equal(fast, rgb)
        assert fast.flags.writeable
        assert fast.flags.c_contiguous
        np.testing.assert_array_equal(decode_image(data, max_pixels=LIMIT), rgb)


def _with(data: bytes, chunk: bytes) -> bytes:
    """``data`` with ``chunk`` inserted after IHDR."""
    at = len(png.SIGNATURE) + 25
    return data[:at] + chunk + data[at:]


def test_files_it_does_not_handle_go_to_pillow() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    plain = _filtered_png(rgb, 4)
    exif_text = _chunk(b"tEXt", b"Raw profile type exif\0\nexif\n 0\n")
    others = {
        "transparency": _with(plain, _chunk(b"tRNS", b"\0\1\0\2\0\3")),
        "eXIf": _with(plain, _chunk(b"eXIf", b"MM\0*\0\0\0\x08\0\0")),
        "exif in text": _with(plain, exif_text),
        "bad CRC": plain[:-20] + bytes([plain[-20] ^ 1]) + plain[-19:],
        "no IEND": plain[:-12],
        "truncated": plain[:40],
    }
    for name, data in others.items():
        assert png.decode_rgb8(data, LIMIT) is None, name
    for mode in ("L", "RGBA", "P", "I;16"):  # other color types and depths
        buffer = io.BytesIO()
        Image.new(mode, (4, 3)).save(buffer, format="PNG")
        assert png.decode_rgb8(buffer.getvalue(), LIMIT) is None, mode
    h, w, _ = rgb.shape
    adam7 = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1))  # interlaced
    assert png.decode_rgb8(plain[:8] + adam7 + plain[33:], LIMIT) is None
    assert png.decode_rgb8(plain, 29) is None  # over the limit: Pillow's path says why
    # A text chunk that is not EXIF is no reason to defer.
    fast = png.decode_rgb8(_with(plain, _chunk(b"tEXt", b"Software\0kmflow")), LIMIT)
    assert fast is not None
    np.testing.assert_array_equal(fast, rgb)


def test_corrupt_pngs_keep_their_pillow_errors() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    plain = _filtered_png(rgb, 1)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(plain[:-30], max_pixels=LIMIT)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(plain, max_pixels=29)
    # An unknown filter type (5) is refused by the fast path and reported by Pillow.
    h, w = 2, 2
    rows = np.zeros((h, 1 + 3 * w), np.uint8)
    rows[:, 0] = 5
    bad = (
        png.SIGNATURE
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows.tobytes()))
        + _chunk(b"IEND", b"")
    )
    assert png.decode_rgb8(bad, LIMIT) is None
    with pytest.raises(ImageDecodeError):
        decode_image(bad, max_pixels=LIMIT)
