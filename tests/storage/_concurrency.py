"""Real concurrent writers for the storage tests: spawned processes that start jobs together.

:class:`Workers` starts ``n`` processes (the ``spawn`` context: nothing is inherited but what
is pickled) once; :meth:`Workers.round` hands one job to each, and every worker waits at a
shared barrier before running its job, so the jobs of a round really overlap. The job
functions below are module-level so that the workers can import them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

#: Seconds a round may take before the test fails (a loaded 2-core machine is slow).
ROUND_TIMEOUT = 180.0

Job = Callable[[Any, Any], Any]


def _worker_main(index: int, target: Job, inbox: Any, outbox: Any, barrier: Any) -> None:
    while True:
        job = inbox.get()
        if job is None:
            return
        try:
            barrier.wait(timeout=ROUND_TIMEOUT)
            result: Any = ("ok", target(job, barrier))
        except BaseException as exc:
            result = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        outbox.put((index, result))


class Workers:
    """``n`` spawned processes running ``target(job, barrier)`` once per round, together."""

    def __init__(self, n: int, target: Job) -> None:
        ctx = mp.get_context("spawn")
        self.n = n
        self._barrier = ctx.Barrier(n)
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(n)]
        self._procs = [
            ctx.Process(
                target=_worker_main,
                args=(i, target, self._inboxes[i], self._outbox, self._barrier),
                daemon=True,
            )
            for i in range(n)
        ]
        for proc in self._procs:
            proc.start()

    def round(self, jobs: list[Any]) -> list[tuple[str, Any]]:
        """Run ``jobs[i]`` on worker ``i``; the ``(status, result)`` of each, in order."""
        assert len(jobs) == self.n
        for inbox, job in zip(self._inboxes, jobs, strict=True):
            inbox.put(job)
        results: dict[int, tuple[str, Any]] = {}
        while len(results) < self.n:
            try:
                index, result = self._outbox.get(timeout=ROUND_TIMEOUT)
            except queue.Empty as exc:
                raise AssertionError(f"workers did not finish a round: {results}") from exc
            results[index] = result
        return [results[i] for i in range(self.n)]

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- jobs


def ingest_job(job: dict[str, Any], barrier: Any) -> list[tuple[str, str, int]]:
    """Ingest ``job["sources"]`` (url, relpath) into the store, one image per batch.

    The lease wait comes from the environment, as for any kmflow process.
    """
    os.environ["KMFLOW_STORAGE__LEASE_TIMEOUT"] = "150"
    import dask

    from kmflow.storage.images import ImageSource
    from kmflow.storage.pixelstore import PixelStore

    store = PixelStore(job["url"], storage_options=job["options"], chunk_pixels=job["chunk_pixels"])
    with dask.config.set(scheduler="sync"):
        report = store.ingest(
            [ImageSource(u, r) for u, r in job["sources"]],
            max_pixels=1_000_000,
            batch_pixels=1,  # one image per batch: many commits to interleave
        )
    return [(r.source, r.sha256, r.offset) for r in report.added]


def palettes_job(job: dict[str, Any], barrier: Any) -> int:
    """Store ``job["palettes"]`` (key -> centers) in several separate appends."""
    os.environ["KMFLOW_STORAGE__LEASE_TIMEOUT"] = "150"
    from kmflow.storage.pixelstore import PixelStore

    store = PixelStore(job["url"], storage_options=job["options"])
    items = list(job["palettes"].items())
    for i in range(0, len(items), 2):
        store.write_image_palettes(dict(items[i : i + 2]))
    return len(items)


def register_job(job: dict[str, Any], barrier: Any) -> list[tuple[int, bytes, str | None]]:
    """Register ``job["centers"]`` one by one; (version, centers bytes, run_key) of each."""
    from kmflow.storage.registry import ModelRegistry

    registry = ModelRegistry(job["url"], storage_options=job["options"])
    out = []
    for i, centers in enumerate(job["centers"]):
        run_key = f"{job['who']}-{i}" if i % 3 == 0 else None
        record = registry.register(
            job["name"],
            np.asarray(centers),
            init="k-means||",
            seed=i,
            n_iter=1,
            converged=True,
            inertia=1.0,
            fingerprint=job["who"],
            run_key=run_key,
        )
        out.append((record.version, np.asarray(centers).tobytes(), run_key))
    return out


def acquire_job(job: dict[str, Any], barrier: Any) -> tuple[str, str]:
    """Try once (timeout 0) to take the lease; the winner holds it until all have tried."""
    from kmflow.errors import StoreBusyError
    from kmflow.storage.lease import StoreLease

    lease = StoreLease(job["url"], storage_options=job["options"], ttl=60, timeout=0)
    try:
        record = lease.acquire()
    except StoreBusyError as exc:
        barrier.wait(timeout=ROUND_TIMEOUT)  # everyone has tried
        return ("busy", str(exc))
    barrier.wait(timeout=ROUND_TIMEOUT)
    lease.release()
    return ("won", record.token)
