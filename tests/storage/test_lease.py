"""Tests for the writer lease: exclusive create, busy waits, renewal, release, takeover.

Run on a local directory, ``memory://`` (threads of this process: the only writers that
share it) and ``s3://`` on the loopback S3 server. Takeover by exactly one of several
*processes* is in ``test_concurrent_writers.py``.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.core import url_to_fs

from kmflow.errors import StorageError, StoreBusyError
from kmflow.storage.lease import (
    LeaseRecord,
    StoreLease,
    exclusive_create_kind,
    write_bytes_exclusive,
)

BUSY = (
    r"^store (?P<store>\S+) busy since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC by (?P<by>.+) "
    r"\(user \S+, pid (?P<pid>\d+) on host \S+\); waited (?P<waited>\d+) s "
    r"\(KMFLOW_STORAGE__LEASE_TIMEOUT sets how long\)$"
)


@pytest.fixture
def memory_url() -> Iterator[str]:
    root = f"lease-test-{uuid.uuid4().hex}"
    yield f"memory://{root}/store.zarr/.lease"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.integration)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    """A lease folder URL and its storage options."""
    if request.param == "local":
        return str(tmp_path / "store.zarr" / ".lease"), None
    if request.param == "memory":
        return request.getfixturevalue("memory_url"), None
    bucket_url, options = request.getfixturevalue("s3_bucket")
    return f"{bucket_url}/{uuid.uuid4().hex[:8]}/store.zarr/.lease", options


def _generations(url: str, options: dict[str, Any] | None) -> list[str]:
    fs, path = url_to_fs(url, **(options or {}))
    fs.invalidate_cache()
    try:
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if re.fullmatch(r"\d{12}\.json", n))


def test_exclusive_create_only_once(where: tuple[str, dict[str, Any] | None]) -> None:
    url, options = where
    target = f"{url}/probe.bin"
    assert write_bytes_exclusive(target, b"first", options)
    assert not write_bytes_exclusive(target, b"second", options)
    fs, path = url_to_fs(target, **(options or {}))
    assert fs.cat_file(path) == b"first"
    assert exclusive_create_kind(fs) in ("atomic", "in-process")


def test_exclusive_create_leaves_no_temporary_files(tmp_path: Path) -> None:
    assert write_bytes_exclusive(str(tmp_path / "a" / "x.json"), b"1")
    assert not write_bytes_exclusive(str(tmp_path / "a" / "x.json"), b"2")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


def test_second_writer_waits_then_gets_a_message_naming_the_holder(
    where: tuple[str, dict[str, Any] | None],
) -> None:
    url, options = where
    holder = StoreLease(url, storage_options=options, by="kmflow quantize", name="the-store")
    with holder:
        other = StoreLease(url, storage_options=options, timeout=1.0, name="the-store")
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError) as info:
            other.acquire()
        assert time.monotonic() - t0 >= 1.0
        assert isinstance(info.value, StorageError)
        match = re.match(BUSY, str(info.value))
        assert match is not None, str(info.value)
        assert match["store"] == "the-store"
        assert match["by"] == "kmflow quantize"
        assert int(match["pid"]) == holder.record.pid  # type: ignore[union-attr]
        assert match["waited"] in ("1", "2")
        assert not other.held
    # Released: the next writer gets it at once, one generation later.
    after = StoreLease(url, storage_options=options, timeout=0)
    with after:
        record = after.record
        assert record is not None
        assert record.state == "held"
        assert record.generation == 3  # held, released, held
    state = after.read()
    assert state is not None
    assert state.state == "released"
    assert state.generation == 4


def test_heartbeat_keeps_a_long_write_leased(where: tuple[str, dict[str, Any] | None]) -> None:
    url, options = where
    ttl = 1.2
    holder = StoreLease(url, storage_options=options, ttl=ttl)
    with holder:
        first = holder.record
        time.sleep(2 * ttl)  # well past the first expiry
        holder.check()  # still ours, as the storage says
        assert holder.record is not None
        assert first is not None
        assert holder.record.generation > first.generation  # renewed
        assert holder.record.token == first.token
        assert holder.record.expires_at > first.expires_at
        with pytest.raises(StoreBusyError):
            StoreLease(url, storage_options=options, timeout=0.2).acquire()


def test_lost_lease_is_noticed_before_commit(
    where: tuple[str, dict[str, Any] | None], caplog: pytest.LogCaptureFixture
) -> None:
    url, options = where
    stalled = StoreLease(url, storage_options=options, ttl=1.0, by="stalled writer")
    stalled.acquire()
    stalled._stop_heartbeat()  # a process paused (or hung) longer than its TTL
    time.sleep(1.2)
    with caplog.at_level("WARNING"):
        taker = StoreLease(url, storage_options=options, timeout=5, by="next writer")
        taker.acquire()
    assert "took over the writer lease held since" in caplog.text
    assert "by stalled writer" in caplog.text
    with pytest.raises(StoreBusyError, match=r"lease of this process was lost .*by next writer"):
        stalled.check()
    stalled.release()  # leaves the new holder alone
    taker.check()
    taker.release()
    state = taker.read()
    assert state is not None
    assert state.state == "released"
    assert state.by == "next writer"


def test_threads_take_turns_on_memory(memory_url: str) -> None:
    inside = 0
    most = 0
    turns = 0
    guard = threading.Lock()
    errors: list[BaseException] = []

    def writer() -> None:
        nonlocal inside, most, turns
        try:
            for _ in range(5):
                with StoreLease(memory_url, timeout=30):
                    with guard:
                        inside += 1
                        most = max(most, inside)
                    time.sleep(0.005)
                    with guard:
                        inside -= 1
                        turns += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert (most, turns) == (1, 30)


def test_expired_lease_taken_over_by_exactly_one_thread(memory_url: str) -> None:
    for _ in range(5):
        dead = StoreLease(memory_url, ttl=0.3)
        dead.acquire()
        dead._stop_heartbeat()  # crashed
        time.sleep(0.35)
        start = threading.Barrier(6)
        won: list[str] = []
        busy: list[str] = []

        def taker(start: threading.Barrier, won: list[str], busy: list[str]) -> None:
            lease = StoreLease(memory_url, timeout=0)
            start.wait()
            try:
                lease.acquire()
            except StoreBusyError as exc:
                busy.append(str(exc))
                start.wait()
                return
            won.append(lease.record.token)  # type: ignore[union-attr]
            start.wait()  # hold until everyone has tried
            lease.release()

        threads = [threading.Thread(target=taker, args=(start, won, busy)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(won) == 1
        assert len(busy) == 5
        dead._record = None  # its process is gone; nothing to release


def test_old_generations_are_pruned(tmp_path: Path) -> None:
    url = str(tmp_path / ".lease")
    for _ in range(30):
        with StoreLease(url, timeout=0):
            pass
    names = _generations(url, None)
    assert len(names) <= 34
    assert names[-1] == f"{60:012d}.json"
    state = StoreLease(url).read()
    assert state is not None
    assert (state.generation, state.state) == (60, "released")


def test_unreadable_generation_blocks_for_one_ttl_then_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = str(tmp_path / ".lease")
    assert write_bytes_exclusive(f"{url}/{1:012d}.json", b"{half a rec")
    with pytest.raises(StoreBusyError, match="unreadable lease generation 1"):
        StoreLease(url, ttl=2, timeout=0.3).acquire()
    t0 = time.monotonic()
    with caplog.at_level("WARNING"), StoreLease(url, ttl=1, timeout=10) as lease:
        assert time.monotonic() - t0 >= 1.0
        assert lease.record is not None
        assert lease.record.generation == 2
    assert "ignoring unreadable writer lease generation 1" in caplog.text


def test_lease_record_round_trip_and_message() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    record = LeaseRecord(
        generation=7,
        state="held",
        token="t",
        by="flow run 'calm-owl' of monitor",
        user="alice",
        host="node-1",
        pid=42,
        acquired_at=now,
        expires_at=now + dt.timedelta(seconds=60),
    )
    assert LeaseRecord.from_json(record.to_json()) == record
    assert record.describe() == (
        "since 2026-01-02 03:04:05 UTC by flow run 'calm-owl' of monitor "
        "(user alice, pid 42 on host node-1)"
    )
    assert not record.expired(now + dt.timedelta(seconds=59))
    assert record.expired(now + dt.timedelta(seconds=60))
    with pytest.raises(ValueError, match="not a kmflow lease"):
        LeaseRecord.from_json(b'{"format": "other"}')


def test_constructor_does_no_io_and_checks_arguments(tmp_path: Path) -> None:
    StoreLease(str(tmp_path / "nowhere" / ".lease"))
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ValueError, match="ttl"):
        StoreLease(str(tmp_path), ttl=0)
    with pytest.raises(ValueError, match="timeout"):
        StoreLease(str(tmp_path), timeout=-1)
