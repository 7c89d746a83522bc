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
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

from kmflow import errors
from kmflow.cluster import memory_budget, scatter_rows
from kmflow.cluster.resources import Placement, hold_blocks, is_persisted, place_on_workers
from kmflow.config import get_settings
from kmflow.errors import InvalidInputError
from kmflow.kernels._blocks import Blocks, map_reduce
from kmflow.kernels._random import derive_key
from kmflow.kernels.init import _kmeans_parallel, _kmeans_plusplus, _random_centers
from kmflow.kernels.lloyd import (
    Callback,
    IterationInfo,
    LloydResult,
    _assign_block,
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

__all__ = ["SKLEARN_EXPECTED_FAILED_CHECKS", "KMeans", "NotFittedError"]

logger = logging.getLogger(__name__)

InitName = Literal["k-means||", "k-means++", "random"]

#: The scikit-learn estimator checks :class:`KMeans` is expected to fail, with the reason: pass
#: it to ``sklearn.utils.estimator_checks.check_estimator(..., expected_failed_checks=...)``
#: (or return it from ``parametrize_with_checks``'s ``expected_failed_checks`` callable).
SKLEARN_EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_sample_weight_equivalence_on_dense_data": (
        "k-means is randomised: the weighted rows and the repeated rows (in another, "
        "shuffled order) draw different initial centers, so the local optimum and the "
        "numbering of the clusters differ; scikit-learn's own KMeans fails it too. From the "
        "same initial centers a weighted fit equals the fit on repeated rows "
        "(tests/test_estimator.py)."
    ),
}


class NotFittedError(errors.NotFittedError, _SklearnNotFittedError):  # type: ignore[misc]
    """:class:`kmflow.errors.NotFittedError` that is also scikit-learn's ``NotFittedError``.

    What :class:`KMeans` raises when used before ``fit``: ``except kmflow.NotFittedError`` and
    ``except sklearn.exceptions.NotFittedError`` both catch it. (It lives here, next to the
    estimator, so that importing :mod:`kmflow.errors` does not import scikit-learn.)
    """


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
    labels_ : ndarray or dask.array.Array of int32, shape (n_samples,)
        Index of the nearest final center of each training row (``predict`` of the training
        data). A numpy array for in-memory ``X`` (one more pass at the end of ``fit``); for a
        dask ``X``, a lazy dask array over ``X``'s source that computes nothing until asked.
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

    Without a distributed client (or with ``dask.config.set(scheduler="threads")``) a fit runs
    in this process on Dask's threads and starts no cluster: small in-memory data is best
    fitted that way.

    A lost worker costs a retry, not the fit: when a pass fails because a worker died, the
    data is placed on the workers again from its source (an in-memory ``X`` is kept here and
    scattered again; a dask ``X`` is persisted again from its graph; block holders are
    recreated) and the pass is retried; a k-means|| initialisation whose kept state was lost
    starts over. The blocks hold the same rows after every placement, so the centers are
    bit-identical to an undisturbed fit's. After
    :data:`~kmflow.cluster.resources.LOST_WORKER_RETRIES` losses in a row, or with no worker
    left for :data:`~kmflow.cluster.resources.WORKER_WAIT_S` seconds,
    :class:`~kmflow.errors.ClusterError` is raised.

    scikit-learn's estimator checks pass (``sklearn.utils.estimator_checks``), except
    ``check_sample_weight_equivalence_on_dense_data``, which scikit-learn's own ``KMeans``
    also fails: see :data:`SKLEARN_EXPECTED_FAILED_CHECKS` for the reason. Sparse input is
    not supported (a dense array is required).

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

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "cluster_centers_")

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
            init_centers = check_centers(
                self.init,
                k,
                Xd.shape[1],
                name="init centers",
                shape_from=f"n_clusters={k}, X has {Xd.shape[1]} features",
            )
        blocks, persisted, keep_state, placement = _place_data(Xd, W, X, sample_weight)
        try:
            stats, result, key, init_seconds = self._fit_blocks(blocks, k, init_centers, keep_state)
            out_dtype = Xd.dtype if Xd.dtype in (np.float32, np.float64) else np.float64
            centers = result.centers.astype(out_dtype)
            labels: np.ndarray | da.Array
            if isinstance(X, da.Array):
                labels = assign(Xd, centers)  # lazy, over the source (nothing kept pinned)
            else:
                labels = _labels_pass(blocks, centers)
        finally:
            if placement is not None:
                placement.close()
        self.cluster_centers_ = centers
        self.labels_ = labels
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
        Xd = check_array(X, n_features=self.n_features_in_, estimator=type(self).__name__)
        labels = assign(Xd, self.cluster_centers_)
        return labels if isinstance(X, da.Array) else labels.compute()

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """``fit(X)``, then the labels of ``X``: ``labels_``, the same as ``predict(X)``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X: Any) -> Any:
        """Euclidean distance from every row to every center, shape (n_samples, n_clusters).

        A numpy array for in-memory input, a lazy dask array for dask input.
        """
        self._check_fitted()
        Xd = check_array(X, n_features=self.n_features_in_, estimator=type(self).__name__)
        dist = distances(Xd, self.cluster_centers_)
        return dist if isinstance(X, da.Array) else dist.compute()

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Opposite of the (weighted) inertia of ``X`` under the fitted centers.

        Notes
        -----
        One validation pass and one assignment pass.
        """
        self._check_fitted()
        Xd = check_array(X, n_features=self.n_features_in_, estimator=type(self).__name__)
        blocks = Blocks(Xd, check_sample_weight(sample_weight, Xd))
        data_stats(blocks)
        return -_cost_pass(blocks, self.cluster_centers_.astype(np.float64))


def _init_name(init: Any) -> str:
    return init if isinstance(init, str) else "given centers"


def _labels_pass(blocks: Blocks, centers: np.ndarray) -> np.ndarray:
    """Nearest-center index of every row of the blocks, as one numpy array.

    Notes
    -----
    One pass (through the block holders when there are some).
    """
    centers_t = np.ascontiguousarray(np.asarray(centers, dtype=np.float64).T)
    return map_reduce(blocks, _labels_block, _concat, centers_t)  # type: ignore[no-any-return]


def _labels_block(
    x: np.ndarray, w: np.ndarray | None, offset: int, centers_t: np.ndarray
) -> np.ndarray:
    return _assign_block(x, centers_t)


def _concat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


def _place_data(
    X: da.Array, W: da.Array | None, X_in: Any, w_in: Any
) -> tuple[Blocks, bool, bool, Placement | None]:
    """Blocks of the data, persisted on the workers when it fits in ``persist_fraction`` of
    their memory.

    In-memory input (``X_in`` / ``w_in`` not dask arrays) is scattered to the workers block by
    block rather than embedded in task graphs. On a distributed client the data is placed
    through :func:`~kmflow.cluster.resources.place_on_workers`, which can place it again
    (scatter the in-memory arrays kept here once more, or persist the dask arrays again from
    their graphs) after a lost worker. Returns the blocks, whether the data was persisted,
    whether the k-means|| per-row state (8 bytes a row) fits beside it, and the placement
    (None without a distributed client: nothing to recover).
    """
    nbytes = int(X.nbytes) + (int(W.nbytes) if W is not None else 0)
    budget = memory_budget() * get_settings().cluster.persist_fraction
    if nbytes > budget:
        logger.info(
            "data (%.1f MiB) exceeds %.1f MiB of worker memory: streaming it each pass",
            nbytes / 2**20,
            budget / 2**20,
        )
        # Nothing to place; a pass that lost a worker is simply run again.
        placed = place_on_workers(lambda: (X, W), hold=None)
        streamed = None if placed is None else placed[0]
        return Blocks(X, W, placement=streamed), False, False, streamed
    keep_state = nbytes + 8 * int(X.shape[0]) <= budget
    if is_persisted(X) and (W is None or is_persisted(W)):

        def place() -> tuple[da.Array, da.Array | None]:
            return X, W  # already on the workers: no persist round trip

    else:
        rows = X.chunks[0][0] if X.chunks[0] else 1
        x_np = None if isinstance(X_in, da.Array) else np.asarray(X_in).astype(X.dtype, copy=False)
        w_np = None if W is None or isinstance(w_in, da.Array) else np.asarray(w_in, np.float64)

        def place() -> tuple[da.Array, da.Array | None]:
            Xp, Wp = X, W
            if x_np is not None:
                scattered = scatter_rows(x_np, rows)
                if scattered is not None:
                    Xp = scattered
            if w_np is not None:
                scattered = scatter_rows(w_np, rows)
                if scattered is not None:
                    Wp = scattered
            Xp, Wp = dask.persist(Xp, Wp)
            if Wp is not None and Wp.chunks[0] != Xp.chunks[0]:
                Wp = Wp.rechunk((Xp.chunks[0],))
            return Xp, Wp

    placed = place_on_workers(place, hold=hold_blocks)
    if placed is None:  # local scheduler, or inside a worker task: no holders
        Xp, Wp = place()
        return Blocks(Xp, Wp), True, keep_state, None
    placement, Xp, Wp, resident = placed
    blocks = Blocks(Xp, Wp, placement=placement)
    blocks.resident = resident
    return blocks, True, keep_state, placement
