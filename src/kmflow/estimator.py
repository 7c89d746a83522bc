"""``KMeans``: the scikit-learn-style estimator over Dask arrays.

The estimator validates parameters and data, decides whether the data is persisted on the
workers or streamed from its source each pass, and calls the kernels in
:mod:`kmflow.kernels`. It computes on whatever Dask scheduler is current: a
``distributed.Client`` from :func:`kmflow.cluster.connect` when one is open, else Dask's local
threads.
"""

from __future__ import annotations

import logging
import numbers
import time
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin

from kmflow.cluster import memory_budget, scatter_rows
from kmflow.cluster.resources import hold_blocks, is_persisted
from kmflow.config import get_settings
from kmflow.errors import InvalidInputError, NotFittedError
from kmflow.kernels._blocks import Blocks
from kmflow.kernels._random import derive_key
from kmflow.kernels.init import _kmeans_parallel, _kmeans_plusplus, _random_centers
from kmflow.kernels.lloyd import (
    Callback,
    IterationInfo,
    LloydResult,
    _cost_pass,
    _lloyd,
    assign,
    distances,
    tolerance,
)
from kmflow.kernels.validation import (
    DataStats,
    check_array,
    check_centers,
    check_sample_weight,
    data_stats,
)

__all__ = ["KMeans"]

logger = logging.getLogger(__name__)

InitName = Literal["k-means||", "k-means++", "random"]


class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """K-means clustering on Dask: k-means|| initialisation and distributed Lloyd iterations.

    Parameters
    ----------
    n_clusters : int, default 8
        Number of clusters ``k``.
    init : {"k-means||", "k-means++", "random"} or array-like of shape (n_clusters, n_features)
        How the initial centers are chosen. ``"k-means||"`` (default) is the scalable
        k-means++ of Bahmani et al. (``init_rounds + 2`` passes); ``"k-means++"`` is greedy
        k-means++ over all rows (``2k - 1`` passes); ``"random"`` draws ``k`` distinct rows;
        an array gives the centers directly (a warm start from an earlier model).
    oversampling_factor : float, default 2.0
        k-means|| samples about ``oversampling_factor * n_clusters`` candidates per round.
    init_rounds : int, default 5
        k-means|| rounds.
    max_iter : int, default 300
        Maximum number of Lloyd iterations.
    tol : float, default 1e-4
        Relative tolerance on the summed squared center shift, scaled by the mean
        per-feature variance of ``X`` (as scikit-learn). Iterations also stop as soon as no
        label changes.
    random_state : int, numpy Generator or None, default None
        Seeds every random choice; the same seed gives the same centers for any chunking.
    callback : callable, optional
        Called with a :class:`~kmflow.kernels.lloyd.IterationInfo` after each Lloyd
        iteration (progress bars, Prefect progress artifacts).

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        float64, or float32 when ``X`` is float32.
    inertia_ : float
        Weighted sum of squared distances of the samples to their nearest final center.
    n_iter_ : int
        Lloyd iterations run.
    converged_ : bool
        Whether iterations stopped on ``tol`` or unchanged labels rather than ``max_iter``.
    n_features_in_ : int
    seed_ : int
        The 63-bit key every random choice of the fit was drawn from.
    history_ : tuple of IterationInfo
        Per-iteration inertia, shift and seconds.
    persisted_ : bool
        Whether the data was held in worker memory (else streamed from its source each pass).
    init_seconds_, fit_seconds_ : float
        Wall time of the initialisation and of the whole fit.

    Notes
    -----
    Passes over the data in ``fit``: one validation pass (NaN/inf, weights, variance for
    ``tol``), the initialisation's passes, one per Lloyd iteration (two in an iteration that
    leaves a cluster empty), and one for the final inertia unless labels stopped changing.
    Data whose size is at most ``persist_fraction`` (a cluster setting) of the workers' total
    memory is persisted once; larger data is re-read from its source on every pass.
    On a distributed cluster, persisted blocks are held for the fit by one actor per worker
    (:func:`kmflow.cluster.resources.hold_blocks`), so each pass is one call per worker rather
    than a task graph through the scheduler; the results are the same either way.

    Examples
    --------
    >>> import numpy as np
    >>> from kmflow import KMeans
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=float)
    >>> km = KMeans(n_clusters=2, random_state=0).fit(X)
    >>> sorted(km.cluster_centers_.tolist())
    [[1.0, 2.0], [10.0, 2.0]]
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: InitName | Any = "k-means||",
        oversampling_factor: float = 2.0,
        init_rounds: int = 5,
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: int | np.random.Generator | None = None,
        callback: Callback | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.oversampling_factor = oversampling_factor
        self.init_rounds = init_rounds
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.callback = callback

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> None:
        k = self.n_clusters
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise InvalidInputError(f"n_clusters must be an integer >= 1; got {k!r}")
        if not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise InvalidInputError(f"max_iter must be an integer >= 1; got {self.max_iter!r}")
        if not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise InvalidInputError(f"tol must be a number >= 0; got {self.tol!r}")
        if not isinstance(self.init_rounds, numbers.Integral) or self.init_rounds < 1:
            raise InvalidInputError(
                f"init_rounds must be an integer >= 1; got {self.init_rounds!r}"
            )
        if not isinstance(self.oversampling_factor, numbers.Real) or not (
            self.oversampling_factor > 0
        ):
            raise InvalidInputError(
                f"oversampling_factor must be > 0; got {self.oversampling_factor!r}"
            )
        if isinstance(self.init, str) and self.init not in ("k-means||", "k-means++", "random"):
            raise InvalidInputError(
                f"init must be 'k-means||', 'k-means++', 'random' or an array of centers; "
                f"got {self.init!r}"
            )
        if self.callback is not None and not callable(self.callback):
            raise InvalidInputError("callback must be callable")

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError(
                "this KMeans instance is not fitted yet; call fit(X) before using it"
            )

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """Compute k-means clustering.

        Parameters
        ----------
        X : array-like or dask.array.Array of shape (n_samples, n_features)
            Numeric data: float, integer or ``uint8`` pixels (kept as ``uint8``). Any row
            chunking; a Zarr-backed dask array is streamed when it does not fit in memory.
        y : ignored
        sample_weight : array-like or dask.array.Array of shape (n_samples,), optional
            Non-negative weights (e.g. color counts of a histogram). A weighted fit on unique
            rows equals an unweighted fit on the rows repeated.

        Returns
        -------
        self

        Raises
        ------
        InvalidInputError
            Bad parameters; X not 2-D, empty, non-numeric, or containing NaN/inf;
            sample_weight of the wrong length, negative, NaN or all zero; an init array of
            the wrong shape.
        TooFewDistinctPointsError
            ``n_clusters`` exceeds the number of distinct (positively weighted) rows.
        """
        t_start = time.perf_counter()
        self._check_params()
        k = int(self.n_clusters)
        Xd = check_array(X)
        W = check_sample_weight(sample_weight, Xd)
        init_centers = None
        if not isinstance(self.init, str):
            init_centers = check_centers(self.init, k, Xd.shape[1])
        Xd, W, persisted, keep_state = _maybe_persist(Xd, W, X, sample_weight)
        blocks = Blocks(Xd, W)
        # Persisted blocks are held by one actor per worker: each pass is then one direct call
        # per worker instead of a task graph through the scheduler (same results).
        resident = hold_blocks(Xd, W, blocks.offsets) if persisted else None
        blocks.resident = resident
        try:
            stats, result, key, init_seconds = self._fit_blocks(blocks, k, init_centers, keep_state)
        finally:
            if resident is not None:
                resident.close()
        out_dtype = Xd.dtype if Xd.dtype in (np.float32, np.float64) else np.float64
        self.cluster_centers_ = result.centers.astype(out_dtype)
        self.inertia_ = result.inertia
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.history_: tuple[IterationInfo, ...] = result.history
        self.n_features_in_ = int(Xd.shape[1])
        self.seed_ = key
        self.persisted_ = persisted
        self.init_seconds_ = init_seconds
        self.fit_seconds_ = time.perf_counter() - t_start
        logger.info(
            "fit %d clusters on %d rows: %d iterations, converged=%s, inertia=%.6g, %.3fs",
            k,
            stats.n_samples,
            result.n_iter,
            result.converged,
            result.inertia,
            self.fit_seconds_,
        )
        return self

    def _fit_blocks(
        self,
        blocks: Blocks,
        k: int,
        init_centers: np.ndarray | None,
        keep_state: bool,
    ) -> tuple[DataStats, LloydResult, int, float]:
        """Validation pass, initialisation and Lloyd iterations on prepared blocks."""
        stats = data_stats(blocks)
        if stats.n_positive < k:
            raise InvalidInputError(
                f"n_clusters={k} but X has only {stats.n_positive} rows"
                + (" with positive weight" if blocks.sample_weight is not None else "")
            )
        key = derive_key(self.random_state)
        t_init = time.perf_counter()
        if init_centers is not None:
            centers = init_centers
        elif self.init == "k-means||":
            centers = _kmeans_parallel(
                blocks,
                k,
                key=key,
                oversampling_factor=float(self.oversampling_factor),
                n_rounds=int(self.init_rounds),
                keep_state=keep_state,
            )
        elif self.init == "k-means++":
            centers = _kmeans_plusplus(blocks, k, key=key)
        else:
            centers = _random_centers(blocks, k, key=key)
        init_seconds = time.perf_counter() - t_init
        logger.info(
            "initialised %d centers with %s in %.3fs", k, _init_name(self.init), init_seconds
        )
        result = _lloyd(
            blocks,
            centers,
            max_iter=int(self.max_iter),
            tol_abs=tolerance(stats.variance, float(self.tol)),
            callback=self.callback,
        )
        return stats, result, key, init_seconds

    # ------------------------------------------------------------------ use
    def predict(self, X: Any) -> Any:
        """Index of the nearest center for each row.

        Returns
        -------
        labels : ndarray or dask.array.Array of int32, shape (n_samples,)
            A numpy array for in-memory input; a lazy dask array for dask input. Rows with
            NaN/inf raise :class:`~kmflow.errors.InvalidInputError` when computed.
        """
        self._check_fitted()
        Xd = check_array(X, n_features=self.n_features_in_)
        labels = assign(Xd, self.cluster_centers_)
        return labels if isinstance(X, da.Array) else labels.compute()

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """``fit(X)`` then ``predict(X)``."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def transform(self, X: Any) -> Any:
        """Euclidean distance from every row to every center, shape (n_samples, n_clusters).

        A numpy array for in-memory input, a lazy dask array for dask input.
        """
        self._check_fitted()
        Xd = check_array(X, n_features=self.n_features_in_)
        dist = distances(Xd, self.cluster_centers_)
        return dist if isinstance(X, da.Array) else dist.compute()

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Opposite of the (weighted) inertia of ``X`` under the fitted centers.

        Notes
        -----
        One validation pass and one assignment pass.
        """
        self._check_fitted()
        Xd = check_array(X, n_features=self.n_features_in_)
        blocks = Blocks(Xd, check_sample_weight(sample_weight, Xd))
        data_stats(blocks)
        return -_cost_pass(blocks, self.cluster_centers_.astype(np.float64))


def _init_name(init: Any) -> str:
    return init if isinstance(init, str) else "given centers"


def _maybe_persist(
    X: da.Array, W: da.Array | None, X_in: Any, w_in: Any
) -> tuple[da.Array, da.Array | None, bool, bool]:
    """Persist the data on the workers when it fits in ``persist_fraction`` of their memory.

    In-memory input (``X_in`` / ``w_in`` not dask arrays) is scattered to the workers block by
    block rather than embedded in task graphs. Returns the (possibly persisted) arrays,
    whether they were persisted, and whether the k-means|| per-row state (8 bytes a row) fits
    beside them.
    """
    nbytes = int(X.nbytes) + (int(W.nbytes) if W is not None else 0)
    budget = memory_budget() * get_settings().cluster.persist_fraction
    if nbytes > budget:
        logger.info(
            "data (%.1f MiB) exceeds %.1f MiB of worker memory: streaming it each pass",
            nbytes / 2**20,
            budget / 2**20,
        )
        return X, W, False, False
    keep_state = nbytes + 8 * int(X.shape[0]) <= budget
    if is_persisted(X) and (W is None or is_persisted(W)):
        return X, W, True, keep_state  # already on the workers: no persist round trip
    rows = X.chunks[0][0] if X.chunks[0] else 1
    if not isinstance(X_in, da.Array):
        scattered = scatter_rows(np.asarray(X_in).astype(X.dtype, copy=False), rows)
        if scattered is not None:
            X = scattered
    if W is not None and not isinstance(w_in, da.Array):
        scattered = scatter_rows(np.asarray(w_in, dtype=np.float64), rows)
        if scattered is not None:
            W = scattered
    X, W = dask.persist(X, W)
    if W is not None and W.chunks[0] != X.chunks[0]:
        W = W.rechunk((X.chunks[0],))
    return X, W, True, keep_state
