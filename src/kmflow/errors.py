"""Every exception and warning kmflow raises.

One root, :class:`KmflowError`; each subclass also inherits the builtin a caller would
naturally catch, so ``except ValueError`` keeps working around kmflow calls.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "InvalidInputError",
    "KmflowError",
    "NotFittedError",
    "TooFewDistinctPointsError",
]


class KmflowError(Exception):
    """Root of every error raised by kmflow."""


class InvalidInputError(KmflowError, ValueError):
    """Input data or parameters are malformed (shape, dtype, NaN/inf, bounds)."""


class TooFewDistinctPointsError(InvalidInputError):
    """More clusters were requested than the data has distinct (positively weighted) points."""

    def __init__(self, n_clusters: int, n_distinct: int) -> None:
        self.n_clusters = n_clusters
        self.n_distinct = n_distinct
        super().__init__(
            f"n_clusters={n_clusters} but only {n_distinct} distinct points "
            "(with positive weight) in X; lower n_clusters"
        )


class NotFittedError(KmflowError, AttributeError):
    """A fitted attribute or method was used before ``fit``."""


class ClusterError(KmflowError, RuntimeError):
    """A Dask cluster could not be created or reached."""
