"""Passes over persisted blocks held by worker actors: the same numbers as task graphs."""

from __future__ import annotations

import logging
import threading
import time

import dask.array as da
import numpy as np
import pytest
from distributed import wait

from kmflow.cluster.resources import balance_blocks, hold_blocks
from kmflow.errors import InvalidInputError
from kmflow.kernels._blocks import Blocks, map_reduce
from kmflow.kernels.lloyd import _add, _cost_block, _lloyd_block, _lloyd_combine


def _fail_block(x: np.ndarray, w: np.ndarray | None, offset: int) -> float:
    if offset > 0:
        raise InvalidInputError(f"block at row {offset} refused")
    return 0.0


def _thread_name_block(x: np.ndarray, w: np.ndarray | None, offset: int) -> frozenset[str]:
    time.sleep(0.05)  # long enough that the holder's threads all take a block
    return frozenset([threading.current_thread().name])


def _union(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
    return a | b


class _LostCall:
    def result(self) -> None:
        raise OSError("Unable to contact Actor's worker")


class _GoneActor:
    def map(self, func: object, args: object) -> _LostCall:
        return _LostCall()


def _centers_t(pixels: np.ndarray, k: int = 12) -> np.ndarray:
    return np.ascontiguousarray((pixels[:k].astype(np.float64) + 0.25).T)


@pytest.mark.parametrize("weighted", [False, True])
def test_resident_pass_equals_task_graph_pass_bit_for_bit(dask_client, pixels, weighted) -> None:
    # 9 blocks (more than split_every=8): the reduction tree has two levels on both paths.
    X = da.from_array(pixels, chunks=(7_001, 3)).persist()
    W = None
    if weighted:
        W = da.from_array(np.linspace(0.1, 3.0, len(pixels)), chunks=(7_001,)).persist()
    blocks = Blocks(X, W)
    ct = _centers_t(pixels)
    graph = map_reduce(blocks, _lloyd_block, _lloyd_combine, ct)
    graph_cost = map_reduce(blocks, _cost_block, _add, ct)
    with hold_blocks(X, W, blocks.offsets) as resident:
        assert resident is not None
        blocks.resident = resident
        held = map_reduce(blocks, _lloyd_block, _lloyd_combine, ct)
        held_cost = map_reduce(blocks, _cost_block, _add, ct)
    np.testing.assert_array_equal(held[0], graph[0])
    np.testing.assert_array_equal(held[1], graph[1])
    assert held[2] == graph[2]
    assert held_cost == graph_cost == graph[2]


def test_an_error_on_a_worker_is_raised_here_and_the_holders_stay(dask_client, pixels) -> None:
    X = da.from_array(pixels, chunks=(20_000, 3)).persist()
    blocks = Blocks(X, None)
    with hold_blocks(X, None, blocks.offsets) as resident:
        blocks.resident = resident
        with pytest.raises(InvalidInputError, match="block at row 20000 refused"):
            map_reduce(blocks, _fail_block, _add)
        assert blocks.resident is resident  # the function failed, not the workers
        ct = _centers_t(pixels)
        assert map_reduce(blocks, _cost_block, _add, ct) == pytest.approx(
            map_reduce(Blocks(X, None), _cost_block, _add, ct), rel=0
        )


def test_unreachable_holders_fall_back_to_task_graphs(dask_client, pixels, caplog) -> None:
    X = da.from_array(pixels, chunks=(20_000, 3)).persist()
    blocks = Blocks(X, None)
    ct = _centers_t(pixels)
    expected = map_reduce(blocks, _lloyd_block, _lloyd_combine, ct)
    resident = hold_blocks(X, None, blocks.offsets)
    assert resident is not None
    # What an actor call returns when its worker is gone (distributed.actor raises OSError).
    resident._holders = [(_GoneActor(), fut, idx) for _, fut, idx in resident._holders]
    blocks.resident = resident
    with caplog.at_level(logging.WARNING, logger="kmflow"):
        got = map_reduce(blocks, _lloyd_block, _lloyd_combine, ct)
    assert blocks.resident is None
    assert "fall back to task graphs" in caplog.text
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[2] == expected[2]


def test_no_holders_without_a_cluster_or_for_unpersisted_blocks(dask_client, pixels) -> None:
    lazy = da.from_array(pixels, chunks=(20_000, 3))
    assert hold_blocks(lazy, None, Blocks(lazy, None).offsets) is None
    persisted = lazy.persist()
    unpersisted_w = da.ones(len(pixels), chunks=(20_000,))
    assert hold_blocks(persisted, unpersisted_w, Blocks(persisted, None).offsets) is None


def test_no_holders_on_local_schedulers(pixels) -> None:
    X = da.from_array(pixels, chunks=(20_000, 3)).persist()  # threads: plain numpy blocks
    assert hold_blocks(X, None, Blocks(X, None).offsets) is None


def test_blocks_move_only_to_even_out_rows_per_thread() -> None:
    threads = {"a": 1, "b": 1}
    assert balance_blocks(["a", "b", "a", "b"], [5] * 4, threads) == {"a": [0, 2], "b": [1, 3]}
    # 4 blocks against 2: one moves; everything on one worker: half of it moves.
    assert balance_blocks(["a", "a", "b", "a", "a", "b"], [5] * 6, threads) == {
        "a": [0, 1, 3],
        "b": [2, 4, 5],
    }
    assert balance_blocks(["a"] * 4, [5] * 4, threads) == {"a": [0, 1], "b": [2, 3]}
    # Uneven blocks: no move that would not lower the highest load; threads count.
    assert balance_blocks(["a", "b"], [9, 1], threads) == {"a": [0], "b": [1]}
    assert balance_blocks(["a"] * 6, [5] * 6, {"a": 2, "b": 1}) == {"a": [0, 1, 2, 3], "b": [4, 5]}


def test_holders_spread_blocks_persisted_on_one_worker(dask_client, pixels) -> None:
    first = sorted(dask_client.scheduler_info()["workers"])[0]
    X = da.from_array(pixels, chunks=(10_000, 3)).persist(workers=[first])
    wait(X)
    assert {w for ws in dask_client.who_has(X).values() for w in ws} == {first}
    blocks = Blocks(X, None)
    ct = _centers_t(pixels)
    with hold_blocks(X, None, blocks.offsets) as resident:
        assert sorted(len(idx) for _, _, idx in resident._holders) == [3, 3]
        blocks.resident = resident
        held = map_reduce(blocks, _lloyd_block, _lloyd_combine, ct)
    graph = map_reduce(Blocks(X, None), _lloyd_block, _lloyd_combine, ct)
    np.testing.assert_array_equal(held[0], graph[0])
    assert held[2] == graph[2]


@pytest.mark.integration
def test_a_multithreaded_worker_maps_its_blocks_in_parallel_with_the_same_result(pixels) -> None:
    from distributed import Client, LocalCluster

    X_np = pixels
    ct = _centers_t(pixels)
    expected = map_reduce(
        Blocks(da.from_array(X_np, chunks=(7_001, 3)), None), _lloyd_block, _lloyd_combine, ct
    )
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=3, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        X = da.from_array(X_np, chunks=(7_001, 3)).persist()
        blocks = Blocks(X, None)
        with hold_blocks(X, None, blocks.offsets) as resident:
            assert resident is not None
            blocks.resident = resident
            seen = map_reduce(blocks, _thread_name_block, _union)
            held = map_reduce(blocks, _lloyd_block, _lloyd_combine, ct)
    assert len(seen) > 1  # the holder ran its 9 blocks on more than one thread
    np.testing.assert_array_equal(held[0], expected[0])
    assert held[2] == expected[2]
