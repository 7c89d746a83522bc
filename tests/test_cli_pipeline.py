"""``kmflow pipeline`` and ``kmflow models``, run as a user runs them (subprocesses).

``kmflow pipeline`` runs the Prefect flow in ephemeral mode: no PREFECT_API_URL, Prefect starts
a temporary local server by itself (here with a temporary PREFECT_HOME).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images
from tests.test_cli import run_cli

from kmflow.storage.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli-pipeline")
    china, flower = load_sample_images().images
    photos = root / "photos"
    (photos / "trip").mkdir(parents=True)
    Image.fromarray(china[50:130, 100:220]).save(photos / "trip" / "temple.png")
    Image.fromarray(flower[120:200, 200:300]).save(photos / "flower.png")
    env = {
        "KMFLOW_REGISTRY__URL": str(root / "models"),
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "KMFLOW_CLUSTER__MEMORY_LIMIT": "2GiB",
    }
    return {"root": str(root), "photos": str(photos), **env}


def _env(setup: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in setup.items() if k.isupper()}
    # Ephemeral mode: no Prefect server configured.
    return env


def _run(setup: dict[str, str], *args: str) -> tuple[int, str, str]:
    saved = os.environ.pop("PREFECT_API_URL", None)
    try:
        proc = run_cli(*args, env=_env(setup), timeout=400)
    finally:
        if saved is not None:
            os.environ["PREFECT_API_URL"] = saved
    return proc.returncode, proc.stdout, proc.stderr


def test_pipeline_then_models_commands(setup: dict[str, str]) -> None:
    root = Path(setup["root"])
    out = root / "out"
    report = root / "report.json"
    store = str(root / "store.zarr")
    args = ("pipeline", setup["photos"], "--k", "4", "--model", "photos", "--out", str(out))
    args = (*args, "--store", store)
    code, stdout, stderr = _run(
        setup, *args, "--seed", "0", "--workers", "2", "--report", str(report)
    )
    assert code == 0, stderr[-3000:]
    assert "kmflow pipeline: photos version 1" in stdout
    assert "promotion: no champion yet" in stdout
    result = json.loads(report.read_text())
    assert result["train"]["version"] == 1
    assert result["train"]["promoted"] is True
    assert result["ingest"]["n_images"] == 2
    for rel in ("trip/temple.png", "flower.png", "palette.png"):
        assert (out / rel).exists(), rel
    with Image.open(out / "flower.png") as im:
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) <= 4
    registry = ModelRegistry(setup["KMFLOW_REGISTRY__URL"])
    assert registry.champion("photos").version == 1  # type: ignore[union-attr]

    # Fewer colors: registered as version 2 but not promoted.
    code, stdout, stderr = _run(setup, *args[:2], "--k", "2", *args[4:], "--seed", "0")
    assert code == 0, stderr[-3000:]
    assert "photos version 2" in stdout
    assert "promotion: inertia_per_pixel" in stdout
    assert registry.champion("photos").version == 1  # type: ignore[union-attr]

    reg = ("--registry", setup["KMFLOW_REGISTRY__URL"])
    code, stdout, _ = _run(setup, "models", "list", *reg)
    assert code == 0
    (line,) = [ln for ln in stdout.splitlines() if "photos" in ln and "models in" not in ln]
    assert line.split("│")[1:5] == [" photos ", " 2        ", " 2      ", " 1        "]

    code, stdout, _ = _run(
        setup, "models", "show", "photos", "--version", "champion", "--json", *reg
    )
    assert code == 0
    shown = json.loads(stdout)
    assert shown["version"] == 1
    assert shown["n_clusters"] == 4
    assert np.asarray(shown["centers"]).shape == (4, 3)

    code, stdout, _ = _run(setup, "models", "promote", "photos", "2", *reg)
    assert code == 0
    assert "photos version 2 is now the champion" in stdout
    assert registry.champion("photos").version == 2  # type: ignore[union-attr]

    code, _, stderr = _run(setup, "models", "promote", "photos", "9", *reg)
    assert code == 2
    assert "error:" in stderr
    assert "9" in stderr
    assert registry.champion("photos").version == 2  # type: ignore[union-attr]
    code, _, stderr = _run(setup, "models", "show", "nope", *reg)
    assert code == 2
    assert "nope" in stderr

    # A batch with inverted colors drifts from the champion (version 2 now).
    drifted = root / "drifted"
    drifted.mkdir()
    with Image.open(Path(setup["photos"]) / "flower.png") as im:
        Image.fromarray(255 - np.asarray(im.convert("RGB"))).save(drifted / "negative.png")
    drift_json = root / "drift.json"
    code, stdout, stderr = _run(
        setup,
        "monitor",
        str(drifted),
        "--model",
        "photos",
        "--store",
        store,
        "--reports",
        str(root / "drift"),
        "--report",
        str(drift_json),
    )
    assert code == 0, stderr[-3000:]
    assert "decision: DRIFTED" in stdout
    drift = json.loads(drift_json.read_text())
    assert drift["drifted"] is True
    assert drift["champion_version"] == 2
    assert drift["n_images"] == 1
    assert set(drift["statistics"]) == {"psi", "js_distance", "sqdist_ratio", "wasserstein"}
    for stat in drift["statistics"].values():
        assert set(stat) == {"value", "threshold", "drifted"}
    assert (root / "drift" / f"{drift['batch_id']}.json").exists()

    # The recorded batch checked again by its id: nothing ingested, the same statistics.
    again_json = root / "again.json"
    monitor = ["--model", "photos", "--store", store, "--reports", str(root / "drift")]
    code, stdout, stderr = _run(
        setup, "monitor", "--batch", drift["batch_id"], *monitor, "--report", str(again_json)
    )
    assert code == 0, stderr[-3000:]
    again = json.loads(again_json.read_text())
    assert (again["batch_id"], again["n_images"]) == (drift["batch_id"], 1)
    assert again["statistics"] == drift["statistics"]
    code, _, stderr = _run(setup, "monitor", str(drifted), "--batch", drift["batch_id"], *monitor)
    assert code == 2
    assert "not both" in stderr

    # Retrain directly: a challenger warm-started from the champion (version 2).
    code, stdout, stderr = _run(setup, "retrain", "--model", "photos", "--store", store)
    assert code == 0, stderr[-3000:]
    assert "photos version 3 (parent 2)" in stdout
    assert registry.record("photos", 3).parent == 2


def test_pipeline_rejects_bad_parameters_before_running(setup: dict[str, str]) -> None:
    code, _, stderr = _run(setup, "pipeline", setup["photos"], "--holdout-by", "pixel")
    assert code == 2
    assert "'--holdout-by': 'pixel': Input should be 'image' or 'row'" in stderr
    code, _, stderr = _run(setup, "pipeline", setup["photos"], "--model", "bad name")
    assert code == 2
    assert "'--model': 'bad name': String should match pattern" in stderr
