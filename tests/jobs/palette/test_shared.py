"""Color quantization end to end in the library: ingest, fit a palette, apply it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from kmflow import InvalidInputError
from kmflow.jobs.palette import apply_palette, fit_palette
from kmflow.jobs.palette.color import ciede2000, lab_to_srgb, psnr, srgb_to_lab
from kmflow.storage.images import discover_images
from kmflow.storage.pixelstore import PixelStore


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Crops of scikit-learn's sample photos in nested folders (PNG and JPEG)."""
    root = tmp_path_factory.mktemp("photos")
    china, flower = load_sample_images().images
    (root / "a").mkdir()
    (root / "a" / "b").mkdir()
    Image.fromarray(china[100:160, 200:290]).save(root / "a" / "china_crop.png")
    Image.fromarray(flower[150:230, 300:350]).save(root / "a" / "b" / "flower_crop.png")
    Image.fromarray(china[:40, :70]).save(root / "sky.png")
    return root


@pytest.fixture
def store(tmp_path: Path, photo_dir: Path) -> PixelStore:
    s = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=4096)
    report = s.ingest(discover_images(str(photo_dir)), max_pixels=10**7)
    assert len(report.added) == 3
    return s


def _read_png(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_fit_and_apply_write_quantized_images(
    store: PixelStore, tmp_path: Path, photo_dir: Path
) -> None:
    palette = fit_palette(store, 8, random_state=0)
    assert palette.rgb.shape == (8, 3)
    assert palette.rgb.dtype == np.uint8
    assert palette.method == "histogram"
    assert palette.n_pixels == store.n_pixels
    assert palette.n_colors < palette.n_pixels
    out = tmp_path / "out"
    report = apply_palette(store, palette, str(out), write_labels=True)
    assert report.labels_written
    assert {r.relpath for r in report.images} == {
        "a/china_crop.png",
        "a/b/flower_crop.png",
        "sky.png",
    }
    total_sse = 0.0
    pooled_de = 0.0
    for r in report.images:
        original = _read_png(str(photo_dir / r.relpath))
        rendered = _read_png(r.output)
        assert r.output == str(out / r.relpath)  # same relative folder and stem, as .png
        assert rendered.shape == original.shape
        # Every rendered color is a palette color, and the nearest one to the original.
        colors = {tuple(c) for c in rendered.reshape(-1, 3)}
        assert colors <= {tuple(c) for c in palette.rgb}
        d2 = ((original.reshape(-1, 1, 3) - palette.centers[None]) ** 2).sum(-1)
        nearest = palette.rgb[d2.argmin(1)]
        np.testing.assert_array_equal(rendered.reshape(-1, 3), nearest)
        sse = ((original.astype(float) - rendered) ** 2).sum()
        assert r.psnr == pytest.approx(psnr(sse / original.size), rel=1e-9)
        de = ciede2000(srgb_to_lab(original.reshape(-1, 3)), srgb_to_lab(rendered.reshape(-1, 3)))
        assert r.delta_e == pytest.approx(de.mean(), rel=1e-9)
        total_sse += sse
        pooled_de += de.sum()
    n = store.n_pixels
    assert report.n_pixels == n
    assert report.psnr == pytest.approx(psnr(total_sse / (3 * n)), rel=1e-9)
    assert report.delta_e == pytest.approx(pooled_de / n, rel=1e-9)
    assert 20 < report.psnr < 45
    swatch = _read_png(report.palette_url)
    assert swatch.shape == (64, 64 * 8, 3)
    np.testing.assert_array_equal(swatch[0, ::64], palette.rgb)
    # Labels are stored for every pixel and agree with the rendering.
    labels = store.labels()
    assert labels is not None
    assert labels.shape == (n,)
    first = store.images()[0]
    rendered = _read_png(str(out / first.relpath)).reshape(-1, 3)
    np.testing.assert_array_equal(
        palette.rgb[labels[first.offset : first.offset + first.height * first.width].compute()],
        rendered,
    )


def test_histogram_and_pixel_fits_agree(store: PixelStore) -> None:
    init = np.array([[20, 30, 40], [200, 180, 160], [90, 120, 60], [250, 250, 250]], float)
    hist = fit_palette(store, 4, init=init, tol=0)
    full = fit_palette(store, 4, init=init, tol=0, method="pixels")
    assert full.n_colors == store.n_pixels
    assert hist.n_colors < full.n_colors
    np.testing.assert_allclose(hist.centers, full.centers, rtol=1e-12)
    assert hist.inertia == pytest.approx(full.inertia, rel=1e-12)
    assert store.histogram() is not None  # cached for the next fit


def test_lab_palette(store: PixelStore, tmp_path: Path) -> None:
    palette = fit_palette(store, 6, color_space="lab", random_state=1)
    assert palette.color_space == "lab"
    assert 0 <= palette.centers[:, 0].min() <= palette.centers[:, 0].max() <= 100
    np.testing.assert_array_equal(palette.rgb, lab_to_srgb(palette.centers))
    # From the same initial centers, the histogram and full-pixel fits agree in Lab too.
    hist = fit_palette(store, 6, color_space="lab", init=palette.centers, tol=0)
    full = fit_palette(store, 6, color_space="lab", init=palette.centers, method="pixels", tol=0)
    np.testing.assert_allclose(full.centers, hist.centers, rtol=1e-9)
    report = apply_palette(store, palette, str(tmp_path / "lab"))
    assert 15 < report.psnr < 45
    assert report.delta_e > 0


def test_more_colors_than_the_images_have(tmp_path: Path) -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    img[:5] = [255, 0, 0]
    Image.fromarray(img).save(tmp_path / "two.png")
    s = PixelStore(str(tmp_path / "s.zarr"))
    s.ingest(discover_images(str(tmp_path / "two.png")), max_pixels=10**6)
    with pytest.raises(InvalidInputError, match="n_clusters=3 but only 2 distinct points"):
        fit_palette(s, 3)


def test_empty_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"")
    s = PixelStore(str(tmp_path / "s.zarr"))
    report = s.ingest(discover_images(str(tmp_path / "bad.png")), max_pixels=10**6)
    assert report.errors
    with pytest.raises(InvalidInputError, match="holds no images"):
        fit_palette(s, 3)


@pytest.mark.integration
def test_s3_images_store_and_outputs(s3_bucket, photo_dir: Path, tmp_path: Path) -> None:
    """Images from s3://.../images/, the store at s3://.../store.zarr, PNGs to s3://.../out/."""
    import s3fs

    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    for path in photo_dir.rglob("*.png"):
        fs.put_file(str(path), f"{bucket}/images/{path.relative_to(photo_dir).as_posix()}")
    store = PixelStore(f"{bucket}/store.zarr", storage_options=options, chunk_pixels=4096)
    sources = discover_images(f"{bucket}/images/", storage_options=options)
    report = store.ingest(sources, max_pixels=10**7, storage_options=options)
    assert len(report.added) == 3
    init = np.array([[20, 30, 40], [200, 180, 160], [90, 120, 60], [250, 250, 250]], float)
    palette = fit_palette(store, 4, init=init)
    applied = apply_palette(
        store, palette, f"{bucket}/out", storage_options=options, write_labels=True
    )
    assert applied.palette_url == f"{bucket}/out/palette.png"

    # The same run on local files gives the same palette and the same PNGs.
    local = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=4096)
    local.ingest(discover_images(str(photo_dir)), max_pixels=10**7)
    local_palette = fit_palette(local, 4, init=init)
    np.testing.assert_array_equal(local_palette.rgb, palette.rgb)
    apply_palette(local, local_palette, str(tmp_path / "out"), write_labels=True)
    for rel in ("a/china_crop.png", "a/b/flower_crop.png", "sky.png"):
        with fs.open(f"{bucket}/out/{rel}", "rb") as f:
            remote = np.asarray(Image.open(f).convert("RGB"))
        np.testing.assert_array_equal(remote, _read_png(str(tmp_path / "out" / rel)))
    # The store reopens from S3 with every pixel and the labels written by apply.
    reopened = PixelStore(f"{bucket}/store.zarr", storage_options=options)
    assert reopened.n_pixels == local.n_pixels
    labels = reopened.labels()
    assert labels is not None
    np.testing.assert_array_equal(labels.compute(), local.labels().compute())


# --------------------------------------------------------------------------- splits, evaluation


def _all_pixels(store: PixelStore) -> np.ndarray:
    return np.asarray(store.pixels().compute())


def test_fit_on_an_image_split_sees_only_the_training_images(store: PixelStore) -> None:
    from kmflow.jobs.palette import Split, select

    split = Split(by="image", fraction=0.4, seed=1)
    train, held = select(store, split, "train"), select(store, split, "eval")
    # Disjoint, covering, whole images.
    assert {r.sha256 for r in train.images}.isdisjoint({r.sha256 for r in held.images})
    assert len(train.images) + len(held.images) == 3
    assert train.images
    assert held.images
    start = np.array([[20.0, 20, 20], [200, 200, 200], [200, 60, 40], [60, 120, 200]])
    palette = fit_palette(store, 4, init=start, split=split)
    assert palette.n_pixels == sum(r.n_pixels for r in train.images)
    # Same as fitting those images' pixels directly, from the same start.
    direct = np.concatenate(
        [_all_pixels(store)[r.offset : r.offset + r.n_pixels] for r in train.images]
    )
    colors, _counts = np.unique(direct, axis=0, return_counts=True)
    assert palette.n_colors == len(colors)
    from kmflow import KMeans

    km = KMeans(4, init=start).fit(direct)
    np.testing.assert_allclose(palette.centers, km.cluster_centers_, atol=1e-9)
    assert palette.inertia == pytest.approx(km.inertia_, rel=1e-9)


def test_fit_on_a_row_split_histogram_and_pixels_agree(store: PixelStore) -> None:
    from kmflow.jobs.palette import Split

    split = Split(by="row", fraction=0.3, seed=2)
    start = np.array([[20.0, 20, 20], [200, 200, 200], [200, 60, 40], [60, 120, 200], [90] * 3])
    hist = fit_palette(store, 5, init=start, split=split)
    pixels = fit_palette(store, 5, init=start, split=split, method="pixels")
    assert hist.n_pixels == pixels.n_pixels
    assert 0.6 * store.n_pixels < hist.n_pixels < 0.8 * store.n_pixels
    np.testing.assert_allclose(pixels.centers, hist.centers, atol=1e-6)
    assert pixels.inertia == pytest.approx(hist.inertia, rel=1e-9)


def test_evaluate_matches_scikit_learn_and_apply(store: PixelStore, tmp_path: Path) -> None:
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    from kmflow.jobs.palette import evaluate_palette

    palette = fit_palette(store, 6, random_state=0)
    ev = evaluate_palette(store, palette, silhouette_sample_size=500, random_state=0)
    x = _all_pixels(store).astype(np.float64)
    labels = ((x[:, None, :] - palette.centers[None]) ** 2).sum(-1).argmin(1)
    # The histogram path gives exactly the per-pixel values.
    assert ev.part == "all"
    assert ev.n_pixels == len(x)
    assert ev.metrics["calinski_harabasz"] == pytest.approx(
        calinski_harabasz_score(x, labels), rel=1e-8
    )
    assert ev.metrics["davies_bouldin"] == pytest.approx(davies_bouldin_score(x, labels), rel=1e-8)
    sse = ((x - palette.centers[labels]) ** 2).sum()
    assert ev.metrics["inertia"] == pytest.approx(sse, rel=1e-9)
    assert ev.metrics["inertia_per_pixel"] == pytest.approx(sse / len(x), rel=1e-9)
    assert sum(ev.sizes) == len(x)
    assert ev.sizes == np.bincount(labels, minlength=6).tolist()
    assert -1.0 <= ev.metrics["silhouette"] <= 1.0
    for c in range(3):
        np.testing.assert_array_equal(
            ev.channel_counts[c], np.bincount(x[:, c].astype(int), minlength=256)
        )
    # PSNR and ΔE equal what apply measures on the written images, overall and per image.
    applied = apply_palette(store, palette, str(tmp_path / "out"))
    assert ev.metrics["psnr"] == pytest.approx(applied.psnr, rel=1e-9)
    assert ev.metrics["delta_e"] == pytest.approx(applied.delta_e, rel=1e-9)
    by_path = {q.relpath: q for q in ev.images}
    for r in applied.images:
        assert by_path[r.relpath].psnr == pytest.approx(r.psnr, rel=1e-9)
        assert by_path[r.relpath].delta_e == pytest.approx(r.delta_e, rel=1e-9)


def test_evaluate_on_held_out_rows_only(store: PixelStore) -> None:
    from kmflow.jobs.palette import Split, evaluate_palette
    from kmflow.kernels.split import holdout_rows

    split = Split(by="row", fraction=0.25, seed=5)
    palette = fit_palette(store, 4, random_state=0, split=split)
    ev = evaluate_palette(store, palette, split=split, silhouette_sample_size=0)
    mask = holdout_rows(store.pixels(), 0.25, seed=5).compute()
    x = _all_pixels(store)[mask].astype(np.float64)
    labels = ((x[:, None, :] - palette.centers[None]) ** 2).sum(-1).argmin(1)
    assert ev.part == "eval"
    assert ev.n_pixels == len(x) == sum(q.n_pixels for q in ev.images)
    assert ev.metrics["inertia"] == pytest.approx(
        ((x - palette.centers[labels]) ** 2).sum(), rel=1e-9
    )
    assert np.isnan(ev.metrics["silhouette"])  # sample size 0 skips it


def test_palette_from_centers_validates() -> None:
    from kmflow.jobs.palette import palette_from_centers

    p = palette_from_centers(np.array([[0.0, 0, 0], [255, 255, 255]]), "rgb")
    assert p.rgb.tolist() == [[0, 0, 0], [255, 255, 255]]
    with pytest.raises(InvalidInputError, match=r"shape \(n_clusters, 3\).*got shape \(2, 2\)"):
        palette_from_centers(np.zeros((2, 2)))
    with pytest.raises(InvalidInputError, match="color_space must be 'rgb' or 'lab'"):
        palette_from_centers(np.zeros((2, 3)), "hsv")  # type: ignore[arg-type]


def test_evaluate_a_single_cluster_gives_nan_scores_not_an_error(tmp_path: Path) -> None:
    from kmflow.jobs.palette import evaluate_palette, palette_from_centers

    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, dtype=np.uint8)).save(folder / "gray.png")
    s = PixelStore(str(tmp_path / "flat.zarr"), chunk_pixels=4096)
    s.ingest(discover_images(str(folder)), max_pixels=10**7)
    palette = palette_from_centers(np.array([[90.0, 90, 90], [250, 10, 10]]))
    ev = evaluate_palette(s, palette)
    assert np.isnan(ev.metrics["calinski_harabasz"])
    assert np.isnan(ev.metrics["davies_bouldin"])
    assert np.isnan(ev.metrics["silhouette"])
    assert ev.metrics["inertia"] == 0.0
    assert ev.sizes == [600, 0]
    assert ev.metrics["psnr"] == float("inf")  # every pixel is exactly its palette color


def test_shared_rendering_is_the_per_pixel_assignment_byte_for_byte(
    store: PixelStore, tmp_path: Path
) -> None:
    """One pass over unique colors writes exactly the PNG a per-pixel assignment writes."""
    from kmflow.kernels.dense import nearest
    from kmflow.storage.images import encode_png_indexed

    for color_space in ("rgb", "lab"):
        palette = fit_palette(store, 7, color_space=color_space, random_state=3)  # type: ignore[arg-type]
        report = apply_palette(store, palette, str(tmp_path / color_space))
        assert not report.labels_written
        assert store.labels() is None
        pixels = _all_pixels(store)
        for r in store.images():
            px = pixels[r.offset : r.offset + r.n_pixels]
            x = srgb_to_lab(px) if color_space == "lab" else px
            labels = nearest(x, palette.centers).reshape(r.height, r.width)
            expected = encode_png_indexed(labels, palette.rgb)
            out = tmp_path / color_space / r.relpath
            assert out.read_bytes() == expected
