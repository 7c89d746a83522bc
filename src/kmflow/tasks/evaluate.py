"""Task: measure a palette on the store (internal metrics, silhouette, image quality)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from kmflow.core.split import Split
from kmflow.jobs.palette import Evaluation, Palette, evaluate_palette
from kmflow.tasks._common import open_store, run_logger, window_images

__all__ = ["evaluate_palette_task"]


# Read-only and cheap next to the fit; always measured on the store as it is now.
@task(name="evaluate-palette", cache_policy=NO_CACHE)
def evaluate_palette_task(
    store_url: str,
    palette: Palette,
    holdout: Split,
    silhouette_sample_size: int = 10_000,
    per_image: bool = True,
    window: int | None = None,
) -> Evaluation:
    """Evaluate ``palette`` on the held-out part of ``holdout`` (everything if fraction 0).

    With ``window``, only the most recent ``window`` images are split and evaluated.
    """
    logger = run_logger()
    store = open_store(store_url)
    evaluation = evaluate_palette(
        store,
        palette,
        split=holdout,
        silhouette_sample_size=silhouette_sample_size,
        random_state=holdout.seed,
        per_image=per_image,
        images=window_images(store, window),
    )
    m = evaluation.metrics
    logger.info(
        "%s pixels (%d, %d colors): inertia/px %.4g, CH %.4g, DB %.4g, silhouette %.3f, "
        "PSNR %.2f dB, ΔE00 %.2f",
        "held-out" if evaluation.part == "eval" else "all",
        evaluation.n_pixels,
        evaluation.n_colors,
        m["inertia_per_pixel"],
        m["calinski_harabasz"],
        m["davies_bouldin"],
        m["silhouette"],
        m["psnr"],
        m["delta_e"],
    )
    return evaluation
