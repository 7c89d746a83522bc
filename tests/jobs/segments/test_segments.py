"""The records job end to end in the library: prepare, sweep, profile, classify."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from kmflow.errors import InvalidInputError, KmflowError
from kmflow.jobs.segments.job import (
    describe_segments,
    fit_segments,
    prepare,
)
from kmflow.params import SegmentParams

Customers = Callable[..., tuple[pd.DataFrame, np.ndarray]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, make_customers: Customers) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("segments")
    df, seg = make_customers()
    df.to_csv(root / "customers.csv", index=False)
    params = SegmentParams(
        source=[str(root / "customers.csv")],
        id="customer id",
        target="churn",
        k="2..6",
        store=str(root / "store"),
    )
    prepared = prepare(params)
    fitted = fit_segments(prepared, params)
    described = describe_segments(prepared, params, fitted.centers, out=str(root / "out"))
    return {
        "root": root,
        "df": df,
        "seg": seg,
        "params": params,
        "prepared": prepared,
        "fitted": fitted,
        "described": described,
    }


def test_columns_are_inferred_and_reported(run: dict[str, Any]) -> None:
    prepared = run["prepared"]
    assert prepared.feature_names == [
        "monthly $",
        "calls (per day)",
        "tenure",
        "roaming",
        "plan=basic",
        "plan=gold",
        "plan=plus",
        "plan=team",
    ]
    assert prepared.missing["tenure"] == 25
    assert any("name" in line and "left out" in line for line in prepared.report)
    assert prepared.n_prepared == prepared.n_rows == 2400


def test_planted_segments_are_recovered_and_the_sweep_picks_k(run: dict[str, Any]) -> None:
    fitted, seg = run["fitted"], run["seg"]
    assert fitted.k == 4
    assert fitted.choice.rule == "db"
    assert [row["k"] for row in fitted.sweep] == [2, 3, 4, 5, 6]
    best_silhouette = max(fitted.sweep, key=lambda r: r["silhouette"])["k"]
    assert best_silhouette == 4
    out = pd.read_csv(run["root"] / "out" / "segments.csv")
    assert list(out.columns) == ["customer id", "segment", "distance"]
    assert out["customer id"].tolist() == run["df"]["customer id"].tolist()
    assert adjusted_rand_score(seg, out["segment"]) >= 0.95
    assert (out["distance"] >= 0).all()
    assert fitted.metrics["held_out"]["n_rows"] == fitted.n_test > 0


def test_profiles_equal_pandas_group_by(run: dict[str, Any]) -> None:
    df = run["df"].copy()
    out = pd.read_csv(run["root"] / "out" / "segments.csv")
    df["segment"] = out["segment"].to_numpy()
    df["tenure"] = pd.to_numeric(df["tenure"].replace("", np.nan))
    grouped = df.groupby("segment")
    profiles = {p.segment: p for p in run["described"].profiles.segments}
    for s, group in grouped:
        p = profiles[int(s)]
        assert p.size == len(group)
        assert p.share == pytest.approx(len(group) / len(df))
        for col in ("monthly $", "calls (per day)", "tenure"):
            assert p.numeric[col]["mean"] == pytest.approx(group[col].mean(), rel=1e-12)
            assert p.numeric[col]["median"] == pytest.approx(group[col].median(), rel=1e-12)
            assert p.numeric[col]["std"] == pytest.approx(group[col].std(), rel=1e-10)
        assert p.flags["roaming"] == pytest.approx((group["roaming"] == "yes").mean())
        top_level, top_share = p.categories["plan"][0]
        counts = group["plan"].value_counts()
        assert top_level == counts.index[0]
        assert top_share == pytest.approx(counts.iloc[0] / len(group))
        assert p.target["churn rate"] == pytest.approx(group["churn"].mean())
        assert len(p.distinguishing) == 5
    table = pd.read_csv(run["root"] / "out" / "profiles.csv")
    assert len(table) == 4
    assert {"size", "monthly $ median", "churn rate"} <= set(table.columns)


def test_segment_models_beat_chance(run: dict[str, Any]) -> None:
    models = run["described"].segment_models
    assert models is not None
    assert models.classes == ["0", "1"]
    overall = models.scores["overall"]
    assert overall["segmented"]["roc_auc"] > 0.7
    assert overall["global"]["roc_auc"] > 0.7
    assert set(models.files) == {
        "classifier.global.skops",
        *(f"classifier.segment-{s}.skops" for s in range(4)),
    }
    rows = models.scores["segments"]
    assert sum(r["n_test"] for r in rows) == overall["n_test"] == run["fitted"].n_test


def test_a_second_run_streams_the_stored_matrix(run: dict[str, Any]) -> None:
    again = prepare(run["params"])
    assert again.reused
    assert again.store == run["prepared"].store
    assert again.key == run["prepared"].key


def test_drop_policy_keeps_row_numbers(tmp_path: Path, make_customers: Customers) -> None:
    df, _ = make_customers(n=600, seed=3)
    df.to_csv(tmp_path / "c.csv", index=False)
    params = SegmentParams(
        source=[str(tmp_path / "c.csv")],
        k="4",
        missing="drop",
        store=str(tmp_path / "store"),
        target="churn",
        classifiers=False,
    )
    prepared = prepare(params)
    assert prepared.n_prepared == 600 - 25
    fitted = fit_segments(prepared, params)
    described = describe_segments(prepared, params, fitted.centers, out=str(tmp_path / "out"))
    out = pd.read_csv(tmp_path / "out" / "segments.csv")
    blank = df["tenure"] == ""
    assert out["row"].tolist() == np.flatnonzero(~blank.to_numpy()).tolist()
    assert sum(described.sizes) == 575


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"id": "client"}, "client"),
        ({"target": "churned"}, "churned"),
        ({"features": ["monthly"]}, "monthly"),
        ({"k": "2..5000"}, "only 238 rows"),
    ],
)
def test_bad_options_are_clear_errors(
    tmp_path: Path, edit: dict[str, Any], message: str, make_customers: Customers
) -> None:
    df, _ = make_customers(n=300, seed=1)
    df.to_csv(tmp_path / "c.csv", index=False)
    params = SegmentParams(source=[str(tmp_path / "c.csv")], store=str(tmp_path / "s"), **edit)
    with pytest.raises(KmflowError, match=message):
        fit_segments(prepare(params), params)


def test_out_never_overwrites_a_source(tmp_path: Path, make_customers: Customers) -> None:
    df, _ = make_customers(n=300, seed=1)
    df.to_csv(tmp_path / "profiles.csv", index=False)
    params = SegmentParams(
        source=[str(tmp_path / "profiles.csv")], k="3", store=str(tmp_path / "s")
    )
    prepared = prepare(params)
    fitted = fit_segments(prepared, params)
    with pytest.raises(InvalidInputError, match="one of the source files"):
        describe_segments(prepared, params, fitted.centers, out=str(tmp_path))
    assert pd.read_csv(tmp_path / "profiles.csv").shape == df.shape


def test_k_larger_than_the_distinct_rows_is_a_clear_error(tmp_path: Path) -> None:
    rows = pd.DataFrame({"a": [1.0, 2.0, 3.0] * 100, "b": [0.5, 0.5, 9.0] * 100})
    rows.to_csv(tmp_path / "few.csv", index=False)
    params = SegmentParams(source=[str(tmp_path / "few.csv")], k="2..5", store=str(tmp_path / "s"))
    with pytest.raises(KmflowError, match="distinct"):
        fit_segments(prepare(params), params)


def _register(run: dict[str, Any], root: Path) -> Any:
    from kmflow.storage.registry import ModelRegistry
    from kmflow.tasks.segment import reference_statistics

    prepared, fitted = run["prepared"], run["fitted"]
    prep = prepared.preprocessing
    registry = ModelRegistry(str(root / "models"))
    record = registry.register(
        "customers",
        fitted.centers,
        init="k-means||",
        seed=fitted.seed,
        n_iter=fitted.n_iter,
        converged=fitted.converged,
        inertia=fitted.inertia,
        fingerprint=prepared.table_fingerprint,
        kind="segments",
        preprocessing=prep.to_json(),
        arrays=prep.arrays(),
        files=run["described"].segment_models.files,
        reference=reference_statistics(
            prepared.open().rows().astype(np.float64), fitted.centers, prepared.feature_names
        ),
    )
    return registry.load("customers", record.version)


def test_records_drift_per_feature_and_occupancy(
    run: dict[str, Any], tmp_path: Path, make_customers: Customers
) -> None:
    from kmflow.jobs.segments.drift import check_records

    model = _register(run, tmp_path)
    fresh, _ = make_customers(n=1500, seed=11)  # the same population: no drift
    calm = check_records(model, fresh)
    assert not calm.drifted, calm.to_dict()["statistics"]
    assert set(calm.features) == set(run["prepared"].feature_names)
    shifted = fresh.copy()
    shifted["monthly $"] = shifted["monthly $"] + 40.0  # every bill 40 higher
    drifted = check_records(model, shifted)
    assert drifted.drifted
    assert drifted.report.statistic("feature_wasserstein").drifted
    assert drifted.features["monthly $"]["wasserstein"] > 0.5
    assert drifted.features["tenure"]["wasserstein"] < 0.2
    # Only the mix of segments changes: occupancy drifts, no single feature far.
    mix = pd.concat([fresh[fresh["plan"] == "basic"]] * 3 + [fresh], ignore_index=True)
    assert check_records(model, mix).report.statistic("psi").drifted


def _prepare_in_process(source: str, store: str) -> tuple[str, bool, int]:
    prepared = prepare(SegmentParams(source=[source], store=store, k="3"))
    return prepared.store, prepared.reused, prepared.n_prepared


def test_two_processes_preparing_one_table_write_it_once(
    tmp_path: Path, make_customers: Customers
) -> None:
    import multiprocessing

    from kmflow.storage.rowstore import RowStore

    df, _ = make_customers(n=2000, seed=5)
    df.to_csv(tmp_path / "c.csv", index=False)
    args = (str(tmp_path / "c.csv"), str(tmp_path / "store"))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_prepare_in_process, [args, args])
    (url,) = {r[0] for r in results}
    assert sorted(r[1] for r in results) == [False, True]  # one wrote, one found it written
    assert RowStore(url, format="kmflow.segments").n_rows == 2000
    assert all(r[2] == 2000 for r in results)


@pytest.mark.integration
def test_tables_and_stores_on_s3(
    s3_bucket: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    make_customers: Customers,
) -> None:
    """Source table, row store and outputs on the loopback S3 server."""
    import s3fs

    bucket, options = s3_bucket
    monkeypatch.setenv("KMFLOW_STORAGE__S3_ENDPOINT_URL", options["client_kwargs"]["endpoint_url"])
    monkeypatch.setenv("KMFLOW_STORAGE__S3_KEY", options["key"])
    monkeypatch.setenv("KMFLOW_STORAGE__S3_SECRET", options["secret"])
    df, seg = make_customers(n=800, seed=2)
    fs = s3fs.S3FileSystem(**options)
    fs.pipe(f"{bucket}/tables/customers.csv", df.to_csv(index=False).encode())
    params = SegmentParams(
        source=[f"{bucket}/tables/"], id="customer id", k="4", store=f"{bucket}/segments"
    )
    prepared = prepare(params)
    assert prepared.store.startswith(bucket)
    fitted = fit_segments(prepared, params)
    described = describe_segments(prepared, params, fitted.centers, out=f"{bucket}/out")
    assert sum(described.sizes) == 800
    out = pd.read_csv(fs.open(f"{bucket}/out/segments.csv"))
    assert adjusted_rand_score(seg, out["segment"]) >= 0.95
    assert fs.exists(f"{bucket}/out/profiles.csv")
