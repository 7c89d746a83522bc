"""Drift of a new batch against the reference statistics stored with a model.

- :func:`batch_statistics`: one distributed pass over the batch under the model's centers:
  weight per cluster (occupancy) and mean squared distance to the nearest center
- :func:`population_stability_index`, :func:`jensen_shannon_distance`: occupancy shift
- :func:`wasserstein_histogram`: shift of a 1-D distribution given as a histogram
- :func:`drift_report`: every statistic against its threshold, and the overall decision

The reference is the dict a model's record stores (``Evaluation.reference_statistics()`` in
:mod:`kmflow.jobs.palette`)::

    {"part": "all" | "eval", "n_pixels": int,
     "cluster_fractions": [k floats summing to 1],
     "mean_sqdist": float,  # weighted mean squared distance to the nearest center
     "channel_histograms": {"space": "srgb", "bins": 256, "counts": [3 lists of 256 ints]}}

Drift is a result, not an error: :func:`drift_report` returns a :class:`DriftReport` whatever
the data; only malformed input raises.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from annotated_types import Gt, Le

from kmflow.errors import InvalidInputError
from kmflow.kernels import _numba
from kmflow.kernels._blocks import Blocks, map_reduce
from kmflow.kernels.dense import _require_finite
from kmflow.kernels.metrics import _block_weights
from kmflow.kernels.validation import check_array, check_centers, check_sample_weight

__all__ = [
    "BatchStatistics",
    "DriftReport",
    "DriftStatistic",
    "DriftThresholds",
    "batch_statistics",
    "drift_report",
    "jensen_shannon_distance",
    "population_stability_index",
    "wasserstein_histogram",
]

#: Order of the statistics in a report; each is also the name of its threshold.
_STATISTICS = (
    "psi",
    "js_distance",
    "sqdist_ratio",
    "wasserstein",
    "feature_psi",
    "feature_wasserstein",
)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class DriftThresholds:
    """Above which value each drift statistic reports drift.

    A statistic drifts when its value is strictly greater than its threshold. Every
    threshold must be positive; ``math.inf`` switches a statistic off (it never fires; for
    ``js_distance``, a distance never above 1, the threshold 1 does).

    The one definition of the thresholds: the kernels take it, and the monitor flow's
    parameters (:class:`kmflow.params.MonitorParams`) take it as a field. Pydantic validates
    it there with the bounds in the annotations (an error names the field, e.g.
    ``thresholds.psi``) and renders each field's docstring as its description;
    ``__post_init__`` checks the same bounds for a plain construction.

    Attributes
    ----------
    psi : float, default 0.2
        Population stability index of the cluster occupancy. The usual reading of PSI is
        below 0.1 "no change", 0.1 to 0.25 "moderate", above 0.25 "significant" [1]_; 0.2
        flags a shift well inside the moderate band. Sampling noise alone gives about
        ``(k - 1) (1 / n_batch + 1 / n_reference)`` for independent rows (below 0.001 for
        k = 16 and 50,000 pixels), far below the default. Pixels of one image are not
        independent, though: a batch of a few images differs from the training collection
        more than its pixel count suggests, so judge thresholds on batches of several
        images.
    js_distance : float in (0, 1], default 0.1
        Jensen-Shannon distance (base 2, in [0, 1]) of the occupancy. For small shifts
        ``JS distance ~ sqrt(PSI / (8 ln 2))``, so 0.1 matches PSI ~ 0.055: the more sensitive
        of the two occupancy statistics with these defaults, and bounded where PSI is not
        (a cluster holding a fraction ``f`` on one side and nothing on the other adds about
        ``f ln(f / eps)`` to PSI, but JS distance never exceeds 1).
    sqdist_ratio : float > 1, default 1.5
        New mean squared distance to the nearest center over the reference one: the batch
        is 50 % farther from the centers (in squared distance) than the data the model was
        measured on. Only an increase drifts: a batch closer to the centers is quantized at
        least as well, which is no reason to retrain (hence a threshold above 1: the
        reference data itself has the ratio 1).
    wasserstein : float, default 8.0
        Largest, over the channels, Wasserstein-1 distance between the batch's and the
        reference's channel histograms, in channel units (sRGB levels 0..255 for images):
        the mass of the channel moved by 8 levels on average, e.g. every pixel 8 levels
        brighter in one channel, or 5 % of the pixels moved by 160 levels.
    feature_psi : float, default 0.25
        Records models: the population stability index of one prepared feature's histogram
        (the reference's bins), any feature above it drifts.
    feature_wasserstein : float, default 0.5
        Records models: the Wasserstein-1 distance of one prepared feature's histogram, in
        the feature's prepared units (standard deviations under the default scaling).

    Raises
    ------
    InvalidInputError
        A threshold that is not a positive number, a ``js_distance`` above 1 or a
        ``sqdist_ratio`` of at most 1.

    References
    ----------
    .. [1] N. Siddiqi, "Credit Risk Scorecards: Developing and Implementing Intelligent
       Credit Scoring", Wiley, 2006 (the PSI bands).
    """

    # Read by pydantic where the class is a field of a parameter model (a plain dict: the
    # kernels do not import pydantic): unknown fields are errors, the field docstrings are
    # the run form's descriptions, and the form shows one line, not this docstring.
    __pydantic_config__: ClassVar[dict[str, Any]] = {
        "extra": "forbid",
        "use_attribute_docstrings": True,
        "json_schema_extra": {
            "description": "When a batch counts as drifted: any statistic above its threshold."
        },
    }

    psi: Annotated[float, Gt(0)] = 0.2
    """Population stability index of cluster occupancy (0.1-0.25: moderate)."""
    js_distance: Annotated[float, Gt(0), Le(1)] = 0.1
    """Jensen-Shannon distance (base 2) of occupancy."""
    sqdist_ratio: Annotated[float, Gt(1)] = 1.5
    """Mean squared distance to the nearest center, batch over reference."""
    wasserstein: Annotated[float, Gt(0)] = 8.0
    """Largest per-channel Wasserstein-1 distance of the channel histograms (sRGB levels)."""
    feature_psi: Annotated[float, Gt(0)] = 0.25
    """Records models: PSI of one prepared feature's histogram."""
    feature_wasserstein: Annotated[float, Gt(0)] = 0.5
    """Records models: Wasserstein-1 of one prepared feature (in its prepared units)."""

    def __post_init__(self) -> None:
        for name in _STATISTICS:
            value = getattr(self, name)
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (real and float(value) > 0):
                raise InvalidInputError(
                    f"drift threshold {name} must be a positive number; got {value!r}"
                )
            object.__setattr__(self, name, float(value))
        if self.js_distance > 1:
            raise InvalidInputError(
                f"drift threshold js_distance must be at most 1; got {self.js_distance!r}"
            )
        if self.sqdist_ratio <= 1:
            raise InvalidInputError(
                f"drift threshold sqdist_ratio must be above 1; got {self.sqdist_ratio!r}"
            )


@dataclass(frozen=True)
class DriftStatistic:
    """One drift statistic of a batch against the reference.

    Attributes
    ----------
    name : str
        One of ``"psi"``, ``"js_distance"``, ``"sqdist_ratio"``, ``"wasserstein"``.
    value : float
        The statistic (``inf`` for a squared-distance ratio over a zero reference).
    threshold : float
    drifted : bool
        ``value > threshold``.
    """

    name: str
    value: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    """The drift statistics of a batch, their thresholds and the overall decision.

    Attributes
    ----------
    statistics : list of DriftStatistic
        In the order ``psi``, ``js_distance``, ``sqdist_ratio``, ``wasserstein``; the last
        is absent when the batch or the reference has no channel histograms.
    drifted : bool
        True when any statistic drifted.
    n_samples : float
        Total sample weight of the batch (its rows, or pixels, when unweighted).
    occupancy : list of float
        Fraction of the batch's weight in each cluster (sums to 1).
    reference_occupancy : list of float
        The reference's cluster fractions, normalised to sum to 1.

    Raises
    ------
    InvalidInputError
        ``drifted`` is not ``any(s.drifted for s in statistics)``, or the two occupancies
        differ in length.
    """

    statistics: list[DriftStatistic]
    drifted: bool
    n_samples: float
    occupancy: list[float]
    reference_occupancy: list[float]

    def __post_init__(self) -> None:
        if self.drifted != any(s.drifted for s in self.statistics):
            raise InvalidInputError(
                f"drifted={self.drifted} contradicts the statistics "
                f"({', '.join(f'{s.name}: {s.drifted}' for s in self.statistics)})"
            )
        if len(self.occupancy) != len(self.reference_occupancy):
            raise InvalidInputError(
                f"occupancy has {len(self.occupancy)} clusters but reference_occupancy has "
                f"{len(self.reference_occupancy)}"
            )

    def statistic(self, name: str) -> DriftStatistic:
        """The statistic called ``name``.

        Raises
        ------
        KeyError
            If the report has no such statistic (``wasserstein`` without histograms).
        """
        for s in self.statistics:
            if s.name == name:
                return s
        raise KeyError(f"no drift statistic {name!r}; have {[s.name for s in self.statistics]}")

    @property
    def fired(self) -> list[str]:
        """Names of the statistics that drifted, in report order."""
        return [s.name for s in self.statistics if s.drifted]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: Python bools, floats and lists.

        ``{"drifted": bool, "n_samples": float, "statistics": {name: {"value", "threshold",
        "drifted"}}, "occupancy": [...], "reference_occupancy": [...]}``. An infinite ratio
        stays ``inf`` (``json.dumps`` writes ``Infinity``, which ``json.loads`` reads back).
        """
        return {
            "drifted": bool(self.drifted),
            "n_samples": float(self.n_samples),
            "statistics": {
                s.name: {
                    "value": float(s.value),
                    "threshold": float(s.threshold),
                    "drifted": bool(s.drifted),
                }
                for s in self.statistics
            },
            "occupancy": [float(v) for v in self.occupancy],
            "reference_occupancy": [float(v) for v in self.reference_occupancy],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftReport:
        """The report :meth:`to_dict` wrote.

        Raises
        ------
        InvalidInputError
            A key is missing or a value has the wrong type.
        """
        try:
            stats = [
                DriftStatistic(
                    name=str(name),
                    value=float(s["value"]),
                    threshold=float(s["threshold"]),
                    drifted=_as_bool(s["drifted"], f"statistics.{name}.drifted"),
                )
                for name, s in d["statistics"].items()
            ]
            return cls(
                statistics=stats,
                drifted=_as_bool(d["drifted"], "drifted"),
                n_samples=float(d["n_samples"]),
                occupancy=[float(v) for v in d["occupancy"]],
                reference_occupancy=[float(v) for v in d["reference_occupancy"]],
            )
        except KeyError as e:
            raise InvalidInputError(f"a drift report needs the key {e.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as e:
            if isinstance(e, InvalidInputError):
                raise
            raise InvalidInputError(f"malformed drift report: {e}") from None


def _as_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise InvalidInputError(f"{name} must be a boolean; got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class BatchStatistics:
    """What a batch looks like under a model's centers; the result of :func:`batch_statistics`.

    Attributes
    ----------
    n_samples : float
        Total sample weight (the number of rows when unweighted).
    cluster_weights : ndarray of float64, shape (n_clusters,)
        Total weight of the rows nearest to each center.
    mean_sqdist : float
        Weighted mean squared distance to the nearest center, in the centers' space.
    channel_counts : ndarray of float64, shape (n_channels, n_bins), or None
        Per-channel histograms on the reference's bin grid (sRGB 0..255, one bin per level,
        for images), or None for data without channel histograms.

    Raises
    ------
    InvalidInputError
        Negative, NaN or infinite values, or arrays of the wrong shape.
    """

    n_samples: float
    cluster_weights: np.ndarray
    mean_sqdist: float
    channel_counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        weights = _nonnegative(self.cluster_weights, "cluster_weights", ndim=1)
        object.__setattr__(self, "cluster_weights", weights)
        if self.channel_counts is not None:
            counts = _nonnegative(self.channel_counts, "channel_counts", ndim=2)
            object.__setattr__(self, "channel_counts", counts)
        for name in ("n_samples", "mean_sqdist"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{name} must be finite and >= 0; got {value!r}")
            object.__setattr__(self, name, value)

    @property
    def n_clusters(self) -> int:
        return int(self.cluster_weights.shape[0])

    @property
    def occupancy(self) -> np.ndarray:
        """Fraction of the weight in each cluster (all zeros for an empty batch)."""
        total = float(self.cluster_weights.sum())
        return self.cluster_weights / total if total > 0 else np.zeros_like(self.cluster_weights)


def _nonnegative(values: Any, name: str, *, ndim: int) -> np.ndarray:
    """``values`` as a float64 array of ``ndim`` dimensions, non-empty, finite and >= 0."""
    try:
        a = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be numeric; got {values!r:.80}") from None
    if a.ndim != ndim or a.size == 0:
        raise InvalidInputError(f"{name} must be a non-empty {ndim}-D array; got shape {a.shape}")
    bad = ~np.isfinite(a) | (a < 0)
    if bad.any():
        raise InvalidInputError(
            f"{name} must be finite and non-negative; {int(bad.sum())} value(s) are not "
            f"(first: {float(a[np.unravel_index(np.argmax(bad), a.shape)])!r})"
        )
    return a


# --------------------------------------------------------------------------- exact sums
# A sum is carried as a tuple of floats whose exact (real-number) sum is the exact sum of
# the values added so far. Partial sums then combine exactly, in any order, so the final
# math.fsum is the correctly rounded sum of every value: the same bits for any chunking.
_Exact = tuple[float, ...]


def _exact(values: list[float]) -> _Exact:
    """Floats whose exact sum is the exact sum of ``values`` (finite); consumes ``values``.

    Each step appends the correctly rounded remainder (``math.fsum`` is correctly rounded),
    which is smaller than the previous one by 2**-52 or more and lies on the grid of the
    smallest input's last bit, so the loop ends: after one or two steps for real data.
    """
    parts: list[float] = []
    try:
        s = math.fsum(values)
        while s != 0.0:
            parts.append(s)
            values.append(-s)
            s = math.fsum(values)
    except OverflowError:
        raise InvalidInputError(
            "a sum of squared distances or weights overflows float64; rescale X or the weights"
        ) from None
    return tuple(parts)


# Block partial: (exact weight per cluster, exact weighted sum of squared distances)
_Partial = tuple[tuple[_Exact, ...], _Exact]


def _batch_block(
    x: np.ndarray, w: np.ndarray | None, offset: int, centers_t: np.ndarray
) -> _Partial:
    _require_finite(x)
    n = x.shape[0]
    k = centers_t.shape[1]
    if n == 0:
        return ((),) * k, ()
    labels = np.empty(n, dtype=np.int32)
    d2 = np.empty(n)
    _numba.assign(x, centers_t, labels, d2)
    if w is None:
        counts = np.bincount(labels, minlength=k)  # integers: exact as floats below 2**53
        exact_counts: tuple[_Exact, ...] = tuple((float(c),) if c else () for c in counts)
        return exact_counts, _exact(d2.tolist())
    wv = _block_weights(w, n, offset)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    ws = wv[order]
    weights = tuple(_exact(ws[bounds[j] : bounds[j + 1]].tolist()) for j in range(k))
    return weights, _exact((wv * d2).tolist())


def _batch_combine(a: _Partial, b: _Partial) -> _Partial:
    weights = tuple(_exact([*wa, *wb]) for wa, wb in zip(a[0], b[0], strict=True))
    return weights, _exact([*a[1], *b[1]])


def batch_statistics(
    X: Any,
    centers: Any,
    *,
    sample_weight: Any = None,
    channel_counts: Any = None,
) -> BatchStatistics:
    """Occupancy and mean squared distance of a batch under a model's centers.

    Parameters
    ----------
    X : array-like or dask.array.Array of shape (n_samples, n_features)
        The batch, in the centers' space (the fit color space for a palette).
    centers : array-like of shape (n_clusters, n_features)
    sample_weight : array-like or dask.array.Array of shape (n_samples,), optional
        Non-negative weights (pixel counts when ``X`` holds unique colors); an integer
        weight ``w`` counts as ``w`` copies of the row.
    channel_counts : array-like of shape (n_channels, n_bins), optional
        The batch's per-channel histograms on the reference's grid (for images: counts of
        each sRGB level 0..255 per channel, whatever the fit space), passed through for the
        Wasserstein statistic. None for data without channel histograms.

    Returns
    -------
    BatchStatistics

    Raises
    ------
    InvalidInputError
        Malformed ``X``, ``centers``, weights or ``channel_counts``; NaN or infinity in
        ``X``; NaN, infinite or negative weights; no rows, or all weights zero.

    Notes
    -----
    One ``compute``: per block, the nearest center of each row (the compiled assignment of
    :mod:`kmflow.kernels.lloyd`), the weight per cluster and the weighted sum of squared
    distances, tree-reduced. The sums are exact (carried as non-overlapping float64 terms and
    rounded once at the end), so the statistics are bit-for-bit the same for any chunking of
    the same rows. Complexity O(n_samples * n_clusters * n_features) for the assignment plus
    O(n_samples log n_samples) for the exact per-cluster sums of weighted data; memory per
    block O(block rows).
    """
    Xd = check_array(X)
    W = check_sample_weight(sample_weight, Xd)
    c = check_centers(centers, None, int(Xd.shape[1]), shape_from=f"X has {Xd.shape[1]} features")
    counts = (
        None if channel_counts is None else _nonnegative(channel_counts, "channel_counts", ndim=2)
    )
    weights, sse = map_reduce(
        Blocks(Xd, W), _batch_block, _batch_combine, np.ascontiguousarray(c.T)
    )
    total = math.fsum(v for parts in weights for v in parts)
    if total <= 0:
        raise InvalidInputError("the batch is empty: sample_weight sums to zero")
    return BatchStatistics(
        n_samples=total,
        cluster_weights=np.array([math.fsum(parts) for parts in weights]),
        mean_sqdist=math.fsum(sse) / total,
        channel_counts=counts,
    )


# --------------------------------------------------------------------------- statistics
def _distribution(values: Any, name: str) -> np.ndarray:
    """``values`` (counts or fractions) normalised to sum to 1."""
    a = _nonnegative(values, name, ndim=1)
    total = float(a.sum())
    if total <= 0:
        raise InvalidInputError(f"{name} sums to zero: no distribution to compare")
    return a / total


def _pair(p: Any, q: Any, p_name: str, q_name: str) -> tuple[np.ndarray, np.ndarray]:
    pn, qn = _distribution(p, p_name), _distribution(q, q_name)
    if pn.shape != qn.shape:
        raise InvalidInputError(
            f"{p_name} has {pn.shape[0]} bins but {q_name} has {qn.shape[0]}: "
            "they must share one grid"
        )
    return pn, qn


def population_stability_index(expected: Any, actual: Any, *, eps: float = 1e-4) -> float:
    """Population stability index ``sum_i (a_i - e_i) ln(a_i / e_i)`` of two distributions.

    Parameters
    ----------
    expected : array-like of shape (n_bins,)
        Reference counts or fractions (normalised to sum to 1).
    actual : array-like of shape (n_bins,)
        New counts or fractions, on the same bins.
    eps : float, default 1e-4
        Floor of every fraction: both distributions are clipped at ``eps`` and renormalised
        before the logarithm, so a bin empty on one side contributes a finite
        ``~ f ln(f / eps)`` (about 2.4 for a cluster holding 30 % on one side and none on
        the other) instead of infinity. Below ``eps`` (1 in 10,000) a bin counts as empty.

    Returns
    -------
    float
        0 for identical distributions, positive otherwise; symmetric in its arguments up to
        the clipping (it is the symmetrised Kullback-Leibler divergence, in nats).

    Raises
    ------
    InvalidInputError
        Not 1-D non-negative finite arrays of one length with positive sums, or ``eps``
        not in (0, 1).
    """
    if not (isinstance(eps, int | float) and 0 < eps < 1):
        raise InvalidInputError(f"eps must be in (0, 1); got {eps!r}")
    e, a = _pair(expected, actual, "expected", "actual")
    e = np.clip(e, eps, None)
    a = np.clip(a, eps, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def jensen_shannon_distance(p: Any, q: Any) -> float:
    """Jensen-Shannon distance (base 2) of two distributions: in [0, 1], a metric.

    ``sqrt(KL(p || m) / 2 + KL(q || m) / 2)`` with ``m = (p + q) / 2`` and logarithms in
    base 2, as :func:`scipy.spatial.distance.jensenshannon` with ``base=2``; 0 for identical
    distributions, 1 for disjoint supports. Empty bins need no floor (``0 log 0 = 0``).

    Parameters
    ----------
    p, q : array-like of shape (n_bins,)
        Counts or fractions on the same bins (each normalised to sum to 1).

    Raises
    ------
    InvalidInputError
        Not 1-D non-negative finite arrays of one length with positive sums.
    """
    pn, qn = _pair(p, q, "p", "q")
    m = (pn + qn) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    js = (kl(pn) + kl(qn)) / 2
    return math.sqrt(min(1.0, max(0.0, js)))


def wasserstein_histogram(p_counts: Any, q_counts: Any, *, bin_width: float = 1.0) -> float:
    """Wasserstein-1 (earth mover's) distance between two histograms on one grid.

    For 1-D distributions ``W1 = integral |F_p(x) - F_q(x)| dx``; with all the mass of a bin
    at its center the CDFs are steps at the bin centers, so ``W1 = bin_width *
    sum_i |F_p(i) - F_q(i)|`` over the cumulative fractions ``F``. Equal to
    :func:`scipy.stats.wasserstein_distance` on the bin centers weighted by the counts.

    Parameters
    ----------
    p_counts, q_counts : array-like of shape (n_bins,)
        Counts (or fractions) per bin; each is normalised to sum to 1.
    bin_width : float, default 1.0
        Width of a bin in the data's units (1 for one bin per sRGB level).

    Returns
    -------
    float
        In the data's units: how far, on average, mass moves to turn one distribution into
        the other (a shift of every value by ``s`` gives ``s``).

    Raises
    ------
    InvalidInputError
        Not 1-D non-negative finite arrays of one length with positive sums, or
        ``bin_width`` not a positive finite number.
    """
    if not (isinstance(bin_width, int | float) and math.isfinite(bin_width) and bin_width > 0):
        raise InvalidInputError(f"bin_width must be a positive finite number; got {bin_width!r}")
    pn, qn = _pair(p_counts, q_counts, "p_counts", "q_counts")
    return float(np.sum(np.abs(np.cumsum(pn) - np.cumsum(qn))) * bin_width)


# --------------------------------------------------------------------------- the report
def _reference_histograms(hist: Any) -> tuple[np.ndarray, float] | None:
    """The reference's channel counts and bin width, or None when it has none."""
    if hist is None:
        return None
    if not isinstance(hist, Mapping) or "counts" not in hist:
        raise InvalidInputError(
            "reference channel_histograms must be a dict with 'counts' (and 'bins', 'space'); "
            f"got {hist!r:.80}"
        )
    counts = _nonnegative(hist["counts"], "reference channel_histograms counts", ndim=2)
    bins = hist.get("bins", counts.shape[1])
    if bins != counts.shape[1]:
        raise InvalidInputError(
            f"reference channel_histograms says bins={bins} but its counts have "
            f"{counts.shape[1]} bins"
        )
    if "range" in hist:
        try:
            lo, hi = (float(v) for v in hist["range"])
        except (TypeError, ValueError):
            lo, hi = math.nan, math.nan
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise InvalidInputError(
                f"reference channel_histograms range must be [lo, hi] with lo < hi; "
                f"got {hist['range']!r}"
            )
        width = (hi - lo) / counts.shape[1]
    elif hist.get("space") == "srgb":
        width = 256.0 / counts.shape[1]
    else:
        width = 1.0
    return counts, width


def _statistic(name: str, value: float, thresholds: DriftThresholds) -> DriftStatistic:
    threshold = float(getattr(thresholds, name))
    return DriftStatistic(name=name, value=value, threshold=threshold, drifted=value > threshold)


def drift_report(
    reference: Mapping[str, Any],
    batch: BatchStatistics,
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Compare a batch with a model's reference statistics.

    Parameters
    ----------
    reference : mapping
        The model record's reference: ``cluster_fractions`` (one per center),
        ``mean_sqdist`` and, optionally, ``channel_histograms`` (``counts`` per channel,
        ``bins``, ``space``; see the module docstring).
    batch : BatchStatistics
        From :func:`batch_statistics` on the new data with the model's centers.
    thresholds : DriftThresholds, optional
        Default ``DriftThresholds()``.

    Returns
    -------
    DriftReport
        ``psi`` and ``js_distance`` of the occupancy (reference first), ``sqdist_ratio``
        (batch over reference) and, when both sides have channel histograms, ``wasserstein``:
        the largest per-channel Wasserstein-1 distance.

    Raises
    ------
    InvalidInputError
        The reference lacks a key or has malformed values; its number of cluster fractions
        is not the batch's number of clusters; the batch is empty (``n_samples == 0``); the
        channel histograms differ in channels or bins, or one channel is empty.

    Notes
    -----
    No computation on Dask: everything here is O(n_clusters + n_channels * n_bins).

    - ``sqdist_ratio`` over a reference ``mean_sqdist`` of 0 (every training row on a
      center) is ``inf`` when the batch's is positive (drift) and 1.0 when it is 0 too.
    - The histogram statistic is omitted when either side has no channel histograms
      (generic tabular data, or a batch computed without them); the decision then rests
      on the other three. The bin width comes from the reference: ``(hi - lo) / bins``
      with a ``range: [lo, hi]`` key, ``256 / bins`` for ``space: "srgb"``, else 1 (the
      distance is then in bins).
    """
    thresholds = DriftThresholds() if thresholds is None else thresholds
    if batch.n_samples <= 0 or float(batch.cluster_weights.sum()) <= 0:
        raise InvalidInputError("the batch is empty (n_samples == 0): nothing to compare")
    for key in ("cluster_fractions", "mean_sqdist"):
        if key not in reference:
            raise InvalidInputError(f"the reference statistics lack {key!r}")
    ref_occ = _distribution(reference["cluster_fractions"], "reference cluster_fractions")
    k = batch.n_clusters
    if ref_occ.shape[0] != k:
        raise InvalidInputError(
            f"the reference has {ref_occ.shape[0]} cluster fractions but the batch was "
            f"assigned to {k} centers: not the same model"
        )
    try:
        ref_sqdist = float(reference["mean_sqdist"])
    except (TypeError, ValueError):
        ref_sqdist = math.nan
    if not (math.isfinite(ref_sqdist) and ref_sqdist >= 0):
        raise InvalidInputError(
            f"reference mean_sqdist must be finite and >= 0; got {reference['mean_sqdist']!r}"
        )
    occ = batch.occupancy
    if ref_sqdist > 0:
        ratio = batch.mean_sqdist / ref_sqdist
    else:
        ratio = math.inf if batch.mean_sqdist > 0 else 1.0
    stats = [
        _statistic("psi", population_stability_index(ref_occ, occ), thresholds),
        _statistic("js_distance", jensen_shannon_distance(ref_occ, occ), thresholds),
        _statistic("sqdist_ratio", ratio, thresholds),
    ]
    ref_hist = _reference_histograms(reference.get("channel_histograms"))
    if ref_hist is not None and batch.channel_counts is not None:
        ref_counts, width = ref_hist
        if ref_counts.shape != batch.channel_counts.shape:
            raise InvalidInputError(
                f"the batch's channel histograms have shape {batch.channel_counts.shape} "
                f"(channels, bins) but the reference's {ref_counts.shape}"
            )
        w1 = 0.0
        for i, (r, b) in enumerate(zip(ref_counts, batch.channel_counts, strict=True)):
            if r.sum() <= 0 or b.sum() <= 0:
                side = "reference" if r.sum() <= 0 else "batch"
                raise InvalidInputError(f"channel {i} of the {side} histograms is empty")
            w1 = max(w1, wasserstein_histogram(r, b, bin_width=width))
        stats.append(_statistic("wasserstein", w1, thresholds))
    return DriftReport(
        statistics=stats,
        drifted=any(s.drifted for s in stats),
        n_samples=batch.n_samples,
        occupancy=[float(v) for v in occ],
        reference_occupancy=[float(v) for v in ref_occ],
    )
