"""The stored preprocessing of a model: what maps raw inputs to the space of its centers.

A model is its centers plus this map. It is stored without pickle: the JSON part in the
record's ``preprocessing`` (its ``type`` names the implementation) and its arrays as ``.npy``
files of the version (``prep.<name>.npy``). Each job provides the implementation of its type:

==========  ==========================================================  ==========
type        implementation                                              model kind
==========  ==========================================================  ==========
(none)      :class:`Identity`: rows of numbers are the features         vectors
``color``   :class:`kmflow.jobs.palette.render.ColorPreprocessing`      palette
``table``   :class:`kmflow.jobs.segments.prepare.Preprocessing`         segments
``images``  :class:`kmflow.jobs.image_clusters.features.ImageFeatures`  images
==========  ==========================================================  ==========

Implementations are imported on first use, so the core does not depend on any job.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmflow.errors import InvalidInputError

__all__ = [
    "ARRAY_PREFIX",
    "Identity",
    "Preprocessor",
    "array_file",
    "load_preprocessor",
]

#: Prefix of the file names of preprocessing arrays in a version folder.
ARRAY_PREFIX = "prep."

_IMPLEMENTATIONS = {
    "color": ("kmflow.jobs.palette.render", "ColorPreprocessing"),
    "table": ("kmflow.jobs.segments.prepare", "Preprocessing"),
    "images": ("kmflow.jobs.image_clusters.features", "ImageFeatures"),
}


@runtime_checkable
class Preprocessor(Protocol):
    """A fitted map from raw inputs to model features, stored as JSON plus arrays."""

    def transform(self, data: Any) -> Any:
        """Raw inputs (pixels, a DataFrame, dicts, ...) as a float64 feature matrix."""

    def to_json(self) -> dict[str, Any]:
        """The JSON part (with ``"type"``)."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The array part, by name."""


class Identity:
    """Rows of numbers are the features ("vectors" models)."""

    def __init__(self, n_features: int) -> None:
        self.n_features = n_features

    def transform(self, data: Any) -> np.ndarray:
        try:
            x = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"rows must be numbers: {exc}") from exc
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InvalidInputError(
                f"rows must have shape (n, {self.n_features}); got {tuple(x.shape)}"
            )
        return x

    def to_json(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


def array_file(name: str) -> str:
    """The file name of preprocessing array `name` in a version folder."""
    return f"{ARRAY_PREFIX}{name}.npy"


def load_preprocessor(
    spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, n_features: int
) -> Preprocessor:
    """Rebuild the preprocessor a record describes.

    Parameters
    ----------
    spec : mapping
        The record's ``preprocessing`` (empty for "vectors" models).
    arrays : mapping of str to numpy.ndarray
        Its arrays, by name (without the ``prep.`` prefix and ``.npy`` suffix).
    n_features : int
        Features of the centers; the preprocessor must produce that many.

    Raises
    ------
    InvalidInputError
        An unknown preprocessing type, or one that does not produce `n_features` features.
    """
    kind = spec.get("type") if spec else None
    if kind is None:
        return Identity(n_features)
    if kind not in _IMPLEMENTATIONS:
        raise InvalidInputError(
            f"unknown preprocessing type {kind!r} (known: {', '.join(sorted(_IMPLEMENTATIONS))})"
        )
    module, name = _IMPLEMENTATIONS[kind]
    cls = getattr(importlib.import_module(module), name)
    prep: Preprocessor = cls.from_json(dict(spec), dict(arrays))
    produced = getattr(prep, "n_features", n_features)
    if produced != n_features:
        raise InvalidInputError(
            f"the stored preprocessing produces {produced} features but the centers have "
            f"{n_features}"
        )
    return prep
