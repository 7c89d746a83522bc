"""A worker killed during a fit costs a retry, not the fit: the same centers, bit for bit.

Real multi-process clusters (one process per worker, each under a nanny); a worker process
is killed with SIGKILL from another thread while the fit runs, after an iteration (the
estimator's progress callback) or a k-means|| round (its log line) says the fit has started.
"Restarts": the nanny starts a new worker. "Gone for good": the nanny is told to close first,
so nothing comes back. The expected centers are those of an undisturbed fit on the same
cluster, compared exactly: every pass's per-block partials depend only on the rows of the
block and the reduction tree only on the number of blocks, and placing the data again moves
blocks between workers without changing the rows in any block.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from kmflow import ClusterError, KMeans
from kmflow.cluster import resources
from kmflow.kernels.lloyd import IterationInfo

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

N_WORKERS = 3
RECOVERED = "lost a worker"  # the warning each recovery logs


def _cluster(n_workers: int) -> LocalCluster:
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        memory_limit="1GiB",
        processes=True,
        dashboard_address=None,
    )


@pytest.fixture(scope="module")
def restarting_cluster() -> Iterator[LocalCluster]:
    """Three worker processes whose nannies start a new worker when one is killed."""
    with _cluster(N_WORKERS) as cluster:
        yield cluster


@pytest.fixture
def client(restarting_cluster: LocalCluster) -> Iterator[Client]:
    with Client(restarting_cluster, set_as_default=True) as c:
        c.wait_for_workers(N_WORKERS, timeout=120)  # killed workers of an earlier test are back
        yield c


@pytest.fixture
def histogram() -> tuple[np.ndarray, np.ndarray]:
    """A weighted histogram in memory: 1.2M rows (3 blocks of 2**19 rows or less), counts."""
    rng = np.random.default_rng(7)
    centers = rng.uniform(0, 255, size=(12, 3))
    X = centers[rng.integers(0, 12, size=1_200_000)] + rng.normal(0, 20, size=(1_200_000, 3))
    return X, rng.integers(1, 50, size=len(X)).astype(np.float64)


class Killer:
    """Kills worker processes from its own thread when the fit asks for it.

    ``request(address)`` hands the worker to the thread and returns at once (``wait=False``:
    the kill lands while the fit goes on) or once the process is dead (``wait=True``).
    """

    def __init__(self, cluster: LocalCluster, client: Client, *, restart: bool) -> None:
        self.pids: dict[str, int] = client.run(os.getpid)
        self.nannies = {n.worker_address: n for n in cluster.workers.values()}
        self.restart = restart
        self.killed: list[str] = []
        self._requests: queue.Queue[tuple[str, threading.Event] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._requests.get()) is not None:
            address, done = item
            if not self.restart:
                self.nannies[address].close_gracefully()  # the nanny will not start a new one
            os.kill(self.pids[address], signal.SIGKILL)
            self.killed.append(address)
            done.set()

    def request(self, address: str, *, wait: bool = False) -> None:
        done = threading.Event()
        self._requests.put((address, done))
        if wait and not done.wait(30):
            raise RuntimeError(f"the killer thread did not kill {address} in 30 s")

    def at_iterations(self, plan: dict[int, str], *, wait: bool = False) -> Any:
        """A fit callback killing ``plan[i]`` after iteration ``i``."""

        def callback(info: IterationInfo) -> None:
            if info.iteration in plan:
                self.request(plan[info.iteration], wait=wait)

        return callback

    def stop(self) -> list[str]:
        self._requests.put(None)
        self._thread.join(30)
        return self.killed


def _fit(X: Any, w: Any, callback: Any = None, **kw: Any) -> KMeans:
    params = {"random_state": 3, "max_iter": 10, "tol": 0.0, **kw}
    return KMeans(16, callback=callback, **params).fit(X, sample_weight=w)


def _assert_same_fit(got: KMeans, ref: KMeans) -> None:
    np.testing.assert_array_equal(got.cluster_centers_, ref.cluster_centers_)
    assert got.inertia_ == ref.inertia_
    assert got.n_iter_ == ref.n_iter_
    assert [i.inertia for i in got.history_] == [i.inertia for i in ref.history_]


def _recoveries(caplog: pytest.LogCaptureFixture) -> int:
    return sum(RECOVERED in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- worker restarts
def test_histogram_in_memory_survives_a_killed_worker(
    restarting_cluster, client, histogram, caplog
) -> None:
    # The shared-palette fit: an in-memory weighted histogram scattered to the workers, its
    # blocks held by one actor per worker. Each time a different worker is killed.
    X, w = histogram
    ref = _fit(X, w)
    assert ref.persisted_
    assert ref.n_iter_ == 10  # long enough that every kill lands inside the fit
    for rep in range(3):
        client.wait_for_workers(N_WORKERS, timeout=120)
        killer = Killer(restarting_cluster, client, restart=True)
        victim = sorted(killer.pids)[rep]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kmflow"):
            got = _fit(X, w, killer.at_iterations({1 + rep: victim}))
        assert killer.stop() == [victim]
        _assert_same_fit(got, ref)
        np.testing.assert_array_equal(got.labels_, ref.labels_)
        assert _recoveries(caplog) >= 1
        assert victim not in client.scheduler_info(n_workers=-1)["workers"]


def test_dask_array_survives_a_killed_worker(restarting_cluster, client, caplog) -> None:
    rng = da.random.default_rng(11)
    X = rng.normal(0, 1, size=(1_200_000, 3), chunks=(200_000, 3))
    w = rng.integers(1, 5, size=1_200_000, chunks=200_000).astype(np.float64)
    ref = _fit(X, w)
    assert ref.persisted_
    for rep in range(2):
        client.wait_for_workers(N_WORKERS, timeout=120)
        killer = Killer(restarting_cluster, client, restart=True)
        victim = sorted(killer.pids)[rep]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kmflow"):
            got = _fit(X, w, killer.at_iterations({2: victim}))
        assert killer.stop() == [victim]
        _assert_same_fit(got, ref)
        assert _recoveries(caplog) >= 1


def test_a_worker_killed_during_kmeans_parallel_restarts_the_initialisation(
    restarting_cluster, client, histogram, caplog
) -> None:
    # The per-row k-means|| state lives next to the scattered blocks: losing it starts the
    # initialisation over on the new placement, with the same random numbers.
    X, w = histogram
    ref = _fit(X, w)
    killer = Killer(restarting_cluster, client, restart=True)
    victim = sorted(killer.pids)[0]

    class KillAfterRound2(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("k-means|| round 2:") and not killer.killed:
                killer.request(victim, wait=True)

    hook = KillAfterRound2()
    init_logger = logging.getLogger("kmflow.kernels.init")
    init_logger.addHandler(hook)
    try:
        with caplog.at_level(logging.INFO, logger="kmflow"):
            got = _fit(X, w)
    finally:
        init_logger.removeHandler(hook)
    assert killer.stop() == [victim]
    _assert_same_fit(got, ref)
    assert any("k-means|| starts over" in r.getMessage() for r in caplog.records)


def test_streamed_data_survives_a_killed_worker(
    restarting_cluster, client, caplog, monkeypatch
) -> None:
    # Data too large to persist is read from its source graph every pass: the scheduler
    # recomputes what the dead worker had; the pass completes.
    monkeypatch.setenv("KMFLOW_CLUSTER__PERSIST_FRACTION", "1e-9")
    X = da.random.default_rng(5).normal(0, 1, size=(600_000, 3), chunks=(100_000, 3))
    ref = _fit(X, None)
    assert not ref.persisted_
    killer = Killer(restarting_cluster, client, restart=True)
    got = _fit(X, None, killer.at_iterations({1: sorted(killer.pids)[1]}))
    assert len(killer.stop()) == 1
    _assert_same_fit(got, ref)


def test_retries_are_bounded(restarting_cluster, client, histogram, monkeypatch) -> None:
    monkeypatch.setattr(resources, "LOST_WORKER_RETRIES", 0)
    X, w = histogram
    killer = Killer(restarting_cluster, client, restart=True)
    with pytest.raises(ClusterError, match=r"lost Dask workers 1 times in a row .* gave up"):
        _fit(X, w, killer.at_iterations({1: sorted(killer.pids)[0]}, wait=True))
    assert len(killer.stop()) == 1


# --------------------------------------------------------------------------- workers gone
def test_workers_gone_for_good_leave_the_fit_to_the_others_until_none_is_left(
    histogram, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(resources, "WORKER_WAIT_S", 2.0)
    X, w = histogram
    with _cluster(N_WORKERS) as cluster, Client(cluster, set_as_default=True) as client:
        client.wait_for_workers(N_WORKERS, timeout=120)
        ref = _fit(X, w)
        killer = Killer(cluster, client, restart=False)
        first, second, last = sorted(killer.pids)
        with caplog.at_level(logging.WARNING, logger="kmflow"):
            got = _fit(X, w, killer.at_iterations({1: first, 4: second}))
        assert killer.stop() == [first, second]
        _assert_same_fit(got, ref)
        assert _recoveries(caplog) >= 2
        # Nothing came back: the fit finished on the one worker left.
        assert list(client.scheduler_info(n_workers=-1)["workers"]) == [last]
        # And when the last one goes too: a ClusterError that says so, not a cancelled future.
        killer = Killer(cluster, client, restart=False)
        t0 = time.perf_counter()
        with pytest.raises(ClusterError, match="no Dask worker is left") as info:
            _fit(X, w, killer.at_iterations({1: last}, wait=True))
        assert time.perf_counter() - t0 < 60
        assert killer.stop() == [last]
    assert "waited 2 s for one to join the scheduler after losing workers" in str(info.value)


def test_a_pass_with_no_worker_left_is_a_cluster_error(monkeypatch) -> None:
    # Streamed data: no holder to lose, the pass just waits on a scheduler with no worker.
    monkeypatch.setattr(resources, "WORKER_WAIT_S", 2.0)
    monkeypatch.setenv("KMFLOW_CLUSTER__PERSIST_FRACTION", "1e-9")
    X = da.random.default_rng(5).normal(0, 1, size=(600_000, 3), chunks=(100_000, 3))
    with _cluster(1) as cluster, Client(cluster, set_as_default=True) as client:
        client.wait_for_workers(1, timeout=120)
        killer = Killer(cluster, client, restart=False)
        t0 = time.perf_counter()
        with pytest.raises(ClusterError, match="a pass waited 2 s with no worker to run on"):
            _fit(X, None, killer.at_iterations({1: next(iter(killer.pids))}, wait=True))
        assert time.perf_counter() - t0 < 60
        assert len(killer.stop()) == 1
