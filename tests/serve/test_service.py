"""``kmflow serve`` as clients see it: a real uvicorn process on 127.0.0.1, spoken to with httpx."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import pairwise_distances_argmin
from tests.serve.conftest import (
    API_KEY,
    BLOB_CENTERS,
    OTHER_KEY,
    PALETTE_RGB,
    Service,
    _register,
    customers,
)

from kmflow.jobs.palette.render import ColorHistogram, paint

PROBLEM = "application/problem+json"


def _problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert "Traceback" not in response.text
    return body


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def test_health_and_readiness_need_no_key(service: Service) -> None:
    with service.client(key=None) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["models"] == {"blobs": 1, "customers": 1, "palette": 1}
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("key", "detail"),
    [(None, "missing API key"), ("not-a-key-of-this-service", "invalid API key")],
)
@pytest.mark.parametrize(
    "path", ["/v1/models", "/v1/models/blobs", "/metrics", "/v1/models/blobs/predict"]
)
def test_every_keyed_route_refuses_a_request_without_a_right_key(
    service: Service, key: str | None, detail: str, path: str
) -> None:
    with service.client(key=key) as client:
        if path.endswith("/predict"):
            response = client.post(path, json={"rows": [[0, 0, 0, 0]]})
        else:
            response = client.get(path)
    body = _problem(response, 401)
    assert detail in body["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_either_configured_key_is_accepted(service: Service) -> None:
    for key in (API_KEY, OTHER_KEY):
        with service.client(key=key) as client:
            assert client.get("/v1/models").status_code == 200
    with service.client(key=None) as client:
        basic = client.get("/v1/models", headers={"Authorization": f"Basic {API_KEY}"})
    _problem(basic, 401)


def test_models_are_listed_with_their_served_version(service: Service) -> None:
    with service.client() as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert set(models) == {"blobs", "customers", "palette"}
        assert models["blobs"]["version"] == 1  # the champion, not the latest (v2)
        assert models["blobs"]["kind"] == "vectors"
        assert models["blobs"]["k"] == 4
        assert models["blobs"]["metrics"] == {"silhouette": 0.9, "note": None}  # NaN → null
        assert models["palette"]["kind"] == "palette"
        assert models["customers"]["kind"] == "segments"
        detail = client.get("/v1/models/customers")
        assert detail.headers["x-model-version"] == "1"
        body = detail.json()
        assert (
            body["preprocessing"]["type"]
            == service.registry.record("customers").preprocessing["type"]
        )
        assert "records" in body["inputs"]


def test_unknown_and_malformed_model_names(service: Service) -> None:
    with service.client() as client:
        assert "not served" in _problem(client.get("/v1/models/nope"), 404)["detail"]
        _problem(client.post("/v1/models/nope/predict", json={"rows": [[1.0]]}), 404)
        bad = _problem(client.get("/v1/models/-bad%20name"), 422)
        assert "name" in bad["detail"]


def test_predicted_rows_are_scikit_learns_nearest_centers(service: Service) -> None:
    rows = np.random.default_rng(1).normal(5, 5, (500, 4))
    with service.client() as client:
        response = client.post(
            "/v1/models/blobs/predict", json={"rows": rows.tolist(), "distances": True}
        )
    assert response.status_code == 200
    assert response.headers["x-model-version"] == "1"
    body = response.json()
    assert body["version"] == 1
    want = pairwise_distances_argmin(rows, BLOB_CENTERS)
    np.testing.assert_array_equal(body["segments"], want)
    np.testing.assert_allclose(
        body["distances"], np.linalg.norm(rows - BLOB_CENTERS[want], axis=1), rtol=1e-12
    )


def test_records_go_through_the_stored_preprocessing(service: Service) -> None:
    table = customers(200, seed=7)
    model = service.registry.load("customers", 1)
    want = model.predict(table)
    records = json.loads(table.to_json(orient="records"))
    with service.client() as client:
        response = client.post("/v1/models/customers/predict", json={"records": records})
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(response.json()["segments"], want)
        assert "distances" not in response.json()
        prepared = np.asarray(model.transform(table))
        rows = client.post("/v1/models/customers/predict", json={"rows": prepared.tolist()})
        np.testing.assert_array_equal(rows.json()["segments"], want)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"rows": [[0, 0, 0]]}, "4 numbers each"),
        ({"rows": [[0, 0, 0, 0], [1, 2]]}, "row 1 has 2"),
        ({"rows": [[1e200, 0, 0, 0]]}, "overflow"),
        ({"rows": [[0, 0, 0, 0]], "records": [{"spend": 1}]}, "exactly one"),
        ({}, "exactly one"),
        ({"rows": []}, "no records or rows"),
        ({"rows": [["a", 0, 0, 0]]}, "number"),
        ({"rows": [[0, 0, 0, 0]], "extra": 1}, "extra"),
        ({"records": [{"spend": 1.0}]}, "not 'records'"),
    ],
)
def test_predict_refuses_bad_input_with_a_specific_problem(
    service: Service, payload: dict, needle: str
) -> None:
    with service.client() as client:
        body = _problem(client.post("/v1/models/blobs/predict", json=payload), 422)
    assert needle in json.dumps(body)


def test_predict_refuses_nan_records_and_wrong_columns(service: Service) -> None:
    with service.client() as client:
        nan = client.post(
            "/v1/models/blobs/predict",
            content=b'{"rows": [[NaN, 0, 0, 0]]}',
            headers={"content-type": "application/json"},
        )
        _problem(nan, 422)
        missing = client.post("/v1/models/customers/predict", json={"records": [{"spend": 3}]})
        assert "visits" in _problem(missing, 422)["detail"]
        malformed = client.post(
            "/v1/models/blobs/predict",
            content=b'{"rows": [[0, 0',
            headers={"content-type": "application/json"},
        )
        _problem(malformed, 422)
        text = client.post(
            "/v1/models/blobs/predict",
            content=b'{"rows": [[0, 0, 0, 0]]}',
            headers={"content-type": "text/plain"},
        )
        assert "application/json" in _problem(text, 415)["detail"]


def test_bodies_over_the_limit_are_refused_while_read(service: Service) -> None:
    big = json.dumps({"rows": [[0.123456789] * 4] * 40_000}).encode()  # ~1.6 MB > 1 MiB
    with service.client() as client:
        declared = client.post(
            "/v1/models/blobs/predict", content=big, headers={"content-type": "application/json"}
        )
        assert "over the limit of 1,048,576 bytes" in _problem(declared, 413)["detail"]

        def chunks():  # no Content-Length: counted as it arrives
            for i in range(0, len(big), 64 * 1024):
                yield big[i : i + 64 * 1024]

        streamed = client.post(
            "/v1/models/blobs/predict",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert "over the limit" in _problem(streamed, 413)["detail"]
        upload = client.post(
            "/v1/models/palette/quantize", files={"file": ("big.png", b"\0" * (2**20 + 10))}
        )
        _problem(upload, 413)
        assert client.get("/healthz").status_code == 200


def test_quantize_paints_with_the_models_palette(service: Service) -> None:
    rng = np.random.default_rng(3)
    base = PALETTE_RGB[rng.integers(0, 8, (48, 64))]
    rgb = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    with service.client() as client:
        response = client.post(
            "/v1/models/palette/quantize", files={"file": ("photo.png", _png(rgb), "image/png")}
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-version"] == "1"
    out = _decode(response.content)
    assert out.shape == rgb.shape
    want = paint(
        ColorHistogram.of(rgb.reshape(-1, 3)),
        48,
        64,
        PALETTE_RGB,
        PALETTE_RGB.astype(np.uint8),
        "rgb",
    )
    np.testing.assert_array_equal(out, _decode(want.png))
    np.testing.assert_array_equal(out.reshape(-1, 3), base.reshape(-1, 3))  # noise removed
    assert float(response.headers["x-psnr-db"]) == pytest.approx(want.psnr, abs=1e-4)


def test_quantize_with_a_per_image_palette(service: Service) -> None:
    rng = np.random.default_rng(4)
    colors = np.array([[10, 200, 30], [200, 10, 90], [40, 40, 250]], dtype=np.uint8)
    rgb = colors[rng.integers(0, 3, (40, 40))]
    with service.client() as client:
        response = client.post(
            "/v1/models/palette/quantize",
            params={"k": 3},
            files={"file": ("three.png", _png(rgb), "image/png")},
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-palette"] == "image"
    np.testing.assert_array_equal(_decode(response.content), rgb)  # its own 3 colors, exactly


def test_quantize_refuses_corrupt_oversized_and_wrong_kind(service: Service) -> None:
    good = _png(np.zeros((20, 20, 3), np.uint8))
    with service.client() as client:
        corrupt = client.post("/v1/models/palette/quantize", files={"file": ("x.png", good[:40])})
        assert "corrupt" in _problem(corrupt, 422)["detail"]
        junk = client.post("/v1/models/palette/quantize", files={"file": ("x.png", b"hello")})
        assert "not an image" in _problem(junk, 422)["detail"]
        huge = _png(np.zeros((1500, 1500, 3), np.uint8))  # 2.25 MP, a few kB of PNG
        over = client.post("/v1/models/palette/quantize", files={"file": ("big.png", huge)})
        assert "over the limit of 2,000,000" in _problem(over, 413)["detail"]
        kind = client.post("/v1/models/blobs/quantize", files={"file": ("x.png", good)})
        assert "needs a palette" in _problem(kind, 422)["detail"]
        _problem(client.post("/v1/models/palette/quantize"), 422)  # no file at all
        _problem(
            client.post("/v1/models/palette/quantize", params={"k": 0}, files={"file": good}),
            422,
        )


def test_metrics_count_requests_errors_and_versions(service: Service) -> None:
    with service.client() as client:
        for _ in range(3):
            client.post("/v1/models/blobs/predict", json={"rows": [[0, 0, 0, 0]]})
        with service.client(key=None) as anonymous:
            anonymous.get("/v1/models")
        text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    predict = (
        "kmflow_http_requests_total",
        (("method", "POST"), ("route", "/v1/models/{name}/predict"), ("status", "200")),
    )
    assert samples[predict] >= 3
    unauthorized = ("kmflow_http_errors_total", (("route", "/v1/models"), ("status", "401")))
    assert samples[unauthorized] >= 1
    assert samples[("kmflow_model_version_served", (("model", "blobs"),))] == 1
    buckets = [
        v
        for (name, labels), v in samples.items()
        if name == "kmflow_http_request_duration_seconds_count"
        and ("route", "/v1/models/{name}/predict") in labels
    ]
    assert buckets
    assert buckets[0] >= 3


def test_the_kubernetes_manifest_probes_these_endpoints(service: Service) -> None:
    """deploy/serve.yaml: probes on /healthz and /readyz answer 200 with no key; the command
    is one `kmflow serve` accepts; its literal settings are valid; keys come from a Secret."""
    import yaml
    from typer.main import get_command

    from kmflow.cli import app
    from kmflow.config import get_settings

    manifest = Path(__file__).parents[2] / "deploy" / "serve.yaml"
    resources = {d["kind"]: d for d in yaml.safe_load_all(manifest.read_text()) if d}
    assert set(resources) == {"Deployment", "Service"}
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["kmflow", "serve"]
    serve = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    parsed = serve.make_context("serve", list(command[2:])).params
    assert parsed["host"] == "0.0.0.0"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert parsed["port"] == port
    with service.client(key=None) as client:
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] == "http"
            assert client.get(get["path"]).status_code == 200
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"secretRef": {"name": "kmflow-serve"}} in container["envFrom"]
    literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in literal.items():
            mp.setenv(name, value)
        settings = get_settings().serve
    assert settings.refresh_seconds == float(literal["KMFLOW_SERVE__REFRESH_SECONDS"])
    ports = resources["Service"]["spec"]["ports"]
    assert ports == [{"name": "http", "port": 80, "targetPort": "http"}]
    labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert resources["Service"]["spec"]["selector"] == labels


def test_records_a_drop_model_would_drop_are_refused_not_misaligned(
    service: Service, tmp_path: Path
) -> None:
    """A model fitted with missing="drop" drops records with blanks; the answer would have
    fewer segments than records, so it is a 422 naming how many, never a shifted list."""
    import time

    import dask

    from kmflow.jobs.segments.prepare import fit_preprocessing, plan_columns
    from kmflow.storage.tables import read_table

    table = customers(200, seed=11)
    path = tmp_path / "train.csv"
    table.to_csv(path, index=False)
    with dask.config.set(scheduler="synchronous"):
        frame = read_table(str(path))
        prep = fit_preprocessing(frame, plan_columns(frame, id="customer_id"), missing="drop")
    centers = np.asarray(prep.transform(table), dtype=np.float64)[:3]
    version = _register(
        service.registry,
        "dropper",
        centers,
        kind="segments",
        preprocessing=prep.to_json(),
        arrays=prep.arrays(),
    )
    service.registry.promote("dropper", version)
    records = json.loads(table.head(4).to_json(orient="records"))
    records[1]["spend"] = None
    with service.client() as client:
        deadline = time.monotonic() + 30
        while client.get("/v1/models/dropper").status_code != 200:
            assert time.monotonic() < deadline, "the new model was never served"
            time.sleep(0.2)
        full = client.post("/v1/models/dropper/predict", json={"records": records[:1]})
        assert full.status_code == 200, full.text
        refused = client.post("/v1/models/dropper/predict", json={"records": records})
    assert "1 of 4 records have missing values" in _problem(refused, 422)["detail"]
