"""A deployment across machines, simulated on one: separate scheduler and worker processes.

``dask scheduler`` and two ``dask worker`` processes run as their own processes, each in a
working directory of its own (so nothing relative to a working directory is shared), and the
loopback S3 server is the only storage they share with the driver: sources, pixel store,
registry and outputs all live on ``s3://``. ``kmflow pipeline --scheduler ADDRESS`` must work
unchanged, as it would with workers on other machines.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASK = str(Path(sys.executable).with_name("dask"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _process(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[Any]:
    cwd.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def remote_cluster(tmp_path: Path, s3_endpoint: str) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A scheduler and two workers as separate processes; yields (address, env, log dir)."""
    from distributed import Client

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KMFLOW_", "PREFECT_"))},
        "AWS_DEFAULT_REGION": "us-east-1",
        "KMFLOW_STORAGE__S3_ENDPOINT_URL": s3_endpoint,
        "KMFLOW_STORAGE__S3_KEY": "kmflow-test-key",
        "KMFLOW_STORAGE__S3_SECRET": "kmflow-test-secret",
    }
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    scheduler_args = [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            _process(
                [*scheduler_args, "--dashboard-address", ":0"],
                tmp_path / "scheduler",
                env,
                logs / "scheduler.log",
            )
        )
        for i in range(2):
            stack.enter_context(
                _process(
                    [
                        DASK,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--memory-limit",
                        "2GiB",
                        "--local-directory",
                        str(tmp_path / f"worker{i}" / "scratch"),
                        "--no-dashboard",
                    ],
                    tmp_path / f"worker{i}",
                    env,
                    logs / f"worker{i}.log",
                )
            )
        # Wait for the scheduler's port with a plain socket: a Client that fails to connect
        # leaves an unclosed transport behind, which a later test's garbage collection
        # reports as a ResourceWarning.
        deadline = time.monotonic() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the scheduler did not come up:\n" + _tails(logs))
                time.sleep(0.5)
        with Client(address, timeout=60) as client:
            try:
                client.wait_for_workers(2, timeout=180)
            except TimeoutError:
                pytest.fail("the workers did not come up:\n" + _tails(logs))
        yield address, env, logs


def _tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*.log")))


def _put_photos(fs: Any, prefix: str) -> dict[str, tuple[int, int]]:
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    photos = {
        "china.png": china[100:220, 150:310],
        "more/flower.png": flower[150:270, 200:360],
        "sky.jpg": china[:90, :120],
    }
    for relpath, pixels in photos.items():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG" if relpath.endswith("png") else "JPEG")
        fs.pipe_file(f"{prefix}/{relpath}", buffer.getvalue())
    return {relpath: pixels.shape[:2] for relpath, pixels in photos.items()}


def test_pipeline_on_a_remote_cluster_with_s3_only(
    remote_cluster: tuple[str, dict[str, str], Path],
    s3_bucket: tuple[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    import s3fs

    address, env, logs = remote_cluster
    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    photos = _put_photos(fs, f"{bucket[5:]}/incoming")
    driver = tmp_path / "driver"
    driver.mkdir()
    report = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kmflow.cli",
            "pipeline",
            f"{bucket}/incoming/",
            "--k",
            "6",
            "--model",
            "remote",
            "--store",
            f"{bucket}/store.zarr",
            "--out",
            f"{bucket}/out",
            "--scheduler",
            address,
            "--report",
            str(report),
        ],
        cwd=driver,
        env={**env, "KMFLOW_REGISTRY__URL": f"{bucket}/models", "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{_tails(logs)}"
    fs.invalidate_cache()
    # Everything it wrote is on S3; nothing landed in any process's working directory.
    for relpath, (height, width) in photos.items():
        out = f"{bucket[5:]}/out/{relpath.rsplit('.', 1)[0]}.png"
        with fs.open(out, "rb") as f:
            assert np.asarray(Image.open(f)).shape[:2] == (height, width)
    assert fs.exists(f"{bucket[5:]}/models/remote/champion.json")
    champion = json.loads(fs.cat_file(f"{bucket[5:]}/models/remote/champion.json"))
    assert champion["version"] == 1
    assert fs.exists(f"{bucket[5:]}/store.zarr/zarr.json")
    for folder in ("scheduler", "worker0", "worker1"):
        left = [
            p.relative_to(tmp_path / folder)
            for p in (tmp_path / folder).rglob("*")
            if "scratch" not in p.parts and p.is_file()
        ]
        assert left == [], f"{folder} wrote {left}"
    assert not [p for p in driver.rglob("*") if p.is_file()], "the driver wrote locally"
    result = json.loads(report.read_text())
    assert result["train"]["version"] == 1
    assert result["ingest"]["added"] == len(photos)


def test_a_local_path_the_workers_cannot_see_fails_before_any_work(
    remote_cluster: tuple[str, dict[str, str], Path],
    s3_bucket: tuple[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    """``/proc/self/cwd/photos`` exists for the driver only: each worker has its own cwd."""
    import s3fs

    address, env, _ = remote_cluster
    bucket, options = s3_bucket
    driver = tmp_path / "driver"
    (driver / "photos").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(driver / "photos" / "a.png")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kmflow.cli",
            "pipeline",
            "/proc/self/cwd/photos",
            "--k",
            "2",
            "--store",
            f"{bucket}/store.zarr",
            "--out",
            f"{bucket}/out",
            "--scheduler",
            address,
        ],
        cwd=driver,
        env={**env, "KMFLOW_REGISTRY__URL": f"{bucket}/models", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "/proc/self/cwd/photos" in done.stderr
    assert "not shared with the Dask workers" in done.stderr
    assert "does not exist" in done.stderr
    fs = s3fs.S3FileSystem(**options)
    fs.invalidate_cache()
    assert fs.ls(bucket[5:]) == []  # nothing was written: no store, no outputs, no model
