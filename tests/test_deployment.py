"""The deployments in prefect.yaml, end to end against a real Prefect server on loopback.

A Prefect server, a process worker and the flow runs it starts all run as subprocesses on
127.0.0.1, with a temporary ``PREFECT_HOME`` and ``TMPDIR`` each: nothing touches the
developer's own Prefect profile or database. The module creates the ``kmflow-process`` work
pool and deploys ``prefect.yaml`` from the repository root exactly as its header says; both
tests share that server, deployment and worker.

``test_pipeline_deployment_runs_end_to_end`` checks what the server registered (seven
deployments, the paused nightly ``train`` cron, the paused hourly ``monitor`` cron and the runs
the scheduler made of it once resumed, the ``kmflow.drift.detected`` automation that runs
``retrain``), then runs ``pipeline/kmflow-pipeline`` through the REST API on three small photos
and checks the outcomes: the model registry, the quantized PNGs, the artifacts and the subflow
runs.

``test_drift_event_triggers_retrain_deployment`` is the drift loop of issue 5: a champion
trained through the pipeline deployment, ``monitor/kmflow-monitor`` on an undrifted batch (no
event, no retrain run), then on a drifted batch: the event reaches the server and the
deployment trigger alone creates a ``retrain`` run, which registers version 2 with version 1
as parent and promotes it.

The hourly monitor schedule is resumed to see the scheduler make runs of it, then switched off
again (and its scheduled runs deleted) before the worker starts: otherwise a module running
across the top of an hour would have the worker run ``monitor`` with the deployment's default
parameters (relative paths, i.e. into the repository).

Every process is started in its own session and its whole tree (the worker's flow runs and
their Dask workers included) is terminated in a fixture finalizer, also when the test fails.
Their output goes to log files whose tails appear in failure messages.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
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

from kmflow.flows.monitor import dataset_resource_id
from kmflow.storage.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "kmflow-process"
MODEL = "photos"
K = 6
SEED = 3
DRIFT_MODEL = "drifty"
DRIFT_EVENT = "kmflow.drift.detected"

# Every deployment prefect.yaml declares, as (flow name, deployment name).
DEPLOYMENTS = {
    ("pipeline", "kmflow-pipeline"): "src/kmflow/flows/pipeline.py:pipeline_flow",
    ("ingest", "kmflow-ingest"): "src/kmflow/flows/ingest.py:ingest_flow",
    ("train", "kmflow-train"): "src/kmflow/flows/train.py:train_flow",
    ("evaluate", "kmflow-evaluate"): "src/kmflow/flows/evaluate.py:evaluate_flow",
    ("apply", "kmflow-apply"): "src/kmflow/flows/apply.py:apply_flow",
    ("monitor", "kmflow-monitor"): "src/kmflow/flows/monitor.py:monitor_flow",
    ("retrain", "kmflow-retrain"): "src/kmflow/flows/retrain.py:retrain_flow",
    ("segment", "kmflow-segment"): "src/kmflow/flows/segment.py:segment_flow",
    (
        "monitor-segments",
        "kmflow-monitor-segments",
    ): "src/kmflow/flows/monitor_segments.py:monitor_segments_flow",
    (
        "cluster-images",
        "kmflow-cluster-images",
    ): "src/kmflow/flows/cluster_images.py:cluster_images_flow",
}

SERVER_START_TIMEOUT = 120.0  # about 20 s on a fresh database with 2 cores
CLI_TIMEOUT = 180.0
FLOW_RUN_TIMEOUT = 300.0
SCHEDULER_TIMEOUT = 90.0  # the scheduler loop runs every 5 s here (set in _base_env)
TRIGGER_TIMEOUT = 60.0  # event to triggered flow run: under a second when healthy
RETRAIN_TIMEOUT = 240.0
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
        # the scheduler visits every deployment each 5 s (default 60): a schedule resumed
        # through the API gets its runs within seconds, whatever the phase of its loop
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        # a loaded two-core machine: give SQLite statements time before the server gives up
        PREFECT_SERVER_DATABASE_TIMEOUT="60",
        PREFECT_API_LOG_RETRYABLE_ERRORS="true",
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


class RetryingTransport(httpx.HTTPTransport):
    """Retries what the Prefect server says may be retried, as Prefect's own client does.

    The server answers 503 for errors it classes as retryable (a SQLite database locked by a
    concurrent writer, a statement timeout: common on a loaded two-core machine); 502/429 and
    connection errors are transient too. A request that fails that way changed nothing, so it
    is sent again after a growing pause, for at most about two minutes. A read that timed out
    (a GET, or a POST to a ``.../filter`` query) is sent again too: reading changes nothing.
    """

    RETRY_STATUS = frozenset({429, 502, 503})
    PAUSES = (0.5, 1, 2, 4, 8, 15, 30, 60)

    @staticmethod
    def _is_read(request: httpx.Request) -> bool:
        return request.method == "GET" or request.url.path.endswith("/filter")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for pause in (*self.PAUSES, None):
            try:
                response = super().handle_request(request)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                if pause is None:
                    raise
            except httpx.ReadTimeout:
                if pause is None or not self._is_read(request):
                    raise
            else:
                if response.status_code not in self.RETRY_STATUS or pause is None:
                    return response
                response.read()
                response.close()
            time.sleep(pause)
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def api(sandbox: Sandbox, server: Service) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sandbox.api_url + "/", timeout=30, transport=RetryingTransport()
    ) as client:
        yield client


@pytest.fixture(scope="module")
def work_pool(sandbox: Sandbox, server: Service) -> str:
    _prefect(["work-pool", "create", POOL, "--type", "process"], sandbox.env("cli"), server=server)
    return POOL


@pytest.fixture(scope="module")
def worker(
    sandbox: Sandbox, server: Service, work_pool: str, schedules: Schedules
) -> Iterator[Service]:
    """A process worker on the pool; its environment is what the flow runs see.

    Started only once the schedules are recorded and switched off (``schedules``), so that
    it never picks up an auto-scheduled run.
    """
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


@dataclass
class Schedules:
    """The schedules the server registered at deploy time, and the runs it made of them."""

    registered: dict[str, list[dict[str, Any]]]  # flow name -> GET .../schedules, as deployed
    scheduled_runs: list[dict[str, Any]]  # auto-scheduled runs found before switching off
    seconds_to_first_runs: float | None  # deploy done -> scheduler's first runs seen


@pytest.fixture(scope="module")
def schedules(api: httpx.Client, deployed: str) -> Schedules:
    """Record every deployment's schedules and the scheduler's runs, then switch them off.

    Resumes the (paused as shipped) hourly ``monitor`` cron and waits (up to
    ``SCHEDULER_TIMEOUT``) for the server's scheduler to create its runs: that proves the
    schedule is live on the server, not only stored. Then every active schedule is
    deactivated and every remaining auto-scheduled run deleted, so the worker (started after
    this fixture) can never run ``monitor`` with its default parameters in the middle of the
    tests.
    """
    ids = {}
    for flow, name in DEPLOYMENTS:
        response = api.get(f"deployments/name/{flow}/{name}")
        if response.status_code == 200:
            ids[flow] = response.json()["id"]
    registered = {flow: _ok(api.get(f"deployments/{id_}/schedules")) for flow, id_ in ids.items()}
    # The hourly monitor ships paused (its default folder and model exist only once a user
    # has set them up): resume it as a user would in the UI, and see the scheduler pick it up.
    for schedule in registered.get("monitor", []):
        _ok(
            api.patch(
                f"deployments/{ids['monitor']}/schedules/{schedule['id']}", json={"active": True}
            )
        )
    t0 = time.monotonic()
    seconds: float | None = None
    runs: list[dict[str, Any]] = []
    while ids and time.monotonic() < t0 + SCHEDULER_TIMEOUT:
        runs = _auto_scheduled_runs(api, list(ids.values()))
        if runs:
            seconds = time.monotonic() - t0
            time.sleep(1.0)  # let the scheduler finish inserting this batch
            runs = _auto_scheduled_runs(api, list(ids.values()))
            break
        time.sleep(0.5)
    for flow, items in registered.items():
        for schedule in items:
            if schedule["active"] or flow == "monitor":
                _ok(
                    api.patch(
                        f"deployments/{ids[flow]}/schedules/{schedule['id']}",
                        json={"active": False},
                    )
                )
    # A scheduler pass already under way may still insert runs: delete until none are left.
    for _ in range(5):
        time.sleep(0.5)
        leftover = _auto_scheduled_runs(api, list(ids.values()))
        if not leftover:
            break
        for run in leftover:
            response = api.delete(f"flow_runs/{run['id']}")
            assert response.status_code in (200, 204, 404), response.text
    else:
        pytest.fail("auto-scheduled runs keep appearing after the schedules were switched off")
    return Schedules(registered, runs, seconds)


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
    return response.json() if response.content else None


def _auto_scheduled_runs(api: httpx.Client, deployment_ids: list[str]) -> list[dict[str, Any]]:
    """Runs the scheduler created for these deployments that are still waiting to run."""
    runs = _ok(
        api.post(
            "flow_runs/filter",
            json={
                "flow_runs": {
                    "deployment_id": {"any_": deployment_ids},
                    "state": {"type": {"any_": ["SCHEDULED"]}},
                },
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": 200,
            },
        )
    )
    return [run for run in runs if run["auto_scheduled"]]


def _flow_runs_of(api: httpx.Client, flow_name: str) -> list[dict[str, Any]]:
    """Every flow run of the flow called `flow_name`, oldest first."""
    return _ok(
        api.post(
            "flow_runs/filter",
            json={"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_ASC"},
        )
    )


def _events(api: httpx.Client, name: str, *, prefix: bool = False) -> list[dict[str, Any]]:
    """The events called `name` (or starting with it) the server has stored, oldest first."""
    match = {"prefix": [name]} if prefix else {"name": [name]}
    found = _ok(
        api.post("events/filter", json={"filter": {"event": match, "order": "ASC"}, "limit": 50})
    )
    return list(found["events"])


def _action_events(api: httpx.Client) -> str:
    """What the automations did (prefect.automation.action.*), one line each."""
    with contextlib.suppress(httpx.HTTPError, AssertionError):
        return "\n".join(
            f"{e['occurred']} {e['event']}: {json.dumps(e['payload'])}"
            for e in _events(api, "prefect.automation.action", prefix=True)
        )
    return "<automation events unavailable>"


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
    api: httpx.Client,
    flow_run_id: str,
    worker: Service,
    server: Service,
    timeout: float = FLOW_RUN_TIMEOUT,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = _ok(api.get(f"flow_runs/{flow_run_id}"))
        if run["state_type"] in TERMINAL_STATES:
            return run
        if time.monotonic() > deadline or not worker.alive():
            ids = [flow_run_id] + [r["id"] for r in _subflow_runs(api, flow_run_id)]
            why = "the worker exited" if not worker.alive() else f"{timeout} s passed"
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
    schedules: Schedules,
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

    # -- schedules as deployed: train nightly at 02:00 UTC, monitor hourly, both paused
    def crons(flow: str) -> list[tuple[str | None, str | None, bool]]:
        return [
            (item["schedule"].get("cron"), item["schedule"].get("timezone"), item["active"])
            for item in schedules.registered[flow]
        ]

    assert sorted(schedules.registered) == sorted(flow for flow, _ in DEPLOYMENTS)
    assert crons("train") == [("0 2 * * *", "UTC", False)]
    assert crons("monitor") == [("0 * * * *", "UTC", False)]
    for flow in (
        "pipeline",
        "ingest",
        "evaluate",
        "apply",
        "retrain",
        "segment",
        "monitor-segments",
        "cluster-images",
    ):
        assert schedules.registered[flow] == [], f"{flow} has a schedule"
    # -- the records job's form is typed: the choices of its rules are enums in the UI
    segment_schema = by_name["segment"]["parameter_openapi_schema"]
    form = segment_schema["definitions"]["SegmentParams"]["properties"]
    assert form["select"]["enum"] == ["db", "ch", "silhouette", "elbow"]
    assert form["missing"]["enum"] == ["error", "drop", "median"]
    assert by_name["segment"]["parameters"]["params"]["k"] == "2..12"
    images_form = by_name["cluster-images"]["parameter_openapi_schema"]
    images_fields = images_form["definitions"]["ImageClusterParams"]["properties"]
    assert images_fields["input"]["enum"] == ["auto", "images", "table"]
    assert by_name["cluster-images"]["parameters"]["params"]["k"] == "10"

    # -- the server's scheduler made hourly runs of monitor (and of nothing else)
    scheduled = schedules.scheduled_runs
    assert scheduled, f"no auto-scheduled monitor runs within {SCHEDULER_TIMEOUT} s of deploying"
    print(f"first scheduled monitor runs seen {schedules.seconds_to_first_runs:.1f} s after deploy")
    assert {r["deployment_id"] for r in scheduled} == {by_name["monitor"]["id"]}
    starts = sorted(
        dt.datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00"))
        for r in scheduled
    )
    assert len(starts) >= 3  # the scheduler's minimum number of future runs
    now = dt.datetime.now(dt.UTC)
    assert now - dt.timedelta(minutes=2) < starts[0] <= now + dt.timedelta(hours=1)
    for start in starts:
        assert (start.minute, start.second, start.microsecond) == (0, 0, 0), start
        assert start.utcoffset() == dt.timedelta(0)
    assert {b - a for a, b in itertools.pairwise(starts)} == {dt.timedelta(hours=1)}
    for run in scheduled:
        assert run["parameters"] == by_name["monitor"]["parameters"]

    # -- the retrain triggers: one automation per job on kmflow.drift.detected; images retrain,
    # records run the segment flow on the champion's tables plus the batch
    automations = _ok(api.post("automations/filter", json={}))
    on_drift = [a for a in automations if DRIFT_EVENT in a["trigger"].get("expect", [])]
    assert len(on_drift) == 3, json.dumps(automations, indent=1)
    by_match = {a["trigger"]["match"]["prefect.resource.id"]: a for a in on_drift}
    records = by_match.pop("kmflow.records.*")
    assert records["actions"][0]["deployment_id"] == by_name["segment"]["id"]
    assert sorted(records["actions"][0]["parameters"]["params"]) == ["k", "model", "source"]
    image_clusters = by_match.pop("kmflow.image-clusters.*")
    assert image_clusters["actions"][0]["deployment_id"] == by_name["cluster-images"]["id"]
    assert sorted(image_clusters["actions"][0]["parameters"]["params"]) == [
        "features",
        "image_shape",
        "k",
        "model",
        "source",
    ]
    (automation,) = by_match.values()
    assert automation["enabled"] is True
    trigger = automation["trigger"]
    assert trigger["type"] == "event"
    assert trigger["posture"] == "Reactive"
    assert trigger["threshold"] == 1
    assert trigger["expect"] == [DRIFT_EVENT]
    assert trigger["match"] == {"prefect.resource.id": "kmflow.dataset.*"}
    (action,) = automation["actions"]
    assert action["type"] == "run-deployment"
    assert action["source"] == "selected"
    assert action["deployment_id"] == by_name["retrain"]["id"]
    # Templated from the event (rendered values are checked in the drift-loop test).
    templates = action["parameters"]["params"]
    assert sorted(templates) == ["batch_id", "event_id", "model", "store"], templates
    for key, source in {
        "store": "event.payload.store",
        "model": "event.payload.model",
        "event_id": "event.id",
        "batch_id": "event.payload.batch_id",
    }.items():
        template = templates[key]
        assert template.startswith("{{"), templates
        assert template.endswith("}}"), templates
        assert template[2:-2].split("|")[0].strip() == source, templates

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
    assert MODEL in registry.names()
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
    assert artifacts[f"{MODEL}-outputs"]["data"] == f"[outputs]({out.as_uri()})"
    assert f"({(out / 'palette.png').as_uri()})" in artifacts[f"{MODEL}-palette"]["data"]
    assert artifacts[f"{MODEL}-training-progress"]["data"] == pytest.approx(100.0)


def _run_deployment(
    api: httpx.Client,
    worker: Service,
    server: Service,
    deployment: str,
    params: dict[str, Any],
    what: str,
) -> dict[str, Any]:
    """Create a run of `deployment` ("flow/name") through the API; wait until COMPLETED."""
    deployment_id = _ok(api.get(f"deployments/name/{deployment}"))["id"]
    created = _ok(
        api.post(
            f"deployments/{deployment_id}/create_flow_run", json={"parameters": {"params": params}}
        )
    )
    t0 = time.monotonic()
    run = _wait_for_terminal_state(api, created["id"], worker, server)
    ids = [run["id"]] + [r["id"] for r in _subflow_runs(api, run["id"])]
    assert run["state_type"] == "COMPLETED", (
        f"{what} ({deployment}) {run['state_name']}: {run['state'].get('message')}\n"
        f"--- flow run logs:\n{_flow_run_logs(api, ids)}\n{worker.tail()}"
    )
    print(f"{what}: {deployment} run completed {time.monotonic() - t0:.1f} s after it was created")
    return run


def _reports(folder: Path) -> dict[str, dict[str, Any]]:
    """The drift reports saved in `folder`: batch id (file stem) -> JSON."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


@pytest.mark.timeout(600)
def test_drift_event_triggers_retrain_deployment(
    sandbox: Sandbox,
    server: Service,
    api: httpx.Client,
    worker: Service,
    deployed: str,
    mixture_images: Any,
) -> None:
    root = sandbox.root / "drift-loop"
    store = str(root / "store.zarr")
    reports = root / "drift"
    registry = ModelRegistry(sandbox.root / "models")  # the worker's KMFLOW_REGISTRY__URL

    def context(*flow_run_ids: str) -> str:
        return f"--- flow run logs:\n{_flow_run_logs(api, list(flow_run_ids))}\n{worker.tail()}"

    # -- a champion: the pipeline deployment on 6 images of the six-color mixture
    pipeline = _run_deployment(
        api,
        worker,
        server,
        "pipeline/kmflow-pipeline",
        {
            "sources": [str(mixture_images(root / "train", 6, seed=0))],
            "store": store,
            "out": str(root / "out"),
            "model": DRIFT_MODEL,
            "k": 6,
            "seed": 0,
            "holdout": {"fraction": 0.0},
        },
        "champion",
    )
    champion = registry.champion(DRIFT_MODEL)
    assert champion is not None, context(pipeline["id"])
    assert champion.version == 1
    assert [r.version for r in registry.versions(DRIFT_MODEL)] == [1]

    monitor = {"store": store, "model": DRIFT_MODEL, "reports": str(reports)}

    # -- an undrifted batch (a fresh sample of the same mixture): no drift, no event, no retrain
    calm_run = _run_deployment(
        api,
        worker,
        server,
        "monitor/kmflow-monitor",
        {**monitor, "sources": [str(mixture_images(root / "calm", 4, seed=1))]},
        "undrifted monitor",
    )
    saved = _reports(reports)
    assert len(saved) == 1, f"{sorted(saved)}\n{context(calm_run['id'])}"
    ((calm_batch, calm),) = saved.items()
    assert calm["drifted"] is False, f"{json.dumps(calm['statistics'])}\n{context(calm_run['id'])}"
    assert calm["batch_id"] == calm_batch
    assert calm["n_images"] == 4
    assert calm["champion_version"] == 1
    assert not [name for name, stat in calm["statistics"].items() if stat["drifted"]]
    time.sleep(10.0)  # a trigger fires in under a second: give a wrong one time to show
    assert _events(api, DRIFT_EVENT) == [], context(calm_run["id"])
    assert _flow_runs_of(api, "retrain") == [], context(calm_run["id"])

    # -- a drifted batch (colors shifted toward blue): report, event, and a triggered retrain
    drift_run = _run_deployment(
        api,
        worker,
        server,
        "monitor/kmflow-monitor",
        {
            **monitor,
            "sources": [str(mixture_images(root / "shifted", 4, seed=2, shift=(0, 0, 40)))],
        },
        "drifted monitor",
    )
    saved = _reports(reports)
    new = sorted(set(saved) - {calm_batch})
    assert len(new) == 1, f"{sorted(saved)}\n{context(drift_run['id'])}"
    drift_batch = new[0]
    drift = saved[drift_batch]
    assert drift["drifted"] is True, (
        f"{json.dumps(drift['statistics'])}\n{context(drift_run['id'])}"
    )
    assert drift["batch_id"] == drift_batch
    assert drift["n_images"] == 4
    assert {"sqdist_ratio", "wasserstein"} <= {
        name for name, stat in drift["statistics"].items() if stat["drifted"]
    }

    # The event, on the server (events are stored asynchronously: poll).
    deadline = time.monotonic() + 30.0
    while not (events := _events(api, DRIFT_EVENT)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(events) == 1, f"{json.dumps(events, indent=1)}\n{context(drift_run['id'])}"
    (event,) = events
    assert event["resource"]["prefect.resource.id"] == dataset_resource_id(store)
    payload = event["payload"]
    assert payload["store"] == store
    assert payload["model"] == DRIFT_MODEL
    assert payload["batch_id"] == drift_batch
    assert payload["champion_version"] == 1
    assert payload["drifted"] is True
    related = {r["prefect.resource.id"] for r in event.get("related", [])}
    assert f"prefect.flow-run.{drift_run['id']}" in related, json.dumps(event, indent=1)

    # The retrain run the trigger created: no call of ours makes it, we only look for it.
    deadline = time.monotonic() + TRIGGER_TIMEOUT
    while not (retrains := _flow_runs_of(api, "retrain")) and time.monotonic() < deadline:
        if _events(api, "prefect.automation.action.failed"):
            break  # the automation fired but could not create the run: say why, now
        time.sleep(0.5)
    assert len(retrains) == 1, (
        f"{len(retrains)} retrain runs after the drift event\n--- automation actions:\n"
        f"{_action_events(api)}\n{context(drift_run['id'])}\n{server.tail(40)}"
    )
    (retrain,) = retrains
    occurred = dt.datetime.fromisoformat(event["occurred"].replace("Z", "+00:00"))
    created = dt.datetime.fromisoformat(retrain["created"].replace("Z", "+00:00"))
    print(
        f"trigger latency: retrain run created {(created - occurred).total_seconds():.2f} s "
        "after the drift event occurred"
    )
    automations = _ok(api.post("automations/filter", json={}))
    (automation,) = [
        a
        for a in automations
        if DRIFT_EVENT in a["trigger"].get("expect", [])
        and a["trigger"]["match"]["prefect.resource.id"] == "kmflow.dataset.*"
    ]
    # An image dataset's drift retrains the palette, never the records job.
    assert _flow_runs_of(api, "segment") == []
    assert retrain["created_by"] is not None, json.dumps(retrain, indent=1)
    assert retrain["created_by"]["type"] == "AUTOMATION"
    assert retrain["created_by"]["id"] == automation["id"]
    assert retrain["deployment_id"] == _ok(api.get("deployments/name/retrain/kmflow-retrain"))["id"]
    assert retrain["parameters"] == {
        "params": {
            "store": store,
            "model": DRIFT_MODEL,
            "event_id": event["id"],
            "batch_id": drift_batch,
        }
    }
    t0 = time.monotonic()
    retrain = _wait_for_terminal_state(api, retrain["id"], worker, server, RETRAIN_TIMEOUT)
    retrain_ids = [retrain["id"]] + [r["id"] for r in _subflow_runs(api, retrain["id"])]
    assert retrain["state_type"] == "COMPLETED", (
        f"retrain {retrain['state_name']}: {retrain['state'].get('message')}\n"
        f"{context(*retrain_ids)}"
    )
    print(f"triggered retrain run completed {time.monotonic() - t0:.1f} s after it was found")

    # -- the registry: version 2, warm-started from and parented by 1, now the champion
    assert [r.version for r in registry.versions(DRIFT_MODEL)] == [1, 2], context(*retrain_ids)
    record = registry.record(DRIFT_MODEL, 2)
    assert record.parent == 1
    assert record.init == "warm-start"
    assert record.run_key == f"drift-event:{event['id']}"
    assert record.metrics["promotion"]["promoted"] is True, record.metrics["promotion"]
    pointer = json.loads((sandbox.root / "models" / DRIFT_MODEL / "champion.json").read_text())
    assert pointer["version"] == 2
    assert pointer["previous"] == 1
    assert registry.champion(DRIFT_MODEL).version == 2  # type: ignore[union-attr]

    # -- and nothing else was started: one retrain run, for the one event
    assert len(_flow_runs_of(api, "retrain")) == 1
    assert len(_events(api, DRIFT_EVENT)) == 1

    # -- a records model's drift event starts the segment deployment, never retrain: on the
    # champion's tables plus the batch, with the champion's k (rendered with native types)
    tables = sandbox.root / "tables"
    tables.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("old.csv", "new.csv"):
        rows = rng.normal(size=(60, 2)) + rng.integers(0, 3, (60, 1)) * 6.0
        (tables / name).write_text("a,b\n" + "\n".join(f"{x:.4f},{y:.4f}" for x, y in rows) + "\n")
    sources = [str(tables / "old.csv"), str(tables / "new.csv")]
    records_event = {
        "id": str(uuid.uuid4()),
        "occurred": dt.datetime.now(dt.UTC).isoformat(),
        "event": DRIFT_EVENT,
        "resource": {"prefect.resource.id": "kmflow.records.customers"},
        "payload": {"model": "customers", "sources": sources, "k": "2..4", "drifted": True},
    }
    response = api.post("events", json=[records_event])
    assert response.status_code == 204, response.text
    deadline = time.monotonic() + TRIGGER_TIMEOUT
    while not (segments := _flow_runs_of(api, "segment")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(segments) == 1, f"{len(segments)} segment runs\n{_action_events(api)}"
    assert segments[0]["parameters"] == {
        "params": {"source": sources, "model": "customers", "k": "2..4"}
    }
    assert len(_flow_runs_of(api, "retrain")) == 1  # the images' retrain did not run again
