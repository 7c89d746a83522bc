"""Append-only row stores: rows of one matrix in a Zarr v3 group, written atomically.

Every kmflow job keeps the data it clusters in a row store: one 2-D variable of rows, chunked
along the rows, and per-item variables (an item is one appended unit: an image for the pixel
store, a row for :class:`RowStore`). :class:`RowStoreBase` holds the machinery every store
shares; :class:`RowStore` is the generic store, for any matrix ``X(row, feature)`` with an id
per row; :class:`~kmflow.storage.pixelstore.PixelStore` is the image collection's store.

Layout of a :class:`RowStore` (one Zarr v3 group, no consolidated metadata; local path or any
fsspec URL)::

    X        (row, feature)  numeric   the rows, chunked (chunk_rows, n_features)
    id       (row,)          string or int64, the id of each row
    sha256   (row,)          string    hash of each row (its id and its bytes) or the caller's
    <name>   (...)           optional derived variables (:meth:`RowStore.write_derived`)

**The commit record.** The group attribute ``kmflow`` is ``{"format": "kmflow.rowstore",
"version": 1, "n_rows": ..., "fingerprint": ..., "meta": {...}}`` (another job may use
another format string; a store whose items are not its rows also counts ``n_items``).
Readers see only the committed rows and items; anything an interrupted writer left beyond
them (orphan rows, half-appended item variables) is invisible and is trimmed by the next
writer. An append writes the rows first (Dask chunks aligned with the Zarr chunks, so every
Zarr chunk is written by one task), then the per-item variables, then replaces the commit
record (a single-object write: atomic on object stores and on zarr's local store), so a crash
at any point never makes half-written rows visible and never changes a committed one.

**The fingerprint** is :func:`kmflow.fingerprint.fingerprint` of the committed item hashes
(the ``sha256`` item variable), kept in the commit record. **Derived variables** carry the
fingerprint of the items they were computed from (array attribute ``fingerprint``, written
after their data) and are ignored once it changes; one along the row dimension no longer
covers every row once rows are appended, so an append deletes it.

**Writers take turns** through a writer lease (:mod:`kmflow.storage.lease`), kept in the
subgroup ``.lease`` of the store: every method that writes holds it for its whole run
(:meth:`RowStoreBase.writing`), so two processes appending to one store at once append one
after the other. A writer that finds the lease held waits up to
``KMFLOW_STORAGE__LEASE_TIMEOUT`` seconds, then raises :class:`~kmflow.errors.StoreBusyError`
naming the holder. A crashed writer's lease expires after ``KMFLOW_STORAGE__LEASE_TTL``
seconds (a running one renews it); the next writer then takes over and trims what the crashed
one left uncommitted. Before each commit a writer checks against the storage that the lease
is still its own. Any number of readers, at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from fsspec.utils import get_protocol
from zarr.codecs import ZstdCodec

from kmflow.config import get_settings
from kmflow.errors import InvalidInputError, StoreCorruptError, StoreNotFoundError
from kmflow.fingerprint import fingerprint
from kmflow.storage.fs import join_url, redact_url
from kmflow.storage.lease import StoreLease

__all__ = [
    "LEASE_GROUP",
    "Commit",
    "Layout",
    "RowStore",
    "RowStoreBase",
    "aligned_chunks",
    "fingerprint",
    "zarr_array",
]

logger = logging.getLogger(__name__)

#: Subgroup holding the writer lease's generation files (a Zarr group, so that Zarr and
#: xarray listings of the store see a valid node and skip it).
LEASE_GROUP = ".lease"
RECORD_KEY = "kmflow"
_STRING = np.dtypes.StringDType()
_TIME_UNITS = "nanoseconds since 1970-01-01"
_TIME_ENCODING = {"units": _TIME_UNITS, "dtype": "int64"}
_CHUNK_BYTES = 8 * 2**20  # default RowStore chunk: about 8 MiB of rows
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- layout and record


@dataclass(frozen=True)
class Layout:
    """What a kind of row store calls its parts, and what its commit record holds.

    Attributes
    ----------
    format : str
        ``format`` of the commit record; a store with another one is not of this kind.
    noun : str
        What the store is called in messages ("pixel store").
    rows : str
        Name of the row variable; its dimensions are ``row_dim`` and ``col_dim``.
    item_dim : str
        Dimension of the per-item variables: ``row_dim`` when every row is an item.
    item_vars : tuple of str
        The per-item variables (all appended on every append).
    hash_var : str
        The item variable holding each item's hash (the fingerprint is over them).
    rows_key, items_key : str, str or None
        Commit-record keys of the committed row and item counts (``items_key`` None: the
        items are the rows).
    fixed : dict
        Constant entries of the commit record (after ``format`` and ``version``).
    item_chunk : int or None
        Zarr chunk of the item variables (None: the row chunk).
    derived_sets : tuple of tuple of str
        Derived variables written together: the last of a set carries the fingerprint for
        all of them. Any other derived variable carries its own.
    create_hint : str
        How a missing store comes to exist (for the "no store" message).
    """

    format: str
    noun: str = "row store"
    version: int = 1
    rows: str = "X"
    row_dim: str = "row"
    col_dim: str = "feature"
    item_dim: str = "row"
    item_vars: tuple[str, ...] = ("id", "sha256")
    hash_var: str = "sha256"
    rows_key: str = "n_rows"
    items_key: str | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    item_chunk: int | None = None
    derived_sets: tuple[tuple[str, ...], ...] = ()
    create_hint: str = "append rows to create one"

    @property
    def core(self) -> frozenset[str]:
        """The variables every store of this kind has (the rows and the item variables)."""
        return frozenset({self.rows, *self.item_vars})

    def lease_marker(self) -> dict[str, bytes]:
        """The Zarr group metadata written into the lease subgroup."""
        attrs = {RECORD_KEY: f"writer lease of the {self.noun} (kmflow.storage.lease)"}
        meta = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
        return {"zarr.json": (json.dumps(meta) + "\n").encode()}


@dataclass(frozen=True)
class Commit:
    """The commit record (group attribute ``kmflow``): what readers see."""

    n_rows: int
    n_items: int
    fingerprint: str
    meta: dict[str, Any] | None = None


def aligned_chunks(start: int, total: int, chunk: int) -> tuple[int, ...]:
    """Row chunks for ``total`` rows written at row ``start`` so each Zarr chunk gets one."""
    chunks: list[int] = []
    first = (-start) % chunk
    if first:
        chunks.append(min(first, total))
    remaining = total - sum(chunks)
    chunks.extend([chunk] * (remaining // chunk))
    if remaining % chunk:
        chunks.append(remaining % chunk)
    return tuple(chunks)


def zarr_array(group: zarr.Group, name: str, noun: str) -> zarr.Array[Any]:
    """The array ``name`` of ``group`` (StoreCorruptError if it is a group)."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreCorruptError(f"{name!r} in the {noun} is a group, not an array")
    return node


def _dims(array: zarr.Array[Any]) -> tuple[str, ...]:
    names = getattr(array.metadata, "dimension_names", None) or ()
    return tuple(str(n) for n in names)


def _encoded(array: zarr.Array[Any], values: np.ndarray) -> np.ndarray:
    """Item values as stored: datetimes become int64 nanoseconds (the CF encoding)."""
    if values.dtype.kind == "M":
        if array.attrs.get("units") != _TIME_UNITS:
            raise StoreCorruptError(f"a time variable is stored with units {array.attrs}")
        return values.astype("datetime64[ns]").view(np.int64)
    return values


#: The rows' codec. Zstandard at its fast level -1 rather than Zarr's default (level 3): on
#: photo pixels it compresses 1.5x faster than level 1 (which is 2.3x faster than level 3) and
#: decompresses 2.5x faster, for a store 4% larger than level 1's (ratio 1.44 instead of 1.50).
#: Stores written with another level read the same (the codec is in each array's metadata).
_ROW_COMPRESSORS = (ZstdCodec(level=-1),)


# --------------------------------------------------------------------------- the machinery


class RowStoreBase:
    """What every row store shares: lease, commit record, trimming, appends, derived data.

    Subclasses give the :class:`Layout`, a public writing API (every write inside
    :meth:`writing`, starting with :meth:`_prepare_write`) and their readers. The constructor
    does no I/O.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the Zarr group (``s3://bucket/store.zarr``,
        ``memory://store.zarr``, ``file:///data/store.zarr``).
    layout : Layout
    storage_options : dict, optional
        fsspec options for ``url`` (credentials, endpoint); never logged.
    chunk_rows : int, optional
        Rows per Zarr chunk, used when the store is created; an existing store keeps its own.
    lease_timeout : float, optional
        Seconds a writer waits for another writer's lease; ``None``:
        ``KMFLOW_STORAGE__LEASE_TIMEOUT`` (read when a write starts).
    lease_ttl : float, optional
        Seconds the writer lease stays valid without renewal; ``None``:
        ``KMFLOW_STORAGE__LEASE_TTL``.
    """

    def __init__(
        self,
        url: str,
        *,
        layout: Layout,
        storage_options: dict[str, Any] | None = None,
        chunk_rows: int | None = None,
        lease_timeout: float | None = None,
        lease_ttl: float | None = None,
        chunk_name: str = "chunk_rows",
    ) -> None:
        if not isinstance(url, str) or not url:
            raise InvalidInputError(f"url must be a non-empty string; got {url!r}")
        if chunk_rows is not None:
            if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int | np.integer):
                raise InvalidInputError(f"{chunk_name} must be an int; got {chunk_rows!r}")
            if chunk_rows < 1:
                raise InvalidInputError(f"{chunk_name} must be >= 1; got {chunk_rows}")
            chunk_rows = int(chunk_rows)
        for name, value in (("lease_timeout", lease_timeout), ("lease_ttl", lease_ttl)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise InvalidInputError(f"{name} must be a number of seconds >= 0; got {value!r}")
        if lease_ttl is not None and lease_ttl <= 0:
            raise InvalidInputError(f"lease_ttl must be > 0 seconds; got {lease_ttl!r}")
        self.url = url
        self.layout = layout
        self.storage_options = dict(storage_options) if storage_options else None
        self.chunk_rows = chunk_rows
        self.lease_timeout = lease_timeout
        self.lease_ttl = lease_ttl
        self._leases: dict[int, StoreLease] = {}  # thread id -> the lease that thread holds
        self._shown = redact_url(url)  # for messages and logs
        self._protocol = get_protocol(url)
        if self._protocol == "file":
            self._target = url.removeprefix("file://")
            self._options: dict[str, Any] | None = None
        else:
            self._target = url
            self._options = self.storage_options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._shown!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_leases"] = {}  # a lease belongs to the process (and thread) that holds it
        return state

    # ----------------------------------------------------------------------- writer lease

    def lease(self, *, by: str | None = None) -> StoreLease:
        """A new (not yet acquired) :class:`~kmflow.storage.lease.StoreLease` on this store.

        Its timeout and TTL are this store's, or the settings'. Mostly for tools and tests:
        the writing methods take the lease themselves (see :meth:`writing`).
        """
        storage = get_settings().storage
        return StoreLease(
            join_url(self.url, LEASE_GROUP),
            storage_options=self.storage_options,
            ttl=storage.lease_ttl if self.lease_ttl is None else self.lease_ttl,
            timeout=storage.lease_timeout if self.lease_timeout is None else self.lease_timeout,
            by=by,
            name=self._shown,
            marker=self.layout.lease_marker(),
        )

    @contextlib.contextmanager
    def writing(self, *, by: str | None = None) -> Iterator[StoreLease]:
        """Hold the store's writer lease for the block.

        Every writing method runs inside it; hold it yourself to keep several writes free of
        other writers in between. Re-entrant within a thread: the writing methods called
        inside the block use the lease already held.

        Parameters
        ----------
        by : str, optional
            What is writing, shown to writers kept waiting (default: the Prefect flow run,
            or the command).

        Raises
        ------
        StoreBusyError
            If another writer held the lease for the whole wait (``lease_timeout``).
        """
        me = threading.get_ident()
        held = self._leases.get(me)
        if held is not None:
            yield held
            return
        lease = self.lease(by=by)
        lease.acquire()
        self._leases[me] = lease
        try:
            yield lease
        finally:
            del self._leases[me]
            lease.release()

    def _check_lease(self) -> None:
        """Before a commit step: the lease must still be this writer's (StoreBusyError)."""
        lease = self._leases.get(threading.get_ident())
        if lease is None:  # a bug: every writing path holds the lease
            raise RuntimeError(f"{self!r}: writing without the writer lease")
        lease.check()

    # ----------------------------------------------------------------------- low level

    def _group(self, mode: Literal["r", "r+"]) -> zarr.Group:
        """Open the Zarr group (``mode`` 'r' or 'r+'); a missing store raises StoreNotFoundError."""
        try:
            return zarr.open_group(
                self._target, mode=mode, zarr_format=3, storage_options=self._options
            )
        except FileNotFoundError as exc:  # zarr's GroupNotFoundError is one too
            raise StoreNotFoundError(
                f"no {self.layout.noun} at {self._shown}: {self.layout.create_hint}"
            ) from exc

    def _array(self, group: zarr.Group, name: str) -> zarr.Array[Any]:
        return zarr_array(group, name, self.layout.noun)

    def _attrs(self, record: Commit) -> dict[str, Any]:
        """The group attributes that hold ``record``."""
        lay = self.layout
        raw: dict[str, Any] = {"format": lay.format, "version": lay.version, **lay.fixed}
        if lay.items_key is not None:
            raw[lay.items_key] = record.n_items
        raw[lay.rows_key] = record.n_rows
        raw["fingerprint"] = record.fingerprint
        if record.meta is not None:
            raw["meta"] = record.meta
        return {RECORD_KEY: raw}

    def _record(self, group: zarr.Group) -> Commit:
        """Validate the layout and return the commit record."""
        lay, shown, noun = self.layout, self._shown, self.layout.noun
        raw = group.attrs.asdict().get(RECORD_KEY)
        if not isinstance(raw, dict) or raw.get("format") != lay.format:
            raise StoreCorruptError(
                f"{shown} is a Zarr group but not a kmflow {noun} "
                f"(no {RECORD_KEY!r} attribute with format {lay.format!r})"
            )
        if raw.get("version") != lay.version:
            raise StoreCorruptError(
                f"{noun} {shown} has layout version {raw.get('version')!r}; "
                f"this kmflow reads version {lay.version}"
            )
        n_rows, fp, meta = raw.get(lay.rows_key), raw.get("fingerprint"), raw.get("meta")
        n_items = n_rows if lay.items_key is None else raw.get(lay.items_key)
        if not (
            isinstance(n_items, int)
            and isinstance(n_rows, int)
            and isinstance(fp, str)
            and n_items >= 0
            and n_rows >= 0
            and (meta is None or isinstance(meta, dict))
        ):
            raise StoreCorruptError(f"{noun} {shown} has a malformed commit record {raw}")
        arrays = dict(group.arrays())
        missing = [name for name in (lay.rows, *lay.item_vars) if name not in arrays]
        if missing:
            raise StoreCorruptError(f"{noun} {shown} lacks the variables {missing}")
        rows = arrays[lay.rows]
        self._check_rows_array(rows)
        if rows.shape[0] < n_rows:
            raise StoreCorruptError(
                f"{noun} {shown} commits {n_rows} {lay.row_dim}s but holds {rows.shape[0]}"
            )
        for name in lay.item_vars:
            if arrays[name].ndim != 1 or arrays[name].shape[0] < n_items:
                raise StoreCorruptError(
                    f"{name} in {noun} {shown} has shape {arrays[name].shape}; "
                    f"{n_items} {lay.item_dim}s are committed"
                )
        return Commit(n_rows=n_rows, n_items=n_items, fingerprint=fp, meta=meta)

    def _check_rows_array(self, rows: zarr.Array[Any]) -> None:
        """Raise StoreCorruptError unless ``rows`` is a valid row variable (subclass hook)."""
        if rows.ndim != 2:
            raise StoreCorruptError(
                f"{self.layout.rows} in {self._shown} must be 2-D; got shape {rows.shape}"
            )

    def _check_committed(self, arrays: dict[str, zarr.Array[Any]], record: Commit) -> None:
        """Cross-checks of the committed items and rows, after trimming (subclass hook)."""

    def _sizes(self, arrays: Mapping[str, zarr.Array[Any]], record: Commit) -> dict[str, int]:
        """Committed length of the store's own dimensions."""
        lay = self.layout
        rows = arrays[lay.rows]
        return {
            lay.row_dim: record.n_rows,
            lay.col_dim: rows.shape[1],
            lay.item_dim: record.n_items,
        }

    def _valid_derived(self, group: zarr.Group, record: Commit) -> set[str]:
        """Names of the derived variables that describe the committed items.

        A set of :attr:`Layout.derived_sets` is valid when all of it is there, its last
        variable carries the store's fingerprint and its dimensions agree (among themselves
        and with the store's); any other derived variable when it carries the fingerprint
        itself and its dimensions agree.
        """
        arrays = dict(group.arrays())
        derived = set(arrays) - self.layout.core
        sizes = self._sizes(arrays, record)
        sets = [s for s in self.layout.derived_sets if s]
        grouped = {name for s in sets for name in s}
        sets += [(name,) for name in sorted(derived - grouped)]
        valid: set[str] = set()
        for names in sets:
            if not set(names) <= derived:
                continue
            if arrays[names[-1]].attrs.get("fingerprint") != record.fingerprint:
                continue
            seen = dict(sizes)
            ok = True
            for name in names:
                dims = _dims(arrays[name])
                if len(dims) != arrays[name].ndim:
                    ok = False
                for dim, n in zip(dims, arrays[name].shape, strict=False):
                    ok = ok and seen.setdefault(dim, n) == n
            if ok:
                valid.update(names)
        return valid

    def _to_zarr(self, ds: xr.Dataset, record: Commit, **kwargs: Any) -> None:
        """``ds.to_zarr`` into this store, keeping the commit record as it is.

        xarray replaces the group's attributes with ``ds.attrs`` on every write, so the current
        record is passed along; it is only ever advanced by :meth:`_write_record`.
        """
        ds = ds.assign_attrs(self._attrs(record))
        ds.to_zarr(
            self._target,
            zarr_format=3,
            consolidated=False,
            storage_options=self._options,
            **kwargs,
        )

    def _write_record(self, group: zarr.Group, record: Commit) -> None:
        """Publish the commit record (one metadata-object write), lease checked first."""
        self._check_lease()
        group.attrs.update(self._attrs(record))

    def _create(self, empty: xr.Dataset, record: Commit) -> None:
        """Create the store from ``empty`` (the row and item variables, zero long)."""
        lay = self.layout
        rows = empty[lay.rows]
        chunk = self.chunk_rows or max(
            1, _CHUNK_BYTES // max(1, rows.shape[1] * rows.dtype.itemsize)
        )
        item_chunk = lay.item_chunk or chunk
        encoding: dict[str, dict[str, Any]] = {
            lay.rows: {"chunks": (chunk, rows.shape[1]), "compressors": _ROW_COMPRESSORS}
        }
        for name in lay.item_vars:
            encoding[name] = {"chunks": (item_chunk,)}
            if empty[name].dtype.kind == "M":
                encoding[name].update(_TIME_ENCODING)
        # Mode "a", not "w-": the lease subgroup is already there (and the lease keeps other
        # writers out).
        self._to_zarr(empty, record, mode="a", encoding=encoding)
        logger.info("created %s %s (%d rows per chunk)", lay.noun, self._shown, chunk)

    def _prepare_write(
        self, *, create: Callable[[], tuple[xr.Dataset, Commit]] | None = None
    ) -> tuple[zarr.Group, Commit]:
        """Open for writing and trim what an interrupted writer left past the commit record.

        The caller holds the writer lease. A missing store is created from ``create()`` (the
        empty variables and the first record) when given, else StoreNotFoundError.
        """
        lay = self.layout
        self._check_lease()
        try:
            group = self._group("r+")
        except StoreNotFoundError:
            if create is None:
                raise
            self._create(*create())
            group = self._group("r+")
        record = self._record(group)
        arrays = dict(group.arrays())
        for name in lay.item_vars:
            if arrays[name].shape[0] > record.n_items:
                logger.warning(
                    "%s: trimming %s from %d to %d %ss (an interrupted append)",
                    self._shown,
                    name,
                    arrays[name].shape[0],
                    record.n_items,
                    lay.item_dim,
                )
                arrays[name].resize((record.n_items,))
        self._check_committed(arrays, record)
        rows = arrays[lay.rows]
        if rows.shape[0] > record.n_rows:
            logger.warning(
                "%s: trimming %d orphan %ss of an interrupted append",
                self._shown,
                rows.shape[0] - record.n_rows,
                lay.row_dim,
            )
            rows.resize((record.n_rows, rows.shape[1]))
        valid = self._valid_derived(group, record)
        for name in self._row_derived(arrays):
            if name not in valid:
                del group[name]
        return group, record

    def _row_derived(self, arrays: Mapping[str, zarr.Array[Any]]) -> list[str]:
        """The derived variables along the row dimension."""
        return sorted(
            name
            for name, arr in arrays.items()
            if name not in self.layout.core and self.layout.row_dim in _dims(arr)
        )

    # ----------------------------------------------------------------------- appends

    def _append(
        self,
        group: zarr.Group,
        record: Commit,
        rows: da.Array,
        items: xr.Dataset | Callable[..., xr.Dataset],
        *,
        known: Sequence[str],
        also: Sequence[da.Array] = (),
        meta: dict[str, Any] | None = None,
    ) -> Commit:
        """Append rows, then their items, then commit; the new record.

        ``rows`` must match the stored row variable (dtype and width). ``also`` are Dask
        arrays computed in the same pass as the rows are written (say, hashes of the rows);
        ``items`` may then be a function of their values. ``known`` are the item hashes
        committed so far (the new fingerprint covers them and the new items). ``meta``
        replaces the record's meta when given.
        """
        computed = self._append_rows(group, record, rows, also)
        if callable(items):
            items = items(*computed)
        return self._commit_appended(group, record, int(rows.shape[0]), items, known, meta)

    def _commit_appended(
        self,
        group: zarr.Group,
        record: Commit,
        n_rows: int,
        items: xr.Dataset,
        known: Sequence[str],
        meta: dict[str, Any] | None = None,
    ) -> Commit:
        """Commit ``n_rows`` rows written after ``record``'s and their ``items``: the new
        record (lease checked first; see :meth:`_append` for ``known`` and ``meta``)."""
        self._check_lease()
        lay = self.layout
        new = Commit(
            n_rows=record.n_rows + n_rows,
            n_items=record.n_items + int(items.sizes.get(lay.item_dim, 0)),
            fingerprint=fingerprint([*known, *(str(h) for h in items[lay.hash_var].values)]),
            meta=record.meta if meta is None else meta,
        )
        self._commit_items(group, record, new, items)
        return new

    def _grow_rows(self, group: zarr.Group, start: int, n: int) -> zarr.Array[Any]:
        """Make room for ``n`` rows at row ``start`` (invisible until committed): the row
        array to write them to.

        The lease is checked first. Derived variables along the row dimension are deleted:
        they no longer cover every row.
        """
        self._check_lease()
        for name in self._row_derived(dict(group.arrays())):
            del group[name]
        # Every chunk written holds rows: Zarr's check for an all-fill-value chunk (a
        # comparison of every byte, to skip writing it) is a wasted pass over the data.
        target = self._array(group, self.layout.rows).with_config({"write_empty_chunks": True})
        target.resize((start + n, target.shape[1]))
        return target

    def _append_rows(
        self, group: zarr.Group, record: Commit, rows: da.Array, also: Sequence[da.Array] = ()
    ) -> tuple[Any, ...]:
        """Append rows after the committed ones (invisible until committed); compute ``also``."""
        start, n = record.n_rows, int(rows.shape[0])
        target = self._grow_rows(group, start, n)
        rows = rows.rechunk((aligned_chunks(start, n, target.chunks[0]), -1))
        write = da.store(
            rows,
            target,  # type: ignore[arg-type]  # a zarr array takes __setitem__ writes
            regions=(slice(start, start + n), slice(None)),
            lock=False,
            compute=False,
        )
        return tuple(dask.compute(write, *also)[1:])

    def _commit_items(
        self, group: zarr.Group, record: Commit, new_record: Commit, items: xr.Dataset
    ) -> None:
        """Append the per-item variables, then publish the new commit record."""
        start = record.n_items
        for name in self.layout.item_vars:
            if name not in items:
                continue
            target = self._array(group, name)
            values = _encoded(target, np.asarray(items[name].values))
            target.resize((start + len(values),))
            if len(values):
                target[start : start + len(values)] = values
        self._write_record(group, new_record)

    def _known_hashes(self, group: zarr.Group, record: Commit) -> list[str]:
        """The hashes of the committed items, in store order."""
        n = record.n_items
        if not n:
            return []
        return [str(h) for h in np.asarray(self._array(group, self.layout.hash_var)[:n])]

    # ----------------------------------------------------------------------- derived data

    def _write_derived(
        self,
        variables: Mapping[str, tuple[tuple[str, ...], Any]],
        record: Commit,
        group: zarr.Group,
    ) -> None:
        """Write a set of derived variables (replacing older ones), then tag them.

        The caller holds the lease and has called :meth:`_prepare_write`. Variables along the
        row dimension are rechunked to the row chunks; each gets the fingerprint, the last
        one too (it tags the set), after all the data is written.
        """
        lay = self.layout
        chunk = self._array(group, lay.rows).chunks[0]
        data_vars: dict[str, tuple[tuple[str, ...], Any]] = {}
        encoding: dict[str, dict[str, Any]] = {}
        tagged = [list(variables)[-1]]
        for name, (dims, data) in variables.items():
            if lay.row_dim in dims:
                axis = dims.index(lay.row_dim)
                if not isinstance(data, da.Array):
                    data = da.from_array(np.asarray(data))
                parts: list[Any] = [-1] * data.ndim
                parts[axis] = aligned_chunks(0, record.n_rows, chunk)
                data = data.rechunk(tuple(parts))
                enc = list(data.shape)
                enc[axis] = chunk
                encoding[name] = {"chunks": tuple(enc)}
                tagged.append(name)
            data_vars[name] = (dims, data)
            if name in group:
                del group[name]
        self._to_zarr(xr.Dataset(data_vars), record, mode="a", encoding=encoding)
        self._check_lease()
        for name in dict.fromkeys(tagged):
            group[name].attrs.update({"fingerprint": record.fingerprint})

    # ----------------------------------------------------------------------- read side

    def exists(self) -> bool:
        """Whether a Zarr group exists at ``url`` (it may still fail :meth:`open` as corrupt)."""
        try:
            self._group("r")
        except StoreNotFoundError:
            return False
        return True

    def open(self) -> xr.Dataset:
        """The committed content as a read-only, dask-backed :class:`xarray.Dataset`.

        Returns
        -------
        xarray.Dataset
            The row variable sliced to the committed rows, the item variables to the
            committed items, the derived variables that describe them. Its
            ``attrs["kmflow"]`` is the commit record.

        Raises
        ------
        StoreNotFoundError
            Nothing at ``url``.
        StoreCorruptError
            A Zarr group that is not a store of this kind.

        Notes
        -----
        Reads metadata only; no row is loaded.
        """
        lay = self.layout
        group = self._group("r")
        record = self._record(group)
        keep = set(lay.core) | self._valid_derived(group, record)
        arrays = dict(group.arrays())
        drop = sorted(set(arrays) - keep)
        sizes: dict[str, set[int]] = {}
        for name in keep:
            for dim, n in zip(_dims(arrays[name]), arrays[name].shape, strict=False):
                sizes.setdefault(dim, set()).add(n)
        committed = {lay.row_dim: slice(0, record.n_rows), lay.item_dim: slice(0, record.n_items)}
        if all(len(s) == 1 for s in sizes.values()):
            ds = self._open_zarr(drop).isel(committed, missing_dims="ignore")
        else:
            # An interrupted append wrote some variables but not all: open each variable
            # alone (xarray refuses a dimension with two lengths), cut, then merge.
            parts = [
                self._open_zarr(sorted(set(arrays) - {name})).isel(committed, missing_dims="ignore")
                for name in sorted(keep)
            ]
            ds = xr.merge(parts, combine_attrs="override", join="exact", compat="override")
        return ds.assign_attrs(self._attrs(record))

    def _open_zarr(self, drop: Sequence[str]) -> xr.Dataset:
        return xr.open_dataset(
            self._target,
            engine="zarr",
            zarr_format=3,
            consolidated=False,
            storage_options=self._options,
            drop_variables=list(drop),
            chunks={},
            mode="r",
        )

    def rows(self) -> da.Array:
        """The committed rows: a Dask array in the store's chunks (the last may be partial)."""
        return self.open()[self.layout.rows].data

    @property
    def n_rows(self) -> int:
        """Number of committed rows (0 for an empty store)."""
        return self._record(self._group("r")).n_rows

    def fingerprint(self) -> str:
        """Identity of the committed data: :func:`kmflow.fingerprint.fingerprint` of the items.

        Stored in the commit record, so this reads one small metadata object.
        """
        return self._record(self._group("r")).fingerprint


# --------------------------------------------------------------------------- the generic store


def _row_digests(block: np.ndarray) -> np.ndarray:
    """SHA-256 of each row's little-endian bytes, as (n, 32) uint8."""
    rows = np.ascontiguousarray(block.astype(block.dtype.newbyteorder("<"), copy=False))
    out = np.empty((rows.shape[0], 32), dtype=np.uint8)
    for i in range(rows.shape[0]):
        out[i] = np.frombuffer(hashlib.sha256(rows[i].tobytes()).digest(), dtype=np.uint8)
    return out


def _item_hashes(ids: np.ndarray, digests: np.ndarray) -> np.ndarray:
    """Each row's hash: SHA-256 (hex) of its id (as text), a NUL, and its bytes' digest."""
    return np.array(
        [
            hashlib.sha256(str(i).encode("utf-8") + b"\0" + d.tobytes()).hexdigest()
            for i, d in zip(ids.tolist(), digests, strict=True)
        ],
        dtype=_STRING,
    )


def _checked_ids(ids: Any, n: int) -> np.ndarray:
    """``ids`` as a StringDType or int64 array of length ``n``."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidInputError(f"ids must be one per row, shape ({n},); got shape {arr.shape}")
    if arr.size == 0 and arr.dtype.kind not in "iuUTO":
        return arr.astype(np.int64)  # no rows (np.array([]) is float64): any kind will do
    if arr.dtype.kind in "iu":
        if arr.size and arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
            raise InvalidInputError("integer ids must fit int64")
        return arr.astype(np.int64)
    if arr.dtype.kind in "UT" or (
        arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.tolist())
    ):
        return arr.astype(_STRING)
    raise InvalidInputError(f"ids must be strings or integers; got dtype {arr.dtype}")


def _checked_hashes(hashes: Any, n: int) -> np.ndarray:
    arr = np.asarray(hashes)
    if arr.shape != (n,) or not (
        arr.size == 0
        or arr.dtype.kind in "UT"
        or (arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr))
    ):
        raise InvalidInputError(f"hashes must be {n} strings, one per row; got {arr.shape}")
    return arr.astype(_STRING)


def _checked_meta(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, Mapping):
        raise InvalidInputError(f"meta must be a JSON object (a dict); got {type(meta).__name__}")
    try:
        return dict(json.loads(json.dumps(dict(meta), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"meta must be JSON-serialisable: {exc}") from exc


class RowStore(RowStoreBase):
    """A generic append-only row store: a matrix ``X(row, feature)`` and an id per row.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the Zarr group.
    storage_options : dict, optional
        fsspec options for ``url``; never logged.
    format : str, default "kmflow.rowstore"
        The commit record's ``format``: a job may give its stores their own, so that one
        job's store is never read as another's.
    chunk_rows : int, optional
        Rows per Zarr chunk when the store is created (default: about 8 MiB of rows); an
        existing store keeps its own.
    lease_timeout, lease_ttl : float, optional
        As for :class:`RowStoreBase`.

    Notes
    -----
    Every row is an item: its hash (the ``sha256`` variable) is the caller's, or SHA-256 of
    its id and its bytes; the store's :meth:`fingerprint` is over them. Ids are not checked
    for uniqueness. The dtype and width of ``X``, and whether ids are strings or integers,
    are fixed by the first append.

    Examples
    --------
    >>> store = RowStore("memory://doc/rows.zarr", chunk_rows=1000)
    >>> store.append(np.eye(3), ids=["a", "b", "c"], meta={"features": ["x", "y", "z"]})
    range(0, 3)
    >>> store.n_rows, store.meta["features"]
    (3, ['x', 'y', 'z'])
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: dict[str, Any] | None = None,
        format: str = "kmflow.rowstore",
        chunk_rows: int | None = None,
        lease_timeout: float | None = None,
        lease_ttl: float | None = None,
    ) -> None:
        if not isinstance(format, str) or not format:
            raise InvalidInputError(f"format must be a non-empty string; got {format!r}")
        super().__init__(
            url,
            layout=Layout(format=format),
            storage_options=storage_options,
            chunk_rows=chunk_rows,
            lease_timeout=lease_timeout,
            lease_ttl=lease_ttl,
        )

    # ----------------------------------------------------------------------- writing

    def append(
        self,
        rows: Any,
        *,
        ids: Any = None,
        hashes: Any = None,
        meta: Mapping[str, Any] | None = None,
        by: str | None = None,
    ) -> range:
        """Append rows (and their ids) after the committed ones, atomically.

        Parameters
        ----------
        rows : dask or numpy array, shape (n, n_features)
            Numeric (bool, integer or float) rows; cast to the stored dtype if that is safe.
        ids : array of str or int, shape (n,), optional
            Id of each row. Default: the row numbers (a store with string ids needs them).
        hashes : array of str, shape (n,), optional
            Hash of each row, when the caller has better ones (the content hash of the
            source a row came from); default: SHA-256 of the id and the row's bytes.
        meta : dict, optional
            JSON object that replaces the store's meta (feature names, the preprocessing that
            produced the rows); default: kept.
        by : str, optional
            Who is writing, shown to writers kept waiting for the lease.

        Returns
        -------
        range
            Row numbers of the appended rows.

        Raises
        ------
        InvalidInputError
            Rows that are not 2-D numeric, or do not match the stored dtype or width; ids,
            hashes or meta of the wrong kind. Nothing is written then.
        StoreCorruptError, StoreBusyError
        """
        x = rows if isinstance(rows, da.Array) else da.from_array(np.asarray(rows))
        if x.ndim != 2 or x.shape[1] < 1:
            raise InvalidInputError(f"rows must be 2-D with >= 1 column; got shape {x.shape}")
        if x.dtype.kind not in "biuf":
            raise InvalidInputError(f"rows must be numeric; got dtype {x.dtype}")
        if any(np.isnan(c) for c in x.shape):
            raise InvalidInputError("rows must have known chunk sizes (call compute_chunk_sizes)")
        n = int(x.shape[0])
        given_ids = None if ids is None else _checked_ids(ids, n)
        given_hashes = None if hashes is None else _checked_hashes(hashes, n)
        new_meta = None if meta is None else _checked_meta(meta)
        with self.writing(by=by):
            return self._append_rows_and_ids(x, given_ids, given_hashes, new_meta)

    def _append_rows_and_ids(
        self,
        x: da.Array,
        ids: np.ndarray | None,
        hashes: np.ndarray | None,
        meta: dict[str, Any] | None,
    ) -> range:
        def empty() -> tuple[xr.Dataset, Commit]:
            id_dtype = _STRING if ids is not None and ids.dtype == _STRING else np.int64
            ds = xr.Dataset(
                {
                    "X": (("row", "feature"), np.zeros((0, x.shape[1]), x.dtype)),
                    "id": ("row", np.array([], dtype=id_dtype)),
                    "sha256": ("row", np.array([], dtype=_STRING)),
                }
            )
            return ds, Commit(0, 0, fingerprint([]), meta if meta is not None else {})

        group, record = self._prepare_write(create=empty)
        stored = self._array(group, "X")
        if stored.shape[1] != x.shape[1]:
            raise InvalidInputError(
                f"rows have {x.shape[1]} columns but {self._shown} stores {stored.shape[1]}"
            )
        if not np.can_cast(x.dtype, stored.dtype, "safe"):
            raise InvalidInputError(
                f"rows of dtype {x.dtype} cannot be stored safely as {stored.dtype}"
            )
        string_ids = self._array(group, "id").dtype.kind == "T"
        start, n = record.n_rows, int(x.shape[0])
        if ids is None:
            if string_ids:
                raise InvalidInputError(f"{self._shown} has string ids: pass ids for new rows")
            ids = np.arange(start, start + n, dtype=np.int64)
        elif n == 0:
            ids = np.array([], dtype=_STRING if string_ids else np.int64)
        elif (ids.dtype == _STRING) != string_ids:
            kind = "strings" if string_ids else "integers"
            raise InvalidInputError(f"the ids of {self._shown} are {kind}; got {ids.dtype}")
        x = x.astype(stored.dtype).rechunk({1: -1})
        known = self._known_hashes(group, record)
        row_ids = ids

        def items(*digests: np.ndarray) -> xr.Dataset:
            sha = hashes if hashes is not None else _item_hashes(row_ids, digests[0])
            return xr.Dataset({"id": ("row", row_ids), "sha256": ("row", sha)})

        also = (
            []
            if hashes is not None
            else [da.map_blocks(_row_digests, x, dtype=np.uint8, chunks=(x.chunks[0], (32,)))]
        )
        self._append(group, record, x, items, known=known, also=also, meta=meta)
        logger.info("%s: appended %d rows", self._shown, n)
        return range(start, start + n)

    def write_derived(
        self, name: str, data: Any, dims: Sequence[str], *, by: str | None = None
    ) -> None:
        """Store a variable computed from the committed rows, tagged with their fingerprint.

        Parameters
        ----------
        name : str
            Variable name (letters, digits, underscores; not ``X``, ``id`` or ``sha256``).
        data : dask or numpy array
            Its values; along the ``row`` dimension it must have one entry per committed row
            (written in the row chunks).
        dims : sequence of str
            One dimension name per axis: ``row`` and ``feature`` are the store's own.

        Notes
        -----
        :meth:`read_derived` returns it until rows are appended (one along ``row`` is
        deleted by the next append).
        """
        if not isinstance(name, str) or not _NAME.match(name) or name in self.layout.core:
            raise InvalidInputError(f"not a name for a derived variable: {name!r}")
        array = data if isinstance(data, da.Array) else np.asarray(data)
        dims = tuple(dims)
        if len(dims) != array.ndim or not all(isinstance(d, str) and d for d in dims):
            raise InvalidInputError(
                f"dims must name each of the {array.ndim} axes of {name!r}; got {dims}"
            )
        self._group("r")  # StoreNotFoundError before any lease file is written
        with self.writing(by=by):
            group, record = self._prepare_write()
            sizes = self._sizes(dict(group.arrays()), record)
            for dim, n in zip(dims, array.shape, strict=True):
                if dim in sizes and sizes[dim] != n:
                    raise InvalidInputError(
                        f"{name!r} has {n} entries along {dim!r} but the store commits {sizes[dim]}"
                    )
            self._write_derived({name: (dims, array)}, record, group)
        logger.info("%s: wrote %s", self._shown, name)

    # ----------------------------------------------------------------------- reading

    def X(self) -> da.Array:
        """The committed rows, shape (n_rows, n_features), in the store's chunks."""
        return self.rows()

    def ids(self) -> np.ndarray:
        """The committed ids (StringDType or int64), in row order."""
        return np.asarray(self.open()["id"].values)

    def hashes(self) -> np.ndarray:
        """The committed row hashes (hex strings), in row order."""
        return np.asarray(self.open()["sha256"].values)

    @property
    def meta(self) -> dict[str, Any]:
        """The store's meta (a JSON object; ``{}`` if none was given)."""
        return dict(self._record(self._group("r")).meta or {})

    def read_derived(self, name: str) -> da.Array | None:
        """The derived variable ``name`` if it describes the committed rows, else None."""
        ds = self.open()
        if name in self.layout.core or name not in ds:
            return None
        return ds[name].data
