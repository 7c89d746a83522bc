"""Choosing k from a sweep: the rule, the chosen k and the runner-up.

A sweep (:func:`kmflow.kernels.sweep.sweep`) fits every k of a range and measures each.
:func:`choose_k` applies one rule to those measurements:

============  ==========================================================================
rule          chooses
============  ==========================================================================
``db``        the lowest Davies-Bouldin index (the default, as the telecom study did)
``ch``        the highest Calinski-Harabasz index
``silhouette``  the highest (sampled) silhouette
``elbow``     the knee of inertia against k, by the Kneedle method (``kneed``; convex,
              decreasing); when no knee is found, the k with the largest second difference
============  ==========================================================================

Ties go to the smaller k. ``min_k`` is a business floor (the study required k >= 4): smaller
ks are measured and reported but never chosen. The runner-up is the best other k under the
same rule (for ``elbow``: the k with the next largest distance from the chord of the curve).
Undefined scores (NaN) never win.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from kmflow.errors import InvalidInputError

__all__ = ["RULES", "Choice", "SelectRule", "choose_k"]

SelectRule = Literal["db", "ch", "silhouette", "elbow"]
RULES: tuple[str, ...] = ("db", "ch", "silhouette", "elbow")

# rule -> (the sweep's metric name, +1 when higher is better)
_METRIC = {
    "db": ("davies_bouldin", -1.0),
    "ch": ("calinski_harabasz", 1.0),
    "silhouette": ("silhouette", 1.0),
    "elbow": ("inertia", 0.0),
}


@dataclass(frozen=True)
class Choice:
    """The k a rule chose.

    Attributes
    ----------
    k : int
    rule : {"db", "ch", "silhouette", "elbow"}
    metric : str
        The sweep measurement the rule reads.
    runner_up : int or None
        The best other eligible k (None when there is only one).
    scores : dict of int to float
        The rule's score per k (higher is better; Davies-Bouldin negated; for the elbow the
        normalised distance below the chord).
    """

    k: int
    rule: SelectRule
    metric: str
    runner_up: int | None
    scores: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "rule": self.rule,
            "metric": self.metric,
            "runner_up": self.runner_up,
        }

    def describe(self) -> str:
        """One line: what was chosen, by which rule, and the runner-up."""
        what = {
            "db": "lowest Davies-Bouldin",
            "ch": "highest Calinski-Harabasz",
            "silhouette": "highest silhouette",
            "elbow": "knee of the inertia curve (Kneedle)",
        }[self.rule]
        runner = f"; runner-up k={self.runner_up}" if self.runner_up is not None else ""
        return f"k={self.k} ({what}{runner})"


def _elbow_scores(ks: list[int], inertia: list[float]) -> tuple[int | None, dict[int, float]]:
    """The Kneedle knee and every k's normalised distance below the chord."""
    x = np.asarray(ks, dtype=float)
    y = np.asarray(inertia, dtype=float)
    span_x = x.max() - x.min()
    span_y = y.max() - y.min()
    if span_x <= 0 or span_y <= 0:
        return None, dict.fromkeys(ks, 0.0)
    xn = (x - x.min()) / span_x
    yn = (y - y.min()) / span_y
    # For a decreasing convex curve, Kneedle's difference curve is (1 - xn) - yn.
    diff = (1.0 - xn) - yn
    scores = {k: float(d) for k, d in zip(ks, diff, strict=True)}
    knee: int | None = None
    try:
        from kneed import KneeLocator

        found = KneeLocator(x, y, curve="convex", direction="decreasing", online=False).knee
        knee = None if found is None else round(float(found))
    except ImportError:  # pragma: no cover - kneed is a dependency
        knee = None
    return knee, scores


def choose_k(
    sweep: Mapping[int, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    rule: SelectRule = "db",
    *,
    min_k: int | None = None,
) -> Choice:
    """Apply `rule` to a sweep's measurements.

    Parameters
    ----------
    sweep : mapping of k to measurements, or a list of measurements with a ``"k"`` key
        Each with ``inertia``, ``davies_bouldin``, ``calinski_harabasz`` and
        ``silhouette`` (what :meth:`kmflow.kernels.sweep.SweepResult.to_dict` lists).
    rule : {"db", "ch", "silhouette", "elbow"}, default "db"
    min_k : int, optional
        Smallest k that may be chosen.

    Raises
    ------
    InvalidInputError
        An unknown rule, no k at or above `min_k`, or no k with a defined score.
    """
    if rule not in _METRIC:
        raise InvalidInputError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    rows = (
        {int(k): dict(v) for k, v in sweep.items()}
        if isinstance(sweep, Mapping)
        else {int(r["k"]): dict(r) for r in sweep}
    )
    eligible = sorted(k for k in rows if min_k is None or k >= min_k)
    if not eligible:
        raise InvalidInputError(f"no k of the sweep ({sorted(rows)}) is at least {min_k}")
    metric, sign = _METRIC[rule]
    if rule == "elbow":
        ks = sorted(rows)
        knee, all_scores = _elbow_scores(ks, [float(rows[k]["inertia"]) for k in ks])
        scores = {k: all_scores[k] for k in eligible}
        ranked = sorted(eligible, key=lambda k: (-scores[k], k))
        if knee is not None and knee in scores:
            ranked.remove(knee)
            ranked.insert(0, knee)
    else:
        scores = {}
        for k in eligible:
            value = rows[k].get(metric)
            value = math.nan if value is None else float(value)
            scores[k] = sign * value
        defined = [k for k in eligible if math.isfinite(scores[k])]
        if not defined:
            raise InvalidInputError(f"no k of the sweep has a defined {metric}")
        ranked = sorted(defined, key=lambda k: (-scores[k], k))
    return Choice(
        k=ranked[0],
        rule=rule,
        metric=metric,
        runner_up=ranked[1] if len(ranked) > 1 else None,
        scores=scores,
    )
