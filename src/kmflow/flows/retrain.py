"""Flow ``retrain``: warm-start a challenger from the champion, promote only if not worse."""

from __future__ import annotations

from prefect import flow, get_run_logger

from kmflow.cluster.session import cluster_session
from kmflow.errors import InvalidInputError
from kmflow.flows._report import publish_report
from kmflow.flows.results import RetrainResult
from kmflow.flows.train import train_flow
from kmflow.params import RetrainParams, TrainParams
from kmflow.tasks.registry import load_model_task

__all__ = ["retrain_flow"]


@flow(name="retrain", description="Retrain from the champion on new data; promote if not worse.")
def retrain_flow(params: RetrainParams = RetrainParams()) -> RetrainResult:  # noqa: B008
    """Train a challenger warm-started from the champion, on all the data or a recent window.

    The challenger and the champion are evaluated on the same held-out images; the
    challenger is registered with the champion as its parent and promoted only if its
    held-out inertia per pixel is not worse (``params.promote``). Started by the
    ``kmflow.drift.detected`` event in deployment, one version per event: a second run for
    the same event (or batch) returns the version the first registered.
    """
    logger = get_run_logger()
    with cluster_session(paths=[params.store]):
        champion = load_model_task(params.model, None).record
        if champion.kind != "palette":
            raise InvalidInputError(
                f"{params.model} version {champion.version} is a {champion.kind!r} model, not "
                "an image palette: the retrain flow retrains palettes"
            )
        result = train_flow(
            TrainParams(
                store=params.store,
                model=params.model,
                k=champion.n_clusters,
                color_space=champion.preprocessing["color_space"],
                init="warm-start",
                warm_start_version=champion.version,
                seed=0,
                max_iter=params.max_iter,
                holdout=params.holdout,
                silhouette_sample_size=params.silhouette_sample_size,
                promote=params.promote,
                window=params.window,
                idempotency_key=params.idempotency_key(),
            )
        )
    logger.info(
        "challenger %s version %d (parent %s): %s",
        params.model,
        result.version,
        result.parent,
        result.reason,
    )
    publish_report(
        params.model,
        "retrain",
        f"Retrain of {params.model}: version {result.version} "
        + ("promoted" if result.promoted else "not promoted"),
        {
            "Decision": {
                "challenger": result.version,
                "parent (champion before)": result.parent,
                "promoted": result.promoted,
                "reason": result.reason,
                "champion now": result.champion,
                "already done for this event": result.skipped,
            },
            "Trigger": {"event": params.event_id, "batch": params.batch_id},
            "Challenger metrics (held out)": result.metrics,
        },
    )
    return RetrainResult.from_train(result, params.event_id, params.batch_id)
