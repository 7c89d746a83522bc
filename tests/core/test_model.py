"""Tests for the model record (validation, JSON round trip, NaN encoding) and the Model pair."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from kmflow.core.model import Model, ModelRecord, centers_sha256
from kmflow.errors import InvalidInputError

CENTERS = np.array([[0.0, 1.0 / 3.0, -2.5], [1e-300, 7.0, 255.0]])
WHEN = dt.datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=dt.UTC)


def _fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "palette",
        "version": 2,
        "n_clusters": 2,
        "n_features": 3,
        "kind": "palette",
        "preprocessing": {"type": "color", "color_space": "lab"},
        "artifacts": {},
        "init": "k-means||",
        "seed": 42,
        "n_iter": 9,
        "converged": True,
        "inertia": 123.25,
        "params": {"max_iter": 300, "tol": 1e-4, "sample": None},
        "metrics": {"silhouette": 0.5},
        "fingerprint": "f" * 64,
        "reference": {"proportions": [0.25, 0.75]},
        "parent": 1,
        "created_at": WHEN,
        "kmflow_version": "0.1.0",
        "centers_sha256": centers_sha256(CENTERS),
        "run_key": "flow-run-1",
    }
    fields.update(overrides)
    return fields


def _no_nan_literals(text: str) -> Any:
    """json.loads that fails on the non-standard NaN / Infinity literals."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant} in {text!r}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- validation


def test_valid_record_keeps_every_field() -> None:
    record = ModelRecord(**_fields())
    assert record.model_dump() == _fields()
    assert record.created_at.tzinfo is dt.UTC


def test_defaults() -> None:
    fields = _fields()
    for optional in ("preprocessing", "artifacts", "params", "metrics", "reference"):
        del fields[optional]
    for optional in ("parent", "run_key"):
        del fields[optional]
    fields["kind"] = "vectors"
    record = ModelRecord(**fields)
    assert record.color_space is None
    assert record.preprocessing == record.artifacts == {}
    assert record.params == record.metrics == record.reference == {}
    assert record.parent is None
    assert record.run_key is None


@pytest.mark.parametrize(
    "name",
    ["", "../x", "a/b", ".hidden", "-x", "_x", "sp ace", "ümlaut", "x" * 129, "a\nb", "abc\n"],
)
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        ModelRecord(**_fields(name=name))


@pytest.mark.parametrize("name", ["a", "A" * 128, "shop.v2_final-3", "0"])
def test_good_names(name: str) -> None:
    assert ModelRecord(**_fields(name=name)).name == name


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 0),
        ("version", -1),
        ("n_clusters", 0),
        ("n_features", 0),
        ("seed", -1),
        ("n_iter", -1),
        ("inertia", -1.0),
        ("inertia", math.nan),
        ("inertia", math.inf),
        ("init", ""),
        ("fingerprint", ""),
        ("kmflow_version", ""),
        ("kind", "pixels"),
        ("centers_sha256", "abc"),
        ("centers_sha256", "F" * 64),
        ("run_key", ""),
        ("parent", 0),
    ],
)
def test_out_of_bounds_values_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        ModelRecord(**_fields(**{field: value}))


def test_ValidationError_is_a_ValueError() -> None:
    with pytest.raises(ValueError, match="version"):
        ModelRecord(**_fields(version=0))


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ModelRecord(**_fields(colour="red"))


@pytest.mark.parametrize("parent", [2, 3])
def test_parent_must_be_an_earlier_version(parent: int) -> None:
    with pytest.raises(ValidationError, match=f"parent={parent} must be an earlier version"):
        ModelRecord(**_fields(version=2, parent=parent))


def test_naive_created_at_is_rejected() -> None:
    with pytest.raises(ValidationError, match="no timezone"):
        ModelRecord(**_fields(created_at=WHEN.replace(tzinfo=None)))


def test_aware_created_at_is_converted_to_utc() -> None:
    tokyo = dt.timezone(dt.timedelta(hours=9))
    record = ModelRecord(**_fields(created_at=WHEN.astimezone(tokyo)))
    assert record.created_at == WHEN
    assert record.created_at.utcoffset() == dt.timedelta(0)
    assert record.created_at.hour == 5


# --------------------------------------------------------------------------- JSON-ready dicts


def test_numpy_values_become_plain_json_types() -> None:
    record = ModelRecord(
        **_fields(
            metrics={"a": np.float64(1.5), "b": np.int64(3), "ok": np.bool_(True)},
            reference={"hist": np.arange(3), "pair": (1, 2), "grid": np.eye(2)},
        )
    )
    assert record.metrics == {"a": 1.5, "b": 3, "ok": True}
    assert type(record.metrics["b"]) is int
    assert type(record.metrics["ok"]) is bool
    assert record.reference == {"hist": [0, 1, 2], "pair": [1, 2], "grid": [[1, 0], [0, 1]]}
    assert json.loads(record.to_json())["reference"]["grid"] == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": object()}, r"metrics\['a'\] has type object"),
        ({1: 2.0}, "non-string key 1"),
        ({"s": {"x": {1, 2}}}, r"metrics\['s'\]\['x'\] has type set"),
        ({"d": [dt.date(2025, 1, 1)]}, r"metrics\['d'\]\[0\] has type date"),
        ({"c": 1j}, "complex"),
    ],
)
def test_values_that_are_not_json_ready_are_rejected(value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelRecord(**_fields(metrics=value))


def test_callers_dicts_are_copied() -> None:
    metrics: dict[str, Any] = {"nested": {"x": [1.0]}}
    record = ModelRecord(**_fields(metrics=metrics))
    metrics["nested"]["x"].append(2.0)
    metrics["new"] = 1
    assert record.metrics == {"nested": {"x": [1.0]}}


# --------------------------------------------------------------------------- JSON round trip


def test_json_round_trip_is_exact() -> None:
    record = ModelRecord(**_fields())
    text = record.to_json()
    data = _no_nan_literals(text)
    assert data["created_at"] in ("2025-03-04T05:06:07.123456Z", "2025-03-04T05:06:07.123456+00:00")
    assert data["params"] == {"max_iter": 300, "tol": 1e-4, "sample": None}
    again = ModelRecord.from_json(text)
    assert again == record
    assert ModelRecord.from_json(text.encode("utf-8")) == record


def test_non_finite_floats_survive_as_strings() -> None:
    record = ModelRecord(
        **_fields(
            metrics={"silhouette": math.nan, "gain": math.inf, "deep": {"x": [-math.inf, 1.0]}},
            reference={"stats": np.array([np.nan, 2.0])},
        )
    )
    text = record.to_json()
    data = _no_nan_literals(text)  # standard JSON: no NaN / Infinity literals
    assert data["metrics"] == {
        "silhouette": "NaN",
        "gain": "Infinity",
        "deep": {"x": ["-Infinity", 1.0]},
    }
    assert data["reference"] == {"stats": ["NaN", 2.0]}
    again = ModelRecord.from_json(text)
    assert math.isnan(again.metrics["silhouette"])
    assert again.metrics["gain"] == math.inf
    assert again.metrics["deep"] == {"x": [-math.inf, 1.0]}
    assert math.isnan(again.reference["stats"][0])
    assert again.reference["stats"][1] == 2.0
    # Everything else is unchanged, and a second round trip gives the same text.
    assert again.model_dump(exclude={"metrics", "reference"}) == record.model_dump(
        exclude={"metrics", "reference"}
    )
    assert again.to_json() == text


def test_reserved_strings_are_read_as_floats() -> None:
    # Documented: inside params / metrics / reference the three strings mean the floats.
    record = ModelRecord(**_fields(params={"x": "NaN", "y": "Infinity", "z": "nan"}))
    assert math.isnan(record.params["x"])
    assert record.params["y"] == math.inf
    assert record.params["z"] == "nan"  # only the exact spellings are reserved


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[]",
        '{"name": "palette"}',
        json.dumps({**_fields(), "created_at": WHEN.isoformat(), "extra": 1}),
    ],
)
def test_from_json_rejects_invalid_text(text: str) -> None:
    with pytest.raises(ValidationError):
        ModelRecord.from_json(text)


# --------------------------------------------------------------------------- frozen


def test_record_is_frozen() -> None:
    record = ModelRecord(**_fields())
    with pytest.raises(ValidationError, match="frozen"):
        record.version = 3
    assert record.version == 2


# --------------------------------------------------------------------------- Model


def test_model_centers_are_a_read_only_float64_copy() -> None:
    given = CENTERS.copy()
    model = Model(record=ModelRecord(**_fields()), centers=given)
    assert model.centers.dtype == np.float64
    assert model.centers.flags.c_contiguous
    assert not model.centers.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        model.centers[0, 0] = 1.0
    given[0, 0] = 99.0
    assert model.centers[0, 0] == 0.0
    assert model.centers.tobytes() == CENTERS.tobytes()
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.centers = CENTERS


def test_model_accepts_integer_and_fortran_centers() -> None:
    ints = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    record = ModelRecord(**_fields(centers_sha256=centers_sha256(ints)))
    model = Model(record=record, centers=np.asfortranarray(ints))
    assert model.centers.dtype == np.float64
    np.testing.assert_array_equal(model.centers, ints)


@pytest.mark.parametrize(
    ("centers", "message"),
    [
        (
            CENTERS[:1],
            r"must have shape \(2, 3\) \(the record of 'palette' v2\); got shape \(1, 3\)",
        ),
        (CENTERS.T, r"shape \(3, 2\)"),
        (CENTERS + 1.0, "sha256"),
        (np.where(CENTERS == 7.0, np.nan, CENTERS), "NaN or infinite"),
        (np.array([["a", "b", "c"], ["d", "e", "f"]]), "must be real numbers"),
    ],
)
def test_model_rejects_centers_that_do_not_match(centers: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Model(record=ModelRecord(**_fields()), centers=centers)


def test_centers_sha256_is_of_float64_c_order_bytes() -> None:
    expected = hashlib.sha256(np.ascontiguousarray(CENTERS, dtype=np.float64).tobytes()).hexdigest()
    assert centers_sha256(CENTERS) == expected
    assert centers_sha256(np.asfortranarray(CENTERS)) == expected
    assert centers_sha256(CENTERS.astype(">f8")) == expected
    assert centers_sha256(CENTERS + 0.0) == expected
    assert centers_sha256(CENTERS[::-1]) != expected


def test_models_predict_on_raw_inputs_through_their_preprocessing() -> None:
    """A vectors model predicts on rows; a Lab palette converts sRGB pixels first."""
    from kmflow.jobs.palette.color import srgb_to_lab

    rgb_centers = np.array([[10.0, 10.0, 10.0], [240.0, 30.0, 30.0]])
    lab_centers = srgb_to_lab(rgb_centers)
    pixels = np.array([[0, 0, 0], [250, 20, 40], [200, 0, 0]], dtype=np.uint8)
    record = ModelRecord(
        **_fields(n_clusters=2, centers_sha256=centers_sha256(lab_centers), parent=None)
    )
    palette = Model(record=record, centers=lab_centers)
    np.testing.assert_array_equal(palette.predict(pixels), [0, 1, 1])
    np.testing.assert_allclose(palette.transform(pixels), srgb_to_lab(pixels.astype(float)))
    with pytest.raises(InvalidInputError, match=r"\(n, 3\)"):
        palette.predict(np.zeros((2, 4)))
    vectors = Model(
        record=ModelRecord(
            **_fields(
                kind="vectors",
                preprocessing={},
                centers_sha256=centers_sha256(rgb_centers),
                parent=None,
            )
        ),
        centers=rgb_centers,
    )
    np.testing.assert_array_equal(vectors.predict([[9.0, 9.0, 9.0], [239.0, 31.0, 29.0]]), [0, 1])
    with pytest.raises(InvalidInputError, match=r"shape \(n, 3\)"):
        vectors.predict([[1.0, 2.0]])


def test_model_files_are_checked_against_the_record() -> None:
    record = ModelRecord(**_fields(artifacts={"notes.txt": hashlib.sha256(b"ok").hexdigest()}))
    Model(record=record, centers=CENTERS, artifacts={"notes.txt": b"ok"})
    with pytest.raises(InvalidInputError, match="has sha256"):
        Model(record=record, centers=CENTERS, artifacts={"notes.txt": b"changed"})
    with pytest.raises(InvalidInputError, match="is missing"):
        Model(record=record, centers=CENTERS)
