"""Image-clustering benchmark: kmflow's feature chains against scikit-learn KMeans, one run.

Labelled image sets that ship inside installed packages (nothing downloaded):

- ``digits``: scikit-learn's 1,797 8x8 gray digits (10 classes), scaled to 0..255;
- ``faces``: scikit-image's ``lfw_subset``, 200 25x25 gray images, 100 faces then 100
  non-faces (2 classes).

For every set and seed (default 5 seeds), each contender clusters the images into as many
clusters as there are classes and is scored against the classes (ARI, NMI, Hungarian
accuracy, with kmflow's metrics, equal to scikit-learn's):

- **kmflow** with each feature chain: ``kmflow.jobs.image_clusters.features.fit_features`` on
  the uint8 images (numpy, in this process), then ``n_init`` k-means|| fits of
  ``kmflow.estimator.KMeans`` (seeds seed, seed+1, ...) on the features as a dask array,
  the lowest inertia kept: what ``kmflow cluster-images --k K`` runs, without the store and
  the flow;
- **scikit-learn** ``KMeans(n_clusters=K, n_init=n_init, random_state=seed)`` on the raw
  pixels in [0, 1] and on ``PCA(30)`` of them.

Seconds are the features' fit plus the k-means fits, mean over seeds.

    python benchmarks/bench_image_clusters.py --seeds 2                          # quick look
    python benchmarks/bench_image_clusters.py --output benchmarks/RESULTS.md     # 5 seeds
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_lloyd import run_header, write_markdown

LOG = logging.getLogger("bench_image_clusters")

CHAINS = (
    "raw",
    "raw,pca:30",
    "hog",
    "hog,pca:30",
    "raw,umap:5",
    "raw,pca:30,umap:5",
    "hog,umap:5",
    "hog,pca:30,umap:5",
    "raw,hog,std,pca:30,umap:5",
)
DATASETS = ("digits", "faces")


def load_set(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """uint8 images (n, H, W), integer classes, (H, W, 1)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images * 255 / 16).round().astype(np.uint8)
        return x, d.target.astype(np.int64), (8, 8, 1)
    from skimage.data import lfw_subset

    x = (lfw_subset() * 255).round().astype(np.uint8)
    y = np.repeat([0, 1], 100)
    return x, y, (25, 25, 1)


def score(y: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from kmflow.kernels.metrics import external_metrics

    m = external_metrics(y, labels).to_dict()
    return {"ari": m["ari"], "nmi": m["nmi"], "accuracy": m["accuracy"]}


def kmflow_run(
    chain: str, x: np.ndarray, shape: tuple[int, int, int], k: int, seed: int, *, n_init: int
) -> np.ndarray:
    import dask.array as da

    from kmflow.estimator import KMeans
    from kmflow.jobs.image_clusters.features import fit_features

    feats = fit_features(chain, x, shape=shape, seed=seed)
    X = np.asarray(feats.transform(x))
    Xd = da.from_array(X, chunks=(max(1, len(X) // 4), X.shape[1]))
    fits = [KMeans(n_clusters=k, random_state=seed + i).fit(Xd) for i in range(n_init)]
    best = min(fits, key=lambda f: float(f.inertia_))
    return np.asarray(best.predict(Xd))


def sklearn_run(pca: bool, x: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    X = x.reshape(len(x), -1).astype(np.float64) / 255.0
    if pca:
        X = PCA(n_components=30, random_state=seed).fit_transform(X)
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(X)


def run(args: argparse.Namespace) -> dict[str, dict[str, list[dict[str, float]]]]:
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for name in args.datasets:
        x, y, shape = load_set(name)
        k = len(np.unique(y))
        contenders: list[tuple[str, Callable[[int], np.ndarray]]] = [
            ("scikit-learn KMeans, raw", partial(sklearn_run, False, x, k, n_init=args.n_init)),
            ("scikit-learn KMeans, PCA(30)", partial(sklearn_run, True, x, k, n_init=args.n_init)),
        ]
        contenders += [
            (f"kmflow {c}", partial(kmflow_run, c, x, shape, k, n_init=args.n_init))
            for c in args.chains
        ]
        results[name] = {}
        for label, fn in contenders:
            rows = []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                labels = fn(seed)
                row = {**score(y, labels), "seconds": time.perf_counter() - t0}
                rows.append(row)
            results[name][label] = rows
            m = {key: np.mean([r[key] for r in rows]) for key in rows[0]}
            LOG.info(
                "%s %-34s ARI %.3f NMI %.3f acc %.3f %.2f s",
                name,
                label,
                m["ari"],
                m["nmi"],
                m["accuracy"],
                m["seconds"],
            )
    return results


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, by in results.items():
        x, y, shape = load_set(name)
        raw_ari = float(np.mean([r["ari"] for r in by["scikit-learn KMeans, raw"]]))
        lines += [
            f"### {name}: {len(x)} images {shape[0]}x{shape[1]}, {len(np.unique(y))} classes, "
            f"k = {len(np.unique(y))}",
            "",
            "| contender | ARI | NMI | accuracy | ARI vs raw k-means | seconds |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, rows in by.items():

            def ms(key: str, rows: list[dict[str, float]] = rows) -> str:
                v = np.array([r[key] for r in rows])
                return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"

            ari = float(np.mean([r["ari"] for r in rows]))
            rel = f"{(ari / raw_ari - 1) * 100:+.0f}%" if raw_ari > 0 else "-"
            secs = np.mean([r["seconds"] for r in rows])
            lines.append(
                f"| {label} | {ms('ari')} | {ms('nmi')} | {ms('accuracy')} | {rel} | {secs:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--n-init", type=int, default=4, help="k-means restarts (default 4)")
    p.add_argument("--chains", nargs="+", default=list(CHAINS))
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--output", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("kmflow").setLevel(logging.WARNING)
    args = parse_args(argv)
    loads = os.getloadavg()
    results = run(args)
    body = report(args, results)
    print(body)
    if args.output:
        header = run_header(
            "bench_image_clusters.py",
            argv,
            loads,
            f"- {args.seeds} seeds (mean ± sd), n_init {args.n_init}",
        )
        write_markdown(args.output, "Clustering whole images", header, body)
        LOG.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
