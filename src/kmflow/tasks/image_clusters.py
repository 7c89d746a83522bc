"""Tasks of the image-clustering job: load, featurize, fit, describe, score the champion,
register."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from kmflow.core.jsonable import json_ready
from kmflow.core.model import Model, ModelRecord
from kmflow.jobs.image_clusters.inputs import ImageSet, load_images
from kmflow.jobs.image_clusters.job import (
    Described,
    Featurized,
    Fitted,
    cluster_labels,
    describe_clusters,
    featurize,
    fit_clusters,
)
from kmflow.params import ImageClusterParams
from kmflow.tasks._common import open_registry, retry_on_transient_io, run_logger
from kmflow.tasks.report import images_sample_files
from kmflow.tasks.segment import reference_statistics, sweep_progress

__all__ = [
    "champion_image_score_task",
    "describe_clusters_task",
    "featurize_task",
    "fit_clusters_task",
    "image_promotion_metric",
    "load_images_task",
    "register_image_clusters_task",
]


def _by() -> str | None:
    return f"flow run {flow_run.get_name()}" if flow_run.get_id() else None


@task(
    name="load-images",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def load_images_task(params: ImageClusterParams) -> ImageSet:
    """Decode the images (or a table of them) into a row store, once."""
    images = load_images(params, by=_by())
    log = run_logger()
    for skipped in images.skipped:
        log.warning("not used: %s: %s", skipped["id"], skipped["reason"])
    log.info(
        "%d images of %s (%s)%s",
        images.n_images,
        "x".join(map(str, images.shape)),
        "reused the stored rows" if images.reused else "decoded",
        f", {len(images.classes)} classes" if images.classes else "",
    )
    return images


@task(name="featurize", cache_policy=NO_CACHE)
def featurize_task(images: ImageSet, params: ImageClusterParams) -> Featurized:
    """Fit the feature chain on the training images and store every image's features."""
    featurized = featurize(images, params, by=_by())
    run_logger().info(
        "features %s: %d columns in %.1f s",
        featurized.chain,
        featurized.features.n_features,
        featurized.seconds,
    )
    return featurized


@task(name="fit-clusters", cache_policy=NO_CACHE)
def fit_clusters_task(featurized: Featurized, params: ImageClusterParams) -> Fitted:
    """k-means for one k, or the sweep over k with k chosen by the rule."""
    progress, callback = sweep_progress(params.model, params.k, params.ks)
    fitted = fit_clusters(featurized, params, callback=callback)
    progress.done()
    run_logger().info("k-means: %s", fitted.choice.describe())
    return fitted


@task(name="describe-clusters", cache_policy=NO_CACHE)
def describe_clusters_task(
    featurized: Featurized, fitted: Fitted, params: ImageClusterParams
) -> Described:
    """Every image's cluster, the scores, clusters.csv, the heatmap and the contact sheets."""
    described = describe_clusters(featurized, fitted, params, out=params.out)
    run_logger().info("cluster sizes: %s", described.sizes)
    return described


def image_promotion_metric(images: ImageSet) -> str:
    """What the promotion compares (lower is better): ``1-ari`` against the known classes,
    else the Davies-Bouldin index of each model on its own features."""
    return "1-ari" if images.classes else "davies_bouldin"


def challenger_score(metric: str, described: Described) -> float:
    """The challenger's value of the promotion metric."""
    if metric == "1-ari" and described.external is not None:
        return 1.0 - float(described.external["ari"])
    return float(described.internal["davies_bouldin"])


@task(name="champion-image-score", cache_policy=NO_CACHE)
def champion_image_score_task(champion: Model, images: ImageSet, metric: str) -> float:
    """The champion's promotion metric on these images, through its own feature chain.

    NaN when the champion cannot read them (another image shape or kind).
    """
    from kmflow.errors import InvalidInputError
    from kmflow.kernels.metrics import external_metrics, internal_metrics

    if champion.record.kind != "images":
        return math.nan
    try:
        X = champion.transform(images.rows())
        if metric == "1-ari":
            codes = images.label_codes()
            assert codes is not None
            labels, _ = cluster_labels(X, np.asarray(champion.centers))
            known = codes >= 0
            return 1.0 - float(external_metrics(codes[known], labels[known]).ari)
        return float(internal_metrics(X, champion.centers, undefined="nan").davies_bouldin)
    except InvalidInputError as exc:
        run_logger().warning("champion cannot be measured on these images: %s", exc)
        return math.nan


@task(
    name="register-image-clusters",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def register_image_clusters_task(
    params: ImageClusterParams,
    featurized: Featurized,
    fitted: Fitted,
    described: Described,
    promotion: dict[str, Any],
) -> ModelRecord:
    """Register the clustering: centers, the feature chain (JSON + arrays), scores, reference."""
    run_id = flow_run.get_id()
    features = featurized.features
    images = featurized.images
    metrics: dict[str, Any] = {
        **fitted.metrics,
        "sweep": fitted.sweep,
        "sizes": described.sizes,
        "external": described.external,
        "internal": described.internal,
        "classes": images.classes,
        "promotion": promotion,
    }
    record = open_registry().register(
        params.model,
        fitted.centers,
        init="k-means||",
        seed=fitted.seed,
        n_iter=fitted.n_iter,
        converged=fitted.converged,
        inertia=fitted.inertia,
        fingerprint=images.fingerprint,
        kind="images",
        preprocessing=features.to_json(),
        arrays=features.arrays(),
        files=images_sample_files(featurized, params),
        params={
            **params.model_dump(mode="json"),
            "input": images.input,
            "image_shape": "x".join(map(str, images.shape)),
            "row_store": images.store,
        },
        metrics=json_ready(metrics),
        reference=reference_statistics(
            featurized.X(),
            fitted.centers,
            [f"f{j}" for j in range(featurized.features.n_features)],
        ),
        run_key=f"{run_id}:register" if run_id else None,
    )
    run_logger().info("registered %s version %d", record.name, record.version)
    return record
