"""A palette per image: each image's own colors, deterministic, as good as scikit-learn's."""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import load_sample_images

from kmflow import InvalidInputError
from kmflow.jobs.palette.color import psnr
from kmflow.jobs.palette.outputs import output_urls
from kmflow.jobs.palette.per_image import PerImageParams, fit_image_palette, quantize_images
from kmflow.jobs.palette.render import ColorHistogram, paint
from kmflow.storage.images import discover_images
from kmflow.storage.pixelstore import PixelStore

# Four colors per image, each image its own: a shared palette of 4 would lose most of them.
_COLORS = {
    "reds.png": [[200, 20, 20], [120, 10, 10], [250, 120, 120], [60, 0, 0]],
    "blues.png": [[20, 20, 200], [10, 60, 120], [120, 160, 250], [0, 0, 60]],
    "greens.png": [[20, 180, 20], [90, 220, 60], [10, 80, 30], [160, 250, 160]],
}


def _blocks(colors: list[list[int]], rng: np.random.Generator, noise: int) -> np.ndarray:
    image = np.zeros((60, 80, 3), np.int16)
    for i, c in enumerate(colors):
        image[(i // 2) * 30 : (i // 2 + 1) * 30, (i % 2) * 40 : (i % 2 + 1) * 40] = c
    image += rng.integers(-noise, noise + 1, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def known_colors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("known")
    rng = np.random.default_rng(0)
    for name, colors in _COLORS.items():
        Image.fromarray(_blocks(colors, rng, noise=3)).save(root / name)
    # An image with 3 distinct colors: fewer than k, kept exactly.
    few = np.zeros((20, 30, 3), np.uint8)
    few[:, 10:20] = [255, 255, 0]
    few[:, 20:] = [0, 255, 255]
    Image.fromarray(few).save(root / "few.png")
    return root


def _ingest(root: Path, url: str) -> tuple[PixelStore, list]:
    store = PixelStore(url, chunk_pixels=3000)
    sources = discover_images(str(root))
    store.ingest(sources, max_pixels=10**7)
    by_sha = {r.sha256: r for r in store.images()}
    records = [by_sha[hashlib.sha256(Path(s.url).read_bytes()).hexdigest()] for s in sources]
    return store, records


def _read(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_each_image_recovers_its_own_colors(known_colors: Path, tmp_path: Path) -> None:
    store, records = _ingest(known_colors, str(tmp_path / "s.zarr"))
    outs = output_urls(str(tmp_path / "out"), [r.relpath for r in records])
    report = quantize_images(
        store, list(zip(records, outs, strict=True)), PerImageParams(4, seed=0)
    )
    by_name = {q.relpath: q for q in report.images}
    for name, colors in _COLORS.items():
        q = by_name[name]
        got = np.array(sorted(map(tuple, q.palette)))
        want = np.array(sorted(map(tuple, colors)))
        assert np.abs(got - want).max() <= 2, (name, got, want)
        assert not q.exact
        assert q.psnr > 40  # only the ±3 noise is lost
    few = by_name["few.png"]
    assert few.exact
    assert sorted(map(tuple, few.palette)) == [(0, 0, 0), (0, 255, 255), (255, 255, 0)]
    assert few.psnr == float("inf")
    np.testing.assert_array_equal(_read(few.output), _read(str(known_colors / "few.png")))
    assert report.n_fitted == 4
    assert report.n_tasks >= 1


def test_same_palettes_for_any_batching_and_scheduler(
    known_colors: Path, tmp_path: Path, dask_client
) -> None:
    """One image per task or all in one task on the 2-worker cluster, or threads: same bytes."""
    store, records = _ingest(known_colors, str(tmp_path / "s.zarr"))
    params = PerImageParams(3, seed=5)
    runs = []
    for name, batch in (("one", 1), ("all", 10**9)):
        outs = output_urls(str(tmp_path / name), [r.relpath for r in records])
        report = quantize_images(
            store,
            list(zip(records, outs, strict=True)),
            params,
            batch_pixels=batch,
            reuse_palettes=False,
        )
        runs.append(report)
    assert runs[0].n_tasks == len(records)
    assert runs[1].n_tasks == 1
    for a, b in zip(runs[0].images, runs[1].images, strict=True):
        assert a.palette == b.palette
        assert Path(a.output).read_bytes() == Path(b.output).read_bytes()
    # Dask's threads (no cluster) agree too.
    import dask

    with dask.config.set(scheduler="threads"):
        outs = output_urls(str(tmp_path / "threads"), [r.relpath for r in records])
        threaded = quantize_images(
            store, list(zip(records, outs, strict=True)), params, reuse_palettes=False
        )
    assert [q.palette for q in threaded.images] == [q.palette for q in runs[0].images]


def test_palettes_are_stored_and_reused(known_colors: Path, tmp_path: Path) -> None:
    store, records = _ingest(known_colors, str(tmp_path / "s.zarr"))
    outs = output_urls(str(tmp_path / "out"), [r.relpath for r in records])
    items = list(zip(records, outs, strict=True))
    first = quantize_images(store, items, PerImageParams(4, seed=0))
    assert first.n_fitted == len(records)
    again = quantize_images(store, items, PerImageParams(4, seed=0))
    assert again.n_fitted == 0  # every palette came from the store
    assert [q.palette for q in again.images] == [q.palette for q in first.images]
    assert not any(q.refitted for q in again.images)
    # Other parameters are other palettes.
    other = quantize_images(store, items, PerImageParams(3, seed=0))
    assert other.n_fitted == len(records)
    keys = [PerImageParams(4, seed=0).palette_key(r.sha256) for r in records]
    stored = PixelStore(store.url).image_palettes(keys)
    assert set(stored) == set(keys)
    assert stored[keys[0]].shape[1] == 3


def test_large_images_are_fitted_with_the_distributed_estimator(
    known_colors: Path, tmp_path: Path
) -> None:
    store, records = _ingest(known_colors, str(tmp_path / "s.zarr"))
    outs = output_urls(str(tmp_path / "out"), [r.relpath for r in records])
    report = quantize_images(
        store,
        list(zip(records, outs, strict=True)),
        PerImageParams(4, seed=0),
        max_task_pixels=1000,
    )
    by_name = {q.relpath: q for q in report.images}
    for name, colors in _COLORS.items():
        got = np.array(sorted(map(tuple, by_name[name].palette)))
        assert np.abs(got - np.array(sorted(map(tuple, colors)))).max() <= 2
    assert by_name["few.png"].exact


@pytest.mark.slow
@pytest.mark.parametrize("k", [8, 16])
def test_quality_matches_scikit_learn_on_the_sample_photos(k: int) -> None:
    """PSNR >= scikit-learn KMeans(k, n_init=1) fitted on all of the image's pixels - 0.05 dB."""
    for photo in load_sample_images().images:
        px = photo.reshape(-1, 3)
        hist = ColorHistogram.of(px)
        pal = fit_image_palette(hist, PerImageParams(k), hashlib.sha256(px.tobytes()).hexdigest())
        ours = paint(hist, *photo.shape[:2], pal.centers, pal.rgb, "rgb").psnr
        km = SKKMeans(k, n_init=1, random_state=0).fit(px.astype(np.float64))
        rgb = np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8)
        diff = px.astype(np.float64) - rgb[km.labels_]
        theirs = psnr(float((diff * diff).sum()) / diff.size)
        assert ours >= theirs - 0.05, (k, ours, theirs)


def test_parameters_are_checked() -> None:
    for bad in (
        {"n_colors": 0},
        {"n_colors": 4, "color_space": "hsv"},
        {"n_colors": 4, "n_init": 0},
        {"n_colors": 4.5},
    ):
        with pytest.raises(InvalidInputError):
            PerImageParams(**bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- painted on ingest


def _outputs_of(report: Any) -> dict[str, bytes]:
    return {q.relpath: Path(q.output).read_bytes() for q in report.images}


@pytest.mark.parametrize("scheduler", ["cluster", "threads"])
def test_new_images_are_painted_from_decoded_pixels_never_read_back(
    known_colors: Path, tmp_path: Path, request: pytest.FixtureRequest, scheduler: str
) -> None:
    """``quantize``: new images painted while ingested, as from the store, byte for byte."""
    import dask

    from kmflow.jobs.palette.job import QuantizeOptions, plan, run

    options = QuantizeOptions(n_colors=4, seed=3)

    def quantize(name: str, **kw: Any) -> Any:
        checked = plan(
            [str(known_colors)],
            str(tmp_path / name),
            PixelStore(str(tmp_path / f"{name}.zarr")),
            options,
        )
        return run(checked, options, max_pixels=10**7, **kw)

    if scheduler == "cluster":
        request.getfixturevalue("dask_client")
    with dask.config.set(scheduler="threads") if scheduler == "threads" else nullcontext():
        # strict: nothing is painted before the whole ingest is known, so from the store.
        from_store = quantize("stored", strict=True)
        with pytest.MonkeyPatch.context() as mp:

            def no_reading(self: PixelStore) -> None:
                raise AssertionError("the pixels of a new image were read back from the store")

            mp.setattr(PixelStore, "pixels", no_reading)
            streamed = quantize("streamed")
    assert [q.relpath for q in streamed.images] == [q.relpath for q in from_store.images]
    assert _outputs_of(streamed) == _outputs_of(from_store)
    assert [q.palette for q in streamed.images] == [q.palette for q in from_store.images]
    assert streamed.psnr == from_store.psnr
    assert streamed.n_fitted == len(_COLORS) + 1
    # The palettes were stored: a second run finds every image in the store and refits none.
    again = quantize("streamed")
    assert again.ingest.added == []
    assert again.n_fitted == 0
    assert _outputs_of(again) == _outputs_of(from_store)


def test_images_already_stored_are_left_to_the_store(
    known_colors: Path, tmp_path: Path, dask_client: Any
) -> None:
    """Many ingest batches streamed; what the stream skips is rendered from the store."""
    from kmflow.jobs.palette.per_image import ImageQuantizer
    from kmflow.storage.pixelstore import DecodedBatch

    sources = discover_images(str(known_colors))
    store = PixelStore(str(tmp_path / "s.zarr"), chunk_pixels=3000)
    store.ingest(sources[:1], max_pixels=10**7)  # already stored before the run
    outputs = output_urls(str(tmp_path / "out"), [s.relpath for s in sources])
    by_url = dict(zip((s.url for s in sources), outputs, strict=True))
    params = PerImageParams(4, seed=1)
    batches: list[DecodedBatch] = []
    with ImageQuantizer(store, params, outputs=by_url, max_pending=1) as quantizer:

        def on_batch(batch: DecodedBatch) -> None:
            batches.append(batch)
            quantizer.decoded(batch)

        ingest = store.ingest(sources, max_pixels=10**7, batch_pixels=5000, on_batch=on_batch)
        assert len(batches) == len(sources) - 1  # one new image per batch
        assert ingest.duplicates == [sources[0].url]
        by_sha = {r.sha256: r for r in store.images()}
        items = [(by_sha[ingest.hashes[s.url]], by_url[s.url]) for s in sources]
        report = quantizer.finish(items)
    # Every image was painted once, in the order asked, whichever way its pixels came.
    assert [q.output for q in report.images] == outputs
    reference = quantize_images(
        PixelStore(store.url),
        [(r, str(tmp_path / "ref" / Path(o).name)) for r, o in items],
        params,
        reuse_palettes=False,
    )
    assert [q.palette for q in report.images] == [q.palette for q in reference.images]
    for q, ref in zip(report.images, reference.images, strict=True):
        assert Path(q.output).read_bytes() == Path(ref.output).read_bytes()


def test_a_worker_painting_images_imports_neither_xarray_nor_dask_array() -> None:
    """What the ingest and per-image tasks need on a worker (decode, write rows, paint)
    imports in a fraction of a second: no xarray, pandas, dask.array or the store module."""
    import subprocess
    import sys

    code = (
        "import sys, distributed\n"
        "import kmflow.storage._ingest_worker, kmflow.jobs.palette.per_image\n"
        "heavy = ('dask.array', 'xarray', 'pandas', 'kmflow.storage.pixelstore', 'prefect')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_paintings_go_where_the_pixels_are_unless_that_worker_is_busier(
    tmp_path: Path, dask_client: Any
) -> None:
    """Every decoded group sits on one worker: its paintings are spread so that neither
    worker has more than one painting's pixels queued beyond the other; groups on the idle
    worker stay there."""
    import dask
    from distributed import futures_of, wait

    from kmflow.jobs.palette.per_image import ImageQuantizer, _Job
    from kmflow.storage.pixelstore import ImageRecord

    a, b = sorted(dask_client.scheduler_info()["workers"])
    sizes = [3000, 1000, 2000, 2000, 500, 4000, 1000, 1500]
    groups = [dask_client.persist(dask.delayed(list)([i]), workers=[a]) for i in sizes]
    groups.append(dask_client.persist(dask.delayed(list)([9]), workers=[b]))
    sizes.append(1000)
    jobs = [
        [_Job(ImageRecord(f"s{i}", f"r{i}", f"h{i}", 1, n, 0), f"o{i}", None)]
        for i, n in enumerate(sizes)
    ]
    wait([f for g in groups for f in futures_of(g)])
    store = PixelStore(str(tmp_path / "s.zarr"))
    with ImageQuantizer(store, PerImageParams(4)) as quantizer:
        places = quantizer._places(dask_client, groups, jobs)
    load = {a: 0, b: 0}
    for w, n in zip(places, sizes, strict=True):
        load[w] += n
    assert places[0] == a  # nothing queued anywhere: it stays with its pixels
    assert places[-1] == b  # b is not the busier one: it keeps its own group
    assert abs(load[a] - load[b]) <= max(sizes)
    assert load[b] > 1000  # some of a's paintings moved


def test_a_painting_that_fails_during_ingest_leaves_a_valid_store(
    known_colors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output that cannot be written stops the run; what was committed stays readable,
    and the next run completes it."""
    import dask

    import kmflow.jobs.palette.per_image as per_image
    from kmflow.jobs.palette.job import QuantizeOptions, plan, run

    options = QuantizeOptions(n_colors=4, seed=0)
    store = PixelStore(str(tmp_path / "s.zarr"), chunk_pixels=3000)
    checked = plan([str(known_colors)], str(tmp_path / "out"), store, options)
    written = per_image.write_bytes_atomic

    def failing(url: str, data: bytes, *a: Any, **kw: Any) -> None:
        if url.endswith("greens.png"):
            raise OSError(f"disk full writing {url}")
        written(url, data, *a, **kw)

    monkeypatch.setattr(per_image, "write_bytes_atomic", failing)
    with dask.config.set(scheduler="threads"), pytest.raises(OSError, match="disk full"):
        run(checked, options, max_pixels=10**7)
    monkeypatch.undo()
    reopened = PixelStore(store.url)
    assert 0 < reopened.n_images < len(checked.sources)  # committed batches only
    stored = {r.relpath for r in reopened.images()}
    assert "greens.png" not in stored
    with dask.config.set(scheduler="threads"):
        again = run(checked, options, max_pixels=10**7)
    assert sorted(q.relpath for q in again.images) == sorted(s.relpath for s in checked.sources)
    assert PixelStore(store.url).n_images == len(checked.sources)
    assert all(Path(q.output).exists() for q in again.images)
