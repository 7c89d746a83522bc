"""``kmflow models show``: a readable summary by default, the whole record with ``--json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kmflow.cli import app
from kmflow.storage.registry import ModelRegistry

SEED_GIVEN = 7
RANDOM_KEY = 789974133212406139


@pytest.fixture
def registry(tmp_path: Path) -> str:
    """One promoted palette whose reference keeps 3 x 256 histogram counts."""
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 50, (3, 256))
    counts[0, :128] = 0  # red: only the upper half of the levels
    reg = ModelRegistry(tmp_path / "models")
    record = reg.register(
        "photos",
        np.array([[255.0, 0.0, 0.0], [0.0, 128.0, 255.0], [12.0, 34.0, 56.0]]),
        init="k-means||",
        seed=RANDOM_KEY,
        n_iter=12,
        converged=True,
        inertia=1234.5,
        fingerprint="a" * 64,
        kind="palette",
        preprocessing={"type": "color", "color_space": "rgb"},
        params={"seed": SEED_GIVEN, "k": 3},
        metrics={"inertia_per_pixel": 1.5, "psnr": 30.25, "sizes": [50, 30, 20]},
        reference={
            "part": "all",
            "n_pixels": 100,
            "cluster_fractions": [0.5, 0.3, 0.2],
            "mean_sqdist": 1.5,
            "channel_histograms": {"space": "srgb", "bins": 256, "counts": counts.tolist()},
        },
    )
    reg.promote("photos", record.version)
    return str(tmp_path / "models")


def show(registry: str, *extra: str) -> str:
    result = CliRunner().invoke(
        app, ["models", "show", "photos", "--registry", registry, *extra], env={"COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_summary_is_short_and_names_both_seeds(registry: str) -> None:
    text = show(registry)
    lines = text.splitlines()
    assert len(lines) < 60  # not 768 histogram counts, one per line
    row = {line.split("  ")[0].strip(): line for line in lines if line.strip()}
    assert str(SEED_GIVEN) in row["seed given"]
    assert str(RANDOM_KEY) in row["random key"]
    assert "yes" in row["champion"]
    assert "50.0 %, 30.0 %, 20.0 %" in row["occupancy"]
    assert int(row["R levels"].split("5-95 % ")[1].split("-")[0]) >= 128
    for hex_code in ("#ff0000", "#0080ff", "#0c2238"):
        assert hex_code in text
    assert "--json" in text


def test_json_prints_everything(registry: str) -> None:
    payload = json.loads(show(registry, "--json"))
    counts = payload["reference"]["channel_histograms"]["counts"]
    assert [len(c) for c in counts] == [256, 256, 256]
    assert payload["seed"] == RANDOM_KEY
    assert payload["params"]["seed"] == SEED_GIVEN
    assert payload["centers"] == [[255.0, 0.0, 0.0], [0.0, 128.0, 255.0], [12.0, 34.0, 56.0]]


def test_help_explains_the_two_seeds() -> None:
    result = CliRunner().invoke(app, ["models", "show", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "seed given" in result.stdout
    assert "random key" in result.stdout
