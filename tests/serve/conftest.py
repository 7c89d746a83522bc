"""A registry with one model of each kind, and a real ``kmflow serve`` process on 127.0.0.1.

The models are built here from generated data (no flow, no cluster): a "vectors" model of
four blobs, an RGB palette of eight colors, and a "segments" model whose preprocessing is
fitted on a generated customer table (synchronous dask).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import httpx
import numpy as np
import pandas as pd
import pytest

from kmflow.storage.registry import ModelRegistry

API_KEY = "test-key-0123456789abcdef"
OTHER_KEY = "rotated-key-0123456789abcdef"
PALETTE_RGB = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [250, 250, 250],
        [20, 20, 20],
    ],
    dtype=np.float64,
)
BLOB_CENTERS = np.array(
    [[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0], [0.0, 0.0, 10.0, 10.0]]
)


def customers(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Raw customer records: two numbers, a yes/no flag, a plan, an id."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 3, n)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "spend": np.round(np.array([20.0, 80.0, 150.0])[seg] + rng.normal(0, 5, n), 2),
            "visits": np.array([2, 10, 25])[seg] + rng.integers(0, 3, n),
            "roaming": np.where(seg == 2, "yes", "no"),
            "plan": np.array(["basic", "plus", "gold"])[seg],
        }
    )


def _register(reg: ModelRegistry, name: str, centers: np.ndarray, **kw: object) -> int:
    record = reg.register(
        name,
        centers,
        init="k-means++",
        seed=0,
        n_iter=3,
        converged=True,
        inertia=1.0,
        fingerprint="generated",
        **kw,  # type: ignore[arg-type]
    )
    return record.version


def build_registry(root: Path) -> ModelRegistry:
    """blobs v1 (champion) and v2; palette v1 (champion); customers v1 (champion)."""
    from sklearn.cluster import KMeans

    from kmflow.jobs.segments.prepare import fit_preprocessing, plan_columns
    from kmflow.storage.tables import read_table

    reg = ModelRegistry(str(root))
    _register(reg, "blobs", BLOB_CENTERS, metrics={"silhouette": 0.9, "note": float("nan")})
    _register(reg, "blobs", BLOB_CENTERS + 0.5, parent=1)
    reg.promote("blobs", 1)
    _register(
        reg,
        "palette",
        PALETTE_RGB,
        kind="palette",
        preprocessing={"type": "color", "color_space": "rgb"},
    )
    reg.promote("palette", 1)
    table_path = root.parent / "customers.csv"
    customers().to_csv(table_path, index=False)
    with dask.config.set(scheduler="synchronous"):
        table = read_table(str(table_path), blocksize=8192)
        prep = fit_preprocessing(table, plan_columns(table, id="customer_id"))
        X = np.asarray(prep.transform(customers()), dtype=np.float64)
    km = KMeans(3, n_init=4, random_state=0).fit(X)
    _register(
        reg,
        "customers",
        km.cluster_centers_,
        kind="segments",
        preprocessing=prep.to_json(),
        arrays=prep.arrays(),
    )
    reg.promote("customers", 1)
    return reg


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A running ``kmflow serve`` process."""

    url: str
    registry: ModelRegistry
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, key: str | None = API_KEY, **kw: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


def start_service(
    tmp: Path,
    registry: ModelRegistry,
    *args: str,
    env: dict[str, str] | None = None,
    ready: str = "/readyz",
) -> Service:
    """Start ``kmflow serve`` on a free port and wait until `ready` answers 200."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    environment = {
        **os.environ,
        "KMFLOW_REGISTRY__URL": registry.url,
        "KMFLOW_SERVE__API_KEYS": json.dumps([API_KEY, OTHER_KEY]),
        "KMFLOW_SERVE__REFRESH_SECONDS": "0.5",
        "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(tmp / "numba")),
        **(env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kmflow.cli", "serve", "--port", str(port), *args],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", registry, process, log)
    deadline = time.monotonic() + 120  # a loaded CI machine imports slowly
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"kmflow serve exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{service.url}{ready}", timeout=5).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_service(service)
    raise AssertionError(f"kmflow serve not ready after 120 s:\n{log.read_text()}")


def stop_service(service: Service) -> None:
    service.process.terminate()
    try:
        service.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait(timeout=10)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return build_registry(tmp_path_factory.mktemp("serve") / "registry")


@pytest.fixture(scope="module")
def service(registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the module (max body 1 MiB, 2 MP images)."""
    running = start_service(
        tmp_path_factory.mktemp("serve-logs"),
        registry,
        env={
            "KMFLOW_SERVE__MAX_BODY_BYTES": str(2**20),
            "KMFLOW_STORAGE__MAX_IMAGE_PIXELS": "2000000",
        },
    )
    yield running
    stop_service(running)
    assert API_KEY not in running.log.read_text()
