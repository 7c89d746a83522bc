"""The image-clustering job, step by step: images → features → k-means → scores and pictures.

Each step is a library function; the ``cluster-images`` flow
(:mod:`kmflow.flows.cluster_images`) calls them in order through its tasks, and
``kmflow cluster-images`` runs that flow. Steps pass small handles: URLs, the fitted feature
chain, scores; the images and their features stay in the row store.

1. :func:`~kmflow.jobs.image_clusters.inputs.load_images`: the images as fixed-size rows in
   a row store (decoded once).
2. :func:`featurize`: the feature chain (:mod:`kmflow.jobs.image_clusters.features`) fitted
   on the training images (all of them unless ``holdout``), then every image's features,
   kept in the row store as a derived variable named by the chain, the seed and the split.
3. :func:`fit_clusters`: k-means (k-means|| with ``n_init`` restarts) for one k, or the sweep
   over k of the records job with k chosen by its rule, on the training features.
4. :func:`describe_clusters`: every image's cluster and distance (``clusters.csv``), the
   external metrics against known classes (or the internal ones), the contingency table and
   its heatmap, and a contact sheet per cluster.
5. :func:`assign_images`: new images through a registered model's stored chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from kmflow.core.jsonable import json_ready
from kmflow.core.sweep import Choice, choose_k
from kmflow.errors import InvalidInputError
from kmflow.jobs.image_clusters.features import ImageFeatures, fit_features
from kmflow.jobs.image_clusters.inputs import ImageSet, load_images
from kmflow.kernels.lloyd import assign
from kmflow.kernels.metrics import (
    contingency_table,
    external_metrics,
    internal_metrics,
    silhouette_sample,
)
from kmflow.kernels.split import holdout_row_numbers
from kmflow.kernels.sweep import SweepInfo
from kmflow.params import ImageClusterParams
from kmflow.storage.fs import join_url, storage_options_for, write_bytes_atomic
from kmflow.storage.images import encode_png

__all__ = [
    "Assigned",
    "Described",
    "Featurized",
    "Fitted",
    "assign_images",
    "describe_clusters",
    "featurize",
    "fit_clusters",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class Featurized:
    """The fitted chain and where every image's features are kept."""

    images: ImageSet
    features: ImageFeatures
    variable: str
    n_train: int
    n_test: int
    seconds: float
    features_seed: int = 0
    holdout: float = 0.0

    @property
    def chain(self) -> str:
        return self.features.chain

    def X(self) -> da.Array:
        """Every image's features, float64 (n_images, n_features)."""
        x = self.images.open().read_derived(self.variable)
        if x is None:
            raise InvalidInputError(
                f"the features {self.variable} of {self.images.store} are gone (the store "
                "changed); run again"
            )
        return x.astype(np.float64)

    def held_out(self) -> np.ndarray:
        """Whether each image is held out of the fits (bool, n_images)."""
        return _held_out(self.images, self.features_seed, self.holdout)


def _held_out(images: ImageSet, seed: int, holdout: float) -> np.ndarray:
    n = images.n_images
    if holdout <= 0:
        return np.zeros(n, dtype=bool)
    rows = da.arange(n, chunks=max(1, min(n, 1_000_000)))
    return np.asarray(holdout_row_numbers(rows, holdout, seed=seed).compute(), dtype=bool)


def featurize(images: ImageSet, params: ImageClusterParams, *, by: str | None = None) -> Featurized:
    """Fit the feature chain on the training images; store every image's features."""
    t0 = time.perf_counter()
    held = _held_out(images, params.seed, params.holdout)
    n_test = int(held.sum())
    n_train = images.n_images - n_test
    if n_train < 2:
        raise InvalidInputError(
            f"{n_train} training image(s): at least 2 are needed (lower --holdout or add images)"
        )
    rows = images.rows()
    train = rows[~held] if n_test else rows
    if n_test:
        train = train.compute_chunk_sizes()
    features = fit_features(params.features, train, shape=images.shape, seed=params.seed)
    spec = {"chain": features.chain, "seed": params.seed, "holdout": params.holdout}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    variable = f"features_{digest}"
    X = features.transform(rows)
    store = images.open()
    store.write_derived(variable, X, ("row", f"{variable}_dim"), by=by)
    logger.info(
        "features %s: %d -> %d columns (%d training images)",
        features.chain,
        int(np.prod(images.shape)),
        features.n_features,
        n_train,
    )
    return Featurized(
        images=images,
        features=features,
        variable=variable,
        n_train=n_train,
        n_test=n_test,
        seconds=time.perf_counter() - t0,
        features_seed=params.seed,
        holdout=params.holdout,
    )


# --------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class Fitted:
    """k-means on the training features: the sweep (one row per k), the chosen k, its fit."""

    sweep: list[dict[str, Any]]
    choice: Choice
    centers: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    seed: int
    metrics: dict[str, Any]
    seconds: float

    @property
    def k(self) -> int:
        return self.choice.k


def fit_clusters(
    featurized: Featurized,
    params: ImageClusterParams,
    *,
    callback: Callable[[SweepInfo], None] | None = None,
) -> Fitted:
    """k-means for one k (``n_init`` restarts) or the sweep over k, on the training rows."""
    t0 = time.perf_counter()
    X = featurized.X()
    held = featurized.held_out()
    train = X[~held].compute_chunk_sizes() if held.any() else X
    train = train.persist()
    ks = params.ks
    distinct = _distinct_rows(train, max(ks))
    if distinct < max(ks):
        raise InvalidInputError(
            f"k={max(ks)} is larger than the {distinct} distinct feature rows of the training "
            "images; lower --k"
        )
    if len(ks) == 1:
        from kmflow.estimator import KMeans

        # k-means|| restarts: seeds seed, seed + 1, ...; the lowest inertia wins.
        fits = [
            KMeans(
                n_clusters=ks[0],
                max_iter=params.max_iter,
                tol=params.tol,
                random_state=params.seed + i,
            ).fit(train)
            for i in range(params.n_init)
        ]
        est = min(fits, key=lambda f: float(f.inertia_))
        centers = np.asarray(est.cluster_centers_, dtype=np.float64)
        im = internal_metrics(train, centers, undefined="nan")
        labels = assign(train, centers)
        sil = (
            silhouette_sample(
                train, labels, sample_size=params.silhouette_sample_size, random_state=params.seed
            )
            if params.silhouette_sample_size and ks[0] > 1
            else float("nan")
        )
        row = {
            "k": ks[0],
            "inertia": float(est.inertia_),
            "davies_bouldin": im.davies_bouldin,
            "calinski_harabasz": im.calinski_harabasz,
            "silhouette": sil,
            "n_iter": int(est.n_iter_),
            "converged": bool(est.converged_),
            "seconds": float(sum(f.fit_seconds_ for f in fits)),
        }
        table = [row]
        choice = choose_k(table, params.select, min_k=None)
        inertia, n_iter, converged, seed = (
            float(est.inertia_),
            int(est.n_iter_),
            bool(est.converged_),
            int(est.seed_),
        )
    else:
        from kmflow.cluster.sweep import sweep_fit

        result = sweep_fit(
            train,
            ks,
            seed=params.seed,
            max_iter=params.max_iter,
            tol=params.tol,
            silhouette_sample_size=params.silhouette_sample_size,
            callback=callback,
        )
        table = [r.to_dict() for r in result.results.values()]
        choice = choose_k(table, params.select, min_k=params.min_k)
        chosen = result.results[choice.k]
        centers = np.asarray(chosen.centers, dtype=np.float64)
        inertia, n_iter, converged, seed = (
            float(chosen.inertia),
            int(chosen.n_iter),
            bool(chosen.converged),
            int(result.seed),
        )
    chosen_row = next(r for r in table if r["k"] == choice.k)
    metrics: dict[str, Any] = {
        "train": {k: v for k, v in chosen_row.items() if k != "seconds"},
        "chosen_k": choice.k,
        "rule": choice.rule,
        "runner_up": choice.runner_up,
    }
    if held.any():
        im = internal_metrics(X[held].compute_chunk_sizes(), centers, undefined="nan")
        metrics["held_out"] = {
            "n_images": int(held.sum()),
            "inertia_per_image": im.inertia / int(held.sum()),
            "davies_bouldin": im.davies_bouldin,
            "calinski_harabasz": im.calinski_harabasz,
        }
    return Fitted(
        sweep=json_ready(table),
        choice=choice,
        centers=centers,
        inertia=inertia,
        n_iter=n_iter,
        converged=converged,
        seed=seed,
        metrics=metrics,
        seconds=time.perf_counter() - t0,
    )


def _distinct_rows(X: da.Array, at_least: int) -> int:
    """Distinct rows of X, counted up to `at_least` (enough to say whether k fits)."""
    seen: set[bytes] = set()
    for block in X.to_delayed().ravel():
        for row in np.ascontiguousarray(block.compute()):
            seen.add(row.tobytes())
            if len(seen) >= at_least:
                return len(seen)
    return len(seen)


# --------------------------------------------------------------------------- describe


@dataclass(frozen=True)
class Described:
    """Every image's cluster, the scores and the pictures."""

    sizes: list[int]
    external: dict[str, Any] | None
    internal: dict[str, Any]
    contingency: dict[str, Any] | None
    outputs: dict[str, str] = field(default_factory=dict)
    sheets: list[str] = field(default_factory=list)


def cluster_labels(X: da.Array, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest center (int64) and its Euclidean distance to it (float64)."""
    labels = assign(X, centers)

    def dist(x: np.ndarray, lab: np.ndarray) -> np.ndarray:
        return np.sqrt(((x - centers[lab]) ** 2).sum(axis=1))

    distance = da.map_blocks(dist, X, labels, drop_axis=1, dtype=np.float64)
    lab, d = da.compute(labels, distance)
    return np.asarray(lab, dtype=np.int64), np.asarray(d, dtype=np.float64)


def _sheet_members(
    labels: np.ndarray, distance: np.ndarray, cluster: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    members = np.flatnonzero(labels == cluster)
    nearest = members[np.argsort(distance[members], kind="stable")[:size]]
    rest = np.setdiff1d(members, nearest)
    rng = np.random.default_rng([seed, cluster])
    random = np.sort(rng.choice(rest, size=min(size, rest.size), replace=False))
    return nearest, random


def describe_clusters(
    featurized: Featurized,
    fitted: Fitted,
    params: ImageClusterParams,
    *,
    out: str | None = None,
) -> Described:
    """Labels, distances, scores, ``clusters.csv``, the heatmap and the contact sheets."""
    images = featurized.images
    X = featurized.X()
    centers = fitted.centers
    k = int(centers.shape[0])
    labels, distance = cluster_labels(X, centers)
    sizes = np.bincount(labels, minlength=k).tolist()
    codes = images.label_codes()
    external = None
    contingency = None
    if codes is not None and (codes >= 0).sum() > 0:
        known = codes >= 0
        ext = external_metrics(codes[known], labels[known])
        external = ext.to_dict()
        classes_idx, clusters_idx, table = contingency_table(codes[known], labels[known])
        contingency = {
            "classes": [images.classes[int(i)] for i in classes_idx] if images.classes else [],
            "clusters": [int(j) for j in clusters_idx],
            "table": np.asarray(table).tolist(),
        }
    im = internal_metrics(X, centers, undefined="nan")
    internal = {
        "inertia": im.inertia,
        "davies_bouldin": im.davies_bouldin,
        "calinski_harabasz": im.calinski_harabasz,
        "silhouette": fitted.metrics["train"].get("silhouette"),
    }
    outputs: dict[str, str] = {}
    sheets: list[str] = []
    if out is not None:
        from kmflow.reports.figures import cluster_sheet, contingency_heatmap

        ids = images.ids()
        csv_url = join_url(out, "clusters.csv")
        id_values = ids.astype(object) if ids.dtype.kind == "T" else ids
        frame = pd.DataFrame({"id": id_values, "cluster": labels, "distance": distance})
        write_bytes_atomic(
            csv_url, frame.to_csv(index=False).encode("utf-8"), storage_options_for(csv_url)
        )
        outputs["clusters"] = csv_url
        rows = images.rows()
        h, w, c = images.shape
        for j in range(k):
            nearest, random = _sheet_members(labels, distance, j, params.sheet_size, params.seed)
            picked = np.concatenate([nearest, random])
            tiles = rows[np.sort(picked)].compute() if picked.size else np.zeros((0, h * w * c))
            by_row = dict(zip(np.sort(picked).tolist(), tiles, strict=True))
            shape = (h, w) if c == 1 else (h, w, c)
            sheet = cluster_sheet(
                [np.asarray(by_row[int(i)], dtype=np.uint8).reshape(shape) for i in nearest],
                [np.asarray(by_row[int(i)], dtype=np.uint8).reshape(shape) for i in random],
                cluster=j,
                size=sizes[j],
            )
            url = join_url(out, "sheets", f"cluster_{j:0{len(str(k - 1))}d}.png")
            write_bytes_atomic(url, encode_png(sheet), storage_options_for(url))
            sheets.append(url)
        if contingency is not None:
            png = contingency_heatmap(
                np.asarray(contingency["table"]),
                contingency["classes"],
                title=f"{params.model}: classes x clusters (ARI {external['ari']:.3f})"
                if external
                else "classes x clusters",
            )
            url = join_url(out, "contingency.png")
            write_bytes_atomic(url, png, storage_options_for(url))
            outputs["contingency"] = url
    return Described(
        sizes=sizes,
        external=external,
        internal=json_ready(internal),
        contingency=contingency,
        outputs=outputs,
        sheets=sheets,
    )


# --------------------------------------------------------------------------- assign


@dataclass(frozen=True)
class Assigned:
    """What :func:`assign_images` wrote and found."""

    out: str
    n_images: int
    sizes: list[int]
    skipped: list[dict[str, str]]
    external: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return json_ready(self.__dict__)  # type: ignore[no-any-return]


def assign_images(model: Any, params: ImageClusterParams, out: str) -> Assigned:
    """Clusters of new images (a folder or a table, as in training) with a registered model.

    The images are read as the model's training images were (its stored shape and input
    options), through its stored feature chain, to the nearest center; ``clusters.csv`` is
    written at `out` (a file URL).

    Raises
    ------
    InvalidInputError
        Not an image model, or images the model cannot read.
    """
    record = model.record
    if record.kind != "images":
        raise InvalidInputError(
            f"model {record.name} v{record.version} is a {record.kind!r} model, not an image model"
        )
    images = load_images(params, optional_labels=True)
    X = model.transform(images.rows())
    labels, distance = cluster_labels(X, np.asarray(model.centers))
    ids = images.ids()
    id_values = ids.astype(object) if ids.dtype.kind == "T" else ids
    frame = pd.DataFrame({"id": id_values, "cluster": labels, "distance": distance})
    write_bytes_atomic(out, frame.to_csv(index=False).encode("utf-8"), storage_options_for(out))
    codes = images.label_codes()
    external = None
    if codes is not None and (codes >= 0).any():
        external = external_metrics(codes[codes >= 0], labels[codes >= 0]).to_dict()
    return Assigned(
        out=out,
        n_images=images.n_images,
        sizes=np.bincount(labels, minlength=int(record.n_clusters)).tolist(),
        skipped=images.skipped,
        external=external,
    )


def input_params(record: Any, source: list[str], **overrides: Any) -> ImageClusterParams:
    """The training run's input options for new `source` images (shape, input kind, labels)."""
    trained = dict(record.params)
    keep = {
        key: trained[key]
        for key in ("input", "image_shape", "label_column", "labels_from", "store")
        if key in trained
    }
    shape = record.preprocessing.get("shape")
    if shape:
        keep["image_shape"] = "x".join(str(v) for v in shape)
    keep.update(overrides)
    return ImageClusterParams(source=source, model=record.name, **keep)
