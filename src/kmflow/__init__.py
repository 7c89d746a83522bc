"""kmflow: k-means clustering as a production workflow on Dask.

The public names are the estimator, its per-iteration record and the error types; the math
lives in :mod:`kmflow.kernels`, Dask clusters in :mod:`kmflow.cluster`, settings in
:mod:`kmflow.config`.
"""

from importlib.metadata import PackageNotFoundError, version

from kmflow.errors import (
    ClusterError,
    ImageDecodeError,
    InvalidInputError,
    KmflowError,
    ModelCorruptError,
    ModelNotFoundError,
    NotFittedError,
    SourceNotFoundError,
    StorageError,
    StoreCorruptError,
    StoreNotFoundError,
    TooFewDistinctPointsError,
)
from kmflow.estimator import KMeans
from kmflow.kernels.lloyd import IterationInfo

try:
    __version__ = version("kmflow")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ClusterError",
    "ImageDecodeError",
    "InvalidInputError",
    "IterationInfo",
    "KMeans",
    "KmflowError",
    "ModelCorruptError",
    "ModelNotFoundError",
    "NotFittedError",
    "SourceNotFoundError",
    "StorageError",
    "StoreCorruptError",
    "StoreNotFoundError",
    "TooFewDistinctPointsError",
    "__version__",
]
