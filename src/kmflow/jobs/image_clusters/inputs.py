"""The image-clustering job's inputs: images decoded once into a row store of fixed-size rows.

Two kinds of source, one result (:class:`ImageSet`): a row store (Zarr, see
:class:`~kmflow.storage.rowstore.RowStore`) of ``uint8`` rows ``H * W * C`` wide, one per
image, with the image ids and, when known, each image's class.

- **Images** (files, folders, globs, any fsspec URL): found with
  :func:`~kmflow.storage.images.discover_sources`, read and decoded on the Dask workers with
  the ingest code (:func:`~kmflow.storage.images.read_image`: corrupt files, unreadable URLs
  and images over the pixel limit are skipped and reported, never fatal), then fitted to
  ``H x W`` (center crop to the aspect ratio, Lanczos resampling; an image already of that
  size is kept as it is) and converted to gray when ``C = 1``. Ids are the paths relative
  to the source root. Classes, optional: the first folder of each path
  (``labels_from="subfolders"``, the ``class/image.png`` layout) or a CSV file with columns
  ``relpath,label``.
- **A table** of fixed-size images, one per row (MNIST-style CSV/Parquet exports:
  ``label,pixel1,...,pixel784``): every column but the label column is a pixel, in
  row-major ``H, W, C`` order, an integer 0..255. Ids are the 0-based row numbers.

The store is named by what it holds (the content hashes of the files, the shape, the
classes' source), so a second run on the same input streams the stored rows instead of
decoding again; the decision is repeated under the store's writer lease, so two runs at once
write it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd

from kmflow.config import get_settings
from kmflow.errors import InvalidInputError, SourceNotFoundError, StoreCorruptError
from kmflow.fingerprint import fingerprint
from kmflow.params import ImageClusterParams, parse_image_shape
from kmflow.storage.fs import join_url, read_bytes, storage_options_for
from kmflow.storage.images import ImageSource, discover_sources, read_image
from kmflow.storage.rowstore import RowStore
from kmflow.storage.tables import Table, read_table

__all__ = [
    "DEFAULT_SHAPE",
    "STORE_FORMAT",
    "ImageSet",
    "class_codes",
    "decode_to_rows",
    "is_table_source",
    "load_images",
]

logger = logging.getLogger(__name__)

#: The commit-record format of the image-clustering job's row stores.
STORE_FORMAT = "kmflow.image_clusters"
#: What images are fitted to when no ``image_shape`` is given.
DEFAULT_SHAPE = (32, 32, 3)
_TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet", ".pq")
_BATCH = 64  # images per decoding task


@dataclass(frozen=True)
class ImageSet:
    """Images decoded into a row store: where, what shape, which classes."""

    store: str
    key: str
    input: Literal["images", "table"]
    shape: tuple[int, int, int]
    n_images: int
    fingerprint: str
    classes: list[str] | None
    skipped: list[dict[str, str]] = field(default_factory=list)
    unlabelled: int = 0
    sources: list[str] = field(default_factory=list)
    reused: bool = False

    def open(self) -> RowStore:
        return _row_store(self.store)

    def rows(self) -> da.Array:
        """The images as uint8 rows (n_images, H * W * C), in the store's chunks."""
        return self.open().rows()

    def ids(self) -> np.ndarray:
        """Relative paths (images) or int64 row numbers (tables), in row order."""
        return self.open().ids()

    def label_codes(self) -> np.ndarray | None:
        """Each image's class as an index into :attr:`classes` (-1: unknown), or None."""
        if self.classes is None:
            return None
        codes = self.open().read_derived("label")
        if codes is None:
            raise InvalidInputError(f"the row store {self.store} lost its classes; run again")
        return np.asarray(codes.compute(), dtype=np.int64)


def _row_store(url: str) -> RowStore:
    return RowStore(url, storage_options=storage_options_for(url), format=STORE_FORMAT)


def is_table_source(sources: Sequence[str]) -> bool:
    """True when every source names a table file (by its extension)."""
    return all(str(s).lower().endswith(_TABLE_SUFFIXES) for s in sources)


def class_codes(values: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """Class names (sorted; numerically when all are numbers) and each value's index.

    ``None``, NaN and empty strings are unknown (-1).
    """
    names = [_class_name(v) for v in values]
    found = sorted({n for n in names if n is not None})
    with contextlib.suppress(ValueError):
        found = sorted(found, key=float)
    lookup = {c: i for i, c in enumerate(found)}
    return np.array([-1 if n is None else lookup[n] for n in names], dtype=np.int64), found


def _class_name(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


# --------------------------------------------------------------------------- decoding


def decode_to_rows(
    sources: Sequence[ImageSource],
    shape: tuple[int, int, int],
    *,
    max_pixels: int,
    storage_options: dict[str, Any] | None = None,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Read, decode and fit images to `shape`: their rows, hashes, and what was skipped.

    Returns
    -------
    rows : ndarray of uint8, shape (n_ok, H * W * C)
    sha256 : list of str
        The hex SHA-256 of each decoded file's bytes, in the order of `rows`.
    skipped : list of (relpath, reason)
        Images that could not be used (bad file, unreadable URL, over the pixel limit).
    """
    from PIL import Image, ImageOps

    h, w, c = shape
    rows: list[np.ndarray] = []
    hashes: list[str] = []
    skipped: list[tuple[str, str]] = []
    for source in sources:
        image = read_image(source, storage_options=storage_options, max_pixels=max_pixels)
        if not image.ok or image.pixels is None or image.sha256 is None:
            skipped.append((source.relpath, str(image.error)))
            continue
        pil = Image.fromarray(image.pixels.reshape(image.height, image.width, 3))
        if (image.width, image.height) != (w, h):
            pil = ImageOps.fit(pil, (w, h), method=Image.Resampling.LANCZOS)
        if c == 1:
            pil = pil.convert("L")
        rows.append(np.asarray(pil, dtype=np.uint8).reshape(-1))
        hashes.append(image.sha256)
    out = np.stack(rows) if rows else np.zeros((0, h * w * c), dtype=np.uint8)
    return out, hashes, skipped


def _file_hashes(
    sources: Sequence[ImageSource], storage_options: dict[str, Any] | None
) -> list[str]:
    out = []
    for source in sources:
        try:
            out.append(hashlib.sha256(read_bytes(source.url, storage_options)).hexdigest())
        except Exception as exc:  # an unreadable file is reported when it is decoded
            out.append("unreadable:" + type(exc).__name__)
    return out


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _folder_classes(
    images: Sequence[ImageSource], params: ImageClusterParams
) -> tuple[list[str | None] | None, str]:
    """Each image's class name (None: unknown) and a digest of where they came from."""
    if params.labels_from == "subfolders":
        return [im.relpath.split("/")[0] if "/" in im.relpath else None for im in images], "dirs"
    if params.labels is None:
        return None, ""
    try:
        data = read_bytes(params.labels, storage_options_for(params.labels))
    except SourceNotFoundError as exc:
        raise InvalidInputError(f"--labels: {exc}") from exc
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InvalidInputError(f"--labels {params.labels}: not a CSV file ({exc})") from exc
    if not {"relpath", "label"} <= set(frame.columns):
        raise InvalidInputError(
            f"--labels {params.labels} must have the columns relpath,label; "
            f"it has {', '.join(map(str, frame.columns))}"
        )
    lookup = dict(zip(frame["relpath"].str.strip(), frame["label"], strict=True))
    return [lookup.get(im.relpath) for im in images], hashlib.sha256(data).hexdigest()


def _load_folder(
    params: ImageClusterParams, shape: tuple[int, int, int], by: str | None
) -> ImageSet:
    images = discover_sources(params.source, storage_options_for=storage_options_for, unique=True)
    if not images:
        raise InvalidInputError(f"no images found in {', '.join(params.source)}")
    names, classes_digest = _folder_classes(images, params)
    options = storage_options_for(params.source[0])
    batches = _batches(images, _BATCH)
    hashes = [
        h
        for part in dask.compute(*[dask.delayed(_file_hashes)(b, options) for b in batches])
        for h in part
    ]
    content = fingerprint(hashes)
    key = _key(
        {
            "input": "images",
            "content": content,
            "relpaths": [im.relpath for im in images],
            "shape": shape,
            "classes": classes_digest,
        }
    )
    url = join_url(params.store, f"{key[:24]}.zarr")
    store = _row_store(url)

    def write() -> None:
        max_pixels = get_settings().storage.max_image_pixels
        parts = dask.compute(
            *[
                dask.delayed(decode_to_rows)(
                    b, shape, max_pixels=max_pixels, storage_options=options
                )
                for b in batches
            ]
        )
        rows = np.concatenate([p[0] for p in parts])
        sha = [s for p in parts for s in p[1]]
        skipped = [{"id": r, "reason": why} for p in parts for r, why in p[2]]
        bad = {s["id"] for s in skipped}
        kept = [i for i, im in enumerate(images) if im.relpath not in bad]
        if not kept:
            raise InvalidInputError(
                f"none of the {len(images)} images could be decoded; first: "
                f"{skipped[0]['id']}: {skipped[0]['reason']}"
            )
        meta: dict[str, Any] = {
            "key": key,
            "input": "images",
            "shape": list(shape),
            "content": content,
            "skipped": skipped,
            "sources": list(params.source),
        }
        ids = np.array([images[i].relpath for i in kept], dtype=np.dtypes.StringDType())
        codes = None
        if names is not None:
            codes, classes = class_codes([names[i] for i in kept])
            meta["classes"] = classes
        store.append(
            rows, ids=ids, hashes=np.array(sha, dtype=np.dtypes.StringDType()), meta=meta, by=by
        )
        if codes is not None:
            store.write_derived("label", codes, ("row",), by=by)

    reused = _write_once(store, key, write, by)
    return _image_set(store, url, key, reused)


def _pixel_block(pdf: pd.DataFrame, pixels: list[str], first_row: int) -> np.ndarray:
    values = pdf[pixels].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 255) | (values != np.round(values))
    if bad.any():
        r, j = np.argwhere(bad)[0]
        shown = pdf[pixels].iloc[r, j]
        raise InvalidInputError(
            f"row {first_row + int(r)}, column {pixels[j]!r}: {shown!r} is not a pixel value "
            "(an integer 0..255)"
        )
    return values.astype(np.uint8)


def _table_columns(
    table: Table, params: ImageClusterParams, shape: tuple[int, int, int], optional_labels: bool
) -> tuple[str | None, list[str]]:
    """The label column (or None) and the pixel columns, checked against `shape`."""
    label = params.label_column
    if label is not None and label not in table.columns and optional_labels:
        label = None
    if label is not None and label not in table.columns:
        raise InvalidInputError(
            f"no label column {label!r} in the table (columns: {', '.join(table.columns[:8])}"
            + (", ..." if len(table.columns) > 8 else "")
            + ")"
        )
    pixels = [c for c in table.columns if c != label]
    h, w, c = shape
    if len(pixels) != h * w * c:
        raise InvalidInputError(
            f"the table has {len(pixels)} pixel columns"
            + (f" besides {label!r}" if label else "")
            + f" but {h}x{w}x{c} images need {h * w * c}"
        )
    return label, pixels


def _load_table(
    params: ImageClusterParams,
    shape: tuple[int, int, int],
    by: str | None,
    optional_labels: bool = False,
) -> ImageSet:
    table: Table = read_table(params.source, storage_options=storage_options_for(params.source[0]))
    label, pixels = _table_columns(table, params, shape, optional_labels)
    h, w, c = shape
    key = _key({"input": "table", "content": table.fingerprint, "shape": shape, "label": label})
    url = join_url(params.store, f"{key[:24]}.zarr")
    store = _row_store(url)

    def write() -> None:
        starts = table.row_starts()
        blocks = [
            da.from_delayed(
                dask.delayed(_pixel_block)(p, pixels, int(s)), shape=(n, h * w * c), dtype=np.uint8
            )
            for p, s, n in zip(table.frame.to_delayed(), starts, table.partition_rows, strict=True)
        ]
        meta: dict[str, Any] = {
            "key": key,
            "input": "table",
            "shape": list(shape),
            "content": table.fingerprint,
            "skipped": [],
            "sources": list(params.source),
            "files": list(table.files),
        }
        codes = None
        if label is not None:
            codes, classes = class_codes(table.frame[label].compute().tolist())
            meta["classes"] = classes
        store.append(da.concatenate(blocks), meta=meta, by=by)
        if codes is not None:
            store.write_derived("label", codes, ("row",), by=by)

    reused = _write_once(store, key, write, by)
    return _image_set(store, url, key, reused)


def _key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _write_once(store: RowStore, key: str, write: Any, by: str | None) -> bool:
    """Run `write` unless the store already holds `key`; True when it did (reused)."""

    def holds_this() -> bool:
        return store.exists() and store.n_rows > 0 and store.meta.get("key") == key

    def seen_written() -> bool:
        # Without the lease another writer may be creating the store this moment (its
        # variables not all there yet): that is "not written yet", decided under the lease.
        try:
            return holds_this()
        except StoreCorruptError:
            return False

    if seen_written():
        return True
    with store.writing(by=by):
        if holds_this():
            return True
        if store.exists() and store.n_rows > 0:
            raise InvalidInputError(f"row store {store.url} holds other data; remove it first")
        write()
    return False


def _image_set(store: RowStore, url: str, key: str, reused: bool) -> ImageSet:
    meta = store.meta
    classes = meta.get("classes")
    unlabelled = 0
    image_set = ImageSet(
        store=url,
        key=key,
        input=meta["input"],
        shape=tuple(meta["shape"]),  # type: ignore[arg-type]
        n_images=store.n_rows,
        fingerprint=store.fingerprint(),
        classes=list(classes) if classes is not None else None,
        skipped=list(meta.get("skipped", [])),
        sources=list(meta.get("sources", [])),
        reused=reused,
    )
    codes = image_set.label_codes()
    if codes is not None:
        unlabelled = int((codes < 0).sum())
        image_set = replace(image_set, unlabelled=unlabelled)
    logger.info(
        "%d images of %s in %s%s",
        image_set.n_images,
        "x".join(map(str, image_set.shape)),
        posixpath.basename(url),
        " (reused)" if reused else "",
    )
    return image_set


def image_shape_of(params: ImageClusterParams, table: bool) -> tuple[int, int, int]:
    """The shape images are fitted to (folders) or read as (tables)."""
    if params.image_shape is not None:
        return parse_image_shape(params.image_shape)
    if table:
        raise InvalidInputError(
            "a table of images needs --image-shape HxW or HxWxC (e.g. 28x28 for MNIST exports)"
        )
    return DEFAULT_SHAPE


def _check_options(params: ImageClusterParams) -> tuple[bool, tuple[int, int, int]]:
    """Whether the source is a table, and the image shape; the label options checked."""
    table = params.input == "table" or (params.input == "auto" and is_table_source(params.source))
    if table and (params.labels_from or params.labels):
        raise InvalidInputError(
            "a table's classes come from --label-column, not --labels-from or --labels"
        )
    if not table and params.label_column:
        raise InvalidInputError(
            "--label-column is for a table of images; folders use --labels-from or --labels"
        )
    if params.labels_from and params.labels:
        raise InvalidInputError("give --labels-from or --labels, not both")
    return table, image_shape_of(params, table)


def check_inputs(params: ImageClusterParams) -> None:
    """Everything about `params`' inputs that can be wrong, checked in this process before
    any cluster starts: the options, the image shape, the feature chain against it and, for
    a table, its columns and every pixel value (the table is read once here for that).

    Raises
    ------
    SourceNotFoundError, TableError, InvalidInputError
        As :func:`load_images` would, later and on the cluster.
    """
    from kmflow.jobs.image_clusters.features import parse_chain

    table, shape = _check_options(params)
    parse_chain(params.features, shape=shape)
    if not table:
        return
    frame: Table = read_table(params.source, storage_options=storage_options_for(params.source[0]))
    _, pixels = _table_columns(frame, params, shape, optional_labels=False)
    starts = frame.row_starts()
    dask.compute(
        *[
            dask.delayed(_pixel_block)(p, pixels, int(s))
            for p, s in zip(frame.frame.to_delayed(), starts, strict=True)
        ],
        scheduler="threads",
    )


def load_images(
    params: ImageClusterParams, *, by: str | None = None, optional_labels: bool = False
) -> ImageSet:
    """Decode (or find already decoded) the images `params` names into a row store.

    Raises
    ------
    SourceNotFoundError, TableError, InvalidInputError
        A missing source, no image that decodes, a malformed table (wrong number of pixel
        columns, a value that is not an integer 0..255), a missing label column, a labels
        file without ``relpath,label``, or labels options that do not fit the input.

    Notes
    -----
    With `optional_labels` (new images for a trained model), a table without the label
    column is read without classes.
    """
    table, shape = _check_options(params)
    return (
        _load_table(params, shape, by, optional_labels)
        if table
        else _load_folder(params, shape, by)
    )
