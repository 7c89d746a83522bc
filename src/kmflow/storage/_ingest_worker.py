"""The worker side of :meth:`kmflow.storage.pixelstore.PixelStore.ingest`.

What the Dask workers run: decode a group of images, report their sizes and hashes, write
one Zarr chunk of pixel rows. Apart from :mod:`kmflow.storage.pixelstore` (which imports
xarray and dask.array) so that a worker's first ingest task imports only numpy, zarr and
the image decoders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kmflow.storage.images import DecodedImage, ImageSource, read_image

if TYPE_CHECKING:
    import zarr


def _decode_image(
    source: ImageSource, storage_options: dict[str, Any] | None, max_pixels: int
) -> DecodedImage:
    """Read one image on a worker; never raises (a failure becomes ``error``)."""
    try:
        image = read_image(source, storage_options=storage_options, max_pixels=max_pixels)
    except Exception as exc:  # read_image should not raise; one bad image never sinks a batch
        return DecodedImage(source, None, 0, 0, None, f"{type(exc).__name__}: {exc}")
    if image.error is not None:
        return image
    px = image.pixels
    expected = (image.height * image.width, 3)
    if image.sha256 is None:
        reason = "the decoder returned no content hash"
    elif not isinstance(px, np.ndarray) or px.dtype != np.uint8 or px.shape != expected:
        shape = getattr(px, "shape", None)
        reason = (
            f"the decoder returned pixels of shape {shape} for a "
            f"{image.height}x{image.width} image (expected uint8 {expected})"
        )
    elif image.height * image.width == 0:
        reason = f"the image has no pixels ({image.height}x{image.width})"
    else:
        return image
    return DecodedImage(source, image.sha256, image.height, image.width, None, reason)


def _decode_images(
    sources: list[tuple[ImageSource, dict[str, Any] | None]], max_pixels: int
) -> list[DecodedImage]:
    """Read a group of images on a worker (one task); never raises."""
    return [_decode_image(src, options, max_pixels) for src, options in sources]


def _summaries(images: list[DecodedImage]) -> list[tuple[str | None, int, int, str | None]]:
    """The small part of each decoded image that travels to the driver."""
    return [(i.sha256, i.height, i.width, i.error) for i in images]


def _write_rows(
    target: zarr.Array[Any],
    start: int,
    pieces: list[tuple[list[DecodedImage], int, int, int]],
    after: object = None,
) -> int:
    """Write one Zarr chunk's share of an ingest batch at row ``start``; the rows written.

    ``pieces`` are ``(images, index, first, stop)``: rows ``first:stop`` of the decoded image
    ``images[index]`` (a decode task's list), in order. ``after`` is only a dependency: the
    write of the batch before, when it ends inside the Zarr chunk this one starts in (a
    partial chunk write is a read-modify-write, so two at once would lose one's rows).
    """
    rows = [images[i].pixels[a:b] for images, i, a, b in pieces]  # type: ignore[index]
    block = rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)
    target[start : start + len(block)] = block
    return len(block)
