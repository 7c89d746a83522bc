"""Flow ``evaluate``: measure a registered model version on the store."""

from __future__ import annotations

import time

from prefect import flow

from kmflow.cluster.session import cluster_session, describe
from kmflow.flows._report import (
    cluster_table,
    palette_markdown,
    publish_metrics,
    publish_report,
    timings_table,
)
from kmflow.flows.results import EvaluateResult
from kmflow.jobs.palette import palette_from_model
from kmflow.params import EvaluateParams
from kmflow.tasks.evaluate import evaluate_palette_task
from kmflow.tasks.registry import load_model_task

__all__ = ["evaluate_flow"]


@flow(name="evaluate", description="Evaluate a registered palette on the pixel store.")
def evaluate_flow(params: EvaluateParams = EvaluateParams()) -> EvaluateResult:  # noqa: B008
    """Evaluate ``params.model`` (``params.version``, default the champion) on the store."""
    t0 = time.perf_counter()
    with cluster_session(paths=[params.store]) as client:
        cluster = describe(client)
        model = load_model_task(params.model, params.version)
        palette = palette_from_model(model)
        evaluation = evaluate_palette_task(
            params.store, palette, params.holdout, params.silhouette_sample_size
        )
    version = model.record.version
    publish_metrics(params.model, "evaluate", evaluation.metrics)
    publish_report(
        params.model,
        "evaluate",
        f"Evaluation of {params.model} version {version} on {params.store}",
        {
            "Parameters": params.model_dump(mode="json"),
            "Metrics": evaluation.metrics,
            "Cluster sizes": palette_markdown(
                palette.rgb, evaluation.sizes, sizes_label=f"pixels ({evaluation.part})"
            ),
            "Images": [
                {"image": q.relpath, "pixels": q.n_pixels, "psnr": q.psnr, "delta_e": q.delta_e}
                for q in evaluation.images
            ],
            "Dask cluster": cluster_table(cluster),
            "Timings": timings_table({"total": time.perf_counter() - t0}),
        },
    )
    return EvaluateResult(model=params.model, version=version, **evaluation.to_dict())
