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
    OutputConflictError,
    SourceNotFoundError,
    StorageError,
    StoreBusyError,
    StoreCorruptError,
    StoreNotFoundError,
    TooFewDistinctPointsError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kmflow.estimator import KMeans
    from kmflow.kernels.lloyd import IterationInfo

# The estimator (scikit-learn, dask.array) is imported on first use, so that a command that
# does not need it (``kmflow quantize`` of one photo) does not pay for it.
_LAZY = {"KMeans": "kmflow.estimator", "IterationInfo": "kmflow.kernels.lloyd"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kmflow' has no attribute {name!r}")


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
    "OutputConflictError",
    "SourceNotFoundError",
    "StorageError",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreNotFoundError",
    "TooFewDistinctPointsError",
    "__version__",
]
