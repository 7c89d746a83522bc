"""Flow ``apply``: quantize every stored image with a registered model."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from kmflow.cluster.session import cluster_session, describe
from kmflow.flows._report import (
    Cell,
    cluster_table,
    link,
    publish_links,
    publish_metrics,
    publish_palette,
    publish_report,
    timings_table,
)
from kmflow.flows.results import ApplyResult
from kmflow.jobs.palette import palette_from_model
from kmflow.jobs.palette.per_image import PerImageParams
from kmflow.params import ApplyParams
from kmflow.tasks.apply import apply_palette_task, quantize_per_image_task
from kmflow.tasks.registry import load_model_task

__all__ = ["apply_flow"]


@flow(name="apply", description="Quantize the stored images with a registered palette.")
def apply_flow(params: ApplyParams = ApplyParams()) -> ApplyResult:  # noqa: B008
    """Render every image of ``params.store`` under ``params.out``.

    With ``palette="shared"`` every image is painted with ``params.model``'s palette; with
    ``"per-image"`` each gets its own ``params.k`` colors and the model is not used.
    """
    t0 = time.perf_counter()
    with cluster_session(paths=[params.store, params.out]) as client:
        cluster = describe(client)
        if params.palette == "per-image":
            per_image = PerImageParams(n_colors=params.k, seed=params.seed, dither=params.dither)
            report = quantize_per_image_task(params.store, params.out, per_image, params.model)
            report["palette_url"] = None
            version = None
            palette = None
        else:
            model = load_model_task(params.model, params.version)
            palette = palette_from_model(model)
            report = apply_palette_task(
                params.store,
                palette,
                params.out,
                params.model,
                write_labels=params.labels,
                dither=params.dither,
            )
            version = model.record.version
    publish_metrics(
        params.model,
        "apply",
        {"images": len(report["images"]), "psnr": report["psnr"], "delta_e": report["delta_e"]},
    )
    publish_links(params.model, {"outputs": params.out})
    if palette is not None:
        publish_palette(
            params.model,
            f"Palette of {params.model} version {version}",
            palette.rgb,
            model.record.metrics.get("sizes"),
            swatch_url=report["palette_url"],
            sizes_label="training pixels",
        )
    outputs: dict[str, Any] = {"folder": Cell(link(params.out))}
    if report["palette_url"]:
        outputs["palette swatch"] = Cell(link(report["palette_url"]))
    publish_report(
        params.model,
        "apply",
        f"{params.model} version {version} applied to {params.store}"
        if version is not None
        else f"{params.store}: every image with its own {params.k} colors",
        {
            "Outputs": outputs,
            "Images": [
                {
                    "image": i["relpath"],
                    "output": Cell(link(i["output"])),
                    "PSNR dB": i["psnr"],
                    "ΔE00": i["delta_e"],
                }
                for i in report["images"]
            ],
            "Dask cluster": cluster_table(cluster),
            "Timings": timings_table({"total": time.perf_counter() - t0}),
        },
    )
    return ApplyResult.from_report(params.model, version, report)
