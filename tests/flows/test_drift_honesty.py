"""A champion's drift reference describes all of its training data, not its held-out part.

On several collections whose images differ from one another (photos, one color theme per
image, gradients), a model trained with a held-out split by image must see copies of its own
training images (mirrored, or re-encoded as JPEG) as undrifted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import LocalCluster
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_images

from kmflow.core.split import Split
from kmflow.flows import ingest_flow, monitor_flow, train_flow
from kmflow.params import IngestParams, MonitorParams, TrainParams
from kmflow.storage.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def _photos(folder: Path) -> None:
    china, flower = load_sample_images().images
    crops = [
        china[:160, :200],
        china[200:360, 300:500],
        flower[:160, :200],
        flower[250:410, 350:550],
        china[100:260, 100:300],
    ]
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(folder / f"photo{i}.png")


def _themes(folder: Path) -> None:
    """Five images, each a patchwork of three colors of its own theme, plus noise."""
    rng = np.random.default_rng(7)
    themes = [
        [(200, 30, 30), (240, 120, 90), (120, 10, 20)],
        [(30, 160, 40), (140, 220, 120), (10, 70, 20)],
        [(30, 60, 200), (120, 170, 250), (10, 20, 90)],
        [(40, 40, 40), (128, 128, 128), (220, 220, 220)],
        [(230, 210, 40), (250, 240, 160), (140, 110, 10)],
    ]
    for i, theme in enumerate(themes):
        patches = rng.integers(0, 3, size=(12, 15))  # 10x10-pixel patches, as in a picture
        which = np.kron(patches, np.ones((10, 10), dtype=int)).ravel()
        px = np.array(theme)[which] + rng.normal(0, 4, size=(which.size, 3))
        image = np.clip(np.rint(px), 0, 255).astype(np.uint8).reshape(120, 150, 3)
        Image.fromarray(image).save(folder / f"theme{i}.png")


def _gradients(folder: Path) -> None:
    """Four smooth gradients between different pairs of colors."""
    pairs = [
        ((0, 0, 0), (255, 80, 0)),
        ((0, 40, 120), (200, 255, 255)),
        ((90, 0, 90), (255, 200, 40)),
        ((20, 120, 20), (250, 250, 250)),
    ]
    t = np.linspace(0, 1, 160)[None, :, None]
    for i, (a, b) in enumerate(pairs):
        row = np.array(a) * (1 - t) + np.array(b) * t
        image = np.repeat(np.rint(row), 100, axis=0).astype(np.uint8)
        Image.fromarray(image).save(folder / f"gradient{i}.png")


def _copies(source: Path, folder: Path, how: str) -> Path:
    folder.mkdir(parents=True)
    for path in sorted(source.glob("*.png")):
        image = Image.open(path).convert("RGB")
        if how == "mirror":
            ImageOps.mirror(image).save(folder / path.name)
        else:
            image.save(folder / f"{path.stem}.jpg", quality=95)
    return folder


@pytest.mark.parametrize("collection", [_photos, _themes, _gradients], ids=lambda f: f.__name__)
def test_copies_of_the_training_images_never_drift(
    collection: Any,
    tmp_path: Path,
    dask_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KMFLOW_REGISTRY__URL", str(tmp_path / "models"))
    monkeypatch.setenv("KMFLOW_CLUSTER__MODE", "address")
    monkeypatch.setenv("KMFLOW_CLUSTER__ADDRESS", dask_cluster.scheduler_address)
    train = tmp_path / "train"
    train.mkdir()
    collection(train)
    store, reports = str(tmp_path / "store.zarr"), str(tmp_path / "drift")
    ingested = ingest_flow(IngestParams(sources=[str(train)], store=store))
    trained = train_flow(
        TrainParams(
            store=store,
            model="pal",
            k=8,
            seed=0,
            holdout=Split(fraction=0.2, by="image", seed=0),
        )
    )
    record = ModelRegistry(tmp_path / "models").record("pal", trained.version)
    assert record.metrics["part"] == "eval"  # evaluated on the held-out images only...
    assert record.reference["part"] == "all"  # ...but the reference is all training data
    assert record.reference["n_pixels"] == ingested.n_pixels

    for how in ("mirror", "jpeg"):
        result = monitor_flow(
            MonitorParams(
                sources=[str(_copies(train, tmp_path / how, how))],
                store=store,
                model="pal",
                reports=reports,
            )
        )
        stats = result.report["statistics"]
        assert result.n_images == ingested.n_discovered
        assert result.drifted is False, (how, stats)
        if how == "mirror":  # the same pixels: the same distribution, exactly
            assert stats["psi"]["value"] == pytest.approx(0, abs=1e-9)
            assert stats["js_distance"]["value"] == pytest.approx(0, abs=1e-6)
            assert stats["sqdist_ratio"]["value"] == pytest.approx(1, abs=1e-9)
            assert stats["wasserstein"]["value"] == pytest.approx(0, abs=1e-9)
