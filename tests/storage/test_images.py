"""Image discovery, decoding and reading: formats, modes, orientation, bad input, backends.

Images are generated with Pillow in each test (nothing is downloaded); expected pixel values
are computed by hand from the documented rules (composite over white, ``>> 8`` for 16 bits).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from PIL import Image, ImageFile

from kmflow.errors import (
    ImageDecodeError,
    InvalidInputError,
    SourceNotFoundError,
)
from kmflow.storage.images import (
    IMAGE_EXTENSIONS,
    DecodedImage,
    ImageSource,
    check_relpath,
    decode_image,
    discover_images,
    encode_png,
    encode_png_indexed,
    read_image,
)

LIMIT = 89_478_485  # the default KMFLOW_STORAGE__MAX_IMAGE_PIXELS


def _rgb(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """A gradient: JPEG keeps it within a few levels."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)],
        axis=-1,
    ).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width x height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _read(path: Path, max_pixels: int = LIMIT) -> DecodedImage:
    return read_image(ImageSource(str(path), path.name), max_pixels=max_pixels)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("fmt", "suffix", "params"),
    [
        ("PNG", ".png", {}),
        ("TIFF", ".tif", {}),
        ("TIFF", ".tiff", {"compression": "tiff_lzw"}),
        ("WEBP", ".webp", {"lossless": True}),
        ("BMP", ".bmp", {}),
    ],
)
def test_lossless_formats_roundtrip_exactly(
    tmp_path: Path, fmt: str, suffix: str, params: dict[str, Any]
) -> None:
    rgb = _rgb()
    path = _write(tmp_path / f"img{suffix}", _save(Image.fromarray(rgb), fmt, **params))
    result = _read(path)
    assert result.error is None
    assert result.ok
    assert (result.height, result.width) == (24, 32)
    assert result.pixels is not None
    assert result.pixels.shape == (24 * 32, 3)
    assert result.pixels.dtype == np.uint8
    np.testing.assert_array_equal(result.pixels.reshape(24, 32, 3), rgb)
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_jpeg_roundtrip_approximately(tmp_path: Path) -> None:
    rgb = _smooth_rgb()
    path = _write(tmp_path / "img.jpg", _save(Image.fromarray(rgb), "JPEG", quality=95))
    result = _read(path)
    assert result.error is None
    assert result.pixels is not None
    decoded = result.pixels.reshape(48, 64, 3).astype(int)
    diff = np.abs(decoded - rgb.astype(int))
    assert diff.mean() < 2.0
    assert diff.max() < 24


def test_gif_first_frame_of_animation(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250]
    colors = np.array(palette, dtype=np.uint8).reshape(4, 3)
    rng = np.random.default_rng(1)
    frames = []
    indices = []
    for _ in range(3):
        index = rng.integers(0, 4, (10, 12), dtype=np.uint8)
        frame = Image.fromarray(index, mode="P")
        frame.putpalette(palette)
        frames.append(frame)
        indices.append(index)
    assert not np.array_equal(indices[0], indices[1])
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    path = _write(tmp_path / "anim.gif", data)
    result = _read(path)
    assert result.error is None
    assert result.pixels is not None
    np.testing.assert_array_equal(result.pixels.reshape(10, 12, 3), colors[indices[0]])


def test_decode_returns_writable_contiguous_array() -> None:
    rgb = decode_image(encode_png(_rgb()), max_pixels=LIMIT)
    assert rgb.flags.c_contiguous
    assert rgb.flags.writeable
    assert rgb.shape == (24, 32, 3)
    assert rgb.dtype == np.uint8


# --------------------------------------------------------------------------- modes


def _decode(image: Image.Image, fmt: str = "PNG", **params: Any) -> np.ndarray:
    data = _save(image, fmt, **params)
    assert Image.open(io.BytesIO(data)).mode == image.mode, "the file must keep the mode"
    return decode_image(data, max_pixels=LIMIT)


def test_rgba_composited_over_white() -> None:
    rgba = np.array(
        [[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128], [10, 20, 30, 51]]], dtype=np.uint8
    )
    rgb = _decode(Image.fromarray(rgba, mode="RGBA"))
    # out = round((c * a + 255 * (255 - a)) / 255)
    expected = [[[255, 0, 0], [255, 255, 255], [127, 127, 255], [206, 208, 210]]]
    np.testing.assert_array_equal(rgb, np.array(expected, dtype=np.uint8))


def test_la_composited_over_white() -> None:
    la = np.array([[[100, 0], [100, 255], [0, 128]]], dtype=np.uint8)
    rgb = _decode(Image.fromarray(la, mode="LA"))
    np.testing.assert_array_equal(rgb[0, :, 0], [255, 100, 127])
    np.testing.assert_array_equal(rgb, np.repeat(rgb[..., :1], 3, axis=2))


def test_l_gray_replicated() -> None:
    gray = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    rgb = _decode(Image.fromarray(gray, mode="L"))
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, axis=2))


def test_bilevel_is_black_and_white() -> None:
    image = Image.new("1", (3, 2), 0)
    image.putpixel((1, 0), 1)
    image.putpixel((2, 1), 1)
    rgb = _decode(image)
    expected = np.zeros((2, 3, 3), dtype=np.uint8)
    expected[0, 1] = expected[1, 2] = 255
    np.testing.assert_array_equal(rgb, expected)


def test_palette_lookup() -> None:
    image = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    rgb = _decode(image)
    expected = [[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [40, 50, 60]]]
    np.testing.assert_array_equal(rgb, np.array(expected, dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composited_over_white(fmt: str) -> None:
    image = Image.fromarray(np.array([[0, 1], [2, 0]], dtype=np.uint8), mode="P")
    image.putpalette([0, 0, 0, 200, 10, 20, 5, 6, 7])
    image.info["transparency"] = 0
    rgb = _decode(image, fmt, transparency=0)
    expected = [[[255, 255, 255], [200, 10, 20]], [[5, 6, 7], [255, 255, 255]]]
    np.testing.assert_array_equal(rgb, np.array(expected, dtype=np.uint8))


def test_png_palette_alpha_composited_over_white() -> None:
    # A PNG palette with per-entry alpha (tRNS holding several values).
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    rgb = _decode(image, "PNG", transparency=bytes([255, 0, 128]))
    np.testing.assert_array_equal(rgb, [[[255, 0, 0], [255, 255, 255], [127, 127, 255]]])


def test_rgb_with_transparent_color_composited_over_white() -> None:
    rgb_in = np.array([[[1, 2, 3], [9, 9, 9]]], dtype=np.uint8)
    rgb = _decode(Image.fromarray(rgb_in), "PNG", transparency=(9, 9, 9))
    np.testing.assert_array_equal(rgb, [[[1, 2, 3], [255, 255, 255]]])


def test_pa_composited_over_white() -> None:
    image = Image.new("PA", (2, 1))
    image.putpalette([10, 20, 30, 40, 50, 60])
    image.putpixel((0, 0), (0, 255))
    image.putpixel((1, 0), (1, 0))
    rgb = decode_image(_save(image.convert("RGBA"), "PNG"), max_pixels=LIMIT)
    np.testing.assert_array_equal(rgb, [[[10, 20, 30], [255, 255, 255]]])


_SIXTEEN = np.array([[0, 255, 256, 0x1234, 0xFFFF]], dtype=np.uint16)
_SIXTEEN_EXPECTED = np.array([[0, 0, 1, 0x12, 0xFF]], dtype=np.uint8)


def test_uint16_png_keeps_high_byte() -> None:
    image = Image.fromarray(_SIXTEEN)
    assert image.mode == "I;16"
    rgb = _decode(image, "PNG")
    np.testing.assert_array_equal(rgb, np.repeat(_SIXTEEN_EXPECTED[..., None], 3, axis=2))


def test_uint16_big_endian_tiff_keeps_high_byte() -> None:
    image = Image.fromarray(_SIXTEEN.astype(">u2"))
    assert image.mode == "I;16B"
    rgb = _decode(image, "TIFF")
    np.testing.assert_array_equal(rgb, np.repeat(_SIXTEEN_EXPECTED[..., None], 3, axis=2))


def test_int32_clipped_to_16_bits_then_high_byte() -> None:
    image = Image.fromarray(np.array([[-5, 0, 300, 0x1234, 70_000]], dtype=np.int32))
    assert image.mode == "I"
    rgb = _decode(image, "TIFF")
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 1, 0x12, 255])


def test_cmyk_converted() -> None:
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 128, 0, 0]]], np.uint8)
    rgb = _decode(Image.fromarray(cmyk, mode="CMYK"), "TIFF")
    # Pillow's conversion: channel = 255 - min(255, color + black).
    expected = [[[255, 255, 255], [0, 255, 255], [0, 0, 0], [255, 127, 255]]]
    np.testing.assert_array_equal(rgb, np.array(expected, dtype=np.uint8))


def test_float_clipped_and_rounded() -> None:
    values = np.array([[-3.2, 0.4, 100.6, 254.5, 300.0, np.nan]], dtype=np.float32)
    image = Image.fromarray(values)
    assert image.mode == "F"
    rgb = _decode(image, "TIFF")
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 101, 254, 255, 0])


# --------------------------------------------------------------------------- EXIF orientation


def test_exif_orientation_applied() -> None:
    # Stored 64 wide x 32 high, in quadrants; Orientation=6 means "rotate 90° clockwise".
    red, green, blue, white = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
    stored = np.zeros((32, 64, 3), dtype=np.uint8)
    stored[:16, :32], stored[:16, 32:] = red, green
    stored[16:, :32], stored[16:, 32:] = blue, white
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    rgb = decode_image(data, max_pixels=LIMIT)
    assert rgb.shape == (64, 32, 3)
    # Clockwise: bottom-left goes to top-left, top-left to top-right, and so on.
    quadrant_centres = {
        (16, 8): blue,  # top-left
        (16, 24): red,  # top-right
        (48, 8): white,  # bottom-left
        (48, 24): green,  # bottom-right
    }
    for (row, col), color in quadrant_centres.items():
        assert np.abs(rgb[row, col].astype(int) - color).max() < 12, (row, col)


def test_no_orientation_tag_keeps_shape() -> None:
    rgb = decode_image(_save(Image.fromarray(_smooth_rgb()), "JPEG"), max_pixels=LIMIT)
    assert rgb.shape == (48, 64, 3)


# --------------------------------------------------------------------------- bad input


def test_decode_empty() -> None:
    with pytest.raises(ImageDecodeError, match=r"^empty file \(0 bytes\)$"):
        decode_image(b"", max_pixels=LIMIT)


def test_decode_not_an_image() -> None:
    with pytest.raises(ImageDecodeError, match=r"^not an image \(cannot identify format\)$"):
        decode_image(b"hello, this is text\n", max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP", "GIF", "BMP"])
def test_decode_truncated(fmt: str) -> None:
    data = _save(Image.fromarray(_rgb(64, 64)), fmt)
    with pytest.raises(ImageDecodeError, match=r"^truncated or corrupt image data: "):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def test_decode_truncated_inside_png_header() -> None:
    data = encode_png(_rgb())
    with pytest.raises(ImageDecodeError, match=r"^truncated or corrupt image data: PNG"):
        decode_image(data[:40], max_pixels=LIMIT)


def test_decode_corrupt_png_data() -> None:
    data = bytearray(encode_png(_rgb()))
    idat = data.index(b"IDAT")
    data[idat + 10 : idat + 60] = bytes(50)  # zeros over the compressed stream
    with pytest.raises(ImageDecodeError, match=r"^truncated or corrupt image data: "):
        decode_image(bytes(data), max_pixels=LIMIT)


def test_decode_zero_size() -> None:
    with pytest.raises(ImageDecodeError, match=r"^zero-size image \(0 x 5 pixels\)$"):
        decode_image(_png_claiming(0, 5), max_pixels=LIMIT)


def test_decode_over_small_limit() -> None:
    data = encode_png(_rgb(10, 10))
    assert decode_image(data, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=99)
    assert str(info.value) == (
        "image has 100 pixels, over the limit of 99 (raise KMFLOW_STORAGE__MAX_IMAGE_PIXELS)"
    )


def test_pixel_limit_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_load)
    before = Image.MAX_IMAGE_PIXELS
    # 120 M pixels: over kmflow's limit and Pillow's warning threshold (no warning escapes).
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_png_claiming(12_000, 10_000), max_pixels=LIMIT)
    assert str(info.value) == (
        "image has 120,000,000 pixels, over the limit of 89,478,485 "
        "(raise KMFLOW_STORAGE__MAX_IMAGE_PIXELS)"
    )
    # 2.5 G pixels: over Pillow's own hard limit too; still kmflow's message.
    with pytest.raises(ImageDecodeError, match=r"^image has 2,500,000,000 pixels, over the limit"):
        decode_image(_png_claiming(50_000, 50_000), max_pixels=LIMIT)
    assert before == Image.MAX_IMAGE_PIXELS


def test_pillow_hard_limit_reported_when_ours_is_higher() -> None:
    with pytest.raises(ImageDecodeError, match="Pillow's hard size limit"):
        decode_image(_png_claiming(50_000, 50_000), max_pixels=10**10)


def test_between_pillow_thresholds_is_kmflow_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    # Over Pillow's warning threshold but under kmflow's raised limit: no warning escapes,
    # and the failure is about the (fake) pixel data, not the size.
    with pytest.raises(ImageDecodeError, match=r"^truncated or corrupt image data"):
        decode_image(_png_claiming(12_000, 10_000), max_pixels=150_000_000)


def test_max_pixels_must_be_positive() -> None:
    with pytest.raises(InvalidInputError, match="max_pixels=0"):
        decode_image(encode_png(_rgb()), max_pixels=0)
    with pytest.raises(InvalidInputError, match="max_pixels=0"):
        read_image(ImageSource("/nowhere.png", "nowhere.png"), max_pixels=0)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", r"^empty file \(0 bytes\)$"),
        ("text.png", b"not a picture\n", r"^not an image \(cannot identify format\)$"),
        ("cut.png", encode_png(_rgb())[:300], r"^truncated or corrupt image data: "),
        (
            "cut.jpg",
            _save(Image.fromarray(_smooth_rgb()), "JPEG")[:400],
            r"^truncated or corrupt image data: ",
        ),
        ("huge.png", _png_claiming(12_000, 10_000), r"^image has 120,000,000 pixels"),
    ],
)
def test_read_image_reports_bad_files(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = _write(tmp_path / name, content)
    result = _read(path)
    assert result.pixels is None
    assert not result.ok
    assert result.error is not None
    assert (result.height, result.width) == (0, 0)
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert re.search(reason, result.error), result.error


def test_read_image_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "a.png"
    result = _read(missing)
    assert result.pixels is None
    assert result.sha256 is None
    assert result.error is not None
    assert "not found" in result.error
    assert str(missing) in result.error


def test_read_image_directory_and_bad_protocol(tmp_path: Path) -> None:
    as_dir = read_image(ImageSource(str(tmp_path), "x"), max_pixels=LIMIT)
    assert as_dir.error is not None
    assert "directory" in as_dir.error
    bad = read_image(ImageSource("nosuchproto://b/a.png", "a.png"), max_pixels=LIMIT)
    assert bad.error is not None
    assert "nosuchproto://b/a.png" in bad.error


def test_read_image_result_pickles(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.png", encode_png(_rgb()))
    result = pickle.loads(pickle.dumps(_read(path)))
    assert result.source == ImageSource(str(path), "a.png")
    assert result.pixels is not None
    np.testing.assert_array_equal(result.pixels.reshape(24, 32, 3), _rgb())
    assert pickle.loads(pickle.dumps(read_image)) is read_image


# --------------------------------------------------------------------------- encode_png


def test_encode_png_roundtrip() -> None:
    rgb = _rgb(7, 5)
    data = encode_png(rgb)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(decode_image(data, max_pixels=35), rgb)
    np.testing.assert_array_equal(
        decode_image(encode_png(rgb[:, ::-1]), max_pixels=35), rgb[:, ::-1]
    )


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4, 4, 3), np.float64),
    ],
)
def test_encode_png_rejects(bad: np.ndarray) -> None:
    with pytest.raises(InvalidInputError):
        encode_png(bad)


# --------------------------------------------------------------------------- discovery


@pytest.fixture
def photo_tree(tmp_path: Path) -> Path:
    """A folder with nested images, odd extensions and non-images."""
    root = tmp_path / "photos"
    png = encode_png(_rgb(4, 4))
    for rel in [
        "a.png",
        "b.JPG",
        "sub/c.jpeg",
        "sub/deeper/d.TIFF",
        "sub/deeper/e.webp",
        "sub/f.bmp",
        "g.gif",
        "h.tif",
    ]:
        _write(root / rel, png)
    _write(root / "notes.txt", b"text")
    _write(root / "sub" / "a.png.bak", b"backup")
    _write(root / "sub" / "noext", b"x")
    return root


_TREE_IMAGES = [
    "a.png",
    "b.JPG",
    "g.gif",
    "h.tif",
    "sub/c.jpeg",
    "sub/deeper/d.TIFF",
    "sub/deeper/e.webp",
    "sub/f.bmp",
]


def test_image_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"} == set(
        IMAGE_EXTENSIONS
    )


def test_discover_folder_recursive(photo_tree: Path) -> None:
    found = discover_images(photo_tree)
    assert [s.relpath for s in found] == _TREE_IMAGES
    assert [s.url for s in found] == [f"{photo_tree.as_posix()}/{rel}" for rel in _TREE_IMAGES]
    assert discover_images(str(photo_tree) + "/") == found
    assert discover_images(str(photo_tree)) == found  # deterministic


def test_discover_relative_folder_gives_absolute_urls(
    photo_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(photo_tree.parent)
    found = discover_images("photos")
    assert found == discover_images(photo_tree)
    assert all(s.url.startswith("/") for s in found)


def test_discover_file_url(photo_tree: Path) -> None:
    found = discover_images(f"file://{photo_tree.as_posix()}/sub")
    assert [s.relpath for s in found] == ["c.jpeg", "deeper/d.TIFF", "deeper/e.webp", "f.bmp"]
    assert found[0].url == f"file://{photo_tree.as_posix()}/sub/c.jpeg"
    assert read_image(found[0], max_pixels=LIMIT).ok


def test_discover_pattern_on_names(photo_tree: Path) -> None:
    found = discover_images(photo_tree, pattern="*.txt")
    assert [s.relpath for s in found] == ["notes.txt"]
    # A non-image selected by a pattern reaches decoding and is reported as bad input.
    result = read_image(found[0], max_pixels=LIMIT)
    assert result.error == "not an image (cannot identify format)"
    assert [s.relpath for s in discover_images(photo_tree, pattern="a.png*")] == [
        "a.png",
        "sub/a.png.bak",
    ]
    assert discover_images(photo_tree, pattern="*.jpg") == []  # case-sensitive


def test_discover_pattern_on_relative_paths(photo_tree: Path) -> None:
    found = discover_images(photo_tree, pattern="sub/**/*.webp")
    assert [s.relpath for s in found] == ["sub/deeper/e.webp"]
    assert [s.relpath for s in discover_images(photo_tree, pattern="sub/*")] == [
        "sub/a.png.bak",
        "sub/c.jpeg",
        "sub/f.bmp",
        "sub/noext",
    ]


@pytest.mark.parametrize("pattern", ["", "/", "a**b"])
def test_discover_bad_pattern(photo_tree: Path, pattern: str) -> None:
    with pytest.raises(InvalidInputError, match="pattern="):
        discover_images(photo_tree, pattern=pattern)


def test_discover_glob(photo_tree: Path) -> None:
    found = discover_images(f"{photo_tree}/**/*.png")
    assert [s.relpath for s in found] == ["a.png"]
    found = discover_images(f"{photo_tree}/sub/*")
    # A glob keeps everything it matches (files only), relative to its fixed part.
    assert [s.relpath for s in found] == ["a.png.bak", "c.jpeg", "f.bmp", "noext"]
    found = discover_images(f"{photo_tree}/**/*.[tT][iI][fF]*")
    assert [s.relpath for s in found] == ["h.tif", "sub/deeper/d.TIFF"]
    assert found[1].url == f"{photo_tree.as_posix()}/sub/deeper/d.TIFF"


def test_discover_names_with_glob_characters_are_literal(tmp_path: Path) -> None:
    folder = tmp_path / "album [2024]"
    _write(folder / "photo [1].png", encode_png(_rgb(2, 2)))
    _write(folder / "photo 1.png", encode_png(_rgb(2, 2)))
    assert [s.relpath for s in discover_images(folder / "photo [1].png")] == ["photo [1].png"]
    assert [s.relpath for s in discover_images(folder)] == ["photo 1.png", "photo [1].png"]
    # Not existing as written, the same characters make a glob: [1] matches "1".
    assert [s.relpath for s in discover_images(f"{tmp_path}/*/photo [1]*")] == [
        "album [2024]/photo 1.png"
    ]


def test_discover_glob_with_pattern(photo_tree: Path) -> None:
    found = discover_images(f"{photo_tree}/sub/**", pattern="*.bmp")
    assert [s.relpath for s in found] == ["f.bmp"]


def test_discover_glob_matching_nothing(photo_tree: Path) -> None:
    assert discover_images(f"{photo_tree}/**/*.heic") == []


def test_discover_glob_missing_root(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="does not exist") as info:
        discover_images(f"{tmp_path}/nope/*.png")
    assert f"{tmp_path}/nope/*.png" in str(info.value)


def test_discover_single_files(photo_tree: Path) -> None:
    assert discover_images(photo_tree / "sub" / "c.jpeg") == [
        ImageSource(f"{photo_tree.as_posix()}/sub/c.jpeg", "c.jpeg")
    ]
    # Named directly, a non-image is kept (and fails later at decoding).
    assert [s.relpath for s in discover_images(photo_tree / "notes.txt")] == ["notes.txt"]


def test_discover_list_sorted_and_deduplicated(photo_tree: Path) -> None:
    found = discover_images(
        [photo_tree / "sub" / "f.bmp", photo_tree / "sub", str(photo_tree / "a.png")]
    )
    assert [(Path(s.url).relative_to(photo_tree).as_posix(), s.relpath) for s in found] == [
        ("a.png", "a.png"),
        ("sub/c.jpeg", "c.jpeg"),
        ("sub/deeper/d.TIFF", "deeper/d.TIFF"),
        ("sub/deeper/e.webp", "deeper/e.webp"),
        ("sub/f.bmp", "f.bmp"),  # the first item's relpath wins
    ]


def test_discover_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert discover_images(tmp_path / "empty") == []


def test_discover_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(SourceNotFoundError) as info:
        discover_images(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(SourceNotFoundError, match="no/such"):
        discover_images([tmp_path, missing])


def test_discover_nothing_given() -> None:
    with pytest.raises(InvalidInputError, match="no image source"):
        discover_images([])


@pytest.fixture
def memory_photos() -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Images under a fresh ``memory://`` folder: (folder URL, relpath -> pixels)."""
    root = f"/kmflow-test-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("memory")
    images = {"x.png": _rgb(3, 4, seed=1), "deep/y.png": _rgb(5, 2, seed=2)}
    for rel, rgb in images.items():
        fs.pipe_file(f"{root}/{rel}", encode_png(rgb))
    fs.pipe_file(f"{root}/readme.md", b"# hi")
    yield f"memory://{root}", images
    fs.rm(root, recursive=True)


def test_discover_and_read_memory(memory_photos: tuple[str, dict[str, np.ndarray]]) -> None:
    url, images = memory_photos
    found = discover_images(url + "/")
    assert [s.relpath for s in found] == ["deep/y.png", "x.png"]
    assert found[1].url == f"memory://{url.removeprefix('memory://')}/x.png"
    for source in found:
        result = read_image(source, max_pixels=LIMIT)
        assert result.pixels is not None
        np.testing.assert_array_equal(
            result.pixels.reshape(result.height, result.width, 3), images[source.relpath]
        )
    assert [s.relpath for s in discover_images(url + "/**/y.*")] == ["deep/y.png"]
    with pytest.raises(SourceNotFoundError, match="memory://"):
        discover_images(url + "/missing/")


# --------------------------------------------------------------------------- S3 (loopback)


@pytest.mark.integration
def test_discover_and_read_s3(s3_bucket: tuple[str, dict[str, Any]]) -> None:
    import s3fs

    bucket_url, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    bucket = bucket_url.removeprefix("s3://")
    images = {
        "a.png": _rgb(6, 7, seed=3),
        "nested/b.png": _rgb(2, 9, seed=4),
        "nested/deeper/c.webp": _rgb(4, 4, seed=5),
    }
    for rel, rgb in images.items():
        fmt = "WEBP" if rel.endswith(".webp") else "PNG"
        params = {"lossless": True} if fmt == "WEBP" else {}
        fs.pipe_file(f"{bucket}/images/{rel}", _save(Image.fromarray(rgb), fmt, **params))
    fs.pipe_file(f"{bucket}/images/notes.txt", b"not an image")
    fs.pipe_file(f"{bucket}/other/z.png", encode_png(_rgb(2, 2)))

    found = discover_images(f"{bucket_url}/images/", storage_options=options)
    assert [s.relpath for s in found] == sorted(images)
    assert [s.url for s in found] == [f"{bucket_url}/images/{rel}" for rel in sorted(images)]
    for source in found:
        result = read_image(source, storage_options=options, max_pixels=LIMIT)
        assert result.error is None
        assert result.pixels is not None
        np.testing.assert_array_equal(
            result.pixels.reshape(result.height, result.width, 3), images[source.relpath]
        )

    globbed = discover_images(f"{bucket_url}/images/**/*.png", storage_options=options)
    assert [s.relpath for s in globbed] == ["a.png", "nested/b.png"]
    single = discover_images(f"{bucket_url}/other/z.png", storage_options=options)
    assert single == [ImageSource(f"{bucket_url}/other/z.png", "z.png")]

    # New arrivals are seen by the next discovery (no stale listing cache).
    fs.pipe_file(f"{bucket}/images/late.png", encode_png(_rgb(2, 2)))
    late = discover_images(f"{bucket_url}/images/", storage_options=options)
    assert "late.png" in [s.relpath for s in late]


@pytest.mark.integration
def test_s3_missing_prefix_and_key(s3_bucket: tuple[str, dict[str, Any]]) -> None:
    bucket_url, options = s3_bucket
    with pytest.raises(SourceNotFoundError, match=f"{bucket_url}/nothing-here/"):
        discover_images(f"{bucket_url}/nothing-here/", storage_options=options)
    missing = ImageSource(f"{bucket_url}/images/missing.png", "missing.png")
    result = read_image(missing, storage_options=options, max_pixels=LIMIT)
    assert result.pixels is None
    assert result.sha256 is None
    assert result.error == f"not found: {bucket_url}/images/missing.png"


@pytest.mark.integration
def test_read_image_on_dask_worker_processes(tmp_path: Path, dask_client: Any) -> None:
    sources = []
    for i in range(3):
        path = _write(tmp_path / f"{i}.png", encode_png(_rgb(5, 6, seed=i)))
        sources.append(ImageSource(str(path), path.name))
    sources.append(ImageSource(str(tmp_path / "missing.png"), "missing.png"))
    futures = dask_client.map(read_image, sources, max_pixels=LIMIT, pure=False)
    results = dask_client.gather(futures)
    for i, result in enumerate(results[:3]):
        assert result.pixels is not None
        np.testing.assert_array_equal(result.pixels.reshape(5, 6, 3), _rgb(5, 6, seed=i))
    assert results[3].error is not None
    assert "not found" in results[3].error


@pytest.mark.parametrize(
    ("k", "depth"), [(1, 1), (2, 1), (3, 2), (5, 4), (16, 4), (17, 8), (256, 8)]
)
def test_encode_png_indexed_round_trips_to_palette_colors(k: int, depth: int) -> None:
    rng = np.random.default_rng(k)
    palette = rng.integers(0, 256, size=(k, 3), dtype=np.uint8)
    labels = rng.integers(0, k, size=(7, 9))
    data = encode_png_indexed(labels, palette)
    assert data[12:16] == b"IHDR"
    assert data[24] == depth  # bits per pixel: the fewest the palette needs
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "P"
        rgb = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(rgb, palette[labels])
    np.testing.assert_array_equal(decode_image(data, max_pixels=100), palette[labels])


def test_encode_png_indexed_rejects_bad_input() -> None:
    palette = np.zeros((3, 3), np.uint8)
    with pytest.raises(InvalidInputError, match=r"labels must lie in \[0, 3\)"):
        encode_png_indexed(np.full((2, 2), 3), palette)
    with pytest.raises(InvalidInputError, match="palette must be"):
        encode_png_indexed(np.zeros((2, 2), int), np.zeros((300, 3), np.uint8))


def test_discover_skips_files_whose_relpath_is_unsafe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    png = encode_png(np.zeros((2, 2, 3), np.uint8))
    _write(tmp_path / "ok.png", png)
    _write(tmp_path / "back\\slash.png", png)  # a legal POSIX name, unsafe as an output path
    with caplog.at_level("WARNING", logger="kmflow.storage.images"):
        found = discover_images(tmp_path)
    assert [s.relpath for s in found] == ["ok.png"]
    assert "back\\\\slash.png" in caplog.text
    assert "contains a backslash" in caplog.text


@pytest.mark.parametrize("relpath", ["a.png", "2024/07/beach.JPG", "x y/[1].png", "a:b.png"])
def test_safe_relpaths_accepted(relpath: str) -> None:
    assert check_relpath(relpath) == relpath
    assert ImageSource("memory://x/" + relpath, relpath).relpath == relpath


def test_discover_sources_lists_each_image_once_when_asked(tmp_path: Path) -> None:
    from kmflow.storage.images import discover_sources

    (tmp_path / "sub").mkdir()
    for name in ("a.png", "sub/b.png"):
        Image.new("RGB", (2, 2)).save(tmp_path / name)
    roots = [str(tmp_path), str(tmp_path / "sub" / "b.png")]
    every = discover_sources(roots)
    once = discover_sources(roots, unique=True)
    assert [s.relpath for s in every] == ["a.png", "sub/b.png", "b.png"]
    assert [s.relpath for s in once] == ["a.png", "sub/b.png"]
