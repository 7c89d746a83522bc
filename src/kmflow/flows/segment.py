"""Flow ``segment``: table → prepare → sweep k → choose → evaluate → profile → classify →
register → promote if not worse than the champion."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from kmflow.cluster.session import cluster_session, describe
from kmflow.core.jsonable import json_ready
from kmflow.core.promotion import promotion_decision
from kmflow.flows._report import (
    cluster_table,
    publish_metrics,
    publish_model_report,
    publish_report,
    timings_table,
)
from kmflow.flows.results import SegmentResult
from kmflow.params import SegmentParams
from kmflow.tasks._common import artifact_key
from kmflow.tasks.registry import find_champion_task, promote_model_task
from kmflow.tasks.report import report_task
from kmflow.tasks.segment import (
    champion_score_task,
    describe_segments_task,
    prepare_table_task,
    register_segments_task,
    sweep_task,
)

__all__ = ["segment_flow"]


@flow(name="segment", log_prints=True, validate_parameters=True)
def segment_flow(params: SegmentParams) -> SegmentResult:
    """Segment the records of a table and register the segmentation as a model version.

    The preprocessing (missing values, one-hot, scaling) is fitted on the training rows
    (``holdout`` of the rows, by row number, are held out), k is chosen from the sweep by
    ``select``, and the held-out Davies-Bouldin index decides the promotion against the
    champion measured on the same table (``promote``).
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    with cluster_session(paths=[*params.source, params.store]) as client:
        cluster = describe(client)
        t = time.perf_counter()
        prepared = prepare_table_task(params)
        timings["prepare"] = time.perf_counter() - t
        t = time.perf_counter()
        fitted = sweep_task(prepared, params)
        timings["sweep"] = time.perf_counter() - t
        t = time.perf_counter()
        described = describe_segments_task(prepared, params, fitted.centers.tolist())
        timings["describe"] = time.perf_counter() - t
        champion = find_champion_task(params.model)
        held = fitted.metrics.get("held_out", {})
        challenger_db = held.get("davies_bouldin", fitted.metrics["train"]["davies_bouldin"])
        champion_db = None
        if champion is not None and params.promote == "if-better":
            champion_db = champion_score_task(champion, prepared)
        promote, reason = promotion_decision(
            params.promote,
            "davies_bouldin",
            challenger_db,
            champion_db,
            champion.record.version if champion is not None else None,
        )
        decision = {
            "promoted": promote,
            "reason": reason,
            "policy": params.promote,
            "champion_before": champion.record.version if champion else None,
            "champion_davies_bouldin": champion_db,
        }
        record = register_segments_task(params, prepared, fitted, described, decision)
        if promote:
            promote_model_task(params.model, record.version)
    timings["total"] = time.perf_counter() - t0
    champion_version = (
        record.version if promote else (champion.record.version if champion else None)
    )
    logger.info(
        "%s version %d (k=%d) %s: %s",
        params.model,
        record.version,
        fitted.k,
        "promoted" if promote else "not promoted",
        reason,
    )
    sweep_rows = [{**row, "chosen": "◀" if row["k"] == fitted.k else ""} for row in fitted.sweep]
    publish_metrics(params.model, "segment", json_ready(fitted.metrics.get("held_out", {})))
    profiles_rows = described.profiles.table()
    create_table_artifact(
        json_ready(profiles_rows.to_dict(orient="records")),
        key=artifact_key(params.model, "segment", "profiles"),
        description=f"Segment profiles of {params.model} version {record.version}",
    )
    publish_report(
        params.model,
        "segment",
        f"{params.model} version {record.version}: {fitted.k} segments",
        {
            "Model": {
                "name": record.name,
                "version": record.version,
                "promoted": promote,
                "decision": reason,
                "champion": champion_version,
                "k": fitted.k,
                "rule": fitted.choice.describe(),
            },
            "Sweep": sweep_rows,
            "Profiles": json_ready(profiles_rows.to_dict(orient="records")),
            "Missing values": [{"column": c, "missing": n} for c, n in prepared.missing.items()],
            "Columns": [{"note": line} for line in prepared.report] or "every column used",
            "Dask cluster": cluster_table(cluster),
            "Timings": timings_table(timings),
        },
    )
    publish_model_report(params.model, report_task(params.model, record.version))
    models = described.segment_models
    return SegmentResult(
        model=record.name,
        version=record.version,
        promoted=promote,
        reason=reason,
        champion=champion_version,
        chosen_k=fitted.k,
        rule=fitted.choice.rule,
        runner_up=fitted.choice.runner_up,
        sweep=fitted.sweep,
        metrics=fitted.metrics,
        missing=prepared.missing,
        columns={
            "features": prepared.feature_names,
            "id": prepared.plan.id,
            "target": prepared.plan.target,
            "left_out": dict(prepared.plan.left_out),
            "report": list(prepared.report),
            "rows": prepared.n_rows,
            "prepared_rows": prepared.n_prepared,
        },
        profiles=described.profiles.to_dicts(),
        segment_models=models.scores if models else None,
        external=described.external,
        sizes=described.sizes,
        outputs=described.outputs,
        timings=timings,
    )
