"""A real S3-compatible server on loopback (moto's standalone server) for ``s3://`` tests.

``s3_endpoint`` starts one :class:`moto.server.ThreadedMotoServer` on ``127.0.0.1`` and a
free port for the whole session and yields its URL; ``s3_bucket`` creates a fresh, uniquely
named bucket for one test and returns ``(bucket_url, storage_options)``, the options being
what s3fs needs to reach the server (see PITFALLS: no ``region_name`` in ``client_kwargs``;
the region comes from ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

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
