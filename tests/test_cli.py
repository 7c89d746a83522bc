"""The ``kmflow`` command, run as a user runs it: a subprocess with a real local Dask cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

pytestmark = pytest.mark.integration


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "120", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kmflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good images (one nested) and three bad files."""
    root = tmp_path_factory.mktemp("mixed")
    china, flower = load_sample_images().images
    (root / "trip" / "day1").mkdir(parents=True)
    Image.fromarray(china[:120, :160]).save(root / "trip" / "day1" / "temple.jpg", quality=95)
    Image.fromarray(flower[:100, :100]).save(root / "flower.png")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.png").write_text("not an image at all")
    good = (root / "flower.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


def test_help_reads_well() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "quantize" in top.stdout
    sub = run_cli("quantize", "--help")
    assert sub.returncode == 0
    for option in (
        "--k",
        "--out",
        "--store",
        "--color-space",
        "--seed",
        "--workers",
        "--scheduler",
        "--report",
        "--strict",
    ):
        assert option in sub.stdout


def test_shared_palette_on_bundled_sample_photos(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    r = run_cli(
        "quantize",
        "--palette",
        "shared",
        "--k",
        "8",
        "--out",
        str(out),
        "--seed",
        "0",
        "--workers",
        "2",
        "--report",
        str(report),
        env={"KMFLOW_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert r.returncode == 0, r.stderr
    assert "kmflow quantize" in r.stdout  # the summary table
    data = json.loads(report.read_text())
    summary = data["summary"]
    assert summary["images"] == 2
    assert summary["k"] == 8
    assert summary["megapixels"] == pytest.approx(2 * 427 * 640 / 1e6, abs=1e-3)
    assert 20 < summary["psnr_db"] < 40
    assert summary["delta_e"] > 0
    for name in ("china.png", "flower.png"):
        img = np.asarray(Image.open(out / name).convert("RGB"))
        assert img.shape == (427, 640, 3)
        assert len(np.unique(img.reshape(-1, 3), axis=0)) <= 8
    assert {tuple(c) for c in data["palette_rgb"]} >= {
        tuple(c) for c in np.asarray(Image.open(out / "china.png").convert("RGB")).reshape(-1, 3)
    }
    assert (out / "palette.png").exists()
    assert (out / "store.zarr").is_dir()


def test_bad_files_are_reported_and_the_rest_quantized(tmp_path: Path, mixed_folder: Path) -> None:
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    r = run_cli(
        "quantize",
        str(mixed_folder),
        "--k",
        "4",
        "--out",
        str(out),
        "--workers",
        "1",
        "--report",
        str(report),
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    reasons = {Path(e["source"]).name: e["reason"] for e in data["ingest"]["errors"]}
    assert set(reasons) == {"empty.png", "notes.png", "truncated.png"}
    assert "empty" in reasons["empty.png"]
    assert "not an image" in reasons["notes.png"]
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert "could not be ingested" in r.stderr  # the error table
    assert (out / "trip" / "day1" / "temple.png").exists()  # relative folder and stem kept
    assert (out / "flower.png").exists()
    assert not (out / "empty.png").exists()
    assert data["summary"]["images"] == 2

    # A second run over the same folder adds nothing to the store and renders the same files.
    again = run_cli(
        "quantize",
        str(mixed_folder),
        "--k",
        "4",
        "--out",
        str(out),
        "--workers",
        "1",
        "--report",
        str(report),
    )
    assert again.returncode == 0, again.stderr
    second = json.loads(report.read_text())
    assert second["ingest"]["added"] == []
    assert len(second["ingest"]["duplicates"]) == 2
    assert second["summary"]["images"] == 2


def test_strict_fails_on_any_bad_file(tmp_path: Path, mixed_folder: Path) -> None:
    out = tmp_path / "out"
    r = run_cli(
        "quantize", str(mixed_folder), "--k", "4", "--out", str(out), "--workers", "1", "--strict"
    )
    assert r.returncode == 1
    assert "--strict" in r.stderr
    assert not (out / "flower.png").exists()


def test_nothing_ingestible_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"")
    r = run_cli("quantize", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--workers", "1")
    assert r.returncode == 1
    assert "nothing could be ingested" in r.stderr


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    r = run_cli(
        "quantize", str(tmp_path / "nope"), "--out", str(tmp_path / "out"), "--workers", "1"
    )
    assert r.returncode == 2
    assert "nope" in r.stderr
    assert "Traceback" not in r.stderr


def test_quantize_from_s3_to_s3(tmp_path: Path, mixed_folder: Path, s3_bucket) -> None:
    """Images, store and outputs all on the loopback S3 server, credentials from the env."""
    import s3fs

    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    fs.put_file(str(mixed_folder / "flower.png"), f"{bucket}/images/flower.png")
    fs.put_file(
        str(mixed_folder / "trip" / "day1" / "temple.jpg"), f"{bucket}/images/trip/temple.jpg"
    )
    env = {
        "AWS_DEFAULT_REGION": "us-east-1",
        "KMFLOW_STORAGE__S3_ENDPOINT_URL": options["client_kwargs"]["endpoint_url"],
        "KMFLOW_STORAGE__S3_KEY": options["key"],
        "KMFLOW_STORAGE__S3_SECRET": options["secret"],
    }
    report = tmp_path / "report.json"
    r = run_cli(
        "quantize",
        f"{bucket}/images/",
        "--k",
        "4",
        "--seed",
        "1",
        "--workers",
        "1",
        "--store",
        f"{bucket}/store.zarr",
        "--out",
        f"{bucket}/out",
        "--report",
        str(report),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert options["secret"] not in r.stdout + r.stderr  # credentials never printed
    data = json.loads(report.read_text())
    assert data["summary"]["images"] == 2
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/out/flower.png")
    assert fs.exists(f"{bucket}/out/trip/temple.png")
    assert not fs.exists(f"{bucket}/out/palette.png")  # per-image palettes: no shared swatch
    with fs.open(f"{bucket}/out/flower.png", "rb") as f:
        img = np.asarray(Image.open(f).convert("RGB"))
    assert img.shape == (100, 100, 3)
    flower = next(i for i in data["images"] if i["relpath"] == "flower.png")
    assert flower["output"] == f"{bucket}/out/flower.png"
    assert {tuple(c) for c in img.reshape(-1, 3)} <= {tuple(c) for c in flower["palette"]}
