"""Flow ``ingest``: images into the pixel store on the run's Dask cluster."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from kmflow.cluster.session import cluster_session, describe
from kmflow.errors import InvalidInputError
from kmflow.flows._report import cluster_table, publish_metrics, publish_report, timings_table
from kmflow.flows.results import IngestResult
from kmflow.params import IngestParams
from kmflow.tasks.ingest import ingest_images

__all__ = ["ingest_flow"]


@flow(name="ingest", description="Decode images into the Zarr pixel store (incremental).")
def ingest_flow(params: IngestParams = IngestParams()) -> IngestResult:  # noqa: B008
    """Ingest ``params.sources`` into ``params.store``.

    Fails when nothing could be ingested (every image bad and the store still empty) or,
    with ``params.strict``, when any image could not be ingested; the good images are
    stored either way.
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    with cluster_session(paths=[*params.sources, params.store]) as client:
        cluster = describe(client)
        summary = ingest_images(params)
    errors = summary["errors"]
    publish_metrics(
        "store",
        "ingest",
        {
            "added": len(summary["added"]),
            "duplicates": len(summary["duplicates"]),
            "errors": len(errors),
            "pixels_added": summary["n_pixels_added"],
            "images_in_store": summary["n_images"],
            "pixels_in_store": summary["n_pixels"],
        },
    )
    publish_report(
        "store",
        "ingest",
        f"Ingest into {params.store}",
        {
            "Parameters": params.model_dump(mode="json"),
            "Store": {
                "images": summary["n_images"],
                "pixels": summary["n_pixels"],
                "fingerprint": summary["fingerprint"],
            },
            "Images that could not be ingested": errors,
            "Dask cluster": cluster_table(cluster),
            "Timings": timings_table({"total": time.perf_counter() - t0}),
        },
    )
    if params.strict and errors:
        raise InvalidInputError(
            f"{len(errors)} image(s) could not be ingested (strict): "
            + "; ".join(f"{e['source']}: {e['reason']}" for e in errors[:5])
        )
    if summary["n_images"] == 0:
        raise InvalidInputError(
            f"nothing could be ingested from {len(params.sources) or 'the sample'} source(s): "
            f"{len(errors)} bad image(s), the store is empty"
        )
    logger.info("store %s holds %d image(s)", params.store, summary["n_images"])
    return IngestResult.from_dict(summary)
