"""Task: fit a palette (k-means on the stored pixels) with a live progress artifact."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, RUN_ID, TASK_SOURCE
from prefect.serializers import Serializer
from pydantic import Field

from kmflow.core.split import Split, active_split
from kmflow.fingerprint import fingerprint
from kmflow.jobs.palette import Palette, fit_palette
from kmflow.kernels.lloyd import IterationInfo
from kmflow.params import TrainParams
from kmflow.tasks._common import (
    ProgressArtifact,
    artifact_key,
    open_store,
    run_logger,
    window_images,
)

__all__ = ["PaletteSerializer", "fit_palette_task", "training_fingerprint_task"]


# Not Serializer[Palette]: Prefect's type registry needs every subclass to carry a dispatch
# key, and the parametrized base pydantic would create in between has none.
class PaletteSerializer(Serializer):  # type: ignore[type-arg]
    """Prefect result serializer for a fitted palette: plain JSON, never pickle.

    Prefect's default serializer is cloudpickle: a result file it reads back on a retried run
    could run code planted by anyone able to write ``PREFECT_HOME/storage``. This one writes
    :meth:`Palette.to_dict` as JSON and reads it back through :meth:`Palette.from_dict`,
    which builds a palette and nothing else.
    """

    type: str = Field(default="kmflow-palette-json", frozen=True)

    def dumps(self, obj: Palette) -> bytes:  # type: ignore[override]
        return json.dumps(obj.to_dict()).encode()

    def loads(self, blob: bytes) -> Palette:
        return Palette.from_dict(json.loads(blob))


# Cached within a flow run only (inputs + task source + run id): a retried flow run reuses a
# finished fit instead of refitting, a new run always fits the data as it is now.
@task(
    name="fit-palette",
    cache_policy=INPUTS + TASK_SOURCE + RUN_ID,
    persist_result=True,
    result_serializer=PaletteSerializer(),
)
def fit_palette_task(params: TrainParams, warm_start: list[list[float]] | None = None) -> Palette:
    """Fit ``params.k`` colors on the training part of the store.

    Parameters
    ----------
    params : TrainParams
    warm_start : list of lists, optional
        Initial centers (in ``params.color_space``) from a registered model; used when
        ``params.init == "warm-start"``.
    """
    logger = run_logger()
    store = open_store(params.store)
    init: object = params.init
    if params.init == "warm-start":
        if warm_start is None:
            raise ValueError("init='warm-start' needs the centers of a registered model")
        init = np.asarray(warm_start, dtype=np.float64)
    progress = ProgressArtifact(
        artifact_key(params.model, "training-progress"),
        f"Lloyd iterations of {params.model} (k={params.k}), of at most {params.max_iter}",
    )

    def on_iteration(info: IterationInfo) -> None:
        progress.update(info.iteration, params.max_iter)
        logger.info(
            "iteration %d: inertia %.6g, shift %.3g",
            info.iteration,
            info.inertia,
            info.center_shift,
        )

    palette = fit_palette(
        store,
        params.k,
        color_space=params.color_space,
        method=params.method,
        init=init,
        random_state=params.seed,
        max_iter=params.max_iter,
        tol=params.tol,
        callback=on_iteration,
        split=params.holdout,
        images=window_images(store, params.window),
    )
    progress.done()
    logger.info(
        "fitted %d colors on %d pixels (%d rows) in %d iterations (%s), %.1f s",
        palette.n_clusters,
        palette.n_pixels,
        palette.n_colors,
        palette.n_iter,
        "converged" if palette.converged else "max_iter reached",
        palette.fit_seconds,
    )
    return palette


@task(name="training-fingerprint", cache_policy=NO_CACHE)
def training_fingerprint_task(store_url: str, holdout: Split, window: int | None = None) -> str:
    """Identity of the training data: the images' content hashes, the window and the split.

    The data fingerprint (:func:`kmflow.fingerprint.fingerprint`) of the images trained on
    (the store's own fingerprint, or the window's images'); with a split, a hash of that
    fingerprint and the split's fields, so the same images split differently are different
    training data.
    """
    split = active_split(holdout)
    store = open_store(store_url)
    images = window_images(store, window)
    base = store.fingerprint() if images is None else fingerprint(r.sha256 for r in images)
    if split is None:
        return base
    text = f"{base}:{split.by}:{split.fraction!r}:{split.seed}"
    return hashlib.sha256(text.encode()).hexdigest()
