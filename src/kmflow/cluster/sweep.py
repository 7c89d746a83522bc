"""A k sweep on the current cluster, with the data placed on the workers once.

:func:`sweep_fit` is :func:`kmflow.kernels.sweep.sweep` with the data placement of
:class:`kmflow.KMeans`: on a distributed client the data is persisted (or scattered, for
in-memory input) on the workers once when it fits in their memory, held there by one actor
per worker so each pass is one call per worker, and placed again if a worker is lost; larger
data is streamed from its source every pass. Without a client it runs on Dask's local
scheduler, exactly as the kernel does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kmflow.kernels.sweep import SweepResult, sweep
from kmflow.kernels.validation import check_array, check_sample_weight

__all__ = ["sweep_fit"]


def sweep_fit(
    X: Any, ks: str | int | Sequence[int], *, sample_weight: Any = None, **kwargs: Any
) -> SweepResult:
    """Fit and score every k of ``ks`` on the current cluster (see
    :func:`kmflow.kernels.sweep.sweep` for the parameters and the result).

    Notes
    -----
    The same placement as :meth:`kmflow.KMeans.fit` (``kmflow.estimator._place_data``):
    whether the data is held in worker memory, and whether k-means||'s per-row state fits
    beside it (``keep_state``), follow the cluster's ``persist_fraction`` setting. The
    result is the same number either way; only where the blocks live changes.
    """
    from kmflow.estimator import _place_data  # the estimator's placement, not duplicated

    if "keep_state" in kwargs:
        raise TypeError("keep_state follows the placement; it cannot be given to sweep_fit")
    Xd = check_array(X)
    W = check_sample_weight(sample_weight, Xd)
    blocks, _persisted, keep_state, placement = _place_data(Xd, W, X, sample_weight)
    try:
        return sweep(blocks, ks, keep_state=keep_state, **kwargs)
    finally:
        if placement is not None:
            placement.close()
