"""What the cluster the current computation runs on can hold."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
from distributed import Client, get_client, get_worker

__all__ = ["current_client", "has_distributed_client", "memory_budget", "scatter_rows"]

logger = logging.getLogger(__name__)

_DISTRIBUTED_SCHEDULER_NAMES = ("dask.distributed", "distributed")


def current_client() -> Client | None:
    """Return the distributed client Dask would compute with now, without creating one.

    Follows :func:`dask.base.get_scheduler`: an explicit ``scheduler`` in ``dask.config``
    wins (``"threads"``, ``"processes"``, ``"sync"`` or a callable mean no client); then the
    client set as current or default; then, inside a task on a Dask worker, a client to that
    worker's scheduler.

    Returns
    -------
    distributed.Client or None
        ``None`` when computations would run on a local (non-distributed) scheduler.

    Notes
    -----
    Never starts a cluster. Inside a worker task it may open a client to the worker's own
    scheduler, as Dask itself does when such a task calls ``.compute()``.
    """
    configured = dask.config.get("scheduler", None)
    if configured is not None:
        if isinstance(configured, Client):
            return configured
        if not (isinstance(configured, str) and configured.lower() in _DISTRIBUTED_SCHEDULER_NAMES):
            return None
    try:
        client: Client = Client.current(allow_global=True)  # type: ignore[no-untyped-call]
    except ValueError:
        pass
    else:
        return client
    if _inside_worker():
        return get_client()
    return None


def has_distributed_client() -> bool:
    """Whether Dask computations would run on a distributed cluster now.

    Returns
    -------
    bool
        True if a default (or current) :class:`distributed.Client` exists and no local
        scheduler is configured over it, or if called inside a task on a Dask worker.

    Notes
    -----
    Never starts a cluster and never opens a client.
    """
    configured = dask.config.get("scheduler", None)
    if configured is not None:
        return isinstance(configured, Client) or (
            isinstance(configured, str) and configured.lower() in _DISTRIBUTED_SCHEDULER_NAMES
        )
    try:
        Client.current(allow_global=True)  # type: ignore[no-untyped-call]
    except ValueError:
        return _inside_worker()
    return True


def memory_budget() -> int:
    """Bytes of memory the current computation may use for persisted data.

    Returns
    -------
    int
        With a distributed client (see :func:`current_client`): the sum of its workers'
        ``memory_limit``; for workers without a limit, the total memory of their host,
        counted once per host. Without one: the memory available on this machine now
        (``psutil.virtual_memory().available``).

    Notes
    -----
    One round trip to the scheduler (``client.scheduler_info``), plus one to a worker per
    host whose workers have no memory limit. For an asynchronous client only the
    scheduler's cached total is available.
    """
    client = current_client()
    if client is None:
        available = int(psutil.virtual_memory().available)
        logger.debug("memory budget %d bytes: available memory, no distributed client", available)
        return available
    if client.asynchronous:
        # A sync round trip is impossible here; the cached identity carries the total only.
        total = int(client.scheduler_info().get("total_memory", 0) or 0)
        return total if total > 0 else int(psutil.virtual_memory().available)
    workers: Mapping[str, Mapping[str, Any]] = client.scheduler_info(n_workers=-1).get(
        "workers", {}
    )
    budget = 0
    unlimited_hosts: dict[str, str] = {}  # host -> one worker address on it
    for address, worker in workers.items():
        limit = worker.get("memory_limit") or 0
        if limit > 0:
            budget += int(limit)
        else:
            unlimited_hosts.setdefault(str(worker.get("host", address)), address)
    for host, address in unlimited_hosts.items():
        budget += _host_total_memory(client, address)
        logger.debug("workers on %s have no memory limit; counting the host's total memory", host)
    logger.debug("memory budget %d bytes over %d workers", budget, len(workers))
    return budget


def _host_total_memory(client: Client, worker_address: str) -> int:
    """Total memory of the host a worker runs on (this machine's if it cannot be asked)."""
    try:
        # psutil is a dependency of distributed, so the worker can unpickle the reference.
        answer = client.run(psutil.virtual_memory, workers=[worker_address])
        return int(answer[worker_address].total)
    except Exception as exc:  # a dead worker or a failed round trip: estimate locally
        logger.warning(
            "could not ask worker %s for its host memory (%s); using this machine's",
            worker_address,
            exc,
        )
        return int(psutil.virtual_memory().total)


def _inside_worker() -> bool:
    """Whether this code runs inside a task on a Dask worker."""
    try:
        get_worker()
    except ValueError:
        return False
    return True


def scatter_rows(x: np.ndarray, chunk_rows: int) -> da.Array | None:
    """Send an in-memory array to the workers in row blocks; ``None`` without a cluster.

    Embedding a large numpy array in a task graph makes the scheduler carry it (Dask warns
    "Sending large graph"); scattering sends each block once, straight to a worker.

    Parameters
    ----------
    x : ndarray of shape (n, ...)
    chunk_rows : int
        Rows per block.

    Returns
    -------
    dask.array.Array or None
        Backed by futures on the workers, with row chunks of ``chunk_rows``.
    """
    client = current_client()
    if client is None or _inside_worker():
        return None
    starts = range(0, max(1, x.shape[0]), max(1, chunk_rows))
    pieces = [np.ascontiguousarray(x[s : s + chunk_rows]) for s in starts]
    futures = client.scatter(pieces)
    return da.concatenate(
        [
            da.from_delayed(f, shape=p.shape, dtype=p.dtype, meta=p[:0])
            for f, p in zip(futures, pieces, strict=True)
        ]
    )
