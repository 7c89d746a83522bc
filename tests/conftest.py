"""Shared fixtures: a real multi-process Dask cluster, and a clean ``KMFLOW_*`` environment.

``dask_cluster`` is one 2-worker process :class:`~distributed.LocalCluster` for the whole
session (starting one costs about a second). ``dask_client`` opens a fresh default client on
it for one test and closes it afterwards, so the cluster is shared but a default client never
outlives the test that asked for it: tests that did not ask keep computing with Dask's local
schedulers. Tests using either fixture are marked ``integration`` automatically.

``s3_endpoint`` / ``s3_bucket`` run a real S3-compatible server (moto's standalone server) on
127.0.0.1 for ``s3://`` tests; ``blobs``, ``separated`` and ``pixels`` are seeded test data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

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


# --------------------------------------------------------------------------- S3 on loopback
# A real S3-compatible server (moto's standalone server) on 127.0.0.1 for s3:// tests:
# ``s3_endpoint`` (session) yields its URL; ``s3_bucket`` makes a fresh bucket for one test and
# returns ``(bucket_url, storage_options)`` (no region in client_kwargs: it comes from
# AWS_DEFAULT_REGION).

S3_TEST_KEY = "kmflow-test-key"
S3_TEST_SECRET = "kmflow-test-secret"  # a dummy: moto accepts any credentials


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL (``http://127.0.0.1:<port>``) of a moto S3 server running for the session.

    Sets ``AWS_DEFAULT_REGION=us-east-1`` and dummy ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` for the session (restored afterwards), so nothing reaches for
    real credentials.
    """
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ACCESS_KEY_ID", S3_TEST_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_SECRET)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        # werkzeug logs one line per request: noise in failure reports.
        werkzeug_log = logging.getLogger("werkzeug")
        old_level = werkzeug_log.level
        werkzeug_log.setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            # fsspec's cached S3FileSystem instances are deliberately kept until the
            # interpreter exits. Dropping them here (clear_instance_cache) lets a later
            # garbage collection run s3fs's close_session finalizer, which gives the client
            # 0.1 s to close; on a busy machine it times out, the aiohttp session is left
            # unclosed and its ResourceWarning fails the run under filterwarnings=error.
            server.stop()
            werkzeug_log.setLevel(old_level)


def s3_storage_options(endpoint: str) -> dict[str, Any]:
    """s3fs storage options for the loopback server at `endpoint`."""
    return {
        "key": S3_TEST_KEY,
        "secret": S3_TEST_SECRET,
        "client_kwargs": {"endpoint_url": endpoint},
    }


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A new empty bucket: ``("s3://kmflow-test-<hex>", storage_options)``; removed after."""
    import s3fs

    options = s3_storage_options(s3_endpoint)
    fs = s3fs.S3FileSystem(**options)
    bucket = f"kmflow-test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    yield f"s3://{bucket}", options
    with contextlib.suppress(OSError):
        fs.rm(bucket, recursive=True)
    fs.invalidate_cache()
    _close_async_s3_sessions()


def _close_async_s3_sessions() -> None:
    """Close the aiohttp sessions of the asynchronous S3 filesystems zarr opened.

    zarr reaches ``s3://`` through an *asynchronous* ``S3FileSystem``; s3fs registers no
    finalizer for those, so their sessions would be garbage-collected unclosed
    ("ResourceWarning: Unclosed client session"). Close them on zarr's own event loop, where
    they were opened, and drop them from s3fs's instance cache.
    """
    import s3fs
    from zarr.core.sync import sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        creator = getattr(fs, "_s3creator", None)
        if fs.asynchronous and creator is not None:
            sync(creator.__aexit__(None, None, None))
            fs._s3 = fs._s3creator = None
            with contextlib.suppress(KeyError, AttributeError):
                del s3fs.S3FileSystem._cache[fs._fs_token]


# --------------------------------------------------------------------------- Prefect
# One Prefect test harness (a temporary SQLite-backed API server) for the whole session: flow
# and task tests run against it. Its startup takes 20-25 s on 2 cores, hence the long timeout.


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Prefect's test harness for the session: flow runs, task runs and artifacts recorded."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        # Offline: no telemetry (its DNS lookup fails and logs an error).
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.setenv("DO_NOT_TRACK", "1")
        with prefect_test_harness(server_startup_timeout=120):
            yield


# --------------------------------------------------------------------------- synthetic images
# Pixels drawn from a fixed mixture of six colors with Gaussian noise: a "fresh sample of the
# training distribution" and a "drifted batch" are then exactly what a test says they are.

MIXTURE_COLORS = np.array(
    [[200, 40, 40], [40, 160, 60], [50, 70, 200], [230, 210, 80], [120, 120, 120], [20, 20, 30]],
    dtype=np.float64,
)
MIXTURE_WEIGHTS = np.array([0.25, 0.2, 0.2, 0.15, 0.12, 0.08])


def write_mixture_images(
    folder: Any, n: int, seed: int, *, shift: tuple[int, int, int] = (0, 0, 0), size: int = 96
) -> Any:
    """Write ``n`` PNGs of ``size``² pixels from the six-color mixture (plus ``shift``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        which = rng.choice(len(MIXTURE_COLORS), size=size * size, p=MIXTURE_WEIGHTS)
        px = MIXTURE_COLORS[which] + rng.normal(0, 12, size=(size * size, 3)) + np.array(shift)
        img = np.clip(np.rint(px), 0, 255).astype(np.uint8).reshape(size, size, 3)
        Image.fromarray(img).save(folder / f"img-{seed}-{i}.png")
    return folder


@pytest.fixture(scope="session")
def mixture_images() -> Any:
    """:func:`write_mixture_images`, for tests that make synthetic image batches."""
    return write_mixture_images
