"""The registry the report tests read: built once per session, directly (no flow run)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from kmflow.core.report_sample import sample_file, sample_rows
from kmflow.core.sweep import choose_k
from kmflow.storage.registry import ModelRegistry

FEATURES = ["age", "income", "visits", "spend", "tenure"]
T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


def _sweep(X: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for k in range(2, 7):
        km = KMeans(k, n_init=2, random_state=0).fit(X)
        labels = km.labels_
        rows.append(
            {
                "k": k,
                "inertia": float(km.inertia_),
                "davies_bouldin": float(davies_bouldin_score(X, labels)),
                "calinski_harabasz": float(calinski_harabasz_score(X, labels)),
                "silhouette": float(silhouette_score(X, labels)),
            }
        )
    return rows


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registry holding 'blobs' (2 versions, drift history), 'pal' and 'old'."""
    root = tmp_path_factory.mktemp("report")
    registry = ModelRegistry(str(root / "models"))
    X, _ = make_blobs(600, centers=4, n_features=5, cluster_std=1.0, random_state=0)
    sweep = _sweep(X)
    choice = choose_k(sweep, "db")
    km = KMeans(choice.k, n_init=2, random_state=0).fit(X)
    sample = sample_rows(X, size=400, seed=1)
    common = {"init": "k-means||", "seed": 0, "n_iter": 5, "converged": True}
    registry.register(
        "blobs",
        km.cluster_centers_,
        inertia=float(km.inertia_),
        fingerprint="blobs-1",
        metrics={
            "sweep": sweep,
            "chosen_k": choice.k,
            "rule": "db",
            "sizes": np.bincount(km.labels_).tolist(),
        },
        reference={"feature_histograms": {"names": FEATURES}},
        files=sample_file(sample),
        **common,
    )
    registry.promote("blobs", 1)
    statistics = []
    for i in range(6):
        psi = 0.05 + 0.1 * i
        stats = {
            "psi": {"value": psi, "threshold": 0.3, "drifted": psi > 0.3},
            "sqdist_ratio": {"value": 1.0 + 0.05 * i, "threshold": 1.5, "drifted": False},
        }
        statistics.append(stats)
        registry.log_event(
            "blobs",
            "drift",
            {"version": 1, "batch_id": f"b{i}", "drifted": psi > 0.3, "statistics": stats},
            at=T0 + dt.timedelta(hours=i),
        )
    registry.register(
        "blobs", km.cluster_centers_, inertia=1.0, fingerprint="blobs-2", parent=1, **common
    )
    registry.promote("blobs", 2)

    palette = np.array(
        [[200, 40, 40], [40, 160, 60], [50, 70, 200], [230, 210, 80], [20, 20, 30]], float
    )
    rng = np.random.default_rng(0)
    pixels = palette[rng.integers(0, 5, 700)] + rng.normal(0, 10, (700, 3))
    registry.register(
        "pal",
        palette,
        kind="palette",
        preprocessing={"type": "color", "color_space": "rgb"},
        inertia=1.0,
        fingerprint="pal",
        metrics={"sizes": [500, 300, 100, 60, 40], "silhouette": 0.8},
        files=sample_file(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)),
        **common,
    )
    registry.register("old", km.cluster_centers_, inertia=1.0, fingerprint="old", **common)
    return {
        "root": root,
        "registry": registry,
        "X": X,
        "sample": sample,
        "choice": choice,
        "centers": km.cluster_centers_,
        "statistics": statistics,
    }
