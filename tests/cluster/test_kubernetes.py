"""Cluster mode 'kubernetes': settings, the DaskCluster resource, the shipped manifest, connect().

No Kubernetes API server can run here. The resource is checked as data (it needs none),
including against the operator's own CRD schema. connect() is run for real against what this
machine does have: no credentials, an API address that refuses connections, one that never
answers, and a loopback stub API server that answers discovery requests and refuses creates,
so that what the real KubeCluster sends can be inspected. A start that reaches a working
client is covered by one test with dask-kubernetes' KubeCluster replaced by a fake. The
manifests in deploy/ are checked against the code.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import dask_kubernetes
import dask_kubernetes.operator
import pytest
import yaml
from distributed import LocalCluster
from distributed.core import Status
from pydantic import ValidationError

from kmflow.cluster import connect, has_distributed_client, memory_budget
from kmflow.cluster.kubernetes import (
    OPERATOR_API_VERSION,
    cluster_spec,
    render_manifest,
)
from kmflow.cluster.local import WORKER_MALLOC_ENV
from kmflow.config import ClusterSettings, KubernetesSettings, Settings, get_settings
from kmflow.errors import ClusterError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
SHIPPED_MANIFEST = DEPLOY / "dask-cluster.yaml"
IN_A_POD = os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")

CUSTOM = KubernetesSettings(
    image="registry.example.com/kmflow:0.1.0",
    namespace="kmflow-test",
    name="palette-fit",
    n_workers=5,
    worker_cpu="2",
    worker_memory="8Gi",
    scheduler_cpu="500m",
    scheduler_memory="1Gi",
    env={"ZED": "last", "AWS_DEFAULT_REGION": "eu-west-1"},
    settings_from="team-settings",
    idle_timeout=900,
)


#: The container entries of kmflow's default worker malloc settings, sorted by name.
_MALLOC_ENV = [{"name": k, "value": v} for k, v in sorted(WORKER_MALLOC_ENV.items())]


def _containers(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scheduler and the worker container of a DaskCluster resource."""
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    return scheduler, worker


def _io_loop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "IO loop"}


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        (
            "IMAGE",
            "registry.example.com/kmflow:0.1.0",
            "image",
            "registry.example.com/kmflow:0.1.0",
        ),
        ("NAMESPACE", "data-jobs", "namespace", "data-jobs"),
        ("NAME", "nightly-fit", "name", "nightly-fit"),
        ("N_WORKERS", "8", "n_workers", 8),
        ("N_WORKERS", "0", "n_workers", 0),
        ("WORKER_CPU", "500m", "worker_cpu", "500m"),
        ("WORKER_CPU", "2.5", "worker_cpu", "2.5"),
        ("WORKER_MEMORY", "16Gi", "worker_memory", "16Gi"),
        ("WORKER_MEMORY", "4G", "worker_memory", "4G"),
        ("SCHEDULER_CPU", "250m", "scheduler_cpu", "250m"),
        ("SCHEDULER_MEMORY", "512Mi", "scheduler_memory", "512Mi"),
        ("ENV", '{"AWS_DEFAULT_REGION": "eu-west-1"}', "env", {"AWS_DEFAULT_REGION": "eu-west-1"}),
        ("UNIQUE_NAME", "false", "unique_name", False),
        ("SETTINGS_FROM", "team-settings", "settings_from", "team-settings"),
        ("SETTINGS_FROM", "", "settings_from", None),
        ("IDLE_TIMEOUT", "3600", "idle_timeout", 3600),
        ("SHUTDOWN_ON_CLOSE", "false", "shutdown_on_close", False),
        ("RESOURCE_TIMEOUT", "120", "resource_timeout", 120),
        ("START_TIMEOUT", "90.5", "start_timeout", 90.5),
    ],
)
def test_environment_variable_sets_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: Any
) -> None:
    monkeypatch.setenv(f"KMFLOW_CLUSTER__KUBERNETES__{variable}", value)
    kube = get_settings().cluster.kubernetes
    assert getattr(kube, field) == expected
    # Only that field moved.
    others = {name for name in KubernetesSettings.model_fields if name != field}
    assert kube.model_dump(include=others) == KubernetesSettings().model_dump(include=others)


def test_defaults() -> None:
    kube = get_settings().cluster.kubernetes
    assert kube == KubernetesSettings()
    assert (kube.image, kube.namespace, kube.name, kube.n_workers) == (
        "kmflow:latest",
        "default",
        "kmflow",
        2,
    )
    assert (kube.worker_cpu, kube.worker_memory) == ("1", "4Gi")
    assert (kube.scheduler_cpu, kube.scheduler_memory) == ("1", "2Gi")
    assert kube.env == {}
    assert kube.settings_from == "kmflow-settings"
    assert (kube.unique_name, kube.shutdown_on_close, kube.idle_timeout) == (True, True, 0)
    assert (kube.resource_timeout, kube.start_timeout) == (60, 600.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image", ""),
        ("image", "kmflow latest"),
        ("namespace", "Data_Jobs"),
        ("namespace", "-jobs"),
        ("namespace", "x" * 64),
        ("name", "1st-cluster"),  # the scheduler Service needs a letter first
        ("name", "Kmflow"),
        ("name", "k" * 54),  # "<name>-scheduler" must fit in 63 characters
        ("n_workers", "-1"),
        ("n_workers", "1025"),
        ("worker_cpu", "0"),
        ("worker_cpu", "0m"),
        ("worker_cpu", "one"),
        ("worker_cpu", "2 cores"),
        ("worker_cpu", "2048"),
        ("worker_memory", "4GB"),
        ("worker_memory", "4 Gi"),
        ("worker_memory", "100Mi"),
        ("worker_memory", "lots"),
        ("scheduler_cpu", "-1"),
        ("scheduler_memory", "1Gb"),
        ("env", '{"NOT A NAME": "x"}'),
        ("env", '{"DASK_SCHEDULER_ADDRESS": "tcp://elsewhere:8786"}'),
        ("env", '["not", "a", "mapping"]'),
        ("settings_from", "Team_Settings"),
        ("idle_timeout", "-5"),
        ("shutdown_on_close", "maybe"),
        ("resource_timeout", "0"),
        ("start_timeout", "0"),
        ("start_timeout", "7201"),
    ],
)
def test_bad_environment_value_is_rejected_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv(f"KMFLOW_CLUSTER__KUBERNETES__{field.upper()}", value)
    with pytest.raises(ValidationError, match=rf"cluster\.kubernetes\.{field}\b"):
        get_settings()


def test_unique_name_must_leave_room_for_its_suffix() -> None:
    assert KubernetesSettings(name="k" * 44).unique_name
    assert KubernetesSettings(name="k" * 53, unique_name=False).name == "k" * 53
    with pytest.raises(ValidationError, match="has 45 characters; with unique_name"):
        KubernetesSettings(name="k" * 45)


def test_memory_error_explains_kubernetes_suffixes() -> None:
    with pytest.raises(ValidationError, match=r"'4GB'.*no 'B' suffix: '4Gi' is 4 GiB"):
        KubernetesSettings(worker_memory="4GB")


def test_unknown_field_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_CLUSTER__KUBERNETES__WORKERS", "4")
    with pytest.raises(ValidationError, match="workers"):
        get_settings()


def test_settings_are_frozen() -> None:
    kube = KubernetesSettings()
    with pytest.raises(ValidationError, match="frozen"):
        kube.n_workers = 3  # type: ignore[misc]


def test_every_field_is_described() -> None:
    for name, info in KubernetesSettings.model_fields.items():
        assert info.description, f"KubernetesSettings.{name} has no description"


# --------------------------------------------------------------------------- the resource


def test_spec_is_a_dask_cluster_resource() -> None:
    spec = cluster_spec(KubernetesSettings())
    assert spec["apiVersion"] == OPERATOR_API_VERSION == "kubernetes.dask.org/v1"
    assert spec["kind"] == "DaskCluster"
    assert spec["metadata"] == {"name": "kmflow", "namespace": "default"}
    assert set(spec["spec"]) == {"idleTimeout", "scheduler", "worker"}
    service = spec["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == "kmflow"
    assert {p["port"] for p in service["ports"]} == {8786, 8787}


def test_spec_follows_the_settings() -> None:
    spec = cluster_spec(CUSTOM)
    scheduler, worker = _containers(spec)
    assert spec["metadata"] == {"name": "palette-fit", "namespace": "kmflow-test"}
    assert spec["spec"]["idleTimeout"] == 900
    assert spec["spec"]["worker"]["replicas"] == 5
    assert spec["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == (
        "palette-fit"
    )
    assert scheduler["image"] == worker["image"] == "registry.example.com/kmflow:0.1.0"
    # Requests equal limits (Dask sizes a worker from its limits), per container.
    assert worker["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"cpu": "2", "memory": "8Gi"},
    }
    assert scheduler["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "500m", "memory": "1Gi"},
    }
    for container in (scheduler, worker):
        assert container["env"] == [
            {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"},
            *_MALLOC_ENV,
            {"name": "ZED", "value": "last"},
        ]
        assert container["envFrom"] == [
            {"configMapRef": {"name": "team-settings", "optional": True}},
            {"secretRef": {"name": "team-settings", "optional": True}},
        ]


def test_spec_starts_the_commands_distributed_ships() -> None:
    scheduler, worker = _containers(cluster_spec(KubernetesSettings()))
    assert scheduler["args"] == ["dask", "scheduler", "--host", "0.0.0.0"]
    assert worker["args"][:2] == ["dask", "worker"]
    # The operator sets DASK_WORKER_NAME (and DASK_SCHEDULER_ADDRESS, which `dask worker`
    # reads) on each worker pod; Kubernetes expands $(VAR) in args.
    assert worker["args"][2:4] == ["--name", "$(DASK_WORKER_NAME)"]
    subcommands = {ep.name for ep in importlib.metadata.entry_points(group="dask_cli")}
    assert {"scheduler", "worker"} <= subcommands


def test_spec_without_settings_from_has_no_env_from() -> None:
    scheduler, worker = _containers(cluster_spec(KubernetesSettings(settings_from=None)))
    assert "envFrom" not in scheduler
    assert "envFrom" not in worker
    assert scheduler["env"] == worker["env"] == _MALLOC_ENV


def test_env_setting_overrides_the_malloc_defaults() -> None:
    settings = KubernetesSettings(settings_from=None, env={"MALLOC_TRIM_THRESHOLD_": "65536"})
    _, worker = _containers(cluster_spec(settings))
    assert worker["env"] == [
        {"name": "MALLOC_MMAP_THRESHOLD_", "value": WORKER_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]},
        {"name": "MALLOC_TRIM_THRESHOLD_", "value": "65536"},
    ]


def test_spec_accepts_every_settings_level(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = cluster_spec(CUSTOM)
    assert cluster_spec(ClusterSettings(kubernetes=CUSTOM)) == expected
    monkeypatch.setenv("KMFLOW_CLUSTER__KUBERNETES__N_WORKERS", "7")
    assert cluster_spec()["spec"]["worker"]["replicas"] == 7
    with pytest.raises(TypeError, match="KubernetesSettings"):
        cluster_spec(Settings())  # type: ignore[arg-type]


def test_spec_is_json_and_shares_nothing() -> None:
    spec = cluster_spec(CUSTOM)
    assert json.loads(json.dumps(spec)) == spec
    scheduler, worker = _containers(spec)
    worker["env"].append({"name": "ONLY_WORKER", "value": "1"})
    assert {"name": "ONLY_WORKER", "value": "1"} not in scheduler["env"]
    assert cluster_spec(CUSTOM) != spec  # a fresh dict each call


@pytest.mark.parametrize("settings", [KubernetesSettings(), CUSTOM], ids=["default", "custom"])
def test_render_manifest_parses_back_to_the_spec(settings: KubernetesSettings) -> None:
    text = render_manifest(settings)
    assert yaml.safe_load(text) == cluster_spec(settings)
    assert render_manifest(settings) == text
    assert "&id" not in text  # no YAML anchors or aliases
    assert "*id" not in text
    # Sorted keys: the four top-level keys come in the order kubectl users expect.
    top = [line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()]
    assert top == ["apiVersion", "kind", "metadata", "spec"]


def _fields_a_server_would_drop(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Paths in `value` that the API server prunes under this structural CRD schema."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        declared = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        dropped = []
        for key, item in value.items():
            if key in declared:
                dropped += _fields_a_server_would_drop(item, declared[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                dropped += _fields_a_server_would_drop(item, extra, f"{path}.{key}")
            else:
                dropped.append(f"{path}.{key}")
        return dropped
    if isinstance(value, list) and "items" in schema:
        return [
            dropped
            for i, item in enumerate(value)
            for dropped in _fields_a_server_would_drop(item, schema["items"], f"{path}[{i}]")
        ]
    return []


@pytest.mark.parametrize("settings", [KubernetesSettings(), CUSTOM], ids=["default", "custom"])
def test_spec_is_valid_under_the_operator_crd(settings: KubernetesSettings) -> None:
    """The DaskCluster CRD that ships with dask-kubernetes (the one its Helm chart installs)."""
    import jsonschema

    crd_file = (
        Path(dask_kubernetes.__file__).parent
        / "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
    )
    crd = yaml.safe_load(crd_file.read_text(encoding="utf-8"))
    assert crd["spec"]["group"] + "/" + crd["spec"]["versions"][0]["name"] == OPERATOR_API_VERSION
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = cluster_spec(settings)
    jsonschema.validate(spec, schema)
    # Every field kmflow sets survives (apiVersion, kind and metadata are every object's).
    assert _fields_a_server_would_drop(spec, schema, "") == [".apiVersion", ".kind", ".metadata"]


def test_shipped_manifest_matches_the_code() -> None:
    """deploy/dask-cluster.yaml is render_manifest() of the defaults; regenerate it if not."""
    assert SHIPPED_MANIFEST.read_text(encoding="utf-8") == render_manifest(KubernetesSettings())


# --------------------------------------------------------------------------- connect()


def _write_kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kubernetes_settings(**kube: Any) -> ClusterSettings:
    return ClusterSettings(mode="kubernetes", kubernetes=KubernetesSettings(**kube))


@pytest.mark.skipif(IN_A_POD, reason="a pod's service account is credentials")
def test_connect_without_credentials_fails_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real connect(): this machine has no Kubernetes credentials at all."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    threads = _io_loop_threads()
    start = time.monotonic()
    with pytest.raises(ClusterError, match="no usable Kubernetes credentials") as caught:
        connect(_kubernetes_settings(namespace="data-jobs"))
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert f"KUBECONFIG='{tmp_path / 'no-such-kubeconfig'}'" in message
    assert "service account" in message
    assert "kubectl get pods -n data-jobs" in message
    assert isinstance(caught.value.__cause__, ValueError)
    assert not has_distributed_client()
    assert _io_loop_threads() == threads  # the loop thread it started is gone


def test_connect_to_refusing_api_server_fails_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = f"https://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("KUBECONFIG", str(_write_kubeconfig(tmp_path / "config", server)))
    start = time.monotonic()
    with pytest.raises(ClusterError, match="could not talk to the Kubernetes API") as caught:
        connect(_kubernetes_settings())
    assert time.monotonic() - start < 10
    assert server in str(caught.value)
    assert "kubectl version" in str(caught.value)


def test_connect_to_silent_api_server_times_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The kernel accepts the TCP connection; nothing ever answers. (Plain http: cancelling
    # a TLS handshake in progress leaks the socket in asyncio, a Python issue, not kmflow's.)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        server = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv("KUBECONFIG", str(_write_kubeconfig(tmp_path / "config", server)))
        start = time.monotonic()
        with pytest.raises(ClusterError, match=r"no answer within resource_timeout=1 s"):
            connect(_kubernetes_settings(resource_timeout=1))
        assert time.monotonic() - start < 10


@dataclass
class StubAPI:
    """What the loopback stub API server saw: request lines and the bodies POSTed to it."""

    url: str
    requests: list[str] = field(default_factory=list)
    posted: list[Any] = field(default_factory=list)


class _StubHandler(BaseHTTPRequestHandler):
    """Answers kmflow's discovery requests; 404 for other reads, 403 for every create."""

    serve_operator: ClassVar[bool]
    record: ClassVar[StubAPI]

    def do_GET(self) -> None:
        path = self.path.rstrip("/")
        self.record.requests.append(f"GET {path}")
        groups = [{"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}]}]
        if self.serve_operator:
            groups.append(
                {
                    "name": "kubernetes.dask.org",
                    "versions": [{"groupVersion": OPERATOR_API_VERSION, "version": "v1"}],
                }
            )
        replies: dict[str, Any] = {
            "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
            "/api": {"kind": "APIVersions", "versions": ["v1"]},
            "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups},
        }
        if path in replies:
            self._reply(200, replies[path])
        else:
            self._reply(404, {"kind": "Status", "message": "not found", "code": 404})

    def do_POST(self) -> None:
        self.record.requests.append(f"POST {self.path}")
        length = int(self.headers.get("Content-Length", 0))
        self.record.posted.append(json.loads(self.rfile.read(length)))
        message = "daskclusters.kubernetes.dask.org is forbidden: cannot create resource"
        self._reply(403, {"kind": "Status", "message": message, "code": 403})

    def _reply(self, status: int, reply: dict[str, Any]) -> None:
        body = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""


@pytest.fixture
def stub_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[[bool], StubAPI]]:
    """``stub_api(serve_operator)``: start a stub API server on loopback, point KUBECONFIG at it.

    A stand-in for a Kubernetes API server (none can run here): it answers ``/version``,
    ``/api`` and ``/apis`` (with or without the operator's ``kubernetes.dask.org`` group),
    404 to every other read and 403 Forbidden to every create. It speaks HTTP/1.0, so
    every connection closes after its reply.
    """
    servers: list[ThreadingHTTPServer] = []

    def start(serve_operator: bool) -> StubAPI:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
        record = StubAPI(url=f"http://127.0.0.1:{server.server_address[1]}")
        server.RequestHandlerClass = type(
            "Handler", (_StubHandler,), {"serve_operator": serve_operator, "record": record}
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("KUBECONFIG", str(_write_kubeconfig(tmp_path / "config", record.url)))
        return record

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_connect_without_the_operator_says_how_to_install_it(
    stub_api: Callable[[bool], StubAPI],
) -> None:
    api = stub_api(False)
    with pytest.raises(ClusterError, match="dask-kubernetes operator") as caught:
        connect(_kubernetes_settings())
    message = str(caught.value)
    assert f"API server at {api.url} does not serve kubernetes.dask.org/v1" in message
    assert "helm install --repo https://helm.dask.org" in message
    assert not any(request.startswith("POST") for request in api.requests)


def test_connect_posts_the_spec_and_reports_a_refusal(
    stub_api: Callable[[bool], StubAPI],
) -> None:
    """The real KubeCluster, against the stub API server: it creates the DaskCluster with
    exactly cluster_spec() in the configured namespace; the 403 becomes a ClusterError.
    """
    api = stub_api(True)
    settings = _kubernetes_settings(
        namespace="data-jobs", name="nightly", unique_name=False, resource_timeout=5
    )
    threads = _io_loop_threads()
    with pytest.raises(ClusterError, match="could not create the Dask cluster 'nightly'") as e:
        connect(settings)
    assert "forbidden" in str(e.value)
    assert "kubectl auth can-i create daskclusters.kubernetes.dask.org -n data-jobs" in str(e.value)
    assert "POST /apis/kubernetes.dask.org/v1/namespaces/data-jobs/daskclusters" in api.requests
    assert api.posted[0] == cluster_spec(settings)
    assert not has_distributed_client()
    assert _io_loop_threads() == threads


class FakeKubeCluster(LocalCluster):
    """Stands in for dask_kubernetes.operator.KubeCluster: no Kubernetes API can run here.

    Takes KubeCluster's keyword arguments, records them, and runs a thread-based
    LocalCluster with as many workers as the DaskCluster spec asks for instead of pods.
    """

    created: ClassVar[list[FakeKubeCluster]] = []

    def __init__(self, *, custom_cluster_spec: dict[str, Any], **kwargs: Any) -> None:
        self.spec = custom_cluster_spec
        self.kwargs = kwargs
        type(self).created.append(self)
        super().__init__(
            n_workers=custom_cluster_spec["spec"]["worker"]["replicas"],
            threads_per_worker=1,
            memory_limit="1GiB",
            processes=False,
            dashboard_address=None,
            asynchronous=kwargs["asynchronous"],
            loop=kwargs["loop"],
        )


def test_connect_creates_the_spec_and_closing_the_client_closes_the_cluster(
    monkeypatch: pytest.MonkeyPatch, stub_api: Callable[[bool], StubAPI]
) -> None:
    """KubeCluster is replaced by a fake here: a mock of the Kubernetes API, which cannot run
    here. Everything around it is real: the discovery requests to the loopback stub API, the
    event loop thread, the wait for workers, the client, and closing it all.
    """
    api = stub_api(True)
    monkeypatch.setattr(dask_kubernetes.operator, "KubeCluster", FakeKubeCluster)
    monkeypatch.setattr(FakeKubeCluster, "created", [])
    settings = _kubernetes_settings(
        namespace="kmflow-test",
        name="palette-fit",
        n_workers=2,
        shutdown_on_close=False,
        resource_timeout=17,
    )
    threads = _io_loop_threads()
    client = connect(settings)
    try:
        assert api.requests == ["GET /version", "GET /api", "GET /apis"]
        (cluster,) = FakeKubeCluster.created
        # A name of its own (unique_name), and otherwise exactly the settings' resource.
        name = cluster.spec["metadata"]["name"]
        assert re.fullmatch(r"palette-fit-[0-9a-f]{8}", name)
        unique = settings.kubernetes.model_copy(update={"name": name})
        assert cluster.spec == cluster_spec(unique)
        assert cluster.kwargs["namespace"] == "kmflow-test"
        assert cluster.kwargs["shutdown_on_close"] is False
        assert cluster.kwargs["resource_timeout"] == 17
        assert cluster.kwargs["quiet"] is True
        assert client.cluster is cluster
        # connect() returned with the workers up, and the client is Dask's default.
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        assert has_distributed_client()
        assert memory_budget() == 2 * 2**30
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert len(_io_loop_threads() - threads) == 1
    finally:
        client.close()
    assert client.status == "closed"
    assert cluster.status == Status.closed
    assert not has_distributed_client()
    assert _io_loop_threads() == threads


# --------------------------------------------------------------------------- deploy/


def _worker_manifest() -> dict[str, dict[str, Any]]:
    documents = yaml.safe_load_all((DEPLOY / "prefect-worker.yaml").read_text(encoding="utf-8"))
    return {doc["kind"]: doc for doc in documents if doc}


def test_worker_manifest_runs_a_process_worker_in_kubernetes_mode() -> None:
    resources = _worker_manifest()
    assert set(resources) == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment"}
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:5] == ["prefect", "worker", "start", "--pool", "kmflow-process"]
    # The pool is the one prefect.yaml deploys the flows to.
    prefect_yaml = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    assert {d["work_pool"]["name"] for d in prefect_yaml["deployments"]} == {"kmflow-process"}
    env = {item["name"]: item for item in container["env"]}
    assert env["PREFECT_API_URL"]["valueFrom"]["configMapKeyRef"]["name"] == "kmflow-prefect"
    assert "PREFECT_API_URL" in resources["ConfigMap"]["data"]
    assert env["KMFLOW_CLUSTER__KUBERNETES__NAMESPACE"]["valueFrom"]["fieldRef"] == {
        "fieldPath": "metadata.namespace"
    }
    # Its literal KMFLOW_* values are settings the code accepts, as a pod would read them.
    literal = {name: item["value"] for name, item in env.items() if "value" in item}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in literal.items():
            mp.setenv(name, value)
        mp.setenv("KMFLOW_CLUSTER__KUBERNETES__NAMESPACE", "kmflow")
        cluster = get_settings().cluster
    assert cluster.mode == "kubernetes"
    kube = cluster.kubernetes
    # The Dask pods run the worker's own image and read the same settings source.
    assert kube.image == container["image"]
    assert container["envFrom"] == [
        {"configMapRef": {"name": kube.settings_from, "optional": True}},
        {"secretRef": {"name": kube.settings_from, "optional": True}},
    ]


def test_worker_manifest_may_manage_dask_clusters_in_its_namespace() -> None:
    resources = _worker_manifest()
    account = resources["ServiceAccount"]["metadata"]["name"]
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account
    binding = resources["RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": resources["Role"]["metadata"]["name"],
    }
    granted = {
        (group, resource, verb)
        for rule in resources["Role"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for group, names in [
        ("kubernetes.dask.org", ["daskclusters", "daskworkergroups"]),
        ("", ["pods", "services"]),
    ]:
        for resource in names:
            for verb in ["create", "get", "list", "watch", "patch", "delete"]:
                assert (group, resource, verb) in granted
    # Non-root, as the user the image creates.
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    uid = re.search(r"useradd --uid (\d+)", dockerfile)
    assert uid is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid[1])
    assert "\nUSER kmflow\n" in dockerfile
