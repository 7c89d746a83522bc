"""The image flows' typed results: they pickle, and ``to_dict()`` is the ``--report`` JSON."""

from __future__ import annotations

import json
import pickle
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from kmflow.flows.results import (
    ApplyResult,
    EvaluateResult,
    IngestResult,
    MonitorResult,
    PipelineResult,
    RetrainResult,
    TrainResult,
)


def _ingest() -> IngestResult:
    return IngestResult.from_dict(
        {
            "added": [{"relpath": "a.png", "sha256": "ab" * 32, "n_pixels": 12}],
            "duplicates": ["b.png"],
            "errors": [{"source": "c.png", "reason": "not an image"}],
            "hashes": {"a.png": "ab" * 32, "b.png": "cd" * 32},
            "n_pixels_added": 12,
            "seconds": 0.5,
            "n_images": 2,
            "n_pixels": 24,
            "fingerprint": "f" * 64,
            "n_discovered": 3,
        }
    )


def _train() -> TrainResult:
    return TrainResult(
        model="m",
        version=2,
        parent=1,
        promoted=False,
        reason="inertia_per_pixel 2 > champion v1's 1",
        champion=1,
        metrics={"inertia_per_pixel": 2.0, "psnr": 30.0},
        timings={"fit": 1.0, "total": 2.0},
    )


_SHARED_REPORT: dict[str, Any] = {
    "images": [{"relpath": "a.png", "output": "/out/a.png", "psnr": 30.0, "delta_e": 2.0}],
    "palette_url": "/out/palette.png",
    "psnr": 30.0,
    "delta_e": 2.0,
    "n_pixels": 12,
    "seconds": 0.25,
    "labels_written": True,
    "extra": {},
}

_PER_IMAGE_REPORT: dict[str, Any] = {
    "images": [{"relpath": "a.png", "output": "/own/a.png", "palette": [[0, 0, 0]]}],
    "psnr": 28.0,
    "delta_e": 3.0,
    "n_pixels": 12,
    "n_fitted": 1,
    "n_tasks": 1,
    "seconds": 0.25,
    "params": {"n_colors": 1},
    "palette_url": None,
}


def _drifted() -> MonitorResult:
    return MonitorResult(
        drifted=True,
        batch_id="b" * 64,
        n_images=1,
        report={"drifted": True, "statistics": {"psi": {"value": 0.9, "drifted": True}}},
        report_url="/reports/drift/b.json",
        champion_version=1,
        event_id="e-1",
        errors=[],
    )


def _every_result() -> list[Any]:
    train = _train()
    return [
        _ingest(),
        train,
        TrainResult(**{**train.to_dict(), "timings": {}, "skipped": True}),
        RetrainResult.from_train(train, "e-1", "b" * 64),
        EvaluateResult(
            model="m",
            version=1,
            part="eval",
            metrics={"inertia": 3.0},
            sizes=[5, 7],
            images=[{"relpath": "a.png", "n_pixels": 12, "psnr": 30.0, "delta_e": 2.0}],
            channel_counts=[[0] * 256] * 3,
            n_pixels=12,
            n_colors=9,
            silhouette_sample_size=0,
            seconds=0.1,
        ),
        ApplyResult.from_report("m", 1, _SHARED_REPORT),
        ApplyResult.from_report("m", None, _PER_IMAGE_REPORT),
        _drifted(),
        MonitorResult.nothing_new([{"source": "c.png", "reason": "not an image"}]),
        PipelineResult(
            ingest=_ingest(),
            train=train,
            apply=ApplyResult.from_report("m", 2, _SHARED_REPORT),
            out="/out",
            seconds=3.5,
        ),
    ]


@pytest.mark.parametrize("result", _every_result(), ids=lambda r: type(r).__name__)
def test_a_result_pickles_and_its_dict_is_json(result: Any) -> None:
    restored = pickle.loads(pickle.dumps(result))
    assert restored == result
    assert type(restored) is type(result)
    as_json = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert as_json == result.to_dict()
    with pytest.raises(FrozenInstanceError):
        result.seconds = 0.0


def test_the_dicts_hold_the_flows_report_keys() -> None:
    train = _train()
    assert list(train.to_dict()) == [
        "model",
        "version",
        "parent",
        "promoted",
        "reason",
        "champion",
        "metrics",
        "timings",
        "skipped",
    ]
    retrain = RetrainResult.from_train(train, "e-1", None).to_dict()
    assert retrain == {**train.to_dict(), "event_id": "e-1", "batch_id": None}

    ingest = _ingest().to_dict()
    assert set(ingest) == {
        "added",
        "duplicates",
        "errors",
        "hashes",
        "n_pixels_added",
        "seconds",
        "n_images",
        "n_pixels",
        "fingerprint",
        "n_discovered",
    }

    # An apply result's dict is the task's report with model and version first, in the
    # report's own order: the fields of the other kind of run are left out.
    shared = ApplyResult.from_report("m", 1, _SHARED_REPORT).to_dict()
    assert list(shared.items()) == [("model", "m"), ("version", 1), *_SHARED_REPORT.items()]
    own = ApplyResult.from_report("m", None, _PER_IMAGE_REPORT).to_dict()
    assert list(own.items()) == [("model", "m"), ("version", None), *_PER_IMAGE_REPORT.items()]
    with pytest.raises(TypeError):  # a report key the result does not know is not dropped
        ApplyResult.from_report("m", 1, {**_SHARED_REPORT, "new": 1})

    nothing = MonitorResult.nothing_new([]).to_dict()
    assert nothing == {
        "drifted": False,
        "batch_id": None,
        "n_images": 0,
        "report": None,
        "report_url": None,
        "champion_version": None,
        "event_id": None,
        "errors": [],
    }
    assert set(_drifted().to_dict()) == set(nothing)


def test_the_pipeline_dict_summarises_ingest_and_apply() -> None:
    result = PipelineResult(
        ingest=_ingest(),
        train=_train(),
        apply=ApplyResult.from_report("m", 2, _SHARED_REPORT),
        out="/out",
        seconds=3.5,
    )
    assert result.to_dict() == {
        "ingest": {
            "n_images": 2,
            "n_pixels": 24,
            "fingerprint": "f" * 64,
            "added": 1,
            "errors": [{"source": "c.png", "reason": "not an image"}],
        },
        "train": _train().to_dict(),
        "apply": {
            "out": "/out",
            "palette": "/out/palette.png",
            "psnr": 30.0,
            "delta_e": 2.0,
            "images": ["/out/a.png"],
        },
        "seconds": 3.5,
    }
    assert result.train.metrics["inertia_per_pixel"] == 2.0
    assert len(result.apply.images) == 1
