"""The service follows the champion: a promotion is served within seconds, with no failed
request and no restart; readiness waits for a champion; the request timeout; the CLI's
one-line refusals before anything listens."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.serve.conftest import (
    BLOB_CENTERS,
    Service,
    _register,
    build_registry,
    free_port,
    start_service,
    stop_service,
)
from tests.test_cli import run_cli

from kmflow.storage.registry import ModelRegistry


def test_a_promotion_is_served_within_seconds_while_clients_send(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    _register(registry, "fresh", BLOB_CENTERS)  # registered, never promoted
    service = start_service(tmp_path, registry, "--models", "blobs,fresh", ready="/healthz")
    try:
        with service.client() as client:
            waiting = client.get("/readyz")
            assert waiting.status_code == 503
            assert "fresh" in waiting.json()["detail"]
            assert "no champion yet" in waiting.json()["detail"]
            assert client.get("/v1/models/fresh").status_code == 404
        _promote_under_load(service, registry)
        # the name without a champion becomes ready once promoted (through the Python API)
        registry.promote("fresh", 1)
        with service.client() as client:
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "fresh never became ready"
                time.sleep(0.2)
            assert client.get("/readyz").json()["models"] == {"blobs": 2, "fresh": 1}
    finally:
        stop_service(service)


def _promote_under_load(service: Service, registry: ModelRegistry) -> None:
    """4 clients predict the blob centers themselves; v2's centers are v1's + 0.5, so each
    answer's distances tell which version computed it."""
    seen: list[list[tuple[float, int, int, float]]] = [[] for _ in range(4)]
    failures: list[str] = []
    stop = threading.Event()

    def client_loop(i: int) -> None:
        with service.client() as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        "/v1/models/blobs/predict",
                        json={"rows": BLOB_CENTERS.tolist(), "distances": True},
                    )
                except Exception as exc:  # a refused or dropped connection is a failure too
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                body = r.json()
                seen[i].append(
                    (
                        time.monotonic(),
                        body["version"],
                        int(r.headers["x-model-version"]),
                        max(body["distances"]),
                    )
                )

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        promoted = run_cli(
            "models", "promote", "blobs", "2", env={"KMFLOW_REGISTRY__URL": registry.url}
        )
        assert promoted.returncode == 0, promoted.stderr
        at = time.monotonic()
        deadline = at + 20
        while not all(s and s[-1][1] == 2 for s in seen):
            assert time.monotonic() < deadline, "the promotion was not served within 20 s"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == []
    for answers in seen:
        versions = [v for _, v, _, _ in answers]
        assert versions[0] == 1
        assert versions == sorted(versions)  # never back to v1 once v2 answered
        for _, version, header, distance in answers:
            assert header == version
            # v1 answers from v1's centers (distance 0), v2 from v2's (0.5 * sqrt(4) = 1)
            assert distance == pytest.approx(0.0 if version == 1 else 1.0, abs=1e-12)
        first_v2 = next(t for t, v, _, _ in answers if v == 2)
        assert first_v2 - at < 10  # refresh every 0.5 s: well within "a few seconds"


def test_a_request_over_the_timeout_is_answered_503(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    service = start_service(
        tmp_path,
        registry,
        "--models",
        "palette",
        env={"KMFLOW_SERVE__REQUEST_TIMEOUT": "0.01"},
    )
    try:
        rgb = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
        with service.client() as client:
            slow = client.post(
                "/v1/models/palette/quantize",
                params={"k": 64},
                files={"file": ("noise.png", buf.getvalue())},
            )
            assert slow.status_code == 503
            assert "KMFLOW_SERVE__REQUEST_TIMEOUT" in slow.json()["detail"]
            assert client.get("/healthz").status_code == 200
    finally:
        stop_service(service)


def test_the_cli_refuses_in_one_line_before_listening(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "registry"))
    _register(registry, "blobs", BLOB_CENTERS)
    env = {"KMFLOW_REGISTRY__URL": registry.url}
    port = str(free_port())
    cases = [
        ((), {}, "no API keys"),
        (("--no-auth", "--models", "blobs,nope"), {}, "model 'nope' is not in the registry"),
        ((), {"KMFLOW_SERVE__API_KEYS": '["short"]'}, "shorter than 16 characters"),
        (("--no-auth", "--port", "70000"), {}, "65535"),
    ]
    for args, extra, needle in cases:
        result = run_cli("serve", "--port", port, *args, env={**env, **extra}, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert needle in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        result = run_cli("serve", "--no-auth", "--port", busy, env=env)
    assert result.returncode == 2
    assert "is in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
