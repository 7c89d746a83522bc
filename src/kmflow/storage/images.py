"""Finding images (local folders, globs, any fsspec URL) and decoding them to RGB pixels.

Three steps, each usable alone:

- :func:`discover_images` lists the image files a source names, as :class:`ImageSource`
  records (a URL plus the path relative to the source root, used to name outputs);
- :func:`read_image` reads, hashes and decodes one of them into a :class:`DecodedImage`,
  turning every problem with the input into an ``error`` string instead of an exception (it
  runs inside Dask tasks: one bad image must not sink a batch);
- :func:`decode_image` / :func:`encode_png` convert between file bytes and ``(h, w, 3)``
  uint8 arrays.

Examples
--------
>>> import numpy as np
>>> rgb = np.zeros((2, 3, 3), dtype=np.uint8)
>>> decode_image(encode_png(rgb), max_pixels=100).shape
(2, 3, 3)
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import re
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fsspec.utils import glob_translate
from PIL import Image, ImageOps, UnidentifiedImageError

from kmflow.errors import (
    ImageDecodeError,
    ImageTooLargeError,
    InvalidInputError,
    KmflowError,
    SourceNotFoundError,
)
from kmflow.storage import png
from kmflow.storage.fs import get_fs, read_bytes, redact_url, storage_errors, url_of

__all__ = [
    "IMAGE_EXTENSIONS",
    "DecodedImage",
    "ImageRecord",
    "ImageSource",
    "check_relpath",
    "decode_image",
    "discover_images",
    "discover_sources",
    "encode_png",
    "encode_png_indexed",
    "image_matcher",
    "read_image",
]

logger = logging.getLogger(__name__)

#: File name extensions (lower case) that folder discovery keeps when no pattern is given.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"}
)

_GLOB_MAGIC = re.compile(r"[*?\[]")
# Pillow's DecompressionBombError message: "Image size (N pixels) exceeds limit of ...".
_PILLOW_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_TRANSPARENCY_MODES = frozenset({"1", "L", "P", "RGB"})
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# A Windows drive ("C:/", "c:\\") at the start of a relative path.
_DRIVE = re.compile(r"^[A-Za-z]:[/\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_relpath(relpath: str) -> str:
    """Return `relpath` if it is a safe relative POSIX path; InvalidInputError otherwise.

    Outputs are named after an image's relpath (``OUT/<relpath>.png``), so it must stay
    inside the output folder on every backend: a non-empty string of ``/``-separated names,
    none of them empty, ``.`` or ``..``; not absolute; no backslash (a separator on Windows),
    no drive (``C:/``), no control characters (NUL, newlines).

    Examples
    --------
    >>> check_relpath("2024/beach.jpg")
    '2024/beach.jpg'
    >>> check_relpath("../etc/passwd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kmflow.errors.InvalidInputError: unsafe image relpath '../etc/passwd': it has a '..' part ...
    """
    if not isinstance(relpath, str) or not relpath:
        raise InvalidInputError(f"an image relpath must be a non-empty string; got {relpath!r}")
    reason = None
    if relpath.startswith("/"):
        reason = "it is absolute"
    elif "\\" in relpath:
        reason = "it contains a backslash"
    elif _DRIVE.match(relpath):
        reason = "it starts with a drive"
    elif _CONTROL.search(relpath):
        reason = "it contains control characters"
    else:
        parts = relpath.split("/")
        if ".." in parts:
            reason = "it has a '..' part"
        elif "." in parts or "" in parts:
            reason = "it has an empty or '.' part"
    if reason is not None:
        raise InvalidInputError(
            f"unsafe image relpath {relpath!r}: {reason} (outputs are named after it, so it "
            "must be a plain relative POSIX path such as 'photos/a.png')"
        )
    return relpath


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class ImageSource:
    """One image file to ingest.

    Attributes
    ----------
    url : str
        Where to read it: an absolute local path when the source was given as a plain path,
        otherwise a full fsspec URL (``s3://bucket/images/a.png``, ``memory:///x/a.png``).
    relpath : str
        POSIX path of the file relative to the root of the source it was found under (the
        folder, or the fixed part of a glob); the file name alone for a file named directly.
        Outputs are named after it (``OUT/<relpath without suffix>.png``), so it is checked
        by :func:`check_relpath`: InvalidInputError for an absolute path, ``..``, a
        backslash, ...
    """

    url: str
    relpath: str

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise InvalidInputError(f"an image URL must be a non-empty string; got {self.url!r}")
        check_relpath(self.relpath)


def discover_sources(
    sources: Sequence[str | os.PathLike[str]],
    *,
    pattern: str | None = None,
    storage_options_for: Callable[[str], dict[str, Any] | None] = lambda url: None,
    unique: bool = False,
) -> list[ImageSource]:
    """Every image of several sources (files, folders, globs, URLs), in the order given.

    What ``kmflow quantize`` and the ingest task both discover with: each source through
    :func:`discover_images` with its own storage options (``storage_options_for(source)``).
    With ``unique``, an image reached through two sources is listed once (its first
    occurrence); without, it is listed each time (the ingest then reports the repeats as
    duplicates).
    """
    found: list[ImageSource] = []
    seen: set[str] = set()
    for source in sources:
        text = os.fspath(source)
        for image in discover_images(
            text, pattern=pattern, storage_options=storage_options_for(text)
        ):
            if unique and image.url in seen:
                continue
            seen.add(image.url)
            found.append(image)
    return found


def discover_images(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    pattern: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[ImageSource]:
    """List the image files that `source` names.

    Parameters
    ----------
    source : str, os.PathLike or sequence of them
        Each item is one of:

        - a file (local path or URL): kept whatever its extension, so that a non-image
          reaches decoding and is reported as bad input;
        - a folder or prefix (``photos/``, ``s3://bucket/images/``, ``memory://x/``):
          searched recursively;
        - a glob (an item containing ``*``, ``?`` or ``[`` that does not exist as
          written): ``photos/**/*.jpg``, ``s3://bucket/2024-*/*.png``; ``**`` matches zero
          or more folders. Every file it matches is kept.
    pattern : str, optional
        Filter for the files found by listing (folders and globs; files named directly are
        always kept). Without ``/`` it is matched against the file name at any depth
        (``"*.png"``); with ``/`` against the path relative to the root (``"2024/**/*.jpg"``).
        Matching is case-sensitive. Without a pattern, folders keep files whose extension is
        one of :data:`IMAGE_EXTENSIONS` (case-insensitive) and globs keep all they match.
    storage_options : dict, optional
        fsspec storage options for every item (see
        :func:`kmflow.storage.fs.storage_options_for`).

    Returns
    -------
    list of ImageSource
        Sorted by URL, each URL once (when two items reach the same file, the first item's
        ``relpath`` is kept). An existing folder with no matching files contributes nothing.

    Raises
    ------
    SourceNotFoundError
        If an item (or the fixed part of a glob) does not exist or cannot be listed; the
        message names it.
    StorageError
        If listing fails for another reason (permissions, network).
    InvalidInputError
        If no source is given, `pattern` is empty or malformed, or a URL's protocol is
        unknown.

    Notes
    -----
    Listings are read fresh (fsspec's listing cache for the root is dropped first), so a
    scheduled run sees images that arrived since the last one. Different items can yield
    the same ``relpath`` (``a/x.png`` and ``b/x.png`` given as two folders); callers that
    name outputs after ``relpath`` should give one root per output folder.
    """
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not items:
        raise InvalidInputError("no image source given (an empty list)")
    matcher = _compile_pattern(pattern)
    found: dict[str, ImageSource] = {}
    for item in items:
        for image in _discover_one(os.fspath(item), matcher, storage_options):
            found.setdefault(image.url, image)
    return sorted(found.values(), key=lambda image: image.url)


@dataclass(frozen=True)
class _Matcher:
    """Which listed files to keep: a pattern (name or relative path) or image extensions."""

    regex: re.Pattern[str] | None
    on_relpath: bool

    def keep(self, relpath: str, *, from_glob: bool) -> bool:
        if self.regex is None:
            if from_glob:
                return True
            return posixpath.splitext(relpath)[1].lower() in IMAGE_EXTENSIONS
        target = relpath if self.on_relpath else posixpath.basename(relpath)
        return self.regex.match(target) is not None


def _compile_pattern(pattern: str | None) -> _Matcher:
    """Validate `pattern` and build the matcher for it."""
    if pattern is None:
        return _Matcher(None, on_relpath=False)
    if not pattern.strip("/"):
        raise InvalidInputError(f"pattern={pattern!r} is empty; give e.g. '*.png' or None")
    cleaned = pattern.strip("/")
    try:
        regex = re.compile(glob_translate(cleaned))
    except (ValueError, re.error) as exc:
        raise InvalidInputError(f"pattern={pattern!r} is not a valid glob: {exc}") from exc
    return _Matcher(regex, on_relpath="/" in cleaned)


def image_matcher(pattern: str | None) -> _Matcher:
    """What :func:`discover_images` keeps of a folder listing with this ``pattern``.

    ``image_matcher(p).keep(relpath, from_glob=False)`` tells whether a file at ``relpath``
    below a source folder would be ingested.
    """
    return _compile_pattern(pattern)


def _discover_one(
    text: str, matcher: _Matcher, storage_options: dict[str, Any] | None
) -> list[ImageSource]:
    """The images one source item names (a file, a folder or a glob)."""
    fs, path = get_fs(text, storage_options)
    with storage_errors("list", text):
        fs.invalidate_cache(path)
        # A name with glob characters that exists as written ("photo [1].jpg") is literal.
        if _GLOB_MAGIC.search(path) and not fs.exists(path):
            return _discover_glob(fs, path, text, matcher)
        if fs.isdir(path):
            listing = fs.find(path, withdirs=False, detail=True)
            return _sources(
                fs,
                text,
                [
                    (p, rel)
                    for p, info in listing.items()
                    if info.get("type") == "file"
                    and matcher.keep(rel := _relative(p, path), from_glob=False)
                ],
            )
        if fs.isfile(path):
            return [ImageSource(url_of(fs, path, text), posixpath.basename(path.rstrip("/")))]
    raise SourceNotFoundError(f"image source not found: {redact_url(text)}")


def _discover_glob(fs: Any, path: str, text: str, matcher: _Matcher) -> list[ImageSource]:
    """The files a glob matches, relative to its fixed leading folders."""
    parts = path.split("/")
    first_magic = next(i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part))
    root = "/".join(parts[:first_magic])
    with storage_errors("list", text):
        if root:
            fs.invalidate_cache(root)
            if not fs.isdir(root):
                raise SourceNotFoundError(
                    f"image source not found: {redact_url(text)} (folder {root!r} does not exist)"
                )
        matches = fs.glob(path, detail=True)
    return _sources(
        fs,
        text,
        [
            (p, rel)
            for p, info in matches.items()
            if info.get("type") == "file"
            and matcher.keep(rel := _relative(p, root), from_glob=True)
        ],
    )


def _sources(fs: Any, text: str, found: list[tuple[str, str]]) -> list[ImageSource]:
    """ImageSources of listed files; a file whose relpath is unsafe is skipped with a warning."""
    sources = []
    for path, rel in found:
        try:
            sources.append(ImageSource(url_of(fs, path, text), rel))
        except InvalidInputError as exc:
            logger.warning("skipping %s: %s", redact_url(url_of(fs, path, text)), exc)
    return sources


def _relative(path: str, root: str) -> str:
    """POSIX path of `path` below `root` (both as the filesystem lists them)."""
    base = root.rstrip("/")
    if not base:
        return path.lstrip("/")
    if path.startswith(base + "/"):
        return path[len(base) + 1 :]
    return posixpath.basename(path)


# --------------------------------------------------------------------------- decoding


def _over_limit(n_pixels: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image has {n_pixels:,} pixels, over the limit of {max_pixels:,} "
        "(raise KMFLOW_STORAGE__MAX_IMAGE_PIXELS)"
    )


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode image file bytes into RGB pixels.

    Parameters
    ----------
    data : bytes
        The content of a PNG, JPEG, TIFF, WebP, BMP or GIF file (other formats Pillow reads
        work too).
    max_pixels : int
        Largest accepted ``width * height``; checked from the header, before any pixel data
        is decoded or allocated.

    Returns
    -------
    numpy.ndarray of shape (height, width, 3), dtype uint8
        The pixels in RGB order, upright (after the EXIF orientation).

    Raises
    ------
    ImageDecodeError
        With the reason: ``"empty file (0 bytes)"``, ``"not an image (cannot identify
        format)"``, ``"truncated or corrupt image data: <Pillow's message>"``, ``"zero-size
        image (...)"``, ``"image has N pixels, over the limit of M (raise
        KMFLOW_STORAGE__MAX_IMAGE_PIXELS)"``, or an unsupported mode.
    InvalidInputError
        If `max_pixels` is below 1.

    Notes
    -----
    - Multi-frame files (animated GIF/WebP, multi-page TIFF): the first frame only.
    - The EXIF orientation tag is applied (``ImageOps.exif_transpose``); a corrupt EXIF
      block is ignored (the pixels are kept as stored). ICC profiles are not applied:
      values are taken as stored.
    - Modes are normalised to RGB uint8:

      * with alpha (RGBA, LA, PA, premultiplied RGBa) and palette / gray / RGB images with a
        transparency entry: composited over white,
        ``out = round((c * a + 255 * (255 - a)) / 255)``, so fully transparent pixels
        become (255, 255, 255) and opaque ones keep their color;
      * L and 1 (bilevel: 0 or 255): gray replicated into three channels; P: palette lookup;
        CMYK, YCbCr, HSV, LAB, RGBX: Pillow's conversion to RGB;
      * 16-bit gray (I;16, I;16B, I;16L) keeps the high byte (``value >> 8``); 32-bit
        integer I (how Pillow may read 16-bit gray PNG/TIFF) is clipped to 0..65535 and
        then shifted the same way;
      * F (32-bit float) is taken as 0..255 intensities: clipped to 0..255 and rounded
        (NaN becomes 0).
    - The limit is kmflow's own: Pillow's global ``PIL.Image.MAX_IMAGE_PIXELS`` is not
      changed and its ``DecompressionBombWarning`` is kept out of the way. Pillow still
      refuses images over twice its limit (about 179 million pixels by default) whatever
      `max_pixels` says; such images are reported as over the limit.
    - Pillow's warnings raised while decoding (corrupt EXIF, palette transparency, the
      bomb warning) are recorded and logged at DEBUG, never raised or shown: Python's
      warning filters are process-wide, so while a decode runs, warnings from other
      threads of the same process are recorded too.
    """
    if max_pixels < 1:
        raise InvalidInputError(f"max_pixels={max_pixels} must be at least 1")
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rgb = _decode(bytes(data), max_pixels)
    for warning in caught:
        logger.debug("Pillow warned while decoding: %s", warning.message)
    return rgb


def _decode(data: bytes, max_pixels: int) -> np.ndarray:
    """:func:`decode_image` on valid arguments, warnings already captured."""
    if data.startswith(png.SIGNATURE):  # the plain 8-bit RGB PNG without Pillow (faster)
        fast = png.decode_rgb8(data, max_pixels)
        if fast is not None:
            return fast
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(_unidentified_reason(data)) from None
    except Image.DecompressionBombError as exc:
        raise _bomb_reason(exc, max_pixels) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"truncated or corrupt image data: {exc}") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"zero-size image ({width} x {height} pixels)")
        if width * height > max_pixels:
            raise _over_limit(width * height, max_pixels)
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            raise _bomb_reason(exc, max_pixels) from exc
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageDecodeError(f"truncated or corrupt image data: {exc}") from exc
        upright = _exif_upright(image)
        return _to_rgb(upright)


def _unidentified_reason(data: bytes) -> str:
    """Why Pillow could not identify `data`: not an image, zero-size, or a broken header.

    Pillow refuses zero-size and header-truncated files as "cannot identify"; a file that
    starts with a known image signature is reported more precisely.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind: str | None = "WebP"
    else:
        kind = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
    if kind is None:
        return "not an image (cannot identify format)"
    size = _header_size(kind, data)
    if size is not None and (size[0] <= 0 or size[1] <= 0):
        return f"zero-size image ({size[0]} x {size[1]} pixels)"
    return f"truncated or corrupt image data: {kind} signature but an unreadable header"


def _header_size(kind: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or BMP header, when present; None otherwise."""
    if kind == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if kind == "BMP" and len(data) >= 26:
        (header_size,) = struct.unpack("<I", data[14:18])
        if header_size == 12:
            width, height = struct.unpack("<HH", data[18:22])
        else:
            width, height = struct.unpack("<ii", data[18:26])
        return int(width), abs(int(height))
    return None


def _bomb_reason(exc: Exception, max_pixels: int) -> ImageDecodeError:
    """The message for Pillow's own hard decompression-bomb refusal."""
    match = _PILLOW_BOMB_PIXELS.search(str(exc))
    if match is not None and int(match.group(1)) > max_pixels:
        return _over_limit(int(match.group(1)), max_pixels)
    return ImageTooLargeError(
        f"image is over Pillow's hard size limit, which kmflow does not change ({exc}); "
        "set PIL.Image.MAX_IMAGE_PIXELS in the worker processes to decode it"
    )


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; keep the image as stored if the EXIF data is corrupt."""
    try:
        # In place: an upright image is not copied (most are).
        ImageOps.exif_transpose(image, in_place=True)
        return image
    except MemoryError:
        raise
    except Exception as exc:
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
        return image


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA over a white background, rounded half up."""
    wide = rgba.astype(np.uint16)
    color, alpha = wide[..., :3], wide[..., 3:]
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray.astype(np.uint8)[..., np.newaxis], 3, axis=2)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Normalise a loaded Pillow image of any mode to ``(h, w, 3)`` uint8 RGB."""
    mode = image.mode
    try:
        if mode == "RGB" and "transparency" not in image.info:
            rgb = np.array(image, dtype=np.uint8)  # a copy: Pillow's buffer is read-only
        elif mode in _ALPHA_MODES or (mode in _TRANSPARENCY_MODES and "transparency" in image.info):
            source = image.convert("LA") if mode == "La" else image
            rgb = _composite_over_white(np.asarray(source.convert("RGBA"), dtype=np.uint8))
        elif mode in _UINT16_MODES:
            rgb = _gray_to_rgb(np.asarray(image).astype(np.uint16) >> 8)
        elif mode == "I":
            wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65_535)
            rgb = _gray_to_rgb(wide >> 8)
        elif mode == "F":
            values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
            rgb = _gray_to_rgb(np.rint(np.clip(values, 0.0, 255.0)))
        else:
            rgb = np.array(image.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:
        raise ImageDecodeError(f"unsupported image mode {mode!r}: {exc}") from exc
    return np.ascontiguousarray(rgb)


# --------------------------------------------------------------------------- read / encode


@dataclass(frozen=True)
class ImageRecord:
    """One committed image: where it came from and where its pixels are.

    Its pixels are rows ``offset : offset + height * width`` of the store, row-major.
    """

    source: str
    relpath: str
    sha256: str
    height: int
    width: int
    offset: int

    @property
    def n_pixels(self) -> int:
        """``height * width``."""
        return self.height * self.width


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """The outcome of reading one image: its pixels, or why there are none.

    Attributes
    ----------
    source : ImageSource
        The image this is about.
    sha256 : str or None
        Hex SHA-256 of the file's bytes; None when the file could not be read.
    height, width : int
        Size in pixels after the EXIF orientation; 0 when there are no pixels.
    pixels : numpy.ndarray of shape (height * width, 3), dtype uint8, or None
        RGB pixels, row-major; None when `error` is set.
    error : str or None
        Why the image could not be used (unreadable URL, I/O error, decode error); None on
        success.

    Notes
    -----
    Equality is identity (the pixel array makes value equality ambiguous).
    """

    source: ImageSource
    sha256: str | None
    height: int
    width: int
    pixels: np.ndarray | None
    error: str | None

    @property
    def ok(self) -> bool:
        """True when the image was decoded (``error`` is None)."""
        return self.error is None


def read_image(
    source: ImageSource,
    *,
    storage_options: dict[str, Any] | None = None,
    max_pixels: int,
) -> DecodedImage:
    """Read, hash and decode one image; report bad input instead of raising.

    Parameters
    ----------
    source : ImageSource
        The image to read (from :func:`discover_images`).
    storage_options : dict, optional
        fsspec storage options for ``source.url``.
    max_pixels : int
        Largest accepted ``width * height`` (see :func:`decode_image`).

    Returns
    -------
    DecodedImage
        With ``pixels`` of shape ``(height * width, 3)`` on success; otherwise ``pixels``
        is None and ``error`` holds the reason: the URL is missing or unreadable (the
        message names it), or the bytes are not a usable image (``sha256`` is then set).

    Raises
    ------
    InvalidInputError
        Only for a bad argument (`max_pixels` below 1), never for bad input data.

    Notes
    -----
    A plain top-level function (picklable) meant to run inside Dask tasks on worker
    processes. It logs nothing but the URL (credentials masked) at DEBUG level.
    """
    if max_pixels < 1:
        raise InvalidInputError(f"max_pixels={max_pixels} must be at least 1")
    try:
        data = read_bytes(source.url, storage_options)
    except KmflowError as exc:
        logger.debug("cannot read %s: %s", redact_url(source.url), exc)
        return DecodedImage(source, None, 0, 0, None, str(exc))
    digest = hashlib.sha256(data).hexdigest()
    try:
        rgb = decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        logger.debug("cannot decode %s: %s", redact_url(source.url), exc)
        return DecodedImage(source, digest, 0, 0, None, str(exc))
    height, width = rgb.shape[:2]
    return DecodedImage(source, digest, height, width, rgb.reshape(-1, 3), None)


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode RGB pixels as a PNG file.

    Parameters
    ----------
    rgb : numpy.ndarray of shape (height, width, 3), dtype uint8
        The pixels, RGB order.

    Returns
    -------
    bytes
        The PNG file (8-bit RGB, lossless: :func:`decode_image` returns `rgb` exactly).

    Raises
    ------
    InvalidInputError
        If `rgb` is not a non-empty ``(h, w, 3)`` uint8 array.
    """
    array = np.asarray(rgb)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise InvalidInputError(
            f"expected RGB pixels of shape (height, width, 3), got shape {array.shape}"
        )
    if array.dtype != np.uint8:
        raise InvalidInputError(f"expected dtype uint8, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_png_indexed(labels: np.ndarray, palette: np.ndarray) -> bytes:
    """Encode a label image as an indexed PNG: pixel ``(y, x)`` is ``palette[labels[y, x]]``.

    Smaller and faster to write than RGB for a quantized image; any reader that converts it
    to RGB gets exactly the palette colors. The pixels are packed to the fewest bits the
    palette needs (1, 2, 4 or 8: 16 colors take 4 bits).

    Parameters
    ----------
    labels : numpy.ndarray of shape (height, width), integer values in ``[0, len(palette))``
    palette : numpy.ndarray of shape (k, 3), dtype uint8, with ``1 <= k <= 256``

    Raises
    ------
    InvalidInputError
        Wrong shapes or dtypes, more than 256 colors, or labels outside the palette.

    Notes
    -----
    Written by :func:`kmflow.storage.png.encode_indexed` (unfiltered scanlines, libdeflate),
    not by Pillow: several times faster, smaller files.
    """
    pal = np.asarray(palette)
    lab = np.asarray(labels)
    if pal.ndim != 2 or pal.shape[1] != 3 or not 1 <= pal.shape[0] <= 256 or pal.dtype != np.uint8:
        raise InvalidInputError(
            f"palette must be (k, 3) uint8 with 1 <= k <= 256; got {pal.shape} {pal.dtype}"
        )
    if lab.ndim != 2 or lab.shape[0] < 1 or lab.shape[1] < 1 or lab.dtype.kind not in "iu":
        raise InvalidInputError(f"labels must be a non-empty 2-D integer array; got {lab.shape}")
    if lab.min() < 0 or lab.max() >= pal.shape[0]:
        raise InvalidInputError(
            f"labels must lie in [0, {pal.shape[0]}); got {lab.min()}..{lab.max()}"
        )
    return png.encode_indexed(lab, pal)
