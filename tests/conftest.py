"""Shared fixtures: a real multi-process Dask cluster, and a clean ``KMFLOW_*`` environment.

``dask_cluster`` is one 2-worker process :class:`~distributed.LocalCluster` for the whole
session (starting one costs about a second). ``dask_client`` opens a fresh default client on
it for one test and closes it afterwards, so the cluster is shared but a default client never
outlives the test that asked for it: tests that did not ask keep computing with Dask's local
schedulers. Tests using either fixture are marked ``integration`` automatically.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.datasets import load_sample_image, make_blobs

# Shape of the session cluster (tests assert on it: 2 workers x 2 GiB = 4 GiB in all).
DASK_TEST_N_WORKERS = 2
DASK_TEST_THREADS_PER_WORKER = 1
DASK_TEST_MEMORY_LIMIT = "2GiB"

_CLUSTER_FIXTURES = frozenset({"dask_cluster", "dask_client"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the multi-process cluster as ``integration``."""
    for item in items:
        if _CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _clean_kmflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the developer's own ``KMFLOW_*`` variables from every test."""
    for name in list(os.environ):
        if name.upper().startswith("KMFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[LocalCluster]:
    """A 2-worker, 1-thread-per-worker, multi-process LocalCluster (2 GiB per worker)."""
    with LocalCluster(
        n_workers=DASK_TEST_N_WORKERS,
        threads_per_worker=DASK_TEST_THREADS_PER_WORKER,
        memory_limit=DASK_TEST_MEMORY_LIMIT,
        processes=True,
        dashboard_address=None,
    ) as cluster:
        yield cluster


@pytest.fixture
def dask_client(dask_cluster: LocalCluster) -> Iterator[Client]:
    """A default client on the session cluster, closed (cluster kept) after the test."""
    with Client(dask_cluster, set_as_default=True) as client:
        client.wait_for_workers(DASK_TEST_N_WORKERS, timeout=60)
        yield client


# --------------------------------------------------------------------------- data (fixed seeds)


@pytest.fixture(scope="session")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """8 overlapping blobs in 4-D: 4,000 rows, float64."""
    X, y = make_blobs(n_samples=4000, centers=8, n_features=4, cluster_std=2.0, random_state=7)
    return X, y


@pytest.fixture(scope="session")
def separated() -> tuple[np.ndarray, np.ndarray]:
    """5 well-separated blobs in 3-D (every sensible k-means recovers them exactly)."""
    centers = np.array(
        [[0, 0, 0], [20, 0, 0], [0, 20, 0], [0, 0, 20], [20, 20, 20]], dtype=np.float64
    )
    X, y = make_blobs(n_samples=2000, centers=centers, cluster_std=0.5, random_state=3)
    return X, y


@pytest.fixture(scope="session")
def pixels() -> np.ndarray:
    """60,000 RGB uint8 pixels sampled (fixed seed) from scikit-learn's bundled china.jpg."""
    img = load_sample_image("china.jpg").reshape(-1, 3)
    rng = np.random.default_rng(0)
    return img[rng.choice(len(img), 60_000, replace=False)]
