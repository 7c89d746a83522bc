"""Mode ``address``: a client to a Dask scheduler that is already running."""

from __future__ import annotations

import logging

from distributed import Client
from distributed.comm import get_address_host_port

from kmflow.config import ClusterSettings
from kmflow.errors import ClusterError

__all__ = ["connect_to_scheduler"]

logger = logging.getLogger(__name__)


def connect_to_scheduler(settings: ClusterSettings) -> Client:
    """Connect to the scheduler at ``settings.address``.

    Parameters
    ----------
    settings : ClusterSettings
        ``address`` and ``connect_timeout`` (seconds) are used.

    Returns
    -------
    distributed.Client
        Closing it disconnects; the remote cluster keeps running.

    Raises
    ------
    ClusterError
        If ``address`` is unset or malformed, or no scheduler answers there within
        ``connect_timeout`` seconds.
    """
    address = settings.address
    if address is None:
        raise ClusterError("mode='address' needs a scheduler address (KMFLOW_CLUSTER__ADDRESS)")
    timeout = settings.connect_timeout
    # Check the syntax first: distributed leaves a half-started client registered as the
    # default (and dask's scheduler set to it) when Client() fails on a malformed address.
    try:
        get_address_host_port(address)
    except ValueError as exc:
        raise ClusterError(
            f"scheduler address {address!r} is malformed ({exc}); expected a form such as "
            "'tcp://10.0.0.5:8786'"
        ) from exc
    try:
        client = Client(address, timeout=timeout)  # type: ignore[no-untyped-call]
    except (OSError, ValueError, TimeoutError) as exc:
        raise ClusterError(
            f"could not connect to the Dask scheduler at {address!r} within {timeout:g} s: {exc}"
        ) from exc
    info = client.scheduler_info(n_workers=-1)
    logger.info(
        "connected to Dask scheduler at %s (%d workers)", address, len(info.get("workers", {}))
    )
    return client
