"""Tests for the Zarr v3 pixel store: layout, ingest, crash recovery, derived data, backends.

The contract tests (:class:`TestStoreContract`) run against a local directory, ``memory://``
and ``s3://`` on the loopback S3 server of ``tests/conftest.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from distributed import Client, get_task_stream

from kmflow.errors import (
    InvalidInputError,
    KmflowError,
    StoreCorruptError,
    StoreNotFoundError,
)
from kmflow.storage.images import ImageSource, encode_png
from kmflow.storage.pixelstore import (
    DecodedBatch,
    ImageRecord,
    IngestProgress,
    IngestReport,
    PixelStore,
)
from kmflow.storage.rowstore import aligned_chunks

MAX_PIXELS = 1_000_000
CHUNK = 1000
SIZES = [(37, 53), (100, 80), (1, 1)]  # 1961 + 8000 + 1 pixels: crosses chunk boundaries


# --------------------------------------------------------------------------- helpers


def _image(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write(folder: Path, name: str, rgb: np.ndarray) -> ImageSource:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(rgb))
    return ImageSource(url=str(path), relpath=name)


def _sha(source: ImageSource) -> str:
    return hashlib.sha256(Path(source.url).read_bytes()).hexdigest()


class Images:
    """Generated PNG files and their pixels, keyed by source URL."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pixels: dict[str, np.ndarray] = {}

    def make(self, name: str, seed: int, height: int, width: int) -> ImageSource:
        rgb = _image(seed, height, width)
        source = _write(self.folder, name, rgb)
        self.pixels[source.url] = rgb.reshape(-1, 3)
        return source


@pytest.fixture
def images(tmp_path: Path) -> Images:
    return Images(tmp_path / "images")


@pytest.fixture
def three(images: Images) -> list[ImageSource]:
    """37x53, 100x80 and 1x1 random images."""
    return [images.make(f"im{i}.png", i, h, w) for i, (h, w) in enumerate(SIZES)]


def _assert_store_holds(store: PixelStore, expected: dict[str, np.ndarray]) -> None:
    """Every committed image's pixels equal the originals; pixels are exactly these images."""
    records = store.images()
    assert sorted(r.source for r in records) == sorted(expected)
    pixels = store.pixels().compute()
    assert pixels.dtype == np.uint8
    assert pixels.shape == (sum(len(v) for v in expected.values()), 3)
    assert store.n_pixels == len(pixels)
    offset = 0
    for r in records:
        assert r.offset == offset  # contiguous, in ingest order
        np.testing.assert_array_equal(pixels[r.offset : r.offset + r.n_pixels], expected[r.source])
        offset += r.n_pixels
    want = hashlib.sha256("\n".join(sorted(r.sha256 for r in records)).encode()).hexdigest()
    assert store.fingerprint() == want


def _zarr_len(url: str, name: str, storage_options: dict[str, Any] | None = None) -> int:
    group = zarr.open_group(url, mode="r", zarr_format=3, storage_options=storage_options)
    return int(group[name].shape[0])  # type: ignore[union-attr]


# --------------------------------------------------------------------------- backends


@pytest.fixture
def memory_url() -> Iterator[str]:
    root = f"pixelstore-test-{uuid.uuid4().hex}"
    yield f"memory://{root}/store.zarr"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    """(store URL, storage options) on each backend."""
    if request.param == "local":
        return str(tmp_path / "store.zarr"), None
    if request.param == "memory":
        return request.getfixturevalue("memory_url"), None
    bucket_url, options = request.getfixturevalue("s3_bucket")
    return f"{bucket_url.rstrip('/')}/{uuid.uuid4().hex}/store.zarr", options


class TestStoreContract:
    """The same behaviour on every backend."""

    def test_roundtrip(
        self, backend: tuple[str, dict[str, Any] | None], images: Images, three: list[ImageSource]
    ) -> None:
        url, options = backend
        store = PixelStore(url, storage_options=options, chunk_pixels=CHUNK)
        assert not store.exists()
        report = store.ingest(three, max_pixels=MAX_PIXELS)
        assert store.exists()
        assert [r.source for r in report.added] == [s.url for s in three]
        assert [r.offset for r in report.added] == [0, 1961, 9961]
        assert report.n_pixels_added == 9962
        assert report.duplicates == []
        assert report.errors == []
        assert report.added == store.images()
        # A fresh object (no state shared with the writer) reads the same content.
        reopened = PixelStore(url, storage_options=options)
        _assert_store_holds(reopened, images.pixels)
        assert reopened.pixels().chunks[0] == (CHUNK,) * 9 + (962,)

    def test_reingest_adds_nothing_and_new_images_append(
        self, backend: tuple[str, dict[str, Any] | None], images: Images, three: list[ImageSource]
    ) -> None:
        url, options = backend
        store = PixelStore(url, storage_options=options, chunk_pixels=CHUNK)
        store.ingest(three[:2], max_pixels=MAX_PIXELS)
        fingerprint = store.fingerprint()
        again = store.ingest(three[:2], max_pixels=MAX_PIXELS)
        assert again.added == []
        assert again.n_pixels_added == 0
        assert again.duplicates == [s.url for s in three[:2]]
        assert store.fingerprint() == fingerprint
        assert _zarr_len(url, "pixels", options) == 9961
        more = [three[2], images.make("later/big.png", 9, 30, 40)]
        report = store.ingest([*three, more[1]], max_pixels=MAX_PIXELS)
        assert [r.source for r in report.added] == [s.url for s in more]
        assert [r.offset for r in report.added] == [9961, 9962]
        assert report.duplicates == [s.url for s in three[:2]]
        assert store.fingerprint() != fingerprint
        assert store.images()[-1].relpath == "later/big.png"
        _assert_store_holds(store, images.pixels)

    def test_crash_after_pixel_append_is_invisible_and_repaired(
        self,
        backend: tuple[str, dict[str, Any] | None],
        images: Images,
        three: list[ImageSource],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        url, options = backend
        store = PixelStore(url, storage_options=options, chunk_pixels=CHUNK)
        store.ingest(three[:1], max_pixels=MAX_PIXELS)
        committed = {three[0].url: images.pixels[three[0].url]}

        def killed(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("killed after the pixel append")

        with monkeypatch.context() as m:
            m.setattr(PixelStore, "_commit_images", killed)
            with pytest.raises(RuntimeError, match="killed"):
                store.ingest(three[1:], max_pixels=MAX_PIXELS)
        # The orphan pixels are in the Zarr array, but no reader sees them.
        assert _zarr_len(url, "pixels", options) == 9962
        _assert_store_holds(PixelStore(url, storage_options=options), committed)
        # The next ingest trims the orphans and does the work exactly once.
        report = store.ingest(three, max_pixels=MAX_PIXELS)
        assert [r.source for r in report.added] == [s.url for s in three[1:]]
        assert report.duplicates == [three[0].url]
        assert _zarr_len(url, "pixels", options) == 9962
        _assert_store_holds(store, images.pixels)

    def test_labels_and_histogram(
        self, backend: tuple[str, dict[str, Any] | None], images: Images, three: list[ImageSource]
    ) -> None:
        url, options = backend
        store = PixelStore(url, storage_options=options, chunk_pixels=CHUNK)
        store.ingest(three[:2], max_pixels=MAX_PIXELS)
        assert store.labels() is None
        assert store.histogram() is None
        labels = da.arange(store.n_pixels, chunks=3000, dtype=np.int64) % 7
        store.write_labels(labels)
        got = store.labels()
        assert got is not None
        assert got.dtype == np.int32
        assert got.chunks[0] == (CHUNK,) * 9 + (961,)
        np.testing.assert_array_equal(got.compute(), np.arange(store.n_pixels) % 7)
        colors = np.array([[0, 0, 0], [255, 1, 2]], np.uint8)
        counts = np.array([9000, 961], np.int64)
        store.write_histogram(colors, counts)
        hist = store.histogram()
        assert hist is not None
        np.testing.assert_array_equal(hist[0], colors)
        np.testing.assert_array_equal(hist[1], counts)
        assert hist[1].dtype == np.int64
        # New images: labels no longer cover every pixel and the histogram is stale.
        store.ingest(three, max_pixels=MAX_PIXELS)
        assert store.labels() is None
        assert store.histogram() is None
        assert "labels" not in store.open()
        assert "counts" not in store.open()
        _assert_store_holds(store, images.pixels)


# --------------------------------------------------------------------------- local store


def test_constructor_does_no_io(tmp_path: Path) -> None:
    store = PixelStore(str(tmp_path / "nowhere" / "store.zarr"))
    assert store.url.endswith("store.zarr")
    assert not (tmp_path / "nowhere").exists()


def test_layout_dtypes_and_attributes(tmp_path: Path, three: list[ImageSource]) -> None:
    url = str(tmp_path / "store.zarr")
    store = PixelStore(url, chunk_pixels=CHUNK)
    before = np.datetime64(dt.datetime.now(dt.UTC).replace(tzinfo=None), "ns")
    store.ingest(three, max_pixels=MAX_PIXELS)
    after = np.datetime64(dt.datetime.now(dt.UTC).replace(tzinfo=None), "ns")
    group = zarr.open_group(url, mode="r", zarr_format=3)
    assert group.metadata.zarr_format == 3
    assert not (tmp_path / "store.zarr" / ".zmetadata").exists()
    arrays = dict(group.arrays())
    assert arrays["pixels"].chunks == (CHUNK, 3)
    assert arrays["pixels"].metadata.dimension_names == ("pixel", "channel")  # type: ignore[union-attr]
    record = group.attrs["kmflow"]
    assert record == {
        "format": "kmflow.pixelstore",
        "version": 1,
        "channels": "RGB",
        "n_images": 3,
        "n_pixels": 9962,
        "fingerprint": store.fingerprint(),
    }
    ds = store.open()
    assert dict(ds.sizes) == {"pixel": 9962, "channel": 3, "image": 3}
    assert ds["pixels"].dtype == np.uint8
    for name in ("height", "width", "offset"):
        assert ds[name].dtype == np.int64
    for name in ("source", "relpath", "sha256"):
        assert ds[name].dtype.kind == "T"  # numpy StringDType from zarr's v3 "string"
    assert ds["ingested_at"].dtype == np.dtype("datetime64[ns]")
    assert arrays["ingested_at"].dtype == np.int64
    assert arrays["ingested_at"].attrs["units"] == "nanoseconds since 1970-01-01"
    stamps = ds["ingested_at"].values
    assert (stamps >= before).all()
    assert (stamps <= after).all()
    assert ds["sha256"].values.tolist() == [_sha(s) for s in three]
    assert ds["relpath"].values.tolist() == ["im0.png", "im1.png", "im2.png"]
    assert isinstance(ds["pixels"].data, da.Array)


def test_duplicates_within_one_batch(images: Images, tmp_path: Path) -> None:
    a = images.make("a.png", 1, 20, 30)
    copy = _write(images.folder, "sub/copy-of-a.png", _image(1, 20, 30))
    b = images.make("b.png", 2, 5, 5)
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    report = store.ingest([a, copy, b, a], max_pixels=MAX_PIXELS)
    assert [r.source for r in report.added] == [a.url, b.url]
    assert report.duplicates == [copy.url, a.url]
    assert store.n_images == 2
    _assert_store_holds(store, images.pixels)


def test_bad_images_are_reported_and_the_rest_ingested(
    images: Images, tmp_path: Path, three: list[ImageSource]
) -> None:
    broken = images.folder / "broken.png"
    broken.write_bytes(b"definitely not a png")
    truncated = images.folder / "truncated.png"
    truncated.write_bytes(encode_png(_image(5, 50, 50))[:100])
    missing = ImageSource(url=str(images.folder / "missing.png"), relpath="missing.png")
    huge = images.make("huge.png", 7, 200, 200)
    del images.pixels[huge.url]
    sources = [
        ImageSource(str(broken), "broken.png"),
        three[0],
        missing,
        ImageSource(str(truncated), "truncated.png"),
        huge,
        three[1],
        three[2],
    ]
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    report = store.ingest(sources, max_pixels=20_000)
    assert [e.source for e in report.errors] == [
        str(broken),
        missing.url,
        str(truncated),
        huge.url,
    ]
    assert all(e.reason for e in report.errors)
    assert "missing.png" in report.errors[1].reason
    assert [r.source for r in report.added] == [s.url for s in three]
    _assert_store_holds(store, images.pixels)


def test_nothing_to_add_still_creates_an_empty_store(tmp_path: Path) -> None:
    missing = ImageSource(url=str(tmp_path / "missing.png"), relpath="missing.png")
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    report = store.ingest([missing], max_pixels=MAX_PIXELS)
    assert report.added == []
    assert len(report.errors) == 1
    assert store.exists()
    assert store.n_pixels == 0
    assert store.images() == []
    assert store.pixels().shape == (0, 3)
    assert store.fingerprint() == hashlib.sha256(b"").hexdigest()
    assert store.labels() is None
    assert store.histogram() is None


def test_multiple_batches(images: Images, tmp_path: Path) -> None:
    sources = [images.make(f"b{i}.png", 10 + i, 20 + i, 30) for i in range(6)]
    calls: list[IngestProgress] = []
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    # Each batch holds one image at first (batch_pixels // max_pixels == 0 -> 1) ...
    report = store.ingest(
        sources[:3], max_pixels=MAX_PIXELS, batch_pixels=1000, progress=calls.append
    )
    assert [(p.images_done, p.images_total) for p in calls] == [(1, 3), (2, 3), (3, 3)]
    assert [p.pixels_done for p in calls] == [600, 1230, 1890]
    assert report.n_pixels_added == 1890
    # ... and grows with what was seen: 1 image, then up to 4, then the rest.
    calls.clear()
    report = store.ingest(
        [*sources[3:], sources[0]], max_pixels=10_000, batch_pixels=10_000, progress=calls.append
    )
    assert [p.images_done for p in calls] == [1, 4]
    assert report.duplicates == [sources[0].url]
    assert [r.offset for r in report.added] == [1890, 1890 + 690, 1890 + 690 + 720]
    _assert_store_holds(store, images.pixels)
    group = zarr.open_group(str(tmp_path / "store.zarr"), mode="r", zarr_format=3)
    assert group["pixels"].shape == (store.n_pixels, 3)  # type: ignore[union-attr]


def test_next_batch_decodes_while_one_is_written(
    dask_client: Client, images: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches n + 1 and n + 2 are handed to the workers before batch n's pixels are written;
    the store is the same as one ingested batch by batch, duplicates across batches included."""
    sources = [images.make(f"p{i}.png", 50 + i, 20 + i, 30) for i in range(5)]
    sources.append(sources[1])  # a duplicate of an image two batches earlier
    events: list[tuple[str, int]] = []
    decode_batch, write_batch = PixelStore._decode_batch, PixelStore._write_batch

    def recorded_decode(self: PixelStore, batch: list[ImageSource], *a: Any) -> Any:
        events.append(("decode", len(batch)))
        return decode_batch(self, batch, *a)

    rows_of_task: dict[str, tuple[int, int]] = {}  # write task key: the rows it writes

    def recorded_write(self: PixelStore, group: Any, rows_end: int, *a: Any) -> Any:
        writing = write_batch(self, group, rows_end, *a)
        if writing is not None:
            events.append(("write", writing.end - rows_end))
            chunks = aligned_chunks(rows_end, writing.end - rows_end, CHUNK)
            starts = rows_end + np.cumsum([0, *chunks])
            for task, a0, a1 in zip(writing.writes, starts[:-1], starts[1:], strict=True):
                rows_of_task[str(task.key)] = (int(a0), int(a1))
        return writing

    monkeypatch.setattr(PixelStore, "_decode_batch", recorded_decode)
    monkeypatch.setattr(PixelStore, "_write_batch", recorded_write)
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    # batch_pixels // max_pixels == 0: a first batch of 1 image; then as many as fit 2,000
    # pixels at the largest image seen (600 -> 3 images, 690 -> 2).
    with get_task_stream(dask_client) as stream:
        report = store.ingest(sources, max_pixels=MAX_PIXELS, batch_pixels=2000)
    monkeypatch.undo()
    # The batches end inside Zarr chunks (rows 600 and 2580 of 1,000-row chunks): writes of
    # one Zarr chunk never ran at once (a partial chunk write reads, merges and rewrites it).
    ran = {
        str(t["key"]): next(ss for ss in t["startstops"] if ss["action"] == "compute")
        for t in stream.data
        if str(t["key"]) in rows_of_task
    }
    assert len(ran) == len(rows_of_task) == 1 + 3 + 2
    by_chunk: dict[int, list[dict[str, Any]]] = {}
    for key, (a0, a1) in rows_of_task.items():
        for c in range(a0 // CHUNK, (a1 - 1) // CHUNK + 1):
            by_chunk.setdefault(c, []).append(ran[key])
    shared = {c: sorted(runs, key=lambda r: r["start"]) for c, runs in by_chunk.items()}
    assert {c for c, runs in shared.items() if len(runs) > 1} == {0, 2}
    for runs in shared.values():
        for before, after in itertools.pairwise(runs):
            assert after["start"] >= before["stop"]
    sizes = [20 * 30, 21 * 30, 22 * 30, 23 * 30, 24 * 30]
    assert events == [
        ("decode", 1),
        ("decode", 3),  # the next two batches start before the first is written
        ("decode", 2),
        ("write", sizes[0]),
        ("write", sizes[1] + sizes[2] + sizes[3]),
        ("write", sizes[4]),  # its duplicate is not written
    ]
    assert report.duplicates == [sources[1].url]
    assert [r.offset for r in report.added] == list(np.cumsum([0, *sizes[:-1]]))
    _assert_store_holds(store, images.pixels)

    one_by_one = PixelStore(str(tmp_path / "serial.zarr"), chunk_pixels=CHUNK)
    for src in sources:
        one_by_one.ingest([src], max_pixels=MAX_PIXELS)
    assert store.fingerprint() == one_by_one.fingerprint()
    np.testing.assert_array_equal(store.pixels().compute(), one_by_one.pixels().compute())


@pytest.mark.parametrize("start", [7, 10])
def test_chunk_writes_cover_the_rows_and_wait_for_a_shared_chunk(start: int) -> None:
    """One write task per Zarr chunk of the new rows; the first waits for the write before
    it only when both touch one Zarr chunk (``start`` inside it)."""
    from kmflow.storage.images import DecodedImage
    from kmflow.storage.pixelstore import _chunk_writes

    rng = np.random.default_rng(0)
    src = ImageSource(url="memory://x.png", relpath="x.png")
    b, c = (rng.integers(0, 256, (n, 3), dtype=np.uint8) for n in (12, 9))
    g0 = dask.delayed(
        [DecodedImage(src, "a", 1, 5, None, "bad"), DecodedImage(src, "b", 3, 4, b, None)]
    )
    g1 = dask.delayed([DecodedImage(src, "c", 3, 3, c, None)])
    target = zarr.create_array(
        zarr.storage.MemoryStore(), shape=(start + 21, 3), chunks=(10, 3), dtype="u1"
    )
    before = dask.delayed(int, pure=False)(0)
    tasks = _chunk_writes(target, start, [(g0, 1, 12), (g1, 0, 9)], before)
    assert len(tasks) == len(aligned_chunks(start, 21, 10))
    waits = [before.key in dict(t.__dask_graph__()) for t in tasks]
    assert waits == [start % 10 != 0] + [False] * (len(tasks) - 1)
    assert sum(dask.compute(*tasks)) == 21
    np.testing.assert_array_equal(target[start:], np.concatenate([b, c]))
    assert not target[:start].any()


def test_a_failing_ingest_keeps_committed_batches_and_stops_writing(
    dask_client: Client, images: Images, tmp_path: Path
) -> None:
    """A batch fails while the one before it may still be written: that one is committed
    once its pixels are, the failing one stays invisible, nothing writes once ingest() has
    raised, and a rerun adds the rest."""
    sources = [images.make(f"f{i}.png", 70 + i, 20 + i, 30) for i in range(5)]
    url = tmp_path / "store.zarr"
    store = PixelStore(str(url), chunk_pixels=CHUNK)
    seen: list[int] = []

    def fail_third(batch: DecodedBatch) -> None:
        seen.append(len(batch.records))
        if len(seen) == 3:
            raise RuntimeError("on_batch failed")

    with pytest.raises(RuntimeError, match="on_batch failed"):
        store.ingest(sources, max_pixels=MAX_PIXELS, batch_pixels=2000, on_batch=fail_third)
    assert seen == [1, 3, 1]
    committed = store.images()
    assert [r.source for r in committed] == [s.url for s in sources[:4]]  # batches 1 and 2
    _assert_store_holds(store, {s.url: images.pixels[s.url] for s in sources[:4]})

    def chunk_files() -> dict[str, tuple[int, int]]:
        return {
            str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in (url / "pixels").rglob("*")
            if p.is_file()
        }

    written = chunk_files()
    time.sleep(0.5)
    assert chunk_files() == written  # no write of the failed call ran on after it raised

    report = store.ingest(sources, max_pixels=MAX_PIXELS)
    assert len(report.added) == 5 - len(committed)
    _assert_store_holds(store, images.pixels)


def test_a_failed_commit_commits_nothing_after_it(
    dask_client: Client, images: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second batch's metadata commit fails while the third is written: neither is
    committed (the third's rows would follow rows no image owns), the first stays."""
    sources = [images.make(f"m{i}.png", 90 + i, 20 + i, 30) for i in range(5)]
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    commit = PixelStore._commit_images
    calls: list[int] = []

    def second_fails(self: PixelStore, group: Any, record: Any, new: Any, meta: Any) -> None:
        calls.append(int(meta.sizes["image"]))
        if len(calls) == 2:
            raise RuntimeError("commit failed")
        commit(self, group, record, new, meta)

    monkeypatch.setattr(PixelStore, "_commit_images", second_fails)
    with pytest.raises(RuntimeError, match="commit failed"):
        store.ingest(sources, max_pixels=MAX_PIXELS, batch_pixels=2000)
    monkeypatch.undo()
    assert calls == [1, 3]
    assert [r.source for r in store.images()] == [sources[0].url]
    _assert_store_holds(store, {sources[0].url: images.pixels[sources[0].url]})
    report = store.ingest(sources, max_pixels=MAX_PIXELS)
    assert [r.source for r in report.added] == [s.url for s in sources[1:]]
    _assert_store_holds(store, images.pixels)


def test_crash_during_metadata_commit(
    images: Images,
    tmp_path: Path,
    three: list[ImageSource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kill halfway through the per-image variables: sizes disagree, readers still cope."""
    url = str(tmp_path / "store.zarr")
    store = PixelStore(url, chunk_pixels=CHUNK)
    store.ingest(three[:1], max_pixels=MAX_PIXELS)
    committed = {three[0].url: images.pixels[three[0].url]}

    def half_commit(self: PixelStore, group: Any, record: Any, new_record: Any, meta: Any) -> None:
        self._to_zarr(meta[["source", "sha256"]], record, append_dim="image")
        raise RuntimeError("killed halfway through the metadata")

    with monkeypatch.context() as m:
        m.setattr(PixelStore, "_commit_images", half_commit)
        with pytest.raises(RuntimeError, match="halfway"):
            store.ingest(three[1:], max_pixels=MAX_PIXELS)
    assert _zarr_len(url, "source", None) == 3
    assert _zarr_len(url, "height", None) == 1
    with pytest.raises(ValueError, match="conflicting sizes"):
        xr.open_zarr(url, zarr_format=3, consolidated=False)  # what a naive reader gets
    _assert_store_holds(store, committed)

    def killed_record(*args: Any) -> None:
        raise RuntimeError("killed before the commit record")

    with monkeypatch.context() as m:
        m.setattr(PixelStore, "_write_record", killed_record)
        with pytest.raises(RuntimeError, match="commit record"):
            store.ingest(three[1:], max_pixels=MAX_PIXELS)
    assert _zarr_len(url, "height", None) == 3
    _assert_store_holds(store, committed)

    report = store.ingest(three, max_pixels=MAX_PIXELS)
    assert [r.source for r in report.added] == [s.url for s in three[1:]]
    _assert_store_holds(store, images.pixels)
    for name in ("source", "sha256", "height", "ingested_at"):
        assert _zarr_len(url, name, None) == 3


def test_write_labels_validation_and_overwrite(tmp_path: Path, three: list[ImageSource]) -> None:
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    with pytest.raises(StoreNotFoundError):
        store.write_labels(da.zeros(3, dtype=np.int32))
    store.ingest(three, max_pixels=MAX_PIXELS)
    n = store.n_pixels
    with pytest.raises(InvalidInputError, match=f"9961 entries .* {n} committed pixels"):
        store.write_labels(da.zeros(n - 1, dtype=np.int32))
    with pytest.raises(InvalidInputError, match="1-D"):
        store.write_labels(da.zeros((n, 1), dtype=np.int32))
    with pytest.raises(InvalidInputError, match="integers"):
        store.write_labels(da.zeros(n, dtype=np.float32))
    assert store.labels() is None
    store.write_labels(np.full(n, 3, dtype=np.uint8))
    store.write_labels(da.from_array(np.arange(n), chunks=777))  # replaces, re-aligned
    got = store.labels()
    assert got is not None
    np.testing.assert_array_equal(got.compute(), np.arange(n, dtype=np.int32))
    with pytest.raises(InvalidInputError, match="fit int32"):
        store.write_labels(da.full(n, 2**40, dtype=np.int64, chunks=5000))


def test_write_histogram_validation(tmp_path: Path, three: list[ImageSource]) -> None:
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    store.ingest(three[2:], max_pixels=MAX_PIXELS)  # the 1x1 image
    with pytest.raises(InvalidInputError, match="uint8 of shape"):
        store.write_histogram(np.zeros((1, 3), np.int64), np.ones(1, np.int64))
    with pytest.raises(InvalidInputError, match="counts must be integers of shape"):
        store.write_histogram(np.zeros((1, 3), np.uint8), np.ones(2, np.int64))
    with pytest.raises(InvalidInputError, match="add up to 2 pixels"):
        store.write_histogram(np.zeros((2, 3), np.uint8), np.ones(2, np.int64))
    store.write_histogram(np.zeros((2, 3), np.uint8), np.array([1, 0]))
    store.write_histogram(np.full((1, 3), 9, np.uint8), np.ones(1, np.int64))  # new length
    hist = store.histogram()
    assert hist is not None
    np.testing.assert_array_equal(hist[0], [[9, 9, 9]])
    np.testing.assert_array_equal(hist[1], [1])


def test_missing_and_foreign_stores(tmp_path: Path, three: list[ImageSource]) -> None:
    missing = PixelStore(str(tmp_path / "missing.zarr"))
    assert not missing.exists()
    for read in (missing.open, missing.pixels, missing.images, missing.fingerprint):
        with pytest.raises(StoreNotFoundError, match=r"missing\.zarr") as info:
            read()
        assert isinstance(info.value, FileNotFoundError)
        assert isinstance(info.value, KmflowError)
    with pytest.raises(StoreNotFoundError):
        _ = missing.n_pixels

    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"x": ("t", np.arange(3))}).to_zarr(str(foreign), zarr_format=3, consolidated=False)
    store = PixelStore(str(foreign))
    assert store.exists()
    with pytest.raises(StoreCorruptError, match="not a kmflow pixel store") as corrupt:
        store.open()
    assert isinstance(corrupt.value, ValueError)
    with pytest.raises(StoreCorruptError):
        store.ingest(three, max_pixels=MAX_PIXELS)
    assert list(zarr.open_group(str(foreign), mode="r").array_keys()) == ["x"]  # untouched


def test_invalid_arguments(tmp_path: Path, three: list[ImageSource]) -> None:
    with pytest.raises(InvalidInputError, match="chunk_pixels"):
        PixelStore(str(tmp_path / "s.zarr"), chunk_pixels=0)
    store = PixelStore(str(tmp_path / "s.zarr"))
    with pytest.raises(InvalidInputError, match="max_pixels"):
        store.ingest(three, max_pixels=0)
    with pytest.raises(InvalidInputError, match="batch_pixels"):
        store.ingest(three, max_pixels=10, batch_pixels=0)
    with pytest.raises(InvalidInputError, match="ImageSource"):
        store.ingest([three[0].url], max_pixels=10)  # type: ignore[list-item]
    assert not store.exists()


UNSAFE_RELPATHS = [
    "../evil.png",
    "a/../../evil.png",
    "/etc/evil.png",
    "a\\..\\..\\evil.png",
    "..\\evil.png",
    "C:/evil.png",
    "a//b.png",
    "./a.png",
    "a/b.png/",
    "evil\n.png",
    "",
]


@pytest.mark.parametrize("relpath", UNSAFE_RELPATHS)
def test_unsafe_relpath_rejected_before_anything_is_written(
    tmp_path: Path, three: list[ImageSource], relpath: str
) -> None:
    with pytest.raises(InvalidInputError, match="relpath"):
        ImageSource(three[0].url, relpath)
    # Bypassing the dataclass check (e.g. an object built by hand) does not get past ingest.
    bad = object.__new__(ImageSource)
    object.__setattr__(bad, "url", three[1].url)
    object.__setattr__(bad, "relpath", relpath)
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    with pytest.raises(InvalidInputError, match="relpath"):
        store.ingest([three[0], bad], max_pixels=MAX_PIXELS)
    assert not (tmp_path / "store.zarr").exists()  # not even a lease file
    store.ingest([three[0]], max_pixels=MAX_PIXELS)
    with pytest.raises(InvalidInputError, match="relpath"):
        store.ingest([bad], max_pixels=MAX_PIXELS)
    assert [r.relpath for r in store.images()] == ["im0.png"]


def test_report_to_dict_is_json(tmp_path: Path, three: list[ImageSource]) -> None:
    missing = ImageSource(url=str(tmp_path / "gone.png"), relpath="gone.png")
    store = PixelStore(str(tmp_path / "store.zarr"), chunk_pixels=CHUNK)
    report = store.ingest([three[0], missing, three[0]], max_pixels=MAX_PIXELS)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["added"] == [
        {
            "source": three[0].url,
            "relpath": "im0.png",
            "sha256": _sha(three[0]),
            "height": 37,
            "width": 53,
            "offset": 0,
        }
    ]
    assert data["duplicates"] == [three[0].url]
    assert data["errors"][0]["source"] == missing.url
    assert data["n_pixels_added"] == 1961
    assert data["seconds"] >= 0
    assert isinstance(report, IngestReport)
    assert isinstance(report.added[0], ImageRecord)


# --------------------------------------------------------------------------- S3, cluster


@pytest.mark.integration
def test_s3_images_to_s3_store(s3_bucket: tuple[str, dict[str, Any]]) -> None:
    """Images on S3 ingested into a store on S3; a fresh PixelStore reads them back."""
    bucket_url, options = s3_bucket
    fs = fsspec.filesystem("s3", **options)
    root = bucket_url.rstrip("/")
    expected: dict[str, np.ndarray] = {}
    sources = []
    for i, (h, w) in enumerate(SIZES):
        rgb = _image(100 + i, h, w)
        url = f"{root}/images/img{i}.png"
        fs.pipe(url, encode_png(rgb))
        sources.append(ImageSource(url=url, relpath=f"img{i}.png"))
        expected[url] = rgb.reshape(-1, 3)
    store = PixelStore(f"{root}/store.zarr", storage_options=options, chunk_pixels=CHUNK)
    report = store.ingest(sources, max_pixels=MAX_PIXELS)  # source options: the store's
    assert report.errors == []
    assert len(report.added) == 3
    reopened = PixelStore(f"{root}/store.zarr", storage_options=options)
    _assert_store_holds(reopened, expected)
    assert fs.exists(f"{root}/store.zarr/zarr.json")


def test_ingest_on_process_cluster_matches_in_process(
    dask_client: Client, images: Images, tmp_path: Path, three: list[ImageSource]
) -> None:
    """Decoding runs as tasks on the cluster's worker processes; the result is identical."""
    sources = [*three, images.make("d.png", 42, 64, 64), three[0]]
    workers = set(dask_client.scheduler_info()["workers"])
    on_cluster = PixelStore(str(tmp_path / "cluster.zarr"), chunk_pixels=CHUNK)
    with get_task_stream(dask_client) as stream:
        report = on_cluster.ingest(sources, max_pixels=MAX_PIXELS)
    decode = [t for t in stream.data if str(t["key"]).startswith("_decode_image")]
    assert len(decode) == len(sources)
    assert {t["worker"] for t in decode} <= workers
    # Writing the pixels also ran on the workers (the driver never holds them all).
    writes = [t for t in stream.data if str(t["key"]).startswith("_write_rows")]
    assert writes
    assert {t["worker"] for t in writes} <= workers

    in_process = PixelStore(str(tmp_path / "local.zarr"), chunk_pixels=CHUNK)
    with dask.config.set(scheduler="threads"), get_task_stream(dask_client) as local_stream:
        local_report = in_process.ingest(sources, max_pixels=MAX_PIXELS)
    assert local_stream.data == []  # nothing of it ran on the cluster
    assert report.added == local_report.added
    assert report.duplicates == local_report.duplicates == [three[0].url]
    assert on_cluster.fingerprint() == in_process.fingerprint()
    np.testing.assert_array_equal(on_cluster.pixels().compute(), in_process.pixels().compute())
    _assert_store_holds(on_cluster, images.pixels)
