"""Dask clusters: connect to one, and ask what the current one can hold.

This is the only part of kmflow that imports ``distributed``. Three modes, chosen by
:class:`kmflow.config.ClusterSettings`:

``local`` (default)
    Start a multi-process :class:`distributed.LocalCluster` on this machine; closing the
    client also closes the cluster.
``address``
    Connect to an already running Dask scheduler; closing the client leaves it running.
``kubernetes``
    Create a Dask cluster in Kubernetes through the dask-kubernetes operator (a
    ``DaskCluster`` resource built from :class:`kmflow.config.KubernetesSettings`, see
    :mod:`kmflow.cluster.kubernetes`); closing the client deletes it unless
    ``shutdown_on_close`` is False.

Examples
--------
>>> from kmflow.cluster import connect
>>> with connect() as client:  # doctest: +SKIP
...     client.scheduler_info()["n_workers"]
"""

from __future__ import annotations

import logging

from distributed import Client

from kmflow.cluster.kubernetes import start_kube_cluster
from kmflow.cluster.local import start_local_cluster
from kmflow.cluster.remote import connect_to_scheduler
from kmflow.cluster.resources import has_distributed_client, memory_budget, scatter_rows
from kmflow.config import ClusterSettings, Settings, get_settings
from kmflow.errors import ClusterError

__all__ = ["connect", "has_distributed_client", "memory_budget", "scatter_rows"]

logger = logging.getLogger(__name__)


def connect(settings: Settings | ClusterSettings | None = None) -> Client:
    """Connect to the Dask cluster the settings describe, starting it if it is local.

    Parameters
    ----------
    settings : Settings or ClusterSettings, optional
        Where and how to compute. ``None`` reads :func:`kmflow.config.get_settings`
        (defaults plus ``KMFLOW_CLUSTER__*`` environment variables).

    Returns
    -------
    distributed.Client
        A connected client, set as Dask's default so ``.compute()`` runs on the cluster.
        Use it as a context manager, ``with connect() as client: ...``, or call
        ``client.close()``. For mode ``'local'`` closing the client also shuts down the
        cluster it started; for mode ``'address'`` the remote cluster keeps running; for
        mode ``'kubernetes'`` the ``DaskCluster`` and its pods are deleted when
        ``kubernetes.shutdown_on_close`` is True (the default).

    Raises
    ------
    ClusterError
        If a local cluster cannot start, the scheduler at ``settings.address`` cannot be
        reached within ``connect_timeout`` seconds, or the Kubernetes cluster cannot be
        created or is not ready within ``kubernetes.start_timeout`` seconds (no
        credentials, API server unreachable, operator not installed, pods not starting: the
        message says which and what to check).

    Notes
    -----
    A local cluster with ``processes=True`` starts worker processes; a script that calls
    ``connect()`` at import time must do so under ``if __name__ == "__main__":``.
    """
    cluster_settings = _cluster_settings(settings)
    mode = cluster_settings.mode
    if mode == "local":
        return start_local_cluster(cluster_settings)
    if mode == "address":
        return connect_to_scheduler(cluster_settings)
    if mode == "kubernetes":
        return start_kube_cluster(cluster_settings)
    raise ClusterError(f"unknown cluster mode {mode!r}")  # unreachable with valid settings


def _cluster_settings(settings: Settings | ClusterSettings | None) -> ClusterSettings:
    """Pick the cluster group out of whatever the caller passed."""
    if settings is None:
        return get_settings().cluster
    if isinstance(settings, Settings):
        return settings.cluster
    if isinstance(settings, ClusterSettings):
        return settings
    raise TypeError(
        f"settings must be Settings, ClusterSettings or None, not {type(settings).__name__}"
    )
