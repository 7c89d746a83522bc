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
        "--palette",
        "--n-init",
        "--dither",
        "--labels",
        "--out-inside-source",
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


# --------------------------------------------------------------------------- per-image mode


def _photo(path: Path, crop: tuple[slice, slice], which: int = 0) -> None:
    Image.fromarray(load_sample_images().images[which][crop]).save(path)


def test_per_image_is_the_default_and_lists_each_image(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(23):
        _photo(src / f"p{i:02d}.png", (slice(i * 10, i * 10 + 40), slice(0, 50)), i % 2)
    report = tmp_path / "r.json"
    r = run_cli(
        "quantize", str(src), "--k", "6", "--out", str(tmp_path / "out"), "--report", str(report)
    )
    assert r.returncode == 0, r.stderr
    assert "per-image palette" in r.stdout
    assert "p00.png" in r.stdout
    assert "p19.png" in r.stdout
    assert "p20.png" not in r.stdout  # truncated after 20 rows, with a count
    assert "and 3 more" in r.stdout
    data = json.loads(report.read_text())
    assert data["summary"]["palette"] == "per-image"
    assert data["summary"]["palettes_fitted"] == 23
    for image in data["images"]:
        rendered = np.asarray(Image.open(image["output"]).convert("RGB")).reshape(-1, 3)
        assert {tuple(c) for c in rendered} <= {tuple(c) for c in image["palette"]}
        assert len(image["palette"]) == 6
    assert not (tmp_path / "out" / "palette.png").exists()
    # A second run finds every palette in the store and fits none.
    again = run_cli(
        "quantize", str(src), "--k", "6", "--out", str(tmp_path / "out"), "--report", str(report)
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(report.read_text())["summary"]["palettes_fitted"] == 0


def test_out_on_the_source_folder_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    _photo(src / "a.png", (slice(0, 60), slice(0, 80)))
    before = (src / "a.png").read_bytes()
    r = run_cli("quantize", str(src), "--k", "4", "--out", str(src))
    assert r.returncode == 2
    assert "would overwrite the source image" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2
    assert (src / "a.png").read_bytes() == before
    assert not (src / "store.zarr").exists()  # refused before anything was written
    inside = run_cli("quantize", str(src), "--k", "4", "--out", str(src / "q"))
    assert inside.returncode == 2
    assert "inside the source folder" in inside.stderr
    allowed = run_cli(
        "quantize", str(src), "--k", "4", "--out", str(src / "q"), "--out-inside-source"
    )
    assert allowed.returncode == 0, allowed.stderr
    assert (src / "q" / "a.png").exists()
    assert (src / "a.png").read_bytes() == before


def test_same_stem_two_formats_both_written(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    _photo(src / "a.png", (slice(0, 60), slice(0, 80)), 0)
    _photo(src / "a.jpg", (slice(0, 60), slice(0, 80)), 1)
    out = tmp_path / "out"
    r = run_cli("quantize", str(src), "--k", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["a.jpg.png", "a.png.png"]
    jpg = np.asarray(Image.open(out / "a.jpg.png").convert("RGB"))
    png = np.asarray(Image.open(out / "a.png.png").convert("RGB"))
    assert not np.array_equal(jpg, png)  # two images, not one written twice


def test_only_the_images_given_are_rendered(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    _photo(src / "a.png", (slice(0, 60), slice(0, 80)), 0)
    _photo(src / "b.png", (slice(0, 60), slice(0, 80)), 1)
    store = str(tmp_path / "store.zarr")
    first = run_cli(
        "quantize", str(src), "--k", "4", "--out", str(tmp_path / "o1"), "--store", store
    )
    assert first.returncode == 0, first.stderr
    for palette in ("per-image", "shared"):
        out = tmp_path / f"o-{palette}"
        report = tmp_path / f"{palette}.json"
        r = run_cli(
            "quantize", str(src / "b.png"), "--k", "4", "--palette", palette, "--out", str(out),
            "--store", store, "--report", str(report),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert [p.name for p in out.glob("*.png") if p.name != "palette.png"] == ["b.png"]
        assert json.loads(report.read_text())["summary"]["images"] == 1
    from kmflow.storage.pixelstore import PixelStore

    assert PixelStore(store).n_images == 2  # the store keeps the other image


def test_mistyped_source_fails_before_any_cluster_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import kmflow.cluster
    from kmflow.cli import app

    def no_cluster(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cluster was started for a command that cannot run")

    monkeypatch.setattr(kmflow.cluster, "connect", no_cluster)
    result = CliRunner().invoke(
        app, ["quantize", str(tmp_path / "nope.jpg"), "--workers", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "nope.jpg" in result.output
    assert "AssertionError" not in result.output
