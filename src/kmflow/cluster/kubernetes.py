"""Mode ``kubernetes``: a Dask cluster created in Kubernetes by the dask-kubernetes operator.

The cluster is a ``DaskCluster`` resource (``kubernetes.dask.org/v1``) built from
:class:`kmflow.config.KubernetesSettings` by :func:`cluster_spec`. The operator's controller,
installed once per Kubernetes cluster (``deploy/README.md``), turns it into a scheduler pod
and Service and a group of worker pods. :func:`start_kube_cluster` creates it through
:class:`dask_kubernetes.operator.KubeCluster` and returns a client that owns it;
:func:`render_manifest` writes the same resource as YAML for ``kubectl apply``
(``deploy/dask-cluster.yaml`` is the one for the default settings).

Nothing here talks to Kubernetes at import time; dask_kubernetes is imported when first needed.

Examples
--------
>>> from kmflow.cluster.kubernetes import cluster_spec
>>> from kmflow.config import KubernetesSettings
>>> spec = cluster_spec(KubernetesSettings(n_workers=4))
>>> spec["kind"], spec["metadata"], spec["spec"]["worker"]["replicas"]
('DaskCluster', {'name': 'kmflow', 'namespace': 'default'}, 4)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from typing import Any

import yaml
from dask.typing import no_default
from distributed import Client
from distributed.utils import LoopRunner, sync
from tornado.ioloop import IOLoop

from kmflow.cluster.local import WORKER_MALLOC_ENV
from kmflow.config import ClusterSettings, KubernetesSettings, get_settings
from kmflow.errors import ClusterError

__all__ = [
    "OPERATOR_API_VERSION",
    "OPERATOR_INSTALL_COMMAND",
    "cluster_spec",
    "render_manifest",
    "start_kube_cluster",
]

logger = logging.getLogger(__name__)

#: API group/version of the operator's custom resources (served once its CRDs are installed).
OPERATOR_API_VERSION = "kubernetes.dask.org/v1"
#: How the dask-kubernetes operator is installed (CRDs and controller), once per cluster.
OPERATOR_INSTALL_COMMAND = (
    "helm install --repo https://helm.dask.org --create-namespace -n dask-operator "
    "--generate-name dask-kubernetes-operator"
)
# distributed no longer ships the `dask-scheduler` / `dask-worker` scripts that
# make_cluster_spec puts in the containers' args; `dask scheduler` / `dask worker` replace them.
_SCHEDULER_ARGS = ["dask", "scheduler", "--host", "0.0.0.0"]
_WORKER_COMMAND = "dask worker"
_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

_MANIFEST_HEADER = (
    "# DaskCluster resource for the dask-kubernetes operator, written by\n"
    "# kmflow.cluster.kubernetes.render_manifest() from kmflow's settings\n"
    "# (KMFLOW_CLUSTER__KUBERNETES__*). In cluster mode 'kubernetes' kmflow creates the same\n"
    "# resource itself; apply this file only to run the cluster outside kmflow.\n"
    "# deploy/dask-cluster.yaml is the output for the default settings. Regenerate it from the\n"
    "# repository root with no KMFLOW_* variables set:\n"
    '#   python -c "from kmflow.cluster.kubernetes import render_manifest; '
    "print(render_manifest(), end='')\" > deploy/dask-cluster.yaml\n"
    "# tests/cluster/test_kubernetes.py fails when that file and the code disagree.\n"
)


def cluster_spec(
    settings: ClusterSettings | KubernetesSettings | None = None,
) -> dict[str, Any]:
    """The ``DaskCluster`` resource the settings describe.

    Parameters
    ----------
    settings : ClusterSettings or KubernetesSettings, optional
        ``None`` reads ``get_settings().cluster.kubernetes`` (defaults plus
        ``KMFLOW_CLUSTER__KUBERNETES__*`` environment variables).

    Returns
    -------
    dict
        A fresh, JSON-compatible dict: ``apiVersion`` ``kubernetes.dask.org/v1``, ``kind``
        ``DaskCluster``, ``metadata`` (``name`` as given, whatever ``unique_name`` says:
        :func:`start_kube_cluster` adds the suffix, ``namespace``) and ``spec`` with the
        scheduler pod and Service and ``worker.replicas`` worker pods, all running
        ``image``. Built with :func:`dask_kubernetes.operator.make_cluster_spec`, then:

        - CPU and memory requests equal to limits, ``worker_*`` on the worker container and
          ``scheduler_*`` on the scheduler container;
        - the containers started with ``dask scheduler`` / ``dask worker``;
        - :data:`~kmflow.cluster.local.WORKER_MALLOC_ENV` (glibc malloc settings that keep
          freed memory for the next task's arrays) and ``env``, which wins, as container
          environment variables (sorted by name), and, unless
          ``settings_from`` is None, ``envFrom`` the ConfigMap and the Secret of that name,
          both optional, so that the pods read kmflow's ``KMFLOW_*`` settings (storage
          options, credentials) from the same place as the flow's own pod.

    Notes
    -----
    Needs no Kubernetes cluster: nothing is sent anywhere.
    """
    kube = _kubernetes_settings(settings)
    from dask_kubernetes.operator import make_cluster_spec

    spec = make_cluster_spec(
        name=kube.name,
        image=kube.image,
        n_workers=kube.n_workers,
        resources=_resources(kube.worker_cpu, kube.worker_memory),
        env=dict(sorted({**WORKER_MALLOC_ENV, **kube.env}.items())),
        worker_command=_WORKER_COMMAND,
        idle_timeout=kube.idle_timeout,
    )
    spec["metadata"]["namespace"] = kube.namespace
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    scheduler["args"] = list(_SCHEDULER_ARGS)
    scheduler["resources"] = _resources(kube.scheduler_cpu, kube.scheduler_memory)
    if kube.settings_from is not None:
        for container in (scheduler, worker):
            container["envFrom"] = [
                {"configMapRef": {"name": kube.settings_from, "optional": True}},
                {"secretRef": {"name": kube.settings_from, "optional": True}},
            ]
    # A JSON round trip leaves no object shared between the scheduler and worker parts
    # (YAML would write those as anchors and aliases) and proves the API could take it.
    result: dict[str, Any] = json.loads(json.dumps(spec))
    return result


def render_manifest(settings: ClusterSettings | KubernetesSettings | None = None) -> str:
    """The ``DaskCluster`` resource of :func:`cluster_spec` as a YAML manifest.

    Parameters
    ----------
    settings : ClusterSettings or KubernetesSettings, optional
        As for :func:`cluster_spec`.

    Returns
    -------
    str
        A comment header saying what wrote it, then the resource as YAML with keys in
        sorted order (``apiVersion``, ``kind``, ``metadata``, ``spec`` at the top), so the
        same settings always give the same text. ``yaml.safe_load`` of it equals
        ``cluster_spec(settings)``; ``kubectl apply -f`` takes it as it is.
    """
    body = yaml.safe_dump(cluster_spec(settings), sort_keys=True, default_flow_style=False)
    return _MANIFEST_HEADER + body


def start_kube_cluster(settings: ClusterSettings) -> Client:
    """Create the Dask cluster ``settings.kubernetes`` describes and return a client that owns it.

    Parameters
    ----------
    settings : ClusterSettings
        ``settings.kubernetes`` describes the cluster and how long to wait for it. With
        ``unique_name`` (the default) the cluster is named ``<name>-<8 hex digits>``, a
        new name for each call.

    Returns
    -------
    distributed.Client
        Connected to the new cluster's scheduler once ``n_workers`` workers have joined,
        and set as Dask's default. Closing it (or leaving a ``with`` block) also closes the
        :class:`~dask_kubernetes.operator.KubeCluster`, which deletes the ``DaskCluster``
        and its pods when ``shutdown_on_close`` is True and leaves them running otherwise.

    Raises
    ------
    ClusterError
        If no Kubernetes credentials are found (no kubeconfig, not in a pod with a service
        account), the API server cannot be reached within ``resource_timeout`` seconds, it
        does not serve the operator's ``kubernetes.dask.org/v1`` resources, the resource
        cannot be created (namespace missing, permissions), or the cluster is not ready
        within ``start_timeout`` seconds. The message says what to check. A cluster that
        was created but did not come up is closed first (deleted if ``shutdown_on_close``).

    Notes
    -----
    Credentials are looked up as kubectl does: ``$KUBECONFIG`` or ``~/.kube/config``, else
    the pod's service account. With ``unique_name=False``, if a ``DaskCluster`` named
    ``name`` already exists in the namespace, the client connects to it instead of creating
    another; its size stays as it is, and this still waits for ``n_workers`` workers.

    The cluster is started on an event loop in a thread of its own, so the whole start can
    be bounded by ``start_timeout`` and cancelled cleanly: dask-kubernetes by itself waits
    without limit for a scheduler pod that never runs (an image that cannot be pulled, a
    pod that does not fit on any node).
    """
    kube = settings.kubernetes
    if kube.unique_name:
        kube = kube.model_copy(update={"name": f"{kube.name}-{secrets.token_hex(4)}"})
    spec = cluster_spec(kube)
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as exc:  # a dependency of kmflow: only a broken install gets here
        raise ClusterError(
            f"cluster mode 'kubernetes' needs dask-kubernetes, which does not import: {exc}"
        ) from exc
    runner = LoopRunner(asynchronous=False)
    runner.start()
    try:
        cluster = sync(runner.loop, _create_cluster, KubeCluster, spec, kube)
    except ClusterError:
        runner.stop()
        raise
    except Exception as exc:
        runner.stop()
        raise ClusterError(_creation_failed_message(kube, exc)) from exc
    try:
        client = _ClusterOwningClient(
            cluster, loop_runner=runner, close_timeout=kube.resource_timeout
        )
    except Exception as exc:
        _close_cluster(cluster, kube.resource_timeout)
        runner.stop()
        raise ClusterError(
            f"the Dask cluster {kube.name!r} in namespace {kube.namespace!r} started but "
            f"no client could connect to its scheduler at {cluster.scheduler_address}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    logger.info(
        "started Dask cluster %r in Kubernetes namespace %r: scheduler %s, %d workers "
        "(%s CPU, %s memory each), image %s",
        kube.name,
        kube.namespace,
        cluster.scheduler_address,
        kube.n_workers,
        kube.worker_cpu,
        kube.worker_memory,
        kube.image,
    )
    return client


class _ClusterOwningClient(Client):
    """A client that, when closed, closes its cluster and stops the loop thread it runs on.

    ``Client(n_workers=...)`` owns the LocalCluster it starts in the same way; a client
    given a cluster object does not, hence this subclass.
    """

    def __init__(self, cluster: Any, *, loop_runner: LoopRunner, close_timeout: float) -> None:
        # Set before Client.__init__, whose failure can reach close() through __del__.
        self._owned_cluster = cluster
        self._owned_loop_runner = loop_runner
        self._close_timeout = close_timeout
        super().__init__(cluster)

    def close(self, timeout: Any = no_default) -> Any:
        try:
            return super().close(timeout=timeout)
        finally:
            _close_cluster(self._owned_cluster, self._close_timeout)
            self._owned_loop_runner.stop()


def _close_cluster(cluster: Any, timeout: float) -> None:
    """Close a running cluster from outside its loop; log instead of raising."""
    if cluster.status.name in ("closing", "closed"):
        return
    try:
        cluster.close(timeout=timeout)
    except Exception as exc:
        logger.warning(
            "closing Dask cluster %r failed (%s: %s); check `kubectl get daskclusters` "
            "for a cluster left running",
            cluster.name,
            type(exc).__name__,
            exc,
        )


async def _create_cluster(
    kube_cluster_class: Any, spec: dict[str, Any], kube: KubernetesSettings
) -> Any:
    """Check the API, create the cluster and wait for it, on the loop it will live on."""
    await _check_api(kube)
    cluster = kube_cluster_class(
        custom_cluster_spec=spec,
        namespace=kube.namespace,
        shutdown_on_close=kube.shutdown_on_close,
        resource_timeout=kube.resource_timeout,
        quiet=True,
        asynchronous=True,
        loop=IOLoop.current(),
    )
    try:
        async with asyncio.timeout(kube.start_timeout) as deadline:
            await cluster
            if kube.n_workers:
                await cluster.wait_for_workers(kube.n_workers)
    except BaseException as exc:
        # Also on cancellation (Ctrl-C in the caller): a half-started cluster is deleted.
        await _discard(cluster, kube)
        if isinstance(exc, TimeoutError) and deadline.expired():
            raise ClusterError(_not_ready_message(kube)) from exc
        raise
    return cluster


async def _discard(cluster: Any, kube: KubernetesSettings) -> None:
    """Close a cluster that failed to start (deleting it when shutdown_on_close)."""
    try:
        await asyncio.wait_for(
            cluster.close(timeout=kube.resource_timeout), 2 * kube.resource_timeout
        )
    except Exception as exc:
        logger.warning(
            "could not clean up Dask cluster %r in namespace %r after a failed start "
            "(%s: %s); check `kubectl get daskclusters -n %s`",
            kube.name,
            kube.namespace,
            type(exc).__name__,
            exc,
            kube.namespace,
        )


async def _check_api(kube: KubernetesSettings) -> None:
    """Fail fast, with what to check, unless the API answers and serves the operator's CRDs.

    Also gives kr8s (which dask-kubernetes uses on this loop) a per-request timeout: it has
    none by default, so an unreachable API server would otherwise stall each request for as
    long as the operating system takes to give up on the connection.
    """
    import kr8s.asyncio

    timeout = kube.resource_timeout
    try:
        async with asyncio.timeout(timeout):
            api = await kr8s.asyncio.api()
            api.timeout = timeout
            versions = [version async for version in api.api_versions()]
    except Exception as exc:
        # kr8s reports missing or unusable credentials (no kubeconfig, no current context, no
        # service account) as ValueError; a reply that is not JSON is another matter.
        if isinstance(exc, ValueError) and not isinstance(exc, json.JSONDecodeError):
            raise ClusterError(_no_credentials_message(kube, exc)) from exc
        url = _request_url(exc)
        where = f" at {url}" if url else ""
        if isinstance(exc, TimeoutError | kr8s.APITimeoutError):
            failure = f"no answer within resource_timeout={timeout} s"
        else:
            failure = f"{type(exc).__name__}: {exc}"
        raise ClusterError(
            f"cluster mode 'kubernetes' could not talk to the Kubernetes API server{where} "
            f"({failure}). Check that "
            "`kubectl version` works here: the kubeconfig's current context "
            "(`kubectl config current-context`), the network path to the API server, or, "
            "in a pod, its service account token."
        ) from exc
    if OPERATOR_API_VERSION not in versions:
        raise ClusterError(
            f"the Kubernetes API server at {api.auth.server} does not serve "
            f"{OPERATOR_API_VERSION}: the dask-kubernetes operator (its DaskCluster CRDs and "
            "controller) is not installed in this Kubernetes cluster. Install it once with "
            f"`{OPERATOR_INSTALL_COMMAND}` (see deploy/README.md)."
        )


def _request_url(exc: BaseException) -> str | None:
    """The URL of the failed HTTP request behind `exc`, if there is one."""
    import httpx

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.RequestError):
            try:
                return str(seen.request.url)
            except RuntimeError:  # no request attached
                return None
        seen = seen.__cause__ or seen.__context__
    return None


def _no_credentials_message(kube: KubernetesSettings, exc: BaseException) -> str:
    kubeconfig = os.environ.get("KUBECONFIG")
    where = f"KUBECONFIG={kubeconfig!r}" if kubeconfig else "~/.kube/config (KUBECONFIG unset)"
    return (
        f"cluster mode 'kubernetes' found no usable Kubernetes credentials ({exc}): no "
        f"kubeconfig with a current context at {where}, and not in a pod with a service "
        f"account token ({_SERVICE_ACCOUNT_DIR}). Run where `kubectl get pods -n "
        f"{kube.namespace}` works, or in a pod whose service account may manage "
        f"DaskClusters, pods and services in namespace {kube.namespace!r} "
        "(deploy/prefect-worker.yaml)."
    )


def _creation_failed_message(kube: KubernetesSettings, exc: BaseException) -> str:
    return (
        f"could not create the Dask cluster {kube.name!r} in Kubernetes namespace "
        f"{kube.namespace!r} ({type(exc).__name__}: {exc}). Check that the namespace exists "
        f"(`kubectl get namespace {kube.namespace}`), that this identity may manage "
        "DaskClusters, pods and services there (`kubectl auth can-i create "
        f"daskclusters.kubernetes.dask.org -n {kube.namespace}`), and that the operator's "
        "controller is running (`kubectl get pods -A -l "
        "app.kubernetes.io/name=dask-kubernetes-operator`)."
    )


def _not_ready_message(kube: KubernetesSettings) -> str:
    fate = (
        "it has been deleted"
        if kube.shutdown_on_close
        else "it was left running (shutdown_on_close=False)"
    )
    workers = f", {kube.n_workers} workers joined" if kube.n_workers else ""
    return (
        f"the Dask cluster {kube.name!r} in Kubernetes namespace {kube.namespace!r} was not "
        f"ready within start_timeout={kube.start_timeout:g} s (scheduler pod running and "
        f"reachable{workers}); {fate}. Look at `kubectl get pods -n {kube.namespace} -l "
        f"dask.org/cluster-name={kube.name}` and `kubectl describe pod`: Pending pods lack "
        f"CPU or memory (worker_cpu={kube.worker_cpu!r}, worker_memory="
        f"{kube.worker_memory!r}), ImagePullBackOff means the nodes cannot pull image "
        f"{kube.image!r}, CrashLoopBackOff shows in `kubectl logs`."
    )


def _resources(cpu: str, memory: str) -> dict[str, dict[str, str]]:
    """Requests equal to limits (Guaranteed QoS): Dask sizes a worker by its limits."""
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }


def _kubernetes_settings(
    settings: ClusterSettings | KubernetesSettings | None,
) -> KubernetesSettings:
    """Pick the Kubernetes group out of whatever the caller passed."""
    if settings is None:
        return get_settings().cluster.kubernetes
    if isinstance(settings, ClusterSettings):
        return settings.kubernetes
    if isinstance(settings, KubernetesSettings):
        return settings
    raise TypeError(
        "settings must be ClusterSettings, KubernetesSettings or None, not "
        f"{type(settings).__name__}"
    )
