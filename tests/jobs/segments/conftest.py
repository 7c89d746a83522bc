"""Synthetic customer tables with a planted segment structure (generated, never downloaded)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

CHURN_RATES = np.array([0.05, 0.5, 0.9, 0.3])
PLANS = np.array(["basic", "plus", "gold", "team"])


def customers(n: int = 2400, k: int = 4, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A customer table: numbers (one with blank cells), a yes/no flag, a categorical, an id,
    a high-cardinality name, and a churn target whose rate depends on the segment."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, k, n)
    centers = np.array([[-6.0, 0.0, 4.0], [0.0, 6.0, -3.0], [6.0, 0.0, 2.0], [0.0, -6.0, -4.0]])
    x = centers[seg % 4] + rng.normal(0, 1, (n, 3))
    df = pd.DataFrame(
        {
            "customer id": [f"C{i:06d}" for i in range(n)],
            "name": [f"person {rng.integers(10**9)}" for _ in range(n)],
            "monthly $": np.round(x[:, 0] * 10 + 50, 2),
            "calls (per day)": np.round(x[:, 1], 3),
            "tenure": np.round(x[:, 2] + 10, 3),
            "roaming": np.where(seg % 2 == 0, "yes", "no"),
            "plan": PLANS[seg % 4],
            "churn": (rng.random(n) < CHURN_RATES[seg % 4]).astype(int),
        }
    )
    blanks = rng.choice(n, 25, replace=False)
    df["tenure"] = df["tenure"].astype(object)
    df.loc[blanks, "tenure"] = ""
    return df, seg


@pytest.fixture(scope="session")
def make_customers() -> Callable[..., tuple[pd.DataFrame, np.ndarray]]:
    """:func:`customers`, for tests."""
    return customers
