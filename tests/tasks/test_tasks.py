"""Tasks through ``.fn()`` (plain calls, no task run) and their retry / idempotency rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect import flow
from prefect.states import Completed, Failed
from sklearn.datasets import load_sample_images

from kmflow.core.split import Split
from kmflow.errors import (
    InvalidInputError,
    SourceNotFoundError,
    StorageError,
    StoreNotFoundError,
)
from kmflow.params import IngestParams, TrainParams
from kmflow.storage.registry import ModelRegistry
from kmflow.tasks import (
    evaluate_palette_task,
    fit_palette_task,
    ingest_images,
    register_model_task,
    training_fingerprint_task,
)
from kmflow.tasks._common import artifact_key, retry_on_transient_io

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    china, flower = load_sample_images().images
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(china[:50, :60]).save(root / "a.png")
    Image.fromarray(flower[100:150, 100:170]).save(root / "b.png")
    return root


@pytest.fixture
def registry_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = str(tmp_path / "models")
    monkeypatch.setenv("KMFLOW_REGISTRY__URL", url)
    return url


def test_artifact_keys_are_what_prefect_accepts() -> None:
    assert artifact_key("My_Model.v2", "train", "metrics") == "my-model-v2-train-metrics"
    assert artifact_key("--", "") == "kmflow"


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (StorageError("connection reset by the object store"), True),
        (SourceNotFoundError("no such folder"), False),
        (StoreNotFoundError("no store"), False),
        (InvalidInputError("k too large"), False),
        (RuntimeError("bug"), False),
    ],
)
def test_only_transient_io_errors_are_retried(exc: Exception, retry: bool) -> None:
    assert retry_on_transient_io(None, None, Failed(data=exc)) is retry
    assert retry_on_transient_io(None, None, Completed(data=1)) is False


def test_tasks_as_plain_functions(images: Path, tmp_path: Path, registry_url: str) -> None:
    store = str(tmp_path / "store.zarr")
    summary = ingest_images.fn(IngestParams(sources=[str(images)], store=store))
    assert summary["n_images"] == 2
    assert len(summary["added"]) == 2
    assert summary["n_pixels"] == 50 * 60 + 50 * 70
    again = ingest_images.fn(IngestParams(sources=[str(images)], store=store))
    assert again["added"] == []
    assert len(again["duplicates"]) == 2

    params = TrainParams(store=store, model="t", k=3, seed=0)
    palette = fit_palette_task.fn(params)
    assert palette.centers.shape == (3, 3)
    assert palette.n_pixels == summary["n_pixels"]
    evaluation = evaluate_palette_task.fn(store, palette, Split(), 0)
    assert sum(evaluation.sizes) == summary["n_pixels"]
    fingerprint = training_fingerprint_task.fn(store, Split())
    assert fingerprint == summary["fingerprint"]
    split_fp = training_fingerprint_task.fn(store, Split(fraction=0.5))
    assert split_fp != fingerprint
    assert len(split_fp) == 64

    record = register_model_task.fn(params, palette, evaluation, fingerprint)
    assert record.version == 1
    assert record.run_key is None
    loaded = ModelRegistry(registry_url).load("t", 1)
    np.testing.assert_array_equal(loaded.centers, palette.centers)
    assert loaded.record.reference == evaluation.reference_statistics()
    assert loaded.record.metrics["inertia"] == evaluation.metrics["inertia"]


def test_register_is_idempotent_within_a_flow_run(
    images: Path, tmp_path: Path, registry_url: str
) -> None:
    store = str(tmp_path / "store.zarr")
    ingest_images.fn(IngestParams(sources=[str(images)], store=store))
    params = TrainParams(store=store, model="idem", k=2, seed=0)
    palette = fit_palette_task.fn(params)
    evaluation = evaluate_palette_task.fn(store, palette, Split(), 0)

    @flow
    def register_twice() -> tuple[int, int]:
        # A retried task (or a re-executed flow body) registers with the same run key.
        first = register_model_task(params, palette, evaluation, "fp")
        second = register_model_task(params, palette, evaluation, "fp")
        return first.version, second.version

    assert register_twice() == (1, 1)
    assert [r.version for r in ModelRegistry(registry_url).versions("idem")] == [1]
    # Another flow run is another registration.
    assert register_twice() == (2, 2)


def test_palette_serializer_round_trips_exactly_and_refuses_anything_else() -> None:
    from kmflow.errors import InvalidInputError
    from kmflow.jobs.palette import Palette
    from kmflow.tasks.train import PaletteSerializer

    rng = np.random.default_rng(0)
    palette = Palette(
        centers=rng.normal(100, 40, size=(5, 3)),
        rgb=rng.integers(0, 256, size=(5, 3)).astype(np.uint8),
        color_space="lab",
        method="histogram",
        inertia=float(rng.random() * 1e9),
        n_iter=7,
        converged=True,
        seed=12345,
        n_pixels=10_000,
        n_colors=800,
        fit_seconds=0.123,
    )
    serializer = PaletteSerializer()
    blob = serializer.dumps(palette)
    back = serializer.loads(blob)
    np.testing.assert_array_equal(back.centers, palette.centers)  # bit for bit
    np.testing.assert_array_equal(back.rgb, palette.rgb)
    assert back.rgb.dtype == np.uint8
    assert (back.inertia, back.seed, back.color_space) == (palette.inertia, 12345, "lab")
    import pickle

    for junk in (pickle.dumps(palette), b'{"centers": [[1, 2]]}', b'{"__class__": "os.system"}'):
        with pytest.raises((InvalidInputError, ValueError)):
            serializer.loads(junk)
