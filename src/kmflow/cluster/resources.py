"""What the cluster the current computation runs on can hold."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
from dask.core import flatten
from distributed import Client, Future, get_client, get_worker, wait
from distributed.comm.core import CommClosedError
from distributed.scheduler import KilledWorker

from kmflow.errors import ClusterError

__all__ = [
    "BlockHolder",
    "HoldersLost",
    "Placement",
    "ResidentBlocks",
    "balance_blocks",
    "current_client",
    "has_distributed_client",
    "hold_blocks",
    "is_persisted",
    "is_worker_loss",
    "memory_budget",
    "place_on_workers",
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
    "Sending large graph"); scattering sends each block once, straight to a worker. Every
    call gives the blocks new keys (the data is not hashed), so scattering the same array
    again after a lost worker never meets the old, lost keys.

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
    futures = client.scatter(pieces, hash=False)
    return da.concatenate(
        [
            da.from_delayed(f, shape=p.shape, dtype=p.dtype, meta=p[:0])
            for f, p in zip(futures, pieces, strict=True)
        ]
    )


# --------------------------------------------------------------------------- resident blocks
#: How long :func:`hold_blocks` waits for its actors before giving up (then passes use graphs).
HOLD_TIMEOUT_S = 60.0
#: How often a wait on the cluster looks at whether its workers are still there.
_POLL_S = 1.0


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


class HoldersLost(ClusterError):
    """A worker holding blocks for a fit could not be reached: it died or its connection closed.

    Raised inside a fit only as the cause of a retry (see :class:`Placement`); it reaches the
    caller only as the cause of the final :class:`~kmflow.errors.ClusterError`.
    """


class ResidentBlocks:
    """Client side of the :class:`BlockHolder` actors of one persisted array.

    Use :func:`hold_blocks` to create one, and :meth:`close` (or ``with``) to release it.

    Attributes
    ----------
    failure : HoldersLost or None
        Why the last :meth:`map` returned ``None`` (a holder's worker could not be reached).
    """

    def __init__(self, holders: list[tuple[Any, Future[Any], list[int]]], n_blocks: int) -> None:
        self._holders = holders
        self.n_blocks = n_blocks
        self.failure: HoldersLost | None = None

    def map(self, func: Callable[..., Any], *args: Any) -> list[Any] | None:
        """Results of ``func(x, w, offset, *args)`` for every block, in block order.

        Returns
        -------
        list or None
            ``None`` when a worker could not be reached (the holders are then released,
            :attr:`failure` says why, and the caller should run the pass as a task graph
            instead, or place the data again).

        Raises
        ------
        Exception
            Whatever ``func`` raised on a worker.

        Notes
        -----
        One call to each holding worker, all at once. While waiting, the holders' futures are
        looked at every second: a holder whose worker died is noticed even when its call
        would never answer.
        """
        if not self._holders:
            return None
        out: list[Any] = [None] * self.n_blocks
        raised: list[_Raised] = []
        failed: BaseException | None = None
        calls = []
        for actor, fut, idx in self._holders:
            try:
                calls.append((actor.map(func, args), fut, idx))
            except Exception as exc:  # "Worker holding Actor was lost"
                failed = failed or exc
        for call, fut, idx in calls:
            try:
                res = _actor_result(call, fut)
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
                "resident blocks unreachable (%s: %s); passes fall back to task graphs unless "
                "the data is placed again",
                type(failed).__name__,
                failed,
            )
            self.failure = HoldersLost(f"a worker holding blocks was lost: {failed}")
            self.failure.__cause__ = failed
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


def _actor_result(call: Any, holder: Future[Any]) -> Any:
    """Wait for an actor call, giving up once the holder's own future is no longer in memory."""
    while True:
        try:
            return call.result(timeout=_POLL_S)
        except TimeoutError:
            if call.done():
                continue  # answered just as the wait ran out
            if holder.status != "finished":
                raise HoldersLost(f"the holder {holder.key} is {holder.status}") from None


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


# --------------------------------------------------------------------------- lost workers
#: Lost-worker recoveries one fit may make in a row (without a pass succeeding in between)
#: before it gives up with :class:`~kmflow.errors.ClusterError`.
LOST_WORKER_RETRIES = 3
#: Seconds to wait for at least one worker after losing workers, and how long a pass may wait
#: with no worker at all, before :class:`~kmflow.errors.ClusterError`.
WORKER_WAIT_S = 60.0


def is_worker_loss(exc: BaseException) -> bool:
    """Whether ``exc`` means a worker (or the connection to it) was lost, not a failed task.

    True for cancelled futures (their data was lost with a worker), a task that killed
    ``allowed-failures`` workers (:class:`distributed.scheduler.KilledWorker`), a closed
    connection (:class:`distributed.comm.core.CommClosedError`) and unreachable block
    holders (:class:`HoldersLost`). Errors raised by the mapped functions themselves
    (invalid data, I/O errors of a source) are not losses.
    """
    return isinstance(
        exc, (HoldersLost, CancelledError, asyncio.CancelledError, KilledWorker, CommClosedError)
    )


Placer = Callable[[], tuple[da.Array, "da.Array | None"]]
Holder = Callable[[da.Array, "da.Array | None", list[int]], "ResidentBlocks | None"]


class Placement:
    """A fit's data on the workers, and how to put it there again after a lost worker.

    Create one with :func:`place_on_workers`. ``place()`` puts the data on the workers (scatter
    an in-memory array kept here, or persist a dask array from its source graph) and returns
    the arrays; ``hold`` (usually :func:`hold_blocks`) then gives each worker an actor holding
    its blocks. When a pass fails because a worker was lost, :meth:`recover` places the data again,
    on the workers that are left (or came back), and the pass is retried.

    Attributes
    ----------
    X, sample_weight : dask.array.Array
        The data as placed now (``sample_weight`` may be None).
    resident : ResidentBlocks or None
        The block holders of the current placement.

    Notes
    -----
    The blocks are the same rows after every placement (only the worker holding a block can
    change), so a retried pass returns exactly what the pass would have returned
    undisturbed: every result of a fit is bit-identical to an undisturbed fit's.
    """

    def __init__(self, client: Client, place: Placer, *, hold: Holder | None) -> None:
        self.client = client
        self._place = place
        self._hold = hold
        self._lost = 0
        self.X: da.Array | None = None
        self.sample_weight: da.Array | None = None
        self.resident: ResidentBlocks | None = None

    # ----------------------------------------------------------------- placing
    def _put(self) -> tuple[da.Array, da.Array | None, ResidentBlocks | None]:
        X, W = self._place()
        resident = None
        if self._hold is not None:
            sizes = np.asarray(X.chunks[0], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
            resident = self._hold(X, W, offsets)
        self.X, self.sample_weight, self.resident = X, W, resident
        return X, W, resident

    def _release(self) -> None:
        if self.resident is not None:
            self.resident.close()
        self.X = self.sample_weight = self.resident = None

    def recover(
        self, exc: BaseException | None
    ) -> tuple[da.Array, da.Array | None, ResidentBlocks | None] | None:
        """Place the data again after ``exc``, if it means a lost worker.

        Parameters
        ----------
        exc : BaseException or None
            What a pass raised; ``None`` for the first placement.

        Returns
        -------
        tuple or None
            ``(X, sample_weight, resident)`` as placed now, or ``None`` when ``exc`` is not a
            lost worker (the caller re-raises it).

        Raises
        ------
        ClusterError
            :data:`LOST_WORKER_RETRIES` recoveries in a row failed, or no worker was left
            for :data:`WORKER_WAIT_S` seconds.
        """
        if exc is not None and not is_worker_loss(exc):
            return None
        last = exc
        while True:
            if last is not None:
                self._lost += 1
                if self._lost > LOST_WORKER_RETRIES:
                    raise ClusterError(
                        f"lost Dask workers {self._lost} times in a row during a pass over the "
                        f"data and gave up (retries: {LOST_WORKER_RETRIES}); last error: "
                        f"{type(last).__name__}: {last}"
                    ) from last
                logger.warning(
                    "a pass over the data lost a worker (%s: %s); placing the data on the "
                    "workers again and retrying the pass (retry %d of %d)",
                    type(last).__name__,
                    last,
                    self._lost,
                    LOST_WORKER_RETRIES,
                )
                # Give the scheduler a moment to drop the dead worker before placing data.
                time.sleep(0.25 * 2 ** (self._lost - 1))
            self._release()
            try:
                self._wait_for_workers(last)
                return self._put()
            except ClusterError:
                raise
            except Exception as placing_exc:
                if not (is_worker_loss(placing_exc) or isinstance(placing_exc, OSError)):
                    raise
                last = placing_exc

    def succeeded(self) -> None:
        """A pass completed: the count of recoveries in a row starts again."""
        self._lost = 0

    def _wait_for_workers(self, cause: BaseException | None) -> None:
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, OSError) as exc:
            raise ClusterError(
                f"no Dask worker is left: waited {WORKER_WAIT_S:g} s for one to join the "
                f"scheduler after losing workers"
                + (f" ({type(cause).__name__}: {cause})" if cause is not None else "")
            ) from (cause or exc)

    # ----------------------------------------------------------------- computing
    def compute(self, obj: Any) -> Any:
        """Compute a delayed object on the client, failing if no worker is left to run it.

        Raises
        ------
        ClusterError
            The scheduler had no worker for :data:`WORKER_WAIT_S` seconds while the
            computation waited (a scheduler with no workers would otherwise wait forever).

        Notes
        -----
        One ``client.compute``; while it runs, the scheduler's worker count is asked once a
        second.
        """
        future = self.client.compute(obj)
        alone_since: float | None = None
        try:
            while True:
                try:
                    return future.result(timeout=_POLL_S)
                except TimeoutError:
                    if future.done():
                        continue  # finished (or failed) just as the wait ran out
                if self.client.nthreads():
                    alone_since = None
                    continue
                alone_since = alone_since or time.monotonic()
                if time.monotonic() - alone_since > WORKER_WAIT_S:
                    raise ClusterError(
                        f"no Dask worker is left: a pass waited {WORKER_WAIT_S:g} s with no "
                        "worker to run on"
                    )
        finally:
            future.release()

    def close(self) -> None:
        """Release the block holders."""
        self._release()


def place_on_workers(
    place: Placer, *, hold: Holder | None
) -> tuple[Placement, da.Array, da.Array | None, ResidentBlocks | None] | None:
    """Place a fit's data on the cluster's workers so that a lost worker costs a retry.

    Parameters
    ----------
    place : callable
        Returns ``(X, sample_weight)`` as dask arrays placed on the workers (persisted or
        scattered); called again each time the data must be placed again. It must return
        the same row blocks every time.
    hold : callable or None
        ``hold(X, sample_weight, offsets)`` holds the placed blocks in actors
        (:func:`hold_blocks`) and returns their :class:`ResidentBlocks`, or None; called after
        every placement. None: passes are task graphs.

    Returns
    -------
    tuple or None
        ``(placement, X, sample_weight, resident)``: the :class:`Placement` and the data as
        first placed. ``None`` without a synchronous distributed client, or inside a task on
        a worker (the caller then computes as before, with no recovery).

    Raises
    ------
    ClusterError
        The data could not be placed: no worker, or workers lost on every try.
    """
    client = current_client()
    if client is None or client.asynchronous or _inside_worker():
        return None
    placement = Placement(client, place, hold=hold)
    placed = placement.recover(None)
    if placed is None:  # pragma: no cover - recover(None) always places
        raise ClusterError("the data could not be placed on the workers")
    return (placement, *placed)
