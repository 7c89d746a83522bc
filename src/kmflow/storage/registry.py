"""The model registry: versioned k-means models at any fsspec URL (local, ``memory://``, S3).

Layout under the registry URL::

    <name>/v000001/centers.npy    float64 (n_clusters, n_features), written by numpy.save
    <name>/v000001/model.json     the ModelRecord (kmflow.core.model), written last
    <name>/v000002/...
    <name>/champion.json          {"version": N, "promoted_at": "<ISO 8601, UTC>", "previous": M}
    <name>/history/<UTC time>-<uuid>.json   one event each: a promotion, a drift check

The history is append-only: every event (:meth:`ModelRegistry.log_event`) is a new small
JSON file, named by its UTC time and a random UUID and created exclusively, so writers in
any number of processes never overwrite each other and no file is ever rewritten;
:meth:`ModelRegistry.history` reads them back in time order. :meth:`ModelRegistry.promote`
logs each promotion there; the monitor flows log each checked batch.

A version number is claimed by creating its ``centers.npy`` with an *exclusive create*
(:func:`kmflow.storage.lease.write_bytes_exclusive`: a hard link on a local disk,
``If-None-Match: *`` on S3, a lock on ``memory://``): of several processes registering the
same name at once, exactly one gets each number, and a caller that loses the race takes the
next one. No caller's centers are ever overwritten. Writing ``model.json`` (exclusive too) is
the publish step: a version folder without it (a registration that crashed half-way) is
invisible to every reader, and its number is never reused, since claiming starts one above
the largest number among *all* version folders, complete or not. ``champion.json`` names the
serving version and is replaced in one atomic write (temporary file and ``os.replace`` on a
local disk, a single PUT on object stores), so readers see the old champion or the new one.

Centers are stored as ``.npy`` and read with ``allow_pickle=False``: nothing is ever pickled
or unpickled, and the header's shape and dtype are checked against the file's size before
anything is allocated. Every read of a model checks its files against each other (shape,
finiteness, sha256) and raises :class:`~kmflow.errors.ModelCorruptError` on any mismatch;
listings (:meth:`ModelRegistry.names`, :meth:`ModelRegistry.versions`) skip a corrupt
version with a warning instead, so one damaged model never hides the others.

Registering is idempotent under retry when a ``run_key`` is given (two registrations with
the same key running *at the same time* may both register). Readers and promotions may run
at any time; concurrent promotions are last-writer-wins.

Examples
--------
>>> import numpy as np
>>> registry = ModelRegistry("memory://kmflow-doctest/models")
>>> record = registry.register(
...     "palette", np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), init="k-means||",
...     seed=0, n_iter=3, converged=True, inertia=1.5, fingerprint="abc",
... )
>>> record.version, record.n_clusters, record.n_features
(1, 2, 3)
>>> registry.promote("palette", 1).version
1
>>> registry.load("palette", "champion").centers[1]
array([1., 1., 1.])
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kmflow.core.jsonable import json_ready
from kmflow.core.model import NAME_PATTERN, Model, ModelRecord, centers_sha256, read_npy
from kmflow.core.preprocessing import array_file
from kmflow.errors import (
    InvalidInputError,
    ModelCorruptError,
    ModelNotFoundError,
    SourceNotFoundError,
    StorageError,
)
from kmflow.storage.fs import (
    get_fs,
    join_url,
    read_bytes,
    redact_url,
    storage_errors,
    write_bytes_atomic,
)
from kmflow.storage.lease import write_bytes_exclusive

__all__ = [
    "CENTERS_FILE",
    "CHAMPION_FILE",
    "EVENT_TYPES",
    "HISTORY_DIR",
    "RECORD_FILE",
    "ModelRegistry",
]

logger = logging.getLogger(__name__)

#: File names inside a model's folder and its version folders.
CENTERS_FILE = "centers.npy"
RECORD_FILE = "model.json"
CHAMPION_FILE = "champion.json"
#: Folder (inside a model's folder) of its append-only history of events.
HISTORY_DIR = "history"
#: What a history event may record.
EVENT_TYPES: tuple[str, ...] = ("promotion", "drift")
_EVENT_FILE = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)-([0-9a-f]{32})\.json$")

_NAME = re.compile(NAME_PATTERN)
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
#: Version numbers a registration tries (past the largest it listed) before giving up.
_MAX_CLAIMS = 10_000


def _version_dir(version: int) -> str:
    return f"v{version:06d}"


def _package_version() -> str:
    try:
        return _distribution_version("kmflow")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def _summary(exc: ValidationError) -> str:
    """One line naming the first problems pydantic found."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


class _Pointer(BaseModel):
    """Content of ``champion.json`` (unknown keys are ignored, for forward compatibility)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = Field(ge=1, description="The champion version.")
    promoted_at: dt.datetime = Field(description="When it was promoted (UTC).")
    previous: int | None = Field(default=None, ge=1, description="The champion before it.")

    @field_validator("promoted_at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        if value.utcoffset() is None:
            raise ValueError("promoted_at has no timezone")
        return value


@dataclass(frozen=True)
class _Scan:
    """What one listing of a model's folder found."""

    numbers: list[int] = field(default_factory=list)  # every version folder, ascending
    complete: list[int] = field(default_factory=list)  # those with a model.json, ascending


class ModelRegistry:
    """Versioned k-means models (centers + record) under one URL, with a champion per name.

    Parameters
    ----------
    url : str or os.PathLike
        Root of the registry: a local folder or any fsspec URL (``s3://bucket/models``,
        ``memory://models``). It need not exist yet; nothing is read or written until a
        method is called.
    storage_options : dict, optional
        Keyword arguments for the filesystem (see
        :func:`kmflow.storage.fs.storage_options_for`). They may hold credentials: they are
        never logged nor shown in messages.

    Notes
    -----
    ``version`` arguments accept a version number, a string of decimal digits, ``"latest"``
    (the highest complete version) or ``"champion"`` (the version ``champion.json`` names).

    Every method lists or reads the storage afresh (listing caches are invalidated first),
    so several registry objects, in several processes, see each other's writes.
    """

    def __init__(
        self, url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
    ) -> None:
        self._url = os.fspath(url)
        self._options = dict(storage_options) if storage_options else None

    @property
    def url(self) -> str:
        """The registry's root URL, as given."""
        return self._url

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """The filesystem options it was opened with (may hold credentials: never log them)."""
        return None if self._options is None else dict(self._options)

    def __repr__(self) -> str:
        return f"ModelRegistry({redact_url(self._url)!r})"

    # ------------------------------------------------------------------ writing

    def register(
        self,
        name: str,
        centers: np.ndarray,
        *,
        init: str,
        seed: int,
        n_iter: int,
        converged: bool,
        inertia: float,
        fingerprint: str,
        kind: str = "vectors",
        preprocessing: Mapping[str, Any] | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
        files: Mapping[str, bytes] | None = None,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        reference: Mapping[str, Any] | None = None,
        parent: int | None = None,
        run_key: str | None = None,
    ) -> ModelRecord:
        """Store `centers` and their record as the next version of model `name`.

        Parameters
        ----------
        name : str
            Model name (letters, digits, ``.``, ``_``, ``-``; see
            :data:`kmflow.core.model.NAME_PATTERN`).
        centers : array-like of shape (n_clusters, n_features)
            The cluster centers; stored as float64. ``n_clusters`` and ``n_features`` of the
            record come from this shape.
        init, seed, n_iter, converged, inertia, fingerprint : see ModelRecord
            How the model was trained and on what.
        kind : {"vectors", "palette", "segments", "images"}, default "vectors"
            What the model clusters (see :class:`~kmflow.core.model.ModelRecord`).
        preprocessing : mapping, optional
            The JSON part of the model's preprocessing (with its ``"type"``).
        arrays : mapping of str to numpy.ndarray, optional
            The preprocessing's arrays, stored as ``prep.<name>.npy`` (no pickle).
        files : mapping of str to bytes, optional
            Other files of the version (e.g. per-segment classifiers), by plain file name.
        params, metrics, reference : mapping, optional
            JSON-ready training parameters, evaluation metrics and reference statistics for
            drift checks (non-finite floats allowed; see :mod:`kmflow.core.model`).
        parent : int, optional
            The complete version this one was warm-started or retrained from.
        run_key : str, optional
            Idempotency key of the registering run. If a complete version of `name` already
            carries it, that version's record is returned and nothing is written.

        Returns
        -------
        ModelRecord
            The record of the new version (or of the existing one with the same `run_key`).

        Raises
        ------
        InvalidInputError
            If `name` breaks the naming rule, `centers` is not a non-empty, finite, real 2-D
            array, or a field is invalid (negative seed, NaN inertia, metrics that are not
            JSON-ready, ...).
        ModelNotFoundError
            If `parent` is not a complete version of `name`.
        ModelCorruptError
            If an existing version's ``model.json`` is unreadable (when looking for
            `run_key`).
        StorageError
            If the registry cannot be listed or written.

        Notes
        -----
        Claims the next free version number by creating its ``centers.npy`` exclusively
        (a concurrent registration that got the number first makes this one take the next),
        then writes ``model.json`` (the publish step); a crash in between leaves an invisible
        version whose number is skipped by later registrations. Any number of processes may
        register the same name at once.
        """
        self._check_name(name)
        array = _checked_centers(centers)
        if run_key is not None and (not isinstance(run_key, str) or not run_key):
            raise InvalidInputError(f"run_key must be a non-empty string; got {run_key!r}")
        extra = _artifact_bytes(arrays, files)
        scan = self._scan(name)
        if run_key is not None:
            existing = self._find_run_key(name, run_key, scan.complete)
            if existing is not None:
                logger.info(
                    "%s v%d already registered by run %r in %s; nothing written",
                    name,
                    existing.version,
                    run_key,
                    redact_url(self._url),
                )
                return existing
        if parent is not None and parent not in scan.complete:
            raise ModelNotFoundError(
                f"parent version {parent} of model {name!r} is not in registry "
                f"{redact_url(self._url)!r} (versions: {scan.complete})"
            )
        version = max(scan.numbers, default=0) + 1  # the first number tried
        try:
            # model_validate: the mappings are checked (and copied) by the record's validators.
            record = ModelRecord.model_validate(
                {
                    "name": name,
                    "version": version,
                    "n_clusters": array.shape[0],
                    "n_features": array.shape[1],
                    "kind": kind,
                    "preprocessing": {} if preprocessing is None else preprocessing,
                    "artifacts": {
                        file: hashlib.sha256(data).hexdigest() for file, data in extra.items()
                    },
                    "init": init,
                    "seed": seed,
                    "n_iter": n_iter,
                    "converged": converged,
                    "inertia": inertia,
                    "params": {} if params is None else params,
                    "metrics": {} if metrics is None else metrics,
                    "fingerprint": fingerprint,
                    "reference": {} if reference is None else reference,
                    "parent": parent,
                    "created_at": dt.datetime.now(dt.UTC),
                    "kmflow_version": _package_version(),
                    "centers_sha256": centers_sha256(array),
                    "run_key": run_key,
                }
            )
        except ValidationError as exc:
            raise InvalidInputError(f"cannot register model {name!r}: {_summary(exc)}") from exc
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        record = self._claim(record, buffer.getvalue())
        version = record.version
        for file, data in extra.items():
            write_bytes_atomic(self._file_url(name, version, file), data, self._options)
        self._publish(record)
        logger.info(
            "registered %s v%d (%d clusters x %d features) in %s",
            name,
            version,
            record.n_clusters,
            record.n_features,
            redact_url(self._url),
        )
        return record

    def _claim(self, record: ModelRecord, centers: bytes) -> ModelRecord:
        """Create ``centers.npy`` of the first free version from ``record.version`` on.

        Returns the record with the version number that was claimed.
        """
        version = record.version
        for _ in range(_MAX_CLAIMS):
            url = self._file_url(record.name, version, CENTERS_FILE)
            if write_bytes_exclusive(url, centers, self._options):
                return (
                    record
                    if version == record.version
                    else record.model_copy(update={"version": version})
                )
            logger.debug("%s v%d was taken by another registration", record.name, version)
            # Jump past every number taken meanwhile (one listing), at least by one.
            version = max([version, *self._scan(record.name).numbers]) + 1
        raise StorageError(
            f"cannot register model {record.name!r} in {redact_url(self._url)!r}: "
            f"{_MAX_CLAIMS} version numbers in a row were taken by other registrations"
        )

    def _publish(self, record: ModelRecord) -> None:
        """Write ``model.json``: the step that makes a version visible."""
        url = self._file_url(record.name, record.version, RECORD_FILE)
        if not write_bytes_exclusive(url, record.to_json().encode("utf-8"), self._options):
            raise ModelCorruptError(
                f"{redact_url(url)} already exists, but this registration claimed "
                f"{record.name!r} v{record.version}: the registry was written by something "
                "other than kmflow"
            )

    def promote(self, name: str, version: int) -> ModelRecord:
        """Make `version` the champion of `name` (atomic replace of ``champion.json``).

        Parameters
        ----------
        name : str
            Model name.
        version : int
            The version to promote.

        Returns
        -------
        ModelRecord
            The record of the new champion.

        Raises
        ------
        InvalidInputError
            If `name` or `version` is malformed.
        ModelNotFoundError
            If `name` has no such complete version; the champion is left unchanged.
        ModelCorruptError
            If that version's files are inconsistent (it is loaded and checked first); the
            champion is left unchanged.
        StorageError
            If the registry cannot be read or ``champion.json`` cannot be written.

        Notes
        -----
        ``previous`` in the new pointer is the replaced champion (``null`` if there was
        none, or if the old pointer was unreadable or named a missing version; a warning is
        logged then). Promoting the current champion again writes nothing.
        """
        model = self.load(name, version)
        number = model.record.version
        try:
            current = self._read_pointer(name)
        except ModelCorruptError as exc:
            logger.warning("replacing an unreadable champion pointer: %s", exc)
            current = None
        if current is not None and current.version == number:
            logger.info("%s v%d is already the champion; nothing written", name, number)
            return model.record
        previous = current.version if current is not None else None
        if previous is not None and self._read_record(name, previous) is None:
            logger.warning(
                "the old champion of %s names v%d, which does not exist; previous set to null",
                name,
                previous,
            )
            previous = None
        pointer_time = dt.datetime.now(dt.UTC)
        pointer = {
            "version": number,
            "promoted_at": pointer_time.isoformat(),
            "previous": previous,
        }
        data = (json.dumps(pointer, indent=2) + "\n").encode("utf-8")
        write_bytes_atomic(self._champion_url(name), data, self._options)
        logger.info(
            "promoted %s v%d to champion in %s (previous: %s)",
            name,
            number,
            redact_url(self._url),
            previous,
        )
        try:
            self.log_event(
                name, "promotion", {"version": number, "previous": previous}, at=pointer_time
            )
        except StorageError as exc:  # the promotion stands; only its history entry is lost
            logger.warning("promoted %s v%d but could not log it: %s", name, number, exc)
        return model.record

    def log_event(
        self,
        name: str,
        type: str,
        data: Mapping[str, Any],
        *,
        at: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Append one event to the history of model `name`.

        Parameters
        ----------
        name : str
            Model name (it need not have a version yet).
        type : {"promotion", "drift"}
            What happened.
        data : mapping
            JSON-ready details (a drift check: the champion version checked, the batch id,
            ``drifted`` and each statistic's ``value``, ``threshold`` and ``drifted``).
        at : datetime, optional
            When it happened (timezone-aware; default now).

        Returns
        -------
        dict
            The event as stored: ``type``, ``at`` (ISO 8601, UTC), ``id`` (its file name
            without ``.json``) and the entries of `data`.

        Raises
        ------
        InvalidInputError
            If `name` breaks the naming rule, `type` is unknown, `data` is not JSON-ready
            (NaN is stored as ``null``) or uses the keys ``type``, ``at`` or ``id``.
        StorageError
            If the file cannot be written.

        Notes
        -----
        One new file per event, created exclusively under a name no other writer can pick
        (UTC time to the microsecond, then a random UUID): concurrent writers, in any
        number of processes and hosts, all keep their events.
        """
        self._check_name(name)
        if type not in EVENT_TYPES:
            raise InvalidInputError(f"unknown event type {type!r}; one of {', '.join(EVENT_TYPES)}")
        reserved = {"type", "at", "id"} & set(data)
        if reserved:
            raise InvalidInputError(f"event data must not use the keys {sorted(reserved)}")
        when = dt.datetime.now(dt.UTC) if at is None else at
        if when.utcoffset() is None:
            raise InvalidInputError(f"event time {when.isoformat()} has no timezone")
        when = when.astimezone(dt.UTC)
        for _ in range(3):
            ident = f"{when.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex}"
            event = json_ready({"type": type, "at": when.isoformat(), "id": ident, **data})
            try:
                text = json.dumps(event, indent=2, allow_nan=False) + "\n"
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"event data is not JSON-ready: {exc}") from exc
            url = join_url(self._url, name, HISTORY_DIR, f"{ident}.json")
            if write_bytes_exclusive(url, text.encode("utf-8"), self._options):
                return event
        raise StorageError(  # pragma: no cover - three random UUIDs taken
            f"cannot log an event of {name!r} in {redact_url(self._url)!r}: names taken"
        )

    def history(self, name: str, type: str | None = None) -> list[dict[str, Any]]:
        """The events of model `name` (:meth:`log_event`), oldest first.

        Parameters
        ----------
        name : str
            Model name.
        type : {"promotion", "drift"}, optional
            Only events of this type.

        Returns
        -------
        list of dict
            Empty when nothing was logged. An unreadable event file is left out with a
            warning naming it.

        Raises
        ------
        InvalidInputError
            If `name` breaks the naming rule.
        StorageError
            If the history cannot be listed or read.
        """
        self._check_name(name)
        fs, root = self._fs()
        folder_url = join_url(self._url, name, HISTORY_DIR)
        files = sorted(
            rel
            for rel, is_dir in self._find(fs, f"{root}/{name}/{HISTORY_DIR}", folder_url)
            if not is_dir and _EVENT_FILE.fullmatch(rel)
        )
        events: list[dict[str, Any]] = []
        for file in files:
            url = join_url(folder_url, file)
            try:
                event = json.loads(read_bytes(url, self._options))
            except (SourceNotFoundError, ValueError) as exc:
                logger.warning("skipping an unreadable history event %s: %s", redact_url(url), exc)
                continue
            if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
                logger.warning("skipping a malformed history event %s", redact_url(url))
                continue
            if type is None or event["type"] == type:
                events.append(event)
        return events

    # ------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        """Return the names of the models with at least one readable complete version, sorted.

        Returns
        -------
        list of str
            Empty if the registry does not exist yet. A model whose every ``model.json`` is
            corrupt is left out, with a warning naming the files.

        Raises
        ------
        StorageError
            If the registry cannot be listed.

        Notes
        -----
        One recursive listing, then the newest ``model.json`` of each model is read (older
        ones only while the newer are corrupt).
        """
        fs, root = self._fs()
        found: dict[str, list[int]] = {}
        for rel, is_dir in self._find(fs, root, self._url):
            parts = rel.split("/")
            if (
                not is_dir
                and len(parts) == 3
                and parts[2] == RECORD_FILE
                and _NAME.fullmatch(parts[0])
                and (match := _VERSION_DIR.fullmatch(parts[1]))
            ):
                found.setdefault(parts[0], []).append(int(match.group(1)))
        return sorted(
            name
            for name, numbers in found.items()
            if any(self._readable_record(name, n) is not None for n in sorted(numbers)[::-1])
        )

    def _readable_record(self, name: str, version: int) -> ModelRecord | None:
        """The record of a version, or None (with a warning) if it is corrupt or missing."""
        try:
            return self._read_record(name, version)
        except ModelCorruptError as exc:
            logger.warning("skipping a corrupt version of model %r: %s", name, exc)
            return None

    def _find_run_key(self, name: str, run_key: str, complete: Sequence[int]) -> ModelRecord | None:
        for number in reversed(complete):
            existing = self._readable_record(name, number)
            if existing is not None and existing.run_key == run_key:
                return existing
        return None

    def find_run_key(self, name: str, run_key: str) -> ModelRecord | None:
        """The version of `name` that the run `run_key` registered, if any.

        Lets a retried or repeated job (the same drift event twice) skip work already
        done before redoing it; :meth:`register` does the same check before writing.

        Raises
        ------
        InvalidInputError
            If `name` breaks the naming rule.

        Notes
        -----
        A corrupt version is skipped with a warning.
        """
        self._check_name(name)
        return self._find_run_key(name, run_key, self._scan(name).complete)

    def versions(self, name: str) -> list[ModelRecord]:
        """Return the records of every complete version of `name`, oldest first.

        Parameters
        ----------
        name : str
            Model name.

        Returns
        -------
        list of ModelRecord
            Empty if `name` has no complete version. A version whose ``model.json`` is
            unreadable or does not match its folder is left out, with a warning naming the
            file (:meth:`record` of that version raises ModelCorruptError).

        Raises
        ------
        InvalidInputError
            If `name` breaks the naming rule.
        StorageError
            If the registry cannot be listed or read.
        """
        self._check_name(name)
        records = (self._readable_record(name, n) for n in self._scan(name).complete)
        return [r for r in records if r is not None]

    def record(self, name: str, version: int | str = "latest") -> ModelRecord:
        """Return the record of one version of `name` (without reading its centers).

        Parameters
        ----------
        name : str
            Model name.
        version : int or {"latest", "champion"}, default "latest"
            A version number (or digit string), the highest complete version, or the
            champion.

        Returns
        -------
        ModelRecord

        Raises
        ------
        InvalidInputError
            If `name` or `version` is malformed.
        ModelNotFoundError
            If `name` has no complete version, not that version, or no champion.
        ModelCorruptError
            If the ``model.json`` is unreadable or inconsistent, or ``champion.json`` is
            unreadable or names a missing version.
        StorageError
            If the registry cannot be read.
        """
        self._check_name(name)
        wanted = _parse_version(version)
        if wanted == "champion":
            pointer = self._read_pointer(name)
            if pointer is None:
                raise self._not_found(name, "has no champion (promote a version first)")
            return self._champion_record(name, pointer)
        if wanted == "latest":
            for number in reversed(self._scan(name).complete):
                found = self._read_record(name, number)
                if found is not None:
                    return found
            raise self._not_found(name, "has no versions")
        found = self._read_record(name, wanted)
        if found is None:
            raise self._not_found(name, f"has no version {wanted}")
        return found

    def load(self, name: str, version: int | str = "latest") -> Model:
        """Return one version of `name`: its record and its checked, read-only centers.

        Parameters
        ----------
        name : str
            Model name.
        version : int or {"latest", "champion"}, default "latest"
            As for :meth:`record`.

        Returns
        -------
        Model
            ``centers`` is float64 of shape ``(n_clusters, n_features)``, read-only.

        Raises
        ------
        InvalidInputError
            If `name` or `version` is malformed.
        ModelNotFoundError
            As for :meth:`record`.
        ModelCorruptError
            If ``centers.npy`` is missing, not a plain float64 ``.npy`` array (pickled
            objects are refused), of a shape other than the record's, non-finite, or does not
            match the record's sha256; or as for :meth:`record`.
        StorageError
            If the registry cannot be read.
        """
        record = self.record(name, version)
        url = self._file_url(name, record.version, CENTERS_FILE)
        shown = redact_url(url)
        try:
            data = read_bytes(url, self._options)
        except SourceNotFoundError as exc:
            raise ModelCorruptError(
                f"{shown} is missing, but {RECORD_FILE} of {name!r} v{record.version} exists"
            ) from exc
        centers = _parse_centers(data, shown)
        expected = (record.n_clusters, record.n_features)
        if centers.shape != expected:
            raise ModelCorruptError(
                f"{shown} holds an array of shape {centers.shape}, but {RECORD_FILE} says "
                f"(n_clusters, n_features) = {expected}"
            )
        if not np.isfinite(centers).all():
            bad = int(np.count_nonzero(~np.isfinite(centers)))
            raise ModelCorruptError(f"{shown} holds {bad} NaN or infinite values")
        digest = centers_sha256(centers)
        if digest != record.centers_sha256:
            raise ModelCorruptError(
                f"{shown} has sha256 {digest}, but {RECORD_FILE} says {record.centers_sha256}"
                " (the centers were changed after registration)"
            )
        artifacts: dict[str, bytes] = {}
        for file, want in record.artifacts.items():
            file_url = self._file_url(name, record.version, file)
            try:
                artifacts[file] = read_bytes(file_url, self._options)
            except SourceNotFoundError as exc:
                raise ModelCorruptError(
                    f"{redact_url(file_url)} is missing, but {RECORD_FILE} of {name!r} "
                    f"v{record.version} lists it"
                ) from exc
            got = hashlib.sha256(artifacts[file]).hexdigest()
            if got != want:
                raise ModelCorruptError(
                    f"{redact_url(file_url)} has sha256 {got}, but {RECORD_FILE} says {want}"
                    " (the file was changed after registration)"
                )
        return Model(record=record, centers=centers, artifacts=artifacts)

    def champion(self, name: str) -> ModelRecord | None:
        """Return the record of the champion of `name`, or None if none was promoted yet.

        Parameters
        ----------
        name : str
            Model name.

        Returns
        -------
        ModelRecord or None

        Raises
        ------
        InvalidInputError
            If `name` breaks the naming rule.
        ModelNotFoundError
            If `name` has no complete version at all (an unknown model).
        ModelCorruptError
            If ``champion.json`` is unreadable or names a missing version.
        StorageError
            If the registry cannot be read.
        """
        self._check_name(name)
        pointer = self._read_pointer(name)
        if pointer is None:
            if not self._scan(name).complete:
                raise self._not_found(name, "has no versions")
            return None
        return self._champion_record(name, pointer)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidInputError(
                f"invalid model name {name!r}: it must match {NAME_PATTERN} (a letter or "
                "digit, then up to 127 letters, digits, '.', '_' or '-')"
            )

    def _fs(self) -> tuple[Any, str]:
        fs, path = get_fs(self._url, self._options)
        return fs, (path.rstrip("/") or path)

    def _file_url(self, name: str, version: int, file: str) -> str:
        return join_url(self._url, name, _version_dir(version), file)

    def _champion_url(self, name: str) -> str:
        return join_url(self._url, name, CHAMPION_FILE)

    @staticmethod
    def _find(fs: Any, folder: str, url: str) -> list[tuple[str, bool]]:
        """Everything below `folder`: (path relative to it, is a directory); [] if missing."""
        with storage_errors("list", url):
            fs.invalidate_cache(folder)
            try:
                found = fs.find(folder, withdirs=True, detail=True)
            except FileNotFoundError:
                return []
        prefix = folder + "/"
        return [
            (path[len(prefix) :], info.get("type") == "directory")
            for path, info in found.items()
            if path.startswith(prefix)
        ]

    def _scan(self, name: str) -> _Scan:
        """List the version folders of `name` (one recursive listing)."""
        fs, root = self._fs()
        numbers: set[int] = set()
        complete: set[int] = set()
        for rel, is_dir in self._find(fs, f"{root}/{name}", join_url(self._url, name)):
            parts = rel.split("/")
            match = _VERSION_DIR.fullmatch(parts[0])
            if match is None or (len(parts) == 1 and not is_dir):
                continue
            number = int(match.group(1))
            numbers.add(number)
            if len(parts) == 2 and parts[1] == RECORD_FILE and not is_dir:
                complete.add(number)
        return _Scan(sorted(numbers), sorted(complete))

    def _read_record(self, name: str, version: int) -> ModelRecord | None:
        """The record of a version, or None if it has no ``model.json`` (incomplete)."""
        url = self._file_url(name, version, RECORD_FILE)
        try:
            data = read_bytes(url, self._options)
        except SourceNotFoundError:
            return None
        shown = redact_url(url)
        try:
            record = ModelRecord.from_json(data)
        except ValidationError as exc:
            raise ModelCorruptError(
                f"{shown} is not a valid model record: {_summary(exc)}"
            ) from exc
        if (record.name, record.version) != (name, version):
            raise ModelCorruptError(
                f"{shown} describes {record.name!r} v{record.version}, "
                f"not {name!r} v{version} (a copied or moved folder?)"
            )
        return record

    def _read_pointer(self, name: str) -> _Pointer | None:
        """The content of ``champion.json``, or None if there is none."""
        url = self._champion_url(name)
        try:
            data = read_bytes(url, self._options)
        except SourceNotFoundError:
            return None
        try:
            return _Pointer.model_validate_json(data)
        except ValidationError as exc:
            raise ModelCorruptError(
                f"{redact_url(url)} is not a valid champion pointer: {_summary(exc)}"
            ) from exc

    def _champion_record(self, name: str, pointer: _Pointer) -> ModelRecord:
        """The record ``champion.json`` points at; ModelCorruptError if it is missing."""
        found = self._read_record(name, pointer.version)
        if found is None:
            complete = self._scan(name).complete
            raise ModelCorruptError(
                f"{redact_url(self._champion_url(name))} names version {pointer.version}, "
                f"which does not exist (versions: {complete})"
            )
        return found

    def _not_found(self, name: str, what: str) -> ModelNotFoundError:
        complete = self._scan(name).complete
        return ModelNotFoundError(
            f"model {name!r} {what} in registry {redact_url(self._url)!r} (versions: {complete})"
        )


def _parse_version(version: int | str) -> int | Literal["latest", "champion"]:
    """Normalise a ``version`` argument; InvalidInputError if it is none of the forms."""
    if isinstance(version, str):
        if version == "latest":
            return "latest"
        if version == "champion":
            return "champion"
        if version.isascii() and version.isdigit():
            version = int(version)
    if isinstance(version, int | np.integer) and not isinstance(version, bool):
        if version < 1:
            raise InvalidInputError(f"model versions start at 1; got version={version}")
        return int(version)
    raise InvalidInputError(
        f"version must be a version number, 'latest' or 'champion'; got {version!r}"
    )


def _checked_centers(centers: Any) -> np.ndarray:
    """`centers` as a fresh C-contiguous float64 array, or InvalidInputError."""
    # Imported here: listing and reading models needs no Dask or numba.
    from kmflow.kernels.validation import check_centers

    return check_centers(centers)


def _artifact_bytes(
    arrays: Mapping[str, np.ndarray] | None, files: Mapping[str, bytes] | None
) -> dict[str, bytes]:
    """The bytes of a version's extra files: arrays as ``prep.<name>.npy``, files as given."""
    out: dict[str, bytes] = {}
    for key, array in (arrays or {}).items():
        raw = np.asarray(array)
        if raw.dtype.kind not in "biuf":
            raise InvalidInputError(
                f"preprocessing array {key!r} must hold numbers; got {raw.dtype}"
            )
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(raw), allow_pickle=False)
        out[array_file(key)] = buffer.getvalue()
    for file, data in (files or {}).items():
        if file in out:
            raise InvalidInputError(f"file {file!r} is given twice")
        if not isinstance(data, bytes | bytearray):
            raise InvalidInputError(f"file {file!r} must be bytes; got {type(data).__name__}")
        out[file] = bytes(data)
    return out


def _parse_centers(data: bytes, shown: str) -> np.ndarray:
    """Read the ``centers.npy`` bytes: a float64 array (see :func:`kmflow.core.model.read_npy`)."""
    array = read_npy(data, shown)
    if array.dtype != np.float64:
        raise ModelCorruptError(f"{shown} holds {array.dtype} values, not float64")
    return array
