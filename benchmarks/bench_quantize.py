"""End-to-end color quantization, k = 16: kmflow against scikit-learn, Pillow and pngquant.

Workload: scikit-learn's two sample photos plus derived variants (flips, crops, resizes, fixed
seed) up to about ``--megapixels`` in total (default 200; ``--small`` = 20), written as PNG
files. Every contender reads the PNG files, quantizes each image to k colors and writes one PNG
per image; each runs in its own fresh subprocess (this script re-invoked with ``--worker``), on
two cores:

- kmflow ``quantize`` in per-image mode (the default: each image its own k colors) and in
  shared mode (one palette for all), through ``kmflow.jobs.palette.job.plan`` / ``run`` on
  kmflow's local cluster (``kmflow.cluster.local.start_local_cluster``, as ``kmflow quantize``
  starts it) with 2 single-threaded worker processes;
- scikit-learn ``KMeans(k, n_init=1)`` per image on a 1,000-pixel sample, then ``predict`` on
  all pixels (its color-quantization example), and on all of the image's pixels (on a
  deterministic subset of the images only: every ``--sklearn-every``-th);
- Pillow ``Image.quantize`` per image: MEDIANCUT, MEDIANCUT with ``kmeans=``, FASTOCTREE;
- ``pngquant --nofs`` per image (Debian package ``pngquant``; installed with apt-get when
  missing, skipped with a note when that fails).

The peers run per image in a ``multiprocessing`` pool of 2 processes. PSNR and CIEDE2000 ΔE
are computed afterwards by this script, the same way for everyone, from the written PNGs
against the original files (int64 squared errors, pooled over all pixels; per-image means too).
Also timed: ``kmflow quantize ONE_PHOTO --k 16 --out DIR`` on a 0.5 MP photo as a subprocess
(interpreter start included), median of 3 runs after a warm-up run.

Run: ``python benchmarks/bench_quantize.py [--small] [--output benchmarks/RESULTS.md]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_lloyd import PeakRSS, machine_info, package_versions, run_subprocess, write_markdown

DEFAULT_MP = 200.0
SMALL_MP = 20.0
N_PROCESSES = 2  # every contender gets two cores: 2 Dask workers, or a pool of 2 processes
SMALL_JOB_PIXELS = 500_000
QUIET_CORES = 0.25  # a run during which other processes used more than this is retried
PSNR_MARGIN_DB = 0.05  # kmflow per image vs scikit-learn on all pixels, per image

CONTENDERS = (
    "kmflow-per-image",
    "kmflow-shared",
    "pngquant",
    "pillow-mediancut",
    "pillow-mediancut-kmeans",
    "pillow-fastoctree",
    "sklearn-sample",
    "sklearn-full",
)
PEERS = CONTENDERS[2:]


def label(name: str, args: argparse.Namespace) -> str:
    return {
        "kmflow-per-image": "kmflow quantize, per-image palettes (2 workers)",
        "kmflow-shared": "kmflow quantize, one shared palette (2 workers)",
        "pngquant": "pngquant --nofs (2 processes)",
        "pillow-mediancut": "Pillow MEDIANCUT (2 processes)",
        "pillow-mediancut-kmeans": (
            f"Pillow MEDIANCUT + kmeans= (until ≤ {args.pillow_kmeans:.1%} of pixels change; "
            "2 processes)"
        ),
        "pillow-fastoctree": "Pillow FASTOCTREE (2 processes)",
        "sklearn-sample": "scikit-learn KMeans on a 1,000-pixel sample, predict all (2 processes)",
        "sklearn-full": "scikit-learn KMeans(n_init=1) on all pixels (2 processes)",
    }[name]


# --------------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------------


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


def make_small_photo(path: Path, pixels: int = SMALL_JOB_PIXELS) -> tuple[int, int]:
    """The first sample photo (china.jpg) resized to about ``pixels`` pixels, as PNG."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[0])
    scale = math.sqrt(pixels / (photo.width * photo.height))
    size = (round(photo.width * scale), round(photo.height * scale))
    path.parent.mkdir(parents=True, exist_ok=True)
    photo.resize(size, Image.Resampling.BICUBIC).save(path)
    return size


def ensure_pngquant() -> tuple[str | None, str]:
    """(path of pngquant or None, a note). Installs the Debian package when it is missing."""
    exe = shutil.which("pngquant")
    if exe is None and shutil.which("apt-get"):
        print("pngquant not found: installing the Debian package (apt-get install -y pngquant)")
        install = ["apt-get", "install", "-y", "pngquant"]
        for cmds in ([install], [["apt-get", "update"], install]):
            for cmd in cmds:
                subprocess.run(cmd, capture_output=True, timeout=900, check=False)
            exe = shutil.which("pngquant")
            if exe:
                break
    if exe is None:
        note = "pngquant is not installed and apt-get could not install it: pngquant skipped"
        print("NOTE:", note)
        return None, note
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return exe, f"pngquant {version}"


# --------------------------------------------------------------------------------------------
# Contenders (each in a fresh subprocess: `bench_quantize.py --worker NAME --workdir W ...`)
# --------------------------------------------------------------------------------------------


def _run_kmflow(args: argparse.Namespace, work: Path, palette: str, mem: PeakRSS) -> dict[str, Any]:
    from dask.utils import key_split
    from distributed import get_task_stream

    from kmflow.cluster.local import start_local_cluster
    from kmflow.config import ClusterSettings, get_settings
    from kmflow.jobs.palette.job import QuantizeOptions, plan, run
    from kmflow.storage.pixelstore import PixelStore

    out = work / "out" / args.worker
    store = work / f"{args.worker}.zarr"
    # A retried run (see --retries) starts afresh: no stored pixels, histogram or palettes.
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    # kmflow's own local cluster (as `kmflow quantize` starts it), sized to the peers.
    settings = ClusterSettings(n_workers=N_PROCESSES, threads_per_worker=1, dashboard_address=None)
    with start_local_cluster(settings):
        cluster_s = time.perf_counter() - t0
        mem.mark_baseline()
        t0 = time.perf_counter()
        options = QuantizeOptions(n_colors=args.k, palette=palette, seed=args.seed)  # type: ignore[arg-type]
        checked = plan([str(work / "images")], str(out), PixelStore(str(store)), options)
        t_plan = time.perf_counter() - t0
        with get_task_stream() as stream:
            result = run(checked, options, max_pixels=get_settings().storage.max_image_pixels)
        total = time.perf_counter() - t0
    mem.sample()
    peak_run = mem.peak  # before the untimed profile below
    if result.ingest.errors:
        raise RuntimeError(f"ingest errors: {result.ingest.errors[:3]}")
    busy: dict[str, float] = {}
    for task in stream.data:  # seconds the workers spent per kind of task
        kind = key_split(task["key"])
        for ss in task["startstops"]:
            what = kind if ss["action"] == "compute" else ss["action"]
            busy[what] = busy.get(what, 0.0) + ss["stop"] - ss["start"]
    profile = None
    if palette == "per-image":
        try:  # kmflow's internals may change under it: a failure costs only this line
            profile = _profile_per_image(args, work)
        except Exception:
            profile = {"error": traceback.format_exc(limit=3)}
    return {
        "peak_rss_run": peak_run,
        "worker_seconds": dict(sorted(busy.items(), key=lambda kv: -kv[1])),
        "profile": profile,
        "total_s": total,
        "stages": {"plan": t_plan, **result.seconds},
        "n_images": len(result.images),
        "n_pixels": result.n_pixels,
        "outputs": {Path(q.relpath).name: q.output for q in result.images},
        "self_psnr": {Path(q.relpath).name: q.psnr for q in result.images},
        "self_pooled_psnr": result.psnr,
        "self_delta_e": result.delta_e,
        "notes": {
            "cluster_start_s": cluster_s,
            "palettes_fitted": result.n_fitted,
            "exact_images": sum(1 for q in result.images if q.exact),
            **(
                {
                    "shared_iterations": result.palette.n_iter,
                    "shared_unique_colors": getattr(result.palette, "n_colors", None),
                }
                if result.palette is not None
                else {}
            ),
        },
    }


def _profile_per_image(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Untimed by the table: the steps of a per-image task, one core, on the subset images.

    Replays what kmflow's per-image task does to each image with kmflow's public functions
    and times each step: ``ColorHistogram.of``, ``fit_image_palette``, ``paint`` (labels,
    PSNR/ΔE, PNG encode) and the file write, plus kmflow's decode of the source and its
    sha256 (what kmflow does at ingest) for scale. Two parts of ``paint`` are then timed again
    on their own: ``histogram_error`` (PSNR and ΔE, called as ``paint`` calls it for an RGB
    fit) and ``encode_png_indexed``.
    """
    import hashlib

    from kmflow.jobs.palette.per_image import PerImageParams, fit_image_palette
    from kmflow.jobs.palette.render import ColorHistogram, histogram_error, paint
    from kmflow.kernels.lloyd import nearest
    from kmflow.storage.images import decode_image, encode_png_indexed

    names = json.loads((work / "images.json").read_text())[:: args.sklearn_every]
    params = PerImageParams(n_colors=args.k, seed=args.seed)
    out = work / "profile"
    out.mkdir(exist_ok=True)
    steps = ("decode", "histogram", "fit", "paint", "write")
    sums = dict.fromkeys([*steps, "paint: psnr+ΔE", "paint: encode"], 0.0)
    n_pixels = 0
    for i, name in enumerate([names[0], *names]):  # the first image once untimed: warm-up
        t = [time.perf_counter()]
        data = (work / "images" / name).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        arr = decode_image(data, max_pixels=1 << 30)
        h, w = arr.shape[:2]
        t.append(time.perf_counter())
        hist = ColorHistogram.of(arr.reshape(-1, 3))
        t.append(time.perf_counter())
        pal = fit_image_palette(hist, params, sha)
        t.append(time.perf_counter())
        painted = paint(hist, h, w, pal.centers, pal.rgb, "rgb", labels=pal.labels)
        t.append(time.perf_counter())
        (out / name).write_bytes(painted.png)
        t.append(time.perf_counter())
        labels = nearest(hist.in_space("rgb"), pal.centers)
        t0 = time.perf_counter()
        histogram_error(hist.colors, hist.counts, labels, pal.rgb)
        t1 = time.perf_counter()
        encode_png_indexed(labels[hist.inverse].reshape(h, w), pal.rgb)
        t2 = time.perf_counter()
        if i:
            n_pixels += h * w
            for step, a, b in zip(steps, t[:-1], t[1:], strict=True):
                sums[step] += b - a
            sums["paint: psnr+ΔE"] += t1 - t0
            sums["paint: encode"] += t2 - t1
    return {"images": len(names), "n_pixels": n_pixels, "seconds": sums}


def replay_main(args: argparse.Namespace, mp_total: float) -> int:
    """``--replay RUNS``: the per-image task steps alone, median seconds per MP of RUNS runs."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kmflow-bench-replay-"))
    if not (work / "images.json").exists():
        n_files, n_px = make_variants(work / "images", mp_total, args.seed)
        images = sorted(p.name for p in (work / "images").glob("*.png"))
        (work / "images.json").write_text(json.dumps(images))
        print(f"{n_files} images, {n_px / 1e6:.1f} MP written to {work}")
    load = os.getloadavg()
    runs = [_profile_per_image(args, work) for _ in range(args.replay)]
    mp = runs[0]["n_pixels"] / 1e6
    per_mp = {
        step: statistics.median(r["seconds"][step] for r in runs) / mp
        for step in runs[0]["seconds"]
    }
    steps = sum(v for k, v in per_mp.items() if not k.startswith("paint:"))
    print(
        f"replay: {runs[0]['images']} images, {mp:.1f} MP, median of {len(runs)} runs, seconds "
        f"per MP on one core (load average before: {', '.join(f'{x:.2f}' for x in load)})"
    )
    for step, v in per_mp.items():
        print(f"  {step:<16} {v:.4f}")
    print(f"  {'sum of the steps':<16} {steps:.4f}  ({2 / steps:.2f} MP/s on 2 cores)")
    print(json.dumps({"per_mp": per_mp, "runs": runs}, default=float))
    return 0


def _pool_init() -> None:
    # One BLAS/OpenMP thread per process: the pool of 2 processes uses the 2 cores.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _read(src: str) -> np.ndarray:
    from PIL import Image

    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def _write_indexed(
    dst: str, labels: np.ndarray, palette: np.ndarray, shape: tuple[int, ...]
) -> None:
    from PIL import Image

    image = Image.fromarray(labels.astype(np.uint8).reshape(shape[:2]), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    image.save(dst)  # Pillow's default PNG settings, as kmflow's encoder


def _peer_one(job: tuple[str, str, str, int, int, float]) -> dict[str, float]:
    """Quantize one image with one peer: read, quantize, write; seconds of each."""
    name, src, dst, k, seed, pillow_kmeans = job
    t0 = time.perf_counter()
    if name == "pngquant":
        subprocess.run(
            ["pngquant", "--nofs", "--force", "--output", dst, str(k), src],
            check=True,
            capture_output=True,
        )
        return {"read": 0.0, "quantize": time.perf_counter() - t0, "write": 0.0}
    if name.startswith("pillow"):
        from PIL import Image

        with Image.open(src) as im:
            rgb = im.convert("RGB")
        t1 = time.perf_counter()
        method = (
            Image.Quantize.FASTOCTREE if name == "pillow-fastoctree" else Image.Quantize.MEDIANCUT
        )
        # kmeans=N: k-means passes until at most N - 1 pixels change their color.
        n_pixels = rgb.width * rgb.height
        kmeans = int(pillow_kmeans * n_pixels) + 1 if name == "pillow-mediancut-kmeans" else 0
        q = rgb.quantize(colors=k, method=method, kmeans=kmeans)
        t2 = time.perf_counter()
        q.save(dst)
    else:
        from sklearn.cluster import KMeans
        from sklearn.utils import shuffle

        arr = _read(src)
        t1 = time.perf_counter()
        if name == "sklearn-sample":  # scikit-learn's color-quantization example, as written
            flat = arr.reshape(-1, 3).astype(np.float64) / 255
            sample = shuffle(flat, random_state=seed, n_samples=min(1000, len(flat)))
            km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(sample)
            labels = km.predict(flat)
            palette = np.clip(np.rint(km.cluster_centers_ * 255), 0, 255).astype(np.uint8)
        else:  # all of the image's pixels
            flat = arr.reshape(-1, 3).astype(np.float64)
            km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(flat)
            labels = km.labels_
            palette = np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8)
        t2 = time.perf_counter()
        _write_indexed(dst, labels, palette, arr.shape)
    t3 = time.perf_counter()
    return {"read": t1 - t0, "quantize": t2 - t1, "write": t3 - t2}


def _run_peer(args: argparse.Namespace, work: Path, mem: PeakRSS) -> dict[str, Any]:
    import multiprocessing as mp

    import PIL.Image  # noqa: F401 - imported before the timer (the pool forks this process)
    import sklearn.cluster  # noqa: F401

    names = json.loads((work / "images.json").read_text())
    if args.worker == "sklearn-full":
        names = names[:: args.sklearn_every]
    out = work / "out" / args.worker
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (args.worker, str(work / "images" / n), str(out / n), args.k, args.seed, args.pillow_kmeans)
        for n in names
    ]
    mem.mark_baseline()
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(N_PROCESSES, initializer=_pool_init) as pool:
        times = list(pool.imap(_peer_one, jobs, chunksize=1))
    total = time.perf_counter() - t0
    stages = {s: float(sum(t[s] for t in times)) for s in ("read", "quantize", "write")}
    return {
        "total_s": total,
        "stages": stages,
        "n_images": len(names),
        "outputs": {n: str(out / n) for n in names},
    }


def worker_main(args: argparse.Namespace) -> int:
    """One contender, in this fresh process; writes <workdir>/<name>.json."""
    work = Path(args.workdir)
    res: dict[str, Any] = {"name": args.worker, "load_1min": os.getloadavg()[0]}
    with PeakRSS() as mem:
        try:
            if args.worker == "kmflow-per-image":
                res.update(_run_kmflow(args, work, "per-image", mem))
            elif args.worker == "kmflow-shared":
                res.update(_run_kmflow(args, work, "shared", mem))
            elif args.worker in PEERS:
                res.update(_run_peer(args, work, mem))
            else:
                raise ValueError(f"unknown worker {args.worker!r}")
        except Exception:
            res["error"] = traceback.format_exc()
    res["peak_rss"] = res.pop("peak_rss_run", None) or mem.peak
    res["baseline_rss"] = mem.baseline
    (work / f"{args.worker}.json").write_text(json.dumps(res, default=float))
    return 0 if "error" not in res else 1


# --------------------------------------------------------------------------------------------
# Metrics: the same for every contender, from the written PNGs against the originals
# --------------------------------------------------------------------------------------------


def _image_metrics(job: tuple[str, dict[str, str]]) -> tuple[str, dict[str, Any]]:
    """Per contender: (sum of squared errors, sum of ΔE00, pixels) of one written image.

    Squared errors: int64 over every pixel and channel. ΔE00 (kmflow.jobs.palette.color, CIE Lab
    D65): on the distinct original colors weighted by their counts when each original color
    was written as one color (no dithering), else on the distinct (original, written) pairs.
    """
    from kmflow.jobs.palette.color import ciede2000, srgb_to_lab

    src, outs = job
    orig = _read(src).reshape(-1, 3)
    n = len(orig)
    packed = (orig[:, 0].astype(np.int64) << 16) | (orig[:, 1].astype(np.int64) << 8) | orig[:, 2]
    _, first, inverse, counts = np.unique(
        packed, return_index=True, return_inverse=True, return_counts=True
    )
    lab = srgb_to_lab(orig[first])
    res: dict[str, Any] = {"_pixels": n}
    for name, path in outs.items():
        if not os.path.exists(path):
            res[name] = {"error": "no output"}
            continue
        q = _read(path).reshape(-1, 3)
        if q.shape != orig.shape:
            res[name] = {"error": f"shape {q.shape} != {orig.shape}"}
            continue
        d = orig.astype(np.int64) - q.astype(np.int64)
        sse = int(np.einsum("ij,ij->", d, d, dtype=np.int64))
        qpacked = (q[:, 0].astype(np.int64) << 16) | (q[:, 1].astype(np.int64) << 8) | q[:, 2]
        written, windex = np.unique(qpacked, return_index=True)  # at most a few hundred
        wlab = srgb_to_lab(q[windex])
        if np.array_equal(qpacked[first][inverse], qpacked):  # one written color per color
            wl = np.searchsorted(written, qpacked[first])
            de_sum = float(ciede2000(lab, wlab[wl]) @ counts)
            functional = True
        else:
            _, pidx, pcounts = np.unique(
                (inverse.astype(np.int64) << 24) | qpacked, return_index=True, return_counts=True
            )
            wl = np.searchsorted(written, qpacked[pidx])
            de_sum = float(ciede2000(lab[inverse[pidx]], wlab[wl]) @ pcounts)
            functional = False
        res[name] = {
            "sse": sse,
            "de_sum": de_sum,
            "n": n,
            "colors": int(written.size),
            "functional": functional,
        }
    return Path(src).name, res


def psnr_db(sse: float, n: int) -> float:
    return float("inf") if sse <= 0 else float(10 * np.log10(255.0**2 * 3 * n / sse))


def compute_metrics(work: Path, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{image name: {contender: figures}} for every image, in 2 processes."""
    import multiprocessing as mp

    names = json.loads((work / "images.json").read_text())
    jobs = []
    for n in names:
        outs = {r["name"]: r["outputs"][n] for r in results if n in r.get("outputs", {})}
        jobs.append((str(work / "images" / n), outs))
    with mp.get_context("fork").Pool(N_PROCESSES) as pool:
        return dict(pool.imap(_image_metrics, jobs, chunksize=2))


def aggregate(
    metrics: dict[str, dict[str, Any]], name: str, images: list[str]
) -> dict[str, Any] | None:
    rows = [metrics[i][name] for i in images if name in metrics.get(i, {})]
    if not rows or any("error" in r for r in rows) or len(rows) != len(images):
        return None
    n = sum(r["n"] for r in rows)
    sse = sum(r["sse"] for r in rows)
    per_image = [psnr_db(r["sse"], r["n"]) for r in rows]
    return {
        "n_pixels": n,
        "psnr": psnr_db(sse, n),
        "mean_image_psnr": float(np.mean(per_image)),
        "delta_e": sum(r["de_sum"] for r in rows) / n,
        "max_colors": max(r["colors"] for r in rows),
        "all_functional": all(r["functional"] for r in rows),
    }


# --------------------------------------------------------------------------------------------
# The small job: `kmflow quantize ONE_PHOTO --k 16 --out DIR`, a subprocess
# --------------------------------------------------------------------------------------------


def small_job(work: Path, k: int, runs: int = 3) -> dict[str, Any]:
    photo = work / "small" / "photo.png"
    size = make_small_photo(photo)
    exe = Path(sys.executable).with_name("kmflow")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "kmflow.cli"]
    walls, inner = [], []
    machine0, ours0 = cpu_seconds()
    for i in range(runs + 1):  # run 0 warms the numba cache and the page cache, untimed
        out, rep = work / "small" / f"out-{i}", work / "small" / f"report-{i}.json"
        cmd = [
            *base,
            "quantize",
            str(photo),
            "--k",
            str(k),
            "--out",
            str(out),
            "--report",
            str(rep),
        ]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            return {"error": f"exit {r.returncode}: {(r.stdout + r.stderr)[-2000:]}"}
        if i:
            walls.append(wall)
            summary = json.loads(rep.read_text())["summary"]
            inner.append((summary["seconds"], summary["stage_seconds"], summary["psnr_db"]))
    machine1, ours1 = cpu_seconds()
    med = statistics.median(walls)
    at = walls.index(med)
    return {
        "size": size,
        "walls": walls,
        "median_s": med,
        "inner_s": inner[at][0],
        "inner_stages": inner[at][1],
        "psnr": inner[at][2],
        "command": " ".join(["kmflow", "quantize", "PHOTO.png", "--k", str(k), "--out", "DIR"]),
        "other_cpu_s": max(0.0, (machine1 - machine0) - (ours1 - ours0)),
    }


# --------------------------------------------------------------------------------------------
# Parent: workload, orchestration, report
# --------------------------------------------------------------------------------------------


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process's waited-for descendants)."""
    import resource

    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, ru.ru_utime + ru.ru_stime


def others_cores(seconds: float = 10.0) -> float:
    """Cores the rest of the machine used over the next ``seconds`` (this process idle)."""
    machine0, ours0 = cpu_seconds()
    time.sleep(seconds)
    machine1, ours1 = cpu_seconds()
    return max(0.0, (machine1 - machine0) - (ours1 - ours0)) / seconds


def wait_for_quiet(limit_s: float, threshold: float = QUIET_CORES) -> float:
    """Wait (at most ``limit_s``) until other processes use under ``threshold`` cores."""
    t0 = time.perf_counter()
    while True:
        busy = others_cores()
        if busy < threshold or time.perf_counter() - t0 > limit_s:
            return busy
        print(f"  other processes use {busy:.2f} cores: waiting", flush=True)


def run_contender(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--workdir",
        str(work),
        "--k",
        str(args.k),
        "--seed",
        str(args.seed),
        "--sklearn-every",
        str(args.sklearn_every),
        "--pillow-kmeans",
        str(args.pillow_kmeans),
    ]
    machine0, ours0 = cpu_seconds()
    r = run_subprocess(cmd, work, name, args.timeout)
    machine1, ours1 = cpu_seconds()
    r["name"] = name
    # CPU the rest of the machine used meanwhile (other users' processes): the noise measure.
    r["other_cpu_s"] = max(0.0, (machine1 - machine0) - (ours1 - ours0))
    r["own_cpu_s"] = ours1 - ours0
    return r


def _fmt_stages(stages: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in stages.items())


def build_report(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    metrics: dict[str, dict[str, Any]],
    images: list[str],
    n_px: int,
    small: dict[str, Any] | None,
    notes: list[str],
) -> tuple[str, list[tuple[str, bool | None]]]:
    subset = images[:: args.sklearn_every]
    ok = {r["name"]: r for r in results if "error" not in r and "timed_out" not in r}
    agg = {n: aggregate(metrics, n, images) for n in ok}
    agg_sub = {n: aggregate(metrics, n, subset) for n in ok}
    sub_px = sum(metrics[i]["_pixels"] for i in subset if i in metrics)

    lines = [
        f"Workload: {len(images)} PNG images ({n_px / 1e6:.1f} MP) derived from scikit-learn's "
        f"two sample photos (flips, crops, bicubic resizes 1-3x; seed {args.seed}), k = "
        f"{args.k}. End to end = read the PNG files → quantize every image → write one PNG per "
        "image (kmflow: `plan` + `run`, which also ingests the pixels into its Zarr store and "
        "measures PSNR/ΔE itself; cluster start not included, see Details). Every peer "
        f"runs per image in a pool of {N_PROCESSES} processes (1 BLAS thread each).",
        "",
        "| contender | images | MP | end-to-end s | MP/s | PSNR dB (pooled) | mean PSNR per "
        "image dB | mean ΔE00 | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        name = r["name"]
        if name not in ok:
            why = f"timed out > {r['timed_out']:.0f} s" if "timed_out" in r else "FAILED (see log)"
            lines.append(f"| {label(name, args)} | {why} | | | | | | | |")
            continue
        a = agg[name] if name != "sklearn-full" else agg_sub[name]
        if a is None:
            lines.append(f"| {label(name, args)} | metrics missing | | | | | | | |")
            continue
        imgs = r["n_images"]
        lbl = label(name, args)
        if name == "sklearn-full":
            lbl = lbl.replace(" (2 processes)", f", 1 image in {args.sklearn_every} (2 processes)")
        lines.append(
            f"| {lbl} | {imgs} | {a['n_pixels'] / 1e6:.1f} | "
            f"{r['total_s']:.1f} | {a['n_pixels'] / 1e6 / r['total_s']:.2f} | {a['psnr']:.2f} | "
            f"{a['mean_image_psnr']:.2f} | {a['delta_e']:.2f} | {r['peak_rss'] / 2**20:,.0f} |"
        )

    # The subset: every contender on the images scikit-learn's all-pixel fit ran on.
    lines += [
        "",
        f"The same figures on the scikit-learn all-pixels subset (1 image in {args.sklearn_every}, "
        f"sorted by name: {len(subset)} images, {sub_px / 1e6:.1f} MP):",
        "",
        "| contender | PSNR dB (pooled) | mean PSNR per image dB | mean ΔE00 |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        a = agg_sub.get(r["name"])
        if a is not None:
            lines.append(
                f"| {label(r['name'], args)} | {a['psnr']:.2f} | {a['mean_image_psnr']:.2f} | "
                f"{a['delta_e']:.2f} |"
            )

    # Stage seconds.
    lines += ["", "Seconds per stage:", ""]
    for r in results:
        if r["name"] not in ok:
            continue
        if r["name"].startswith("kmflow"):
            busy = r["worker_seconds"]
            top = sorted(busy.items(), key=lambda kv: -kv[1])
            shown = [f"{k} {v:.1f}" for k, v in top[:8] if v >= 0.05]
            rest = sum(v for _, v in top[8:])
            if rest >= 0.05:
                shown.append(f"other {rest:.1f}")
            lines.append(
                f"- {label(r['name'], args)}: {_fmt_stages(r['stages'])}; total "
                f"{r['total_s']:.1f} (wall; cluster start "
                f"{r['notes']['cluster_start_s']:.1f} s before it). Dask workers busy "
                f"{sum(busy.values()):.1f} s of {N_PROCESSES} x {r['total_s']:.1f} s "
                f"({sum(busy.values()) / (N_PROCESSES * r['total_s']):.0%}), by task (Dask "
                "task stream, compute seconds summed over both workers): " + ", ".join(shown)
            )
            prof = r.get("profile")
            if prof and "error" in prof:
                lines.append(f"  - per-image task replay failed: {prof['error'].splitlines()[-1]}")
            elif prof and prof["n_pixels"]:
                per_mp = {k: v / (prof["n_pixels"] / 1e6) for k, v in prof["seconds"].items()}
                total_mp = sum(v for k, v in per_mp.items() if not k.startswith("paint:"))
                lines.append(
                    f"  - per-image task steps replayed in one process on the subset "
                    f"({prof['images']} images, {prof['n_pixels'] / 1e6:.1f} MP) with kmflow's "
                    "own functions, seconds per MP on one core: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in per_mp.items())
                    + f"; sum of the steps {total_mp:.3f} s/MP, i.e. {N_PROCESSES / total_mp:.1f} "
                    f"MP/s on {N_PROCESSES} cores if nothing else ran (decode = kmflow's decode "
                    "of the source PNG plus its sha256, as at ingest; histogram = "
                    "`ColorHistogram.of`; fit = `fit_image_palette`; paint = `paint` (labels, "
                    "PSNR/ΔE, PNG encode); the two `paint:` items time its `histogram_error` and "
                    "`encode_png_indexed` again on their own)."
                )
        else:
            lines.append(
                f"- {label(r['name'], args)}: {_fmt_stages(r['stages'])} (summed over the "
                f"{N_PROCESSES} processes); wall {r['total_s']:.1f}"
            )

    # Targets.
    checks: list[tuple[str, bool | None]] = []
    rows: list[str] = []

    def target(what: str, value: str, passed: bool | None) -> None:
        checks.append((what, passed))
        res = "-" if passed is None else ("pass" if passed else "FAIL")
        rows.append(f"| {what} | {value} | {res} |")

    ours = ok.get("kmflow-per-image")
    a_ours = agg.get("kmflow-per-image")
    if ours and a_ours:
        mps = a_ours["n_pixels"] / 1e6 / ours["total_s"]
        target("kmflow per-image end to end ≥ 10 MP/s (2 cores)", f"{mps:.2f} MP/s", mps >= 10)
        pq, a_pq = ok.get("pngquant"), agg.get("pngquant")
        if pq and a_pq:
            pq_mps = a_pq["n_pixels"] / 1e6 / pq["total_s"]
            target(
                "kmflow per-image MP/s ≥ 2x pngquant's (2 processes)",
                f"{mps:.2f} vs {pq_mps:.2f} MP/s ({mps / pq_mps:.2f}x)",
                mps >= 2 * pq_mps,
            )
        else:
            target("kmflow per-image MP/s ≥ 2x pngquant's (2 processes)", "pngquant skipped", None)
        for peer in PEERS:
            a_peer = agg_sub.get(peer) if peer == "sklearn-full" else agg.get(peer)
            mine = agg_sub.get("kmflow-per-image") if peer == "sklearn-full" else a_ours
            if a_peer is None or mine is None:
                continue
            where = f" (subset, {len(subset)} images)" if peer == "sklearn-full" else ""
            target(
                f"kmflow per-image PSNR > {peer}{where}",
                f"pooled {mine['psnr']:.2f} vs {a_peer['psnr']:.2f}; per-image mean "
                f"{mine['mean_image_psnr']:.2f} vs {a_peer['mean_image_psnr']:.2f} dB",
                mine["psnr"] > a_peer["psnr"]
                and mine["mean_image_psnr"] > a_peer["mean_image_psnr"],
            )
        if "sklearn-full" in ok and agg_sub.get("sklearn-full"):
            margins = []
            for i in subset:
                m_ours, m_sk = metrics[i]["kmflow-per-image"], metrics[i]["sklearn-full"]
                margins.append(
                    (psnr_db(m_ours["sse"], m_ours["n"]) - psnr_db(m_sk["sse"], m_sk["n"]), i)
                )
            meet = sum(1 for m, _ in margins if m >= -PSNR_MARGIN_DB)
            worst = min(margins)
            target(
                "every image: kmflow per-image PSNR ≥ scikit-learn all pixels "
                f"- {PSNR_MARGIN_DB} dB",
                f"{meet}/{len(margins)} images; worst margin {worst[0]:+.3f} dB ({worst[1]}); "
                f"median {statistics.median(m for m, _ in margins):+.3f} dB",
                meet == len(margins),
            )
    if small is not None:
        if "error" in small:
            target("small job (0.5 MP photo) < 4 s", "FAILED: " + small["error"][:200], False)
        else:
            target(
                "small job (0.5 MP photo, subprocess, interpreter start included) < 4 s",
                f"{small['median_s']:.2f} s (median of {len(small['walls'])})",
                small["median_s"] < 4,
            )
    lines += ["", "| target | value | result |", "|---|---|---|", *rows]

    # Details.
    lines += ["", "Details:"]
    if small is not None and "error" not in small:
        lines.append(
            f"- small job: `{small['command']} --report R.json` on a {small['size'][0]}x"
            f"{small['size'][1]} PNG (china.jpg resized), runs "
            + ", ".join(f"{w:.2f}" for w in small["walls"])
            + f" s after one untimed warm-up run (numba cache warm); the median run's own "
            f"`seconds` {small['inner_s']:.2f} ({_fmt_stages(small['inner_stages'])}), so "
            f"{small['median_s'] - small['inner_s']:.2f} s is interpreter start, imports and "
            f"exit; PSNR {small['psnr']:.2f} dB; other processes used "
            f"{small['other_cpu_s']:.1f} CPU-s during the 4 runs."
        )
    for r in results:
        if r["name"] not in ok:
            continue
        extra = [
            f"other processes used {r['other_cpu_s']:.1f} CPU-s during its {r['wall_s']:.0f} s "
            f"subprocess ({r['other_cpu_s'] / r['wall_s']:.2f} cores on average; its own "
            f"{r['own_cpu_s']:.0f} CPU-s)",
            f"peak RSS {r['peak_rss'] / 2**20:,.0f} MiB",
        ]
        for d in r.get("discarded_runs", []):
            extra.append(
                f"a run of {d['total_s']:.1f} s end to end discarded (other processes used "
                f"{d['other_cpu_s']:.0f} CPU-s during its {d['wall_s']:.0f} s)"
            )
        a = agg.get(r["name"]) if r["name"] != "sklearn-full" else agg_sub.get(r["name"])
        if a:
            extra.append(f"at most {a['max_colors']} colors in an image")
            if not a["all_functional"]:
                extra.append("some original colors written as different colors (ΔE over pairs)")
        if r["name"].startswith("kmflow"):
            extra += [f"{k} {v}" for k, v in r["notes"].items() if k != "cluster_start_s"]
            diffs = [
                abs(
                    r["self_psnr"][i]
                    - psnr_db(metrics[i][r["name"]]["sse"], metrics[i][r["name"]]["n"])
                )
                for i in images
                if i in r["self_psnr"] and r["name"] in metrics.get(i, {})
            ]
            if diffs and a:
                extra.append(
                    f"its own PSNR {r['self_pooled_psnr']:.3f} / ΔE {r['self_delta_e']:.3f} vs "
                    f"this script's {a['psnr']:.3f} / {a['delta_e']:.3f} (largest per-image PSNR "
                    f"difference {max(diffs):.1e} dB)"
                )
        lines.append(f"- {r['name']}: " + "; ".join(extra))
    lines += [f"- {n}" for n in notes]
    lines += [
        "- PSNR and ΔE00 are measured by this script for every contender alike, after all of "
        "them ran (not inside anyone's time): each written PNG read back with Pillow against "
        "its original; squared errors summed in int64 over all pixels and channels, PSNR = "
        "10·log10(255² / MSE) pooled over all images' pixels, and the mean of per-image PSNRs; "
        "ΔE00 = pixel-weighted mean CIEDE2000 (kmflow.jobs.palette.color, sRGB → Lab D65).",
        "- peak RSS: summed RSS of the contender's subprocess and all its descendants (Dask "
        "nanny and workers, pool processes, pngquant), sampled every 50 ms; shared pages count "
        "once per process.",
        f"- kmflow: `QuantizeOptions(n_colors={args.k}, palette=..., seed={args.seed})` (defaults "
        "otherwise: n_init 8, max_iter 300, no dithering), `plan` + `run` on kmflow's local "
        f"cluster (`start_local_cluster`, {N_PROCESSES} worker processes x 1 thread, as "
        "`kmflow quantize` starts it: its workers' malloc settings included), a fresh store "
        "per mode.",
        f"- scikit-learn: `KMeans(n_clusters={args.k}, n_init=1, random_state={args.seed})`, "
        "k-means++, tol 1e-4; the sample variant follows its color-quantization example (float "
        "/ 255, `shuffle(..., n_samples=1000)`, `predict` on all pixels); the all-pixels "
        f"variant fits float64 0-255 on every pixel of 1 image in {args.sklearn_every} "
        "(labels_ written). Pillow: `Image.quantize(colors, method, kmeans)`; kmeans = N runs "
        "k-means passes until at most N - 1 pixels change, here N = 1 + "
        f"{args.pillow_kmeans:g} x the image's pixels (kmeans=1, until no pixel changes, took "
        "5-30 s per MP). pngquant: `pngquant --nofs --force "
        f"--output OUT.png {args.k} IN.png` (quality and speed defaults). Indexed PNGs written "
        "with Pillow's default settings (kmflow writes its own: unfiltered, libdeflate level 6).",
    ]
    return "\n".join(lines) + "\n", checks


def kmflow_source_state() -> str:
    """The commit of the checkout, and the files under src/ that differ from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    head = git("log", "-1", "--format=%h %ci")
    if not head:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--", "src").splitlines()
    changed = ", ".join(line[3:] for line in dirty)
    return f"commit {head}" + (f", with uncommitted changes to {changed}" if dirty else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--small", action="store_true", help=f"{SMALL_MP:g} MP instead of {DEFAULT_MP:g}"
    )
    p.add_argument("--megapixels", type=float, default=None)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sklearn-every",
        type=int,
        default=10,
        help="scikit-learn on all pixels runs on every N-th image only (default 10)",
    )
    p.add_argument(
        "--pillow-kmeans",
        type=float,
        default=0.001,
        help="Pillow MEDIANCUT's k-means passes stop once at most this fraction of an image's "
        "pixels change (kmeans= 1 + fraction x pixels; default 0.001)",
    )
    p.add_argument(
        "--only", nargs="+", choices=CONTENDERS, default=None, help="run these contenders only"
    )
    p.add_argument("--skip-small-job", action="store_true")
    p.add_argument(
        "--replay",
        type=int,
        default=0,
        metavar="RUNS",
        help="only replay the per-image task steps in this process, RUNS times, on the "
        "scikit-learn subset of the workload (1 image in --sklearn-every), and print the "
        "median seconds per MP of each step (no contender runs; --workdir keeps the images)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per contender")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help=f"run a contender again (at most this many times) when other processes used more "
        f"than {QUIET_CORES} cores on average during it; the least disturbed run is kept",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=600.0,
        help="before each contender, wait at most this many seconds for other processes to "
        f"use under {QUIET_CORES} cores",
    )
    p.add_argument("--output", type=Path, default=None, help="markdown results file to update")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--worker", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    mp_total = args.megapixels or (SMALL_MP if args.small else DEFAULT_MP)
    if args.replay:
        return replay_main(args, mp_total)
    command = "python benchmarks/bench_quantize.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    load_start = os.getloadavg()
    source_state = kmflow_source_state()
    work = Path(tempfile.mkdtemp(prefix="kmflow-bench-quantize-"))
    notes: list[str] = []
    try:
        t = time.perf_counter()
        n_files, n_px = make_variants(work / "images", mp_total, args.seed)
        images = sorted(p.name for p in (work / "images").glob("*.png"))
        (work / "images.json").write_text(json.dumps(images))
        print(f"{n_files} images, {n_px / 1e6:.1f} MP written in {time.perf_counter() - t:.1f}s")
        names = list(args.only or CONTENDERS)
        pngquant_version = None
        if "pngquant" in names:
            exe, note = ensure_pngquant()
            if exe is None:
                names.remove("pngquant")
                notes.append(note)
            else:
                pngquant_version = note
        small = None
        if not args.skip_small_job:
            print("small job ...")
            wait_for_quiet(args.quiet_wait)
            small = small_job(work, args.k)
            print(small)
        results = []
        for name in names:
            tries: list[dict[str, Any]] = []
            for attempt in range(1 + args.retries):
                wait_for_quiet(args.quiet_wait)
                print(f"running {name} (load {os.getloadavg()[0]:.2f}) ...", flush=True)
                r = run_contender(name, args, work)
                shown = {k: v for k, v in r.items() if k not in ("outputs", "self_psnr")}
                print(shown, flush=True)
                tries.append(r)
                noisy = r["other_cpu_s"] / max(r["wall_s"], 1e-9) > QUIET_CORES
                if "error" in r or "timed_out" in r or not noisy:
                    break
                if attempt < args.retries:
                    print(f"  {name}: other processes used {r['other_cpu_s']:.0f} CPU-s: again")
            # The least disturbed run is kept; the others' figures go to Details.
            best = min(tries, key=lambda t: t["other_cpu_s"] / max(t["wall_s"], 1e-9))
            best["discarded_runs"] = [
                {
                    "total_s": t.get("total_s"),
                    "wall_s": t["wall_s"],
                    "other_cpu_s": t["other_cpu_s"],
                }
                for t in tries
                if t is not best
            ]
            results.append(best)
        print("measuring PSNR / ΔE00 of every written image ...", flush=True)
        t = time.perf_counter()
        metrics = compute_metrics(work, results)
        print(f"  {time.perf_counter() - t:.1f}s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("work directory kept:", work)
    body, _checks = build_report(args, results, metrics, images, n_px, small, notes)
    print(body)
    if args.output:
        info = machine_info()
        versions = package_versions()
        from importlib.metadata import version

        versions["Pillow"] = version("Pillow")
        header = (
            f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
            f"- machine: {info['cores']} cores, {info['ram_gib']:.1f} GiB RAM, {info['cpu']}; "
            f"Python {info['python']}\n"
            f"- load average before the run (1, 5, 15 min): "
            + ", ".join(f"{x:.2f}" for x in load_start)
            + (
                " - WARNING: other processes were using the CPU, timings are noisy"
                if load_start[0] > 0.6
                else ""
            )
            + "\n"
            "- packages: "
            + ", ".join(f"{k} {v}" for k, v in versions.items())
            + (f", {pngquant_version}" if pngquant_version else "")
            + "\n"
            f"- kmflow source: {source_state}\n"
            f"- command: `{command.strip()}`\n"
        )
        write_markdown(
            args.output, f"Color quantization, {n_px / 1e6:.0f} MP, k = {args.k}", header, body
        )
        print("wrote", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
