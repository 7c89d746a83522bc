"""Map a function over the row blocks of a Dask array and tree-reduce the results.

This is the MapReduce skeleton every pass of kmflow uses: one task per row block (the map and
combiner), then a tree of ``combine`` tasks (the reduce), then a single ``dask.compute`` on
whatever scheduler is current. Block offsets (the global index of a block's first row) are passed
to the map function so per-row randomness can be keyed on the global row index, which makes
results independent of the chunking.

When the blocks are persisted on a distributed cluster, the caller may attach a
:class:`Resident` runner (see :func:`kmflow.cluster.resources.hold_blocks`): a pass is then one
direct call to each worker holding blocks, and the same tree of ``combine`` calls runs here,
so the result is the same number; only the per-pass scheduling cost goes.

When the blocks were placed on the workers by a :class:`Placement` (see
:func:`kmflow.cluster.resources.place_on_workers`), a pass that fails because a worker was lost
is retried after the placement has put the data on the workers again. The blocks hold the same
rows after every placement, so the retried pass returns the same number.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import dask
import dask.array as da
import numpy as np

__all__ = ["Blocks", "StatesLost", "map_persist_reduce", "map_reduce"]

T = TypeVar("T")


class Resident(Protocol):
    """Something that maps a block function over blocks held in worker memory."""

    @property
    def failure(self) -> BaseException | None:
        """Why the last ``map`` returned None (or None)."""

    def map(self, func: Callable[..., Any], *args: Any) -> list[Any] | None:
        """``func(x, w, offset, *args)`` for every block, in order; None if unavailable."""


class Placement(Protocol):
    """Where the blocks live on a cluster, and how to put them there again."""

    def recover(
        self, exc: BaseException | None
    ) -> tuple[da.Array, da.Array | None, Resident | None] | None:
        """The data placed again after ``exc`` if it means a lost worker, else None."""

    def compute(self, obj: Any) -> Any:
        """Compute one delayed object on the cluster."""

    def succeeded(self) -> None:
        """A pass completed."""


class StatesLost(Exception):
    """Per-block states kept between passes were lost with a worker; the data was placed again.

    Raised by :func:`map_persist_reduce` (and :func:`map_reduce` with ``states``) after a
    recovery: the caller starts its stateful computation over on the new placement.
    """


class Blocks:
    """Row blocks of ``X`` (and of the optional weights) with their global offsets.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features)
        Must have a single chunk along the feature axis.
    sample_weight : dask.array.Array of shape (n_samples,) or None
        Must share ``X``'s row chunks.

    placement : Placement, optional
        Where the blocks were placed on a cluster; lets a pass that lost a worker be retried.

    Attributes
    ----------
    resident : Resident or None
        Set by the caller to run passes on blocks held in worker memory (default None: every
        pass is a task graph).
    """

    def __init__(
        self, X: da.Array, sample_weight: da.Array | None, placement: Placement | None = None
    ) -> None:
        self._bind(X, sample_weight)
        self.resident: Resident | None = None
        self.placement = placement

    def _bind(self, X: da.Array, sample_weight: da.Array | None) -> None:
        if len(X.chunks[1]) != 1:
            raise ValueError("X must have a single chunk along the feature axis")
        self.X = X
        self.sample_weight = sample_weight
        self.xs = list(X.to_delayed(optimize_graph=True).ravel())
        if sample_weight is not None:
            if sample_weight.chunks[0] != X.chunks[0]:
                raise ValueError("sample_weight must share X's row chunks")
            self.ws: list[Any] = list(sample_weight.to_delayed(optimize_graph=True).ravel())
        else:
            self.ws = [None] * len(self.xs)
        sizes = np.asarray(X.chunks[0], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        self.sizes = sizes.tolist()

    def __len__(self) -> int:
        return len(self.xs)

    def recover(self, exc: BaseException) -> bool:
        """After a failed pass: whether the data was placed again (then retry the pass).

        False without a placement or when ``exc`` is not a lost worker. Raises
        :class:`~kmflow.errors.ClusterError` when the placement gives up.
        """
        if self.placement is None:
            return False
        placed = self.placement.recover(exc)
        if placed is None:
            return False
        X, sample_weight, resident = placed
        if X.chunks[0] != self.X.chunks[0]:
            raise ValueError("the data was placed again with other row blocks")
        self._bind(X, sample_weight)
        self.resident = resident
        return True

    def compute(self, obj: Any) -> Any:
        """``obj`` computed: on the placement's cluster, or on the current scheduler."""
        if self.placement is not None:
            return self.placement.compute(obj)
        (result,) = dask.compute(obj)
        return result

    def succeeded(self) -> None:
        """A pass completed (the placement's count of recoveries in a row restarts)."""
        if self.placement is not None:
            self.placement.succeeded()


def map_reduce(
    blocks: Blocks,
    func: Callable[..., T],
    combine: Callable[[T, T], T],
    *args: Any,
    states: list[Any] | None = None,
    split_every: int = 8,
) -> T:
    """Apply ``func(x_block, w_block, offset, *args)`` to every block and reduce with ``combine``.

    Returns the reduced value, computed. With ``states`` (from :func:`map_persist_reduce`),
    each block's state is passed too: ``func(x_block, w_block, offset, state, *args)``.

    Raises
    ------
    StatesLost
        With ``states``, when a worker was lost and the data placed again (the states went
        with it).

    Notes
    -----
    Exactly one ``dask.compute`` call, on the current scheduler; or, with ``blocks.resident``
    set and no ``states``, one call to each worker holding blocks, the reduction then running
    here over the same tree. Blocks with zero rows are passed to ``func`` like any other, so
    ``func`` must return a neutral value for them. ``combine`` must be associative; the tree
    shape depends only on the number of blocks. A pass that loses a worker is run again once
    the blocks' placement has put the data back (see :meth:`Blocks.recover`).
    """
    while True:
        try:
            result = _map_reduce_once(blocks, func, combine, args, states, split_every)
        except Exception as exc:
            if not blocks.recover(exc):
                raise
            if states is not None:
                raise StatesLost("a worker holding per-block states was lost") from exc
            continue
        blocks.succeeded()
        return result


def _map_reduce_once(
    blocks: Blocks,
    func: Callable[..., T],
    combine: Callable[[T, T], T],
    args: tuple[Any, ...],
    states: list[Any] | None,
    split_every: int,
) -> T:
    if states is None and blocks.resident is not None:
        resident = blocks.resident
        parts = resident.map(func, *args)
        if parts is not None:
            return _reduce_now(parts, combine, split_every)
        blocks.resident = None  # unreachable workers: task graphs from now on
        if blocks.placement is not None and resident.failure is not None:
            raise resident.failure  # placed data: map_reduce places it again and retries
    f = dask.delayed(func, pure=True)
    if states is None:
        level = [
            f(x, w, off, *args)
            for x, w, off in zip(blocks.xs, blocks.ws, blocks.offsets, strict=True)
        ]
    else:
        level = [
            f(x, w, off, s, *args)
            for x, w, off, s in zip(blocks.xs, blocks.ws, blocks.offsets, states, strict=True)
        ]
    return blocks.compute(_tree(level, combine, split_every))  # type: ignore[no-any-return]


def map_persist_reduce(
    blocks: Blocks,
    func: Callable[..., tuple[Any, T]],
    combine: Callable[[T, T], T],
    states: list[Any],
    *args: Any,
    split_every: int = 8,
) -> tuple[list[Any], T]:
    """Like :func:`map_reduce`, with a per-block state kept in (worker) memory between calls.

    ``func(x_block, w_block, offset, state, *args)`` returns ``(new_state, partial)``. The new
    states are persisted (with a distributed client they stay on the workers, next to their
    blocks) and returned as a list of delayed values for the next call; the partials are
    reduced with ``combine`` and the reduction is returned, computed.

    Raises
    ------
    StatesLost
        A worker was lost and the data placed again: the states are gone, start over.

    Notes
    -----
    One ``persist`` and one ``compute`` (of the small reduction only).
    """
    if len(states) != len(blocks):
        raise ValueError("one state per block is needed")
    f = dask.delayed(func, pure=True, nout=2)
    try:
        outs = [
            f(x, w, off, s, *args)
            for x, w, off, s in zip(blocks.xs, blocks.ws, blocks.offsets, states, strict=True)
        ]
        outs = list(dask.persist(*outs))
        new_states = [o[0] for o in outs]
        result = blocks.compute(_tree([o[1] for o in outs], combine, split_every))
    except Exception as exc:
        if blocks.recover(exc):
            raise StatesLost("a worker holding per-block states was lost") from exc
        raise
    blocks.succeeded()
    return new_states, result


def _tree(level: list[Any], combine: Callable[[T, T], T], split_every: int) -> Any:
    """A delayed tree reduction of ``level`` with ``combine``, ``split_every`` at a time."""
    c = dask.delayed(_combine_group, pure=True)
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), split_every):
            group = level[i : i + split_every]
            nxt.append(c(combine, *group) if len(group) > 1 else group[0])
        level = nxt
    return level[0]


def _reduce_now(level: list[T], combine: Callable[[T, T], T], split_every: int) -> T:
    """What :func:`_tree` computes, computed here: the same groups, in the same order."""
    while len(level) > 1:
        level = [
            _combine_group(combine, *level[i : i + split_every])
            for i in range(0, len(level), split_every)
        ]
    return level[0]


def _combine_group(combine: Callable[[T, T], T], *items: T) -> T:
    return functools.reduce(combine, items)
