"""Flow ``apply``: quantize every stored image with a registered model."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from kmflow.cluster.session import cluster_session, describe
from kmflow.flows._report import publish_links, publish_metrics, publish_report
from kmflow.params import ApplyParams
from kmflow.quantize import palette_from_model
from kmflow.tasks.apply import apply_palette_task
from kmflow.tasks.registry import load_model_task

__all__ = ["apply_flow"]


@flow(name="apply", description="Quantize the stored images with a registered palette.")
def apply_flow(params: ApplyParams = ApplyParams()) -> dict[str, Any]:  # noqa: B008
    """Render every image of ``params.store`` with ``params.model`` under ``params.out``."""
    t0 = time.perf_counter()
    with cluster_session() as client:
        cluster = describe(client)
        model = load_model_task(params.model, params.version)
        report = apply_palette_task(
            params.store, palette_from_model(model), params.out, params.model
        )
    version = model.record.version
    publish_metrics(
        params.model,
        "apply",
        {"images": len(report["images"]), "psnr": report["psnr"], "delta_e": report["delta_e"]},
    )
    publish_links(params.model, {"outputs": params.out, "palette": report["palette_url"]})
    publish_report(
        params.model,
        "apply",
        f"{params.model} version {version} applied to {params.store}",
        {
            "Outputs": {"folder": params.out, "palette": report["palette_url"]},
            "Images": [
                {
                    "image": i["relpath"],
                    "output": i["output"],
                    "psnr": i["psnr"],
                    "delta_e": i["delta_e"],
                }
                for i in report["images"]
            ],
            "Dask cluster": cluster,
            "Timings (s)": {"total": round(time.perf_counter() - t0, 3)},
        },
    )
    return {"model": params.model, "version": version, **report}
