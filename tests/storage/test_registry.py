"""Tests for the model registry: versions, champion, idempotency, crash safety, corruption.

The contract tests (:class:`TestRegistryContract`) run against a local directory,
``memory://`` and ``s3://`` on the loopback S3 server of ``tests/conftest.py``. Files are
inspected and damaged through fsspec directly, never through the registry.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import fsspec
import numpy as np
import pytest
from fsspec.core import url_to_fs

import kmflow
from kmflow.core.model import ModelRecord, centers_sha256
from kmflow.errors import InvalidInputError, ModelCorruptError, ModelNotFoundError
from kmflow.storage.registry import ModelRegistry

NAME = "palette"
# Values whose float64 bytes must survive exactly (no text formatting, no float32).
C1 = np.array([[0.0, 1.0 / 3.0, -2.5], [1e-300, 7.0, 255.0]])
C2 = np.array([[np.pi, -0.0, 1e300], [2.0**-1074, 0.1, 0.2], [5.0, 6.0, 7.0]])


def _register(
    registry: ModelRegistry, centers: np.ndarray = C1, name: str = NAME, **overrides: Any
) -> ModelRecord:
    kwargs: dict[str, Any] = {
        "init": "k-means||",
        "seed": 0,
        "n_iter": 5,
        "converged": True,
        "inertia": 10.5,
        "fingerprint": "data-1",
    }
    kwargs.update(overrides)
    return registry.register(name, centers, **kwargs)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


class Backend:
    """A registry URL plus raw file access to it (through fsspec, not the registry)."""

    def __init__(self, url: str, options: dict[str, Any] | None) -> None:
        self.url = url
        self.options = options
        self.fs, self.root = url_to_fs(url, **(options or {}))
        self.root = self.root.rstrip("/")

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.url, storage_options=self.options)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache()
        return bool(self.fs.exists(self.path(rel)))

    def read(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(rel)))

    def put(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # local disks need folders
        self.fs.pipe_file(path, data)

    def rm(self, rel: str) -> None:
        self.fs.rm(self.path(rel))

    def files(self) -> dict[str, bytes]:
        """Every file under the registry root: relative path -> content."""
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return {}
        return {p[len(self.root) + 1 :]: self.read(p[len(self.root) + 1 :]) for p in found}


# --------------------------------------------------------------------------- backends


@pytest.fixture
def memory_url() -> Iterator[str]:
    root = f"registry-test-{uuid.uuid4().hex}"
    yield f"memory://{root}/models"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend(str(tmp_path / "models"), None)
    if request.param == "memory":
        return Backend(request.getfixturevalue("memory_url"), None)
    bucket_url, options = request.getfixturevalue("s3_bucket")
    return Backend(f"{bucket_url}/{uuid.uuid4().hex}/models", options)


class TestRegistryContract:
    """The same behaviour on every backend."""

    def test_register_two_versions_round_trip(self, backend: Backend) -> None:
        registry = backend.registry()
        assert registry.names() == []
        assert registry.versions(NAME) == []
        before = dt.datetime.now(dt.UTC)
        r1 = _register(
            registry,
            C1,
            kind="palette",
            preprocessing={"type": "color", "color_space": "lab"},
            params={"max_iter": 300, "tol": 1e-4},
            metrics={"silhouette": math.nan, "gain": math.inf},
            reference={"proportions": np.array([0.5, 0.5])},
            run_key="run-1",
        )
        r2 = _register(registry, C2, init="warm-start", seed=7, parent=1, inertia=3.0)
        after = dt.datetime.now(dt.UTC)
        assert (r1.version, r2.version) == (1, 2)
        assert (r1.n_clusters, r1.n_features, r2.n_clusters, r2.n_features) == (2, 3, 3, 3)
        assert r1.centers_sha256 == centers_sha256(C1)
        assert r1.kmflow_version == kmflow.__version__
        assert before <= r1.created_at <= r2.created_at <= after
        assert r2.parent == 1
        assert r2.init == "warm-start"
        assert sorted(backend.files()) == [
            f"{NAME}/v000001/centers.npy",
            f"{NAME}/v000001/model.json",
            f"{NAME}/v000002/centers.npy",
            f"{NAME}/v000002/model.json",
        ]
        stored = json.loads(backend.read(f"{NAME}/v000001/model.json"))
        assert stored["version"] == 1
        assert stored["metrics"] == {"silhouette": "NaN", "gain": "Infinity"}
        # A fresh registry object (no state shared with the writer) reads the same content.
        reader = backend.registry()
        assert reader.names() == [NAME]
        assert [r.version for r in reader.versions(NAME)] == [1, 2]
        assert reader.record(NAME) == r2
        assert reader.record(NAME, "latest") == r2
        assert reader.record(NAME, 2) == r2
        assert reader.record(NAME, "2") == r2
        again = reader.record(NAME, 1)
        assert math.isnan(again.metrics["silhouette"])
        assert again.metrics["gain"] == math.inf
        assert again.reference == {"proportions": [0.5, 0.5]}
        assert again.model_dump(exclude={"metrics"}) == r1.model_dump(exclude={"metrics"})
        for version, centers in ((1, C1), (2, C2)):
            model = reader.load(NAME, version)
            assert model.centers.dtype == np.float64
            assert model.centers.tobytes() == centers.tobytes()  # bit-exact, -0.0 included
            assert not model.centers.flags.writeable
            assert model.record.version == version
        assert reader.load(NAME).record == r2

    def test_no_champion_yet(self, backend: Backend) -> None:
        registry = backend.registry()
        _register(registry)
        assert registry.champion(NAME) is None
        with pytest.raises(ModelNotFoundError, match=f"'{NAME}' has no champion"):
            registry.record(NAME, "champion")
        with pytest.raises(ModelNotFoundError, match="has no champion"):
            registry.load(NAME, "champion")
        assert not backend.exists(f"{NAME}/champion.json")

    def test_promote_writes_pointer_with_previous(self, backend: Backend) -> None:
        registry = backend.registry()
        r1 = _register(registry, C1)
        r2 = _register(registry, C2)
        before = dt.datetime.now(dt.UTC)
        assert registry.promote(NAME, 1) == r1
        pointer = json.loads(backend.read(f"{NAME}/champion.json"))
        assert pointer.keys() == {"version", "promoted_at", "previous"}
        assert pointer["version"] == 1
        assert pointer["previous"] is None
        promoted_at = dt.datetime.fromisoformat(pointer["promoted_at"])
        assert promoted_at.utcoffset() == dt.timedelta(0)
        assert before <= promoted_at <= dt.datetime.now(dt.UTC)
        assert registry.champion(NAME) == r1

        assert registry.promote(NAME, 2) == r2
        pointer = json.loads(backend.read(f"{NAME}/champion.json"))
        assert (pointer["version"], pointer["previous"]) == (2, 1)
        reader = backend.registry()
        assert reader.champion(NAME) == r2
        assert reader.record(NAME, "champion") == r2
        assert reader.load(NAME, "champion").centers.tobytes() == C2.tobytes()

        # Promoting the champion again is a no-op: the pointer keeps its previous.
        content = backend.read(f"{NAME}/champion.json")
        assert registry.promote(NAME, 2) == r2
        assert backend.read(f"{NAME}/champion.json") == content
        # Rolling back to the previous version records the one it replaced.
        registry.promote(NAME, 1)
        pointer = json.loads(backend.read(f"{NAME}/champion.json"))
        assert (pointer["version"], pointer["previous"]) == (1, 2)
        assert [f for f in backend.files() if "champion" in f] == [f"{NAME}/champion.json"]

    def test_promote_missing_or_corrupt_version_keeps_champion(self, backend: Backend) -> None:
        registry = backend.registry()
        _register(registry, C1)
        _register(registry, C2)
        registry.promote(NAME, 1)
        content = backend.read(f"{NAME}/champion.json")
        with pytest.raises(ModelNotFoundError, match=r"has no version 5 .*versions: \[1, 2\]"):
            registry.promote(NAME, 5)
        with pytest.raises(ModelNotFoundError, match=r"'other' has no version 1 .*versions: \[\]"):
            registry.promote("other", 1)
        backend.rm(f"{NAME}/v000002/centers.npy")
        with pytest.raises(ModelCorruptError, match=r"centers\.npy is missing"):
            registry.promote(NAME, 2)
        assert backend.read(f"{NAME}/champion.json") == content
        assert registry.champion(NAME) == registry.record(NAME, 1)

    def test_run_key_makes_register_idempotent(self, backend: Backend) -> None:
        registry = backend.registry()
        first = _register(registry, C1, run_key="flow-run-a")
        files = backend.files()
        retry = _register(registry, C2, seed=99, run_key="flow-run-a")
        assert retry == first
        assert backend.files() == files  # nothing new written, nothing rewritten
        assert [r.version for r in registry.versions(NAME)] == [1]
        other = _register(registry, C2, run_key="flow-run-b")
        assert other.version == 2
        assert _register(registry, C1).version == 3  # no key: always a new version
        assert _register(registry, C1, run_key="flow-run-b") == other
        assert registry.find_run_key(NAME, "flow-run-a") == first
        assert registry.find_run_key(NAME, "flow-run-b") == other
        assert registry.find_run_key(NAME, "flow-run-c") is None

    def test_crashed_registration_is_invisible_and_its_number_not_reused(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        registry = backend.registry()
        r1 = _register(registry, C1, run_key="run-1")

        def killed(self: ModelRegistry, record: ModelRecord) -> None:
            raise RuntimeError("killed before model.json")

        with monkeypatch.context() as m:
            m.setattr(ModelRegistry, "_publish", killed)
            with pytest.raises(RuntimeError, match="killed"):
                _register(registry, C2, run_key="run-2")
            with pytest.raises(RuntimeError, match="killed"):
                _register(registry, C2, name="ghost")
        assert backend.exists(f"{NAME}/v000002/centers.npy")
        assert not backend.exists(f"{NAME}/v000002/model.json")
        reader = backend.registry()
        assert reader.names() == [NAME]  # "ghost" has no complete version
        assert reader.versions(NAME) == [r1]
        assert reader.record(NAME) == r1
        with pytest.raises(ModelNotFoundError, match=r"has no version 2 .*versions: \[1\]"):
            reader.record(NAME, 2)
        with pytest.raises(ModelNotFoundError, match="has no version 2"):
            reader.load(NAME, 2)
        with pytest.raises(ModelNotFoundError, match="has no version 2"):
            reader.promote(NAME, 2)
        assert reader.versions("ghost") == []
        with pytest.raises(ModelNotFoundError, match="'ghost' has no versions"):
            reader.record("ghost")
        # The retried run registers again, under a new number.
        retried = _register(reader, C2, run_key="run-2")
        assert retried.version == 3
        assert [r.version for r in reader.versions(NAME)] == [1, 3]
        assert reader.load(NAME).centers.tobytes() == C2.tobytes()
        assert _register(reader, C1, name="ghost").version == 2

    @pytest.mark.parametrize(
        ("damage", "message"),
        [
            ("delete-centers", r"v000001/centers\.npy is missing, but model\.json"),
            ("tamper-centers", r"v000001/centers\.npy has sha256 [0-9a-f]{64}, but model\.json"),
            ("wrong-shape", r"centers\.npy holds an array of shape \(2, 4\), .*\(2, 3\)"),
            ("non-finite", r"centers\.npy holds 1 NaN or infinite values"),
            ("float32", r"centers\.npy holds float32 values, not float64"),
            ("pickled", r"centers\.npy is not a readable \.npy array"),
            ("garbage-centers", r"centers\.npy is not a readable \.npy array"),
            ("garbage-json", r"v000001/model\.json is not a valid model record: .*JSON"),
            ("invalid-json", r"model\.json is not a valid model record: n_clusters"),
            ("moved-json", r"v000001/model\.json describes 'palette' v2, not 'palette' v1"),
        ],
    )
    def test_corruption_is_detected(
        self, backend: Backend, damage: str, message: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        registry = backend.registry()
        _register(registry, C1)
        _register(registry, C2)
        v1 = f"{NAME}/v000001"
        if damage == "delete-centers":
            backend.rm(f"{v1}/centers.npy")
        elif damage == "tamper-centers":
            backend.put(f"{v1}/centers.npy", _npy(C1 + 1e-12))
        elif damage == "wrong-shape":
            backend.put(f"{v1}/centers.npy", _npy(np.zeros((2, 4))))
        elif damage == "non-finite":
            backend.put(f"{v1}/centers.npy", _npy(np.where(C1 == 7.0, np.nan, C1)))
        elif damage == "float32":
            backend.put(f"{v1}/centers.npy", _npy(C1.astype(np.float32)))
        elif damage == "pickled":
            backend.put(f"{v1}/centers.npy", _npy(C1.astype(object)))
        elif damage == "garbage-centers":
            backend.put(f"{v1}/centers.npy", b"\x93NUMPY garbage")
        elif damage == "garbage-json":
            backend.put(f"{v1}/model.json", b"{not json")
        elif damage == "invalid-json":
            stored = json.loads(backend.read(f"{v1}/model.json"))
            backend.put(f"{v1}/model.json", json.dumps({**stored, "n_clusters": 0}).encode())
        elif damage == "moved-json":
            backend.put(f"{v1}/model.json", backend.read(f"{NAME}/v000002/model.json"))
        registry = backend.registry()
        with pytest.raises(ModelCorruptError, match=message) as info:
            registry.load(NAME, 1)
        assert backend.url.rstrip("/").split("://")[-1] in str(info.value)  # names the file
        if "json" in damage:
            with pytest.raises(ModelCorruptError, match=message):
                registry.record(NAME, 1)
            # Listings skip the corrupt version with a warning naming it, and go on.
            with caplog.at_level(logging.WARNING, logger="kmflow.storage.registry"):
                assert [r.version for r in registry.versions(NAME)] == [2]
                assert registry.names() == [NAME]
            assert re.search(message, caplog.text)
        else:  # the record itself is fine; only loading the centers fails
            assert registry.record(NAME, 1).version == 1
        # The other version is untouched and still loads.
        assert registry.load(NAME, 2).centers.tobytes() == C2.tobytes()

    def test_champion_pointing_at_missing_version(self, backend: Backend) -> None:
        registry = backend.registry()
        _register(registry, C1)
        pointer = {"version": 9, "promoted_at": "2025-01-01T00:00:00+00:00", "previous": None}
        backend.put(f"{NAME}/champion.json", json.dumps(pointer).encode())
        expected = r"champion\.json names version 9, which does not exist \(versions: \[1\]\)"
        with pytest.raises(ModelCorruptError, match=expected):
            registry.champion(NAME)
        with pytest.raises(ModelCorruptError, match=expected):
            registry.record(NAME, "champion")
        with pytest.raises(ModelCorruptError, match=expected):
            registry.load(NAME, "champion")
        # Promoting repairs it; the dangling version is not kept as "previous".
        registry.promote(NAME, 1)
        assert json.loads(backend.read(f"{NAME}/champion.json"))["previous"] is None
        assert registry.champion(NAME) == registry.record(NAME, 1)

    def test_champion_pointer_garbage(self, backend: Backend) -> None:
        registry = backend.registry()
        _register(registry, C1)
        backend.put(f"{NAME}/champion.json", b'{"version": "one"}')
        with pytest.raises(ModelCorruptError, match=r"champion\.json is not a valid champion"):
            registry.champion(NAME)
        registry.promote(NAME, 1)
        pointer = json.loads(backend.read(f"{NAME}/champion.json"))
        assert (pointer["version"], pointer["previous"]) == (1, None)

    def test_names_lists_only_models_with_complete_versions(self, backend: Backend) -> None:
        registry = backend.registry()
        _register(registry, name="beta")
        _register(registry, name="alpha")
        _register(registry, name="alpha")
        backend.put("half/v000001/centers.npy", _npy(C1))  # crashed before model.json
        backend.put("pointer-only/champion.json", b"{}")
        backend.put("README.txt", b"not a model")
        backend.put("stray/model.json", b"{}")  # not inside a version folder
        backend.put("bad name!/v000001/model.json", b"{}")
        assert registry.names() == ["alpha", "beta"]
        assert [r.version for r in registry.versions("alpha")] == [1, 2]
        assert registry.versions("half") == []
        assert _register(registry, name="half").version == 2

    def test_unknown_name_and_version(self, backend: Backend) -> None:
        registry = backend.registry()
        shown = backend.url
        with pytest.raises(ModelNotFoundError) as info:
            registry.record("nope")
        assert str(info.value) == (
            f"model 'nope' has no versions in registry {shown!r} (versions: [])"
        )
        assert isinstance(info.value, LookupError)
        with pytest.raises(ModelNotFoundError, match="'nope' has no versions"):
            registry.champion("nope")
        with pytest.raises(ModelNotFoundError, match="'nope' has no versions"):
            registry.load("nope")
        _register(registry)
        with pytest.raises(ModelNotFoundError, match=r"has no version 7 .*versions: \[1\]"):
            registry.record(NAME, 7)
        with pytest.raises(ModelNotFoundError, match="parent version 4"):
            _register(registry, parent=4)
        assert registry.names() == [NAME]

    def test_invalid_input_writes_nothing(self, backend: Backend) -> None:
        registry = backend.registry()
        for name in ["", "../up", "a/b", ".hidden", "-dash", "sp ace", "x" * 129, "abc\n"]:
            with pytest.raises(InvalidInputError, match="invalid model name"):
                _register(registry, name=name)
            with pytest.raises(InvalidInputError, match="invalid model name"):
                registry.record(name)
            with pytest.raises(InvalidInputError, match="invalid model name"):
                registry.versions(name)
        bad_centers: list[tuple[Any, str]] = [
            (np.zeros(3), r"2-D array .*got shape \(3,\)"),
            (np.zeros((0, 3)), r"non-empty 2-D .*got shape \(0, 3\)"),
            (np.zeros((2, 0)), r"got shape \(2, 0\)"),
            (np.array([[1.0, np.nan], [np.inf, 0.0]]), "2 NaN or infinite values"),
            (np.array([["a", "b"]]), "real numbers"),
            ([[1.0, 2.0], [3.0]], "not an array"),
        ]
        for centers, message in bad_centers:
            with pytest.raises(InvalidInputError, match=message):
                _register(registry, centers)
        bad_fields: list[tuple[dict[str, Any], str]] = [
            ({"inertia": math.nan}, "inertia"),
            ({"seed": -1}, "seed"),
            ({"kind": "palette"}, "needs preprocessing of type 'color'"),
            ({"kind": "hsv"}, "kind"),
            ({"metrics": {"when": dt.date(2025, 1, 1)}}, "not JSON-ready"),
            ({"run_key": ""}, "run_key"),
            ({"params": ["not", "a", "dict"]}, "params"),
            ({"reference": MappingProxyType({"x": object()})}, r"reference\['x'\] has type"),
        ]
        for fields, message in bad_fields:
            with pytest.raises(InvalidInputError, match=message):
                _register(registry, **fields)
        for version in [0, -1, "best", "v1", True, 1.0]:
            with pytest.raises(InvalidInputError, match="version"):
                registry.record(NAME, version)
        assert backend.files() == {}
        assert registry.names() == []

    def test_credentials_never_logged(
        self, backend: Backend, caplog: pytest.LogCaptureFixture
    ) -> None:
        # kmflow's own records only: botocore's DEBUG logs show the access key by design.
        caplog.set_level(logging.DEBUG, logger="kmflow")
        registry = backend.registry()
        _register(registry)
        registry.promote(NAME, 1)
        registry.load(NAME, "champion")
        with pytest.raises(ModelNotFoundError) as info:
            registry.record(NAME, 9)
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("kmflow")]
        assert any("registered palette v1" in m for m in messages)
        assert any("promoted palette v1" in m for m in messages)
        secrets = [v for k, v in (backend.options or {}).items() if k in ("key", "secret")]
        for secret in secrets:
            assert not any(secret in m for m in messages)
            assert secret not in str(info.value)
            assert secret not in repr(registry)


# --------------------------------------------------------------------------- local specifics


def test_constructor_does_no_io(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "nowhere" / "models")
    assert registry.url == str(tmp_path / "nowhere" / "models")
    assert repr(registry) == f"ModelRegistry({str(tmp_path / 'nowhere' / 'models')!r})"
    assert not (tmp_path / "nowhere").exists()
    assert registry.names() == []
    assert not (tmp_path / "nowhere").exists()


def test_empty_version_folder_still_takes_its_number(tmp_path: Path) -> None:
    # A crash right after the folder was made (before centers.npy) on a local disk.
    registry = ModelRegistry(tmp_path)
    _register(registry)
    (tmp_path / NAME / "v000005").mkdir()
    assert [r.version for r in registry.versions(NAME)] == [1]
    assert _register(registry).version == 6


def test_champion_replace_leaves_no_temporary_files(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    _register(registry)
    _register(registry)
    registry.promote(NAME, 1)
    registry.promote(NAME, 2)
    assert sorted(p.name for p in (tmp_path / NAME).iterdir()) == [
        "champion.json",
        "history",
        "v000001",
        "v000002",
    ]
    # one event file per promotion, nothing else
    history = sorted(p.name for p in (tmp_path / NAME / "history").iterdir())
    assert len(history) == 2
    assert all(name.endswith(".json") for name in history)
    assert sorted(p.name for p in (tmp_path / NAME / "v000001").iterdir()) == [
        "centers.npy",
        "model.json",
    ]


def test_messages_mask_credentials_in_the_url() -> None:
    # memory:// accepts any path, so a URL with user-info stands in for e.g. ftp://.
    url = f"memory://user:hunter2@registry-{uuid.uuid4().hex}/models"
    registry = ModelRegistry(url)
    with pytest.raises(ModelNotFoundError) as info:
        registry.record(NAME)
    assert "hunter2" not in str(info.value)
    assert "memory://***@registry-" in str(info.value)
    assert "hunter2" not in repr(registry)


def test_centers_are_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry(tmp_path)
    _register(registry)
    (tmp_path / NAME / "v000001" / "centers.npy").write_bytes(_npy(C1.astype(object)))

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pickle.loads called")

    monkeypatch.setattr("pickle.loads", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    with pytest.raises(ModelCorruptError, match="allow_pickle"):
        registry.load(NAME, 1)


def test_version_argument_forms(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    for _ in range(3):
        _register(registry)
    assert registry.record(NAME, np.int64(2)).version == 2
    assert registry.record(NAME, "3").version == 3
    assert registry.record(NAME, "000001").version == 1


# --------------------------------------------------------------------------- hardening


def test_npy_header_claiming_a_huge_shape_is_refused_before_allocating(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    _register(registry, C1)
    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)}
    np.lib.format.write_array_header_1_0(buffer, header)
    path = tmp_path / NAME / "v000001" / "centers.npy"
    path.write_bytes(buffer.getvalue() + C1.tobytes())
    with pytest.raises(ModelCorruptError) as info:
        registry.load(NAME, 1)
    message = str(info.value)
    assert str(path) in message
    assert "header says shape (1000000000000, 3)" in message
    assert "48 bytes follow it" in message
    # A version-2 header is checked the same way.
    buffer = io.BytesIO()
    np.lib.format.write_array_header_2_0(buffer, header)
    path.write_bytes(buffer.getvalue() + C1.tobytes())
    with pytest.raises(ModelCorruptError, match=r"header says shape \(1000000000000, 3\)"):
        registry.load(NAME, 1)


def test_fortran_ordered_centers_still_load(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    record = _register(registry, C2)
    path = tmp_path / NAME / "v000001" / "centers.npy"
    path.write_bytes(_npy(np.asfortranarray(C2)))
    assert registry.load(NAME, record.version).centers.tobytes() == C2.tobytes()


def test_one_corrupt_model_does_not_hide_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(tmp_path)
    _register(registry, C1, name="good")
    _register(registry, C2, name="good")
    _register(registry, C1, name="broken")
    _register(registry, C1, name="mixed")
    _register(registry, C2, name="mixed")
    (tmp_path / "broken" / "v000001" / "model.json").write_bytes(b"{not json")
    (tmp_path / "mixed" / "v000001" / "model.json").write_text("[]")
    with caplog.at_level(logging.WARNING, logger="kmflow.storage.registry"):
        assert registry.names() == ["good", "mixed"]
        assert [r.version for r in registry.versions("good")] == [1, 2]
        assert [r.version for r in registry.versions("mixed")] == [2]
        assert registry.versions("broken") == []
    assert "broken/v000001/model.json is not a valid model record" in caplog.text
    assert "mixed/v000001/model.json is not a valid model record" in caplog.text
    # The command lists the readable models and warns about the corrupt one.
    proc = subprocess.run(
        [sys.executable, "-m", "kmflow.cli", "models", "list", "--registry", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if "│" in line}
    assert set(rows) & {"good", "mixed", "broken"} == {"good", "mixed"}
    assert "broken/v000001/model.json is not a valid model record" in proc.stderr

    # A corrupt champion pointer: that model's champion shows as corrupt, the rest as before.
    registry.promote("good", 2)
    (tmp_path / "good" / "champion.json").write_bytes(b"\x00garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "kmflow.cli", "models", "list", "--registry", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in proc.stdout.splitlines()]
    table = {row[0]: row[1:4] for row in cells if row}
    assert table["good"] == ["2", "2", "corrupt"]  # versions, latest, champion
    assert table["mixed"] == ["1", "2", "-"]
    assert "good/champion.json is not a valid champion pointer" in proc.stderr


def test_model_files_round_trip_and_are_checked(tmp_path: Path) -> None:
    """Preprocessing arrays (.npy) and other files are stored with the version and checked."""
    registry = ModelRegistry(str(tmp_path / "models"))
    center = np.array([1.5, -2.0, 0.25])
    record = _register(
        registry,
        kind="vectors",
        arrays={"center": center},
        files={"classifier.segment-0.skops": b"not pickle"},
    )
    assert set(record.artifacts) == {"prep.center.npy", "classifier.segment-0.skops"}
    model = registry.load(NAME, record.version)
    assert model.artifacts["classifier.segment-0.skops"] == b"not pickle"
    stored = np.load(tmp_path / "models" / NAME / "v000001" / "prep.center.npy")
    np.testing.assert_array_equal(stored, center)
    (tmp_path / "models" / NAME / "v000001" / "classifier.segment-0.skops").write_bytes(b"evil")
    with pytest.raises(ModelCorruptError, match="changed after registration"):
        registry.load(NAME, record.version)
    (tmp_path / "models" / NAME / "v000001" / "classifier.segment-0.skops").unlink()
    with pytest.raises(ModelCorruptError, match="is missing"):
        registry.load(NAME, record.version)
    with pytest.raises(InvalidInputError, match="plain file name"):
        _register(registry, files={"../escape": b"x"})
    with pytest.raises(InvalidInputError, match="plain file name"):
        _register(registry, files={"centers.npy": b"x"})


def test_records_written_before_kinds_read_as_palettes(tmp_path: Path) -> None:
    """A model.json from before the kind field (color_space as the marker) still loads."""
    registry = ModelRegistry(str(tmp_path / "models"))
    record = _register(
        registry, kind="palette", preprocessing={"type": "color", "color_space": "lab"}
    )
    path = tmp_path / "models" / NAME / "v000001" / "model.json"
    old = json.loads(path.read_text())
    for key in ("kind", "preprocessing", "artifacts"):
        del old[key]
    old["color_space"] = "lab"
    path.write_text(json.dumps(old))
    loaded = registry.load(NAME, record.version)
    assert loaded.record.kind == "palette"
    assert loaded.record.color_space == "lab"
    old["color_space"] = None
    path.write_text(json.dumps(old))
    assert registry.record(NAME, record.version).kind == "vectors"
