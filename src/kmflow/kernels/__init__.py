"""Pure k-means math on numpy and Dask arrays: no I/O, no scheduler choice, no Prefect.

- :mod:`kmflow.kernels.init`: k-means|| (default), greedy k-means++ and random initial centers
- :mod:`kmflow.kernels.lloyd`: Lloyd iterations, assignment, inertia
- :mod:`kmflow.kernels.dense`: the same on one in-memory array (nearest center, tolerance)
- :mod:`kmflow.kernels.validation`: input checks and the validation pass
- :mod:`kmflow.kernels.sweep`: fit and score several k at once, one pass per iteration

``kmflow.kernels.lloyd.lloyd`` and ``kmflow.kernels.sweep.sweep`` are not re-exported
here, so those names stay the modules. The other names are imported on first use: a
worker task that needs only the in-memory kernels never imports dask.array through here.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kmflow.kernels.init import kmeans_parallel, kmeans_plusplus, random_centers
    from kmflow.kernels.lloyd import IterationInfo, LloydResult, assign, inertia
    from kmflow.kernels.sweep import KResult, SweepInfo, SweepResult

_LAZY = {
    **dict.fromkeys(("kmeans_parallel", "kmeans_plusplus", "random_centers"), "init"),
    **dict.fromkeys(("IterationInfo", "LloydResult", "assign", "inertia"), "lloyd"),
    **dict.fromkeys(("KResult", "SweepInfo", "SweepResult"), "sweep"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"kmflow.kernels.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kmflow.kernels' has no attribute {name!r}")


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
    "random_centers",
]
