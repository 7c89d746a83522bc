"""Files and URLs through fsspec: local paths, ``file://``, ``memory://``, ``s3://`` and more.

Everything kmflow reads or writes goes through these helpers, so every backend fsspec knows
works the same way, and every failure becomes a kmflow error that names the URL (never the
credentials used to reach it).

Examples
--------
>>> from kmflow.config import StorageSettings
>>> from kmflow.storage.fs import join_url, storage_options_for
>>> settings = StorageSettings(s3_endpoint_url="http://127.0.0.1:9000")
>>> options = storage_options_for("s3://bucket/images/", settings)
>>> options["client_kwargs"]
{'endpoint_url': 'http://127.0.0.1:9000'}
>>> options["config_kwargs"]
{'retries': {'mode': 'standard', 'total_max_attempts': 11}, 'connect_timeout': 5.0}
>>> storage_options_for("/data/images", settings)
{}
>>> join_url("s3://bucket/out/", "a/b", "c.png")
's3://bucket/out/a/b/c.png'
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from kmflow.config import StorageSettings, get_settings
from kmflow.errors import InvalidInputError, KmflowError, SourceNotFoundError, StorageError

__all__ = [
    "get_fs",
    "join_url",
    "local_temp_file",
    "read_bytes",
    "redact_url",
    "s3_attempts",
    "storage_errors",
    "storage_options_for",
    "url_of",
    "write_bytes_atomic",
]

logger = logging.getLogger(__name__)

_S3_PROTOCOLS = frozenset({"s3", "s3a"})
_PROTOCOL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# ``scheme://user:password@host/...``: the user-info part is replaced before a URL is shown.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@")


def _protocol(url: str) -> str:
    """Return the protocol of a (non-chained) URL, ``"file"`` for a plain path."""
    match = _PROTOCOL.match(url)
    return match.group(1).lower() if match else "file"


def redact_url(url: str | os.PathLike[str]) -> str:
    """Return `url` with any ``user:password@`` part masked, for messages and logs.

    Parameters
    ----------
    url : str or os.PathLike
        A path or URL.

    Returns
    -------
    str
        The same URL with the user-info part replaced by ``***``.

    Examples
    --------
    >>> redact_url("ftp://me:hunter2@host/file.png")
    'ftp://***@host/file.png'
    """
    return _USERINFO.sub(r"\1***@", os.fspath(url))


def storage_options_for(url: str, settings: StorageSettings | None = None) -> dict[str, Any]:
    """Return the fsspec storage options to open `url` with.

    Parameters
    ----------
    url : str
        The path or URL to be opened; only its protocol matters.
    settings : StorageSettings, optional
        Where the options come from; ``None`` reads them from the environment
        (``get_settings().storage``).

    Returns
    -------
    dict
        A fresh copy of ``settings.options``. For ``s3://`` (and ``s3a://``) URLs, the S3
        settings are merged in as s3fs expects them: ``key`` and ``secret`` when set, and
        ``client_kwargs["endpoint_url"]`` (other ``client_kwargs`` from ``options`` are kept).
        The S3 settings win over the same keys in ``options``.

    Notes
    -----
    The region is deliberately not put into ``client_kwargs``: with an S3-compatible
    endpoint, ``client_kwargs={"region_name": ...}`` makes bucket creation fail ("The
    specified location-constraint is not valid"); set ``AWS_DEFAULT_REGION`` instead.
    The returned dict holds secrets in plain text (s3fs needs them so): pass it on, never
    log it. Chained URLs (``simplecache::s3://...``) get ``options`` only.
    """
    if settings is None:
        settings = get_settings().storage
    options = copy.deepcopy(dict(settings.options))
    if _protocol(url) in _S3_PROTOCOLS:
        if settings.s3_key is not None and settings.s3_secret is not None:
            options["key"] = settings.s3_key.get_secret_value()
            options["secret"] = settings.s3_secret.get_secret_value()
        if settings.s3_endpoint_url is not None:
            client_kwargs = dict(options.get("client_kwargs") or {})
            client_kwargs["endpoint_url"] = settings.s3_endpoint_url
            options["client_kwargs"] = client_kwargs
        config_kwargs = dict(options.get("config_kwargs") or {})
        config_kwargs.setdefault(
            "retries",
            {"mode": "standard", "total_max_attempts": s3_attempts(settings.s3_retry_seconds)},
        )
        config_kwargs.setdefault("connect_timeout", settings.s3_connect_timeout)
        options["config_kwargs"] = config_kwargs
    return options


# botocore's standard retry mode pauses ``random() * min(2**i, 20)`` seconds before retry i
# (i = 0, 1, ...): the expected pause is half of that.
_BACKOFF_CAP = 20.0


def s3_attempts(retry_seconds: float) -> int:
    """Attempts per S3 request so that the expected total retry pause is about `retry_seconds`.

    Examples
    --------
    >>> s3_attempts(0), s3_attempts(1), s3_attempts(60)
    (1, 3, 11)
    """
    attempts, expected = 1, 0.0
    while expected < retry_seconds:
        expected += min(2.0 ** (attempts - 1), _BACKOFF_CAP) / 2
        attempts += 1
    return attempts


def get_fs(
    url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem serving `url` and the path of `url` inside it.

    Parameters
    ----------
    url : str or os.PathLike
        A local path or any fsspec URL.
    storage_options : dict, optional
        Keyword arguments for the filesystem (see :func:`storage_options_for`).

    Returns
    -------
    fs : fsspec.AbstractFileSystem
        The filesystem (fsspec caches instances, so this is cheap to call repeatedly).
    path : str
        `url` without its protocol, as `fs` expects it (local paths become absolute).

    Raises
    ------
    InvalidInputError
        If the protocol is unknown, its backend is not installed, or the storage options
        are not accepted by the backend.
    StorageError
        If the backend connects on creation (FTP, SFTP) and that fails.
    """
    text = os.fspath(url)
    with storage_errors("open", text):
        try:
            fs, path = url_to_fs(text, **(storage_options or {}))
        except (ValueError, ImportError, TypeError) as exc:
            raise InvalidInputError(f"cannot open {redact_url(text)!r}: {exc}") from exc
    return fs, path


@contextlib.contextmanager
def storage_errors(action: str, url: str | os.PathLike[str]) -> Iterator[None]:
    """Turn I/O and backend exceptions raised inside the block into kmflow errors.

    Parameters
    ----------
    action : str
        What was being done, for the message ("read", "list", "write").
    url : str or os.PathLike
        The URL it was done to (shown with credentials masked).

    Raises
    ------
    SourceNotFoundError
        For ``FileNotFoundError`` (the URL does not exist).
    StorageError
        For any other ``OSError`` (permissions, a directory where a file was expected,
        network failures) and for backend-specific exceptions (e.g. botocore's), with the
        original exception chained.

    Notes
    -----
    kmflow's own errors and ``MemoryError`` pass through unchanged.
    """
    shown = redact_url(url)
    try:
        yield
    except (KmflowError, MemoryError):
        raise
    except FileNotFoundError as exc:
        raise SourceNotFoundError(f"not found: {shown}") from exc
    except IsADirectoryError as exc:
        raise StorageError(f"cannot {action} {shown}: it is a directory, not a file") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise StorageError(f"cannot {action} {shown}: {reason}") from exc
    except Exception as exc:
        raise StorageError(f"cannot {action} {shown}: {type(exc).__name__}: {exc}") from exc


def read_bytes(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> bytes:
    """Return the whole content of the file at `url`.

    Parameters
    ----------
    url : str or os.PathLike
        A local path or any fsspec URL of a file.
    storage_options : dict, optional
        Keyword arguments for the filesystem.

    Returns
    -------
    bytes
        The file's content.

    Raises
    ------
    SourceNotFoundError
        If there is no file at `url` (the message names it).
    StorageError
        If it cannot be read (a directory, permissions, network).
    InvalidInputError
        If `url` has an unknown protocol or the options are not accepted.
    """
    fs, path = get_fs(url, storage_options)
    with storage_errors("read", url):
        data = fs.cat_file(path)
    return bytes(data)


def write_bytes_atomic(
    url: str | os.PathLike[str],
    data: bytes,
    storage_options: dict[str, Any] | None = None,
    *,
    durable: bool = True,
) -> None:
    """Write `data` to `url` so that readers see the old file or the new one, never a part.

    Parameters
    ----------
    url : str or os.PathLike
        Destination path or URL; an existing file there is replaced.
    data : bytes
        The complete new content.
    storage_options : dict, optional
        Keyword arguments for the filesystem.
    durable : bool, default True
        Local files: fsync before the rename, so the new content survives a power loss.
        ``False`` keeps the write atomic for readers but skips the fsync (about 2 ms a file
        here): for outputs that a re-run recreates, such as thousands of quantized PNGs.

    Raises
    ------
    StorageError
        If the file or its parent folders cannot be written.
    InvalidInputError
        If `url` has an unknown protocol or the options are not accepted.

    Notes
    -----
    Local paths: missing parent folders are created, the bytes go to a uniquely named
    hidden temporary file in the destination folder (created with the usual permissions,
    i.e. ``0o666`` less the umask), are flushed and fsync'ed, and the file is moved into
    place with :func:`os.replace` (atomic on POSIX); the temporary file is removed on
    failure. Other filesystems get one ``pipe_file`` call: on object stores (S3, GCS,
    Azure, memory) a single put is atomic. No parent "folders" are created there, and a
    missing bucket is an error rather than being created.
    """
    fs, path = get_fs(url, storage_options)
    with storage_errors("write", url):
        if isinstance(fs, LocalFileSystem):
            _write_local_atomic(path, bytes(data), durable=durable)
        else:
            fs.pipe_file(path, bytes(data))
    logger.debug("wrote %d bytes to %s", len(data), redact_url(url))


def local_temp_file(path: str, data: bytes, *, durable: bool = True) -> str:
    """Write `data` to a new temporary file next to the local `path`; return its path.

    The name is unique (``.<name>.<uuid>.tmp``, created with ``O_EXCL``), the folder is
    created if needed, and with `durable` the data is fsynced before this returns. The
    caller moves the file into place (rename, hard link) or removes it.
    """
    folder, name = os.path.split(path)
    folder = folder or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _write_local_atomic(path: str, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to the local `path` through a temporary file and ``os.replace``."""
    tmp = local_temp_file(path, data, durable=durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def join_url(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a path or URL with ``/``.

    Parameters
    ----------
    base : str or os.PathLike
        A local folder or a URL (``s3://bucket/out``, ``memory://x/``); a trailing ``/`` is
        allowed.
    *parts : str
        Relative POSIX paths (``"a/b"``, ``"c.png"``); leading and trailing ``/`` are
        dropped, empty parts are skipped.

    Returns
    -------
    str
        The joined URL, in the form of `base` (a plain path stays a plain path).

    Raises
    ------
    InvalidInputError
        If a part contains a ``..`` segment (outputs must stay inside `base`).

    Examples
    --------
    >>> join_url("/data/out", "photos/a.png")
    '/data/out/photos/a.png'
    >>> join_url("s3://bucket/", "out", "", "x.png")
    's3://bucket/out/x.png'
    """
    result = os.fspath(base)
    for part in parts:
        cleaned = part.strip("/")
        if not cleaned:
            continue
        if ".." in cleaned.split("/"):
            raise InvalidInputError(
                f"path part {part!r} contains '..'; parts must stay inside {redact_url(base)!r}"
            )
        result = result + cleaned if result.endswith("/") else f"{result}/{cleaned}"
    return result


def _is_plain_path(url: str) -> bool:
    """True for a local path written without a protocol (``/data/x``, ``photos/a.png``)."""
    return "::" not in url and _PROTOCOL.match(url) is None


def url_of(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Return the URL of `path` on `fs`, written the way `like` was (plain path or URL).

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The filesystem `path` belongs to.
    path : str
        A path as `fs` lists it (no protocol).
    like : str
        The URL the user gave: a plain local path yields a plain absolute path, anything else
        a full URL (``s3://bucket/key``, ``memory:///x``, ``file:///x``).

    Returns
    -------
    str
        The URL of `path`.
    """
    if _is_plain_path(like) and isinstance(fs, LocalFileSystem):
        return posixpath.normpath(path) if path else path
    return str(fs.unstrip_protocol(path))
