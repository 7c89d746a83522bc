"""Flow ``train``: fit → evaluate → register → promote if not worse than the champion."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from kmflow.cluster.session import cluster_session, describe
from kmflow.core.model import Model, ModelRecord
from kmflow.core.promotion import promotion_decision as core_promotion_decision
from kmflow.core.split import Split
from kmflow.errors import InvalidInputError
from kmflow.flows._report import (
    cluster_table,
    palette_markdown,
    publish_metrics,
    publish_model_report,
    publish_report,
    timings_table,
)
from kmflow.flows.results import TrainResult
from kmflow.jobs.palette import Evaluation, palette_from_model
from kmflow.params import TrainParams
from kmflow.tasks.evaluate import evaluate_palette_task
from kmflow.tasks.registry import (
    find_champion_task,
    find_run_key_task,
    load_model_task,
    promote_model_task,
    register_model_task,
)
from kmflow.tasks.report import report_task
from kmflow.tasks.train import fit_palette_task, training_fingerprint_task

__all__ = ["promotion_decision", "train_flow"]


def promotion_decision(
    policy: str,
    challenger: Evaluation,
    challenger_space: str,
    champion: Model | None,
    champion_eval: Evaluation | None,
) -> tuple[bool, str]:
    """Whether the new version becomes the champion, and why.

    ``"if-better"`` compares both models on the same evaluation pixels: held-out inertia
    per pixel when both fit in the same color space, mean CIEDE2000 ΔE otherwise (inertias
    in different spaces are not comparable). Ties promote (the newer model wins).
    """
    if champion is None or champion_eval is None:
        return core_promotion_decision(policy, "inertia_per_pixel", None, None, None)
    metric = "inertia_per_pixel" if champion.record.color_space == challenger_space else "delta_e"
    return core_promotion_decision(
        policy,
        metric,
        challenger.metrics[metric],
        champion_eval.metrics[metric],
        champion.record.version,
    )


def _already_done(record: ModelRecord, champion: Model | None) -> TrainResult:
    """The train flow's result for a version registered earlier with the same key."""
    promotion = record.metrics.get("promotion") or {}
    return TrainResult(
        model=record.name,
        version=record.version,
        parent=record.parent,
        promoted=bool(promotion.get("promoted", False)),
        reason=f"already registered with this key: {promotion.get('reason', '')}",
        champion=champion.record.version if champion else None,
        metrics={k: v for k, v in record.metrics.items() if isinstance(v, float)},
        timings={},
        skipped=True,
    )


@flow(name="train", description="Fit a palette, evaluate it, register it, maybe promote it.")
def train_flow(params: TrainParams = TrainParams()) -> TrainResult:  # noqa: B008
    """Train a new version of ``params.model`` on ``params.store``.

    Returns
    -------
    TrainResult
        ``model``, ``version``, ``promoted``, ``reason``, ``champion`` (version after the
        run), ``parent``, ``metrics`` and ``timings``; ``skipped`` when a version was
        already registered with ``params.idempotency_key``.
    """
    logger = get_run_logger()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if params.idempotency_key is not None:
        done = find_run_key_task(params.model, params.idempotency_key)
        if done is not None:
            logger.info(
                "%s version %d was already registered with key %r: nothing to do",
                params.model,
                done.version,
                params.idempotency_key,
            )
            return _already_done(done, find_champion_task(params.model))
    with cluster_session(paths=[params.store]) as client:
        cluster = describe(client)
        warm: list[list[float]] | None = None
        parent: int | None = None
        if params.init == "warm-start":
            base = load_model_task(params.model, params.warm_start_version)
            if base.record.n_clusters != params.k or base.record.color_space != params.color_space:
                raise InvalidInputError(
                    f"cannot warm-start k={params.k} ({params.color_space}) from {params.model} "
                    f"version {base.record.version} (k={base.record.n_clusters}, "
                    f"{base.record.color_space})"
                )
            warm, parent = base.centers.tolist(), base.record.version
        fingerprint = training_fingerprint_task(params.store, params.holdout, params.window)
        t = time.perf_counter()
        palette = fit_palette_task(params, warm)
        timings["fit"] = time.perf_counter() - t
        t = time.perf_counter()
        evaluation = evaluate_palette_task(
            params.store,
            palette,
            params.holdout,
            params.silhouette_sample_size,
            window=params.window,
        )
        # Drift checks compare new data with what the model was trained for: every image
        # of the training data (split or not), never only the held-out part.
        reference = evaluation
        if evaluation.part != "all":
            reference = evaluate_palette_task(
                params.store,
                palette,
                Split(),
                0,
                per_image=False,
                window=params.window,
            )
        timings["evaluate"] = time.perf_counter() - t
        champion = find_champion_task(params.model)
        champion_eval = None
        if champion is not None and params.promote == "if-better":
            champion_eval = evaluate_palette_task(
                params.store,
                palette_from_model(champion),
                params.holdout,
                0,
                per_image=False,
                window=params.window,
            )
        promote, reason = promotion_decision(
            params.promote, evaluation, palette.color_space, champion, champion_eval
        )
        decision: dict[str, Any] = {
            "promoted": promote,
            "reason": reason,
            "policy": params.promote,
            "champion_before": champion.record.version if champion else None,
            "champion_metrics": champion_eval.metrics if champion_eval else None,
        }
        record = register_model_task(
            params, palette, evaluation, fingerprint, parent, decision, reference=reference
        )
        if promote:
            promote_model_task(params.model, record.version)
    timings["total"] = time.perf_counter() - t0
    champion_version = (
        record.version if promote else (champion.record.version if champion else None)
    )
    logger.info(
        "%s version %d %s: %s",
        params.model,
        record.version,
        "promoted" if promote else "not promoted",
        reason,
    )
    metrics = dict(evaluation.metrics)
    publish_metrics(params.model, "train", {**metrics, "n_iter": palette.n_iter})
    publish_report(
        params.model,
        "train",
        f"{params.model} version {record.version}",
        {
            "Model": {
                "name": record.name,
                "version": record.version,
                "parent": record.parent,
                "promoted": promote,
                "decision": reason,
                "champion": champion_version,
                "k": record.n_clusters,
                "color space": record.color_space,
                "iterations": record.n_iter,
                "converged": record.converged,
                "seed given": "none (random)" if params.seed is None else params.seed,
                "random key (drawn from the seed)": record.seed,
            },
            "Parameters": params.model_dump(mode="json"),
            "Data": {
                "store": params.store,
                "fingerprint": fingerprint,
                "pixels fitted": palette.n_pixels,
                "rows fitted": palette.n_colors,
                "evaluated on": evaluation.part,
                "pixels evaluated": evaluation.n_pixels,
            },
            "Metrics": metrics,
            "Cluster sizes": palette_markdown(
                palette.rgb, evaluation.sizes, sizes_label=f"pixels ({evaluation.part})"
            ),
            "Images": [
                {"image": q.relpath, "pixels": q.n_pixels, "psnr": q.psnr, "delta_e": q.delta_e}
                for q in evaluation.images
            ],
            "Dask cluster": cluster_table(cluster),
            "Timings": timings_table(timings),
        },
    )
    publish_model_report(params.model, report_task(params.model, record.version))
    return TrainResult(
        model=record.name,
        version=record.version,
        parent=record.parent,
        promoted=promote,
        reason=reason,
        champion=champion_version,
        metrics=metrics,
        timings=timings,
        skipped=False,
    )
