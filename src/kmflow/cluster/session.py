"""One cluster per flow run: reuse the one already open, or open one for the block."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kmflow.cluster.resources import current_client
from kmflow.config import Settings
from kmflow.errors import InvalidInputError

__all__ = ["check_paths_visible", "cluster_session", "describe", "run_paths"]

logger = logging.getLogger(__name__)


@contextmanager
def cluster_session(settings: Settings | None = None, paths: Sequence[str] = ()) -> Iterator[Any]:
    """The Dask client a flow run computes with, for the duration of a ``with`` block.

    If Dask already computes on a distributed client (a parent flow opened one, or the
    caller did), that client is yielded and left open. Otherwise a client is opened with
    :func:`kmflow.cluster.connect` (local cluster, scheduler address or Kubernetes, as the
    settings say) and closed when the block ends, which shuts a local cluster down.

    `paths` are the run's sources, store and outputs: the local ones among them are checked
    to be shared with every worker (:func:`check_paths_visible`) before the block runs.

    Yields
    ------
    distributed.Client
        Set as Dask's default: every ``.compute()`` in the block, including those made by
        Prefect tasks run in threads of this process, runs on the cluster's workers.
    """
    existing = current_client()
    if existing is not None:
        logger.info("reusing the open Dask client %s", existing)
        check_paths_visible(existing, paths)
        yield existing
        return
    from kmflow.cluster import connect

    client = connect(settings)
    try:
        check_paths_visible(client, paths)
        yield client
    finally:
        client.close()


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def _local_path(url: str) -> str | None:
    """The absolute local path of `url`, or None for a URL of another filesystem."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif _URL.match(url):
        return None
    return os.path.abspath(os.path.expanduser(url))


def _nearest_existing(path: str) -> tuple[str, int] | None:
    """The deepest existing folder or file on `path` and its inode, in this process."""
    while True:
        try:
            return path, os.stat(path).st_ino
        except OSError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def run_paths(params: Any) -> list[str]:
    """The sources, store, outputs and reports a flow's parameters name (those it has)."""
    paths = list(getattr(params, "sources", None) or [])
    for name in ("store", "out", "reports"):
        value = getattr(params, name, None)
        if isinstance(value, str):
            paths.append(value)
    return paths


def check_paths_visible(client: Any, urls: Sequence[str]) -> None:
    """Fail before any work if a local path of the run is not the same for every worker.

    Workers on other machines read sources and write the store and outputs themselves, so a
    local path (no URL scheme) must name the same file on every worker as in this process:
    a filesystem they all mount at the same place. For each local path, the deepest part
    that exists here (the path itself, or the folder an output will be created in) must
    exist on every worker with the same inode. Paths under ``/`` only are not checked.

    Raises
    ------
    InvalidInputError
        Naming the path and the first worker that sees something else (or nothing).
    """
    checks = []
    for url in urls:
        path = _local_path(url)
        found = None if path is None else _nearest_existing(path)
        if found is not None and found[0] != os.path.sep:
            checks.append((url, *found))
    if not checks:
        return
    seen = client.run(lambda: [_inode(path) for _, path, _ in checks])
    for worker, inodes in sorted(seen.items()):
        for (url, path, inode), theirs in zip(checks, inodes, strict=True):
            if theirs != inode:
                what = "does not exist" if theirs is None else "is another file or folder"
                raise InvalidInputError(
                    f"local path {url!r} is not shared with the Dask workers: on worker "
                    f"{worker}, {path} {what}. Put it on storage every worker reaches "
                    "(s3://..., a filesystem mounted at the same place) or use a local cluster"
                )


def describe(client: Any) -> dict[str, Any]:
    """Scheduler address, worker count, threads and memory of a client's cluster."""
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    return {
        "scheduler": info.get("address", "?"),
        "workers": len(workers),
        "threads": sum(int(w.get("nthreads", 0)) for w in workers.values()),
        "memory_bytes": sum(int(w.get("memory_limit", 0) or 0) for w in workers.values()),
        "dashboard": getattr(client, "dashboard_link", None),
    }
