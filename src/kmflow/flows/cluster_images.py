"""Flow ``cluster-images``: images → row store → feature chain → k-means → scores, contact
sheets and heatmap → register → promote if not worse than the champion."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from kmflow.cluster.session import cluster_session, describe
from kmflow.core.jsonable import json_ready
from kmflow.core.promotion import promotion_decision
from kmflow.flows._report import (
    cluster_table,
    publish_metrics,
    publish_model_report,
    publish_pictures,
    publish_report,
    timings_table,
)
from kmflow.flows.results import ImageClusterResult
from kmflow.params import ImageClusterParams
from kmflow.storage.fs import read_bytes, storage_options_for
from kmflow.tasks.image_clusters import (
    challenger_score,
    champion_image_score_task,
    describe_clusters_task,
    featurize_task,
    fit_clusters_task,
    image_promotion_metric,
    load_images_task,
    register_image_clusters_task,
)
from kmflow.tasks.registry import find_champion_task, promote_model_task
from kmflow.tasks.report import report_task

__all__ = ["cluster_images_flow"]


@flow(name="cluster-images", log_prints=True, validate_parameters=True)
def cluster_images_flow(params: ImageClusterParams) -> ImageClusterResult:
    """Cluster whole images by content and register the clustering as a model version.

    The feature chain and k-means are fitted on the training images (all of them unless
    ``holdout``); with known classes the promotion compares ARI against the champion's on
    the same images, else each model's Davies-Bouldin index on its own features.
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    paths = [*params.source, params.store, *([params.out] if params.out else [])]
    with cluster_session(paths=paths) as client:
        cluster = describe(client)
        t = time.perf_counter()
        images = load_images_task(params)
        timings["load"] = time.perf_counter() - t
        t = time.perf_counter()
        featurized = featurize_task(images, params)
        timings["features"] = time.perf_counter() - t
        t = time.perf_counter()
        fitted = fit_clusters_task(featurized, params)
        timings["k-means"] = time.perf_counter() - t
        t = time.perf_counter()
        described = describe_clusters_task(featurized, fitted, params)
        timings["describe"] = time.perf_counter() - t
        metric = image_promotion_metric(images)
        champion = find_champion_task(params.model)
        champion_score = None
        if champion is not None and params.promote == "if-better":
            champion_score = champion_image_score_task(champion, images, metric)
        promote, reason = promotion_decision(
            params.promote,
            metric,
            challenger_score(metric, described),
            champion_score,
            champion.record.version if champion is not None else None,
        )
        decision = {
            "promoted": promote,
            "reason": reason,
            "policy": params.promote,
            "metric": metric,
            "champion_before": champion.record.version if champion else None,
            "champion_score": champion_score,
        }
        record = register_image_clusters_task(params, featurized, fitted, described, decision)
        if promote:
            promote_model_task(params.model, record.version)
    timings["total"] = time.perf_counter() - t0
    champion_version = (
        record.version if promote else (champion.record.version if champion else None)
    )
    logger.info(
        "%s version %d (k=%d) %s: %s",
        params.model,
        record.version,
        fitted.k,
        "promoted" if promote else "not promoted",
        reason,
    )
    metrics = {**(described.external or {}), **described.internal}
    publish_metrics(params.model, "cluster-images", json_ready(metrics))
    title = (
        f"{params.model} version {record.version}: {fitted.k} clusters of {images.n_images} images"
    )
    publish_report(
        params.model,
        "cluster-images",
        title,
        {
            "Model": {
                "name": record.name,
                "version": record.version,
                "promoted": promote,
                "decision": reason,
                "champion": champion_version,
                "k": fitted.k,
                "features": featurized.chain,
                "rule": fitted.choice.describe(),
            },
            "Sweep": [
                {**row, "chosen": "◀" if row["k"] == fitted.k else ""} for row in fitted.sweep
            ],
            "Sizes": [{"cluster": j, "images": n} for j, n in enumerate(described.sizes)],
            "Not used": described_skipped(images.skipped) or "every image was used",
            "Dask cluster": cluster_table(cluster),
            "Timings": timings_table(timings),
        },
    )
    pictures_files = {
        **(
            {"classes x clusters": described.outputs["contingency"]}
            if "contingency" in described.outputs
            else {}
        ),
        **{f"cluster {j}": url for j, url in enumerate(described.sheets)},
    }
    if pictures_files:
        publish_pictures(
            params.model,
            "cluster-images",
            title,
            {
                name: read_bytes(url, storage_options_for(url))
                for name, url in pictures_files.items()
            },
            pictures_files,
        )
    publish_model_report(params.model, report_task(params.model, record.version))
    return ImageClusterResult(
        model=record.name,
        version=record.version,
        promoted=promote,
        reason=reason,
        champion=champion_version,
        chosen_k=fitted.k,
        rule=fitted.choice.rule,
        runner_up=fitted.choice.runner_up,
        features=featurized.chain,
        n_features=featurized.features.n_features,
        n_images=images.n_images,
        image_shape=list(images.shape),
        sweep=fitted.sweep,
        metrics=json_ready(metrics),
        contingency=described.contingency,
        sizes=described.sizes,
        skipped=images.skipped,
        outputs=described.outputs,
        sheets=described.sheets,
        timings=timings,
    )


def described_skipped(skipped: list[dict[str, str]]) -> list[dict[str, str]]:
    """At most 50 rows of the images that were not used, for the report."""
    rows = [{"image": s["id"], "reason": s["reason"]} for s in skipped[:50]]
    if len(skipped) > 50:
        rows.append({"image": f"... and {len(skipped) - 50} more", "reason": ""})
    return rows
