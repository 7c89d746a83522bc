"""What the cluster the current computation runs on can hold."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
from dask.core import flatten
from distributed import Client, Future, get_client, get_worker, wait

__all__ = [
    "BlockHolder",
    "ResidentBlocks",
    "balance_blocks",
    "compute_as_completed",
    "current_client",
    "has_distributed_client",
    "hold_blocks",
    "is_persisted",
    "memory_budget",
    "scatter_rows",
]

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


# --------------------------------------------------------------------------- resident blocks
#: How long :func:`hold_blocks` waits for its actors before giving up (then passes use graphs).
HOLD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class _Raised:
    """An exception raised by the mapped function on a worker, returned as a value."""

    exc: BaseException
    offset: int  # first row of the block it was raised on


class BlockHolder:
    """Dask actor holding the row blocks its worker already stores, and mapping over them.

    Created by :func:`hold_blocks`, one per worker. It keeps references to the block arrays in
    its worker's memory (no copy). Each :meth:`map` is one call to the worker's actor: no task
    graph and no scheduling, so a pass over persisted data costs one round trip.

    Parameters
    ----------
    offsets : list of int
        Global index of each block's first row.
    n_x : int
        Number of ``X`` blocks among ``blocks``; the rest are their weights (or none).
    *blocks : ndarray
        The ``X`` blocks, then (optionally) the weight blocks, in the same order.
    """

    def __init__(self, offsets: list[int], n_x: int, *blocks: np.ndarray) -> None:
        self._x = blocks[:n_x]
        self._w: Sequence[np.ndarray | None] = blocks[n_x:] or [None] * n_x
        self._offsets = offsets
        self._threads = max(1, min(int(get_worker().state.nthreads), n_x))

    def map(self, func: Callable[..., Any], args: tuple[Any, ...]) -> list[Any] | _Raised:
        """``func(x, w, offset, *args)`` for each block held, in order, on the worker's threads.

        An exception from ``func`` comes back as a value, so the caller can tell it from a
        failure to reach the worker.
        """

        def one(i: int) -> Any:
            try:
                return func(self._x[i], self._w[i], self._offsets[i], *args)
            except Exception as exc:
                return _Raised(exc, self._offsets[i])

        if self._threads == 1:
            out = [one(i) for i in range(len(self._x))]
        else:
            with ThreadPoolExecutor(self._threads, thread_name_prefix="kmflow-blocks") as pool:
                out = list(pool.map(one, range(len(self._x))))
        raised = [r for r in out if isinstance(r, _Raised)]
        return raised[0] if raised else out


class ResidentBlocks:
    """Client side of the :class:`BlockHolder` actors of one persisted array.

    Use :func:`hold_blocks` to create one, and :meth:`close` (or ``with``) to release it.
    """

    def __init__(self, holders: list[tuple[Any, Future[Any], list[int]]], n_blocks: int) -> None:
        self._holders = holders
        self.n_blocks = n_blocks

    def map(self, func: Callable[..., Any], *args: Any) -> list[Any] | None:
        """Results of ``func(x, w, offset, *args)`` for every block, in block order.

        Returns
        -------
        list or None
            ``None`` when a worker could not be reached (the holders are then released and
            the caller should run the pass as a task graph instead).

        Raises
        ------
        Exception
            Whatever ``func`` raised on a worker.

        Notes
        -----
        One call to each holding worker, all at once.
        """
        if not self._holders:
            return None
        calls = [(actor.map(func, args), idx) for actor, _, idx in self._holders]
        out: list[Any] = [None] * self.n_blocks
        raised: list[_Raised] = []
        failed: BaseException | None = None
        for call, idx in calls:
            try:
                res = call.result()
            except Exception as exc:  # a lost worker or connection, not the function
                failed = failed or exc
                continue
            if isinstance(res, _Raised):
                raised.append(res)
                continue
            for i, r in zip(idx, res, strict=True):
                out[i] = r
        if raised:
            raise min(raised, key=lambda r: r.offset).exc  # the first failing block's error
        if failed is not None:
            logger.warning(
                "resident blocks unreachable (%s); passes fall back to task graphs", failed
            )
            self.close()
            return None
        return out

    def close(self) -> None:
        """Release the actors (the worker drops its references to the blocks)."""
        for _, fut, _ in self._holders:
            fut.release()
        self._holders = []

    def __enter__(self) -> ResidentBlocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _block_futures(a: da.Array) -> list[Future[Any]] | None:
    """The futures of a persisted array's row blocks, in order (None if not all persisted)."""
    keys = list(flatten(a.__dask_keys__()))
    graph = a.__dask_graph__()
    futs = [graph.get(k) for k in keys]
    if not all(isinstance(f, Future) for f in futs):
        return None
    return futs  # type: ignore[return-value]


def balance_blocks(
    home: list[str], rows: list[int], threads: Mapping[str, int]
) -> dict[str, list[int]]:
    """Which worker processes which block: where it is, unless that overloads its worker.

    Parameters
    ----------
    home : list of str
        The worker holding each block.
    rows : list of int
        Rows in each block.
    threads : mapping of str to int
        Every worker's number of threads (workers holding no block included).

    Returns
    -------
    dict
        Worker address → block indices (ascending). Starting from ``home``, a block moves from
        the most loaded worker (rows per thread) to the least loaded one while that lowers the
        highest load, so a pass takes about the same time everywhere. A moved block is copied
        to its new worker once, when its holder starts.
    """
    groups: dict[str, list[int]] = {a: [] for a in threads}
    for i, a in enumerate(home):
        groups.setdefault(a, []).append(i)
    nthreads = {a: max(1, int(threads.get(a, 1))) for a in groups}
    load = {a: sum(rows[i] for i in idx) for a, idx in groups.items()}
    for _ in range(len(rows)):
        src = max(groups, key=lambda a: (load[a] / nthreads[a], a))
        dst = min(groups, key=lambda a: (load[a] / nthreads[a], a))
        top = load[src] / nthreads[src]
        best, best_top = None, top
        for i in reversed(groups[src]):  # ties: move the last block
            new_top = max(
                (load[src] - rows[i]) / nthreads[src], (load[dst] + rows[i]) / nthreads[dst]
            )
            if new_top < best_top:
                best, best_top = i, new_top
        if best is None:
            break
        groups[src].remove(best)
        groups[dst].append(best)
        load[src] -= rows[best]
        load[dst] += rows[best]
    return {a: sorted(idx) for a, idx in groups.items() if idx}


def is_persisted(a: da.Array) -> bool:
    """Whether every block of ``a`` is a future on a distributed cluster (persisted there).

    Notes
    -----
    No computation and no round trip: it looks at the array's graph only.
    """
    return _block_futures(a) is not None


def hold_blocks(
    X: da.Array, sample_weight: da.Array | None, offsets: list[int]
) -> ResidentBlocks | None:
    """Put a :class:`BlockHolder` actor on each worker, holding its share of persisted ``X``.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features)
        Persisted on the current distributed client, one chunk along features.
    sample_weight : dask.array.Array of shape (n_samples,) or None
        Persisted too, with ``X``'s row chunks.
    offsets : list of int
        Global index of each block's first row.

    Returns
    -------
    ResidentBlocks or None
        ``None`` without a (synchronous) distributed client, inside a worker task, when the
        blocks are not all persisted futures, or when the actors could not be started.

    Notes
    -----
    Waits for the blocks to be in memory, then two round trips to the scheduler (``who_has``,
    the workers' threads) and one actor task per worker that gets blocks. Each actor
    references the blocks its worker already holds; a block moves to another worker (once)
    only when :func:`balance_blocks` finds its worker overloaded.
    """
    client = current_client()
    if client is None or client.asynchronous or _inside_worker():
        return None
    pending: list[tuple[Future[Any], list[int]]] = []
    xs = _block_futures(X)
    ws = None if sample_weight is None else _block_futures(sample_weight)
    if xs is None or (sample_weight is not None and ws is None):
        return None
    try:
        wait(xs + (ws or []))  # persist returns at once; the first pass would wait anyway
        if any(f.status != "finished" for f in xs + (ws or [])):
            return None  # an erred block: let the task graph path raise its error
        who: Mapping[Any, Sequence[str]] = client.who_has(xs)
        home: list[str] = []
        for f in xs:
            where = sorted(who.get(f.key, ()))
            if not where:
                return None
            home.append(where[0])
        threads = {
            str(a): int(w.get("nthreads", 1) or 1)
            for a, w in client.scheduler_info(n_workers=-1).get("workers", {}).items()
        }
        groups = balance_blocks(home, [int(r) for r in X.chunks[0]], threads)
        token = uuid.uuid4().hex
        for n, (address, idx) in enumerate(sorted(groups.items())):
            blocks = [xs[i] for i in idx] + ([ws[i] for i in idx] if ws is not None else [])
            fut = client.submit(
                BlockHolder,
                [offsets[i] for i in idx],
                len(idx),
                *blocks,
                actor=True,
                workers=[address],
                allow_other_workers=True,
                key=f"kmflow-blocks-{token}-{n}",
            )
            pending.append((fut, idx))
        holders = [(fut.result(timeout=HOLD_TIMEOUT_S), fut, idx) for fut, idx in pending]
    except Exception as exc:
        for fut, _ in pending:
            fut.release()
        logger.warning("could not hold blocks on the workers (%s); using task graphs", exc)
        return None
    logger.debug("holding %d blocks on %d workers", len(xs), len(holders))
    return ResidentBlocks(holders, len(xs))


def compute_as_completed(
    tasks: Sequence[Any], on_done: Callable[[int, Any], None] | None = None
) -> list[Any]:
    """Compute delayed objects, keeping every worker busy until the last one finishes.

    On a distributed client all of them are submitted at once and collected as they finish
    (no wave waits for its slowest task); ``on_done(i, result)`` is called for each as it
    arrives. Without a client, one ``dask.compute`` on the current scheduler, then the
    callbacks in order. Returns the results in the order of ``tasks``.
    """
    client = current_client()
    if client is None:
        results = list(dask.compute(*tasks))
        if on_done is not None:
            for i, r in enumerate(results):
                on_done(i, r)
        return results
    from distributed import as_completed

    futures = client.compute(list(tasks))
    position = {f.key: i for i, f in enumerate(futures)}
    out: list[Any] = [None] * len(futures)
    for future in as_completed(futures):
        i = position[future.key]
        out[i] = future.result()
        if on_done is not None:
            on_done(i, out[i])
        future.release()
    return out
