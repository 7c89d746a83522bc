"""Flow ``pipeline``: ingest → train (fit, evaluate, register) → apply, on one cluster."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from kmflow.cluster.session import cluster_session
from kmflow.flows._report import Cell, link, publish_report, timings_table
from kmflow.flows.apply import apply_flow
from kmflow.flows.ingest import ingest_flow
from kmflow.flows.results import PipelineResult
from kmflow.flows.train import train_flow
from kmflow.params import PipelineParams

__all__ = ["pipeline_flow"]


@flow(name="pipeline", description="Ingest images, train and register a palette, apply it.")
def pipeline_flow(params: PipelineParams = PipelineParams()) -> PipelineResult:  # noqa: B008
    """The main job as a flow: every stage is a subflow run sharing this run's cluster.

    The images are rendered with the version trained by this run, promoted or not.
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    with cluster_session(paths=[*params.sources, params.store, params.out]):
        ingest = ingest_flow(params.ingest())
        train = train_flow(params.train())
        applied = apply_flow(params.apply(train.version))
    seconds = time.perf_counter() - t0
    logger.info(
        "pipeline done in %.1f s: %s version %d, %d image(s) written to %s",
        seconds,
        params.model,
        train.version,
        len(applied.images),
        params.out,
    )
    publish_report(
        params.model,
        "pipeline",
        f"Pipeline: {params.model} version {train.version}",
        {
            "Stages": [
                {
                    "stage": "ingest",
                    "result": f"{len(ingest.added)} added, "
                    f"{len(ingest.errors)} error(s), {ingest.n_images} in store",
                },
                {
                    "stage": "train",
                    "result": f"version {train.version}, "
                    f"{'promoted' if train.promoted else 'not promoted'}: {train.reason}",
                },
                {
                    "stage": "apply",
                    "result": Cell(
                        f"{len(applied.images)} image(s) to {link(params.out)}, "
                        f"PSNR {applied.psnr:.2f} dB on all of them"
                    ),
                },
            ],
            f"Metrics of version {train.version} ({_measured_on(params)})": train.metrics,
            "Timings": timings_table({"train": train.timings, "pipeline total": seconds}),
        },
    )
    return PipelineResult(
        ingest=ingest, train=train, apply=applied, out=params.out, seconds=seconds
    )


def _measured_on(params: PipelineParams) -> str:
    """Which pixels the training metrics describe: the held-out part or all of them."""
    if params.holdout.fraction > 0:
        unit = "images" if params.holdout.by == "image" else "pixels"
        return f"on the held-out {params.holdout.fraction:.0%} of the {unit}"
    return "on every stored pixel: no hold-out"
