"""One cluster per flow run: reuse the one already open, or open one for the block."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kmflow.cluster.resources import current_client
from kmflow.config import Settings

__all__ = ["cluster_session", "describe"]

logger = logging.getLogger(__name__)


@contextmanager
def cluster_session(settings: Settings | None = None) -> Iterator[Any]:
    """The Dask client a flow run computes with, for the duration of a ``with`` block.

    If Dask already computes on a distributed client (a parent flow opened one, or the
    caller did), that client is yielded and left open. Otherwise a client is opened with
    :func:`kmflow.cluster.connect` (local cluster, scheduler address or Kubernetes, as the
    settings say) and closed when the block ends, which shuts a local cluster down.

    Yields
    ------
    distributed.Client
        Set as Dask's default: every ``.compute()`` in the block, including those made by
        Prefect tasks run in threads of this process, runs on the cluster's workers.
    """
    existing = current_client()
    if existing is not None:
        logger.info("reusing the open Dask client %s", existing)
        yield existing
        return
    from kmflow.cluster import connect

    client = connect(settings)
    try:
        yield client
    finally:
        client.close()


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
