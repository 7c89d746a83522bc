"""The frozen record of a trained k-means model, and the model itself (record + centers).

A :class:`ModelRecord` is everything about one registered model version except its centers:
how it was trained (init, seed, iterations, parameters), how good it is (inertia, metrics), what
it was trained on (fingerprint, reference statistics for drift checks), where it came from
(parent version, run key) and when. It is what :class:`kmflow.storage.registry.ModelRegistry`
writes as ``model.json``. A :class:`Model` pairs a record with its read-only centers.

JSON encoding
-------------
:meth:`ModelRecord.to_json` writes standard JSON (no ``NaN`` literals). A non-finite float,
in ``inertia`` or anywhere inside ``params``, ``metrics`` or ``reference``, is written as the
string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, and those three strings are read back as
the floats. They are therefore reserved inside ``params``, ``metrics`` and ``reference``: a
string value spelled exactly like one of them becomes a float, on construction as well as on
reading, so a record always equals its own round trip.

``params``, ``metrics`` and ``reference`` must be JSON-ready: nested dicts with string keys,
lists, strings, ints, floats, bools and ``None``. NumPy scalars and arrays are accepted and
stored as plain Python numbers and (nested) lists; tuples become lists. Anything else is
rejected when the record is built, never when it is written.

Examples
--------
>>> import datetime as dt
>>> record = ModelRecord(
...     name="palette", version=1, n_clusters=2, n_features=3, kind="palette",
...     preprocessing={"type": "color", "color_space": "lab"},
...     init="k-means||", seed=0, n_iter=7, converged=True, inertia=12.5,
...     metrics={"silhouette": float("nan")}, fingerprint="abc",
...     created_at=dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
...     kmflow_version="0.1.0", centers_sha256="0" * 64,
... )
>>> '"silhouette": "NaN"' in record.to_json()
True
>>> ModelRecord.from_json(record.to_json()).metrics
{'silhouette': nan}
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kmflow.core.preprocessing import ARRAY_PREFIX, Preprocessor, load_preprocessor
from kmflow.errors import InvalidInputError, ModelCorruptError

__all__ = [
    "KINDS",
    "NAME_PATTERN",
    "Model",
    "ModelKind",
    "ModelRecord",
    "centers_sha256",
    "read_npy",
]

#: What a model clusters. Each kind has one preprocessing type (``preprocessing["type"]``).
ModelKind = Literal["vectors", "palette", "segments", "images"]
KINDS: tuple[str, ...] = ("vectors", "palette", "segments", "images")
_PREPROCESSING_TYPE: dict[str, str | None] = {
    "vectors": None,
    "palette": "color",
    "segments": "table",
    "images": "images",
}
_ARTIFACT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RESERVED_FILES = frozenset({"centers.npy", "model.json", "champion.json"})

#: What a model name may look like: a letter or digit, then up to 127 letters, digits,
#: ``.``, ``_`` or ``-`` (safe as a folder name and in a URL on every backend).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def centers_sha256(centers: np.ndarray) -> str:
    """Return the SHA-256 (hex) of the centers as little-endian float64 bytes in C order.

    Parameters
    ----------
    centers : numpy.ndarray of shape (n_clusters, n_features)
        The cluster centers (any real dtype; hashed after conversion to float64).

    Returns
    -------
    str
        64 lowercase hex digits.

    Examples
    --------
    >>> centers_sha256(np.zeros((1, 1)))[:16]
    'af5570f5a1810b7a'
    """
    data = np.ascontiguousarray(centers, dtype="<f8")
    return hashlib.sha256(data.tobytes(order="C")).hexdigest()


def read_npy(data: bytes, shown: str) -> np.ndarray:
    """Read ``.npy`` bytes without unpickling (ModelCorruptError if they are not a plain array).

    The header is read first and its shape and dtype checked against the size of the data,
    so a tampered header (claiming 10**12 rows) is refused without allocating anything.
    """
    if data[:4] == b"PK\x03\x04":
        raise ModelCorruptError(f"{shown} is an .npz archive, not an .npy array")
    stream = io.BytesIO(data)
    try:
        major, _ = np.lib.format.read_magic(stream)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif major == 2:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {major}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise ModelCorruptError(f"{shown} is not a readable .npy array: {exc}") from exc
    if dtype.hasobject:
        raise ModelCorruptError(
            f"{shown} is not a readable .npy array: it holds Python objects, which are never "
            "unpickled (allow_pickle=False)"
        )
    if dtype.kind not in "biuf":
        raise ModelCorruptError(f"{shown} holds {dtype} values, not numbers")
    count = 1
    for n in shape:
        count *= int(n)
    expected = count * dtype.itemsize
    available = len(data) - stream.tell()
    if expected != available:
        raise ModelCorruptError(
            f"{shown} is not a readable .npy array: its header says shape {shape} "
            f"({expected:,} bytes of {dtype}) but {available:,} bytes follow it"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="C")


def _json_ready(value: Any, where: str) -> Any:
    """Return `value` as plain JSON types (fresh containers), decoding the non-finite strings.

    Raises ``ValueError`` (turned into a ``ValidationError`` by pydantic) for anything that is
    not JSON-ready.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, np.generic | np.ndarray):
        return _json_ready(value.tolist(), where)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a non-string key {key!r}; JSON keys are strings")
            out[key] = _json_ready(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_json_ready(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(
        f"{where} has type {type(value).__name__}, which is not JSON-ready "
        "(use dicts with string keys, lists, str, int, float, bool or None)"
    )


class ModelRecord(BaseModel):
    """Everything about one registered model version except its centers (``model.json``).

    Frozen: fields cannot be reassigned (the ``params``, ``metrics`` and ``reference`` dicts
    are private copies; do not mutate them). Unknown fields are rejected.

    ``created_at`` must be timezone-aware; an aware time in another zone is converted to UTC,
    a naive one is rejected (it would be ambiguous). Non-finite floats survive
    :meth:`to_json` / :meth:`from_json` as the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` (see the module docstring).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    name: str = Field(
        pattern=NAME_PATTERN,
        description=(
            "Model name: a letter or digit, then up to 127 letters, digits, '.', '_' or '-'."
        ),
    )
    version: int = Field(ge=1, description="Version number within the name, from 1.")
    n_clusters: int = Field(ge=1, description="Number of clusters (rows of the centers).")
    n_features: int = Field(ge=1, description="Number of features (columns of the centers).")
    kind: ModelKind = Field(
        description=(
            "What the model clusters, and so how raw inputs reach the centers' space: "
            "'vectors' (rows of numbers, used as they are), 'palette' (RGB pixels, converted "
            "to the color space in `preprocessing`), 'segments' (table records, through the "
            "stored column preprocessing) or 'images' (whole images, through the stored "
            "feature chain)."
        ),
    )
    preprocessing: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "The JSON part of the preprocessing that maps raw inputs to the centers' space "
            "(its arrays are files listed in `artifacts`); empty for 'vectors'."
        ),
    )
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Other files of the version (preprocessing arrays as .npy, per-segment "
            "classifiers), file name -> SHA-256 (hex) of its bytes; checked on every load."
        ),
    )
    init: str = Field(
        min_length=1,
        description=(
            "How the initial centers were chosen: 'k-means||', 'k-means++', 'random' or "
            "'warm-start' (from the centers of the parent version)."
        ),
    )
    seed: int = Field(
        ge=0,
        description=(
            "The 63-bit random key every random choice of the fit was drawn from (the "
            "estimator's seed_), derived from the seed given to the training run; that seed "
            "itself (None when none was given) is params['seed'] in records of kmflow's flows."
        ),
    )
    n_iter: int = Field(ge=0, description="Lloyd iterations run.")
    converged: bool = Field(description="Whether the run stopped because it converged.")
    inertia: float = Field(
        ge=0.0,
        allow_inf_nan=False,
        description="Sum of squared distances of the training samples to their closest center.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Training parameters (max_iter, tol, sample size, ...), JSON-ready.",
    )
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="Evaluation metrics (may hold NaN), JSON-ready.",
    )
    fingerprint: str = Field(
        min_length=1, description="Identity of the training data (e.g. a content hash)."
    )
    reference: dict[str, Any] = Field(
        default_factory=dict,
        description="Reference statistics of the training data for drift checks, JSON-ready.",
    )
    parent: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Version this one was warm-started or retrained from (lower than `version`); "
            "None for a model trained from scratch."
        ),
    )
    created_at: dt.datetime = Field(description="When the version was registered (UTC).")
    kmflow_version: str = Field(
        min_length=1, description="Version of the kmflow package that registered it."
    )
    centers_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the centers as little-endian float64 bytes, C order.",
    )
    run_key: str | None = Field(
        default=None,
        min_length=1,
        description="Idempotency key of the run that registered it, if any.",
    )

    @model_validator(mode="before")
    @classmethod
    def _read_legacy(cls, data: Any) -> Any:
        # Records written before models carried a kind marked palettes by their color space.
        if isinstance(data, Mapping) and "kind" not in data and "color_space" in data:
            data = dict(data)
            space = data.pop("color_space")
            if space is None:
                data["kind"] = "vectors"
            else:
                data["kind"] = "palette"
                data.setdefault("preprocessing", {"type": "color", "color_space": space})
        return data

    @field_validator("artifacts")
    @classmethod
    def _check_artifacts(cls, value: dict[str, str]) -> dict[str, str]:
        for file, digest in value.items():
            if not _ARTIFACT.match(file) or file in _RESERVED_FILES:
                raise ValueError(
                    f"artifact name {file!r} must be a plain file name (letters, digits, "
                    "'.', '_', '-') other than centers.npy and model.json"
                )
            if not _SHA256.match(digest):
                raise ValueError(f"artifact {file!r} has a malformed sha256 {digest!r}")
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> ModelRecord:
        wanted = _PREPROCESSING_TYPE[self.kind]
        given = self.preprocessing.get("type") if self.preprocessing else None
        if given != wanted:
            raise ValueError(
                f"a {self.kind!r} model needs preprocessing of type {wanted!r}; got {given!r}"
            )
        return self

    @property
    def color_space(self) -> Literal["rgb", "lab"] | None:
        """The color space of a palette's centers; None for every other kind."""
        if self.kind != "palette":
            return None
        space: Literal["rgb", "lab"] = self.preprocessing["color_space"]
        return space

    @field_validator("params", "metrics", "reference", "preprocessing", mode="before")
    @classmethod
    def _check_json_ready(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, Mapping):
            return value  # pydantic reports the wrong type
        return _json_ready(value, str(info.field_name))

    @field_validator("created_at")
    @classmethod
    def _check_utc(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"created_at={value.isoformat()} has no timezone; give an aware datetime (UTC)"
            )
        return value.astimezone(dt.UTC)

    @model_validator(mode="after")
    def _check_parent(self) -> ModelRecord:
        if self.parent is not None and self.parent >= self.version:
            raise ValueError(
                f"parent={self.parent} must be an earlier version than version={self.version}"
            )
        return self

    def to_json(self) -> str:
        """Return the record as standard JSON text (indented, non-finite floats as strings).

        Returns
        -------
        str
            What :meth:`from_json` reads back into an equal record.
        """
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelRecord:
        """Read a record written by :meth:`to_json`.

        Parameters
        ----------
        text : str or bytes
            JSON text.

        Returns
        -------
        ModelRecord

        Raises
        ------
        pydantic.ValidationError
            If `text` is not JSON or does not describe a valid record (a ``ValueError``).
        """
        return cls.model_validate_json(text)


@dataclass(frozen=True)
class Model:
    """A registered model: its record, its cluster centers and its other files.

    Attributes
    ----------
    record : ModelRecord
        Everything about the model except the centers.
    centers : numpy.ndarray of shape (n_clusters, n_features)
        float64, C-contiguous and read-only (``centers.flags.writeable`` is False); a private
        copy of the array given.
    artifacts : mapping of str to bytes
        The version's other files (``record.artifacts``), checked against their SHA-256.

    Raises
    ------
    InvalidInputError
        On construction, if `centers` is not a finite real array of the record's shape, its
        SHA-256 is not ``record.centers_sha256``, or an artifact is missing or altered.

    Examples
    --------
    A "vectors" model predicts on rows of numbers as they are; palettes and segment models
    apply their stored preprocessing first (pixels, table records).
    """

    record: ModelRecord
    centers: np.ndarray
    artifacts: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Imported here: loading a model needs no Dask or numba.
        from kmflow.kernels.validation import check_centers

        centers = check_centers(
            self.centers,
            self.record.n_clusters,
            self.record.n_features,
            shape_from=f"the record of {self.record.name!r} v{self.record.version}",
        )
        digest = centers_sha256(centers)
        if digest != self.record.centers_sha256:
            raise InvalidInputError(
                f"centers have sha256 {digest} but the record of {self.record.name!r} "
                f"v{self.record.version} says {self.record.centers_sha256}"
            )
        centers.flags.writeable = False
        object.__setattr__(self, "centers", centers)
        files = dict(self.artifacts)
        for file, want in self.record.artifacts.items():
            if file not in files:
                raise InvalidInputError(
                    f"file {file!r} of {self.record.name!r} v{self.record.version} is missing"
                )
            got = hashlib.sha256(files[file]).hexdigest()
            if got != want:
                raise InvalidInputError(
                    f"file {file!r} of {self.record.name!r} v{self.record.version} has "
                    f"sha256 {got} but the record says {want}"
                )
        object.__setattr__(self, "artifacts", MappingProxyType(files))

    @property
    def kind(self) -> str:
        """What the model clusters (``record.kind``)."""
        return self.record.kind

    @functools.cached_property
    def preprocessor(self) -> Preprocessor:
        """The stored map from raw inputs to the centers' space (built on first use)."""
        arrays = {
            file[len(ARRAY_PREFIX) : -len(".npy")]: read_npy(data, file)
            for file, data in self.artifacts.items()
            if file.startswith(ARRAY_PREFIX) and file.endswith(".npy")
        }
        return load_preprocessor(
            self.record.preprocessing, arrays, n_features=self.record.n_features
        )

    def transform(self, data: Any) -> Any:
        """Raw inputs in the centers' space: pixels for palettes, records for segments, whole
        images for image models.

        Parameters
        ----------
        data
            What the model's kind takes: rows of numbers ("vectors"), RGB pixels as an
            (n, 3) array ("palette"), or table records as a pandas or dask DataFrame, a list
            of dicts or a dict of lists ("segments"), uint8 images of the model's shape as an
            (n, H, W, C) array or (n, H * W * C) rows ("images").
        """
        return self.preprocessor.transform(data)

    def predict(self, data: Any) -> np.ndarray:
        """The nearest center of every raw input (see :meth:`transform`), as int32."""
        return self.predict_features(self.transform(data))

    def predict_features(self, X: Any) -> Any:
        """The nearest center of every row already in the centers' space."""
        from kmflow.kernels.dense import nearest
        from kmflow.kernels.lloyd import assign

        if hasattr(X, "dask"):
            return assign(X, self.centers)
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.record.n_features:
            raise InvalidInputError(
                f"features must have shape (n, {self.record.n_features}); got {x.shape}"
            )
        return nearest(x, self.centers)
