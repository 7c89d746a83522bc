"""The model history (``<name>/history/``): drift checks and promotions, append-only."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _concurrency import Workers

from kmflow.errors import InvalidInputError
from kmflow.storage.registry import HISTORY_DIR, ModelRegistry

CHECK = {
    "version": 1,
    "batch_id": "abc",
    "drifted": True,
    "statistics": {
        "psi": {"value": 0.41, "threshold": 0.2, "drifted": True},
        "js_distance": {"value": math.nan, "threshold": 0.1, "drifted": False},
    },
}


def history_job(job: tuple[str, int, int], barrier: Any) -> list[str]:
    """Writer ``job[1]``: log ``job[2]`` drift checks in the registry at ``job[0]``."""
    url, writer, n = job
    registry = ModelRegistry(url)
    return [
        registry.log_event("m", "drift", {"writer": writer, "batch_id": f"{writer}-{i}"})["id"]
        for i in range(n)
    ]


@pytest.mark.parametrize("url", ["local", "memory://kmflow-history-test"])
def test_events_round_trip_in_time_order(url: str, tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "models") if url == "local" else url)
    later = dt.datetime(2026, 5, 2, 12, 0, tzinfo=dt.UTC)
    earlier = later - dt.timedelta(days=1)
    second = registry.log_event("m", "drift", CHECK, at=later)
    first = registry.log_event("m", "drift", {**CHECK, "batch_id": "old"}, at=earlier)
    events = registry.history("m")
    assert [e["id"] for e in events] == [first["id"], second["id"]]
    assert events[1] == second
    assert events[1]["at"] == "2026-05-02T12:00:00+00:00"
    assert events[1]["statistics"]["psi"] == {"value": 0.41, "threshold": 0.2, "drifted": True}
    assert events[1]["statistics"]["js_distance"]["value"] is None  # NaN is JSON null
    assert registry.history("m", "promotion") == []
    assert registry.history("other") == []


def test_promotions_are_logged_and_bad_events_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "models"))
    kwargs = {"init": "random", "seed": 0, "n_iter": 1, "converged": True, "inertia": 0.0}
    for v in (1, 2):
        registry.register("m", np.full((2, 2), float(v)), fingerprint=str(v), **kwargs)
    registry.promote("m", 1)
    registry.promote("m", 2)
    registry.promote("m", 2)  # already the champion: nothing written, nothing logged
    promotions = registry.history("m", "promotion")
    assert [(e["version"], e["previous"]) for e in promotions] == [(1, None), (2, 1)]
    pointer = json.loads((tmp_path / "models" / "m" / "champion.json").read_text())
    assert pointer["promoted_at"] == promotions[-1]["at"]
    # the history folder is not a version: listings are unchanged
    assert [r.version for r in registry.versions("m")] == [1, 2]
    assert registry.names() == ["m"]
    with pytest.raises(InvalidInputError, match="unknown event type 'retrain'"):
        registry.log_event("m", "retrain", {})
    with pytest.raises(InvalidInputError, match=r"must not use the keys \['at'\]"):
        registry.log_event("m", "drift", {"at": "now"})
    with pytest.raises(InvalidInputError, match="not JSON-ready"):
        registry.log_event("m", "drift", {"x": object()})
    with pytest.raises(InvalidInputError, match="no timezone"):
        registry.log_event("m", "drift", {}, at=dt.datetime(2026, 1, 1))
    # an unreadable file is skipped, the others are kept
    bad = f"20260101T000000.000000Z-{'0' * 32}.json"
    (tmp_path / "models" / "m" / HISTORY_DIR / bad).write_text("{")
    assert len(registry.history("m")) == 2


@pytest.mark.integration
def test_two_processes_logging_at_once_keep_every_event(tmp_path: Path) -> None:
    url, n = str(tmp_path / "models"), 25
    with Workers(2, history_job) as pool:
        results = pool.round([(url, 0, n), (url, 1, n)])
    assert [status for status, _ in results] == ["ok", "ok"], results
    ids = [i for _, written in results for i in written]
    events = ModelRegistry(url).history("m")
    assert len(events) == len(set(ids)) == 2 * n
    assert sorted(e["id"] for e in events) == sorted(ids)
    for writer in (0, 1):
        batches = sorted(e["batch_id"] for e in events if e["writer"] == writer)
        assert batches == sorted(f"{writer}-{i}" for i in range(n))
    files = list((tmp_path / "models" / "m" / HISTORY_DIR).iterdir())
    assert len(files) == 2 * n  # one file per event, no temporary left behind
