"""k-sweep benchmark: kmflow's sweep against a scikit-learn loop and dask-ml, in one run.

Workload: N synthetic rows (default 2,000,000 × 20 features, ``make_blobs`` with 8 centers,
seeded), k = 2..12. Each contender fits every k and scores it:

- **kmflow**: ``kmflow.cluster.sweep.sweep_fit(rows, "2..12", seed=0)`` on
  ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``, reading the rows from
  a Zarr row store (``kmflow.storage.rowstore.RowStore``, where the records job keeps its
  prepared matrix; written before the clock starts), one shared k-means||, one pass per
  Lloyd iteration for every k still iterating, two metric passes for all k, one shared
  10,000-row silhouette sample.
- **scikit-learn**, per k: ``KMeans(k, n_init=1, algorithm="lloyd", random_state=0)``, then
  ``davies_bouldin_score``, ``calinski_harabasz_score`` and
  ``silhouette_score(sample_size=10_000, random_state=0)`` on its labels; 2 BLAS/OpenMP
  threads (threadpoolctl).
- **dask-ml**, per k: ``dask_ml.cluster.KMeans(k, init="k-means||", random_state=0)`` on a
  persisted Dask array, same LocalCluster shape; fits only (dask-ml has no clustering
  metrics), timed separately, under ``--dask-ml-timeout``: the k finished by then count.

Every contender runs in its own fresh subprocess (this script re-invoked with ``--worker``);
the data travels as a ``.npy`` file. Peak memory: ``resource.getrusage`` ``ru_maxrss`` of the
contender's process and of its largest child (a Dask worker), and the summed RSS of its
process tree sampled every 50 ms. Agreement: scikit-learn's three metrics recomputed here on
kmflow's own labels (DB and CH must match to 1e-6; the silhouette differs by its sample).

    python benchmarks/bench_sweep.py --output benchmarks/RESULTS.md
    python benchmarks/bench_sweep.py --small        # 200,000 rows
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lloyd import (  # the shared benchmark helpers
    PeakRSS,
    fmt,
    machine_info,
    package_versions,
    run_subprocess,
    write_markdown,
)

LOG = logging.getLogger("bench_sweep")

N_DEFAULT = 2_000_000
N_SMALL = 200_000
N_FEATURES = 20
N_BLOBS = 8
KS = "2..12"
SAMPLE = 10_000
N_WORKERS = 2
CONTENDERS = ("kmflow", "sklearn", "dask-ml")
LABELS = {
    "kmflow": "kmflow sweep_fit (2 workers x 1 thread)",
    "sklearn": "scikit-learn loop: KMeans + 3 metrics per k (2 threads)",
    "dask-ml": "dask-ml KMeans per k (2 workers x 1 thread), fits only",
}


def _ks(spec: str) -> list[int]:
    lo, hi = (int(v) for v in spec.split(".."))
    return list(range(lo, hi + 1))


def _cluster() -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    )


def _write(work: Path, name: str, out: dict[str, Any]) -> None:
    (work / f"{name}.json").write_text(json.dumps(out, default=float))


# --------------------------------------------------------------------------- contenders
def _run_kmflow(
    args: argparse.Namespace, X: np.ndarray, mem: PeakRSS, work: Path
) -> dict[str, Any]:
    from distributed import Client

    from kmflow.cluster.sweep import sweep_fit
    from kmflow.storage.rowstore import RowStore

    # The records job keeps its prepared matrix in a Zarr row store and the workers read it
    # from there; the store is written before the clock starts, as the other contenders'
    # in-memory arrays are made before theirs.
    store = RowStore(str(work / "rows.zarr"))
    if not store.exists() or store.n_rows != len(X):
        store.append(X)

    passes: list[dict[str, Any]] = []

    def cb(info: Any) -> None:
        passes.append({"stage": info.stage, "active": len(info.active), "s": info.seconds})

    with _cluster() as cluster, Client(cluster):
        t0 = time.perf_counter()
        warm = X[-20_000:]  # the workers import kmflow and load the compiled kernels
        sweep_fit(warm, "2..3", seed=1, silhouette_sample_size=100)
        warmup_s = time.perf_counter() - t0
        mem.mark_baseline()
        t0 = time.perf_counter()
        res = sweep_fit(
            store.rows(), args.ks, seed=args.seed, silhouette_sample_size=SAMPLE, callback=cb
        )
        total = time.perf_counter() - t0
    per_k = {str(k): {**r.to_dict(), "centers": r.centers.tolist()} for k, r in res.results.items()}
    stages: dict[str, float] = {}
    for p in passes:
        stages[p["stage"]] = stages.get(p["stage"], 0.0) + p["s"]
    return {
        "total_s": total,
        "per_k": per_k,
        "notes": {
            "warmup_s": warmup_s,
            "n_passes": res.n_passes,
            "lloyd_passes": sum(p["stage"] == "lloyd" for p in passes),
            "stage_s": {k: round(v, 2) for k, v in stages.items()},
            "sample_size": res.sample_size,
        },
    }


def _run_sklearn(args: argparse.Namespace, X: np.ndarray, mem: PeakRSS, work: Path) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
    from threadpoolctl import threadpool_limits

    mem.mark_baseline()
    per_k: dict[str, Any] = {}
    t_all = time.perf_counter()
    with threadpool_limits(2):
        for k in _ks(args.ks):
            t0 = time.perf_counter()
            km = KMeans(k, n_init=1, algorithm="lloyd", random_state=args.seed).fit(X)
            fit_s = time.perf_counter() - t0
            lab = km.labels_
            t1 = time.perf_counter()
            db = davies_bouldin_score(X, lab)
            ch = calinski_harabasz_score(X, lab)
            sil = silhouette_score(X, lab, sample_size=SAMPLE, random_state=args.seed)
            per_k[str(k)] = {
                "k": k,
                "inertia": float(km.inertia_),
                "davies_bouldin": float(db),
                "calinski_harabasz": float(ch),
                "silhouette": float(sil),
                "seconds": time.perf_counter() - t0,
                "fit_s": fit_s,
                "metrics_s": time.perf_counter() - t1,
                "n_iter": int(km.n_iter_),
            }
            LOG.info("sklearn k=%d: %.1f s", k, per_k[str(k)]["seconds"])
    total = time.perf_counter() - t_all
    return {
        "total_s": total,
        "per_k": per_k,
        "notes": {
            "fit_s": round(sum(v["fit_s"] for v in per_k.values()), 2),
            "metrics_s": round(sum(v["metrics_s"] for v in per_k.values()), 2),
        },
    }


def _run_daskml(args: argparse.Namespace, X: np.ndarray, mem: PeakRSS, work: Path) -> dict:
    import dask.array as da
    from dask_ml.cluster import KMeans
    from distributed import Client, wait

    per_k: dict[str, Any] = {}
    with _cluster() as cluster, Client(cluster):
        t0 = time.perf_counter()
        x = da.from_array(X, chunks=(max(1, len(X) // 8), X.shape[1])).persist()
        wait(x)
        persist_s = time.perf_counter() - t0
        mem.mark_baseline()
        t_all = time.perf_counter()
        for k in _ks(args.ks):
            t0 = time.perf_counter()
            km = KMeans(n_clusters=k, init="k-means||", random_state=args.seed).fit(x)
            per_k[str(k)] = {
                "k": k,
                "seconds": time.perf_counter() - t0,
                "n_iter": int(km.n_iter_),
                "centers": np.asarray(km.cluster_centers_).tolist(),
            }
            partial = {
                "name": "dask-ml",
                "partial": True,
                "total_s": time.perf_counter() - t_all,
                "per_k": per_k,
                "peak_rss": mem.peak,
                "baseline_rss": mem.baseline,
                "notes": {"persist_s": persist_s},
            }
            _write(work, "dask-ml.partial", partial)  # survives a timeout
            LOG.info("dask-ml k=%d: %.1f s", k, per_k[str(k)]["seconds"])
        total = time.perf_counter() - t_all
    return {"total_s": total, "per_k": per_k, "notes": {"persist_s": persist_s}}


def worker_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%X")
    work = Path(args.workdir)
    out: dict[str, Any] = {"name": args.worker}
    with PeakRSS() as mem:
        try:
            X = np.load(work / "X.npy")
            if args.worker == "kmflow":
                out.update(_run_kmflow(args, X, mem, work))
            elif args.worker == "sklearn":
                out.update(_run_sklearn(args, X, mem, work))
            else:
                out.update(_run_daskml(args, X, mem, work))
        except Exception:
            out["error"] = traceback.format_exc()
    out["peak_rss"] = mem.peak
    out["baseline_rss"] = mem.baseline
    out["maxrss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["maxrss_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    _write(work, args.worker, out)
    return 0 if "error" not in out else 1


# --------------------------------------------------------------------------- parent
def make_data(n: int, seed: int) -> np.ndarray:
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n, n_features=N_FEATURES, centers=N_BLOBS, cluster_std=2.0, random_state=seed)
    return np.ascontiguousarray(X, dtype=np.float64)


def agreement(X: np.ndarray, km: dict[str, Any], seed: int) -> dict[str, dict[str, float]]:
    """scikit-learn's metrics on kmflow's own labels (nearest final center)."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
    from threadpoolctl import threadpool_limits

    from kmflow.kernels.lloyd import nearest

    out = {}
    with threadpool_limits(2):
        for k, r in km["per_k"].items():
            lab = nearest(X, np.asarray(r["centers"]))
            out[k] = {
                "db": float(davies_bouldin_score(X, lab)),
                "ch": float(calinski_harabasz_score(X, lab)),
                "sil": float(silhouette_score(X, lab, sample_size=SAMPLE, random_state=seed)),
            }
    return out


def _rel(a: float | None, b: float) -> float:
    return float("nan") if a is None else abs(a - b) / abs(b)


def build_report(
    args: argparse.Namespace, res: dict[str, dict[str, Any]], agree: dict[str, Any]
) -> str:
    mib = 2**20
    ks = _ks(args.ks)
    lines = [
        "| contender | k done | total s | s per k | peak RSS MiB (tree, Δ) "
        "| ru_maxrss MiB (process / largest child) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        r = res.get(name)
        if r is None:
            continue
        head = f"| {LABELS[name]} "
        if "error" in r and "per_k" not in r:
            lines.append(head + "| error | - | - | - | - |")
            continue
        done = len(r.get("per_k", {}))
        timed = "timed_out" in r or r.get("partial")
        total = r.get("total_s")
        tot = f"> {args.dask_ml_timeout:.0f} (timeout)" if timed else fmt(total, ".1f")
        per = fmt(total / done, ".2f") if total and done else "-"
        peak = r.get("peak_rss", 0) / mib
        delta = (r.get("peak_rss", 0) - r.get("baseline_rss", 0)) / mib
        ru = (
            f"{r['maxrss_self'] / mib:,.0f} / {r['maxrss_children'] / mib:,.0f}"
            if "maxrss_self" in r
            else "-"
        )
        lines.append(
            head + f"| {done}/{len(ks)} | {tot} | {per} | {peak:,.0f} ({delta:+,.0f}) | {ru} |"
        )
    km, sk = res.get("kmflow", {}), res.get("sklearn", {})
    ratios = []
    if km.get("total_s") and sk.get("total_s"):
        v = sk["total_s"] / km["total_s"]
        ratios.append(("scikit-learn loop s ÷ kmflow sweep s", f"{v:.2f}", "≥ 3", v >= 3))
    dm = res.get("dask-ml", {})
    if km.get("total_s") and dm.get("per_k"):
        done = list(dm["per_k"])
        dm_s = sum(dm["per_k"][k]["seconds"] for k in done)
        km_s = sum(km["per_k"][k]["seconds"] for k in done)
        lbl = "dask-ml fits s ÷ kmflow attributed s, " + (
            "all k" if len(done) == len(ks) else f"the {len(done)} k dask-ml finished"
        )
        ratios.append((lbl, f"{dm_s / km_s:.1f}", "(info)", None))
    if ratios:
        lines += ["", "| ratio | value | target | result |", "|---|---:|---|---|"]
        for label, val, target, ok in ratios:
            verdict = "-" if ok is None else ("pass" if ok else "FAIL")
            lines.append(f"| {label} | {val} | {target} | {verdict} |")
    if km.get("per_k"):
        lines += [
            "",
            "Per k: kmflow's scores, and scikit-learn's metrics on kmflow's own labels (DB, CH: "
            "relative difference; silhouette: scikit-learn's 10,000-row sample, random_state 0, "
            "against kmflow's own sample); scikit-learn loop's own fit for reference.",
            "",
            "| k | kmflow n_iter | kmflow s | kmflow DB | rel. diff DB | kmflow CH | rel. diff CH "
            "| kmflow silhouette | sklearn silhouette (kmflow labels) | sklearn-loop n_iter "
            "| sklearn-loop DB | sklearn-loop silhouette | sklearn-loop s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k in map(str, ks):
            r = km["per_k"][k]
            a = agree.get(k, {})
            s = sk.get("per_k", {}).get(k, {})
            lines.append(
                f"| {k} | {r['n_iter']} | {r['seconds']:.2f} | {fmt(r['davies_bouldin'], '.4f')} "
                f"| {fmt(_rel(r['davies_bouldin'], a['db']) if a else None, '.1e')} "
                f"| {fmt(r['calinski_harabasz'], ',.0f')} "
                f"| {fmt(_rel(r['calinski_harabasz'], a['ch']) if a else None, '.1e')} "
                f"| {fmt(r['silhouette'], '.4f')} | {fmt(a.get('sil'), '.4f')} "
                f"| {s.get('n_iter', '-')} | {fmt(s.get('davies_bouldin'), '.4f')} "
                f"| {fmt(s.get('silhouette'), '.4f')} | {fmt(s.get('seconds'), '.2f')} |"
            )
        if sk.get("per_k"):
            best_km = min(ks, key=lambda k: km["per_k"][str(k)]["davies_bouldin"])
            best_sk = min(ks, key=lambda k: sk["per_k"][str(k)]["davies_bouldin"])
            sil_km = max(ks, key=lambda k: km["per_k"][str(k)]["silhouette"])
            sil_sk = max(ks, key=lambda k: sk["per_k"][str(k)]["silhouette"])
            lines += [
                "",
                f"Chosen k: kmflow DB minimum k = {best_km}, silhouette maximum k = {sil_km}; "
                f"scikit-learn loop DB minimum k = {best_sk}, silhouette maximum k = {sil_sk} "
                f"(planted: {N_BLOBS} blobs).",
            ]
    lines += [
        "",
        f"Workload: {args.n:,} rows x {N_FEATURES} features, float64, "
        f"`make_blobs(centers={N_BLOBS}, cluster_std=2.0, random_state={args.seed})`; "
        f"k = {args.ks}; max_iter 300, tol 1e-4 for everyone. Total s: wall time of all k "
        "(fit + metrics) in the contender's process after its set-up: kmflow's includes "
        "the workers reading the rows from the Zarr row store (written before the clock "
        "starts, as the records job's prepared matrix is) and holding them, not the "
        "LocalCluster start nor an "
        "untimed 20,000-row warm-up sweep (the workers import kmflow and load its compiled "
        "kernels); dask-ml's excludes the persist of the data. kmflow s per k: its attributed "
        "seconds (shared passes split in proportion to k).",
        "- peak RSS (tree): summed RSS of the contender's process and its descendants (Dask "
        "workers), sampled every 50 ms; Δ = peak minus the RSS just before the timed part. "
        "ru_maxrss: `resource.getrusage` of the contender process itself and the largest of "
        "its children (a Dask worker process; 0 for scikit-learn).",
    ]
    extra = []
    for name in CONTENDERS:
        r = res.get(name, {})
        if r.get("notes"):
            extra.append(f"- {name}: " + ", ".join(f"{k}={v}" for k, v in r["notes"].items()))
        if r.get("error"):
            extra.append(f"- {name} error: `{r['error'].strip().splitlines()[-1]}`")
    if extra:
        lines += ["", "Details:", *extra]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help=f"rows (default {N_DEFAULT:,})")
    p.add_argument("--small", action="store_true", help=f"{N_SMALL:,} rows")
    p.add_argument("--ks", default=KS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=CONTENDERS, default=None)
    p.add_argument("--skip-dask-ml", action="store_true")
    p.add_argument("--dask-ml-timeout", type=float, default=300.0)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--worker", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.n = args.n or (N_SMALL if args.small else N_DEFAULT)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%X")
    command = "python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]])
    names = [n for n in (args.only or CONTENDERS) if not (args.skip_dask_ml and n == "dask-ml")]
    mach = machine_info()
    load = os.getloadavg()[0]
    res: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        X = make_data(args.n, args.seed)
        np.save(work / "X.npy", X)
        LOG.info("data %s x %d in %.1f s", f"{args.n:,}", N_FEATURES, time.perf_counter() - t0)
        for name in names:
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                name,
                "--workdir",
                str(work),
                "--ks",
                args.ks,
                "--seed",
                str(args.seed),
            ]
            timeout = args.dask_ml_timeout if name == "dask-ml" else args.timeout
            LOG.info("running %s ...", name)
            r = run_subprocess(cmd, work, name, timeout)
            if "timed_out" in r and (work / f"{name}.partial.json").exists():
                r = {**json.loads((work / f"{name}.partial.json").read_text()), **r}
            res[name] = r
            LOG.info("  %s: %s s", name, fmt(r.get("total_s"), ".1f"))
        agree = agreement(X, res["kmflow"], args.seed) if res.get("kmflow", {}).get("per_k") else {}
    report = build_report(args, res, agree)
    print(report)
    if args.output:
        vers = package_versions()
        header = "\n".join(
            [
                f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
                f"- machine: {mach['cores']} cores, {mach['ram_gib']:.1f} GiB RAM, "
                f"{mach['cpu']}; Python {mach['python']}",
                "- packages: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
                f"- load average (1 min) before the run: {load:.2f}",
                f"- command: `{command}`",
                "",
            ]
        )
        key = f"k sweep {args.ks}, {args.n:,} rows x {N_FEATURES} features, seed {args.seed}"
        write_markdown(args.output, key, header, report)
        LOG.info("wrote %s (%s)", args.output, key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
