"""Checks of a user's input that need no computing, run before any cluster or flow starts.

The CLI calls these before it connects to Dask or starts a Prefect flow, so a mistyped
source, a model name that is not in the registry, a ``--store`` that is something else, an
unreachable object store or a bad ``KMFLOW_*`` variable fails in about a second with one
line naming the culprit, instead of after a cluster, a temporary Prefect server and a flow
run were started. Each check raises a :class:`~kmflow.errors.KmflowError`; storage failures
(network, permissions, botocore's errors) come out as :class:`~kmflow.errors.StorageError`.

Examples
--------
>>> from kmflow.config import Settings
>>> check_store("memory://preflight-doc/store.zarr", Settings())
False
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Sequence
from typing import Any

from kmflow.config import Settings, get_settings
from kmflow.core.model import ModelRecord
from kmflow.errors import (
    InvalidInputError,
    ModelNotFoundError,
    OrchestrationError,
    StoreCorruptError,
    StoreNotFoundError,
)
from kmflow.storage.fs import get_fs, redact_url, storage_errors, storage_options_for

__all__ = [
    "SettingsProblem",
    "check_folder",
    "check_model",
    "check_prefect_api",
    "check_registry",
    "check_sources",
    "check_store",
    "load_settings",
]

_SECRET_PARTS = ("secret", "key", "options", "password", "token")


class SettingsProblem(InvalidInputError):
    """A ``KMFLOW_*`` environment variable holds a value kmflow cannot use.

    The message names the variable and what is wrong with it (never a secret's value).
    """


def _variable(loc: Sequence[Any]) -> str:
    return "KMFLOW_" + "__".join(str(part).upper() for part in loc)


def _settings_message(exc: Exception) -> str:
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):  # pydantic-settings' SettingsError (bad JSON)
        # 'error parsing value for field "storage" from source "EnvSettingsSource"'
        text = str(exc)
        field = text.split('"')[1].upper() if text.count('"') >= 2 else "*"
        detail = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        return f"KMFLOW_{field} or one of KMFLOW_{field}__*: not valid JSON{detail}"
    parts = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            parts.append(f"{_variable(loc)} is not a kmflow setting (mistyped name?)")
            continue
        if len(loc) < 2:  # a check across a group's fields
            parts.append(f"{_variable(loc)}__*: {message}")
            continue
        name = _variable(loc)
        shown = "" if any(s in name.lower() for s in _SECRET_PARTS) else f"={error['input']!r}"
        parts.append(f"{name}{shown}: {message}")
    return "; ".join(parts)


def load_settings() -> Settings:
    """The settings from the environment, or one readable error naming the variable.

    Returns
    -------
    Settings

    Raises
    ------
    SettingsProblem
        If a ``KMFLOW_*`` variable is out of bounds, of the wrong type, not valid JSON or
        not a kmflow setting; the message names the variable (``KMFLOW_CLUSTER__N_WORKERS``)
        and shows its value unless it may hold a secret.
    """
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return get_settings()
    except (ValidationError, SettingsError) as exc:
        raise SettingsProblem(_settings_message(exc)) from exc


def _kind(fs: Any, path: str, url: str) -> str | None:
    """``"file"``, ``"directory"`` or None (nothing there), in one storage call.

    One call matters on an unreachable object store: each call waits out the client's
    retries before the error comes back.
    """
    with storage_errors("open", url):
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
    return str(info.get("type")) if info else None


def _names(fs: Any, path: str) -> set[str]:
    return {posixpath.basename(str(p).rstrip("/")) for p in fs.ls(path, detail=False)}


def check_store(
    url: str, settings: Settings | None = None, *, must_exist: bool = False, label: str = "store"
) -> bool:
    """Whether a pixel store exists at `url`; an error if something else is there.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the pixel store.
    settings : Settings, optional
        Where storage options come from (default: the environment).
    must_exist : bool, default False
        Raise if there is no store yet (the command reads one rather than creating it).
    label : str, default "store"
        How the messages name the store (e.g. ``"--store"``).

    Returns
    -------
    bool
        True if a valid pixel store is there, False if nothing is (one will be created).

    Raises
    ------
    InvalidInputError
        A regular file is at `url`.
    StoreCorruptError
        A Zarr v2 group or array, a folder of other files, or a Zarr v3 group that is not a
        kmflow pixel store is at `url`.
    StoreNotFoundError
        Nothing is there and ``must_exist``.
    StorageError
        The location cannot be reached (network, permissions, an S3 endpoint that does not
        answer).
    """
    from kmflow.storage.pixelstore import PixelStore

    settings = settings or load_settings()
    options = storage_options_for(url, settings.storage)
    shown = redact_url(url)
    fs, path = get_fs(url, options)
    kind = _kind(fs, path, url)
    if kind == "file":
        raise InvalidInputError(
            f"{label} {shown} is a regular file, not a pixel store: give a folder or URL "
            "where kmflow keeps (or may create) its Zarr v3 pixel store"
        )
    with storage_errors("list", url):
        names = _names(fs, path) if kind == "directory" else set()
    if ".zgroup" in names or ".zarray" in names:
        kind = "group" if ".zgroup" in names else "array"
        raise StoreCorruptError(
            f"{label} {shown} is a Zarr v2 {kind} (.z{kind}), not a kmflow pixel store "
            "(Zarr v3, zarr.json): give another path; kmflow does not convert v2 stores"
        )
    if "zarr.json" not in names:
        # A store's writer lease may exist before its zarr.json: the first ingest takes the
        # lease, then creates the store (and may have crashed in between).
        names.discard(".lease")
        if names:
            raise StoreCorruptError(
                f"{label} {shown} is a folder of other files ({len(names)} entries, no "
                "zarr.json), not a pixel store: give an empty or new path"
            )
        if must_exist:
            raise StoreNotFoundError(
                f"no pixel store at {label} {shown}: ingest images into it first "
                "(kmflow pipeline SOURCE --store ..., or kmflow quantize SOURCE --store ...)"
            )
        return False
    store = PixelStore(url, storage_options=options, chunk_pixels=settings.storage.chunk_pixels)
    with storage_errors("open", url):
        store.n_images  # noqa: B018 - validates the layout and commit record
    return True


def check_sources(
    sources: Sequence[str], settings: Settings | None = None, *, pattern: str | None = None
) -> int:
    """Find the images of `sources`; an error naming the first source that does not exist.

    Parameters
    ----------
    sources : sequence of str
        Files, folders, globs or URLs, as the ingest flow takes them.
    settings : Settings, optional
        Where storage options come from (default: the environment).
    pattern : str, optional
        Glob filter inside folders.

    Returns
    -------
    int
        How many images the sources hold (an existing empty folder gives 0).

    Raises
    ------
    SourceNotFoundError
        A source does not exist (the message names it).
    StorageError
        A source cannot be listed (network, permissions).
    """
    from kmflow.storage.images import discover_images

    settings = settings or load_settings()
    found = 0
    for root in sources:
        with storage_errors("list", root):
            found += len(
                discover_images(
                    root,
                    pattern=pattern,
                    storage_options=storage_options_for(root, settings.storage),
                )
            )
    return found


def check_folder(url: str, settings: Settings | None = None, *, label: str = "folder") -> None:
    """Raise if `url` cannot be an output folder: a regular file is there, or it is unreachable.

    Raises
    ------
    InvalidInputError
        A regular file is at `url`.
    StorageError
        `url` cannot be reached (network, permissions).
    """
    settings = settings or load_settings()
    fs, path = get_fs(url, storage_options_for(url, settings.storage))
    if _kind(fs, path, url) == "file":
        raise InvalidInputError(
            f"{label} {redact_url(url)} is a regular file: expected a folder or URL prefix"
        )


def check_registry(url: str, settings: Settings | None = None) -> None:
    """Raise if `url` cannot be a model registry (a regular file, or unreachable).

    Raises
    ------
    InvalidInputError
        A regular file is at `url`.
    StorageError
        `url` cannot be reached.
    """
    settings = settings or load_settings()
    fs, path = get_fs(url, storage_options_for(url, settings.storage))
    if _kind(fs, path, url) == "file":
        raise InvalidInputError(
            f"registry {redact_url(url)} (KMFLOW_REGISTRY__URL or --registry) is a regular "
            "file: the model registry is a folder or URL prefix"
        )


def check_model(
    name: str,
    settings: Settings | None = None,
    *,
    registry: str | None = None,
    champion: bool = True,
    version: int | None = None,
) -> ModelRecord | None:
    """The champion of model `name`; an error listing the models there if it is not known.

    Parameters
    ----------
    name : str
        Model name.
    settings : Settings, optional
        Registry location and storage options (default: the environment).
    registry : str, optional
        Registry URL instead of ``settings.registry.url``.
    champion : bool, default True
        Also require a champion (what monitor, retrain and apply use by default).
    version : int, optional
        Also require this version to exist.

    Returns
    -------
    ModelRecord or None
        The record of ``version`` if given, else the champion's (None when
        ``champion=False`` and there is none).

    Raises
    ------
    ModelNotFoundError
        No model `name` in the registry (the message lists the models there), or it has no
        champion and one is required.
    InvalidInputError
        `name` breaks the naming rule, or the registry is a regular file.
    StorageError
        The registry cannot be read.
    """
    from kmflow.storage.registry import ModelRegistry

    settings = settings or load_settings()
    url = registry or settings.registry.url
    check_registry(url, settings)
    reg = ModelRegistry(url, storage_options=storage_options_for(url, settings.storage))
    names = reg.names()
    if name not in names:
        there = (
            f"models there: {', '.join(names)}"
            if names
            else "it holds no model yet (kmflow pipeline trains and registers one)"
        )
        raise ModelNotFoundError(f"no model {name!r} in registry {redact_url(url)}: {there}")
    if version is not None:
        return reg.record(name, version)  # ModelNotFoundError lists the versions there
    record = reg.champion(name)
    if record is None and champion:
        raise ModelNotFoundError(
            f"model {name!r} has no champion yet: promote a version with "
            f"'kmflow models promote {name} VERSION'"
        )
    return record


def check_prefect_api(wait: float = 10.0) -> None:
    """When ``PREFECT_API_URL`` names a Prefect server, raise unless it answers.

    Without ``PREFECT_API_URL`` Prefect starts a temporary local server for the run, and
    there is nothing to check. Otherwise the server's health check is asked for up to `wait`
    seconds (a server that is still starting gets that long), through Prefect's own client, so
    Prefect Cloud's authentication applies.

    Raises
    ------
    OrchestrationError
        Naming the URL and why it did not answer.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return
    deadline = time.monotonic() + wait
    while True:
        with get_client(sync_client=True) as client:
            error = client.api_healthcheck()
        if error is None:
            return
        if time.monotonic() >= deadline:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise OrchestrationError(
                f"the Prefect API at {redact_url(url)} (PREFECT_API_URL) does not answer "
                f"({reason}); start that server, or unset PREFECT_API_URL to run with a "
                "temporary local one"
            )
        time.sleep(1.0)
