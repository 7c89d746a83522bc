"""The pixel store: every pixel of an image collection in one Zarr v3 group, through xarray.

A row store (:mod:`kmflow.storage.rowstore`: the commit record, trimming after an interrupted
writer, derived variables tagged with their fingerprint, the writer lease) whose rows are RGB
pixels and whose items are images. Layout (one Zarr v3 group, no consolidated metadata; local
path or any fsspec URL)::

    pixels      (pixel, channel)  uint8     RGB rows, chunked (chunk_pixels, 3)
    source      (image,)          string    URL the image was read from
    relpath     (image,)          string    POSIX path relative to its source root
    sha256      (image,)          string    SHA-256 (hex) of the image file's bytes
    height      (image,)          int64
    width       (image,)          int64
    offset      (image,)          int64     index of the image's first pixel
    ingested_at (image,)          datetime64[ns], UTC (stored as int64 nanoseconds since epoch)
    labels      (pixel,)          int32     optional, written by apply
    colors      (color, channel)  uint8     optional color histogram: unique colors ...
    counts      (color,)          int64     ... and how many pixels have each
    palettes/                     group     optional per-image palettes, with their own commit

The group attribute ``kmflow`` is the **commit record**: ``{"format": "kmflow.pixelstore",
"version": 1, "channels": "RGB", "n_images": ..., "n_pixels": ..., "fingerprint": ...}``.
Readers see only the first ``n_images`` images and the first ``n_pixels`` pixels; anything an
interrupted ingest left beyond them (orphan pixels, half-appended metadata) is invisible and is
trimmed by the next writer. An ingest appends pixels first, then the per-image metadata, then
replaces the commit record, so a crash at any point never makes a half-written image visible
and never changes an image already committed. The fingerprint is
:func:`kmflow.fingerprint.fingerprint` of the image sha256s.

Derived variables carry the fingerprint of the images they were computed from (array attribute
``fingerprint``, written after their data; ``counts`` carries it for the histogram): labels and
the histogram are ignored once new images are ingested. Labels must cover every pixel, so an
ingest that adds pixels deletes them.

Writers take turns through the store's **writer lease**, kept in the subgroup ``.lease``:
every method that writes (:meth:`PixelStore.ingest`, :meth:`~PixelStore.write_labels`,
:meth:`~PixelStore.write_histogram`, :meth:`~PixelStore.write_image_palettes`) holds it for
its whole run, so two processes ingesting into one store at once append one after the other
(``KMFLOW_STORAGE__LEASE_TIMEOUT``, ``KMFLOW_STORAGE__LEASE_TTL`` and the takeover of a
crashed writer's lease: see :mod:`kmflow.storage.rowstore`). Any number of readers, at any
time.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from fsspec.utils import get_protocol

from kmflow.errors import InvalidInputError, StoreCorruptError
from kmflow.fingerprint import fingerprint
from kmflow.storage._ingest_worker import _decode_images, _summaries, _write_rows
from kmflow.storage.fs import redact_url
from kmflow.storage.images import ImageRecord, ImageSource, check_relpath
from kmflow.storage.rowstore import LEASE_GROUP as LEASE_GROUP  # the lease subgroup
from kmflow.storage.rowstore import Commit, Layout, RowStoreBase, aligned_chunks, zarr_array

__all__ = [
    "DEFAULT_BATCH_PIXELS",
    "DEFAULT_CHUNK_PIXELS",
    "DecodedBatch",
    "ImageRecord",
    "IngestError",
    "IngestProgress",
    "IngestReport",
    "PixelStore",
]

logger = logging.getLogger(__name__)

#: Pixels per Zarr chunk of ``pixels`` (6 MiB of RGB).
DEFAULT_CHUNK_PIXELS = 2_097_152
#: Pixels decoded and appended per ingest batch (64 MiB of RGB).
DEFAULT_BATCH_PIXELS = 64 * 2**20 // 3

_MAX_BATCH_IMAGES = 4096
_BATCH_GROWTH = 4
_DECODE_TASKS = 32
#: Batches being decoded on the workers while the driver stores the one before them.
_DECODE_AHEAD = 2
_STRING = np.dtypes.StringDType()
_STR_VARS = ("source", "relpath", "sha256")
_INT_VARS = ("height", "width", "offset")
_IMAGE_VARS = (*_STR_VARS, *_INT_VARS, "ingested_at")
_NOUN = "pixel store"
_LAYOUT = Layout(
    format="kmflow.pixelstore",
    noun=_NOUN,
    version=1,
    rows="pixels",
    row_dim="pixel",
    col_dim="channel",
    item_dim="image",
    item_vars=_IMAGE_VARS,
    hash_var="sha256",
    rows_key="n_pixels",
    items_key="n_images",
    fixed={"channels": "RGB"},
    item_chunk=4096,
    derived_sets=(("labels",), ("colors", "counts")),
    create_hint="ingest images to create one",
)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class IngestError:
    """An image that could not be ingested, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class DecodedBatch:
    """The new images of one ingest batch, their pixels still on the workers.

    What :meth:`PixelStore.ingest` hands its ``on_batch`` callback before the batch is
    written, so that a caller can compute on the decoded pixels (render them) while the
    store is being written, instead of reading them back from the store afterwards.

    Attributes
    ----------
    records : list of ImageRecord
        The batch's new images (offsets as they will be committed).
    groups : tuple of dask.delayed.Delayed
        The batch's decode tasks, already persisted: each computes to a list of
        :class:`~kmflow.storage.images.DecodedImage`.
    where : list of (int, int)
        For each record, its decode task in ``groups`` and its index in that task's list.
    """

    records: list[ImageRecord]
    groups: tuple[Any, ...]
    where: list[tuple[int, int]]


@dataclass(frozen=True)
class IngestProgress:
    """Where an ingest stands, passed to the ``progress`` callback after each batch."""

    images_done: int
    images_total: int
    pixels_done: int


@dataclass(frozen=True)
class IngestReport:
    """What one :meth:`PixelStore.ingest` call did.

    Attributes
    ----------
    added : list of ImageRecord
        Images appended to the store, in input order.
    duplicates : list of str
        Source URLs skipped because their content (sha256) was already in the store or earlier
        in the same call.
    errors : list of IngestError
        Images that could not be read or decoded; nothing of them was stored.
    hashes : dict of str to str
        Content hash (sha256) of every source that is now in the store, added or duplicate:
        how a caller finds the stored image of each source it gave.
    n_pixels_added : int
    seconds : float
        Wall time of the call.
    """

    added: list[ImageRecord] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    errors: list[IngestError] = field(default_factory=list)
    n_pixels_added: int = 0
    seconds: float = 0.0
    hashes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists of plain dicts, ints, floats and strings)."""
        return {
            "added": [asdict(r) for r in self.added],
            "duplicates": list(self.duplicates),
            "errors": [asdict(e) for e in self.errors],
            "hashes": dict(self.hashes),
            "n_pixels_added": int(self.n_pixels_added),
            "seconds": float(self.seconds),
        }


@dataclass
class _Tally:
    """What an ingest has done so far (mutable; becomes the IngestReport)."""

    known: list[str]  # sha256 of the committed images, in store order
    seen: set[str]  # committed or decoded earlier in this call
    n_sources: int = 0
    added: list[ImageRecord] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    errors: list[IngestError] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    n_pixels: int = 0


@dataclass(frozen=True)
class _Writing:
    """An ingest batch whose new pixels are being written: what its commit needs."""

    records: list[ImageRecord]  # its new images, in row order
    start: int  # its first pixel row
    end: int  # the pixel rows once it is committed
    writes: tuple[Any, ...]  # persisted write tasks, one per Zarr chunk, in row order

    def wait_quietly(self) -> None:
        """Return once none of the writes runs any more, whether they failed or not."""
        if "distributed" in sys.modules:  # else persist() ran them already
            from distributed import futures_of, wait

            futures = futures_of(list(self.writes))
            if futures:
                wait(futures)


# --------------------------------------------------------------------------- worker-side tasks


def _chunk_writes(
    target: zarr.Array[Any],
    start: int,
    images: list[tuple[Any, int, int]],
    after: Any = None,
) -> list[Any]:
    """The write tasks (Dask delayed, one per Zarr chunk) of images appended at row ``start``.

    ``images`` are ``(decode task, index in its list, pixels)`` in row order. ``after`` is the
    last write of the rows before ``start``, perhaps still running: when ``start`` is inside
    a Zarr chunk, the first task here depends on it, so that chunk is never written by two
    tasks at once.
    """
    write = dask.delayed(_write_rows, pure=False)
    chunk = target.chunks[0]
    tasks: list[Any] = []
    image, first = 0, 0  # the next row to write: row ``first`` of ``images[image]``
    row = start
    for rows in aligned_chunks(start, sum(n for *_, n in images), chunk):
        pieces = []
        while rows:
            group, index, size = images[image]
            take = min(rows, size - first)
            pieces.append((group, index, first, first + take))
            rows -= take
            first += take
            if first == size:
                image, first = image + 1, 0
        shared = not tasks and row % chunk and after is not None
        tasks.append(write(target, row, pieces, after if shared else None))
        row += sum(b - a for _, _, a, b in pieces)
    return tasks


def _array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    return zarr_array(group, name, _NOUN)


# --------------------------------------------------------------------------- the store


class PixelStore(RowStoreBase):
    """The Zarr v3 pixel store of an image collection, written and read through xarray.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the Zarr group (``s3://bucket/store.zarr``,
        ``memory://store.zarr``, ``file:///data/store.zarr``).
    storage_options : dict, optional
        fsspec options for ``url`` (credentials, endpoint); never logged.
    chunk_pixels : int, default 2_097_152
        Pixels per Zarr chunk, used when the store is created; an existing store keeps its own.
    lease_timeout : float, optional
        Seconds a writer waits for another writer's lease; ``None``:
        ``KMFLOW_STORAGE__LEASE_TIMEOUT`` (read when a write starts).
    lease_ttl : float, optional
        Seconds the writer lease stays valid without renewal; ``None``:
        ``KMFLOW_STORAGE__LEASE_TTL``.

    Notes
    -----
    The constructor does no I/O. Readers (:meth:`open`, :meth:`pixels`, :meth:`images`, ...)
    only ever see committed images; writers (:meth:`ingest`, :meth:`write_labels`,
    :meth:`write_histogram`, :meth:`write_image_palettes`) hold the store's writer lease
    (:meth:`writing`) and first trim whatever an interrupted ingest left behind. The lease,
    the commit record, trimming, :meth:`open` and :meth:`fingerprint` are those of
    :class:`~kmflow.storage.rowstore.RowStoreBase`.

    Examples
    --------
    >>> store = PixelStore("memory://doc/store.zarr", chunk_pixels=1000)
    >>> store.exists()
    False
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: dict[str, Any] | None = None,
        chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
        lease_timeout: float | None = None,
        lease_ttl: float | None = None,
    ) -> None:
        super().__init__(
            url,
            layout=_LAYOUT,
            storage_options=storage_options,
            chunk_rows=chunk_pixels,
            lease_timeout=lease_timeout,
            lease_ttl=lease_ttl,
            chunk_name="chunk_pixels",
        )

    @property
    def chunk_pixels(self) -> int:
        """Pixels per Zarr chunk for a store created by this object."""
        return self.chunk_rows or DEFAULT_CHUNK_PIXELS

    # ----------------------------------------------------------------------- layout hooks

    def _check_rows_array(self, rows: zarr.Array[Any]) -> None:
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3:
            raise StoreCorruptError(
                f"pixels in {self._shown} must be uint8 of shape (n, 3); "
                f"got {rows.dtype} of shape {rows.shape}"
            )

    def _check_committed(self, arrays: dict[str, zarr.Array[Any]], record: Commit) -> None:
        """The last committed image must end at the last committed pixel."""
        if record.n_items:
            last = record.n_items - 1
            o, h, w = (int(np.asarray(arrays[k][last])) for k in ("offset", "height", "width"))
            end = o + h * w
            if end != record.n_rows:
                raise StoreCorruptError(
                    f"pixel store {self._shown} commits {record.n_rows} pixels but its last "
                    f"image ends at pixel {end}"
                )
        elif record.n_rows:
            raise StoreCorruptError(
                f"pixel store {self._shown} commits {record.n_rows} pixels but no images"
            )

    def _empty(self) -> tuple[xr.Dataset, Commit]:
        """An empty store (zero images): its variables and first commit record."""
        ds = xr.Dataset(
            {
                "pixels": (("pixel", "channel"), np.zeros((0, 3), np.uint8)),
                **{name: ("image", np.array([], dtype=_STRING)) for name in _STR_VARS},
                **{name: ("image", np.array([], dtype=np.int64)) for name in _INT_VARS},
                "ingested_at": ("image", np.array([], dtype="datetime64[ns]")),
            }
        )
        return ds, Commit(n_rows=0, n_items=0, fingerprint=fingerprint([]))

    # ----------------------------------------------------------------------- read side

    def pixels(self) -> da.Array:
        """The committed pixels.

        Returns
        -------
        dask.array.Array of uint8, shape (n_pixels, 3)
            RGB rows in the store's chunks (the last one may be partial).
        """
        return self.rows()

    def images(self) -> list[ImageRecord]:
        """The committed images, in the order they were ingested.

        Notes
        -----
        Loads the per-image variables (small); no pixel is read.
        """
        # Read here (a few small arrays), not as tasks on the cluster's workers.
        ds = self.open()[list(_IMAGE_VARS)].load(scheduler="sync")
        cols = {name: ds[name].values.tolist() for name in ("source", "relpath", "sha256")}
        ints = {name: ds[name].values.astype(np.int64).tolist() for name in _INT_VARS}
        return [
            ImageRecord(
                source=str(cols["source"][i]),
                relpath=str(cols["relpath"][i]),
                sha256=str(cols["sha256"][i]),
                height=int(ints["height"][i]),
                width=int(ints["width"][i]),
                offset=int(ints["offset"][i]),
            )
            for i in range(ds.sizes["image"])
        ]

    @property
    def n_pixels(self) -> int:
        """Number of committed pixels (0 for an empty store)."""
        return self._record(self._group("r")).n_rows

    @property
    def n_images(self) -> int:
        """Number of committed images."""
        return self._record(self._group("r")).n_items

    def fingerprint(self) -> str:
        """Identity of the training data: sha256 (hex) over the sorted image sha256s.

        Exactly :func:`kmflow.fingerprint.fingerprint` of the image sha256s
        (``hashlib.sha256("\\n".join(sorted(image_sha256s)).encode()).hexdigest()``); stored in
        the commit record, so this reads one small metadata object.
        """
        return self._record(self._group("r")).fingerprint

    def labels(self) -> da.Array | None:
        """The stored labels if they cover the committed pixels, else ``None``.

        Returns
        -------
        dask.array.Array of int32, shape (n_pixels,), or None
        """
        ds = self.open()
        return ds["labels"].data if "labels" in ds else None

    def histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The stored color histogram if it was computed for the committed images, else None.

        Returns
        -------
        colors : ndarray of uint8, shape (n_colors, 3)
        counts : ndarray of int64, shape (n_colors,)
        """
        ds = self.open()
        if "counts" not in ds:
            return None
        return (
            np.asarray(ds["colors"].values, dtype=np.uint8),
            np.asarray(ds["counts"].values, dtype=np.int64),
        )

    # ----------------------------------------------------------------------- derived data

    def write_labels(self, labels: da.Array) -> None:
        """Store one label per committed pixel as ``labels(pixel)`` int32, replacing older ones.

        Parameters
        ----------
        labels : dask.array.Array of integers, shape (n_pixels,)
            Label of every committed pixel (numpy arrays are accepted too).

        Raises
        ------
        InvalidInputError
            Not 1-D, not integers, outside the int32 range, or not one label per pixel.
        StoreNotFoundError, StoreCorruptError, StoreBusyError

        Notes
        -----
        One compute (on the current scheduler) writes the labels chunk by chunk, aligned with
        the Zarr chunks of ``pixels``; the fingerprint attribute that makes them visible is
        written after the data. Older labels are deleted first, so ``labels`` must not be
        computed from :meth:`labels` of this store.
        """
        if not isinstance(labels, da.Array):
            labels = da.from_array(np.asarray(labels))
        if labels.ndim != 1:
            raise InvalidInputError(f"labels must be 1-D; got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise InvalidInputError(f"labels must be integers; got dtype {labels.dtype}")
        if labels.dtype.itemsize > 4 or labels.dtype == np.uint32:
            # Wider than int32: checked block by block as the labels are written.
            labels = da.map_blocks(_checked_int32, labels, dtype=np.int32)
        self._group("r")  # StoreNotFoundError before any lease file is written
        with self.writing():
            self._write_labels(labels)

    def _write_labels(self, labels: da.Array) -> None:
        group, record = self._prepare_write()
        if labels.shape[0] != record.n_rows:
            raise InvalidInputError(
                f"labels has {labels.shape[0]} entries but the store {self._shown} holds "
                f"{record.n_rows} committed pixels"
            )
        self._write_derived({"labels": (("pixel",), labels.astype(np.int32))}, record, group)
        logger.info("%s: wrote %d labels", self._shown, record.n_rows)

    def write_histogram(self, colors: np.ndarray, counts: np.ndarray) -> None:
        """Store the color histogram of the committed pixels, replacing an older one.

        Parameters
        ----------
        colors : ndarray of uint8, shape (n_colors, 3)
            Unique RGB colors.
        counts : ndarray of int64, shape (n_colors,)
            Pixels of each color; they must add up to the committed pixel count.

        Raises
        ------
        InvalidInputError
            Wrong shapes or dtypes, negative counts, or counts that do not add up.
        StoreNotFoundError, StoreCorruptError, StoreBusyError
        """
        colors = np.asarray(colors)
        counts = np.asarray(counts)
        if colors.ndim != 2 or colors.shape[1] != 3 or colors.dtype != np.uint8:
            raise InvalidInputError(
                f"colors must be uint8 of shape (n_colors, 3); got {colors.dtype} "
                f"of shape {colors.shape}"
            )
        if counts.shape != (colors.shape[0],) or counts.dtype.kind not in "iu":
            raise InvalidInputError(
                f"counts must be integers of shape ({colors.shape[0]},); got {counts.dtype} "
                f"of shape {counts.shape}"
            )
        if counts.size and counts.min() < 0:
            raise InvalidInputError("counts must be non-negative")
        self._group("r")  # StoreNotFoundError before any lease file is written
        with self.writing():
            self._write_histogram(colors, counts)

    def _write_histogram(self, colors: np.ndarray, counts: np.ndarray) -> None:
        group, record = self._prepare_write()
        total = int(counts.sum(dtype=np.int64))
        if total != record.n_rows:
            raise InvalidInputError(
                f"counts add up to {total} pixels but the store {self._shown} holds "
                f"{record.n_rows} committed pixels"
            )
        self._write_derived(
            {
                "colors": (("color", "channel"), colors),
                "counts": (("color",), counts.astype(np.int64)),
            },
            record,
            group,
        )
        logger.info("%s: wrote a histogram of %d colors", self._shown, colors.shape[0])

    # ----------------------------------------------------------------------- image palettes

    def image_palettes(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Palettes stored for these keys (those found; the others are absent).

        Parameters
        ----------
        keys : sequence of str
            32-hex-digit palette keys (an image's content hash and the fitting parameters
            hashed together, see :meth:`kmflow.jobs.palette.per_image.PerImageParams.palette_key`).

        Returns
        -------
        dict of str to ndarray of float64, shape (m, 3)
            The centers of each palette found, in the space they were fitted in.

        Notes
        -----
        Reads the committed part of the ``palettes`` subgroup (keys, offsets, sizes, then the
        rows of the palettes asked for). A store without palettes returns ``{}``.
        """
        group = self._group("r")
        self._record(group)
        table = _palette_table(group)
        if table is None or not keys:
            return {}
        n, rows = _palette_commit(table)
        if n == 0:
            return {}
        stored = np.asarray(_array(table, "key")[:n])
        offsets = np.asarray(_array(table, "offset")[:n])
        sizes = np.asarray(_array(table, "size")[:n])
        index = {_key_text(stored[i]): i for i in range(n)}  # later entries win
        found = {k: index[k] for k in keys if k in index}
        if not found:
            return {}
        centers = np.asarray(_array(table, "centers")[:rows])
        return {
            k: centers[offsets[i] : offsets[i] + sizes[i]].astype(np.float64)
            for k, i in found.items()
        }

    def write_image_palettes(self, palettes: dict[str, np.ndarray]) -> None:
        """Append per-image palettes to the store's ``palettes`` subgroup.

        Parameters
        ----------
        palettes : dict of str to ndarray of float, shape (m, 3)
            Palette key (32 hex digits) to its centers.

        Raises
        ------
        InvalidInputError
            A malformed key, or centers that are not finite (m, 3) arrays with m >= 1.
        StoreNotFoundError, StoreCorruptError, StoreBusyError

        Notes
        -----
        Rows, then keys, sizes and offsets are appended past the committed ones, then the
        commit (an attribute of the subgroup) is replaced: a crash leaves the earlier
        palettes readable and the partial append invisible.
        """
        if not palettes:
            return
        keys: list[np.ndarray] = []
        blocks: list[np.ndarray] = []
        for key, centers in palettes.items():
            keys.append(_key_words(key))
            c = np.asarray(centers, dtype=np.float64)
            if c.ndim != 2 or c.shape[1] != 3 or c.shape[0] < 1 or not np.isfinite(c).all():
                raise InvalidInputError(
                    f"a palette needs finite centers of shape (m, 3); got shape {c.shape}"
                )
            blocks.append(c)
        self._group("r")  # StoreNotFoundError before any lease file is written
        with self.writing():
            self._write_image_palettes(keys, blocks)

    def _write_image_palettes(self, keys: list[np.ndarray], blocks: list[np.ndarray]) -> None:
        group, _ = self._prepare_write()
        table = _palette_table(group)
        if table is None:
            table = group.create_group("palettes")
            for name, shape, chunks, dtype in (
                ("key", (0, 2), (65536, 2), np.uint64),
                ("size", (0,), (65536,), np.int32),
                ("offset", (0,), (65536,), np.int64),
                ("centers", (0, 3), (262144, 3), np.float64),
            ):
                table.create_array(name, shape=shape, chunks=chunks, dtype=dtype)
            table.attrs.update({"committed": {"n": 0, "rows": 0}})
        n, rows = _palette_commit(table)
        sizes = np.array([len(b) for b in blocks], dtype=np.int32)
        offsets = rows + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        new_rows = int(sizes.sum())
        for name, values, start in (
            ("centers", np.concatenate(blocks), rows),
            ("key", np.stack(keys), n),
            ("size", sizes, n),
            ("offset", offsets, n),
        ):
            arr = _array(table, name)
            end = start + len(values)
            arr.resize((end, *arr.shape[1:]))
            arr[start:end] = values
        self._check_lease()
        table.attrs.update({"committed": {"n": n + len(blocks), "rows": rows + new_rows}})
        logger.info("%s: stored %d image palettes", self._shown, len(blocks))

    # ----------------------------------------------------------------------- ingest

    def ingest(
        self,
        sources: Sequence[ImageSource],
        *,
        max_pixels: int,
        storage_options: dict[str, Any] | None = None,
        batch_pixels: int = DEFAULT_BATCH_PIXELS,
        progress: Callable[[IngestProgress], None] | None = None,
        on_batch: Callable[[DecodedBatch], None] | None = None,
    ) -> IngestReport:
        """Decode images on the Dask workers and append the new ones to the store.

        Parameters
        ----------
        sources : sequence of ImageSource
            Images to add, in order.
        max_pixels : int
            Largest image accepted (larger ones are reported as errors by the decoder).
        storage_options : dict, optional
            fsspec options for reading the sources. ``None``: the store's own options when a
            source uses the store's protocol, none otherwise.
        batch_pixels : int, default 64 MiB of RGB
            Target pixels decoded per batch; each batch is committed on its own.
        progress : callable, optional
            Called with an :class:`IngestProgress` after each batch is committed.
        on_batch : callable, optional
            Called with each batch's new images as a :class:`DecodedBatch` (pixels on the
            workers) once they are known and before they are written; whatever it submits
            to the cluster runs beside the write. It should not block for long: the next
            batch waits for it.

        Returns
        -------
        IngestReport

        Raises
        ------
        InvalidInputError
            Bad ``max_pixels`` or ``batch_pixels``, a source that is not an ImageSource, or
            one whose relpath is unsafe (absolute, ``..``, backslashes: see
            :func:`~kmflow.storage.images.check_relpath`); nothing is written then.
        StoreCorruptError
            ``url`` holds a Zarr group that is not a kmflow pixel store.
        StoreBusyError
            Another writer held the store's lease for the whole ``lease_timeout``, or took it
            over (after it expired) while this ingest ran; batches committed before that stay.

        Notes
        -----
        Per batch: one ``persist`` decodes the images on the workers (pixels stay there), one
        ``compute`` brings each image's hash, size and error to the driver, and one ``persist``
        writes the new pixels: a task per Zarr chunk, on the worker holding its rows, so that
        every Zarr chunk is written by a single task at a time. On a distributed client the
        driver goes on while they run: the next batch is deduplicated and handed to
        ``on_batch`` before this one's per-image metadata and commit record are written (in
        batch order, each once its pixels are), and the two batches after it are decoded
        meanwhile, so the workers do not wait on the driver between batches. A failing ingest
        waits for its running writes before it gives the lease back.
        Images whose sha256 is already committed, or seen earlier in the call, are duplicates.

        Batch sizes adapt to the images: the first batch holds ``batch_pixels // max_pixels``
        images (at least one); later ones as many as fit ``batch_pixels`` at the largest image
        seen so far, growing at most fourfold per batch (at most 4096 images).
        """
        t0 = time.perf_counter()
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise InvalidInputError(f"max_pixels must be a positive int; got {max_pixels!r}")
        if isinstance(batch_pixels, bool) or not isinstance(batch_pixels, int) or batch_pixels < 1:
            raise InvalidInputError(f"batch_pixels must be a positive int; got {batch_pixels!r}")
        sources = list(sources)
        for src in sources:
            if not isinstance(src, ImageSource):
                raise InvalidInputError(f"sources must be ImageSource objects; got {src!r}")
            # Outputs are named after relpaths: one escaping the output folder is refused
            # before anything is written (ImageSource checks it too, unless bypassed).
            check_relpath(src.relpath)
        with self.writing():
            return self._ingest(
                sources, max_pixels, storage_options, batch_pixels, progress, on_batch, t0
            )

    def _ingest(
        self,
        sources: list[ImageSource],
        max_pixels: int,
        storage_options: dict[str, Any] | None,
        batch_pixels: int,
        progress: Callable[[IngestProgress], None] | None,
        on_batch: Callable[[DecodedBatch], None] | None,
        t0: float,
    ) -> IngestReport:
        group, record = self._prepare_write(create=self._empty)
        known = self._known_hashes(group, record)
        tally = _Tally(known=known, seen=set(known), n_sources=len(sources))

        done = 0
        largest = 0  # largest image decoded so far (pixels)
        n_batch = max(1, min(_MAX_BATCH_IMAGES, batch_pixels // max_pixels))
        ahead: deque[tuple[list[ImageSource], tuple[Any, ...]]] = deque()
        started = 0  # sources handed to the workers so far

        def start(count: int) -> None:
            nonlocal started
            batch = sources[started : started + count]
            ahead.append((batch, self._decode_batch(batch, max_pixels, storage_options)))
            started += len(batch)

        def start_more(batch_largest: int) -> None:
            # Called once a batch's sizes are known, before its pixels are written: the
            # workers decode the next batches while this one is stored, so that they never
            # wait on the driver between batches.
            nonlocal largest, n_batch
            largest = max(largest, batch_largest)
            fit = batch_pixels // (largest or max_pixels)
            while len(ahead) < _DECODE_AHEAD and started < len(sources):
                n_batch = max(1, min(_MAX_BATCH_IMAGES, n_batch * _BATCH_GROWTH, fit))
                start(n_batch)

        # A batch's pixels are written while the next batch is deduplicated and handed to
        # on_batch; it is committed (metadata, then the record) once they are, in order.
        # ``pending`` holds the batches not yet reported, each with its writes or None.
        pending: deque[tuple[int, _Writing | None]] = deque()
        rows_end = record.n_rows
        try:
            start(n_batch)
            while ahead:
                batch, decoded = ahead.popleft()
                last = next((w for _, w in reversed(pending) if w is not None), None)
                writing = self._write_batch(
                    group, rows_end, batch, decoded, tally, start_more, on_batch, last
                )
                done += len(batch)
                pending.append((done, writing))
                if writing is not None:
                    rows_end = writing.end
                # Commit and report every batch but a newest one still being written.
                while pending and (len(pending) > 1 or pending[0][1] is None):
                    record = self._report_batch(group, record, pending.popleft(), tally, progress)
            while pending:
                record = self._report_batch(group, record, pending.popleft(), tally, progress)
        except BaseException:
            # Nothing of this writer may still be writing once its lease is released; the
            # batches written in full right after the last commit are committed still.
            for _, writing in pending:
                if writing is not None:
                    writing.wait_quietly()
            try:
                while pending and getattr(pending[0][1], "start", record.n_rows) == record.n_rows:
                    record = self._report_batch(group, record, pending.popleft(), tally, progress)
            except Exception as exc:  # the first error is the one raised
                logger.warning("%s: could not commit a written batch: %s", self._shown, exc)
            raise
        report = IngestReport(
            added=tally.added,
            duplicates=tally.duplicates,
            errors=tally.errors,
            hashes=tally.hashes,
            n_pixels_added=tally.n_pixels,
            seconds=time.perf_counter() - t0,
        )
        logger.info(
            "%s: ingested %d images (%d pixels), %d duplicates, %d errors in %.1f s",
            self._shown,
            len(report.added),
            report.n_pixels_added,
            len(report.duplicates),
            len(report.errors),
            report.seconds,
        )
        return report

    def _source_options(
        self, source: ImageSource, storage_options: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        if storage_options is not None:
            return storage_options
        if self._options is not None and get_protocol(source.url) == self._protocol:
            return self._options
        return None

    def _decode_batch(
        self,
        batch: list[ImageSource],
        max_pixels: int,
        storage_options: dict[str, Any] | None,
    ) -> tuple[Any, ...]:
        """Start decoding one batch on the workers (``persist``: returns at once on a
        distributed client); a decode task per group of adjacent images (at most
        ``_DECODE_TASKS`` per batch), so that thousands of small images cost tens of tasks."""
        size = max(1, -(-len(batch) // _DECODE_TASKS))
        groups = [batch[i : i + size] for i in range(0, len(batch), size)]
        decode = dask.delayed(_decode_images, pure=False)
        return tuple(
            dask.persist(
                *[
                    decode([(s, self._source_options(s, storage_options)) for s in g], max_pixels)
                    for g in groups
                ]
            )
        )

    def _write_batch(
        self,
        group: zarr.Group,
        rows_end: int,
        batch: list[ImageSource],
        decoded: tuple[Any, ...],
        tally: _Tally,
        sized: Callable[[int], None],
        on_batch: Callable[[DecodedBatch], None] | None,
        last: _Writing | None,
    ) -> _Writing | None:
        """Deduplicate one decoded batch and start writing its new pixels at ``rows_end``.

        ``sized`` gets the batch's largest image (pixels) as soon as the sizes are known,
        before anything is written (it starts the next batches); ``on_batch`` gets the new
        images just before they are written. ``last`` is the batch written before this one,
        perhaps still being written. Returns None when the batch has nothing new.

        On a distributed client the writes run in the background (one task per Zarr chunk,
        on the worker holding most of its rows), and :meth:`_commit_batch` waits for them.
        """
        summaries = [
            (gi, ii, summary)
            for gi, group_summaries in enumerate(
                dask.compute(*[dask.delayed(_summaries, pure=False)(d) for d in decoded])
            )
            for ii, summary in enumerate(group_summaries)
        ]
        sized(max((h * w for _, _, (_, h, w, _) in summaries), default=0))

        new: list[tuple[ImageSource, str, int, int, tuple[int, int]]] = []
        for src, (gi, ii, (sha, h, w, error)) in zip(batch, summaries, strict=True):
            if error is not None or sha is None:
                tally.errors.append(IngestError(src.url, error or "no content hash"))
                logger.warning("%s: cannot ingest %s: %s", self._shown, redact_url(src.url), error)
            elif sha in tally.seen:
                tally.duplicates.append(src.url)
                tally.hashes[src.url] = sha
            else:
                tally.seen.add(sha)
                tally.hashes[src.url] = sha
                new.append((src, sha, h, w, (gi, ii)))
        if not new:
            return None

        sizes = np.array([h * w for _, _, h, w, _ in new], dtype=np.int64)
        offsets = rows_end + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        records = [
            ImageRecord(src.url, src.relpath, sha, h, w, int(off))
            for (src, sha, h, w, _), off in zip(new, offsets.tolist(), strict=True)
        ]
        if on_batch is not None:
            on_batch(DecodedBatch(records, decoded, [where for *_, where in new]))

        n = int(sizes.sum())
        target = self._grow_rows(group, rows_end, n)
        # The batch before may end inside the Zarr chunk this one starts in: then this
        # batch's first write waits for that batch's last one.
        tasks = _chunk_writes(
            target,
            rows_end,
            [(decoded[gi], ii, int(size)) for (*_, (gi, ii)), size in zip(new, sizes, strict=True)],
            last.writes[-1] if last is not None else None,
        )
        return _Writing(records, rows_end, rows_end + n, dask.persist(*tasks))

    def _report_batch(
        self,
        group: zarr.Group,
        record: Commit,
        item: tuple[int, _Writing | None],
        tally: _Tally,
        progress: Callable[[IngestProgress], None] | None,
    ) -> Commit:
        """Commit a batch once its pixels are written (if it has any); report progress."""
        done, writing = item
        if writing is not None:
            record = self._commit_batch(group, record, writing, tally)
        if progress is not None:
            progress(IngestProgress(done, tally.n_sources, tally.n_pixels))
        return record

    def _commit_batch(
        self, group: zarr.Group, record: Commit, writing: _Writing, tally: _Tally
    ) -> Commit:
        """Wait for a batch's pixels, then append its images' metadata and commit it."""
        written = sum(dask.compute(*writing.writes))
        if writing.start != record.n_rows or writing.start + written != writing.end:  # a bug
            raise RuntimeError(
                f"{self._shown}: wrote {written} pixels at row {writing.start} (expected "
                f"{writing.end - writing.start}) after {record.n_rows} committed"
            )
        new = writing.records
        now = np.datetime64(dt.datetime.now(dt.UTC).replace(tzinfo=None), "ns")
        meta = xr.Dataset(
            {
                **{
                    name: ("image", np.array([getattr(r, name) for r in new], dtype=_STRING))
                    for name in _STR_VARS
                },
                **{
                    name: ("image", np.array([getattr(r, name) for r in new], dtype=np.int64))
                    for name in _INT_VARS
                },
                "ingested_at": ("image", np.full(len(new), now, dtype="datetime64[ns]")),
            }
        )
        new_record = self._commit_appended(group, record, written, meta, tally.known)
        tally.known.extend(r.sha256 for r in new)
        tally.added.extend(writing.records)
        tally.n_pixels += writing.end - record.n_rows
        return new_record

    def _commit_items(
        self, group: zarr.Group, record: Commit, new_record: Commit, items: xr.Dataset
    ) -> None:
        self._commit_images(group, record, new_record, items)

    def _commit_images(
        self, group: zarr.Group, record: Commit, new_record: Commit, meta: xr.Dataset
    ) -> None:
        """Append the per-image metadata, then publish the new commit record."""
        super()._commit_items(group, record, new_record, meta)


def _palette_table(group: zarr.Group) -> zarr.Group | None:
    if "palettes" not in set(group.group_keys()):
        return None
    table = group["palettes"]
    if not isinstance(table, zarr.Group):
        raise StoreCorruptError("'palettes' in the pixel store is an array, not a group")
    return table


def _palette_commit(table: zarr.Group) -> tuple[int, int]:
    raw = table.attrs.asdict().get("committed")
    if not (
        isinstance(raw, dict) and isinstance(raw.get("n"), int) and isinstance(raw.get("rows"), int)
    ):
        raise StoreCorruptError(f"the palettes of the pixel store have a malformed commit {raw}")
    return int(raw["n"]), int(raw["rows"])


def _key_words(key: str) -> np.ndarray:
    if not isinstance(key, str) or len(key) != 32:
        raise InvalidInputError(f"a palette key is 32 hex digits; got {key!r}")
    try:
        return np.array([int(key[:16], 16), int(key[16:], 16)], dtype=np.uint64)
    except ValueError as exc:
        raise InvalidInputError(f"a palette key is 32 hex digits; got {key!r}") from exc


def _key_text(words: np.ndarray) -> str:
    return f"{int(words[0]):016x}{int(words[1]):016x}"


def _checked_int32(block: np.ndarray) -> np.ndarray:
    """Cast labels to int32, refusing values that do not fit."""
    info = np.iinfo(np.int32)
    if block.size and (block.min() < info.min or block.max() > info.max):
        raise InvalidInputError(
            f"labels must fit int32; got values in [{block.min()}, {block.max()}]"
        )
    return block.astype(np.int32)
