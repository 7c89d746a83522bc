"""Task: images into the pixel store."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from kmflow.config import get_settings
from kmflow.params import IngestParams
from kmflow.storage.fs import storage_options_for
from kmflow.storage.images import ImageSource, discover_sources
from kmflow.storage.pixelstore import IngestProgress
from kmflow.storage.samples import sample_images_dir
from kmflow.tasks._common import (
    ProgressArtifact,
    artifact_key,
    open_store,
    retry_on_transient_io,
    run_logger,
)

__all__ = ["ingest_images"]


def _discover(params: IngestParams) -> list[ImageSource]:
    storage = get_settings().storage
    return discover_sources(
        params.sources or [sample_images_dir()],
        pattern=params.pattern,
        storage_options_for=lambda url: storage_options_for(url, storage),
    )


# Idempotent by content hash (a re-run adds nothing) and committed batch by batch, so a retry
# after an I/O error resumes where the store's commit record stands. Never cached: the store
# is the result.
@task(
    name="ingest-images",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def ingest_images(params: IngestParams) -> dict[str, Any]:
    """Decode the images on the Dask workers and append the new ones to the store.

    Returns
    -------
    dict
        The :class:`~kmflow.storage.pixelstore.IngestReport` as a dict, plus the store's
        ``n_images``, ``n_pixels`` and ``fingerprint`` after the ingest.
    """
    logger = run_logger()
    images = _discover(params)
    logger.info("ingesting %d image(s) into %s", len(images), params.store)
    store = open_store(params.store)
    progress = ProgressArtifact(artifact_key("ingest-progress"), f"Ingest into {params.store}")

    def on_batch(p: IngestProgress) -> None:
        progress.update(p.images_done, p.images_total)

    settings = get_settings().storage
    source_options = storage_options_for(params.sources[0], settings) if params.sources else None
    report = store.ingest(
        images,
        max_pixels=settings.max_image_pixels,
        storage_options=source_options,
        progress=on_batch,
    )
    progress.done()
    for error in report.errors:
        logger.warning("not ingested: %s: %s", error.source, error.reason)
    logger.info(
        "added %d image(s) (%d pixels), %d duplicate(s), %d error(s) in %.1f s",
        len(report.added),
        report.n_pixels_added,
        len(report.duplicates),
        len(report.errors),
        report.seconds,
    )
    return {
        **report.to_dict(),
        "n_images": store.n_images,
        "n_pixels": store.n_pixels,
        "fingerprint": store.fingerprint(),
        "n_discovered": len(images),
    }
