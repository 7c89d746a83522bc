"""End-to-end color quantization: kmflow against scikit-learn, all in one run.

Workload: scikit-learn's two sample photos plus derived variants (flips, crops, resizes, fixed
seed) up to about ``--megapixels`` in total, written as PNG files; k = 16. Every contender
reads the files, fits 16 colors, and writes one quantized PNG per image:

- kmflow: ``PixelStore.ingest`` (decoding on a 2-worker LocalCluster) -> ``fit_palette``
  (color histogram, k-means||) -> ``apply_palette`` (labels, PNGs, metrics);
- kmflow full-pixel fit: the same fit on every pixel instead of the histogram, from the same
  initial centers as a histogram fit (the histogram speed-up, same answer);
- (a) scikit-learn ``KMeans(n_init=1, init="k-means++")`` fitted on all pixels, then predict;
- (b) scikit-learn's color-quantization example: fit on 1,000 random pixels, predict all.

PSNR and mean CIEDE2000 ΔE are computed the same way for all (kmflow's kernels), pooled over
all pixels. Run: ``python benchmarks/bench_quantize.py [--small] [--output benchmarks/RESULTS.md]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_lloyd import PeakRSS, machine_info, package_versions, write_markdown

DEFAULT_MP = 200.0
SMALL_MP = 20.0


def make_variants(folder: Path, megapixels: float, seed: int) -> tuple[int, int]:
    """Write flipped/cropped/resized variants of the sample photos as PNG; (files, pixels)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    i = 0
    while total < megapixels * 1e6:
        img = photos[i % 2]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.3:
            img = img[::-1]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(np.ascontiguousarray(img[y : y + ch, x : x + cw]))
        scale = rng.uniform(1.0, 3.0)
        crop = crop.resize((int(cw * scale), int(ch * scale)), Image.Resampling.BICUBIC)
        crop.save(folder / f"variant_{i:04d}.png", compress_level=1)
        total += crop.width * crop.height
        i += 1
    return i, total


def _metrics(original: np.ndarray, quant: np.ndarray) -> tuple[float, float]:
    """(sum of squared errors, sum of CIEDE2000 ΔE) over the pixels of one image."""
    from kmflow.kernels.color import ciede2000, srgb_to_lab
    from kmflow.kernels.histogram import pack_rgb, unpack_rgb

    diff = original.astype(np.int32) - quant.astype(np.int32)
    sse = float(np.einsum("ij,ij->", diff, diff))
    packed, first, counts = np.unique(pack_rgb(original), return_index=True, return_counts=True)
    de = ciede2000(srgb_to_lab(unpack_rgb(packed)), srgb_to_lab(quant[first]))
    return sse, float((de * counts).sum())


def _psnr(sse: float, n: int) -> float:
    from kmflow.kernels.color import psnr

    return psnr(sse / (3 * n))


def run_kmflow(files: Path, work: Path, k: int, seed: int) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from kmflow.quantize import apply_palette, fit_palette
    from kmflow.storage.images import discover_images
    from kmflow.storage.pixelstore import PixelStore

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster),
        PeakRSS() as mem,
    ):
        t0 = time.perf_counter()
        store = PixelStore(str(work / "store.zarr"))
        report = store.ingest(discover_images(str(files)), max_pixels=10**9)
        t_ingest = time.perf_counter() - t0
        palette = fit_palette(store, k, random_state=seed)
        t_fit_end = time.perf_counter()
        applied = apply_palette(store, palette, str(work / "out-kmflow"))
        total = time.perf_counter() - t0
        # The histogram's speed-up, same answer: both fits from the same initial centers
        # (k-means++ on a 100,000-pixel sample of the store, seeded).
        from sklearn.cluster import kmeans_plusplus

        sample = store.pixels()[:: max(1, store.n_pixels // 100_000)].compute()
        init, _ = kmeans_plusplus(sample.astype(np.float64), k, random_state=seed)
        t = time.perf_counter()
        hist = fit_palette(store, k, init=init)
        hist_s = time.perf_counter() - t
        t = time.perf_counter()
        full = fit_palette(store, k, init=init, method="pixels")
        full_s = time.perf_counter() - t
    return {
        "name": "kmflow",
        "n_pixels": applied.n_pixels,
        "n_images": len(report.added),
        "total_s": total,
        "ingest_s": t_ingest,
        "fit_s": palette.fit_seconds,
        "apply_s": total - (t_fit_end - t0),
        "psnr": applied.psnr,
        "delta_e": applied.delta_e,
        "n_iter": palette.n_iter,
        "n_colors": palette.n_colors,
        "peak_mib": mem.peak / 2**20,
        "hist_fit_s": hist_s,
        "full_fit_s": full_s,
        "hist_vs_full_max_center_diff": float(np.abs(hist.centers - full.centers).max()),
        "hist_n_iter": hist.n_iter,
        "full_n_iter": full.n_iter,
    }


def run_sklearn(files: Path, work: Path, k: int, seed: int, sample: int | None) -> dict[str, Any]:
    """scikit-learn: read all images, fit (all pixels, or a random sample), predict, write."""
    from PIL import Image
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    out = work / ("out-sklearn-sample" if sample else "out-sklearn-full")
    out.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(2), PeakRSS() as mem:
        t0 = time.perf_counter()
        images = []
        for path in sorted(files.glob("*.png")):
            with Image.open(path) as im:
                images.append((path.name, np.asarray(im.convert("RGB"))))
        pixels = np.concatenate([a.reshape(-1, 3) for _, a in images])
        rng = np.random.default_rng(seed)
        fit_on = pixels[rng.choice(len(pixels), sample, replace=False)] if sample else pixels
        t_fit = time.perf_counter()
        km = KMeans(k, n_init=1, init="k-means++", random_state=seed).fit(fit_on.astype(np.float32))
        fit_s = time.perf_counter() - t_fit
        sse = de_sum = 0.0
        for name, arr in images:
            flat = arr.reshape(-1, 3)
            labels = km.predict(flat.astype(np.float32))
            quant = np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8)[labels]
            Image.fromarray(quant.reshape(arr.shape)).save(out / name)
            s, d = _metrics(flat, quant)
            sse += s
            de_sum += d
        total = time.perf_counter() - t0
    n = len(pixels)
    return {
        "name": "scikit-learn, 1,000-pixel sample" if sample else "scikit-learn, all pixels",
        "n_pixels": n,
        "total_s": total,
        "fit_s": fit_s,
        "psnr": _psnr(sse, n),
        "delta_e": de_sum / n,
        "n_iter": int(km.n_iter_),
        "peak_mib": mem.peak / 2**20,
        # metrics are computed inside the loop for every contender alike; time them apart
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--small", action="store_true", help=f"{SMALL_MP:g} MP instead of {DEFAULT_MP:g}"
    )
    p.add_argument("--megapixels", type=float, default=None)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None, help="markdown results file to update")
    p.add_argument("--skip-sklearn-full", action="store_true")
    args = p.parse_args(argv)
    mp = args.megapixels or (SMALL_MP if args.small else DEFAULT_MP)
    work = Path(tempfile.mkdtemp(prefix="kmflow-bench-quantize-"))
    try:
        t = time.perf_counter()
        n_files, n_px = make_variants(work / "images", mp, args.seed)
        print(f"{n_files} images, {n_px / 1e6:.1f} MP written in {time.perf_counter() - t:.1f}s")
        results = [run_kmflow(work / "images", work, args.k, args.seed)]
        print(results[-1])
        results.append(run_sklearn(work / "images", work, args.k, args.seed, sample=1000))
        print(results[-1])
        if not args.skip_sklearn_full:
            results.append(run_sklearn(work / "images", work, args.k, args.seed, sample=None))
            print(results[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = report(results, n_files, n_px, args)
    print(body)
    if args.output:
        cmd = "python benchmarks/bench_quantize.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        info = machine_info()
        header = (
            f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
            f"- machine: {info['cores']} cores, {info['ram_gib']:.1f} GiB RAM, {info['cpu']}\n"
            f"- packages: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()) + "\n"
            f"- command: `{cmd.strip()}`\n"
        )
        write_markdown(
            args.output, f"Color quantization, {n_px / 1e6:.0f} MP, k = {args.k}", header, body
        )
    return 0


def report(results: list[dict[str, Any]], n_files: int, n_px: int, args: argparse.Namespace) -> str:
    by = {r["name"]: r for r in results}
    ours = by["kmflow"]
    lines = [
        f"Workload: {n_files} PNG images ({n_px / 1e6:.1f} MP) derived from scikit-learn's two "
        f"sample photos (seed {args.seed}), k = {args.k}. End to end = read files -> fit -> write "
        "one quantized PNG per image (kmflow also writes labels to its Zarr store and measures "
        "the metrics; the peers' metric time is inside their totals too).",
        "",
        "| contender | end-to-end s | MP/s | fit s | iterations | PSNR dB | mean ΔE00 "
        "| peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['total_s']:.1f} | {r['n_pixels'] / 1e6 / r['total_s']:.2f} | "
            f"{r['fit_s']:.2f} | {r['n_iter']} | {r['psnr']:.2f} | {r['delta_e']:.2f} | "
            f"{r['peak_mib']:,.0f} |"
        )
    lines += [
        "",
        f"kmflow: ingest {ours['ingest_s']:.1f} s, fit {ours['fit_s']:.2f} s on "
        f"{ours['n_colors']:,} unique colors, apply {ours['apply_s']:.1f} s. Peak RSS counts the "
        "driver and both Dask worker processes.",
        f"Histogram vs full-pixel fit from the same initial centers: {ours['hist_fit_s']:.2f} s "
        f"({ours['hist_n_iter']} it) vs {ours['full_fit_s']:.2f} s ({ours['full_n_iter']} it), "
        f"{ours['full_fit_s'] / ours['hist_fit_s']:.1f}x; largest center difference "
        f"{ours['hist_vs_full_max_center_diff']:.2e}.",
        "",
        "| target | value | result |",
        "|---|---:|---|",
    ]
    sample = by.get("scikit-learn, 1,000-pixel sample")
    full = by.get("scikit-learn, all pixels")
    if full:
        lines.append(
            f"| PSNR >= (a) - 0.1 dB | {ours['psnr']:.2f} vs {full['psnr']:.2f} | "
            f"{'pass' if ours['psnr'] >= full['psnr'] - 0.1 else 'FAIL'} |"
        )
        lines.append(
            f"| end-to-end faster than (a) | {ours['total_s']:.1f} s vs {full['total_s']:.1f} s | "
            f"{'pass' if ours['total_s'] < full['total_s'] else 'FAIL'} |"
        )
    if sample:
        lines.append(
            f"| PSNR > (b) | {ours['psnr']:.2f} vs {sample['psnr']:.2f} | "
            f"{'pass' if ours['psnr'] > sample['psnr'] else 'FAIL'} |"
        )
    ratio = ours["full_fit_s"] / ours["hist_fit_s"]
    lines.append(
        f"| histogram fit >= 5x faster than full-pixel fit | {ratio:.1f}x | "
        f"{'pass' if ratio >= 5 else 'FAIL'} |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
