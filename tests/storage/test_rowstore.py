"""Tests for the generic append-only row store and the one data fingerprint.

The contract tests (:class:`TestRowStoreContract`) run against a local directory,
``memory://`` and ``s3://`` on the loopback S3 server of ``tests/conftest.py``. Concurrent
writers are real spawned processes (``_concurrency.py``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
import zarr
from _concurrency import Workers

import kmflow.storage.pixelstore as pixelstore
from kmflow.errors import InvalidInputError, StoreCorruptError, StoreNotFoundError
from kmflow.fingerprint import fingerprint
from kmflow.storage.rowstore import RowStore

CHUNK = 100


def _rows(seed: int, n: int, d: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _zarr_len(url: str, name: str, options: dict[str, Any] | None = None) -> int:
    group = zarr.open_group(url, mode="r", zarr_format=3, storage_options=options)
    return int(group[name].shape[0])  # type: ignore[union-attr]


@pytest.fixture
def memory_url() -> Iterator[str]:
    root = f"rowstore-test-{uuid.uuid4().hex}"
    yield f"memory://{root}/rows.zarr"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    """(store URL, storage options) on each backend."""
    if request.param == "local":
        return str(tmp_path / "rows.zarr"), None
    if request.param == "memory":
        return request.getfixturevalue("memory_url"), None
    bucket_url, options = request.getfixturevalue("s3_bucket")
    return f"{bucket_url.rstrip('/')}/{uuid.uuid4().hex}/rows.zarr", options


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_order_independent() -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5)]
    assert fingerprint(hashes) == fingerprint(reversed(hashes)) == fingerprint(iter(hashes))
    assert fingerprint(hashes) == hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()
    # A fixed value: stores written by earlier kmflow versions keep their fingerprints.
    assert fingerprint(["b", "a"]) == (
        "7e18f737311b2dc3b2f269dd78396b0351f14fb66efa879f768cb23181883c78"
    )
    assert fingerprint([]) == hashlib.sha256(b"").hexdigest()
    assert fingerprint(["a", "a"]) != fingerprint(["a"])  # duplicates count
    assert pixelstore.fingerprint is fingerprint  # the pixel store's is this one


# --------------------------------------------------------------------------- contract


class TestRowStoreContract:
    """The same behaviour on every backend."""

    def test_string_ids_roundtrip_over_several_appends(
        self, backend: tuple[str, dict[str, Any] | None]
    ) -> None:
        url, options = backend
        store = RowStore(url, storage_options=options, chunk_rows=CHUNK)
        assert not store.exists()
        parts = [_rows(1, 250), _rows(2, 30), _rows(3, 0), _rows(4, 121)]
        ids = [np.array([f"r{p}-{i}" for i in range(len(x))]) for p, x in enumerate(parts)]
        meta = {"features": ["a", "b", "c", "d"], "preprocessing": {"type": "standard"}}
        got = [
            store.append(da.from_array(parts[0], chunks=70), ids=ids[0], meta=meta),
            *(store.append(x, ids=i) for x, i in zip(parts[1:], ids[1:], strict=True)),
        ]
        assert got == [range(0, 250), range(250, 280), range(280, 280), range(280, 401)]
        reopened = RowStore(url, storage_options=options)
        assert reopened.n_rows == 401
        x = reopened.X()
        assert x.dtype == np.float64
        assert x.chunks[0] == (CHUNK,) * 4 + (1,)  # as stored: appends aligned to the chunks
        np.testing.assert_array_equal(x.compute(), np.concatenate(parts))
        assert reopened.ids().tolist() == [s for i in ids for s in i.tolist()]
        assert reopened.ids().dtype.kind == "T"
        assert reopened.meta == meta
        assert reopened.fingerprint() == fingerprint(reopened.hashes().tolist())
        record = zarr.open_group(url, mode="r", storage_options=options).attrs["kmflow"]
        assert record == {
            "format": "kmflow.rowstore",
            "version": 1,
            "n_rows": 401,
            "fingerprint": reopened.fingerprint(),
            "meta": meta,
        }

    def test_int_ids_and_default_ids(self, backend: tuple[str, dict[str, Any] | None]) -> None:
        url, options = backend
        store = RowStore(url, storage_options=options, chunk_rows=CHUNK, format="kmflow.records")
        a, b = _rows(5, 40, d=2), _rows(6, 7, d=2)
        store.append(a, ids=np.arange(1000, 1040))
        store.append(b)  # default ids: the row numbers
        assert store.ids().dtype == np.int64
        assert store.ids().tolist() == [*range(1000, 1040), *range(40, 47)]
        np.testing.assert_array_equal(store.X().compute(), np.concatenate([a, b]))
        assert store.meta == {}
        with pytest.raises(StoreCorruptError, match="not a kmflow row store"):
            RowStore(url, storage_options=options).open()  # another format

    def test_crash_before_the_commit_is_invisible_and_trimmed(
        self, backend: tuple[str, dict[str, Any] | None], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        url, options = backend
        store = RowStore(url, storage_options=options, chunk_rows=CHUNK)
        first = _rows(7, 130)
        store.append(first, ids=[f"a{i}" for i in range(130)])
        fp = store.fingerprint()

        def killed(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("killed after the rows were written")

        later = _rows(8, 90)
        with monkeypatch.context() as m:
            m.setattr(RowStore, "_commit_items", killed)
            with pytest.raises(RuntimeError, match="killed"):
                store.append(later, ids=[f"b{i}" for i in range(90)])
        assert _zarr_len(url, "X", options) == 220  # the orphan rows are there ...
        reader = RowStore(url, storage_options=options)
        assert reader.n_rows == 130  # ... but invisible
        assert reader.fingerprint() == fp
        np.testing.assert_array_equal(reader.X().compute(), first)
        assert len(reader.ids()) == 130

        with monkeypatch.context() as m:  # rows and ids written, the record not
            m.setattr(RowStore, "_write_record", killed)
            with pytest.raises(RuntimeError, match="killed"):
                store.append(later, ids=[f"b{i}" for i in range(90)])
        assert _zarr_len(url, "id", options) == 220
        assert reader.n_rows == 130
        assert reader.ids().tolist() == [f"a{i}" for i in range(130)]

        assert store.append(later, ids=[f"b{i}" for i in range(90)]) == range(130, 220)
        assert _zarr_len(url, "X", options) == 220  # trimmed, then appended once
        assert _zarr_len(url, "id", options) == 220
        np.testing.assert_array_equal(reader.X().compute(), np.concatenate([first, later]))
        assert reader.fingerprint() != fp


# --------------------------------------------------------------------------- local store


def test_derived_variables_go_stale_on_append(tmp_path: Path) -> None:
    store = RowStore(str(tmp_path / "rows.zarr"), chunk_rows=CHUNK)
    with pytest.raises(StoreNotFoundError, match="append rows to create one"):
        store.write_derived("labels", np.zeros(3, np.int32), ("row",))
    store.append(_rows(9, 230))
    assert store.read_derived("labels") is None
    labels = da.arange(230, chunks=77, dtype=np.int32) % 5
    store.write_derived("labels", labels, ("row",))
    centers = np.arange(12.0).reshape(3, 4)
    store.write_derived("centers", centers, ("cluster", "feature"))
    got = store.read_derived("labels")
    assert got is not None
    assert got.chunks[0] == (CHUNK, CHUNK, 30)  # the row chunks
    np.testing.assert_array_equal(got.compute(), np.arange(230) % 5)
    stored = store.read_derived("centers")
    assert stored is not None
    np.testing.assert_array_equal(stored.compute(), centers)
    assert "labels" in store.open()
    with pytest.raises(InvalidInputError, match="229 entries along 'row'"):
        store.write_derived("labels", np.zeros(229, np.int32), ("row",))
    with pytest.raises(InvalidInputError, match="along 'feature'"):
        store.write_derived("centers", np.zeros((3, 5)), ("cluster", "feature"))
    with pytest.raises(InvalidInputError, match="name"):
        store.write_derived("X", np.zeros((230, 4)), ("row", "feature"))

    store.append(_rows(10, 5))
    assert store.read_derived("labels") is None
    assert store.read_derived("centers") is None  # another fingerprint
    assert set(store.open().data_vars) == {"X", "id", "sha256"}
    group = zarr.open_group(str(tmp_path / "rows.zarr"), mode="r")
    assert "labels" not in group  # it no longer covered every row: deleted
    store.write_derived("centers", centers + 1, ("cluster", "feature"))
    again = store.read_derived("centers")
    assert again is not None
    np.testing.assert_array_equal(again.compute(), centers + 1)


def test_row_hashes_and_fingerprint(tmp_path: Path) -> None:
    a = RowStore(str(tmp_path / "a.zarr"), chunk_rows=CHUNK)
    b = RowStore(str(tmp_path / "b.zarr"), chunk_rows=7)
    x = _rows(11, 50)
    ids = [f"k{i}" for i in range(50)]
    a.append(x, ids=ids)
    b.append(x[25:], ids=ids[25:])  # other order, other chunks: the same data
    b.append(x[:25], ids=ids[:25])
    assert a.fingerprint() == b.fingerprint()
    digest = hashlib.sha256(x[0].astype("<f8").tobytes()).digest()
    assert a.hashes()[0] == hashlib.sha256(b"k0\0" + digest).hexdigest()
    c = RowStore(str(tmp_path / "c.zarr"))
    c.append(x, ids=[f"j{i}" for i in range(50)])  # other ids: other data
    assert c.fingerprint() != a.fingerprint()
    d = RowStore(str(tmp_path / "d.zarr"))
    given = [hashlib.sha256(f"src{i // 10}".encode()).hexdigest() for i in range(50)]
    d.append(x, ids=ids, hashes=given)
    assert d.hashes().tolist() == given
    assert d.fingerprint() == fingerprint(given)


def test_invalid_appends_write_nothing(tmp_path: Path) -> None:
    url = str(tmp_path / "rows.zarr")
    store = RowStore(url, chunk_rows=CHUNK)
    with pytest.raises(InvalidInputError, match="2-D"):
        store.append(np.zeros(3))
    with pytest.raises(InvalidInputError, match="numeric"):
        store.append(np.array([["a"]]))
    with pytest.raises(InvalidInputError, match="one per row"):
        store.append(np.zeros((3, 2)), ids=["a", "b"])
    with pytest.raises(InvalidInputError, match="strings or integers"):
        store.append(np.zeros((2, 2)), ids=[1.5, 2.5])
    with pytest.raises(InvalidInputError, match="JSON"):
        store.append(np.zeros((2, 2)), meta={"f": object()})
    with pytest.raises(InvalidInputError, match="chunk_rows"):
        RowStore(url, chunk_rows=0)
    assert not (tmp_path / "rows.zarr").exists()
    store.append(np.zeros((2, 2)), ids=["a", "b"])
    with pytest.raises(InvalidInputError, match="3 columns"):
        store.append(np.zeros((1, 3)), ids=["c"])
    with pytest.raises(InvalidInputError, match="numeric"):
        store.append(np.zeros((1, 2), np.complex128), ids=["c"])
    with pytest.raises(InvalidInputError, match="string ids: pass ids"):
        store.append(np.zeros((1, 2)))
    with pytest.raises(InvalidInputError, match=r"ids of .* are strings"):
        store.append(np.zeros((1, 2)), ids=[7])
    store.append(np.ones((1, 2), np.int32), ids=["c"])  # int32 -> float64 is safe
    assert store.n_rows == 3
    assert store.X().dtype == np.float64
    narrow = RowStore(str(tmp_path / "f32.zarr"))
    narrow.append(np.zeros((1, 2), np.float32))
    with pytest.raises(InvalidInputError, match="cannot be stored safely as float32"):
        narrow.append(np.zeros((1, 2)))
    assert narrow.X().dtype == np.float32


# --------------------------------------------------------------------------- the writer lease

_BUSY_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from kmflow.errors import StoreBusyError
    from kmflow.storage.rowstore import RowStore

    try:
        RowStore(sys.argv[1]).append(np.zeros((1, 2)), ids=["late"], by="second writer")
    except StoreBusyError as exc:
        print("busy:", exc)
        sys.exit(3)
    """
)


def test_append_holds_the_lease_against_another_process(tmp_path: Path) -> None:
    url = str(tmp_path / "rows.zarr")
    store = RowStore(url, chunk_rows=CHUNK)
    seen: list[str | None] = []
    original = RowStore._commit_items

    def spying(self: RowStore, *args: Any) -> None:
        held = RowStore(url).lease().read()
        seen.append(None if held is None else held.state)
        original(self, *args)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(RowStore, "_commit_items", spying)
        store.append(np.zeros((1, 2)), ids=["first"])
    assert seen == ["held"]  # the append held the lease while it committed
    released = store.lease().read()
    assert released is not None
    assert released.state == "released"

    env = {**os.environ, "KMFLOW_STORAGE__LEASE_TIMEOUT": "1"}
    with store.writing(by="the test holding the store"):
        proc = subprocess.run(
            [sys.executable, "-c", _BUSY_WRITER, url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 3, proc.stderr
    assert "busy since" in proc.stdout
    assert "by the test holding the store" in proc.stdout
    assert store.ids().tolist() == ["first"]


def append_job(job: dict[str, Any], barrier: Any) -> list[tuple[int, int]]:
    """Append ``job["parts"]`` rows (one append each); the row range each got."""
    os.environ["KMFLOW_STORAGE__LEASE_TIMEOUT"] = "150"
    import dask

    from kmflow.storage.rowstore import RowStore

    store = RowStore(job["url"], storage_options=job["options"], chunk_rows=job["chunk_rows"])
    got = []
    with dask.config.set(scheduler="sync"):
        for i, rows in enumerate(job["parts"]):
            ids = [f"{job['who']}-{i}-{j}" for j in range(len(rows))]
            r = store.append(np.asarray(rows), ids=ids)
            got.append((r.start, r.stop))
    return got


def test_two_processes_appending_at_once(tmp_path: Path) -> None:
    url = str(tmp_path / "rows.zarr")
    writers = ["w0", "w1"]
    parts = {
        w: [_rows(20 + k + 10 * i, 37 + 11 * k) for k in range(3)] for i, w in enumerate(writers)
    }
    jobs = [
        {"url": url, "options": None, "chunk_rows": 16, "who": w, "parts": parts[w]}
        for w in writers
    ]
    with Workers(2, append_job) as pool:
        results = pool.round(jobs)
    assert [s for s, _ in results] == ["ok", "ok"], results
    store = RowStore(url)
    total = sum(len(p) for ps in parts.values() for p in ps)
    assert store.n_rows == total
    x = store.X().compute()
    ids = store.ids().tolist()
    ranges = sorted(r for _, got in results for r in got)
    assert ranges[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # no overlap
    assert ranges[-1][1] == total
    for (_, got), w in zip(results, writers, strict=True):
        for i, (start, stop) in enumerate(got):
            np.testing.assert_array_equal(x[start:stop], parts[w][i])
            assert ids[start:stop] == [f"{w}-{i}-{j}" for j in range(stop - start)]
    assert store.fingerprint() == fingerprint(store.hashes().tolist())
    with dask.config.set(scheduler="sync"):
        assert store.append(np.zeros((1, 4)), ids=["after"]) == range(total, total + 1)
