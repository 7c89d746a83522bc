"""``kmflow segment`` and ``kmflow assign``, run as a user runs them (subprocesses).

scikit-learn's bundled wine table goes through the CLI with its class column as the target;
bad tables are one line on stderr and exit code 2, before any cluster or flow starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine
from sklearn.metrics import adjusted_rand_score
from tests.test_cli import run_cli

from kmflow.storage.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-segment")
    wine = load_wine(as_frame=True).frame.rename(columns={"target": "class"})
    wine["class"] = wine["class"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    wine.to_csv(root / "wine.csv", index=False)
    return {"root": root, "wine": root / "wine.csv"}


def _env(root: Path) -> dict[str, str]:
    return {
        "KMFLOW_REGISTRY__URL": str(root / "models"),
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "KMFLOW_CLUSTER__MEMORY_LIMIT": "2GiB",
    }


def _run(root: Path, *args: str) -> tuple[int, str, str]:
    saved = os.environ.pop("PREFECT_API_URL", None)
    try:
        proc = run_cli(*args, env=_env(root), timeout=400)
    finally:
        if saved is not None:
            os.environ["PREFECT_API_URL"] = saved
    return proc.returncode, proc.stdout, proc.stderr


def test_wine_through_the_cli_with_its_class_as_target(world: dict[str, Path]) -> None:
    root = world["root"]
    out, report = root / "out", root / "report.json"
    code, stdout, stderr = _run(
        root,
        "segment",
        str(world["wine"]),
        "--target",
        "class",
        "--k",
        "2..6",
        "--model",
        "wine",
        "--store",
        str(root / "store"),
        "--out",
        str(out),
        "--report",
        str(report),
    )
    assert code == 0, stdout + stderr
    assert "◀ chosen" in stdout
    assert "segment profiles" in stdout
    data = json.loads(report.read_text())
    assert data["chosen_k"] == 3
    assert [row["k"] for row in data["sweep"]] == [2, 3, 4, 5, 6]
    assert set(data["sweep"][0]) >= {
        "k",
        "inertia",
        "davies_bouldin",
        "calinski_harabasz",
        "silhouette",
        "seconds",
    }
    assert set(data["missing"]) == set(load_wine().feature_names)
    assert len(data["profiles"]) == 3
    assert data["segment_models"]["overall"]["segmented"]["f1"] > 0.8
    segments = pd.read_csv(out / "segments.csv")
    assert list(segments.columns) == ["row", "segment", "distance"]
    assert segments["row"].tolist() == list(range(178))
    assert adjusted_rand_score(load_wine().target, segments["segment"]) > 0.8
    profiles = pd.read_csv(out / "profiles.csv")
    assert len(profiles) == 3
    assert "class=barolo rate" in profiles.columns

    # The registered model labels raw records through its stored preprocessing.
    model = ModelRegistry(root / "models").load("wine", "champion")
    assert model.record.kind == "segments"
    raw = pd.read_csv(world["wine"]).drop(columns=["class"])
    np.testing.assert_array_equal(model.predict(raw.head(40)), segments["segment"][:40])
    records = raw.head(5).to_dict(orient="records")
    np.testing.assert_array_equal(model.predict(records), segments["segment"][:5])

    # kmflow assign on new records: a missing value and an unseen column value are counted.
    new = raw.head(20).copy()
    new.loc[3, "alcohol"] = np.nan
    new.to_csv(root / "new.csv", index=False)
    code, stdout, stderr = _run(
        root, "assign", str(root / "new.csv"), "--model", "wine", "--out", str(root / "a.csv")
    )
    assert code == 0, stdout + stderr
    assert "missing values: alcohol 1" in stdout
    assigned = pd.read_csv(root / "a.csv")
    keep = assigned.index != 3
    np.testing.assert_array_equal(
        assigned["segment"][keep], segments["segment"][:20][keep.tolist()]
    )

    # kmflow monitor with a segment model: a sample of the same wines does not drift, the
    # same wines 2 percentage points stronger do (per-feature Wasserstein), and the drift
    # report names the feature.
    raw.sample(120, random_state=1).to_csv(root / "calm.csv", index=False)
    stronger = raw.copy()
    stronger["alcohol"] += 2.0
    stronger.to_csv(root / "stronger.csv", index=False)
    verdicts = {}
    for name in ("calm", "stronger"):
        code, stdout, stderr = _run(
            root,
            "monitor",
            str(root / f"{name}.csv"),
            "--model",
            "wine",
            "--reports",
            str(root / "drift"),
            "--report",
            str(root / f"{name}.json"),
        )
        assert code == 0, stdout + stderr
        verdicts[name] = json.loads((root / f"{name}.json").read_text())
    assert verdicts["calm"]["drifted"] is False, verdicts["calm"]["report"]["statistics"]
    moved = verdicts["stronger"]["report"]
    assert verdicts["stronger"]["drifted"] is True
    assert moved["statistics"]["feature_wasserstein"]["drifted"] is True
    assert max(moved["features"], key=lambda f: moved["features"][f]["wasserstein"]) == "alcohol"

    # kmflow retrain with a segment model: the segment flow again on the champion's table
    # and parameters; the same data gives a model that is not worse, so it is promoted.
    code, stdout, stderr = _run(root, "retrain", "--model", "wine")
    assert code == 0, stdout + stderr
    assert "wine version 2 (k=3, retrained from v1): promoted to champion" in stdout
    assert ModelRegistry(root / "models").champion("wine").version == 2  # type: ignore[union-attr]

    # Reports: both checks in the model's history; each segment run wrote its report.
    from kmflow.reports.build import build_report

    registry = ModelRegistry(root / "models")
    checks = registry.history("wine", "drift")
    assert [c["drifted"] for c in checks] == [False, True]
    assert checks[1]["statistics"]["feature_wasserstein"]["drifted"] is True
    report = build_report(registry, "wine", 2)
    assert report.picture("sweep").data["chosen_k"] == 3
    assert report.picture("drift").data["checks"] == 2
    assert report.missing == []
    for version in (1, 2):
        page = root / "models" / "wine" / "reports" / f"v{version:06d}" / "report.html"
        assert page.read_text().count('<img src="data:image/png;base64,') == 4 + version


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("", (), "empty"),
        ("a,b,c\n", (), "no data rows"),
        ("a,b\n1,2\n3,4,5\n", (), "line 3"),
        ("a,b\n1,2\n3,4\n", ("--id", "client"), "client"),
        ("a,b\n1,2\n3,4\n", ("--target", "b", "--features", "zz"), "zz"),
        ("a,b\n1,2\n3,4\n", ("--select", "best"), "select"),
    ],
)
def test_bad_tables_are_one_line_and_exit_2(
    tmp_path: Path, content: str, args: tuple[str, ...], message: str
) -> None:
    table = tmp_path / "t.csv"
    table.write_text(content)
    code, stdout, stderr = _run(
        tmp_path, "segment", str(table), "--out", str(tmp_path / "o"), *args
    )
    assert code == 2, stdout + stderr
    assert message in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "prefect-home").exists()  # found before any flow started
