"""connect(), memory_budget() and has_distributed_client() against real Dask clusters."""

from __future__ import annotations

import os
import socket
import time

import dask
import dask.array as da
import psutil
import pytest
from dask.system import CPU_COUNT
from distributed import Client, LocalCluster
from distributed.core import Status

import kmflow.cluster.resources
from kmflow.cluster import connect, has_distributed_client, memory_budget
from kmflow.cluster.local import WORKER_MALLOC_ENV, resolved_n_workers
from kmflow.config import ClusterSettings, Settings
from kmflow.errors import ClusterError

GiB = 2**30


def _free_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """Wait for processes to exit; return those still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [
            pid
            for pid in alive
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        time.sleep(0.1)
    return alive


@pytest.fixture
def fake_available_memory(monkeypatch: pytest.MonkeyPatch) -> int:
    """Make ``psutil.virtual_memory().available`` report a known number of bytes."""
    real = psutil.virtual_memory()
    available = 123_456_789
    monkeypatch.setattr(
        kmflow.cluster.resources.psutil,
        "virtual_memory",
        lambda: real._replace(available=available),
    )
    return available


@pytest.mark.integration
def test_local_mode_starts_worker_processes_and_closes_them() -> None:
    settings = ClusterSettings(
        n_workers=2, threads_per_worker=1, memory_limit="1GiB", dashboard_address=None
    )
    with connect(settings) as client:
        cluster = client.cluster
        assert isinstance(cluster, LocalCluster)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2
        assert [w["nthreads"] for w in workers.values()] == [1, 1]
        assert [w["memory_limit"] for w in workers.values()] == [GiB, GiB]
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2
        assert os.getpid() not in pids.values()
        # The client is Dask's default: a plain .compute() runs on those processes.
        assert has_distributed_client()
        assert memory_budget() == 2 * GiB
        assert da.ones((1000, 3), chunks=(250, 3)).sum().compute() == 3000
        assert client.submit(os.getpid, pure=False).result() in pids.values()
        # The workers keep freed memory for their next arrays (glibc malloc settings).
        environs = client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC_ENV})
        assert list(environs.values()) == [WORKER_MALLOC_ENV, WORKER_MALLOC_ENV]
    assert client.status == "closed"
    assert cluster.status == Status.closed
    assert _wait_until_gone(list(pids.values())) == []
    assert not has_distributed_client()


def test_local_mode_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_CLUSTER__N_WORKERS", "1")
    monkeypatch.setenv("KMFLOW_CLUSTER__THREADS_PER_WORKER", "2")
    monkeypatch.setenv("KMFLOW_CLUSTER__MEMORY_LIMIT", "512MiB")
    monkeypatch.setenv("KMFLOW_CLUSTER__PROCESSES", "false")
    with connect() as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert [(w["nthreads"], w["memory_limit"]) for w in workers.values()] == [(2, 2**29)]
        # processes=False: the worker is a thread of this process.
        assert client.run(os.getpid) == {address: os.getpid() for address in workers}
        cluster = client.cluster
    assert cluster.status == Status.closed


def test_connect_accepts_whole_settings() -> None:
    settings = Settings(cluster=ClusterSettings(n_workers=1, processes=False))
    with connect(settings) as client:
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1


def test_connect_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="ClusterSettings"):
        connect({"mode": "local"})  # type: ignore[arg-type]


def test_n_workers_defaults_to_cpu_cores() -> None:
    assert resolved_n_workers(ClusterSettings()) == CPU_COUNT
    assert resolved_n_workers(ClusterSettings(n_workers=3)) == 3


@pytest.mark.integration
def test_address_mode_connects_without_owning_the_cluster(dask_cluster: LocalCluster) -> None:
    settings = ClusterSettings(mode="address", address=dask_cluster.scheduler_address)
    with connect(settings) as client:
        assert client.cluster is None
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert set(workers) == set(dask_cluster.scheduler_info["workers"])
        assert client.submit(sum, [1, 2, 3]).result() == 6
    assert client.status == "closed"
    # The cluster belongs to whoever started it: still up, still computing.
    assert dask_cluster.status == Status.running
    with Client(dask_cluster, set_as_default=False) as other:
        assert other.submit(sum, [4, 5]).result() == 9


def test_unreachable_address_raises_cluster_error_quickly() -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    settings = ClusterSettings(mode="address", address=address, connect_timeout=1)
    start = time.monotonic()
    with pytest.raises(ClusterError, match=address) as caught:
        connect(settings)
    assert time.monotonic() - start < 10
    assert isinstance(caught.value, RuntimeError)
    assert isinstance(caught.value.__cause__, OSError)
    assert not has_distributed_client()


def test_malformed_address_raises_cluster_error() -> None:
    with pytest.raises(ClusterError, match="'nonsense'"):
        connect(ClusterSettings(mode="address", address="nonsense", connect_timeout=1))


def test_memory_budget_without_client_is_available_memory(fake_available_memory: int) -> None:
    assert not has_distributed_client()
    assert memory_budget() == fake_available_memory


def test_memory_budget_is_sum_of_worker_limits(dask_client: Client) -> None:
    assert has_distributed_client()
    assert memory_budget() == 2 * 2 * GiB  # conftest: 2 workers x 2 GiB


def test_memory_budget_inside_a_worker_task(dask_client: Client) -> None:
    # A task that runs k-means on the cluster sees the cluster, not its worker's machine.
    assert dask_client.submit(has_distributed_client, pure=False).result() is True
    assert dask_client.submit(memory_budget, pure=False).result() == 2 * 2 * GiB


def test_memory_budget_ignores_client_when_local_scheduler_configured(
    dask_client: Client, fake_available_memory: int
) -> None:
    with dask.config.set(scheduler="threads"):
        assert not has_distributed_client()
        assert memory_budget() == fake_available_memory
    assert memory_budget() == 2 * 2 * GiB


def test_memory_budget_counts_host_memory_for_unlimited_workers() -> None:
    with connect(ClusterSettings(n_workers=2, memory_limit="0", processes=False)) as client:
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
        assert len(limits) == 2
        assert not any(limits)  # no limit: 0 (or None)
        # Two unlimited workers on one host share its memory: counted once.
        assert memory_budget() == psutil.virtual_memory().total


def test_memory_budget_follows_the_default_client_after_close(dask_client: Client) -> None:
    with connect(ClusterSettings(n_workers=1, memory_limit="256MiB", processes=False)):
        assert memory_budget() == 2**28
    assert memory_budget() == 2 * 2 * GiB  # back to the fixture's client
