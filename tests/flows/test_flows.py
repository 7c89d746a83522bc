"""Flows end to end under Prefect's test harness, computing on a multi-process Dask cluster.

The flows find their cluster through the settings (``KMFLOW_CLUSTER__MODE=address`` pointing
at a LocalCluster of the test), as a deployment on a worker would.
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client, LocalCluster
from PIL import Image
from sklearn.datasets import load_sample_images

from kmflow.core.jsonable import json_ready
from kmflow.core.split import Split
from kmflow.errors import InvalidInputError, ModelNotFoundError
from kmflow.flows import apply_flow, evaluate_flow, ingest_flow, pipeline_flow, train_flow
from kmflow.params import (
    ApplyParams,
    EvaluateParams,
    IngestParams,
    PipelineParams,
    TrainParams,
)
from kmflow.storage.pixelstore import PixelStore
from kmflow.storage.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three crops of scikit-learn's sample photos, one in a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    china, flower = load_sample_images().images
    (root / "sub").mkdir()
    Image.fromarray(china[100:180, 200:300]).save(root / "china.png")
    Image.fromarray(flower[150:230, 250:350]).save(root / "sub" / "flower.png")
    Image.fromarray(china[:60, :90]).save(root / "sky.png")
    return root


@pytest.fixture
def env(
    tmp_path: Path, dask_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Registry under tmp_path; flows compute on the session's 2-worker cluster."""
    registry = str(tmp_path / "models")
    monkeypatch.setenv("KMFLOW_REGISTRY__URL", registry)
    monkeypatch.setenv("KMFLOW_CLUSTER__MODE", "address")
    monkeypatch.setenv("KMFLOW_CLUSTER__ADDRESS", dask_cluster.scheduler_address)
    return {
        "registry": registry,
        "store": str(tmp_path / "store.zarr"),
        "out": str(tmp_path / "out"),
    }


def _artifacts(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    return asyncio.run(read())


def _colors(path: Path) -> set[tuple[int, ...]]:
    with Image.open(path) as im:
        return {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)}


@pytest.fixture
def fresh_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    """A cluster of its own, so its scheduler has seen only this test's work."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        monkeypatch.setenv("KMFLOW_CLUSTER__ADDRESS", cluster.scheduler_address)
        yield cluster


def test_pipeline_runs_every_stage_on_the_cluster(
    env: dict[str, str], photo_dir: Path, fresh_cluster: LocalCluster
) -> None:
    params = PipelineParams(
        sources=[str(photo_dir)], store=env["store"], out=env["out"], model="photos", k=6, seed=0
    )
    result = pipeline_flow(params)

    # The registry holds version 1, promoted, with its evaluation and reference statistics.
    registry = ModelRegistry(env["registry"])
    assert result.train.version == 1
    assert result.train.promoted is True
    assert result.train.reason == "no champion yet"
    assert [r.version for r in registry.versions("photos")] == [1]
    champion = registry.champion("photos")
    assert champion is not None
    assert champion.version == 1
    model = registry.load("photos", 1)
    assert model.centers.shape == (6, 3)
    record = model.record
    store = PixelStore(env["store"])
    assert record.fingerprint == store.fingerprint()
    assert record.color_space == "rgb"
    assert record.parent is None
    assert record.seed >= 0
    assert record.params["k"] == 6
    assert record.params["n_pixels"] == store.n_pixels
    for name in ("inertia_per_pixel", "calinski_harabasz", "davies_bouldin", "psnr", "delta_e"):
        assert math.isfinite(record.metrics[name]), name
    assert sum(record.metrics["sizes"]) == store.n_pixels
    assert sum(record.reference["cluster_fractions"]) == pytest.approx(1.0)
    assert len(record.reference["channel_histograms"]["counts"]) == 3

    # Quantized images: same relative folders, at most k colors, plus the palette swatch.
    out = Path(env["out"])
    for rel in ("china.png", "sub/flower.png", "sky.png"):
        assert len(_colors(out / rel)) <= 6
    assert (out / "palette.png").exists()
    assert result.apply.psnr == pytest.approx(record.metrics["psnr"], rel=1e-9)
    assert len(result.apply.images) == 3
    assert result.ingest.n_images == 3

    # The result pickles (Prefect may persist it) and its dict is the --report JSON.
    restored = pickle.loads(pickle.dumps(result))
    assert (restored.train.version, restored.apply.psnr) == (1, result.apply.psnr)
    report = json.loads(json.dumps(json_ready(result.to_dict()), allow_nan=False))
    assert set(report) == {"ingest", "train", "apply", "seconds"}
    assert report["ingest"]["added"] == 3
    assert report["train"]["version"] == 1
    assert sorted(Path(p).name for p in report["apply"]["images"]) == [
        "china.png",
        "flower.png",
        "sky.png",
    ]

    # Artifacts: metrics table, markdown reports, links, a finished progress bar.
    (metrics,) = _artifacts("photos-train-metrics")
    assert metrics.type == "table"
    assert "davies_bouldin" in str(metrics.data)
    (report,) = _artifacts("photos-train-report")
    assert report.type == "markdown"
    for text in ("version 1", record.fingerprint, "Cluster sizes", "Timings", "Dask cluster"):
        assert text in str(report.data)
    assert _artifacts("photos-pipeline-report")[0].type == "markdown"
    (outputs,) = _artifacts("photos-outputs")
    assert outputs.data == f"[outputs]({out.as_uri()})"  # absolute URLs: live in a browser
    (palette,) = _artifacts("photos-palette")
    assert "data:image/png;base64," in palette.data  # the swatch itself
    assert f"({(out / 'palette.png').as_uri()})" in palette.data
    (progress,) = _artifacts("photos-training-progress")
    assert progress.type == "progress"
    assert float(progress.data) == 100.0

    # The work ran on the cluster's worker processes, not serially in the flow's process.
    with Client(fresh_cluster) as client:
        done = client.run_on_scheduler(
            lambda dask_scheduler: {
                name: sum(p.all_durations.values())
                for name, p in dask_scheduler.task_prefixes.items()
            }
        )
    # (Dask names a task prefix after its function, leading underscores stripped.)
    for prefix in ("decode_images", "hist_block", "moments_block", "quantize_batch"):
        assert done.get(prefix, 0.0) > 0.0, f"no {prefix} task ran on the cluster: {sorted(done)}"
    # Lloyd passes over persisted data run in a block-holder actor on each worker (no task per
    # pass), or as lloyd_block tasks when no holder could be placed.
    assert done.get("kmflow-blocks", 0.0) > 0.0 or done.get("lloyd_block", 0.0) > 0.0, sorted(done)


def test_train_promotes_only_if_not_worse_and_warm_starts(
    env: dict[str, str], photo_dir: Path
) -> None:
    ingest_flow(IngestParams(sources=[str(photo_dir)], store=env["store"]))
    first = train_flow(TrainParams(store=env["store"], model="m", k=5, seed=0))
    assert (first.version, first.promoted, first.champion) == (1, True, 1)
    # The report step: the figures in the UI (data URIs) and the page next to the model.
    figures = str(max(_artifacts("m-figures"), key=lambda a: a.created).data)
    assert "# m version 1: palette, k=5" in figures
    assert figures.count("](data:image/png;base64,") == 6
    assert "a palette is fitted at one given k" in figures
    page = Path(env["registry"]) / "m" / "reports" / "v000001" / "report.html"
    assert page.read_text().count('<img src="data:image/png;base64,') == 6
    link = str(max(_artifacts("m-report-page"), key=lambda a: a.created).data)
    assert page.as_uri() in link

    # Fewer colors fit worse on the same pixels: registered, not promoted.
    worse = train_flow(TrainParams(store=env["store"], model="m", k=2, seed=0))
    assert (worse.version, worse.promoted, worse.champion) == (2, False, 1)
    assert worse.reason.startswith("inertia_per_pixel")
    assert "> champion v1" in worse.reason

    # A warm start from the champion: parent recorded, converges at once, not worse.
    warm = train_flow(TrainParams(store=env["store"], model="m", k=5, init="warm-start"))
    registry = ModelRegistry(env["registry"])
    record = registry.record("m", warm.version)
    assert (warm.version, warm.parent, record.parent) == (3, 1, 1)
    assert record.init == "warm-start"
    assert record.n_iter <= 3
    assert warm.promoted is True
    assert registry.champion("m").version == 3

    # promote="never" registers without touching the champion.
    never = train_flow(TrainParams(store=env["store"], model="m", k=8, promote="never"))
    assert never.version == 4
    assert registry.champion("m").version == 3

    # A warm start with another k is refused before anything is fitted or registered.
    with pytest.raises(InvalidInputError, match="cannot warm-start k=6"):
        train_flow(TrainParams(store=env["store"], model="m", k=6, init="warm-start"))
    assert [r.version for r in registry.versions("m")] == [1, 2, 3, 4]


def test_held_out_evaluation_and_the_evaluate_and_apply_flows(
    env: dict[str, str], photo_dir: Path
) -> None:
    ingest_flow(IngestParams(sources=[str(photo_dir)], store=env["store"]))
    holdout = Split(fraction=0.34, by="image", seed=1)
    trained = train_flow(TrainParams(store=env["store"], model="h", k=4, seed=1, holdout=holdout))
    registry = ModelRegistry(env["registry"])
    record = registry.record("h", trained.version)
    store = PixelStore(env["store"])
    assert record.metrics["part"] == "eval"
    assert record.fingerprint != store.fingerprint()  # the split is part of the identity
    assert 0 < record.params["n_pixels"] < store.n_pixels
    assert sum(record.metrics["sizes"]) == store.n_pixels - record.params["n_pixels"]

    # Re-evaluating the champion on the same split gives the same held-out figures.
    again = evaluate_flow(
        EvaluateParams(store=env["store"], model="h", holdout=holdout, silhouette_sample_size=0)
    )
    assert again.version == trained.version
    assert again.metrics["inertia"] == pytest.approx(record.metrics["inertia"], rel=1e-12)

    applied = apply_flow(ApplyParams(store=env["store"], model="h", out=env["out"]))
    assert applied.version == trained.version
    assert len(applied.images) == 3
    assert all(len(_colors(Path(i["output"]))) <= 4 for i in applied.images)

    assert PixelStore(env["store"]).labels() is not None  # shared mode stores labels(pixel)

    # Each image with its own palette: no model needed, each PNG its own 3 colors.
    own = apply_flow(
        ApplyParams(
            store=env["store"], model="nope", out=env["out"] + "-own", palette="per-image", k=3
        )
    )
    assert own.version is None
    assert len(own.images) == 3
    for image in own.images:
        assert _colors(Path(image["output"])) <= {tuple(c) for c in image["palette"]}
        assert len(image["palette"]) == 3
    assert len({tuple(map(tuple, i["palette"])) for i in own.images}) == 3  # not one palette

    # An unknown model fails the run with a clear error and writes nothing.
    missing = Path(env["out"]) / "never"
    with pytest.raises(ModelNotFoundError, match="nope"):
        apply_flow(ApplyParams(store=env["store"], model="nope", out=str(missing)))
    assert not missing.exists()


def test_ingest_flow_reports_bad_images_and_keeps_the_good_ones(
    env: dict[str, str], photo_dir: Path, tmp_path: Path
) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "good.png").write_bytes((photo_dir / "sky.png").read_bytes())
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = ingest_flow(IngestParams(sources=[str(mixed)], store=env["store"]))
    assert result.n_images == 1
    assert [e["source"].rsplit("/", 1)[-1] for e in result.errors] == ["broken.png"]

    # Strict: the run fails, but the good image stays stored (nothing is lost).
    strict_store = str(tmp_path / "strict.zarr")
    with pytest.raises(InvalidInputError, match=r"1 image\(s\) could not be ingested \(strict\)"):
        ingest_flow(IngestParams(sources=[str(mixed)], store=strict_store, strict=True))
    assert PixelStore(strict_store).n_images == 1

    # Nothing ingestible at all: the run fails and says so.
    bad_only = tmp_path / "bad_only"
    bad_only.mkdir()
    (bad_only / "x.png").write_bytes(b"not an image")
    with pytest.raises(InvalidInputError, match="nothing could be ingested"):
        ingest_flow(IngestParams(sources=[str(bad_only)], store=str(tmp_path / "empty.zarr")))


def test_flow_parameters_are_validated_by_prefect(env: dict[str, str]) -> None:
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="k"):
        train_flow(params={"store": env["store"], "k": 0})  # type: ignore[arg-type]
    with pytest.raises(ParameterTypeError, match="color_space"):
        train_flow(params={"store": env["store"], "color_space": "hsv"})  # type: ignore[arg-type]


def test_the_cached_fit_result_is_json_not_pickle(env: dict[str, str], photo_dir: Path) -> None:
    """The fit's persisted result (read back by a retried run) holds no pickle."""
    import json

    from prefect.settings import get_current_settings

    from kmflow.tasks.train import PaletteSerializer

    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    before = set(storage.rglob("*")) if storage.exists() else set()
    ingest_flow(IngestParams(sources=[str(photo_dir)], store=env["store"]))
    trained = train_flow(TrainParams(store=env["store"], model="m", k=4, seed=0))
    written = [p for p in set(storage.rglob("*")) - before if p.is_file()]
    assert written, f"no result was persisted under {storage}"
    centers = ModelRegistry(env["registry"]).load("m", trained.version).centers
    for path in written:
        record = json.loads(path.read_bytes())  # a result record is JSON
        assert record["metadata"]["serializer"]["type"] == "kmflow-palette-json", path
        json.loads(record["result"])  # the result itself is JSON text, not pickled bytes
        palette = PaletteSerializer().loads(record["result"].encode())
        np.testing.assert_array_equal(palette.centers, centers)  # exact through JSON
