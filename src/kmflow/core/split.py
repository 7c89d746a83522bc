"""The train / held-out split: one definition for the flows' parameters and the library.

:class:`Split` says *what* is held out (a share, by image or by row, and a seed); the kernels
(:func:`kmflow.kernels.split.holdout_items`, :func:`kmflow.kernels.split.holdout_rows`) do the
math. It is a frozen pydantic model, so a flow's parameter model takes it as a field (Prefect
validates it and renders it in the run form) and the library takes the same object.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Split", "active_split"]


class Split(BaseModel):
    """A seeded train / held-out split.

    Both sides are deterministic functions of the seed and of what is split, the same for
    any chunking or order of ingestion.

    Attributes
    ----------
    fraction : float in [0, 1), default 0
        Share held out for evaluation; 0 holds out nothing (train and evaluate on
        everything).
    by : {"image", "row"}, default "image"
        "image" holds out whole images (chosen by their content hash), "row" single rows
        (chosen by their global row index: pixels of the image job, records of a job over
        tables, which always splits by row).
    seed : int, default 0
        Seed of the split.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share held out for evaluation; 0 trains and evaluates on everything.",
    )
    by: Literal["image", "row"] = Field(
        default="image",
        description="Hold out whole images (by content hash) or single rows (by row index).",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the split.")

    @property
    def holds_out(self) -> bool:
        """Whether anything is held out (``fraction > 0``)."""
        return self.fraction > 0.0


def active_split(split: Split | None) -> Split | None:
    """``split`` if it holds anything out, else ``None`` (no split: everything is used)."""
    if split is None or not split.holds_out:
        return None
    return split
