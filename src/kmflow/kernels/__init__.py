"""Pure k-means math on numpy and Dask arrays: no I/O, no scheduler choice, no Prefect.

- :mod:`kmflow.kernels.init`: k-means|| (default), greedy k-means++ and random initial centers
- :mod:`kmflow.kernels.lloyd`: Lloyd iterations, assignment, inertia
- :mod:`kmflow.kernels.validation`: input checks and the validation pass
- :mod:`kmflow.kernels.sweep`: fit and score several k at once, one pass per iteration
  (``kmflow.kernels.sweep.sweep``; the function is not re-exported here, so the module
  name stays the module)
"""

from kmflow.kernels.init import kmeans_parallel, kmeans_plusplus, random_centers
from kmflow.kernels.lloyd import IterationInfo, LloydResult, assign, inertia, lloyd
from kmflow.kernels.sweep import KResult, SweepInfo, SweepResult

__all__ = [
    "IterationInfo",
    "KResult",
    "LloydResult",
    "SweepInfo",
    "SweepResult",
    "assign",
    "inertia",
    "kmeans_parallel",
    "kmeans_plusplus",
    "lloyd",
    "random_centers",
]
