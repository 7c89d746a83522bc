"""``kmflow cluster-images``, then ``assign`` and ``monitor`` with the image model, run as a
user runs them (subprocesses) on scikit-learn's digits written as a labelled folder of PNGs
and as an MNIST-style table; bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm
from sklearn.datasets import load_digits
from tests.test_cli import run_cli

from kmflow.storage.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-images")
    d = load_digits()
    x = (d.images * 255 / 16).round().astype(np.uint8)
    folder = root / "digits"
    for i, (image, label) in enumerate(zip(x, d.target, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{i:04d}.png")
    frame = pd.DataFrame(x.reshape(len(x), -1), columns=[f"pixel{i + 1}" for i in range(64)])
    frame.insert(0, "label", d.target)
    frame.to_csv(root / "digits.csv", index=False)
    return {"root": root, "folder": folder, "table": root / "digits.csv"}


def _run(root: Path, *args: str) -> tuple[int, str, str]:
    env = {
        "KMFLOW_REGISTRY__URL": str(root / "models"),
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "KMFLOW_CLUSTER__MEMORY_LIMIT": "2GiB",
    }
    saved = os.environ.pop("PREFECT_API_URL", None)
    try:
        proc = run_cli(*args, env=env, timeout=600)
    finally:
        if saved is not None:
            os.environ["PREFECT_API_URL"] = saved
    return proc.returncode, proc.stdout, proc.stderr


def test_a_labelled_folder_with_the_default_chain(world: dict[str, Path]) -> None:
    root = world["root"]
    out = root / "out"
    code, stdout, stderr = _run(
        root,
        "cluster-images",
        str(world["folder"]),
        "--labels-from",
        "subfolders",
        "--image-shape",
        "8x8",
        "--k",
        "10",
        "--model",
        "digits",
        "--store",
        str(root / "store"),
        "--out",
        str(out),
        "--report",
        str(root / "report.json"),
    )
    assert code == 0, stderr[-3000:]
    assert "adjusted Rand index" in stdout
    clusters = pd.read_csv(out / "clusters.csv")
    assert list(clusters.columns) == ["id", "cluster", "distance"]
    assert len(clusters) == 1797
    truth = clusters["id"].str.split("/").str[0].astype(int)
    report = json.loads((root / "report.json").read_text())
    assert report["features"] == "raw,pca:30,umap:5"
    m = report["metrics"]
    pred = clusters["cluster"].to_numpy()
    assert m["ari"] == pytest.approx(skm.adjusted_rand_score(truth, pred), abs=1e-12)
    assert m["nmi"] == pytest.approx(skm.normalized_mutual_info_score(truth, pred), abs=1e-12)
    assert m["fmi"] == pytest.approx(skm.fowlkes_mallows_score(truth, pred), abs=1e-12)
    assert m["ari"] > 0.75  # the benchmark: 0.82 on digits; raw-pixel k-means 0.66
    # the pictures: a confusion heatmap and one contact sheet per cluster
    with Image.open(out / "contingency.png") as heatmap:
        assert heatmap.size[0] > 200
    sheets = sorted((out / "sheets").glob("cluster_*.png"))
    assert len(sheets) == 10
    for path in sheets:
        with Image.open(path) as sheet:
            assert sheet.mode == "RGB"
            assert sheet.size[1] > 64
    model = ModelRegistry(str(root / "models")).load("digits", "champion")
    assert model.record.kind == "images"
    assert model.record.preprocessing["chain"] == "raw,pca:30,umap:5"

    # the stored model labels its training images as training did
    code, _, stderr = _run(
        root,
        "assign",
        str(world["folder"]),
        "--model",
        "digits",
        "--out",
        str(root / "assigned.csv"),
    )
    assert code == 0, stderr[-3000:]
    assigned = pd.read_csv(root / "assigned.csv").merge(clusters, on="id")
    assert len(assigned) == 1797
    np.testing.assert_array_equal(assigned["cluster_x"], assigned["cluster_y"])

    # monitor accepts the image model: a batch of only 3s has drifted
    batch = root / "threes"
    batch.mkdir()
    for p in (world["folder"] / "3").glob("*.png"):
        (batch / p.name).write_bytes(p.read_bytes())
    code, stdout, stderr = _run(
        root, "monitor", str(batch), "--model", "digits", "--store", str(root / "store")
    )
    assert code == 0, stderr[-3000:]
    assert "DRIFTED" in stdout

    # retrain: the flow again with the champion's parameters on its folder
    code, stdout, stderr = _run(root, "retrain", "--model", "digits")
    assert code == 0, stderr[-3000:]
    assert "digits version 2 (k=10, retrained from v1)" in stdout
    versions = ModelRegistry(str(root / "models")).versions("digits")
    assert [v.version for v in versions] == [1, 2]
    assert versions[1].params["features"] == "raw,pca:30,umap:5"


def test_a_table_of_images(world: dict[str, Path]) -> None:
    root = world["root"]
    out = root / "table-out"
    code, stdout, stderr = _run(
        root,
        "cluster-images",
        str(world["table"]),
        "--image-shape",
        "8x8",
        "--label-column",
        "label",
        "--features",
        "hog,pca:20",
        "--k",
        "10",
        "--model",
        "digits-table",
        "--store",
        str(root / "table-store"),
        "--out",
        str(out),
    )
    assert code == 0, stderr[-3000:]
    clusters = pd.read_csv(out / "clusters.csv")
    assert clusters["id"].tolist() == list(range(1797))
    y = pd.read_csv(world["table"])["label"]
    ari = skm.adjusted_rand_score(y, clusters["cluster"])
    assert ari > 0.55
    assert f"{ari:.4f}" in stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("bad-shape", "image shape"),
        ("bad-chain", "unknown step"),
        ("bad-pixels", "0..255"),
        ("missing", "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    world: dict[str, Path], tmp_path: Path, case: str, message: str
) -> None:
    args = [str(world["table"]), "--label-column", "label", "--image-shape", "8x8"]
    if case == "bad-shape":
        args[-1] = "8by8"
    elif case == "bad-chain":
        args += ["--features", "raww,pca:5"]
    elif case == "bad-pixels":
        frame = pd.read_csv(world["table"])
        frame.loc[3, "pixel10"] = 300
        frame.to_csv(tmp_path / "bad.csv", index=False)
        args[0] = str(tmp_path / "bad.csv")
    else:
        args[0] = str(tmp_path / "nowhere.csv")
    store = tmp_path / "store"
    code, _, stderr = _run(tmp_path, "cluster-images", *args, "--store", str(store))
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert lines[0].startswith("error:"), stderr
    assert message in lines[0].lower()
    # one line, or a bad option's line and the usage hint
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("Try ")), stderr
    assert "Traceback" not in stderr
