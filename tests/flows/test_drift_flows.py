"""monitor → kmflow.drift.detected → retrain, under Prefect's test harness on a Dask cluster.

The images are synthetic: pixels drawn from a fixed mixture of six colors (Gaussian noise),
so a "fresh sample" and a "drifted batch" are exactly what the test says they are.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster

from kmflow.errors import InvalidInputError, ModelNotFoundError
from kmflow.flows import ingest_flow, monitor_flow, retrain_flow, train_flow
from kmflow.flows.monitor import DRIFT_EVENT, batch_id, dataset_resource_id
from kmflow.params import IngestParams, MonitorParams, RetrainParams, TrainParams
from kmflow.storage.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture
def env(
    tmp_path: Path, dask_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    monkeypatch.setenv("KMFLOW_REGISTRY__URL", str(tmp_path / "models"))
    monkeypatch.setenv("KMFLOW_CLUSTER__MODE", "address")
    monkeypatch.setenv("KMFLOW_CLUSTER__ADDRESS", dask_cluster.scheduler_address)
    return {
        "registry": str(tmp_path / "models"),
        "store": str(tmp_path / "store.zarr"),
        "reports": str(tmp_path / "drift"),
    }


def _drift_events(resource_id: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The drift events the server has recorded for ``resource_id`` (polls: events are
    persisted asynchronously)."""
    from prefect.client.orchestration import get_client

    async def read() -> list[dict[str, Any]]:
        async with get_client() as client:
            response = await client._client.post(
                "/events/filter",
                json={
                    "filter": {
                        "event": {"name": [DRIFT_EVENT]},
                        "resource": {"id": [resource_id]},
                    },
                    "limit": 50,
                },
            )
            response.raise_for_status()
            return list(response.json()["events"])

    deadline = time.monotonic() + timeout
    while True:
        events = asyncio.run(read())
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_monitor_detects_drift_and_retrain_replaces_the_champion(
    env: dict[str, str], tmp_path: Path, mixture_images: Any
) -> None:
    store, reports = env["store"], env["reports"]
    ingest_flow(
        IngestParams(sources=[str(mixture_images(tmp_path / "train", 6, seed=0))], store=store)
    )
    trained = train_flow(TrainParams(store=store, model="pal", k=6, seed=0))
    assert trained.version == 1
    assert trained.promoted
    registry = ModelRegistry(env["registry"])

    # A fresh sample of the training distribution: no drift, no event.
    calm = monitor_flow(
        MonitorParams(
            sources=[str(mixture_images(tmp_path / "calm", 4, seed=1))],
            store=store,
            model="pal",
            reports=reports,
        )
    )
    assert calm.drifted is False
    assert calm.event_id is None
    assert calm.n_images == 4
    assert calm.champion_version == 1
    saved = json.loads(Path(calm.report_url).read_text())
    assert saved["drifted"] is False
    assert saved["batch_id"] == calm.batch_id
    assert set(saved["statistics"]) == {"psi", "js_distance", "sqdist_ratio", "wasserstein"}
    for stat in saved["statistics"].values():
        assert stat["value"] < stat["threshold"]
        assert stat["drifted"] is False

    # The same folder again: nothing new, nothing checked.
    again = monitor_flow(
        MonitorParams(sources=[str(tmp_path / "calm")], store=store, model="pal", reports=reports)
    )
    assert again.n_images == 0
    assert again.drifted is False
    assert again.batch_id is None

    # Colors shifted toward blue: drift, a report, and an event naming the dataset.
    shifted = mixture_images(tmp_path / "shifted", 4, seed=2, shift=(0, 0, 40))
    drift = monitor_flow(
        MonitorParams(sources=[str(shifted)], store=store, model="pal", reports=reports)
    )
    assert drift.drifted is True
    assert drift.event_id is not None
    fired = {n for n, s in drift.report["statistics"].items() if s["drifted"]}
    assert {"sqdist_ratio", "wasserstein"} <= fired
    assert drift.report_url.endswith(f"/{drift.batch_id}.json")
    assert json.loads(Path(drift.report_url).read_text())["drifted"] is True
    events = _drift_events(dataset_resource_id(store))
    (event,) = [e for e in events if e["id"] == drift.event_id]
    payload = event["payload"]
    assert payload["store"] == store
    assert payload["model"] == "pal"
    assert payload["champion_version"] == 1
    assert payload["batch_id"] == drift.batch_id
    assert payload["drifted"] is True
    assert payload["n_images"] == 4
    assert payload["statistics"]["wasserstein"]["drifted"] is True
    assert not [e for e in events if e["payload"].get("batch_id") == calm.batch_id]

    # Retrain as the trigger would: warm start from the champion, compare on held-out rows.
    params = RetrainParams(
        store=store, model="pal", event_id=drift.event_id, batch_id=drift.batch_id
    )
    first = retrain_flow(params)
    assert first.version == 2
    assert first.parent == 1
    assert first.promoted is True, first.reason
    record = registry.record("pal", 2)
    assert record.parent == 1
    assert record.init == "warm-start"
    assert record.run_key == f"drift-event:{drift.event_id}"
    promotion = record.metrics["promotion"]
    assert promotion["promoted"] is True
    assert promotion["champion_before"] == 1
    assert record.metrics["inertia_per_pixel"] <= promotion["champion_metrics"]["inertia_per_pixel"]
    assert registry.champion("pal").version == 2  # type: ignore[union-attr]

    # The same event delivered twice: nothing is trained or registered again.
    second = retrain_flow(params)
    assert second.version == 2
    assert second.skipped is True
    assert [r.version for r in registry.versions("pal")] == [1, 2]
    assert registry.champion("pal").version == 2  # type: ignore[union-attr]

    # The model's history: both checked batches, the promotions; the report draws them.
    checks = registry.history("pal", "drift")
    assert [(c["batch_id"], c["drifted"], c["version"]) for c in checks] == [
        (calm.batch_id, False, 1),
        (drift.batch_id, True, 1),
    ]
    assert checks[1]["statistics"]["wasserstein"] == {
        k: drift.report["statistics"]["wasserstein"][k] for k in ("value", "threshold", "drifted")
    }
    assert [e["version"] for e in registry.history("pal", "promotion")] == [1, 2]
    # each training run wrote its report next to the model: the drift history from v2 on
    for version, figures in ((1, 6), (2, 7)):
        page = Path(env["registry"]) / "pal" / "reports" / f"v{version:06d}" / "report.html"
        assert page.read_text().count('<img src="data:image/png;base64,') == figures
    from kmflow.reports.build import build_report

    drawn = build_report(registry, "pal", 2).picture("drift").data
    assert (drawn["checks"], drawn["drifted"]) == (2, 1)
    assert (drawn["retrains"], drawn["promotions"]) == ([2], [1, 2])


def test_monitor_without_a_champion_fails_clearly(
    env: dict[str, str], tmp_path: Path, mixture_images: Any
) -> None:
    with pytest.raises(ModelNotFoundError, match="nobody"):
        monitor_flow(
            MonitorParams(
                sources=[str(mixture_images(tmp_path / "x", 1, seed=0, size=16))],
                store=env["store"],
                model="nobody",
                reports=env["reports"],
            )
        )


def test_a_batch_is_checked_once_its_report_is_saved(
    env: dict[str, str], tmp_path: Path, mixture_images: Any
) -> None:
    """No batch is lost to a failed run, and a recorded batch can be checked again."""
    store, reports = env["store"], env["reports"]
    ingest_flow(
        IngestParams(sources=[str(mixture_images(tmp_path / "train", 4, seed=0))], store=store)
    )
    train_flow(TrainParams(store=store, model="pal", k=6, seed=0))

    # The wrong model: the run fails before it ingests anything.
    batch1 = mixture_images(tmp_path / "b1", 3, seed=1)
    with pytest.raises(ModelNotFoundError, match="palette-typo"):
        monitor_flow(
            MonitorParams(sources=[str(batch1)], store=store, model="palette-typo", reports=reports)
        )
    assert ModelRegistry(env["registry"]).names() == ["pal"]
    from kmflow.storage.pixelstore import PixelStore

    assert PixelStore(store).n_images == 4
    first = monitor_flow(
        MonitorParams(sources=[str(batch1)], store=store, model="pal", reports=reports)
    )
    assert first.n_images == 3  # the batch the failed run was given

    # Images that reached the store without a saved report (a monitor run that ingested and
    # then died, or any other writer) are checked by the next run, with its own new images.
    ingest_flow(
        IngestParams(sources=[str(mixture_images(tmp_path / "b2", 2, seed=2))], store=store)
    )
    catching_up = monitor_flow(
        MonitorParams(sources=[str(batch1)], store=store, model="pal", reports=reports)
    )
    assert catching_up.n_images == 2
    assert catching_up.report is not None
    caught_up = monitor_flow(
        MonitorParams(sources=[str(batch1)], store=store, model="pal", reports=reports)
    )
    assert caught_up.n_images == 0
    assert caught_up.report is None

    # A recorded batch checked again: nothing ingested, the same statistics.
    again = monitor_flow(
        MonitorParams(
            sources=[str(tmp_path / "nowhere")],
            store=store,
            model="pal",
            reports=reports,
            batch=first.batch_id,
        )
    )
    assert again.batch_id == first.batch_id
    assert again.n_images == 3
    assert again.report["statistics"] == first.report["statistics"]
    with pytest.raises(InvalidInputError, match="no recorded batch"):
        monitor_flow(MonitorParams(store=store, model="pal", reports=reports, batch="0" * 64))


def test_batch_and_resource_ids() -> None:
    assert batch_id(["b", "a"]) == batch_id(["a", "b"]) != batch_id(["a"])
    assert len(batch_id(["a"])) == 64
    rid = dataset_resource_id("s3://user:secret@bucket/photos/store.zarr")
    assert rid.startswith("kmflow.dataset.")
    assert "secret" not in rid
    assert dataset_resource_id("/data/store.zarr") == "kmflow.dataset.data-store.zarr"
