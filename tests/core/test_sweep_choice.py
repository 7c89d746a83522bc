"""Choosing k from a sweep's measurements: each rule, ties, the floor, the runner-up."""

from __future__ import annotations

import math

import pytest

from kmflow.core.sweep import choose_k
from kmflow.errors import InvalidInputError

# The telecom study's Davies-Bouldin values for k = 2..12.
STUDY_DB = [0.63, 0.74, 0.89, 0.91, 0.88, 0.94, 1.00, 0.99, 0.88, 1.09, 1.09]


def _sweep(db: list[float]) -> list[dict[str, float]]:
    return [
        {
            "k": k,
            "davies_bouldin": v,
            "calinski_harabasz": 100.0 - abs(k - 5),
            "silhouette": 0.5 - 0.01 * abs(k - 7),
            "inertia": 1000.0 / k**2 + 10.0,
        }
        for k, v in zip(range(2, 2 + len(db)), db, strict=True)
    ]


def test_db_takes_the_lowest_and_ties_go_to_the_smaller_k() -> None:
    choice = choose_k(_sweep(STUDY_DB), "db")
    assert (choice.k, choice.runner_up) == (2, 3)
    # With the study's floor of k >= 4, k = 6 and k = 10 tie at 0.88: the smaller wins.
    floor = choose_k(_sweep(STUDY_DB), "db", min_k=4)
    assert (floor.k, floor.runner_up) == (6, 10)
    assert "runner-up k=10" in floor.describe()


def test_ch_and_silhouette_take_the_highest() -> None:
    assert choose_k(_sweep(STUDY_DB), "ch").k == 5
    assert choose_k(_sweep(STUDY_DB), "silhouette").k == 7


def test_elbow_finds_the_knee_of_a_convex_curve() -> None:
    rows = [
        {"k": k, "inertia": v}
        for k, v in zip(range(1, 9), [100, 40, 15, 12, 10, 9, 8, 7], strict=True)
    ]
    assert choose_k(rows, "elbow").k == 3


def test_undefined_scores_never_win() -> None:
    rows = _sweep([math.nan, 0.9, 0.7])
    assert choose_k(rows, "db").k == 4
    with pytest.raises(InvalidInputError, match="no k of the sweep has a defined"):
        choose_k(_sweep([math.nan, math.nan]), "db")
    with pytest.raises(InvalidInputError, match="unknown rule"):
        choose_k(rows, "gap")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="at least 9"):
        choose_k(rows, "db", min_k=9)
