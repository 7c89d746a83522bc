"""Concurrent writers, for real: several processes ingesting into one pixel store, storing
palettes in it, or registering one model name at once, on local disks and on S3.

Every round starts its writers together (a barrier in spawned processes, see
``_concurrency.py``). Afterwards the store must be readable, every committed image must hold
its own source's pixels, and every registered version must load with its caller's centers.
A crashed writer (killed mid-append) must block the next one only until its lease expires,
and the ``kmflow`` command must fail with exit 2 and one line while another writer holds
the store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
from _concurrency import Workers, acquire_job, ingest_job, palettes_job, register_job

from kmflow.errors import StoreBusyError
from kmflow.storage.images import ImageSource, encode_png
from kmflow.storage.pixelstore import PixelStore
from kmflow.storage.registry import ModelRegistry

CHUNK = 1000  # pixels per Zarr chunk: every image below crosses chunk boundaries


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    """A fresh location (folder URL, storage options) on a local disk or the S3 server."""
    if request.param == "local":
        return str(tmp_path / "data"), None
    bucket_url, options = request.getfixturevalue("s3_bucket")
    return f"{bucket_url}/{uuid.uuid4().hex[:8]}", options


def _make_images(folder: Path, prefix: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` PNGs of random pixels (distinct content, sizes 800 to 2,400 pixels)."""
    rng = np.random.default_rng(seed)
    made = {}
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(20, 41)), int(rng.integers(40, 61))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = folder / f"{prefix}-{i}.png"
        path.write_bytes(encode_png(rgb))
        made[str(path)] = rgb.reshape(-1, 3)
    return made


def _check_store(store: PixelStore, expected: dict[str, np.ndarray]) -> None:
    """Readable; exactly the expected images, each with its own pixels, none overlapping."""
    by_sha = {
        hashlib.sha256(Path(url).read_bytes()).hexdigest(): px for url, px in expected.items()
    }
    records = store.images()
    assert sorted(r.sha256 for r in records) == sorted(by_sha)
    pixels = store.pixels().compute()
    assert pixels.shape == (sum(len(p) for p in by_sha.values()), 3)
    end = 0
    for r in records:
        assert r.offset == end  # contiguous: no image appended over another
        end += r.n_pixels
        np.testing.assert_array_equal(pixels[r.offset : r.offset + r.n_pixels], by_sha[r.sha256])
        np.testing.assert_array_equal(expected[r.source], by_sha[r.sha256])
    ds = store.open()
    assert ds.sizes["image"] == len(by_sha)


# --------------------------------------------------------------------------- pixel store


def test_concurrent_ingests_never_mix_images(
    where: tuple[str, dict[str, Any] | None], tmp_path: Path
) -> None:
    base, options = where
    url = f"{base}/store.zarr"
    # Rounds x writers x images each (one batch, one commit, per image). A batch costs
    # about a second on the S3 server here, so fewer there; two writers ingesting one image
    # each overlap in every step of their ingest.
    rounds, writers, n_images = (6, 3, 2) if options is None else (6, 2, 1)
    expected: dict[str, np.ndarray] = {}
    with Workers(writers, ingest_job) as pool:
        for r in range(rounds):
            jobs = []
            for w in range(writers):
                made = _make_images(tmp_path / "img", f"r{r}w{w}", n_images, seed=100 * r + w)
                expected.update(made)
                sources = [(u, Path(u).name) for u in made]
                jobs.append(
                    {"url": url, "options": options, "chunk_pixels": CHUNK, "sources": sources}
                )
            results = pool.round(jobs)
            assert [status for status, _ in results] == ["ok"] * writers, results
            store = PixelStore(url, storage_options=options)
            _check_store(store, expected)
            # What each writer was told it added is what the store holds.
            committed = {(i.source, i.sha256, i.offset) for i in store.images()}
            for _, added in results:
                assert len(added) == n_images
                assert {tuple(a) for a in added} <= committed


def test_concurrent_palette_writes_keep_every_palette(tmp_path: Path) -> None:
    url = str(tmp_path / "store.zarr")
    images = _make_images(tmp_path / "img", "p", 1, seed=1)
    store = PixelStore(url, chunk_pixels=CHUNK)
    with dask.config.set(scheduler="sync"):
        store.ingest([ImageSource(u, Path(u).name) for u in images], max_pixels=10**6)
    rng = np.random.default_rng(5)
    writers, per_writer = 3, 8  # each writer appends its palettes two at a time
    palettes = [
        {
            uuid.uuid4().hex: rng.uniform(0, 255, (int(rng.integers(2, 9)), 3))
            for _ in range(per_writer)
        }
        for _ in range(writers)
    ]
    with Workers(writers, palettes_job) as pool:
        results = pool.round([{"url": url, "options": None, "palettes": p} for p in palettes])
    assert [s for s, _ in results] == ["ok"] * writers, results
    everything = {k: c for mine in palettes for k, c in mine.items()}
    found = PixelStore(url).image_palettes(list(everything))
    assert set(found) == set(everything)
    for key, centers in everything.items():
        np.testing.assert_array_equal(found[key], centers)


_CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import dask
    from kmflow.storage.images import ImageSource
    from kmflow.storage.pixelstore import PixelStore

    def killed(self, *args, **kwargs):  # pixels appended, metadata and commit not yet
        print("appended", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    PixelStore._commit_images = killed
    store = PixelStore(sys.argv[1], chunk_pixels=int(sys.argv[2]))
    with dask.config.set(scheduler="sync"):
        store.ingest([ImageSource(sys.argv[3], "crash.png")], max_pixels=10**6)
    """
)


def test_crashed_writer_blocks_only_until_its_lease_expires(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = str(tmp_path / "store.zarr")
    first = _make_images(tmp_path / "img", "first", 1, seed=1)
    crash = _make_images(tmp_path / "img", "crash", 1, seed=2)
    after = _make_images(tmp_path / "img", "after", 1, seed=3)
    with dask.config.set(scheduler="sync"):
        PixelStore(url, chunk_pixels=CHUNK).ingest(
            [ImageSource(u, Path(u).name) for u in first], max_pixels=10**6
        )
    ttl = 3.0
    env = {**os.environ, "KMFLOW_STORAGE__LEASE_TTL": str(ttl)}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, url, str(CHUNK), next(iter(crash))],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    killed_at = time.monotonic()
    assert proc.returncode == -9, proc.stderr
    assert "appended" in proc.stdout
    store = PixelStore(url, lease_timeout=60)
    lease = store.lease().read()
    assert lease is not None
    assert lease.state == "held"
    assert not lease.expired()
    assert store.n_images == 1  # the crashed writer's pixels are not visible
    _check_store(store, first)
    with dask.config.set(scheduler="sync"), caplog.at_level("WARNING"):
        report = store.ingest([ImageSource(u, Path(u).name) for u in after], max_pixels=10**6)
    assert len(report.added) == 1
    assert dt.datetime.now(dt.UTC) >= lease.expires_at  # it waited for the expiry ...
    assert time.monotonic() - killed_at < ttl + 30  # ... and not much longer
    assert "took over the writer lease" in caplog.text
    assert "trimming" in caplog.text  # the orphan pixels of the crashed append
    _check_store(store, {**first, **after})


def test_cli_exits_2_with_one_line_while_another_writer_holds_the_store(
    tmp_path: Path,
) -> None:
    images = tmp_path / "img"
    made = _make_images(images, "cli", 2, seed=9)
    url = str(tmp_path / "store.zarr")
    with dask.config.set(scheduler="sync"):
        PixelStore(url, chunk_pixels=CHUNK).ingest(
            [ImageSource(next(iter(made)), "first.png")], max_pixels=10**6
        )
    holder = PixelStore(url).lease(by="kmflow monitor test-holder")
    holder.acquire()
    try:
        env = {
            **os.environ,
            "COLUMNS": "200",
            "KMFLOW_STORAGE__LEASE_TIMEOUT": "1",
            "KMFLOW_CLUSTER__N_WORKERS": "1",
        }
        t0 = time.monotonic()
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "kmflow.cli", "quantize", str(images), "--k", "4"),
                *("--out", str(tmp_path / "out"), "--store", url),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        elapsed = time.monotonic() - t0
    finally:
        holder.release()
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    pattern = (
        rf"error: store {re.escape(url)} busy since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC by "
        rf"kmflow monitor test-holder \(user \S+, pid {os.getpid()} on host "
        rf"{re.escape(socket.gethostname())}\); waited 1 s"
    )
    assert re.match(pattern, errors[0]), errors[0]
    assert elapsed >= 1.0
    assert not list((tmp_path / "out").glob("*.png"))  # nothing written
    assert PixelStore(url).n_images == 1


def test_writer_in_process_gets_store_busy_error(tmp_path: Path) -> None:
    url = str(tmp_path / "store.zarr")
    made = _make_images(tmp_path / "img", "b", 1, seed=4)
    store = PixelStore(url, chunk_pixels=CHUNK, lease_timeout=0.5)
    with dask.config.set(scheduler="sync"):
        store.ingest([ImageSource(u, "b.png") for u in made], max_pixels=10**6)
    with PixelStore(url).writing(by="another writer"):
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError, match=r"busy since .* by another writer") as info:
            store.write_histogram(np.zeros((1, 3), np.uint8), np.array([store.n_pixels]))
        assert time.monotonic() - t0 >= 0.5
    assert "waited 0 s" in str(info.value) or "waited 1 s" in str(info.value)
    assert store.histogram() is None
    # Free again: the same call now succeeds; nested writes reuse the lease held.
    with store.writing():
        store.write_histogram(np.zeros((1, 3), np.uint8), np.array([store.n_pixels]))
        store.write_image_palettes({uuid.uuid4().hex: np.ones((2, 3))})
    assert store.histogram() is not None


# --------------------------------------------------------------------------- lease takeover


@pytest.fixture
def lease_where(where: tuple[str, dict[str, Any] | None]) -> tuple[str, dict[str, Any] | None]:
    base, options = where
    return f"{base}/store.zarr/.lease", options


def test_stale_lease_is_taken_over_by_exactly_one_waiter(
    lease_where: tuple[str, dict[str, Any] | None],
) -> None:
    from kmflow.storage.lease import StoreLease

    url, options = lease_where
    writers, rounds = 4, (5 if options is None else 4)
    with Workers(writers, acquire_job) as pool:
        for _ in range(rounds):
            _plant_crashed_holder(url, options)
            results = pool.round([{"url": url, "options": options}] * writers)
            assert [s for s, _ in results] == ["ok"] * writers, results
            outcomes = [outcome for _, (outcome, _) in results]
            assert outcomes.count("won") == 1, results
            winner = next(token for _, (outcome, token) in results if outcome == "won")
            for _, (outcome, message) in results:
                if outcome == "busy":
                    assert re.search(r"busy since .* UTC by .*; waited \d+ s", message), message
            state = StoreLease(url, storage_options=options).read()
            assert state is not None
            assert state.token == winner
            assert state.state == "released"


def _plant_crashed_holder(url: str, options: dict[str, Any] | None) -> None:
    """A held generation whose holder died long ago (its expiry is in the past)."""
    from kmflow.storage.lease import LeaseRecord, StoreLease, write_bytes_exclusive

    lease = StoreLease(url, storage_options=options)
    current = lease.read()
    generation = 0 if current is None else current.generation
    then = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    dead = LeaseRecord(
        generation=generation + 1,
        state="held",
        token=uuid.uuid4().hex,
        by="a crashed writer",
        user="nobody",
        host="gone",
        pid=1,
        acquired_at=then,
        expires_at=then + dt.timedelta(seconds=60),
    )
    assert write_bytes_exclusive(f"{url}/{generation + 1:012d}.json", dead.to_json(), options)


# --------------------------------------------------------------------------- registry


def test_concurrent_registrations_get_distinct_versions_with_their_own_centers(
    where: tuple[str, dict[str, Any] | None],
) -> None:
    base, options = where
    url = f"{base}/models"
    writers, per_writer = 4, 10
    rng = np.random.default_rng(0)
    jobs = [
        {
            "url": url,
            "options": options,
            "name": "palette",
            "who": f"w{w}",
            "centers": [rng.normal(size=(4, 3)) for _ in range(per_writer)],
        }
        for w in range(writers)
    ]
    with Workers(writers, register_job) as pool:
        results = pool.round(jobs)
    assert [s for s, _ in results] == ["ok"] * writers, results
    returned = [entry for _, entries in results for entry in entries]
    versions = [v for v, _, _ in returned]
    assert len(versions) == writers * per_writer
    assert len(set(versions)) == len(versions)  # no number handed out twice
    registry = ModelRegistry(url, storage_options=options)
    for version, centers, _ in returned:
        assert registry.load("palette", version).centers.tobytes() == centers
    assert sorted(r.version for r in registry.versions("palette")) == sorted(versions)
    # run_key idempotency still holds: a retried run gets its own version back.
    for version, centers, run_key in returned:
        if run_key is not None:
            again = registry.register(
                "palette",
                np.frombuffer(centers).reshape(4, 3),
                init="k-means||",
                seed=0,
                n_iter=1,
                converged=True,
                inertia=1.0,
                fingerprint="retry",
                run_key=run_key,
            )
            assert again.version == version
    assert len(registry.versions("palette")) == writers * per_writer
