"""Reading tables of records (CSV, TSV, Parquet) from local paths or any fsspec URL.

:func:`read_table` turns a source (a file, a folder, a glob, or a list of them) into a
:class:`Table`: a partitioned :mod:`dask.dataframe` whose index ``__row__`` is the global
0-based row number, the files it came from and a content fingerprint. Every problem with the
input is a :class:`~kmflow.errors.TableError` (or :class:`~kmflow.errors.SourceNotFoundError`)
whose message is one line naming the file, and the column and line where that applies.

Examples
--------
>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a.csv").write_text("name,spend ($)\\nann,1.5\\nbob,\\n")
>>> table = read_table(str(folder))
>>> table.n_rows, table.format, list(table.frame.columns)
(2, 'csv', ['name', 'spend ($)'])
>>> table.frame.compute()["spend ($)"].tolist()
['1.5', '']
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from fsspec.utils import read_block

from kmflow.errors import (
    InvalidInputError,
    SourceNotFoundError,
    TableError,
)
from kmflow.fingerprint import fingerprint
from kmflow.storage.fs import get_fs, redact_url, storage_errors, storage_options_for, url_of

__all__ = ["ROW", "TABLE_EXTENSIONS", "Table", "read_table", "table_format"]

logger = logging.getLogger(__name__)

#: Name of the index every :class:`Table` frame carries: the global 0-based row number.
ROW = "__row__"

#: File name endings (lower case) read as tables, and the format of each.
TABLE_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}

TableFormat = Literal["csv", "tsv", "parquet"]

_GLOB_MAGIC = re.compile(r"[*?\[]")
_HASH_CHUNK = 4 * 2**20
_DEFAULT_BLOCKSIZE = 64 * 2**20
_HEADER_PROBE = 2**20


def table_format(url: str) -> TableFormat | None:
    """The table format of a file name (``"csv"``, ``"tsv"``, ``"parquet"``), or None.

    Examples
    --------
    >>> table_format("s3://b/x/2024.CSV.gz"), table_format("part.0.parquet"), table_format("a.txt")
    ('csv', 'parquet', None)
    """
    name = posixpath.basename(url.rstrip("/")).lower()
    for ending in sorted(TABLE_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ending):
            return TABLE_EXTENSIONS[ending]  # type: ignore[return-value]
    return None


@dataclass(frozen=True)
class Table:
    """A table read by :func:`read_table`.

    Attributes
    ----------
    frame : dask.dataframe.DataFrame
        The rows, columns as read: every CSV/TSV column as text (pandas ``str``; an empty
        cell is ``""``, never NaN, so inference is left to the caller), Parquet columns with
        their stored types (pandas' own metadata ignored: a stored pandas index is a
        column like any other). The index, named ``__row__`` (:data:`ROW`), is the int64 global
        0-based row number, contiguous across partitions and files (files in ``files``
        order, rows in file order); the divisions are known, so ``frame.loc[i]`` reads one
        partition.
    files : list of str
        The files read, sorted by URL (plain local paths stay plain absolute paths).
    format : {"csv", "tsv", "parquet"}
    fingerprint : str
        sha256 hex of the content: :func:`kmflow.fingerprint.fingerprint` of the hex sha256
        of each file's bytes (as stored, so a compressed file's compressed bytes). File
        names and locations do not count: the same files copied elsewhere have the same
        fingerprint; any changed byte changes it.
    n_rows : int
        Number of data rows (header lines not counted).
    columns : tuple of str
        Column names, in file order.
    partition_rows : tuple of int
        Rows in each partition of ``frame`` (all positive; they sum to ``n_rows``).
    """

    frame: Any
    files: list[str]
    format: TableFormat
    fingerprint: str
    n_rows: int
    columns: tuple[str, ...]
    partition_rows: tuple[int, ...] = field(repr=False)

    def row_starts(self) -> np.ndarray:
        """Global row number of the first row of each partition (int64)."""
        return np.concatenate([[0], np.cumsum(self.partition_rows)[:-1]]).astype(np.int64)


def read_table(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    storage_options: dict[str, Any] | None = None,
    blocksize: int = _DEFAULT_BLOCKSIZE,
) -> Table:
    """Read a CSV, TSV or Parquet table from files, folders or globs, local or remote.

    Parameters
    ----------
    source : str, os.PathLike or sequence of them
        Each item is a file (``customers.csv``, ``s3://bucket/x.parquet``), a folder
        (every table file below it, at any depth; other files, such as Parquet's
        ``_metadata`` and ``_SUCCESS``, are skipped) or a glob (``exports/2024-*.csv``,
        ``s3://bucket/**/*.parquet``; ``**`` matches any number of folders). Extensions
        (case-insensitive): ``.csv``, ``.csv.gz``, ``.tsv``, ``.tsv.gz``, ``.parquet``,
        ``.pq``. All files must have the same format.
    storage_options : dict, optional
        fsspec storage options for every item; ``None`` takes them from the settings
        (:func:`kmflow.storage.fs.storage_options_for`: S3 endpoint, keys, retries).
    blocksize : int, default 64 MiB
        Bytes of an uncompressed CSV/TSV file per partition (split at line ends).
        Compressed files are one partition each; Parquet files one partition per row group.

    Returns
    -------
    Table

    Raises
    ------
    SourceNotFoundError
        An item does not exist, or a folder or glob holds no table file.
    TableError
        One line naming the file: an unsupported extension, mixed formats, an empty file
        (0 bytes), a CSV header with an empty or duplicate column name, files whose
        columns differ (both files and the differing columns named), a malformed line
        (wrong number of fields: file, line number, fields expected and found), a corrupt
        Parquet file, Parquet files with different schemas, or no data rows at all.
    StorageError
        A file cannot be listed or read (permissions, network).
    InvalidInputError
        No source, a bad `blocksize`, or an unknown URL protocol.

    Notes
    -----
    Two computes, both run as Dask tasks on the current scheduler (files are never read
    into the driver): one over the files (sha256 of the bytes, CSV header or Parquet
    footer), one over the partitions (parsing each to count its rows, which also finds
    malformed lines now rather than in a later computation). The returned ``frame`` is
    lazy and parses again when computed. CSV/TSV: UTF-8 (a byte-order mark is dropped),
    ``"`` quoting; blank lines are skipped; a quoted field holding a line break is not
    supported in files split into several partitions (the split is at line ends). A file
    holding only a header adds no rows (only a table with no rows at all is an error).
    """
    if not isinstance(blocksize, int) or blocksize < 1024:
        raise InvalidInputError(f"blocksize={blocksize!r} must be an int of at least 1024 bytes")
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not items:
        raise InvalidInputError("no table source given (an empty list)")
    found: dict[str, tuple[Any, str]] = {}
    for item in items:
        text = os.fspath(item)
        options = storage_options if storage_options is not None else storage_options_for(text)
        for url, fs, path in _discover_one(text, options):
            found.setdefault(url, (fs, path))
    urls = sorted(found)
    formats = {url: table_format(url) for url in urls}
    unsupported = [url for url, fmt in formats.items() if fmt is None]
    if unsupported:
        raise TableError(
            f"{redact_url(unsupported[0])}: unsupported file type (read: "
            f"{', '.join(TABLE_EXTENSIONS)})"
        )
    kinds = sorted({fmt for fmt in formats.values() if fmt is not None})
    if len(kinds) > 1:
        first = {k: next(u for u in urls if formats[u] == k) for k in kinds}
        raise TableError(
            "the source mixes table formats: "
            + " and ".join(f"{redact_url(first[k])} ({k})" for k in kinds)
        )
    fmt: TableFormat = kinds[0]  # type: ignore[assignment]
    files = [_File(url, *found[url]) for url in urls]
    if fmt == "parquet":
        return _read_parquet(files)
    return _read_csv(files, fmt, blocksize)


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class _File:
    url: str
    fs: Any
    path: str


def _discover_one(text: str, options: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The table files one source item names: (url, fs, path) each."""
    fs, path = get_fs(text, options)
    with storage_errors("list", text):
        fs.invalidate_cache(path)
        if _GLOB_MAGIC.search(path) and not fs.exists(path):
            parts = path.split("/")
            first_magic = next(i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part))
            root = "/".join(parts[:first_magic])
            if root:
                fs.invalidate_cache(root)
                if not fs.isdir(root):
                    raise SourceNotFoundError(
                        f"table source not found: {redact_url(text)} "
                        f"(folder {root!r} does not exist)"
                    )
            matches = fs.glob(path, detail=True)
            listed = [p for p, info in matches.items() if info.get("type") == "file"]
            if not listed:
                raise SourceNotFoundError(f"no file matches {redact_url(text)}")
            return [(url_of(fs, p, text), fs, p) for p in listed]
        if fs.isdir(path):
            listing = fs.find(path, withdirs=False, detail=True)
            kept = [
                p
                for p, info in listing.items()
                if info.get("type") == "file"
                and not posixpath.basename(p).startswith((".", "_"))
                and table_format(p) is not None
            ]
            if not kept:
                raise SourceNotFoundError(
                    f"no table file (.csv, .tsv, .parquet, ...) in {redact_url(text)}"
                )
            return [(url_of(fs, p, text), fs, p) for p in kept]
        if fs.isfile(path):
            return [(url_of(fs, path, text), fs, path)]
    raise SourceNotFoundError(f"table source not found: {redact_url(text)}")


# --------------------------------------------------------------------------- shared helpers


def _sha256(f: Any) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(_HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _build_frame(
    parts: list[tuple[Any, ...]], counts: list[int], reader: Any, meta: pd.DataFrame
) -> tuple[Any, tuple[int, ...]]:
    """A frame from per-partition readers, indexed by the global row number."""
    kept = [(part, n) for part, n in zip(parts, counts, strict=True) if n > 0]
    lengths = tuple(n for _, n in kept)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
    divisions = (*starts, int(sum(lengths)) - 1)
    args = [(*part, start) for (part, _), start in zip(kept, starts, strict=True)]
    frame = dd.from_map(
        reader,
        *[list(column) for column in zip(*args, strict=True)],
        meta=meta,
        divisions=divisions,
        label="read-table",
        enforce_metadata=False,
    )
    return frame, lengths


def _with_row_index(df: pd.DataFrame, start: int) -> pd.DataFrame:
    df.index = pd.RangeIndex(start, start + len(df), name=ROW).astype(np.int64)
    return df


# --------------------------------------------------------------------------- CSV / TSV


def _compression(url: str) -> str | None:
    return "gzip" if url.lower().endswith(".gz") else None


def _csv_file_info(file: _File, sep: str) -> tuple[str, int, list[str] | None]:
    """(sha256, size, header) of one CSV file; header None for an empty file."""
    with storage_errors("read", file.url):
        size = int(file.fs.size(file.path))
        with file.fs.open(file.path, "rb") as f:
            digest = _sha256(f)
        if size == 0:
            return digest, 0, None
        with file.fs.open(file.path, "rb", compression=_compression(file.url)) as f:
            probe = f.read(_HEADER_PROBE)
    text = _decode(probe, file.url, partial=True)
    if not text.strip():
        return digest, size, []
    first = next(csv.reader(io.StringIO(text), delimiter=sep), [])
    return digest, size, [name.strip() for name in first]


def _decode(data: bytes, url: str, *, partial: bool = False) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if partial and exc.start >= len(data) - 4:  # a character cut by the probe's end
            return data[: exc.start].decode("utf-8-sig")
        raise TableError(
            f"{redact_url(url)}: not UTF-8 text (byte {exc.start}: "
            f"{data[exc.start : exc.start + 1]!r})"
        ) from None


def _read_csv(files: list[_File], fmt: TableFormat, blocksize: int) -> Table:
    sep = "\t" if fmt == "tsv" else ","
    infos = dask.compute(*[dask.delayed(_csv_file_info)(f, sep) for f in files])
    columns: list[str] = []
    first_url = ""
    for file, (_, _, header) in zip(files, infos, strict=True):
        shown = redact_url(file.url)
        if header is None:
            raise TableError(f"{shown}: empty file (0 bytes)")
        if not header:
            raise TableError(f"{shown}: no header line (the file holds only blank lines)")
        for i, name in enumerate(header):
            if not name:
                raise TableError(f"{shown}: column {i + 1} of the header has no name")
        dupes = sorted({n for n in header if header.count(n) > 1})
        if dupes:
            raise TableError(f"{shown}: duplicate column name {dupes[0]!r} in the header")
        if not first_url:
            columns, first_url = header, file.url
        elif header != columns:
            raise TableError(_columns_differ(first_url, columns, file.url, header))
    parts: list[tuple[Any, ...]] = []
    for file, (_, size, _) in zip(files, infos, strict=True):
        if _compression(file.url) is not None:
            parts.append((file, sep, tuple(columns), 0, -1))
        else:
            parts.extend(
                (file, sep, tuple(columns), offset, blocksize)
                for offset in range(0, size, blocksize)
            )
    counts = list(dask.compute(*[dask.delayed(_count_csv_block)(*part) for part in parts]))
    if sum(counts) == 0:
        shown = redact_url(files[0].url) if len(files) == 1 else f"{len(files)} files"
        raise TableError(f"{shown}: a header but no data rows")
    meta = pd.DataFrame({c: pd.Series([], dtype="str") for c in columns})
    meta.index = pd.Index([], dtype=np.int64, name=ROW)
    frame, lengths = _build_frame(parts, counts, _read_csv_part, meta)
    return Table(
        frame=frame,
        files=[f.url for f in files],
        format=fmt,
        fingerprint=fingerprint([info[0] for info in infos]),
        n_rows=int(sum(lengths)),
        columns=tuple(columns),
        partition_rows=lengths,
    )


def _columns_differ(url_a: str, cols_a: list[str], url_b: str, cols_b: list[str]) -> str:
    only_a = [c for c in cols_a if c not in cols_b]
    only_b = [c for c in cols_b if c not in cols_a]
    if only_a or only_b:
        what = "; ".join(
            part
            for part in (
                f"only in the first: {', '.join(map(repr, only_a))}" if only_a else "",
                f"only in the second: {', '.join(map(repr, only_b))}" if only_b else "",
            )
            if part
        )
    else:
        what = "same columns in a different order"
    return f"{redact_url(url_a)} and {redact_url(url_b)} have different columns ({what})"


def _block_bytes(file: _File, offset: int, length: int) -> bytes:
    """The lines of the block at `offset` (header excluded), as dask's read_bytes splits."""
    with storage_errors("read", file.url):
        if length < 0:
            with file.fs.open(file.path, "rb", compression=_compression(file.url)) as f:
                data = f.read()
        else:
            with file.fs.open(file.path, "rb") as f:
                data = read_block(f, offset, length, delimiter=b"\n")
    if offset == 0:
        end = data.find(b"\n")
        data = b"" if end < 0 else data[end + 1 :]
    return data


def _parse_csv_block(
    file: _File, sep: str, columns: tuple[str, ...], offset: int, length: int
) -> pd.DataFrame:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    data = _block_bytes(file, offset, length)
    if not data.strip():
        return pd.DataFrame({c: pd.Series([], dtype="str") for c in columns})
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=list(columns), use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=sep),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise TableError(_locate_bad_line(file, sep, len(columns), exc)) from None
    df = table.to_pandas()
    df.columns = list(columns)
    return df.astype("str")


def _locate_bad_line(file: _File, sep: str, n_fields: int, exc: Exception) -> str:
    """One-line message naming the file and the first line with the wrong number of fields."""
    shown = redact_url(file.url)
    with (
        storage_errors("read", file.url),
        file.fs.open(file.path, "rb", compression=_compression(file.url)) as f,
    ):
        data = f.read()
    text = _decode(data, file.url)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    next(reader, None)
    for row in reader:
        if row and len(row) != n_fields:
            return (
                f"{shown}: line {reader.line_num} has {len(row)} fields, the header has {n_fields}"
            )
    return f"{shown}: malformed CSV: {str(exc).splitlines()[0]}"


def _count_csv_block(
    file: _File, sep: str, columns: tuple[str, ...], offset: int, length: int
) -> int:
    return len(_parse_csv_block(file, sep, columns, offset, length))


def _read_csv_part(
    file: _File, sep: str, names: tuple[str, ...], offset: int, length: int, start: int
) -> pd.DataFrame:
    # Not ``columns``: from_map would then push column selections into this call.
    return _with_row_index(_parse_csv_block(file, sep, names, offset, length), start)


# --------------------------------------------------------------------------- Parquet


def _parquet_file_info(file: _File) -> tuple[str, Any, list[int]]:
    """(sha256, arrow schema, rows per row group) of one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shown = redact_url(file.url)
    with storage_errors("read", file.url):
        if int(file.fs.size(file.path)) == 0:
            raise TableError(f"{shown}: empty file (0 bytes)")
        with file.fs.open(file.path, "rb") as f:
            digest = _sha256(f)
        with file.fs.open(file.path, "rb") as f:
            try:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
            except (pa.ArrowException, OSError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TableError(f"{shown}: not a readable Parquet file ({reason})") from None
            groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return digest, schema, groups


def _read_parquet_part(file: _File, group: int, start: int) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with storage_errors("read", file.url), file.fs.open(file.path, "rb") as f:
        try:
            table = pq.ParquetFile(f).read_row_group(group)
        except (pa.ArrowException, OSError) as exc:
            raise TableError(
                f"{redact_url(file.url)}: cannot read row group {group} "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
    return _with_row_index(table.to_pandas(ignore_metadata=True), start)


def _read_parquet(files: list[_File]) -> Table:
    infos = dask.compute(*[dask.delayed(_parquet_file_info)(f) for f in files])
    schema = infos[0][1]
    for file, (_, other, _) in zip(files[1:], infos[1:], strict=True):
        if not other.remove_metadata().equals(schema.remove_metadata()):
            raise TableError(
                _schemas_differ(
                    files[0].url,
                    [(f.name, str(f.type)) for f in schema],
                    file.url,
                    [(f.name, str(f.type)) for f in other],
                )
            )
    parts: list[tuple[Any, ...]] = []
    counts: list[int] = []
    for file, (_, _, groups) in zip(files, infos, strict=True):
        for i, n in enumerate(groups):
            parts.append((file, i))
            counts.append(n)
    if sum(counts) == 0:
        shown = redact_url(files[0].url) if len(files) == 1 else f"{len(files)} files"
        raise TableError(f"{shown}: no data rows")
    meta = _with_row_index(schema.empty_table().to_pandas(ignore_metadata=True), 0)
    frame, lengths = _build_frame(parts, counts, _read_parquet_part, meta)
    return Table(
        frame=frame,
        files=[f.url for f in files],
        format="parquet",
        fingerprint=fingerprint([info[0] for info in infos]),
        n_rows=int(sum(lengths)),
        columns=tuple(schema.names),
        partition_rows=lengths,
    )


def _schemas_differ(
    url_a: str, schema_a: list[tuple[str, str]], url_b: str, schema_b: list[tuple[str, str]]
) -> str:
    types_a, types_b = dict(schema_a), dict(schema_b)
    diffs = [f"{c!r} only in the first" for c in types_a if c not in types_b]
    diffs += [f"{c!r} only in the second" for c in types_b if c not in types_a]
    diffs += [
        f"{c!r} is {types_a[c]} in the first and {types_b[c]} in the second"
        for c in types_a
        if c in types_b and types_a[c] != types_b[c]
    ]
    if not diffs:
        diffs = ["same columns in a different order"]
    return (
        f"Parquet files {redact_url(url_a)} and {redact_url(url_b)} have different schemas: "
        + "; ".join(diffs)
    )
