"""Evaluation-metrics benchmark: kmflow against scikit-learn, in one run.

Workload: N RGB pixels (uint8, shape (N, 3)) drawn with replacement, seeded, from the two photos
bundled with scikit-learn; k fixed centers (k-means++ on a 100k-pixel subsample) shared by every
contender; labels = the nearest center. Each contender measures inertia, Calinski-Harabasz,
Davies-Bouldin and a 10,000-row silhouette sample of that clustering:

- scikit-learn on every pixel (float64 ``X``, numpy labels);
- kmflow on every pixel (``internal_metrics`` + ``silhouette_sample`` on a 2-worker LocalCluster);
- kmflow on the color histogram (``color_histogram``, then the same two functions on the unique
  colors weighted by their counts: what ``kmflow.jobs.palette.evaluate_palette`` does).

Every contender runs in its own fresh subprocess (this script re-invoked with ``--worker NAME``)
so its peak memory is its own; the data travel as ``.npy`` files in a temporary directory.

    python benchmarks/bench_metrics.py --small                          # 1M pixels
    python benchmarks/bench_metrics.py --output benchmarks/RESULTS.md   # 5M pixels

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_lloyd import (
    PeakRSS,
    fmt,
    machine_info,
    make_init_centers,
    make_pixels,
    package_versions,
    run_subprocess,
    write_markdown,
)

LOG = logging.getLogger("bench_metrics")

DEFAULT_N = 5_000_000
SMALL_N = 1_000_000
N_WORKERS = 2  # LocalCluster shape for kmflow: 2 single-threaded worker processes
WARMUP_N = 20_000  # untimed first run on this many pixels (imports, numba cache loads)
WARMUP_SAMPLE = 1_000
REL_TOL = 1e-6  # CH, DB and inertia must agree with scikit-learn's to this relative difference

CONTENDERS = ("sklearn", "kmflow", "kmflow-histogram")
LABELS = {
    "sklearn": "scikit-learn (2 threads)",
    "kmflow": "kmflow, every pixel (2 workers)",
    "kmflow-histogram": "kmflow, color histogram (2 workers)",
}
DATA = {
    "sklearn": "float64, N rows",
    "kmflow": "uint8, N rows",
    "kmflow-histogram": "uint8 → U unique colors + counts",
}


# --------------------------------------------------------------------------------------------
# Contenders (each runs in a fresh subprocess: `bench_metrics.py --worker NAME ...`)
# --------------------------------------------------------------------------------------------


def nearest_center(
    X: np.ndarray, centers: np.ndarray, chunk: int = 200_000
) -> tuple[np.ndarray, float]:
    """Labels (nearest center, ties to the lowest index) and inertia, float64, in numpy.

    Squared distances are summed from per-feature differences, as kmflow's kernel does, so both
    break ties between equidistant centers the same way.
    """
    c = np.asarray(centers, dtype=np.float64)
    labels = np.empty(len(X), dtype=np.int64)
    inertia = 0.0
    for s in range(0, len(X), chunk):
        x = X[s : s + chunk]
        d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
        lab = d2.argmin(axis=1)
        labels[s : s + chunk] = lab
        inertia += float(d2[np.arange(len(lab)), lab].sum())
    return labels, inertia


def _silhouette_seeds(args: argparse.Namespace) -> list[int]:
    return [args.seed + i for i in range(args.silhouette_seeds)]


def _sklearn_evaluate(
    X: np.ndarray, centers: np.ndarray, sample_size: int, seeds: list[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(times, values) of scikit-learn's metrics of the nearest-center labels of ``X``."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    t0 = time.perf_counter()
    labels, inertia = nearest_center(X, centers)
    labels_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ch = calinski_harabasz_score(X, labels)
    db = davies_bouldin_score(X, labels)
    metrics_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sil = silhouette_score(X, labels, sample_size=sample_size, random_state=seeds[0])
    silhouette_s = time.perf_counter() - t0
    more = [silhouette_score(X, labels, sample_size=sample_size, random_state=s) for s in seeds[1:]]
    times = {
        "labels_s": labels_s,
        "histogram_s": None,
        "metrics_s": metrics_s,
        "silhouette_s": silhouette_s,
    }
    values = {
        "inertia": inertia,
        "calinski_harabasz": float(ch),
        "davies_bouldin": float(db),
        "silhouette": float(sil),
        "silhouettes": [float(sil), *map(float, more)],
        "sizes": np.bincount(labels, minlength=len(centers)).tolist(),
    }
    return times, values


def _run_sklearn(
    args: argparse.Namespace, pixels: np.ndarray, centers: np.ndarray, mem: PeakRSS
) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(N_WORKERS):
        t0 = time.perf_counter()
        _sklearn_evaluate(pixels[:WARMUP_N].astype(np.float64), centers, WARMUP_SAMPLE, [0])
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        X = pixels.astype(np.float64)
        cast_s = time.perf_counter() - t0
        mem.mark_baseline()
        seeds = _silhouette_seeds(args)
        times, values = _sklearn_evaluate(X, centers, args.silhouette_size, seeds)
        distinct = _distinct_sample_silhouette(X, centers, args.silhouette_size, seeds[0])
    return {
        "n_rows": len(X),
        "times": times,
        "values": values,
        "notes": {
            "warmup_s": warmup_s,
            "cast_uint8_to_float64_s": cast_s,
            "distinct_rows_of_sample": distinct[0],
            "silhouette_of_distinct_rows": distinct[1],
        },
    }


def _distinct_sample_silhouette(
    X: np.ndarray, centers: np.ndarray, sample_size: int, seed: int
) -> tuple[int, float]:
    """Silhouette of the distinct rows of scikit-learn's own sample (untimed, a diagnostic).

    The sample is the one ``silhouette_score(..., random_state=seed)`` draws; keeping each
    color once mimics what a sample of the color histogram holds.
    """
    from sklearn.metrics import silhouette_score

    idx = np.random.RandomState(seed).permutation(len(X))[:sample_size]
    _, first = np.unique(X[idx], axis=0, return_index=True)
    rows = X[idx[np.sort(first)]]
    labels, _ = nearest_center(rows, centers)
    return len(rows), float(silhouette_score(rows, labels))


def _kmflow_evaluate(
    pixels: np.ndarray,
    centers: np.ndarray,
    chunk_pixels: int,
    sample_size: int,
    seeds: list[int],
    histogram: bool,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(times, values, notes) of kmflow's metrics, on the current Dask client."""
    import dask.array as da

    from kmflow.jobs.palette.histogram import color_histogram
    from kmflow.kernels.lloyd import assign
    from kmflow.kernels.metrics import internal_metrics, silhouette_sample

    Xp = da.from_array(pixels, chunks=(chunk_pixels, 3))
    histogram_s = None
    notes: dict[str, Any] = {}
    if histogram:
        t0 = time.perf_counter()
        colors, counts = color_histogram(Xp)
        histogram_s = time.perf_counter() - t0
        # evaluate_palette's layout: in RGB the fit space is the colors themselves (its
        # `_to_fit_space`), 2**19-row chunks, the counts as float64 sample weights.
        chunk = max(1, min(len(colors), 2**19))
        X = da.from_array(colors, chunks=(chunk, 3))
        w = da.from_array(counts.astype(np.float64), chunks=(chunk,))
        notes["n_colors"] = len(colors)
        notes["histogram_chunks"] = len(X.chunks[0])
    else:
        X, w = Xp, None
        notes["chunks"] = len(X.chunks[0])
    t0 = time.perf_counter()
    m = internal_metrics(X, centers, sample_weight=w)
    metrics_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = assign(X, centers)  # lazy: evaluated inside the silhouette's sampling pass
    sil = silhouette_sample(
        X, labels, sample_size=sample_size, sample_weight=w, random_state=seeds[0]
    )
    silhouette_s = time.perf_counter() - t0
    more = [
        silhouette_sample(X, labels, sample_size=sample_size, sample_weight=w, random_state=s)
        for s in seeds[1:]
    ]
    times = {
        "labels_s": None,
        "histogram_s": histogram_s,
        "metrics_s": metrics_s,
        "silhouette_s": silhouette_s,
    }
    values = {
        "inertia": m.inertia,
        "calinski_harabasz": m.calinski_harabasz,
        "davies_bouldin": m.davies_bouldin,
        "silhouette": float(sil),
        "silhouettes": [float(sil), *map(float, more)],
        # pixels per cluster: row counts on the pixels, summed counts on the histogram
        "sizes": [round(float(v)) for v in m.weights],
    }
    notes["n_rows"] = int(X.shape[0])
    return times, values, notes


def _run_kmflow(
    args: argparse.Namespace,
    pixels: np.ndarray,
    centers: np.ndarray,
    mem: PeakRSS,
    histogram: bool,
) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        setup_s = time.perf_counter() - t0
        # Untimed warm-up on the same cluster: imports and numba cache loads in the workers.
        t0 = time.perf_counter()
        warm = pixels[:WARMUP_N]
        _kmflow_evaluate(warm, centers, len(warm) // 2, WARMUP_SAMPLE, [0], histogram)
        warmup_s = time.perf_counter() - t0
        mem.mark_baseline()
        times, values, notes = _kmflow_evaluate(
            pixels,
            centers,
            args.chunk_pixels,
            args.silhouette_size,
            _silhouette_seeds(args),
            histogram,
        )
    return {
        "n_rows": notes.pop("n_rows"),
        "times": times,
        "values": values,
        "notes": {"cluster_start_s": setup_s, "warmup_s": warmup_s, **notes},
    }


def worker_main(args: argparse.Namespace) -> int:
    """One contender, in this fresh process; writes <workdir>/<name>.json."""
    work = Path(args.workdir)
    out: dict[str, Any] = {"name": args.worker}
    with PeakRSS() as mem:
        try:
            pixels = np.load(work / "pixels.npy")
            centers = np.load(work / "centers.npy")
            if args.worker == "sklearn":
                res = _run_sklearn(args, pixels, centers, mem)
            elif args.worker == "kmflow":
                res = _run_kmflow(args, pixels, centers, mem, histogram=False)
            elif args.worker == "kmflow-histogram":
                res = _run_kmflow(args, pixels, centers, mem, histogram=True)
            else:
                raise ValueError(f"unknown worker {args.worker!r}")
            out.update(res)
        except Exception:
            out["error"] = traceback.format_exc()
    out["peak_rss"] = mem.peak
    out["baseline_rss"] = mem.baseline
    (work / f"{args.worker}.json").write_text(json.dumps(out, default=float))
    return 0 if "error" not in out else 1


# --------------------------------------------------------------------------------------------
# Parent: data, orchestration, comparison, report
# --------------------------------------------------------------------------------------------


def run_contender(
    name: str, args: argparse.Namespace, work: Path, timeout: float
) -> dict[str, Any]:
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
        "--chunk-pixels",
        str(args.chunk_pixels),
        "--silhouette-size",
        str(args.silhouette_size),
        "--silhouette-seeds",
        str(args.silhouette_seeds),
    ]
    res = run_subprocess(cmd, work, name, timeout)
    if "times" in res:
        res["total_s"] = sum(v for v in res["times"].values() if v is not None)
    return res


METRICS = ("inertia", "calinski_harabasz", "davies_bouldin")


def compare(results: list[dict[str, Any]]) -> None:
    """Add each contender's relative differences from scikit-learn's values (in place)."""
    ref = next((r for r in results if r["name"] == "sklearn" and "values" in r), None)
    if ref is None:
        return
    for r in results:
        if "values" not in r:
            continue
        rel = {
            key: abs(r["values"][key] - ref["values"][key]) / abs(ref["values"][key])
            for key in METRICS
        }
        r["rel_diff"] = rel
        r["max_rel_diff"] = max(rel.values())
        r["same_sizes"] = r["values"]["sizes"] == ref["values"]["sizes"]


def build_report(
    args: argparse.Namespace, results: list[dict[str, Any]], n: int, prep: dict[str, float]
) -> str:
    mib = 2**20
    seeds = _silhouette_seeds(args)
    lines = [
        "| contender | data | labels s | histogram s | internal metrics s | silhouette s "
        "| total s | peak RSS MiB (Δ) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        name = r["name"]
        head = f"| {LABELS[name]} | {DATA[name]} "
        if "timed_out" in r:
            lines.append(head + f"| timed out > {r['timed_out']:.0f} s | - | - | - | - | - |")
            continue
        if "error" in r:
            lines.append(head + "| error | - | - | - | - | - |")
            continue
        t = r["times"]
        peak = r["peak_rss"] / mib
        delta = (r["peak_rss"] - r["baseline_rss"]) / mib
        lines.append(
            head + f"| {fmt(t['labels_s'], '.2f')} | {fmt(t['histogram_s'], '.2f')} "
            f"| {fmt(t['metrics_s'], '.2f')} | {fmt(t['silhouette_s'], '.2f')} "
            f"| {fmt(r['total_s'], '.2f')} | {peak:,.0f} ({delta:+,.0f}) |"
        )

    ok = [r for r in results if "values" in r]
    lines += [
        "",
        f"| contender | rows | inertia | Calinski-Harabasz | Davies-Bouldin "
        f"| max rel. diff vs scikit-learn | cluster sizes = scikit-learn's "
        f"| silhouette (seed {seeds[0]}) | silhouette, {len(seeds)} seeds: mean ± sd |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in ok:
        v = r["values"]
        sils = np.asarray(v["silhouettes"])
        sd = float(sils.std(ddof=1)) if len(sils) > 1 else float("nan")
        same = r.get("same_sizes")
        lines.append(
            f"| {LABELS[r['name']]} | {r['n_rows']:,} | {v['inertia']:.10e} "
            f"| {v['calinski_harabasz']:.10f} | {v['davies_bouldin']:.12f} "
            f"| {fmt(r.get('max_rel_diff'), '.1e')} "
            f"| {'-' if same is None else ('yes' if same else 'NO')} "
            f"| {v['silhouette']:.4f} | {sils.mean():.4f} ± {fmt(sd, '.4f')} |"
        )

    by = {r["name"]: r for r in ok}
    checks: list[tuple[str, str, str, bool | None]] = []
    for name in ("kmflow", "kmflow-histogram"):
        if name in by and "max_rel_diff" in by[name]:
            d = by[name]["max_rel_diff"]
            checks.append(
                (
                    f"{LABELS[name]}: max rel. diff of inertia, CH, DB vs scikit-learn",
                    f"{d:.1e}",
                    f"≤ {REL_TOL:.0e}",
                    d <= REL_TOL,
                )
            )
    if "sklearn" in by:
        for name in ("kmflow", "kmflow-histogram"):
            if name in by:
                v = by[name]["total_s"] / by["sklearn"]["total_s"]
                checks.append(
                    (f"{LABELS[name]} total s ÷ scikit-learn total s", f"{v:.2f}", "(info)", None)
                )
    if "kmflow" in by and "kmflow-histogram" in by:
        a, b = by["kmflow"], by["kmflow-histogram"]
        v = a["times"]["metrics_s"] / b["times"]["metrics_s"]
        checks.append(("internal metrics s: every pixel ÷ histogram", f"{v:.1f}", "(info)", None))
    if checks:
        lines += ["", "| check | value | target | result |", "|---|---:|---|---|"]
        for label, val, target, passed in checks:
            res = "-" if passed is None else ("pass" if passed else "FAIL")
            lines.append(f"| {label} | {val} | {target} | {res} |")

    notes = [
        "",
        f"Workload: {n:,} pixels (uint8 RGB) sampled with replacement from scikit-learn's two "
        f"sample photos, seed {args.seed}; {args.k} fixed centers from "
        f"`sklearn.cluster.kmeans_plusplus` on a {min(100_000, n):,}-pixel float64 subsample "
        f"(seed {args.seed}), the same array for every contender; labels = nearest center. "
        f"Silhouette: a sample of {args.silhouette_size:,} rows, `random_state={seeds[0]}`. "
        f"kmflow's pixel array: `da.from_array(uint8, chunks={args.chunk_pixels:,} rows)`.",
        f"Load average (1 min) before the measurements: {prep['load_start']:.2f} on "
        f"{os.cpu_count()} cores"
        + (
            " - WARNING: other processes were using the CPU, timings are noisy."
            if prep["load_start"] > 1.0
            else "."
        ),
        "- labels s (scikit-learn only): nearest center and inertia in numpy, float64, 200k "
        "rows at a time; scikit-learn has no function for them. kmflow's `internal_metrics` "
        "labels the rows itself (in each of its two passes), inside its column.",
        "- internal metrics s: scikit-learn = `calinski_harabasz_score` + "
        "`davies_bouldin_score`; kmflow = `internal_metrics(X, centers)` (inertia, CH and DB, "
        "two passes over the rows).",
        "- silhouette s: scikit-learn = `silhouette_score(X, labels, sample_size, "
        "random_state)`; kmflow = `silhouette_sample(X, assign(X, centers), sample_size, "
        "random_state)` (one sampling pass, labels computed lazily in it, then the exact "
        "silhouette of the sample in memory).",
        "- histogram s: `color_histogram` over every pixel (one pass); the kmflow histogram "
        "contender then runs the same two functions on the unique colors with their counts as "
        "`sample_weight`, as `evaluate_palette` does.",
        "- total s = the sum of the columns. Not included: the uint8→float64 cast for "
        "scikit-learn, the LocalCluster start, the extra silhouette seeds, and a warm-up: each "
        f"contender first runs the same steps, untimed, on the first {WARMUP_N:,} pixels "
        f"(silhouette sample {WARMUP_SAMPLE:,}) in the same process and cluster, so imports "
        "and kmflow's numba cache loads in the Dask workers are not timed (warmup_s in "
        "Details is that cold run).",
        "- peak RSS: summed RSS of the contender's subprocess and all its descendants (Dask "
        "nannies and workers), sampled every 50 ms; Δ = peak - RSS just before the timed work.",
        "- silhouette: scikit-learn and kmflow on every pixel differ only by sampling: both "
        "draw `sample_size` pixels uniformly without replacement (scikit-learn with numpy's "
        "permutation, kmflow with its own counter-based keys), so they estimate the same "
        "number. The histogram path draws `sample_size` times from the distinct colors with "
        "probability proportional to their counts (systematic sampling, a color drawn c times "
        "counting c times), so it estimates the same pixel silhouette. For contrast, the "
        "Details line of scikit-learn gives the silhouette of the distinct rows of its own "
        "seed-"
        f"{seeds[0]} sample, for comparison. The last column repeats each contender with seeds "
        f"{seeds[0]}..{seeds[-1]}.",
        "- Each contender ran in its own fresh subprocess; scikit-learn limited to 2 "
        "BLAS/OpenMP threads with `threadpoolctl`; kmflow on `LocalCluster(n_workers=2, "
        "threads_per_worker=1, processes=True)`. dask-ml has no clustering-quality metrics, so "
        "it is not a contender here.",
    ]
    extra = []
    for r in results:
        if "notes" in r:
            d = dict(r["notes"])
            if "values" in r:
                d["silhouettes"] = [round(s, 4) for s in r["values"]["silhouettes"]]
            if "rel_diff" in r:
                d.update({f"rel_diff_{k}": f"{v:.1e}" for k, v in r["rel_diff"].items()})
            extra.append(
                f"- {r['name']}: "
                + ", ".join(
                    f"{key}={fmt(v, '.3f') if isinstance(v, float) else v}" for key, v in d.items()
                )
            )
    if extra:
        notes += ["", "Details:", *extra]
    for r in results:
        if "error" in r:
            notes += ["", f"{r['name']} failed:", "```", r["error"].rstrip(), "```"]
    return "\n".join(lines + notes) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help=f"N = {SMALL_N:,}")
    p.add_argument("--n-pixels", type=int, default=None, help=f"N (default {DEFAULT_N:,})")
    p.add_argument("--k", type=int, default=16, help="number of fixed centers")
    p.add_argument("--seed", type=int, default=0, help="data, centers and silhouette seed")
    p.add_argument(
        "--chunk-pixels",
        type=int,
        default=None,
        help="Dask chunk length of the pixels (default min(1,000,000, ceil(N/4)))",
    )
    p.add_argument("--silhouette-size", type=int, default=10_000, help="silhouette sample rows")
    p.add_argument(
        "--silhouette-seeds",
        type=int,
        default=5,
        help="silhouette samples per contender (seeds seed, seed+1, ...); only the first is timed",
    )
    p.add_argument(
        "--timeout", type=float, default=900.0, help="time limit for each contender's subprocess"
    )
    p.add_argument("--output", type=Path, default=None, help="write/update a markdown file")
    p.add_argument("--only", nargs="+", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.silhouette_seeds < 1:
        p.error("--silhouette-seeds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%X")
    n = args.n_pixels or (SMALL_N if args.small else DEFAULT_N)
    if args.chunk_pixels is None:
        args.chunk_pixels = min(1_000_000, max(1, math.ceil(n / 4)))
    command = "python " + " ".join(
        [str(Path(sys.argv[0])), *sys.argv[1:]] if argv is None else ["bench_metrics.py", *argv]
    )
    mach = machine_info()
    LOG.info("machine: %d cores, %.1f GiB, %s", mach["cores"], mach["ram_gib"], mach["cpu"])

    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        pixels = make_pixels(n, args.seed)
        np.save(work / "pixels.npy", pixels)
        centers = make_init_centers(pixels, args.k, args.seed)
        np.save(work / "centers.npy", centers)
        LOG.info(
            "data: %s pixels and %d centers in %.1f s", f"{n:,}", args.k, time.perf_counter() - t0
        )
        del pixels

        loads = os.getloadavg()
        load_start = loads[0]
        results = []
        for name in args.only or CONTENDERS:
            LOG.info("running %s ...", name)
            r = run_contender(name, args, work, args.timeout)
            if "values" in r:
                v = r["values"]
                LOG.info(
                    "  %s: total %.2f s; inertia %.6e, CH %.6f, DB %.8f, silhouette %.4f",
                    name,
                    r["total_s"],
                    v["inertia"],
                    v["calinski_harabasz"],
                    v["davies_bouldin"],
                    v["silhouette"],
                )
            elif "timed_out" in r:
                LOG.info("  %s: timed out > %.0f s", name, r["timed_out"])
            else:
                LOG.info("  %s: FAILED\n%s", name, r["error"])
            results.append(r)

    compare(results)
    report = build_report(args, results, n, {"load_start": load_start})
    print()
    print(report)
    if args.output:
        vers = package_versions()
        header = "\n".join(
            [
                f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
                f"- machine: {mach['cores']} cores, {mach['ram_gib']:.1f} GiB RAM, {mach['cpu']}; "
                f"Python {mach['python']}, {mach['platform']}",
                "- load average before the run (1, 5, 15 min): "
                + ", ".join(f"{v:.2f}" for v in loads),
                "- packages: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
                f"- command: `{command}`",
                "",
            ]
        )
        write_markdown(
            args.output, f"Evaluation metrics, N = {n:,} pixels, k = {args.k}", header, body=report
        )
        LOG.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
