"""An S3 endpoint that goes away and comes back: bounded retries, then one clear error.

Each test runs its own moto server on a fixed loopback port, so that it can be stopped and
started again on the same URL without disturbing the session's server (moto keeps its buckets
in the process, so they survive the restart). Retries come from the settings
(``KMFLOW_STORAGE__S3_RETRY_SECONDS``) through :func:`kmflow.storage.fs.storage_options_for`.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kmflow.config import StorageSettings
from kmflow.storage.fs import read_bytes, storage_options_for, write_bytes_atomic
from kmflow.storage.images import discover_images
from kmflow.storage.pixelstore import IngestProgress, PixelStore

pytestmark = pytest.mark.integration

KEY, SECRET = "kmflow-test-key", "kmflow-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Endpoint:
    """A moto server on a fixed port that can be stopped and started again."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        deadline = time.monotonic() + 30
        while True:  # the port may linger for a moment after a stop
            try:
                self._server = ThreadedMotoServer(
                    ip_address="127.0.0.1", port=self.port, verbose=False
                )
                self._server.start()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        self._server.stop()

    def restart_after(self, seconds: float) -> threading.Thread:
        def later() -> None:
            time.sleep(seconds)
            self.start()

        thread = threading.Thread(target=later, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[Endpoint]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = Endpoint()
    yield server
    server.stop()


def _settings(endpoint: Endpoint, retry_seconds: float) -> StorageSettings:
    return StorageSettings.model_validate(
        {
            "s3_endpoint_url": endpoint.url,
            "s3_key": KEY,
            "s3_secret": SECRET,
            "s3_retry_seconds": retry_seconds,
            "s3_connect_timeout": 2,
        }
    )


def _bucket(options: dict[str, Any]) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    name = f"outage-{os.urandom(4).hex()}"
    fs.mkdir(name)
    return f"s3://{name}"


def test_a_read_waits_out_an_outage(endpoint: Endpoint) -> None:
    options = storage_options_for("s3://x", _settings(endpoint, retry_seconds=60))
    url = f"{_bucket(options)}/a.bin"
    write_bytes_atomic(url, b"kept", options)
    endpoint.stop()
    restarted = endpoint.restart_after(8)
    start = time.monotonic()
    assert read_bytes(url, options) == b"kept"
    assert time.monotonic() - start >= 7  # it really waited for the server
    restarted.join()


def test_without_retries_an_outage_is_one_storage_error(endpoint: Endpoint) -> None:
    from kmflow.errors import StorageError

    options = storage_options_for("s3://x", _settings(endpoint, retry_seconds=0))
    url = f"{_bucket(options)}/a.bin"
    write_bytes_atomic(url, b"kept", options)
    endpoint.stop()
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot read s3://.*a\.bin.*connect"):
        read_bytes(url, options)
    assert time.monotonic() - start < 10
    endpoint.start()
    assert read_bytes(url, options) == b"kept"  # nothing was lost


def _images(folder: Path, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = {}
    for i in range(n):
        image = rng.integers(0, 256, size=(40 + i, 50, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
        pixels[f"img{i:02d}.png"] = image
    return pixels


def test_ingest_survives_an_outage_between_batches(endpoint: Endpoint, tmp_path: Path) -> None:
    """The endpoint stops after the first committed batch and is back 10 s later."""
    options = storage_options_for("s3://x", _settings(endpoint, retry_seconds=60))
    store_url = f"{_bucket(options)}/store.zarr"
    pixels = _images(tmp_path / "photos", 6)
    sources = discover_images(str(tmp_path / "photos"))
    restarted: list[threading.Thread] = []

    def progress(p: IngestProgress) -> None:
        if not restarted:
            endpoint.stop()
            restarted.append(endpoint.restart_after(10))

    store = PixelStore(store_url, storage_options=options)
    report = store.ingest(
        sources, max_pixels=10**6, storage_options={}, batch_pixels=4_000, progress=progress
    )
    assert restarted, "the outage never happened: the ingest had a single batch"
    assert len(report.added) == 6
    reopened = PixelStore(store_url, storage_options=options)
    rows = reopened.pixels().compute()
    records = reopened.images()
    assert sorted(r.relpath for r in records) == sorted(pixels)
    for record in records:
        got = rows[record.offset : record.offset + record.n_pixels]
        np.testing.assert_array_equal(
            got.reshape(record.height, record.width, 3), pixels[record.relpath]
        )


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KMFLOW_")},
        "COLUMNS": "120",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "kmflow.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def _finish(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"kmflow did not finish in {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")


def test_cli_waits_out_an_endpoint_that_starts_late(endpoint: Endpoint, tmp_path: Path) -> None:
    """`kmflow quantize` into S3 while the endpoint is down for its first 12 s."""
    options = storage_options_for("s3://x", _settings(endpoint, retry_seconds=60))
    bucket = _bucket(options)
    _images(tmp_path / "photos", 3)
    env = {
        "KMFLOW_STORAGE__S3_ENDPOINT_URL": endpoint.url,
        "KMFLOW_STORAGE__S3_KEY": KEY,
        "KMFLOW_STORAGE__S3_SECRET": SECRET,
        "KMFLOW_STORAGE__S3_CONNECT_TIMEOUT": "2",
    }
    endpoint.stop()
    process = _cli(
        [
            "quantize",
            str(tmp_path / "photos"),
            "--k",
            "4",
            "--workers",
            "1",
            "--store",
            f"{bucket}/store.zarr",
            "--out",
            f"{bucket}/out",
        ],
        env,
    )
    endpoint.restart_after(12).join()
    _out, err = _finish(process, timeout=300)
    assert process.returncode == 0, err
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    assert sorted(fs.ls(f"{bucket}/out")) == [f"{bucket[5:]}/out/img{i:02d}.png" for i in range(3)]


def test_cli_unreachable_endpoint_is_one_line_exit_2(endpoint: Endpoint, tmp_path: Path) -> None:
    _images(tmp_path / "photos", 1)
    endpoint.stop()
    env = {
        "KMFLOW_STORAGE__S3_ENDPOINT_URL": endpoint.url,
        "KMFLOW_STORAGE__S3_KEY": KEY,
        "KMFLOW_STORAGE__S3_SECRET": SECRET,
        "KMFLOW_STORAGE__S3_RETRY_SECONDS": "2",
        "KMFLOW_STORAGE__S3_CONNECT_TIMEOUT": "1",
    }
    start = time.monotonic()
    process = _cli(
        ["quantize", str(tmp_path / "photos"), "--store", "s3://nobucket/store.zarr"],
        env,
    )
    _out, err = _finish(process, timeout=120)
    elapsed = time.monotonic() - start
    endpoint.start()
    assert process.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "s3://nobucket/store.zarr" in lines[0]
    assert "connect" in lines[0].lower()
    assert elapsed < 60
