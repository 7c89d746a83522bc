"""Prefect flows: the wiring of kmflow's jobs.

Each flow takes one typed parameter model (:mod:`kmflow.params`), opens one Dask cluster for
its run (or reuses its parent flow's, see :func:`kmflow.cluster.session.cluster_session`),
calls tasks, branches, and publishes artifacts (metrics table, markdown report, links).

- ``ingest``: images into the pixel store
- ``train``: fit → evaluate → register → promote if not worse than the champion
- ``evaluate``: a registered version on the store
- ``apply``: quantize the stored images with a registered version
- ``pipeline``: ingest → train → apply, as subflows on one cluster
- ``monitor``: ingest a new batch, check it for drift, emit ``kmflow.drift.detected``
- ``retrain``: warm-start from the champion, promote only if not worse (event-triggered)
- ``segment``: a table → prepare → sweep k → profiles → a classifier per segment → register
  (also started by a records model's drift event)
- ``monitor-segments``: new records against a segment model; emits ``kmflow.drift.detected``

Each returns its typed result (:mod:`kmflow.flows.results`); ``to_dict()`` is the JSON a
``--report`` file holds.
"""

from kmflow.flows.apply import apply_flow
from kmflow.flows.evaluate import evaluate_flow
from kmflow.flows.ingest import ingest_flow
from kmflow.flows.monitor import monitor_flow
from kmflow.flows.monitor_segments import monitor_segments_flow
from kmflow.flows.pipeline import pipeline_flow
from kmflow.flows.results import (
    ApplyResult,
    EvaluateResult,
    IngestResult,
    MonitorResult,
    PipelineResult,
    RetrainResult,
    SegmentMonitorResult,
    SegmentResult,
    TrainResult,
)
from kmflow.flows.retrain import retrain_flow
from kmflow.flows.segment import segment_flow
from kmflow.flows.train import train_flow

__all__ = [
    "ApplyResult",
    "EvaluateResult",
    "IngestResult",
    "MonitorResult",
    "PipelineResult",
    "RetrainResult",
    "SegmentMonitorResult",
    "SegmentResult",
    "TrainResult",
    "apply_flow",
    "evaluate_flow",
    "ingest_flow",
    "monitor_flow",
    "monitor_segments_flow",
    "pipeline_flow",
    "retrain_flow",
    "segment_flow",
    "train_flow",
]
