"""Task: quantize every stored image with a palette."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from kmflow.config import get_settings
from kmflow.jobs.palette import Palette, apply_palette
from kmflow.jobs.palette.outputs import output_urls
from kmflow.jobs.palette.per_image import PerImageParams, quantize_images
from kmflow.storage.fs import storage_options_for
from kmflow.tasks._common import (
    ProgressArtifact,
    artifact_key,
    open_store,
    retry_on_transient_io,
    run_logger,
)

__all__ = ["apply_palette_task", "quantize_per_image_task"]


# Every output is written to a temporary name and renamed (or PUT whole), so a retry simply
# rewrites the same files; labels are rewritten whole.
@task(
    name="apply-palette",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def apply_palette_task(
    store_url: str,
    palette: Palette,
    out: str,
    model: str,
    *,
    write_labels: bool = True,
    dither: bool = False,
) -> dict[str, Any]:
    """Render every stored image with ``palette`` under ``out`` (and store ``labels``).

    Returns
    -------
    dict
        The :class:`~kmflow.jobs.palette.ApplyReport` as a dict (outputs, PSNR, ΔE per image).
    """
    logger = run_logger()
    store = open_store(store_url)
    progress = ProgressArtifact(artifact_key(model, "apply-progress"), f"Rendering into {out}")
    report = apply_palette(
        store,
        palette,
        out,
        storage_options=storage_options_for(out, get_settings().storage),
        write_labels=write_labels,
        dither=dither,
        progress=progress.update,
    )
    progress.done()
    logger.info(
        "wrote %d image(s) to %s: PSNR %.2f dB, ΔE00 %.2f, %.1f s",
        len(report.images),
        out,
        report.psnr,
        report.delta_e,
        report.seconds,
    )
    result = report.to_dict()
    for image in result["images"]:
        image.pop("sse", None)
    return result


@task(
    name="quantize-per-image",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_transient_io,
    cache_policy=NO_CACHE,
)
def quantize_per_image_task(
    store_url: str, out: str, params: PerImageParams, model: str
) -> dict[str, Any]:
    """Render every stored image with its own palette under ``out``.

    Palettes the store already holds for the same image content and parameters are reused,
    new ones are stored, so a retry or a later run does not fit again.
    """
    logger = run_logger()
    store = open_store(store_url)
    records = store.images()
    outputs = output_urls(out, [r.relpath for r in records])
    progress = ProgressArtifact(artifact_key(model, "apply-progress"), f"Rendering into {out}")
    report = quantize_images(
        store,
        list(zip(records, outputs, strict=True)),
        params,
        storage_options=storage_options_for(out, get_settings().storage),
        progress=progress.update,
    )
    progress.done()
    logger.info(
        "wrote %d image(s) with their own %d colors to %s (%d fitted): PSNR %.2f dB, ΔE00 %.2f",
        len(report.images),
        params.n_colors,
        out,
        report.n_fitted,
        report.psnr,
        report.delta_e,
    )
    result = report.to_dict()
    for image in result["images"]:
        image.pop("sse", None)
    return result
