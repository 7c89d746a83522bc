"""Lloyd-iteration benchmark: kmflow against scikit-learn and dask-ml, in one run.

Workloads (one run measures both; ``--n-pixels`` or ``--small`` measures one instead):

- 3,000,000 pixels, k = 12, chunks of 500,000: scikit-learn and kmflow from the same centers;
  target: kmflow's fit seconds ÷ n_iter at most 0.8 × scikit-learn's.
- 10,000,000 pixels, k = 16, chunks of 1,000,000: the same two, kmflow with its own k-means||
  too, and dask-ml; target: kmflow's fit seconds ÷ n_iter at most 0.5 × scikit-learn's.

N RGB pixels (uint8, shape (N, 3)) drawn with replacement, seeded, from the two photos bundled
with scikit-learn. Every contender runs in its own fresh subprocess (this script re-invoked
with ``--worker NAME``) so its peak memory is its own; the data travel as ``.npy`` files in a
temporary directory. kmflow and dask-ml get their data persisted on the workers before the timed
fits (uint8 for kmflow, float32 for dask-ml). Each contender fits ``--repeats`` times (dask-ml
once); "fit s" is the fastest (other processes only ever add time). Inertia is recomputed here,
in float64 over all pixels, from each contender's final ``cluster_centers_``: a peer's own
``inertia_`` is never used.

    python benchmarks/bench_lloyd.py --output benchmarks/RESULTS.md   # both workloads
    python benchmarks/bench_lloyd.py --small                          # 1M pixels, the demo

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger("bench_lloyd")

SMALL_N = 1_000_000
INIT_SAMPLE = 100_000
#: The default run: (pixels, k, Dask chunk length, contenders, target for kmflow's fit seconds
#: per iteration over scikit-learn's).
WORKLOADS = (
    (3_000_000, 12, 500_000, ("sklearn", "kmflow"), 0.8),
    (10_000_000, 16, 1_000_000, ("sklearn", "kmflow", "kmflow-kmeans||", "dask-ml"), 0.5),
)
WARMUP_PIXELS = 50_000  # kmflow's untimed first fit on a fresh cluster (other data)
N_WORKERS = 2  # LocalCluster shape for kmflow and dask-ml: 2 single-threaded worker processes
SAMPLE_INTERVAL_S = 0.05  # RSS sampling period
BANDWIDTH_BYTES = 1 << 30  # 1 GiB per process for the read-bandwidth probe

CONTENDERS = ("sklearn", "kmflow", "kmflow-kmeans||", "dask-ml")
LABELS = {
    "sklearn": "scikit-learn KMeans (lloyd, 2 threads)",
    "kmflow": "kmflow KMeans (2 workers)",
    "kmflow-kmeans||": "kmflow KMeans (2 workers)",
    "dask-ml": "dask-ml KMeans (2 workers)",
}
INIT_LABELS = {
    "sklearn": "given k-means++",
    "kmflow": "given k-means++",
    "kmflow-kmeans||": "k-means\\|\\|",  # "|" escaped: these go into markdown tables
    "dask-ml": "k-means\\|\\|",
}
DTYPES = {"sklearn": "float32", "kmflow": "uint8", "kmflow-kmeans||": "uint8", "dask-ml": "float32"}
BYTES_PER_PIXEL = {"sklearn": 12, "kmflow": 3, "kmflow-kmeans||": 3, "dask-ml": 12}


# --------------------------------------------------------------------------------------------
# Memory sampling (inside each contender's subprocess)
# --------------------------------------------------------------------------------------------


class PeakRSS:
    """Peak of the summed RSS of this process and all its descendants (Dask nannies, workers).

    A daemon thread samples every ``interval`` seconds. Pages shared between processes (shared
    libraries, copy-on-write) are counted once per process, so this is an upper bound.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        import psutil

        self._proc = psutil.Process()
        self._psutil = psutil
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self.peak = 0
        self.baseline = 0

    def sample(self) -> int:
        total = 0
        try:
            procs = [self._proc, *self._proc.children(recursive=True)]
        except self._psutil.Error:
            procs = [self._proc]
        for p in procs:
            with contextlib.suppress(self._psutil.Error):  # a process that just exited
                total += p.memory_info().rss
        self.peak = max(self.peak, total)
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def mark_baseline(self) -> None:
        """Remember the tree's RSS just before the timed fit."""
        self.baseline = self.sample()

    def __enter__(self) -> PeakRSS:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# --------------------------------------------------------------------------------------------
# Contenders (each runs in a fresh subprocess: `bench_lloyd.py --worker NAME ...`)
# --------------------------------------------------------------------------------------------


def _cluster() -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    )


def _run_sklearn(
    args: argparse.Namespace, pixels: np.ndarray, centers: np.ndarray, mem: PeakRSS
) -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    x = pixels.astype(np.float32)
    cast_s = time.perf_counter() - t0
    mem.mark_baseline()
    fits = []
    with threadpool_limits(2):
        for _ in range(args.repeats):
            est = KMeans(
                n_clusters=args.k,
                init=centers,
                n_init=1,
                max_iter=args.iters,
                tol=0,
                algorithm="lloyd",
            )
            t0 = time.perf_counter()
            est.fit(x)
            fits.append(time.perf_counter() - t0)
    n_iter = int(est.n_iter_)
    fit_s = float(min(fits))
    return {
        "centers": est.cluster_centers_,
        "fit_s": fit_s,
        "n_iter": n_iter,
        "s_per_iter": fit_s / max(n_iter, 1),
        "notes": {"cast_uint8_to_float32_s": cast_s, "fits_s": fits},
    }


def _persisted(pixels: np.ndarray, chunk: int, dtype: Any) -> tuple[Any, float]:
    """``pixels`` as a Dask array persisted on the workers (cast there), and the seconds taken."""
    import dask.array as da
    from distributed import wait

    t0 = time.perf_counter()
    x = da.from_array(pixels, chunks=(chunk, pixels.shape[1])).astype(dtype).persist()
    wait(x)
    return x, time.perf_counter() - t0


def _run_kmflow(
    args: argparse.Namespace, pixels: np.ndarray, centers: np.ndarray | None, mem: PeakRSS
) -> dict[str, Any]:
    from distributed import Client

    from kmflow import KMeans

    infos: list[dict[str, float]] = []

    def cb(info: Any) -> None:
        infos.append(
            {
                "iteration": int(info.iteration),
                "inertia": float(info.inertia),
                "center_shift": float(info.center_shift),
                "seconds": float(info.seconds),
            }
        )

    def make() -> Any:
        if centers is not None:
            return KMeans(n_clusters=args.k, init=centers, max_iter=args.iters, tol=0, callback=cb)
        return KMeans(
            n_clusters=args.k,
            init="k-means||",
            random_state=args.seed,
            max_iter=args.iters,
            tol=0,
            callback=cb,
        )

    t0 = time.perf_counter()
    with _cluster() as cluster, Client(cluster):
        setup_s = time.perf_counter() - t0
        # A fresh cluster's first fit also imports kmflow on the workers and loads its compiled
        # kernels: done once, on other data, and reported as warmup_fit_s (not in fit s).
        t0 = time.perf_counter()
        warm, _ = _persisted(pixels[-WARMUP_PIXELS:], WARMUP_PIXELS // 8, np.uint8)  # all workers
        init = pixels[: args.k].astype(np.float64) + 0.5 if centers is not None else "k-means||"
        KMeans(n_clusters=args.k, init=init, max_iter=2, random_state=args.seed).fit(warm)
        del warm
        warmup_s = time.perf_counter() - t0
        x, persist_s = _persisted(pixels, args.chunk_pixels, np.uint8)
        mem.mark_baseline()
        fits, runs = [], []
        for _ in range(args.repeats):
            infos.clear()
            est = make()
            t0 = time.perf_counter()
            est.fit(x)
            fits.append(time.perf_counter() - t0)
            runs.append(list(infos))
    best = int(np.argmin(fits))
    infos = runs[best]
    fit_s = fits[best]
    secs = [i["seconds"] for i in infos]
    n_iter = int(getattr(est, "n_iter_", len(infos)))
    return {
        "centers": np.asarray(est.cluster_centers_),
        "fit_s": fit_s,
        "n_iter": n_iter,
        "s_per_iter": float(np.median(secs)) if secs else float("nan"),
        "notes": {
            "cluster_start_s": setup_s,
            "warmup_fit_s": warmup_s,
            "persist_uint8_s": persist_s,
            "fits_s": fits,
            "callbacks": len(infos),
            "iter_seconds": secs,
            "mean_iter_s": float(np.mean(secs)) if secs else float("nan"),
            "outside_iterations_s": fit_s - float(sum(secs)),
            "own_init_seconds_": float(getattr(est, "init_seconds_", float("nan"))),
            "persisted_": getattr(est, "persisted_", None),
            "converged_": getattr(est, "converged_", None),
            "last_callback_inertia": infos[-1]["inertia"] if infos else None,
            "callback_iterations": [i["iteration"] for i in infos],
        },
    }


class _DaskMLTimes(logging.Handler):
    """Collects dask-ml's own "Starting/Finished Lloyd loop" log records (their timestamps)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.starts: list[float] = []
        self.ends: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "Lloyd loop" in msg:
            (self.starts if msg.startswith("Starting") else self.ends).append(record.created)


def _run_daskml(args: argparse.Namespace, pixels: np.ndarray, mem: PeakRSS) -> dict[str, Any]:
    from dask_ml.cluster import KMeans
    from distributed import Client

    times = _DaskMLTimes()
    kl = logging.getLogger("dask_ml.cluster.k_means")
    kl.setLevel(logging.INFO)
    kl.propagate = False
    kl.addHandler(times)

    t0 = time.perf_counter()
    with _cluster() as cluster, Client(cluster):
        setup_s = time.perf_counter() - t0
        # dask-ml needs floats; float32 like scikit-learn. Persisted on the workers before the
        # timed fit (as dask-ml's docs advise), so the fit does not re-ship the data each pass.
        x, persist_s = _persisted(pixels, args.chunk_pixels, np.float32)
        est = KMeans(
            n_clusters=args.k,
            init="k-means||",
            max_iter=args.iters,
            random_state=args.seed,
            oversampling_factor=2,
            tol=0,
        )
        mem.mark_baseline()
        t_wall0 = time.time()
        t0 = time.perf_counter()
        est.fit(x)
        fit_s = time.perf_counter() - t0
        t_wall1 = time.time()
    loops = [e - s for s, e in zip(times.starts, times.ends, strict=False)]
    lloyd_s = float(sum(loops))
    n_iter = int(est.n_iter_)
    return {
        "centers": np.asarray(est.cluster_centers_),
        "fit_s": fit_s,
        "n_iter": n_iter,
        "s_per_iter": lloyd_s / max(n_iter, 1),
        "notes": {
            "cluster_start_s": setup_s,
            "persist_float32_s": persist_s,
            "lloyd_total_s": lloyd_s,
            "median_loop_s": float(np.median(loops)) if loops else float("nan"),
            "init_and_checks_s": (times.starts[0] - t_wall0) if times.starts else float("nan"),
            "after_last_loop_s": (t_wall1 - times.ends[-1]) if times.ends else float("nan"),
            "own_inertia_": float(est.inertia_),
        },
    }


def worker_main(args: argparse.Namespace) -> int:
    """One contender, in this fresh process; writes <workdir>/<name>.json (+ centers .npy)."""
    work = Path(args.workdir)
    out: dict[str, Any] = {"name": args.worker}
    with PeakRSS() as mem:
        try:
            pixels = np.load(work / "pixels.npy")
            centers = np.load(work / "init_centers.npy")
            if args.worker == "sklearn":
                res = _run_sklearn(args, pixels, centers, mem)
            elif args.worker == "kmflow":
                res = _run_kmflow(args, pixels, centers, mem)
            elif args.worker == "kmflow-kmeans||":
                res = _run_kmflow(args, pixels, None, mem)
            elif args.worker == "dask-ml":
                res = _run_daskml(args, pixels, mem)
            else:
                raise ValueError(f"unknown worker {args.worker!r}")
            np.save(work / f"{args.worker}.centers.npy", np.asarray(res.pop("centers")))
            out.update(res)
        except Exception:
            out["error"] = traceback.format_exc()
    out["peak_rss"] = mem.peak
    out["baseline_rss"] = mem.baseline
    (work / f"{args.worker}.json").write_text(json.dumps(out, default=float))
    return 0 if "error" not in out else 1


# --------------------------------------------------------------------------------------------
# Parent: data, bandwidth, orchestration, inertia, report
# --------------------------------------------------------------------------------------------


def make_pixels(n: int, seed: int) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    pool = np.concatenate([im.reshape(-1, 3) for im in load_sample_images().images])
    rng = np.random.default_rng(seed)
    return pool[rng.integers(0, len(pool), size=n)]


def make_init_centers(pixels: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(seed)
    m = min(INIT_SAMPLE, len(pixels))
    sub = pixels[rng.choice(len(pixels), size=m, replace=False)].astype(np.float64)
    centers, _ = kmeans_plusplus(sub, k, random_state=seed)
    return np.asarray(centers, dtype=np.float64)


def true_inertia(pixels: np.ndarray, centers: np.ndarray, chunk: int = 200_000) -> float:
    """Sum of squared distances to the nearest center, float64, over every pixel."""
    c = np.asarray(centers, dtype=np.float64)
    total = 0.0
    for s in range(0, len(pixels), chunk):
        x = pixels[s : s + chunk].astype(np.float64)
        d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).min(axis=1)
        total += float(d2.sum())
    return total


def _bw_probe(nbytes: int, reps: int) -> float:
    a = np.ones(nbytes // 8, dtype=np.float64)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        np.add.reduce(a)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def _bw_child(nbytes: int, reps: int, barrier: Any, q: Any) -> None:
    a = np.ones(nbytes // 8, dtype=np.float64)
    spans = []
    for _ in range(reps):
        barrier.wait()
        t0 = time.monotonic()
        np.add.reduce(a)
        spans.append((t0, time.monotonic()))
    q.put(spans)


def measure_bandwidth(reps: int = 5) -> tuple[float, float]:
    """Best single-pass read bandwidth (bytes/s): one process, and two processes at once."""
    import multiprocessing as mp

    single = _bw_probe(BANDWIDTH_BYTES, reps)
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_bw_child, args=(BANDWIDTH_BYTES, reps, barrier, q)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    spans = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    dual = max(
        2 * BANDWIDTH_BYTES / (max(a[1], b[1]) - min(a[0], b[0]))
        for a, b in zip(*spans, strict=True)
    )
    return single, dual


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
        "--iters",
        str(args.iters),
        "--seed",
        str(args.seed),
        "--chunk-pixels",
        str(args.chunk_pixels),
        "--repeats",
        str(1 if name == "dask-ml" else args.repeats),
    ]
    return run_subprocess(cmd, work, name, timeout)


def run_subprocess(cmd: list[str], work: Path, name: str, timeout: float) -> dict[str, Any]:
    """Run one contender's command in its own session; return its ``<work>/<name>.json``.

    On a timeout the whole process group (the contender and its Dask processes) is ended and
    ``{"timed_out": timeout}`` returned; without a result file, ``{"error": <log tail>}``.
    """
    log_path = work / f"{name}.log"
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        # Own session: on a timeout the whole group (this child + its Dask processes) is ended.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return {"name": name, "timed_out": timeout, "wall_s": time.perf_counter() - t0}
    wall_s = time.perf_counter() - t0
    res_path = work / f"{name}.json"
    if not res_path.exists():
        tail = log_path.read_text(errors="replace")[-4000:]
        return {
            "name": name,
            "error": f"exit code {proc.returncode}, no result\n{tail}",
            "wall_s": wall_s,
        }
    res: dict[str, Any] = json.loads(res_path.read_text())
    res["wall_s"] = wall_s
    return res


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:  # the widest SIMD numpy (and numba's LLVM) can use here: it moves many figures
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        features = {}
    simd = "AVX-512" if features.get("AVX512F") else "AVX2" if features.get("AVX2") else "no AVX2"
    return {
        "cores": os.cpu_count(),
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "cpu": f"{cpu} ({simd})",
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_header(script: str, argv: list[str] | None, loads: tuple[float, ...], *extra: str) -> str:
    """The lines under a results section's title: date, machine, load, packages, command."""
    from datetime import UTC, datetime

    mach = machine_info()
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {mach['cores']} cores, {mach['ram_gib']:.1f} GiB RAM, {mach['cpu']}",
        "- load average before the run (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in loads),
        "- packages: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()),
        f"- command: `python benchmarks/{script} {command}`",
        *extra,
        "",
    ]
    return "\n".join(lines)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "kmflow",
        "numpy",
        "dask",
        "distributed",
        "scikit-learn",
        "dask-ml",
        "numba",
        "threadpoolctl",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def fmt(x: float | None, spec: str) -> str:
    """``format(x, spec)``, or "-" for a missing or non-finite value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def build_report(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    n: int,
    bw: tuple[float, float],
    prep: dict[str, float],
    command: str,
) -> str:
    by = {r["name"]: r for r in results}
    mib = 2**20
    lines = [
        "| contender | data | init | s/iter | fit s | n_iter | true inertia/pixel "
        "| peak RSS MiB (Δ fit) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        name = r["name"]
        head = f"| {LABELS[name]} | {DTYPES[name]} | {INIT_LABELS[name]} "
        if "timed_out" in r:
            lines.append(head + f"| timed out > {r['timed_out']:.0f} s | - | - | - | - |")
            continue
        if "error" in r:
            lines.append(head + "| error | - | - | - | - |")
            continue
        peak = r["peak_rss"] / mib
        delta = (r["peak_rss"] - r["baseline_rss"]) / mib
        lines.append(
            head + f"| {fmt(r['s_per_iter'], '.3f')} | {fmt(r['fit_s'], '.2f')} "
            f"| {r['n_iter']} | {fmt(r.get('inertia_per_pixel'), '.3f')} "
            f"| {peak:,.0f} ({delta:+,.0f}) |"
        )

    def ok(name: str) -> bool:
        return name in by and "error" not in by[name] and "timed_out" not in by[name]

    single, dual = bw
    bound1 = n * 3 / single
    bound2 = n * 3 / dual
    ratios = []
    if ok("kmflow") and ok("sklearn"):
        km, sk = by["kmflow"], by["sklearn"]
        v = (km["fit_s"] / max(km["n_iter"], 1)) / (sk["fit_s"] / max(sk["n_iter"], 1))
        target = args.target
        ratios.append(
            (
                "kmflow fit s ÷ n_iter over scikit-learn's",
                f"{v:.3f}",
                "(info)" if target is None else f"≤ {target}",
                None if target is None else v <= target,
            )
        )
        v = km["s_per_iter"] / sk["s_per_iter"]
        ratios.append(
            ("kmflow median iteration ÷ scikit-learn s/iter", f"{v:.3f}", "≤ 1.0", v <= 1.0)
        )
        v = by["kmflow"]["inertia_per_pixel"] / by["sklearn"]["inertia_per_pixel"] - 1
        ratios.append(
            (
                "kmflow inertia ÷ scikit-learn inertia - 1 (same init)",
                f"{v:+.4%}",
                "≤ +1%",
                v <= 0.01,
            )
        )
    else:
        ratios.append(("kmflow vs scikit-learn", "n/a", "≤ 1.0 / ≤ +1%", None))
    if ok("kmflow-kmeans||") and "dask-ml" in by:
        if ok("dask-ml"):
            v = by["dask-ml"]["fit_s"] / by["kmflow-kmeans||"]["fit_s"]
            ratios.append(
                ("dask-ml fit s ÷ kmflow fit s (both k-means\\|\\|)", f"{v:.1f}", "≥ 10", v >= 10)
            )
        elif "timed_out" in by["dask-ml"]:
            v = by["dask-ml"]["timed_out"] / by["kmflow-kmeans||"]["fit_s"]
            ratios.append(
                ("dask-ml fit s ÷ kmflow fit s (both k-means\\|\\|)", f"> {v:.1f}", "≥ 10", v >= 10)
            )
        else:
            ratios.append(("dask-ml fit s ÷ kmflow fit s", "n/a (dask-ml error)", "≥ 10", None))
    elif "dask-ml" in by:
        ratios.append(("dask-ml fit s ÷ kmflow fit s", "n/a", "≥ 10", None))
    if ok("kmflow-kmeans||") and ok("dask-ml"):
        v = by["kmflow-kmeans||"]["inertia_per_pixel"] / by["dask-ml"]["inertia_per_pixel"] - 1
        ratios.append(
            ("kmflow (k-means\\|\\|) inertia ÷ dask-ml inertia - 1", f"{v:+.2%}", "(info)", None)
        )
    if ok("kmflow"):
        s = by["kmflow"]["s_per_iter"]
        ratios.append(
            ("kmflow s/iter ÷ machine bound (2 processes)", f"{s / bound2:.1f}", "(info)", None)
        )
        ratios.append(
            ("kmflow s/iter ÷ machine bound (1 process)", f"{s / bound1:.1f}", "(info)", None)
        )
    lines += ["", "| ratio | value | target | result |", "|---|---:|---|---|"]
    for label, val, target, passed in ratios:
        res = "-" if passed is None else ("pass" if passed else "FAIL")
        lines.append(f"| {label} | {val} | {target} | {res} |")

    notes = [
        "",
        f"Workload: {n:,} pixels (uint8 RGB) sampled with replacement from scikit-learn's two "
        f"sample photos, seed {args.seed}; k = {args.k}, max_iter = {args.iters}, tol = 0. "
        + (
            f"kmflow and dask-ml get a Dask array in chunks of {args.chunk_pixels:,} pixels, "
            "persisted on the workers before the timed fits (uint8 for kmflow, float32 for "
            "dask-ml). "
            if "dask-ml" in by
            else f"kmflow gets a uint8 Dask array in chunks of {args.chunk_pixels:,} pixels, "
            "persisted on the workers before the timed fits. "
        )
        + "Initial centers: k-means++ "
        f"(`sklearn.cluster.kmeans_plusplus`) on a {min(INIT_SAMPLE, n):,}-pixel float64 "
        f"subsample ({prep['init_s']:.2f} s), the same array given to scikit-learn and kmflow.",
        f"Machine bound: one pass reads {n * 3 / 2**20:,.1f} MiB (uint8); best `np.add.reduce` "
        f"read bandwidth over 1 GiB float64: {single / 1e9:.1f} GB/s (1 process), "
        f"{dual / 1e9:.1f} GB/s (2 processes together) → {bound1 * 1e3:.2f} ms / "
        f"{bound2 * 1e3:.2f} ms per pass.",
        f"Load average (1 min) before this workload's measurements: {prep['load_start']:.2f} "
        f"on {os.cpu_count()} cores"
        + (
            " - WARNING: other processes were using the CPU, timings are noisy."
            if prep["load_start"] > 1.0
            else "."
        ),
        "- s/iter: kmflow = median of the callback's per-iteration `seconds`; scikit-learn = "
        "fit seconds ÷ n_iter (includes input checks and the final labelling pass); dask-ml = "
        'sum of its own "Lloyd loop" log timings ÷ n_iter.',
        f"- fit s: wall time of `fit()` only, the fastest of {args.repeats} fits in the same "
        "process (dask-ml: one fit); it includes kmflow's validation pass, set-up and final "
        "inertia pass. Not included: scikit-learn's uint8→float32 cast, the LocalCluster start, "
        "the persist of the data (`persist_*_s` below), and kmflow's first fit on the fresh "
        f"cluster (`warmup_fit_s`: a {WARMUP_PIXELS:,}-pixel fit on other data, in which the "
        "workers import kmflow and load its compiled kernels, as scikit-learn is imported "
        "before its timed fit).",
        "- kmflow fit s ÷ n_iter over scikit-learn's: (kmflow fit s ÷ its n_iter) ÷ "
        "(scikit-learn fit s ÷ its n_iter): the whole fit, fixed costs included.",
        "- true inertia/pixel: recomputed by this script in float64 over all pixels from each "
        "contender's final `cluster_centers_` (peers' own `inertia_` are not used).",
        "- peak RSS: summed RSS of the contender's subprocess and all its descendants (Dask "
        "nannies and workers), sampled every 50 ms by a thread in that subprocess; shared pages "
        "count once per process. Δ fit = peak - RSS just before `fit()`.",
        "- Each contender ran in its own fresh subprocess; scikit-learn limited to 2 BLAS/OpenMP "
        "threads with `threadpoolctl`; kmflow and dask-ml on `LocalCluster(n_workers=2, "
        "threads_per_worker=1, processes=True)`.",
    ]
    extra = []
    for r in results:
        if "notes" in r:
            d = {
                key: v
                for key, v in r["notes"].items()
                if key not in ("iter_seconds", "callback_iterations")
            }
            if "iter_seconds" in r["notes"]:
                d["iter_seconds"] = [round(s, 4) for s in r["notes"]["iter_seconds"]]
            if "fits_s" in r["notes"]:
                d["fits_s"] = [round(s, 3) for s in r["notes"]["fits_s"]]
            extra.append(
                f"- {r['name']}: "
                + ", ".join(
                    f"{key}={fmt(v, '.3f') if isinstance(v, float) else v}" for key, v in d.items()
                )
            )
    if extra:
        notes += ["", "Details:", *extra]
    errors = [r for r in results if "error" in r]
    for r in errors:
        notes += ["", f"{r['name']} failed:", "```", r["error"].rstrip(), "```"]
    return "\n".join(lines + notes) + "\n"


def write_markdown(path: Path, key: str, header: str, body: str) -> None:
    """Insert or replace the section `## <key>` of a results file."""
    section = f"## {key}\n\n{header}\n{body}"
    text = (
        path.read_text()
        if path.exists()
        else (
            "# kmflow benchmark results\n\nWritten by `benchmarks/bench_lloyd.py --output`; one "
            "section per workload, replaced when the same workload is run again.\n"
        )
    )
    marker = f"## {key}\n"
    if marker in text:
        start = text.index(marker)
        nxt = text.find("\n## ", start + len(marker))
        rest = "" if nxt < 0 else "\n\n" + text[nxt + 1 :]
        text = text[:start] + section.rstrip("\n") + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help=f"one workload, N = {SMALL_N:,} (the demo)")
    p.add_argument(
        "--n-pixels",
        type=int,
        default=None,
        help="one workload of N pixels (default: the two workloads, 3M and 10M)",
    )
    p.add_argument("--k", type=int, default=None, help="k (default 12 at 3M, 16 otherwise)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--chunk-pixels",
        type=int,
        default=None,
        help="Dask chunk length (default 500,000 at 3M, 1,000,000 at 10M, else min(1M, N/4))",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed fits per contender (the fastest counts)"
    )
    p.add_argument("--output", type=Path, default=None, help="write/update a markdown file")
    p.add_argument("--skip-dask-ml", action="store_true")
    p.add_argument("--dask-ml-timeout", type=float, default=900.0)
    p.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="time limit for each other contender's subprocess",
    )
    p.add_argument("--only", nargs="+", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def workloads(args: argparse.Namespace) -> list[argparse.Namespace]:
    """One namespace per workload: ``args`` with ``n``, ``k``, ``chunk_pixels``, ``names``,
    ``target`` filled in."""
    if args.n_pixels is None and not args.small:
        todo = list(WORKLOADS)
    else:
        n = args.n_pixels or SMALL_N
        default = {w[0]: w for w in WORKLOADS}.get(n)
        todo = [default or (n, 16, min(1_000_000, max(1, math.ceil(n / 4))), CONTENDERS, None)]
    out = []
    for n, k, chunk, names, target in todo:
        w = argparse.Namespace(**vars(args))
        w.n, w.k, w.target = n, args.k or k, target
        w.chunk_pixels = args.chunk_pixels or chunk
        w.names = [
            name for name in (args.only or names) if not (args.skip_dask_ml and name == "dask-ml")
        ]
        out.append(w)
    return out


def run_workload(
    w: argparse.Namespace, bw: tuple[float, float], load_start: float, tmp: Path
) -> tuple[str, list[dict[str, Any]], dict[str, float]]:
    """Data, initial centers and every contender of one workload; returns the report."""
    work = tmp / f"n{w.n}"
    work.mkdir()
    n = w.n
    t0 = time.perf_counter()
    pixels = make_pixels(n, w.seed)
    np.save(work / "pixels.npy", pixels)
    data_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    centers = make_init_centers(pixels, w.k, w.seed)
    init_s = time.perf_counter() - t0
    np.save(work / "init_centers.npy", centers)
    LOG.info("data: %s pixels in %.1f s; k-means++ init in %.2f s", f"{n:,}", data_s, init_s)
    results = []
    for name in w.names:
        timeout = w.dask_ml_timeout if name == "dask-ml" else w.timeout
        LOG.info("running %s (N = %s, k = %d) ...", name, f"{n:,}", w.k)
        r = run_contender(name, w, work, timeout)
        if "error" not in r and "timed_out" not in r:
            c = np.load(work / f"{name}.centers.npy")
            r["inertia_per_pixel"] = true_inertia(pixels, c) / n
            LOG.info(
                "  %s: fit %.2f s, %.4f s/iter, n_iter %d, inertia/pixel %.3f",
                name,
                r["fit_s"],
                r["s_per_iter"],
                r["n_iter"],
                r["inertia_per_pixel"],
            )
        elif "timed_out" in r:
            LOG.info("  %s: timed out > %.0f s", name, r["timed_out"])
        else:
            LOG.info("  %s: FAILED\n%s", name, r["error"])
        results.append(r)
    prep = {"init_s": init_s, "load_start": load_start}
    return build_report(w, results, n, bw, prep, ""), results, prep


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%X")
    command = "python " + " ".join(
        [str(Path(sys.argv[0])), *sys.argv[1:]] if argv is None else ["bench_lloyd.py", *argv]
    )
    mach = machine_info()
    LOG.info("machine: %d cores, %.1f GiB, %s", mach["cores"], mach["ram_gib"], mach["cpu"])

    reports = []
    with tempfile.TemporaryDirectory(prefix="bench_lloyd_") as tmp:
        LOG.info("measuring read bandwidth (1 GiB float64, best of 5) ...")
        load_start = os.getloadavg()[0]
        bw = measure_bandwidth()
        LOG.info(
            "bandwidth: %.1f GB/s (1 process), %.1f GB/s (2 processes)", bw[0] / 1e9, bw[1] / 1e9
        )
        for w in workloads(args):
            load = os.getloadavg()[0]
            report, _, _ = run_workload(w, bw, load if reports else load_start, Path(tmp))
            reports.append((w, report))

    vers = package_versions()
    for w, report in reports:
        print()
        print(report)
        if args.output:
            header = "\n".join(
                [
                    f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
                    f"- machine: {mach['cores']} cores, {mach['ram_gib']:.1f} GiB RAM, "
                    f"{mach['cpu']}; Python {mach['python']}, {mach['platform']}",
                    "- packages: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
                    f"- command: `{command}`",
                    "",
                ]
            )
            key = f"N = {w.n:,} pixels, k = {w.k}, {w.iters} iterations, seed {w.seed}"
            write_markdown(args.output, key, header, report)
            LOG.info("wrote %s (%s)", args.output, key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
