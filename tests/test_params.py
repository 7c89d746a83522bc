"""Flow parameter models: one definition per field, and a schema Prefect can render."""

from __future__ import annotations

import pytest

from kmflow.core.split import Split
from kmflow.kernels.drift import DriftThresholds
from kmflow.params import MonitorParams, PipelineParams, RetrainParams, TrainParams


def test_pipeline_params_are_train_params_plus_ingest_and_apply() -> None:
    assert set(TrainParams.model_fields) < set(PipelineParams.model_fields)
    extra = set(PipelineParams.model_fields) - set(TrainParams.model_fields)
    assert extra == {"sources", "pattern", "strict", "out"}


def test_every_training_field_reaches_the_train_step() -> None:
    values = {
        "store": "s.zarr",
        "model": "photos",
        "k": 5,
        "color_space": "lab",
        "method": "pixels",
        "init": "warm-start",
        "warm_start_version": 2,
        "seed": 7,
        "max_iter": 12,
        "tol": 0.5,
        "holdout": Split(fraction=0.3, by="row", seed=4),
        "silhouette_sample_size": 0,
        "promote": "never",
        "window": 3,
        "idempotency_key": "event-1",
    }
    assert set(values) == set(TrainParams.model_fields)
    params = PipelineParams(sources=["a"], out="o", pattern="*.png", strict=True, **values)
    train = params.train()
    assert type(train) is TrainParams
    assert train == TrainParams(**values)
    assert params.ingest().model_dump() == {
        "sources": ["a"],
        "store": "s.zarr",
        "pattern": "*.png",
        "strict": True,
    }
    assert params.apply(4).version == 4


def test_split_is_one_class_for_every_holdout() -> None:
    for model in (TrainParams, PipelineParams, RetrainParams):
        assert model.model_fields["holdout"].annotation is Split
    assert RetrainParams().holdout == Split(fraction=0.2, by="row", seed=0)
    assert not Split().holds_out
    with pytest.raises(ValueError, match="fraction"):
        Split(fraction=1.0)


def test_monitor_thresholds_are_the_kernel_class() -> None:
    assert MonitorParams.model_fields["thresholds"].annotation is DriftThresholds
    assert MonitorParams().thresholds == DriftThresholds()


def test_every_flow_has_a_parameter_schema() -> None:
    from prefect.utilities.callables import parameter_schema

    from kmflow import flows

    names = [name for name in flows.__all__ if name.endswith("_flow")]
    assert {"segment_flow", "monitor_segments_flow", "pipeline_flow"} <= set(names)
    for name in names:
        schema = parameter_schema(getattr(flows, name)).model_dump(mode="json")
        assert "params" in schema["properties"], name
