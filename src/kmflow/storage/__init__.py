"""All of kmflow's I/O: files and URLs (fsspec/s3fs), image discovery and decoding.

Only this package touches files, URLs, images, Zarr or xarray. The names below are the
file/URL and image layer; the pixel store and model registry live in their own modules.
"""

from kmflow.storage.fs import (
    get_fs,
    join_url,
    read_bytes,
    redact_url,
    storage_options_for,
    write_bytes_atomic,
)
from kmflow.storage.images import (
    IMAGE_EXTENSIONS,
    DecodedImage,
    ImageSource,
    decode_image,
    discover_images,
    encode_png,
    read_image,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DecodedImage",
    "ImageSource",
    "decode_image",
    "discover_images",
    "encode_png",
    "get_fs",
    "join_url",
    "read_bytes",
    "read_image",
    "redact_url",
    "storage_options_for",
    "write_bytes_atomic",
]
