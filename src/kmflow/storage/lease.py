"""Writer leases: one writer at a time per store, built on exclusive file creation.

A lease lives in a folder of *generation files*, ``<folder>/000000000042.json``; the state of
the lease is the highest generation. Every change creates the next generation with an
exclusive create (it fails if the file exists), so of several processes racing for the same
change exactly one wins:

- **acquire**: when the highest generation is released, or expired, or there is none, create
  generation ``n + 1`` holding the caller's owner record (host, pid, user, a free-text
  ``by``, a random token) and an expiry ``ttl`` seconds ahead;
- **renew**: the holder creates ``n + 1`` with the same token and a new expiry (a heartbeat
  thread does it every ``ttl / 3`` seconds while the lease is held);
- **release**: the holder creates ``n + 1`` marked released.

A holder that crashed stops renewing; once its expiry has passed, the first waiter to create
the next generation takes over (no file is ever deleted and re-created, so two takers can
never both believe they won). Old generations are pruned; a process that created a
generation below the highest (it listed the folder long ago) sees the higher one when it
checks and counts the race as lost.

Exclusive create, per backend (:func:`write_bytes_exclusive`):

- local POSIX filesystem: the bytes go to a temporary file that is hard-linked to the target
  (``link`` fails if the target exists), so the target appears whole or not at all;
- ``s3://``: ``PutObject`` with ``If-None-Match: *`` (s3fs ``pipe_file(mode="create")``); a
  lost race is HTTP 412, which s3fs raises as ``FileExistsError``;
- ``memory://``: a process-wide lock around check-and-write (only threads of one process share
  a memory filesystem);
- any other fsspec backend: ``pipe_file(mode="create")``, which fsspec implements as check,
  then write unless the backend overrides it: **not** race-free; a warning says so.

Expiry compares the holder's UTC clock (when it wrote the expiry) with the waiter's: hosts
sharing a store need clocks in sync to well within the TTL (NTP does that).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import getpass
import json
import logging
import os
import random
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal

from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from kmflow.errors import StoreBusyError
from kmflow.storage.fs import get_fs, join_url, local_temp_file, redact_url, storage_errors

__all__ = [
    "LeaseRecord",
    "StoreLease",
    "default_owner",
    "exclusive_create_kind",
    "write_bytes_exclusive",
]

logger = logging.getLogger(__name__)

_FORMAT = "kmflow.lease"
_GENERATION = re.compile(r"^(\d{12})\.json$")
_KEEP = 8  # generations kept when pruning
_PRUNE_ABOVE = 32  # prune once the folder holds more generation files than this
_MAX_POLL = 0.5  # seconds between two looks of a waiting writer, at most
_MEMORY_LOCK = threading.Lock()
_WARNED: set[str] = set()  # protocols already warned about (best-effort exclusive create)


# --------------------------------------------------------------------------- exclusive create


def exclusive_create_kind(fs: Any) -> Literal["atomic", "in-process", "best-effort"]:
    """How race-free :func:`write_bytes_exclusive` is on the filesystem `fs`.

    ``"atomic"`` on a local POSIX filesystem and S3 (conditional writes), ``"in-process"`` on
    ``memory://`` (threads of one process: the only ones that share it), ``"best-effort"``
    on every other backend (fsspec checks, then writes).
    """
    if isinstance(fs, LocalFileSystem):
        return "atomic"
    if isinstance(fs, MemoryFileSystem):
        return "in-process"
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if {"s3", "s3a"} & set(protocols):
        return "atomic"
    return "best-effort"


def write_bytes_exclusive(
    url: str | os.PathLike[str],
    data: bytes,
    storage_options: dict[str, Any] | None = None,
) -> bool:
    """Create the file at `url` holding `data`, unless a file is there already.

    Parameters
    ----------
    url : str or os.PathLike
        Destination path or URL. Missing parent folders are created on local disks.
    data : bytes
        The complete content.
    storage_options : dict, optional
        Keyword arguments for the filesystem.

    Returns
    -------
    bool
        True if this call created the file, False if one existed (nothing written then).

    Raises
    ------
    StorageError
        If the file cannot be written for another reason.

    Notes
    -----
    Readers see the whole content or no file. See the module docstring for what makes the
    create exclusive on each backend; on backends other than local, S3 and ``memory://`` a
    warning is logged once per protocol, as two racing writers may both succeed there.
    """
    fs, path = get_fs(url, storage_options)
    payload = bytes(data)
    with storage_errors("create", url):
        kind = exclusive_create_kind(fs)
        if isinstance(fs, LocalFileSystem):
            return _create_local(path, payload)
        if isinstance(fs, MemoryFileSystem):
            with _MEMORY_LOCK:
                if fs.exists(path):
                    return False
                fs.pipe_file(path, payload)
                return True
        if kind == "best-effort":
            name = str(fs.protocol)
            if name not in _WARNED:
                _WARNED.add(name)
                logger.warning(
                    "%s: fsspec backend %s offers no known exclusive create; concurrent "
                    "writers are not reliably kept apart there",
                    redact_url(url),
                    type(fs).__name__,
                )
        try:
            fs.pipe_file(path, payload, mode="create")
        except FileExistsError:
            return False
        return True


def _create_local(path: str, data: bytes) -> bool:
    """Exclusive create on a local disk: a whole temporary file, hard-linked into place."""
    tmp = local_temp_file(path, data)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # No hard links here (some network and FUSE filesystems): O_EXCL still keeps
            # writers apart, but a reader may briefly see a partial file.
            return _create_local_excl(path, data)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_local_excl(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return True


# --------------------------------------------------------------------------- records


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): fall back to the uid
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def default_owner() -> str:
    """A short description of what this process is, for the ``by`` field of a lease.

    The Prefect flow run (``flow run 'crimson-fox' of ingest``) when called inside one,
    otherwise the command (``kmflow quantize``, ``python -c``).
    """
    if "prefect" in sys.modules:
        with contextlib.suppress(Exception):
            from prefect.context import FlowRunContext

            ctx = FlowRunContext.get()
            if ctx is not None and ctx.flow_run is not None:
                flow = getattr(ctx.flow, "name", None)
                return f"flow run {ctx.flow_run.name!r}" + (f" of {flow}" if flow else "")
    argv = list(sys.argv) or ["python"]
    program = os.path.basename(argv[0]) or "python"
    if program in ("cli.py", "__main__.py"):  # python -m kmflow.cli: name the package
        program = os.path.basename(os.path.dirname(argv[0])) or program
    words = [program]
    if len(argv) > 1 and re.fullmatch(r"-c|-m|[a-z][a-z0-9_-]{0,31}", argv[1]):
        words.append(argv[1])
    return " ".join(words)


@dataclass(frozen=True)
class LeaseRecord:
    """One generation of a lease: who holds it (or held it last) and until when.

    Attributes
    ----------
    generation : int
        Its number; the highest generation is the lease's state.
    state : {"held", "released"}
    token : str
        Random id of one holding (the same across renewals).
    by, user, host : str
        What holds it (a command or flow run), as which user, on which host.
    pid : int
    acquired_at, expires_at : datetime.datetime
        UTC; ``expires_at`` moves forward with each renewal.
    """

    generation: int
    state: Literal["held", "released"]
    token: str
    by: str
    user: str
    host: str
    pid: int
    acquired_at: dt.datetime
    expires_at: dt.datetime

    def to_json(self) -> bytes:
        payload = {
            "format": _FORMAT,
            "generation": self.generation,
            "state": self.state,
            "token": self.token,
            "by": self.by,
            "user": self.user,
            "host": self.host,
            "pid": self.pid,
            "acquired_at": self.acquired_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "written_at": _now().isoformat(),
        }
        return (json.dumps(payload, indent=1) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> LeaseRecord:
        """Parse a generation file; ValueError if it is not one."""
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise ValueError("not a kmflow lease record")
        state = raw["state"]
        if state not in ("held", "released"):
            raise ValueError(f"unknown lease state {state!r}")
        acquired = dt.datetime.fromisoformat(raw["acquired_at"])
        expires = dt.datetime.fromisoformat(raw["expires_at"])
        if acquired.utcoffset() is None or expires.utcoffset() is None:
            raise ValueError("lease times without a timezone")
        return cls(
            generation=int(raw["generation"]),
            state=state,
            token=str(raw["token"]),
            by=str(raw["by"]),
            user=str(raw["user"]),
            host=str(raw["host"]),
            pid=int(raw["pid"]),
            acquired_at=acquired,
            expires_at=expires,
        )

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or _now()) >= self.expires_at

    def describe(self) -> str:
        """``since 2026-12-02 10:00:00 UTC by kmflow quantize (user u, pid 7 on host h)``."""
        since = self.acquired_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        return (
            f"since {since} UTC by {self.by} (user {self.user}, pid {self.pid} on host {self.host})"
        )


@dataclass(frozen=True)
class _Unreadable:
    """A highest generation that could not be parsed (tampered, or still being written)."""

    generation: int
    reason: str


# --------------------------------------------------------------------------- the lease


class StoreLease:
    """The writer lease of one store: acquire it, keep it renewed while writing, release it.

    Parameters
    ----------
    url : str
        Folder (local path or fsspec URL) holding the lease's generation files.
    storage_options : dict, optional
        fsspec options for `url`; never logged.
    ttl : float, default 60
        Seconds a holding (or renewal) is valid; a heartbeat thread renews every ``ttl / 3``.
    timeout : float, default 30
        Seconds :meth:`acquire` waits for another holder before raising StoreBusyError.
    by : str, optional
        What is writing (a command, a flow run); default :func:`default_owner`.
    name : str, optional
        How to name the store in messages (default: `url`, credentials masked).
    marker : mapping of str to bytes, optional
        Files the lease folder must contain besides the generations (e.g. a Zarr group's
        ``zarr.json``, so that a lease folder inside a Zarr store is a valid node); written
        when missing.

    Notes
    -----
    The constructor does no I/O. Use as a context manager (acquire on entry, release on
    exit) or call :meth:`acquire` and :meth:`release`. :meth:`check` before a commit step
    confirms, against the storage, that the lease is still this holder's.

    Examples
    --------
    >>> lease = StoreLease("memory://doc-lease/store.zarr/.lease", ttl=10, timeout=0)
    >>> with lease:
    ...     lease.held
    True
    >>> lease.held
    False
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: dict[str, Any] | None = None,
        ttl: float = 60.0,
        timeout: float = 30.0,
        by: str | None = None,
        name: str | None = None,
        marker: Mapping[str, bytes] | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds; got {ttl!r}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds; got {timeout!r}")
        self.url = url
        self.ttl = float(ttl)
        self.timeout = float(timeout)
        self.by = by if by is not None else default_owner()
        self._options = dict(storage_options) if storage_options else None
        self._name = name if name is not None else redact_url(url)
        self._marker = dict(marker or {})
        self._record: LeaseRecord | None = None  # our latest generation while held
        self._lost: str | None = None
        self._lock = threading.Lock()  # renewals and release: one next generation at a time
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"StoreLease({self._name!r}, held={self.held})"

    # ------------------------------------------------------------------ public

    @property
    def held(self) -> bool:
        """Whether this object holds the lease (as far as it knows; :meth:`check` asks)."""
        return self._record is not None and self._lost is None

    @property
    def record(self) -> LeaseRecord | None:
        """This holder's latest generation, or None when not held."""
        return self._record

    def read(self) -> LeaseRecord | None:
        """The lease's current state (highest generation); None if never taken or unreadable."""
        _, state = self._state()
        return state if isinstance(state, LeaseRecord) else None

    def acquire(self) -> LeaseRecord:
        """Take the lease, waiting up to ``timeout`` seconds for another holder.

        Returns
        -------
        LeaseRecord
            The generation that makes this object the holder.

        Raises
        ------
        StoreBusyError
            If another holder kept a valid lease for the whole wait; the message names it
            (``store <url> busy since <UTC time> by <by> (user, pid N on host H); waited 30 s``).
        StorageError
            If the lease folder cannot be listed or written.
        RuntimeError
            If this object already holds the lease.
        """
        if self._record is not None:
            raise RuntimeError(f"{self!r} is already held")
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        pause = 0.05
        unreadable_since: dict[int, float] = {}
        lost_races = 0
        token = uuid.uuid4().hex
        self._ensure_marker()
        while True:
            generation, state = self._state()
            if self._free(state, unreadable_since):
                now = _now()
                mine = LeaseRecord(
                    generation=generation + 1,
                    state="held",
                    token=token,
                    by=self.by,
                    user=_user(),
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    acquired_at=now,
                    expires_at=now + dt.timedelta(seconds=self.ttl),
                )
                if self._create(mine):
                    if isinstance(state, LeaseRecord) and state.state == "held":
                        logger.warning(
                            "%s: took over the writer lease held %s, expired at %s",
                            self._name,
                            state.describe(),
                            state.expires_at.isoformat(timespec="seconds"),
                        )
                    self._record, self._lost = mine, None
                    self._start_heartbeat()
                    logger.debug(
                        "%s: writer lease acquired (generation %d)", self._name, mine.generation
                    )
                    return mine
                lost_races += 1
                if lost_races > 3 and time.monotonic() >= deadline:
                    raise self._busy(state, time.monotonic() - t0)
                continue  # lost the race for this generation: look again at once
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._busy(state, time.monotonic() - t0)
            wait = pause * (0.5 + random.random())
            if isinstance(state, LeaseRecord):
                wait = min(wait, max(0.0, (state.expires_at - _now()).total_seconds()) + 0.01)
            time.sleep(max(0.005, min(wait, remaining)))
            pause = min(pause * 1.5, _MAX_POLL)

    def release(self) -> None:
        """Give the lease up (a released generation); a no-op when not held.

        A lease lost meanwhile (expired and taken over) is left to its new holder.
        """
        self._stop_heartbeat()
        with self._lock:
            record, self._record = self._record, None
            lost, self._lost = self._lost, None
            if record is None:
                return
            if lost is not None:
                logger.warning("%s: the writer lease was lost before release: %s", self._name, lost)
                return
            released = replace(record, generation=record.generation + 1, state="released")
            try:
                created = self._create(released)
            except Exception as exc:  # the lease expires on its own
                logger.warning(
                    "%s: could not release the writer lease (it expires at %s): %s",
                    self._name,
                    record.expires_at.isoformat(timespec="seconds"),
                    exc,
                )
                return
            if not created:
                logger.warning(
                    "%s: the writer lease expired and was taken over before release", self._name
                )
            logger.debug("%s: writer lease released", self._name)

    def check(self) -> None:
        """Confirm against the storage that this object still holds a valid lease.

        Renews first when less than a third of the TTL is left (a late heartbeat).

        Raises
        ------
        StoreBusyError
            If the lease was lost (it expired, or another writer took it over): the caller
            must not commit what it wrote.
        """
        with self._lock:
            record = self._record
            if record is None:
                raise StoreBusyError(f"store {self._name}: the writer lease is not held")
            if self._lost is None:
                left = (record.expires_at - _now()).total_seconds()
                if left < self.ttl / 3:
                    self._renew_locked()
            if self._lost is None:
                _, state = self._state()
                if not (
                    isinstance(state, LeaseRecord)
                    and state.token == record.token
                    and state.state == "held"
                    and not state.expired()
                ):
                    held = state.describe() if isinstance(state, LeaseRecord) else "unknown"
                    self._lost = f"now held {held}"
            if self._lost is not None:
                raise StoreBusyError(
                    f"store {self._name}: the writer lease of this process was lost "
                    f"({self._lost}); nothing more is committed"
                )

    def __enter__(self) -> StoreLease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # ------------------------------------------------------------------ internals

    def _file(self, generation: int) -> str:
        return join_url(self.url, f"{generation:012d}.json")

    def _listing(self) -> tuple[Any, list[int], set[str]]:
        """(fs, generation numbers ascending, other names) in the lease folder."""
        fs, path = get_fs(self.url, self._options)
        path = path.rstrip("/")
        with storage_errors("list", self.url):
            fs.invalidate_cache(path)
            try:
                names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
            except FileNotFoundError:
                names = []
        generations = sorted(
            int(m.group(1)) for n in names if (m := _GENERATION.fullmatch(n)) is not None
        )
        return fs, generations, set(names)

    def _ensure_marker(self) -> None:
        if not self._marker:
            return
        from kmflow.storage.fs import write_bytes_atomic

        _, _, names = self._listing()
        for file, data in self._marker.items():
            if file not in names:
                write_bytes_atomic(join_url(self.url, file), data, self._options)

    def _read(self, generation: int) -> LeaseRecord | _Unreadable | None:
        """Generation `generation`, or None if it does not exist (pruned)."""
        url = self._file(generation)
        fs, path = get_fs(url, self._options)
        with storage_errors("read", url):
            try:
                data = fs.cat_file(path)
            except FileNotFoundError:
                return None
        try:
            record = LeaseRecord.from_json(bytes(data))
        except (ValueError, KeyError, TypeError) as exc:
            return _Unreadable(generation, f"{type(exc).__name__}: {exc}")
        if record.generation != generation:
            return _Unreadable(generation, f"it says generation {record.generation}")
        return record

    def _state(self) -> tuple[int, LeaseRecord | _Unreadable | None]:
        """(highest generation, its record); (0, None) for a lease never taken."""
        for _ in range(20):
            _, generations, _ = self._listing()
            if not generations:
                return 0, None
            record = self._read(generations[-1])
            if record is not None:
                return generations[-1], record
            # Pruned between listing and reading (many newer generations): list again.
        raise StoreBusyError(f"store {self._name}: the writer lease changes too fast to read")

    def _free(
        self, state: LeaseRecord | _Unreadable | None, unreadable_since: dict[int, float]
    ) -> bool:
        if state is None:
            return True
        if isinstance(state, _Unreadable):
            # Possibly still being written (backends without atomic create): free only once
            # it stayed unreadable for a whole TTL, by this process's own clock.
            first = unreadable_since.setdefault(state.generation, time.monotonic())
            if time.monotonic() - first >= self.ttl:
                logger.warning(
                    "%s: ignoring unreadable writer lease generation %d (%s)",
                    self._name,
                    state.generation,
                    state.reason,
                )
                return True
            return False
        return state.state == "released" or state.expired()

    def _create(self, record: LeaseRecord) -> bool:
        """Create `record`'s generation; True only if it is then the highest and ours."""
        data = record.to_json()
        created = write_bytes_exclusive(self._file(record.generation), data, self._options)
        fs = get_fs(self.url, self._options)[0]
        if not created or not isinstance(fs, LocalFileSystem | MemoryFileSystem):
            # A lost race, or a retried request whose first attempt did create it: ours only
            # if it holds our token. (Also guards servers whose conditional write is not
            # atomic: the later of two writes is the one both read back.)
            back = self._read(record.generation)
            if not (isinstance(back, LeaseRecord) and back == record):
                return False
        _, generations, _ = self._listing()
        if generations and generations[-1] > record.generation:
            return False  # created below the highest generation (a stale listing)
        if len(generations) > _PRUNE_ABOVE:
            self._prune(generations[:-_KEEP])
        return True

    def _prune(self, generations: list[int]) -> None:
        fs, path = get_fs(self.url, self._options)
        paths = [f"{path.rstrip('/')}/{g:012d}.json" for g in generations]
        try:
            fs.rm(paths)
        except Exception as exc:  # old generations are harmless: try again next time
            logger.debug("%s: could not prune old lease generations: %s", self._name, exc)

    def _renew_locked(self) -> None:
        """Create the next generation with a new expiry (caller holds ``self._lock``)."""
        record = self._record
        if record is None or self._lost is not None:
            return
        now = _now()
        renewed = replace(
            record,
            generation=record.generation + 1,
            expires_at=now + dt.timedelta(seconds=self.ttl),
        )
        try:
            created = self._create(renewed)
        except Exception as exc:
            if record.expired(now):
                self._lost = f"it expired at {record.expires_at.isoformat()} ({exc})"
            else:
                logger.warning("%s: renewing the writer lease failed: %s", self._name, exc)
            return
        if created:
            self._record = renewed
        else:
            _, state = self._state()
            held = state.describe() if isinstance(state, LeaseRecord) else "by another writer"
            self._lost = f"taken over {held}"

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"kmflow-lease {self._name}", daemon=True
        )
        self._heartbeat.start()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        thread, self._heartbeat = self._heartbeat, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                if self._stop.is_set():
                    return
                self._renew_locked()
                if self._lost is not None:
                    logger.error("%s: writer lease lost: %s", self._name, self._lost)
                    return

    def _busy(self, state: LeaseRecord | _Unreadable | None, waited: float) -> StoreBusyError:
        if isinstance(state, LeaseRecord):
            who = state.describe()
        elif isinstance(state, _Unreadable):
            who = f"with an unreadable lease generation {state.generation} ({state.reason})"
        else:
            who = "by another writer"
        return StoreBusyError(
            f"store {self._name} busy {who}; waited {waited:.0f} s "
            "(KMFLOW_STORAGE__LEASE_TIMEOUT sets how long)"
        )
