"""The promotion rule: whether a new model version becomes the champion.

Every training flow measures the challenger and the champion on the same evaluation data
with one metric where lower is better (held-out inertia per pixel or mean ΔE for palettes,
held-out Davies-Bouldin for segment models), then applies :func:`promotion_decision`:

- ``"never"``: never promote; ``"always"``: always promote;
- ``"if-better"``: promote when there is no champion, when the champion could not be
  measured (NaN), or when the challenger is not worse; ties promote (the newer model wins).
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["PromotePolicy", "promotion_decision"]

PromotePolicy = Literal["if-better", "always", "never"]


def promotion_decision(
    policy: str,
    metric: str,
    challenger: float | None,
    champion: float | None,
    champion_version: int | None,
) -> tuple[bool, str]:
    """Whether the challenger becomes the champion, and the reason in one line.

    Parameters
    ----------
    policy : {"if-better", "always", "never"}
    metric : str
        Name of the compared metric (lower is better), for the reason.
    challenger, champion : float or None
        The metric of each on the same data; ``champion`` None when there is no champion.
    champion_version : int or None
        The champion's version, for the reason.
    """
    if policy == "never":
        return False, "promotion disabled (promote='never')"
    if policy == "always":
        return True, "promote='always'"
    if champion_version is None or champion is None:
        return True, "no champion yet"
    new = math.nan if challenger is None else float(challenger)
    old = float(champion)
    if math.isnan(old) or new <= old * (1 + 1e-12):
        return True, f"{metric} {new:.6g} <= champion v{champion_version}'s {old:.6g}"
    return False, f"{metric} {new:.6g} > champion v{champion_version}'s {old:.6g}"
