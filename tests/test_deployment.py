"""The deployments in prefect.yaml, end to end against a real Prefect server on loopback.

A Prefect server, a process worker and the flow runs it starts all run as subprocesses on
127.0.0.1, with a temporary ``PREFECT_HOME`` and ``TMPDIR`` each: nothing touches the
developer's own Prefect profile or database. The test creates the ``kmflow-process`` work pool,
deploys ``prefect.yaml`` from the repository root exactly as its header says, checks what the
server registered (deployments, the nightly cron schedule), then runs ``pipeline/kmflow-pipeline``
through the REST API on three small photos and checks the outcomes: the model registry, the
quantized PNGs, the artifacts and the ingest / train / apply subflow runs.

Every process is started in its own session and its whole tree (the worker's flow runs and
their Dask workers included) is terminated in a fixture finalizer, also when the test fails.
Their output goes to log files whose tails appear in failure messages.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from kmflow.storage.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "kmflow-process"
MODEL = "photos"
K = 6
SEED = 3

# Every deployment prefect.yaml declares, as (flow name, deployment name).
DEPLOYMENTS = {
    ("pipeline", "kmflow-pipeline"): "src/kmflow/flows/pipeline.py:pipeline_flow",
    ("ingest", "kmflow-ingest"): "src/kmflow/flows/ingest.py:ingest_flow",
    ("train", "kmflow-train"): "src/kmflow/flows/train.py:train_flow",
    ("evaluate", "kmflow-evaluate"): "src/kmflow/flows/evaluate.py:evaluate_flow",
    ("apply", "kmflow-apply"): "src/kmflow/flows/apply.py:apply_flow",
}

SERVER_START_TIMEOUT = 120.0  # about 20 s on a fresh database with 2 cores
CLI_TIMEOUT = 180.0
FLOW_RUN_TIMEOUT = 300.0
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{path} unreadable: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Service:
    """A long-running subprocess in its own session, its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], env: dict[str, str], log: Path) -> Service:
        with log.open("wb") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(
                args,
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, process, log)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 60) -> str:
        state = "running" if self.alive() else f"exited with {self.process.returncode}"
        return f"--- {self.name} ({state}), last lines of {self.log}:\n{_tail(self.log, lines)}"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the process group and every descendant, then SIGKILL to what is left."""
        try:
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        # The process worker starts each flow run in a session of its own (with the flow
        # run's Dask processes in it): outside the group, so signal every descendant too.
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)


def _base_env(home: Path, tmpdir: Path, api_url: str) -> dict[str, str]:
    """The environment of every Prefect process: offline, on loopback, in a sandbox."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("PREFECT_", "KMFLOW_")) and k != "DO_NOT_TRACK"
    }
    tmpdir.mkdir(parents=True, exist_ok=True)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        TMPDIR=str(tmpdir),
        PYTHONUNBUFFERED="1",
    )
    return env


def _prefect(args: list[str], env: dict[str, str], *, server: Service) -> str:
    """Run a ``prefect`` CLI command to completion; fail with its output if it fails."""
    try:
        done = subprocess.run(
            [PREFECT, *args],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"prefect {' '.join(args)} took over {CLI_TIMEOUT} s:\n{exc.output}\n{server.tail()}"
        )
    if done.returncode != 0:
        pytest.fail(
            f"prefect {' '.join(args)} exited with {done.returncode}:\n{done.stdout}\n"
            f"{done.stderr}\n{server.tail()}"
        )
    return done.stdout


# --------------------------------------------------------------------------- fixtures


@dataclass
class Sandbox:
    root: Path
    home: Path
    api_url: str

    def env(self, name: str) -> dict[str, str]:
        """Base environment with a TMPDIR of its own for the process called `name`."""
        return _base_env(self.home, self.root / "tmp" / name, self.api_url)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    root = tmp_path_factory.mktemp("deployment")
    home = root / "prefect-home"
    home.mkdir()
    return Sandbox(root, home, f"http://127.0.0.1:{_free_port()}/api")


@pytest.fixture(scope="module")
def server(sandbox: Sandbox) -> Iterator[Service]:
    """``prefect server start`` on 127.0.0.1, ready (``/api/health`` is true)."""
    port = httpx.URL(sandbox.api_url).port
    service = Service.start(
        "prefect server",
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        sandbox.env("server"),
        sandbox.root / "server.log",
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{sandbox.api_url}/health", timeout=5).json() is True:
                    break
            if not service.alive():
                pytest.fail(f"the Prefect server exited during startup\n{service.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the Prefect server was not healthy after {SERVER_START_TIMEOUT} s\n"
                    f"{service.tail()}"
                )
            time.sleep(0.5)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def api(sandbox: Sandbox, server: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.api_url + "/", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def work_pool(sandbox: Sandbox, server: Service) -> str:
    _prefect(["work-pool", "create", POOL, "--type", "process"], sandbox.env("cli"), server=server)
    return POOL


@pytest.fixture(scope="module")
def worker(sandbox: Sandbox, server: Service, work_pool: str) -> Iterator[Service]:
    """A process worker on the pool; its environment is what the flow runs see."""
    env = sandbox.env("worker")
    env.update(
        PREFECT_WORKER_QUERY_SECONDS="2",
        KMFLOW_REGISTRY__URL=str(sandbox.root / "models"),
        KMFLOW_CLUSTER__N_WORKERS="2",
        KMFLOW_CLUSTER__MEMORY_LIMIT="2GiB",
    )
    service = Service.start(
        "prefect worker",
        [PREFECT, "worker", "start", "--pool", work_pool],
        env,
        sandbox.root / "worker.log",
    )
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def deployed(sandbox: Sandbox, server: Service, work_pool: str) -> str:
    """``prefect --no-prompt deploy --all`` from the repository root; returns its output."""
    return _prefect(["--no-prompt", "deploy", "--all"], sandbox.env("cli"), server=server)


@pytest.fixture(scope="module")
def images(sandbox: Sandbox) -> dict[str, tuple[int, int]]:
    """Three small photos (one in a subfolder): relative path -> (height, width)."""
    folder = sandbox.root / "images"
    china = Image.fromarray(load_sample_image("china.jpg"))
    flower = Image.fromarray(load_sample_image("flower.jpg"))
    photos = {
        "china.png": china.resize((160, 120), Image.Resampling.LANCZOS),
        "more/flower.png": flower.resize((160, 120), Image.Resampling.LANCZOS),
        "more/roof.png": china.crop((0, 0, 320, 240)).resize((120, 90)),
    }
    for relpath, image in photos.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return {relpath: (image.height, image.width) for relpath, image in photos.items()}


# --------------------------------------------------------------------------- REST helpers


def _ok(response: httpx.Response) -> Any:
    assert response.is_success, (
        f"{response.request.method} {response.request.url} -> {response.status_code}: "
        f"{response.text[:2000]}"
    )
    return response.json()


def _flow_run_logs(api: httpx.Client, flow_run_ids: list[str], limit: int = 150) -> str:
    """The last `limit` log lines of these flow runs, oldest first."""
    with contextlib.suppress(httpx.HTTPError, AssertionError):
        logs = _ok(
            api.post(
                "logs/filter",
                json={
                    "logs": {"flow_run_id": {"any_": flow_run_ids}},
                    "sort": "TIMESTAMP_DESC",
                    "limit": limit,
                },
            )
        )
        return "\n".join(
            f"{entry['timestamp']} {entry['level']:>2} {entry['name']}: {entry['message']}"
            for entry in reversed(logs)
        )
    return "<logs unavailable>"


def _subflow_runs(api: httpx.Client, parent_id: str) -> list[dict[str, Any]]:
    return _ok(
        api.post(
            "flow_runs/filter",
            json={"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}},
        )
    )


def _wait_for_terminal_state(
    api: httpx.Client, flow_run_id: str, worker: Service, server: Service
) -> dict[str, Any]:
    deadline = time.monotonic() + FLOW_RUN_TIMEOUT
    while True:
        run = _ok(api.get(f"flow_runs/{flow_run_id}"))
        if run["state_type"] in TERMINAL_STATES:
            return run
        if time.monotonic() > deadline or not worker.alive():
            ids = [flow_run_id] + [r["id"] for r in _subflow_runs(api, flow_run_id)]
            why = "the worker exited" if not worker.alive() else f"{FLOW_RUN_TIMEOUT} s passed"
            pytest.fail(
                f"flow run {flow_run_id} still {run['state_type']} ({run['state_name']}) "
                f"when {why}\n--- flow run logs:\n{_flow_run_logs(api, ids)}\n"
                f"{worker.tail()}\n{server.tail(20)}"
            )
        time.sleep(1.0)


# --------------------------------------------------------------------------- the test


@pytest.mark.timeout(600)
def test_pipeline_deployment_runs_end_to_end(
    sandbox: Sandbox,
    server: Service,
    api: httpx.Client,
    worker: Service,
    deployed: str,
    images: dict[str, tuple[int, int]],
) -> None:
    # -- every deployment of prefect.yaml is registered, on the pool, run from the project
    by_name = {}
    for (flow, name), entrypoint in DEPLOYMENTS.items():
        response = api.get(f"deployments/name/{flow}/{name}")
        assert response.status_code == 200, f"{flow}/{name} not deployed:\n{deployed}"
        deployment = response.json()
        assert deployment["entrypoint"] == entrypoint
        assert deployment["work_pool_name"] == POOL
        assert deployment["job_variables"]["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "kmflow"
        assert deployment["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
        ]
        assert "params" in deployment["parameter_openapi_schema"]["properties"]
        by_name[flow] = deployment
    all_deployments = _ok(api.post("deployments/filter", json={}))
    assert len(all_deployments) == len(DEPLOYMENTS)
    assert by_name["pipeline"]["parameters"]["params"]["k"] == 16

    # -- the nightly train schedule: cron at 02:00 UTC, registered inactive
    schedules = _ok(api.get(f"deployments/{by_name['train']['id']}/schedules"))
    assert [(s["schedule"].get("cron"), s["schedule"].get("timezone")) for s in schedules] == [
        ("0 2 * * *", "UTC")
    ]
    assert schedules[0]["active"] is False
    for flow in ("pipeline", "ingest", "evaluate", "apply"):
        assert _ok(api.get(f"deployments/{by_name[flow]['id']}/schedules")) == []

    # -- run pipeline/kmflow-pipeline through the API; the worker picks it up
    root = sandbox.root
    out = root / "out"
    params = {
        "sources": [str(root / "images")],
        "store": str(root / "store.zarr"),
        "out": str(out),
        "model": MODEL,
        "k": K,
        "seed": SEED,
    }
    created = _ok(
        api.post(
            f"deployments/{by_name['pipeline']['id']}/create_flow_run",
            json={"parameters": {"params": params}},
        )
    )
    t0 = time.monotonic()
    run = _wait_for_terminal_state(api, created["id"], worker, server)
    seconds = time.monotonic() - t0
    subflows = _subflow_runs(api, run["id"])
    run_ids = [run["id"]] + [r["id"] for r in subflows]
    assert run["state_type"] == "COMPLETED", (
        f"pipeline run {run['state_name']}: {run['state'].get('message')}\n"
        f"--- flow run logs:\n{_flow_run_logs(api, run_ids)}\n{worker.tail()}"
    )
    print(f"pipeline flow run completed {seconds:.1f} s after it was created")

    # -- subflow runs ingest, train, apply, each COMPLETED
    flow_names = {_ok(api.get(f"flows/{r['flow_id']}"))["name"]: r for r in subflows}
    assert sorted(flow_names) == ["apply", "ingest", "train"]
    for name, subflow in flow_names.items():
        assert subflow["state_type"] == "COMPLETED", f"{name}: {subflow['state_name']}"

    # -- the registry the worker's KMFLOW_REGISTRY__URL points at
    registry = ModelRegistry(root / "models")
    assert registry.names() == [MODEL]
    assert [r.version for r in registry.versions(MODEL)] == [1]
    champion = registry.champion(MODEL)
    assert champion is not None
    assert champion.version == 1
    model = registry.load(MODEL, 1)
    assert model.record.n_clusters == K
    assert model.record.params["seed"] == SEED  # record.seed is the 63-bit key drawn from it
    assert model.record.color_space == "rgb"
    assert model.centers.shape == (K, 3)
    for metric in ("psnr", "inertia_per_pixel", "davies_bouldin"):
        value = model.record.metrics[metric]
        assert isinstance(value, float)
        assert math.isfinite(value), f"{metric}={value}"
    assert model.record.metrics["psnr"] > 15.0  # 6 colors on natural photos: about 20-25 dB

    # -- quantized PNGs in the same relative folders, painted with at most K palette colors
    swatch = np.asarray(Image.open(out / "palette.png").convert("RGB"))
    palette_colors = {tuple(c) for c in swatch.reshape(-1, 3).tolist()}
    assert len(palette_colors) <= K
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted([*images, "palette.png"])
    for relpath, (height, width) in images.items():
        with Image.open(out / relpath) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape == (height, width, 3)
        colors = {tuple(c) for c in np.unique(pixels.reshape(-1, 3), axis=0).tolist()}
        assert 1 < len(colors) <= K, f"{relpath}: {len(colors)} colors"
        assert colors <= palette_colors, f"{relpath} has colors outside the palette"

    # -- artifacts of the run and its subflows (latest version of each key)
    keys = {
        f"{MODEL}-train-metrics": "table",
        f"{MODEL}-train-report": "markdown",
        f"{MODEL}-pipeline-report": "markdown",
        # create_link_artifact stores a markdown link: type "markdown" in Prefect 3.
        f"{MODEL}-outputs": "markdown",
        f"{MODEL}-palette": "markdown",
        f"{MODEL}-training-progress": "progress",
    }
    artifacts = {
        a["key"]: a
        for a in _ok(
            api.post("artifacts/latest/filter", json={"artifacts": {"key": {"any_": list(keys)}}})
        )
    }
    assert {key: a["type"] for key, a in artifacts.items()} == keys
    for key, artifact in artifacts.items():
        assert artifact["flow_run_id"] in run_ids, f"{key} is from another flow run"
    table = artifacts[f"{MODEL}-train-metrics"]["data"]
    rows = json.loads(table) if isinstance(table, str) else table
    assert {"psnr", "inertia_per_pixel", "davies_bouldin"} <= {row["metric"] for row in rows}
    assert f"{MODEL} version 1" in artifacts[f"{MODEL}-train-report"]["data"]
    assert f"Pipeline: {MODEL} version 1" in artifacts[f"{MODEL}-pipeline-report"]["data"]
    assert artifacts[f"{MODEL}-outputs"]["data"] == f"[outputs]({out})"
    assert artifacts[f"{MODEL}-palette"]["data"] == f"[palette]({out / 'palette.png'})"
    assert artifacts[f"{MODEL}-training-progress"]["data"] == pytest.approx(100.0)
