"""The one promotion rule every training flow applies."""

from __future__ import annotations

import math

from kmflow.core.promotion import promotion_decision


def test_policies_and_the_if_better_rule() -> None:
    assert promotion_decision("never", "db", 0.1, 0.9, 3) == (
        False,
        "promotion disabled (promote='never')",
    )
    assert promotion_decision("always", "db", 9.0, 0.1, 3)[0] is True
    assert promotion_decision("if-better", "db", 0.5, None, None) == (True, "no champion yet")
    better, reason = promotion_decision("if-better", "db", 0.5, 0.6, 3)
    assert better
    assert reason == "db 0.5 <= champion v3's 0.6"
    assert promotion_decision("if-better", "db", 0.6, 0.6, 3)[0] is True  # ties: the newer
    worse, reason = promotion_decision("if-better", "db", 0.7, 0.6, 3)
    assert not worse
    assert reason == "db 0.7 > champion v3's 0.6"
    # A champion that could not be measured on this data never blocks the challenger.
    assert promotion_decision("if-better", "db", 0.7, math.nan, 3)[0] is True
