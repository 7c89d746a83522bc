"""Column plan and stored preprocessing of the records job, against pandas and scikit-learn."""

from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from kmflow.errors import InvalidInputError, TableError
from kmflow.jobs.segments import prepare
from kmflow.jobs.segments.prepare import (
    MISSING_LEVEL,
    Holdout,
    Preprocessing,
    _exact_quantiles,
    fit_preprocessing,
    plan_columns,
)
from kmflow.kernels.split import holdout_rows
from kmflow.storage.tables import read_table

N = 600


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def _records(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    spend = rng.gamma(2.0, 50.0, n)
    return pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "name": [f"person {i}" for i in range(n)],
            "spend ($)": [("" if i % 7 == 0 else f"{v:.3f}") for i, v in enumerate(spend)],
            "visits": rng.integers(0, 20, n),
            "churned": rng.choice(["yes", "no", "Yes"], n),
            "sex": rng.choice(["F", "M"], n),
            "plan (tier)": rng.choice(["gold", "silver", "bronze", ""], n),
            "segment": rng.choice(["a", "b"], n),
        }
    )


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "customers.csv"
    _records().to_csv(path, index=False)
    return read_table(str(path), blocksize=4096)


def _write(tmp_path, df: pd.DataFrame, name: str = "t.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return read_table(str(path), blocksize=1024)


# --------------------------------------------------------------------------- inference


def test_inference_kinds_and_report(table):
    assert table.frame.npartitions > 3
    plan = plan_columns(table, id="customer_id", target="segment")
    kinds = {c.name: (c.role, c.kind) for c in plan.columns}
    assert kinds == {
        "customer_id": ("id", None),
        "spend ($)": ("feature", "numeric"),
        "visits": ("feature", "numeric"),
        "churned": ("feature", "flag"),
        "sex": ("feature", "flag"),
        "plan (tier)": ("feature", "categorical"),
        "segment": ("target", None),
    }
    assert plan.id == "customer_id"
    assert plan.target == "segment"
    assert "name" in plan.left_out
    assert (
        "column 'name' left out: 600 distinct text values (more than 50); "
        "list it in features to force it"
    ) in plan.report
    spend = next(c for c in plan.columns if c.name == "spend ($)")
    assert spend.n_missing == sum(1 for i in range(N) if i % 7 == 0)
    plan_tier = next(c for c in plan.columns if c.name == "plan (tier)")
    assert plan_tier.levels == ("bronze", "gold", "silver")
    assert plan_tier.n_missing == int((_records()["plan (tier)"] == "").sum())


def test_numbers_with_blanks_bool_and_id_like(tmp_path):
    df = pd.DataFrame({"x": ["1", "2", "", "4"] * 10, "CustomerID": range(40)})
    plan = plan_columns(_write(tmp_path, df))
    (x,) = plan.features
    assert (x.name, x.kind, x.n_missing) == ("x", "numeric", 10)
    assert "CustomerID" in plan.left_out
    frame = dask.dataframe.from_pandas(
        pd.DataFrame({"b": [True, False] * 20, "v": np.arange(40.0)}), npartitions=3
    )
    plan = plan_columns(frame)
    assert [(c.name, c.kind) for c in plan.features] == [("b", "flag"), ("v", "numeric")]


def test_inference_uses_every_partition(tmp_path):
    # Blank in the whole first partition, numbers later: numeric, not text.
    df = pd.DataFrame({"late": [""] * 3000 + ["1.5"] * 10, "k": ["a"] * 3010})
    df.loc[3005, "k"] = "b"
    table = _write(tmp_path, df)
    assert table.frame.npartitions > 2
    plan = plan_columns(table)
    kinds = {c.name: c.kind for c in plan.features}
    assert kinds == {"late": "numeric", "k": "flag"}


def test_mixed_types(tmp_path):
    df = pd.DataFrame({"amount": [str(i) for i in range(50)], "y": ["1"] * 50})
    df.loc[37, "amount"] = "n/a?"
    table = _write(tmp_path, df)
    plan = plan_columns(table)
    assert "amount" in plan.left_out
    assert "row 37 has 'n/a?'" in plan.left_out["amount"]
    with pytest.raises(
        TableError, match=r"column 'amount' mixes numbers and text: row 37 has 'n/a\?'"
    ):
        plan_columns(table, features=["amount"])
    forced = plan_columns(table, categorical=["amount"], max_levels=60)
    assert next(c for c in forced.features if c.name == "amount").kind == "categorical"


def test_all_blank_and_unknown_names(tmp_path):
    df = pd.DataFrame({"empty": [""] * 20, "spend": np.arange(20.0)})
    table = _write(tmp_path, df)
    plan = plan_columns(table)
    assert plan.left_out["empty"] == "blank in all 20 rows"
    with pytest.raises(TableError, match=r"column 'empty' cannot be a feature: blank in all 20"):
        plan_columns(table, features=["empty", "spend"])
    with pytest.raises(InvalidInputError, match=r"id: no column 'spnd' .*did you mean 'spend'"):
        plan_columns(table, id="spnd")
    with pytest.raises(InvalidInputError, match=r"features: no column 'spends'"):
        plan_columns(table, features=["spends"])
    with pytest.raises(InvalidInputError, match=r"exclude: no column 'emty'"):
        plan_columns(table, exclude=["emty"])


def test_requested_categorical_with_too_many_levels(tmp_path):
    df = pd.DataFrame({"code": [f"c{i}" for i in range(1500)], "v": np.arange(1500.0)})
    table = _write(tmp_path, df)
    with pytest.raises(
        TableError, match=r"column 'code' has 1,500 distinct values; .* at most 1,000"
    ):
        plan_columns(table, features=["code", "v"])
    assert plan_columns(table, features=["code"], max_categorical_levels=2000).features[0].kind == (
        "categorical"
    )


# --------------------------------------------------------------------------- fitting


def _train_frame(table, holdout: Holdout) -> pd.DataFrame:
    """The training rows as pandas (the oracle's view)."""
    df = table.frame.compute()
    rows = da.empty((len(df), 1), chunks=(table.partition_rows, 1))
    held = holdout_rows(rows, holdout.fraction, seed=holdout.seed)
    return df[~held.compute()]


def _numbers(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    out["spend ($)"] = pd.to_numeric(df["spend ($)"].replace("", np.nan))
    out["visits"] = pd.to_numeric(df["visits"])
    out["churned"] = df["churned"].str.lower().eq("yes").astype(float)
    out["sex=M"] = df["sex"].eq("M").astype(float)
    return out


@pytest.mark.parametrize(
    ("scale", "oracle"),
    [
        ("standard", StandardScaler),
        ("robust", RobustScaler),
        ("minmax", MinMaxScaler),
        ("none", None),
    ],
)
def test_scalers_and_median_match_sklearn_and_pandas(table, scale, oracle):
    plan = plan_columns(table, id="customer_id", target="segment")
    split = Holdout(0.2, 3)
    prep = fit_preprocessing(table, plan, train_rows=split, missing="median", scale=scale)
    train = _train_frame(table, split)
    nums = _numbers(train)
    median = nums["spend ($)"].median()
    impute = {c["name"]: c["impute"] for c in prep.to_json()["columns"]}
    assert impute["spend ($)"] == median
    assert prep.fit_report.n_train == len(train)
    assert prep.fit_report.missing["spend ($)"] == int(nums["spend ($)"].isna().sum())
    filled = nums.fillna({"spend ($)": median}).to_numpy(dtype=np.float64)
    expected_nums = oracle().fit_transform(filled) if oracle is not None else filled
    dummies = pd.get_dummies(
        train["plan (tier)"]
        .replace("", MISSING_LEVEL)
        .astype(pd.CategoricalDtype(["bronze", "gold", "silver", MISSING_LEVEL])),
        prefix="plan (tier)",
        prefix_sep="=",
        dtype=float,
    )
    expected = np.hstack([expected_nums, dummies.to_numpy()])
    assert prep.feature_names == (
        "spend ($)",
        "visits",
        "churned",
        "sex=M",
        *dummies.columns,
    )
    X = prep.transform(table)
    assert X.dtype == np.float64
    assert X.chunks[0] == table.partition_rows
    got = X.compute()[np.isin(np.arange(table.n_rows), train.index)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("collect_limit", [1_000_000, 50], ids=["gather", "refine"])
def test_exact_quantiles_over_many_chunks(monkeypatch, collect_limit):
    # A small gather limit forces the histogram refinement (ties of 3.0 included).
    monkeypatch.setattr(prepare, "_COLLECT_LIMIT", collect_limit)
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_cauchy(20_001), np.full(5000, 3.0)])
    x[rng.random(len(x)) < 0.05] = np.nan
    X = np.stack([x, rng.integers(0, 3, len(x)).astype(float)], axis=1)
    got = _exact_quantiles(da.from_array(X, chunks=(997, 2)), [0.25, 0.5, 0.75])
    np.testing.assert_array_equal(got, np.nanpercentile(X, [25, 50, 75], axis=0))


def test_missing_policies(table):
    plan = plan_columns(table, id="customer_id", target="segment")
    n_blank = sum(1 for i in range(N) if i % 7 == 0)
    with pytest.raises(
        TableError, match=rf"column 'spend \(\$\)' has {n_blank} missing values .*\(first: row 0\)"
    ):
        fit_preprocessing(table, plan, missing="error")
    dropped = fit_preprocessing(table, plan, missing="drop", scale="none")
    assert dropped.fit_report.n_dropped == n_blank
    assert dropped.fit_report.n_used == N - n_blank
    X, report = dropped.transform(table, report=True)
    assert X.shape == (N - n_blank, dropped.n_features)
    assert report.n_dropped == n_blank
    assert report.missing["spend ($)"] == n_blank
    median = fit_preprocessing(table, plan, missing="median", scale="none")
    full = median.transform(table).compute()
    assert full.shape == (N, median.n_features)
    spend = pd.to_numeric(table.frame.compute()["spend ($)"].replace("", np.nan))
    np.testing.assert_array_equal(full[:, 0], spend.fillna(spend.median()).to_numpy())
    with pytest.raises(InvalidInputError, match="missing='sometimes'"):
        fit_preprocessing(table, plan, missing="sometimes")  # type: ignore[arg-type]


def test_train_rows_mask_equals_holdout(table):
    plan = plan_columns(table, id="customer_id", target="segment")
    a = fit_preprocessing(table, plan, train_rows=Holdout(0.3, 9))
    held = holdout_rows(da.empty((N, 1), chunks=(table.partition_rows, 1)), 0.3, seed=9)
    b = fit_preprocessing(table, plan, train_rows=~held.compute())
    np.testing.assert_array_equal(a.arrays()["center"], b.arrays()["center"])
    np.testing.assert_array_equal(a.arrays()["scale"], b.arrays()["scale"])
    with pytest.raises(InvalidInputError, match="train_rows"):
        fit_preprocessing(table, plan, train_rows=np.ones(3, dtype=bool))


# --------------------------------------------------------------------------- storage, records


def test_round_trip_and_records(table):
    plan = plan_columns(table, id="customer_id", target="segment")
    prep = fit_preprocessing(table, plan, train_rows=Holdout(0.2, 0), scale="robust")
    spec = json.loads(json.dumps(prep.to_json()))
    assert spec["type"] == "table"
    assert [c["role"] for c in spec["columns"]] == ["id"] + ["feature"] * 5 + ["target"]
    arrays = {k: v.copy() for k, v in prep.arrays().items()}
    assert set(arrays) == {"center", "scale"}
    assert all(v.dtype == np.float64 and v.shape == (prep.n_features,) for v in arrays.values())
    again = Preprocessing.from_json(spec, arrays)
    assert again.feature_names == prep.feature_names
    assert again.input_columns == ("spend ($)", "visits", "churned", "sex", "plan (tier)")
    X = prep.transform(table).compute()
    np.testing.assert_array_equal(again.transform(table).compute(), X)
    df = table.frame.compute()
    np.testing.assert_array_equal(prep.transform(df), X)
    records = df.iloc[:25].to_dict(orient="records")
    np.testing.assert_array_equal(again.transform(records), X[:25])
    columns = df.iloc[:25].to_dict(orient="list")
    np.testing.assert_array_equal(again.transform(columns), X[:25])
    with pytest.raises(AttributeError):
        prep.missing = "drop"  # type: ignore[misc]
    with pytest.raises(InvalidInputError, match="not a table preprocessing"):
        Preprocessing.from_json({"type": "color"}, arrays)


def test_new_records_unseen_and_missing(table):
    plan = plan_columns(table, id="customer_id", target="segment")
    prep = fit_preprocessing(table, plan, scale="none")
    new = [
        {"spend ($)": "", "visits": 3, "churned": "YES", "sex": "F", "plan (tier)": "platinum"},
        {"spend ($)": 10.5, "visits": "4", "churned": "maybe", "sex": "M", "plan (tier)": ""},
    ]
    X, report = prep.transform(new, report=True)
    impute = {c["name"]: c["impute"] for c in prep.to_json()["columns"]}
    names = prep.feature_names
    np.testing.assert_array_equal(X[0, :4], [impute["spend ($)"], 3, 1, 0])
    np.testing.assert_array_equal(X[0, 4:], 0.0)  # unseen category: all zeros
    assert X[1, 2] == impute["churned"]  # unseen flag value: imputed
    assert X[1, names.index("plan (tier)=missing")] == 1.0
    assert report.unseen == {"churned": 1, "sex": 0, "plan (tier)": 1}
    assert report.missing["spend ($)"] == 1
    assert report.missing["plan (tier)"] == 1
    assert prep.check(new) == report
    with pytest.raises(TableError, match=r"column 'visits' must hold numbers: row 0 has 'many'"):
        prep.transform([{**new[0], "visits": "many"}])
    with pytest.raises(InvalidInputError, match=r"no column 'visits'.*did you mean"):
        prep.transform(
            [{"spend ($)": 1, "visitz": 1, "churned": "y", "sex": "F", "plan (tier)": ""}]
        )


def test_inverse_centers(table):
    plan = plan_columns(table, id="customer_id", target="segment")
    prep = fit_preprocessing(table, plan, scale="standard")
    X = prep.transform(table).compute()
    centers = np.stack([X[:300].mean(axis=0), X[300:].mean(axis=0)])
    profile = prep.inverse_centers(centers)
    assert list(profile.columns) == list(prep.feature_names)
    unscaled = X * prep.arrays()["scale"] + prep.arrays()["center"]
    np.testing.assert_allclose(profile.iloc[0].to_numpy(), unscaled[:300].mean(axis=0), rtol=1e-12)
    shares = profile[[n for n in prep.feature_names if n.startswith("plan (tier)=")]]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert 0.0 <= profile["churned"].min() <= profile["churned"].max() <= 1.0
