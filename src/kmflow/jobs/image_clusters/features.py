"""Features of whole images: the fitted chain from pixels to the space k-means clusters in.

A chain is a comma-separated spec, e.g. ``"hog,pca:30,umap:5"``: first one or more
*extractors*, whose columns are concatenated, then *reducers*, applied in order.

Extractors (per image, nothing fitted):

``raw``
    The pixels scaled to [0, 1] (``x / 255``), flattened in (H, W, C) order: H·W·C columns.
``hog``
    :func:`skimage.feature.hog` of the gray image in [0, 1] (RGB images through
    :func:`skimage.color.rgb2gray`): 9 orientations, square cells of
    ``p = max(2, ceil(min(H, W) / 8))`` pixels (8x8 digits: 2-pixel cells, 4x4 of them;
    25x25: 4-pixel cells; 64x64 photos: 8-pixel cells, 8x8 of them), blocks of 2x2 cells,
    ``L2-Hys`` block normalisation: ``(H//p - 1)·(W//p - 1)·36`` columns. Needs images of at
    least 4x4 pixels.
``color``
    A color histogram normalised to sum 1: 4x4x4 joint RGB bins (``value // 64`` per
    channel; 64 columns) for RGB images, 16 intensity bins (``value // 16``) for gray ones.

Reducers (fitted on the training images, deterministic for a seed):

``std``
    Standardise every column to mean 0 and standard deviation 1 (columns that are constant
    in training are only centred): makes a concatenation such as ``raw,hog`` weigh its parts
    alike.
``pca:N``
    The first N principal components: fitted with :class:`dask_ml.decomposition.PCA` on the
    Dask cluster for dask input (``svd_solver="full"`` up to 1,000 input columns, else
    ``"randomized"`` with 4 power iterations), with :class:`sklearn.decomposition.PCA` for
    numpy input; each component's sign is fixed so that its largest-magnitude entry is
    positive (scikit-learn's convention). Stored: ``components_`` and ``mean_``; the
    transform is ``(x - mean) @ components.T``.
``umap:N``
    A UMAP embedding in N dimensions (``umap.UMAP(n_components=N, n_neighbors=m,
    min_dist=0.0, random_state=seed)``, single-threaded and deterministic), fitted in memory on
    the distinct training rows, with ``m`` the square root of their number clipped to 15..40
    (:func:`umap_fit_neighbors`). It must be the last step. UMAP has no transform made of arrays,
    so the distinct training inputs (float32) and their embedding are stored, and a row is
    placed at the inverse-distance-weighted mean embedding of its 15 nearest training inputs
    (euclidean, in float32 input space); a row within float32 rounding of a training input
    (distance at most 1e-6 of its norm, 0 for the same image through the same steps) gets
    exactly that input's embedding, so an image seen in training lands where training put
    it.

:class:`ImageFeatures` is the fitted chain, a :class:`kmflow.core.preprocessing.Preprocessor`
of type ``images``: stored as JSON plus numpy arrays, never pickle. Its
:meth:`~ImageFeatures.transform` takes uint8 images ``(n, H, W, C)`` (or ``(n, H, W)`` when
C = 1) or flattened rows ``(n, H·W·C)``; numpy in, float64 numpy out; dask in, a dask array
out, computed block by block on the workers (rows chunked along axis 0 only).
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import dask
import dask.array as da
import numpy as np

from kmflow.errors import InvalidInputError

__all__ = [
    "Color",
    "Hog",
    "HogParams",
    "ImageFeatures",
    "Pca",
    "Raw",
    "Std",
    "Step",
    "Umap",
    "fit_features",
    "hog_params",
    "parse_chain",
]

#: Version of the JSON this module writes; :meth:`ImageFeatures.from_json` reads up to it.
SPEC_VERSION = 1

#: Training rows whose embedding a new row's UMAP placement averages.
UMAP_NEIGHBORS = 15

#: UMAP's fit: the range of its neighbourhood size (see :func:`umap_fit_neighbors`) and
#: ``min_dist``; packed clumps (``min_dist=0``) are what UMAP's authors advise ahead of
#: clustering. Chosen with ``benchmarks/bench_image_clusters.py``.
UMAP_FIT_NEIGHBORS = (15, 40)
UMAP_MIN_DIST = 0.0

#: A row within this fraction of its norm of a training input is that input (UMAP placement).
SNAP_TOLERANCE = 1e-6

#: Input columns up to which dask-ml's PCA uses the exact (tall-skinny QR) SVD.
FULL_SVD_MAX_COLUMNS = 1000

_RGB_BINS = 4  # per channel: 4x4x4 joint bins
_GRAY_BINS = 16


# --------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class Raw:
    """Extractor ``raw``: the pixels scaled to [0, 1], flattened."""

    kind: ClassVar[str] = "raw"

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Hog:
    """Extractor ``hog``: histograms of oriented gradients of the gray image."""

    kind: ClassVar[str] = "hog"

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Color:
    """Extractor ``color``: a color (RGB) or intensity (gray) histogram, summing to 1."""

    kind: ClassVar[str] = "color"

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Std:
    """Reducer ``std``: standardise columns (mean 0, standard deviation 1)."""

    kind: ClassVar[str] = "std"

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Pca:
    """Reducer ``pca:N``: the first `n_components` principal components."""

    n_components: int
    kind: ClassVar[str] = "pca"

    def __str__(self) -> str:
        return f"{self.kind}:{self.n_components}"


@dataclass(frozen=True)
class Umap:
    """Reducer ``umap:N``: a UMAP embedding in `n_components` dimensions (last step only)."""

    n_components: int
    kind: ClassVar[str] = "umap"

    def __str__(self) -> str:
        return f"{self.kind}:{self.n_components}"


Extractor: TypeAlias = Raw | Hog | Color
Reducer: TypeAlias = Std | Pca | Umap
Step: TypeAlias = Extractor | Reducer

_PLAIN: dict[str, Step] = {"raw": Raw(), "hog": Hog(), "color": Color(), "std": Std()}
_SIZED: dict[str, type[Pca] | type[Umap]] = {"pca": Pca, "umap": Umap}
_EXTRACTOR_TYPES = (Raw, Hog, Color)
_KNOWN = "raw, hog, color, std, pca:N, umap:N"


@dataclass(frozen=True)
class HogParams:
    """The :func:`skimage.feature.hog` parameters of the ``hog`` extractor."""

    orientations: int
    pixels_per_cell: int
    cells_per_block: int
    block_norm: str

    def n_features(self, height: int, width: int) -> int:
        """Columns of one image's descriptor (0 when the image holds no full block)."""
        cells_y = height // self.pixels_per_cell
        cells_x = width // self.pixels_per_cell
        blocks_y = cells_y - self.cells_per_block + 1
        blocks_x = cells_x - self.cells_per_block + 1
        if blocks_y < 1 or blocks_x < 1:
            return 0
        return blocks_y * blocks_x * self.cells_per_block**2 * self.orientations

    def to_json(self) -> dict[str, Any]:
        return {
            "orientations": self.orientations,
            "pixels_per_cell": self.pixels_per_cell,
            "cells_per_block": self.cells_per_block,
            "block_norm": self.block_norm,
        }


def hog_params(shape: tuple[int, int, int]) -> HogParams:
    """The ``hog`` extractor's parameters for images of `shape` (H, W, C).

    9 orientations, cells of ``max(2, ceil(min(H, W) / 8))`` pixels, 2x2-cell blocks, L2-Hys.
    """
    height, width, _ = shape
    return HogParams(
        orientations=9,
        pixels_per_cell=max(2, math.ceil(min(height, width) / 8)),
        cells_per_block=2,
        block_norm="L2-Hys",
    )


def _check_shape(shape: object) -> tuple[int, int, int]:
    ok = (
        isinstance(shape, Sequence)
        and not isinstance(shape, str)
        and len(shape) == 3
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape)
    )
    if not ok or not isinstance(shape, Sequence):
        raise InvalidInputError(f"image shape must be (height, width, channels); got {shape!r}")
    height, width, channels = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise InvalidInputError(f"image height and width must be >= 1; got {height}x{width}")
    if channels not in (1, 3):
        raise InvalidInputError(
            f"images must have 1 (gray) or 3 (RGB) channels; got {channels} in shape "
            f"{height}x{width}x{channels}"
        )
    return height, width, channels


def _extractor_width(step: Extractor, shape: tuple[int, int, int], hog: HogParams) -> int:
    height, width, channels = shape
    if isinstance(step, Raw):
        return height * width * channels
    if isinstance(step, Hog):
        return hog.n_features(height, width)
    return _RGB_BINS**3 if channels == 3 else _GRAY_BINS


def parse_chain(spec: str, *, shape: tuple[int, int, int] | None = None) -> tuple[Step, ...]:
    """Parse a feature chain such as ``"hog,pca:30,umap:5"`` into its steps.

    Parameters
    ----------
    spec : str
        Comma-separated steps: one or more extractors (``raw``, ``hog``, ``color``, each at
        most once), then reducers (``std``, ``pca:N``, ``umap:N``; ``umap`` last). Case and
        spaces around steps are ignored.
    shape : (int, int, int), optional
        (H, W, C) of the images: when given, also check that ``hog`` fits the images and
        that no ``pca:N`` or ``umap:N`` asks for more components than the columns it
        receives.

    Returns
    -------
    tuple of Step
        ``",".join(map(str, steps))`` is the normalised spec.

    Raises
    ------
    InvalidInputError
        With a one-line message naming the offending step.
    """
    if not isinstance(spec, str):
        raise InvalidInputError(f"a feature chain must be a string; got {type(spec).__name__}")
    if not spec.strip():
        raise InvalidInputError(
            "the feature chain is empty: give extractors then reducers, e.g. 'hog,pca:30,umap:5'"
        )
    steps: list[Step] = []
    for part in spec.split(","):
        token = part.strip().lower()
        if not token:
            raise InvalidInputError(f"empty step in feature chain {spec!r}")
        name, sep, arg = (s.strip() for s in token.partition(":"))
        if name in _PLAIN:
            if sep:
                raise InvalidInputError(
                    f"step {name!r} takes no argument; got {token!r} in feature chain {spec!r}"
                )
            steps.append(_PLAIN[name])
        elif name in _SIZED:
            if not arg:
                raise InvalidInputError(
                    f"step {name!r} needs a number of components, e.g. '{name}:5'; got "
                    f"{token!r} in feature chain {spec!r}"
                )
            if not re.fullmatch(r"[0-9]+", arg) or int(arg) < 1:
                raise InvalidInputError(
                    f"the number of components in {token!r} must be a positive integer "
                    f"(feature chain {spec!r})"
                )
            steps.append(_SIZED[name](int(arg)))
        else:
            close = difflib.get_close_matches(name, [*_PLAIN, *_SIZED], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidInputError(
                f"unknown step {token!r} in feature chain {spec!r} (steps: {_KNOWN}){hint}"
            )
    _check_order(steps, spec)
    if shape is not None:
        _check_widths(steps, _check_shape(shape))
    return tuple(steps)


def _check_order(steps: list[Step], spec: str) -> None:
    extractors = [s for s in steps if isinstance(s, _EXTRACTOR_TYPES)]
    if not extractors:
        raise InvalidInputError(
            f"feature chain {spec!r} has no extractor: start with raw, hog or color"
        )
    reducer: Step | None = None
    seen: set[str] = set()
    for step in steps:
        if isinstance(step, _EXTRACTOR_TYPES):
            if reducer is not None:
                raise InvalidInputError(
                    f"extractor {str(step)!r} comes after reducer {str(reducer)!r} in feature "
                    f"chain {spec!r}: extractors come first"
                )
            if step.kind in seen:
                raise InvalidInputError(
                    f"extractor {str(step)!r} appears twice in feature chain {spec!r}"
                )
            seen.add(step.kind)
        elif reducer is None:
            reducer = step
    for i, step in enumerate(steps[:-1]):
        if isinstance(step, Umap):
            raise InvalidInputError(
                f"{str(step)!r} must be the last step of feature chain {spec!r} (it is "
                f"followed by {str(steps[i + 1])!r})"
            )


def _check_widths(steps: Sequence[Step], shape: tuple[int, int, int]) -> None:
    height, width, channels = shape
    hog = hog_params(shape)
    n = 0
    for step in steps:
        if isinstance(step, _EXTRACTOR_TYPES):
            w = _extractor_width(step, shape, hog)
            if w == 0:
                raise InvalidInputError(
                    f"hog needs images of at least {2 * hog.pixels_per_cell}x"
                    f"{2 * hog.pixels_per_cell} pixels; got {height}x{width}"
                )
            n += w
        elif isinstance(step, (Pca, Umap)):
            if step.n_components > n:
                raise InvalidInputError(
                    f"{str(step)!r} asks for {step.n_components} components but receives only "
                    f"{n} features (images {height}x{width}x{channels})"
                )
            n = step.n_components


# --------------------------------------------------------------------------- fitted steps
@dataclass(frozen=True, eq=False)
class _StdState:
    mean: np.ndarray
    scale: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale}


@dataclass(frozen=True, eq=False)
class _PcaState:
    components: np.ndarray
    mean: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.asarray((x - self.mean) @ self.components.T, dtype=np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"components": self.components, "mean": self.mean}


@dataclass(frozen=True, eq=False)
class _UmapState:
    inputs: np.ndarray  # float32 (n_train, d): the distinct training rows
    embedding: np.ndarray  # float32 (n_train, N): UMAP's embedding of them
    n_neighbors: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        return _place(x, self.inputs, self.embedding, self.n_neighbors)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"inputs": self.inputs, "embedding": self.embedding}


_State: TypeAlias = _StdState | _PcaState | _UmapState


def _place(x: np.ndarray, inputs: np.ndarray, embedding: np.ndarray, k: int) -> np.ndarray:
    """Inverse-distance-weighted mean embedding of each row's `k` nearest training inputs."""
    a_all = np.asarray(x, dtype=np.float32).astype(np.float64)
    b = inputs.astype(np.float64)
    emb = embedding.astype(np.float64)
    n_train = b.shape[0]
    k = min(k, n_train)
    bb = np.einsum("ij,ij->i", b, b)
    out = np.empty((a_all.shape[0], emb.shape[1]), dtype=np.float64)
    step = min(4096, max(1, 2**22 // max(1, n_train)))
    for start in range(0, a_all.shape[0], step):
        a = a_all[start : start + step]
        aa = np.einsum("ij,ij->i", a, a)
        d2 = aa[:, None] + bb[None, :] - 2.0 * (a @ b.T)
        if k < n_train:
            cand = np.argpartition(d2, k - 1, axis=1)[:, :k]
        else:
            cand = np.broadcast_to(np.arange(n_train), (a.shape[0], n_train))
        diff = a[:, None, :] - b[cand]
        dist = np.sqrt(np.einsum("rkd,rkd->rk", diff, diff))  # exact: 0 for the same row
        rows = np.arange(a.shape[0])
        nearest = np.argmin(dist, axis=1)
        snap = dist[rows, nearest] <= SNAP_TOLERANCE * np.sqrt(aa)
        with np.errstate(divide="ignore"):
            w = np.where(snap[:, None], 0.0, 1.0 / np.where(dist > 0, dist, 1.0))
        w[snap, nearest[snap]] = 1.0
        placed = np.einsum("rk,rkn->rn", w, emb[cand]) / w.sum(axis=1)[:, None]
        placed[snap] = emb[cand[snap, nearest[snap]]]
        out[start : start + a.shape[0]] = placed
    return out


# --------------------------------------------------------------------------- the pipeline
@dataclass(frozen=True, eq=False)
class _Pipeline:
    """What transforms one block of uint8 rows: picklable, shipped to the Dask workers."""

    shape: tuple[int, int, int]
    extractors: tuple[Extractor, ...]
    hog: HogParams
    states: tuple[_State, ...]

    def features(self, rows: np.ndarray) -> np.ndarray:
        """The extractors' columns, concatenated: float64 (n, width)."""
        parts = [self._extract(step, rows) for step in self.extractors]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        x = self.features(rows)
        for state in self.states:
            x = state.apply(x)
        return np.ascontiguousarray(x, dtype=np.float64)

    def _extract(self, step: Extractor, rows: np.ndarray) -> np.ndarray:
        if isinstance(step, Raw):
            return rows / 255.0
        if isinstance(step, Hog):
            return _hog(rows, self.shape, self.hog)
        return _color(rows, self.shape)


def _hog(rows: np.ndarray, shape: tuple[int, int, int], params: HogParams) -> np.ndarray:
    from skimage.color import rgb2gray
    from skimage.feature import hog

    height, width, channels = shape
    images = rows.reshape(-1, height, width, channels)
    out = np.empty((images.shape[0], params.n_features(height, width)), dtype=np.float64)
    for i, image in enumerate(images):
        gray = image[..., 0] / 255.0 if channels == 1 else rgb2gray(image / 255.0)
        out[i] = hog(
            gray,
            orientations=params.orientations,
            pixels_per_cell=(params.pixels_per_cell, params.pixels_per_cell),
            cells_per_block=(params.cells_per_block, params.cells_per_block),
            block_norm=params.block_norm,
            feature_vector=True,
        )
    return out


def _color(rows: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    height, width, channels = shape
    pixels = rows.reshape(rows.shape[0], height * width, channels)
    if channels == 3:
        q = (pixels >> 6).astype(np.intp)  # 0..3 per channel
        codes = (q[..., 0] * _RGB_BINS + q[..., 1]) * _RGB_BINS + q[..., 2]
        n_bins = _RGB_BINS**3
    else:
        codes = (pixels[..., 0] >> 4).astype(np.intp)  # 0..15
        n_bins = _GRAY_BINS
    n = rows.shape[0]
    flat = codes + (np.arange(n, dtype=np.intp) * n_bins)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n * n_bins).reshape(n, n_bins)
    return counts / float(height * width)


# --------------------------------------------------------------------------- input checks
def _shape_message(shape: tuple[int, int, int], got: tuple[Any, ...]) -> str:
    height, width, channels = shape
    gray = f", (n, {height}, {width})" if channels == 1 else ""
    return (
        f"images must have shape (n, {height}, {width}, {channels}){gray} or "
        f"(n, {height * width * channels}); got {got}"
    )


def _check_layout(
    ndim: int, dims: tuple[Any, ...], dtype: np.dtype[Any], shape: tuple[int, int, int]
) -> None:
    """Shape (beyond the row axis) and dtype checks that need no values."""
    height, width, channels = shape
    allowed = [(height * width * channels,), (height, width, channels)]
    if channels == 1:
        allowed.append((height, width))
    if ndim < 2 or tuple(dims[1:]) not in allowed:
        raise InvalidInputError(_shape_message(shape, dims))
    if dtype == np.bool_ or dtype.kind not in "uif":
        raise InvalidInputError(
            f"images must be uint8 pixel values (or numbers in 0..255); got dtype {dtype}"
        )


def _to_uint8_rows(block: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """`block` as uint8 rows (n, H·W·C); values checked unless already uint8."""
    x = block
    if x.dtype != np.uint8:
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InvalidInputError("images contain NaN or infinite values")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise InvalidInputError(
                f"image values must be in 0..255; got values from {x.min()} to {x.max()}"
            )
        if x.dtype.kind == "f" and x.size and not np.array_equal(x, np.round(x)):
            raise InvalidInputError("image values must be whole numbers in 0..255")
        x = x.astype(np.uint8)
    return np.ascontiguousarray(x).reshape(x.shape[0], -1)


def _numpy_rows(images: Any, shape: tuple[int, int, int]) -> np.ndarray:
    try:
        x = np.asarray(images)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"images must be an array of pixel values: {exc}") from exc
    _check_layout(x.ndim, x.shape, x.dtype, shape)
    return _to_uint8_rows(x, shape)


def _transform_block(block: np.ndarray, pipeline: _Pipeline) -> np.ndarray:
    return pipeline(_to_uint8_rows(block, pipeline.shape))


def _apply_state(block: np.ndarray, state: _State) -> np.ndarray:
    return state.apply(block)


def _dask_map(x: da.Array, pipeline: _Pipeline, n_out: int) -> da.Array:
    """`pipeline` over the row blocks of dask images `x` (layout already checked)."""
    x = x.rechunk({axis: -1 for axis in range(1, x.ndim)})
    drop = list(range(2, x.ndim))
    return da.map_blocks(
        _transform_block,
        x,
        pipeline,
        dtype=np.float64,
        drop_axis=drop or None,
        chunks=(x.chunks[0], (n_out,)),
        meta=np.empty((0, n_out), dtype=np.float64),
    )


def _map_state(x: da.Array, state: _State, n_out: int) -> da.Array:
    return da.map_blocks(
        _apply_state,
        x,
        state,
        dtype=np.float64,
        chunks=(x.chunks[0], (n_out,)),
        meta=np.empty((0, n_out), dtype=np.float64),
    )


# --------------------------------------------------------------------------- ImageFeatures
class ImageFeatures:
    """A fitted feature chain: uint8 images to float64 features (preprocessing ``images``).

    Build it with :func:`fit_features`; rebuild a stored one with :meth:`from_json`.

    Attributes
    ----------
    shape : (int, int, int)
        (H, W, C) the images must have, C = 1 (gray) or 3 (RGB).
    n_features : int
        Columns :meth:`transform` produces.
    chain : str
        The normalised spec, e.g. ``"hog,pca:30,umap:5"``.
    steps : tuple of Step
    seed : int
        The seed the reducers were fitted with.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        steps: Sequence[Step],
        states: Sequence[_State],
        *,
        seed: int,
        hog: HogParams | None = None,
    ) -> None:
        self.shape = _check_shape(shape)
        self.steps = tuple(steps)
        self.chain = ",".join(map(str, self.steps))
        self.seed = int(seed)
        extractors = tuple(s for s in self.steps if isinstance(s, _EXTRACTOR_TYPES))
        reducers = [s for s in self.steps if not isinstance(s, _EXTRACTOR_TYPES)]
        if len(states) != len(reducers):
            raise InvalidInputError(
                f"feature chain {self.chain!r} has {len(reducers)} reducers but "
                f"{len(states)} fitted states"
            )
        self._pipeline = _Pipeline(
            self.shape, extractors, hog or hog_params(self.shape), tuple(states)
        )
        self._reducers = tuple(reducers)
        self.n_features = self._widths()[-1]

    def _widths(self) -> list[int]:
        """Columns after the extractors, then after each reducer."""
        p = self._pipeline
        widths = [sum(_extractor_width(s, self.shape, p.hog) for s in p.extractors)]
        for step in self._reducers:
            widths.append(widths[-1] if isinstance(step, Std) else step.n_components)
        return widths

    def __repr__(self) -> str:
        h, w, c = self.shape
        return (
            f"ImageFeatures(chain={self.chain!r}, shape={h}x{w}x{c}, n_features={self.n_features})"
        )

    def transform(self, images: Any) -> np.ndarray | da.Array:
        """Features of `images`: float64 ``(n, n_features)``.

        Parameters
        ----------
        images : array-like or dask.array.Array
            uint8 ``(n, H, W, C)``, ``(n, H, W)`` when C = 1, or flattened ``(n, H·W·C)``
            (other integer or float dtypes are accepted when every value is a whole number in
            0..255). A dask array gives a dask array computed block by block (one task per
            row chunk); its values are checked in the blocks.

        Raises
        ------
        InvalidInputError
            Wrong shape, a dtype that is not numbers, NaN/inf, values outside 0..255.
        """
        if isinstance(images, da.Array):
            _check_layout(images.ndim, images.shape, images.dtype, self.shape)
            return _dask_map(images, self._pipeline, self.n_features)
        return self._pipeline(_numpy_rows(images, self.shape))

    def to_json(self) -> dict[str, Any]:
        """The JSON part: ``type`` ``images``, the shape, the chain, the seed, the HOG and UMAP
        parameters and the names of the arrays."""
        spec: dict[str, Any] = {
            "type": "images",
            "version": SPEC_VERSION,
            "shape": list(self.shape),
            "chain": self.chain,
            "n_features": self.n_features,
            "seed": self.seed,
            "arrays": sorted(self.arrays()),
        }
        if any(isinstance(s, Hog) for s in self.steps):
            spec["hog"] = self._pipeline.hog.to_json()
        for state in self._pipeline.states:
            if isinstance(state, _UmapState):
                spec["umap"] = {"n_neighbors": state.n_neighbors, "n_train": len(state.inputs)}
        return spec

    def _indexed(self) -> list[tuple[int, Reducer]]:
        n_ex = len(self._pipeline.extractors)
        return [(n_ex + i, step) for i, step in enumerate(self._reducers)]

    def arrays(self) -> dict[str, np.ndarray]:
        """The array part: per reducer at position i of the chain, ``std{i}_mean``,
        ``std{i}_scale``, ``pca{i}_components``, ``pca{i}_mean`` (float64),
        ``umap{i}_inputs``, ``umap{i}_embedding`` (float32)."""
        out: dict[str, np.ndarray] = {}
        for (i, step), state in zip(self._indexed(), self._pipeline.states, strict=True):
            for field, arr in state.arrays().items():
                out[f"{step.kind}{i}_{field}"] = arr.copy()
        return out

    @classmethod
    def from_json(cls, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ImageFeatures:
        """Rebuild from :meth:`to_json` and :meth:`arrays` (after a JSON round trip).

        Raises
        ------
        InvalidInputError
            Not an ``images`` spec, a newer version, missing or inconsistent parts.
        """
        if spec.get("type") != "images":
            raise InvalidInputError(f"not an images preprocessing: type={spec.get('type')!r}")
        try:
            version = int(spec.get("version", 0))
            shape_in = spec["shape"]
            chain = spec["chain"]
            seed = int(spec["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"the stored image features are incomplete: {exc!r}") from exc
        if version > SPEC_VERSION:
            raise InvalidInputError(
                f"image features version {version} is newer than this kmflow reads ({SPEC_VERSION})"
            )
        shape = _check_shape(tuple(shape_in) if isinstance(shape_in, list) else shape_in)
        steps = parse_chain(chain, shape=shape)
        hog = hog_params(shape)
        if "hog" in spec:
            try:
                h = spec["hog"]
                hog = HogParams(
                    int(h["orientations"]),
                    int(h["pixels_per_cell"]),
                    int(h["cells_per_block"]),
                    str(h["block_norm"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidInputError(f"the stored HOG parameters are invalid: {exc!r}") from exc
        n_neighbors = int(spec.get("umap", {}).get("n_neighbors", UMAP_NEIGHBORS))
        n_ex = sum(isinstance(s, _EXTRACTOR_TYPES) for s in steps)
        width = sum(
            _extractor_width(s, shape, hog) for s in steps if isinstance(s, _EXTRACTOR_TYPES)
        )
        states: list[_State] = []
        for i, step in enumerate(steps[n_ex:], start=n_ex):
            name = f"{step.kind}{i}"
            if isinstance(step, Std):
                states.append(
                    _StdState(
                        _stored(arrays, f"{name}_mean", (width,), np.float64),
                        _stored(arrays, f"{name}_scale", (width,), np.float64),
                    )
                )
            elif isinstance(step, Pca):
                comps = _stored(
                    arrays, f"{name}_components", (step.n_components, width), np.float64
                )
                states.append(
                    _PcaState(comps, _stored(arrays, f"{name}_mean", (width,), np.float64))
                )
                width = step.n_components
            elif isinstance(step, Umap):
                inputs = _stored(arrays, f"{name}_inputs", (None, width), np.float32)
                embedding = _stored(
                    arrays, f"{name}_embedding", (len(inputs), step.n_components), np.float32
                )
                if len(inputs) == 0:
                    raise InvalidInputError(f"stored array {name + '_inputs'!r} has no rows")
                states.append(_UmapState(inputs, embedding, n_neighbors))
                width = step.n_components
        prep = cls(shape, steps, states, seed=seed, hog=hog)
        stored = spec.get("n_features")
        if stored is not None and int(stored) != prep.n_features:
            raise InvalidInputError(
                f"the stored image features say {stored} features but chain {prep.chain!r} "
                f"produces {prep.n_features}"
            )
        return prep


def _stored(
    arrays: Mapping[str, np.ndarray],
    name: str,
    want: tuple[int | None, ...],
    dtype: type[np.floating[Any]],
) -> np.ndarray:
    """Stored array `name` as `dtype`, checked against the shape `want` (None: any)."""
    if name not in arrays:
        raise InvalidInputError(f"the stored image features lack array {name!r}")
    arr = np.ascontiguousarray(arrays[name], dtype=dtype)
    if arr.ndim != len(want) or any(
        w is not None and n != w for n, w in zip(arr.shape, want, strict=True)
    ):
        expected = tuple("n" if w is None else w for w in want)
        raise InvalidInputError(f"stored array {name!r} has shape {arr.shape}; expected {expected}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"stored array {name!r} has NaN or infinite values")
    return arr


# --------------------------------------------------------------------------- fitting
def fit_features(
    spec: str, images: Any, *, shape: tuple[int, int, int], seed: int
) -> ImageFeatures:
    """Fit the feature chain `spec` on the training `images`.

    Parameters
    ----------
    spec : str
        The chain, e.g. ``"hog,pca:30,umap:5"`` (see :func:`parse_chain`).
    images : array-like or dask.array.Array
        The training images, uint8 ``(n, H, W, C)`` or ``(n, H·W·C)``. With a dask array the
        extractors run on the workers, their features are persisted there for the reducers,
        and ``pca`` and ``std`` are fitted on the cluster; ``umap`` gathers its input (n x
        its input columns, float32) into this process.
    shape : (int, int, int)
        (H, W, C) of the images.
    seed : int
        Seeds PCA's randomized solver (when used) and UMAP: the same seed, images and
        chunking give identical arrays.

    Raises
    ------
    InvalidInputError
        A bad spec or shape, bad images, or too few training images for a reducer.
    """
    shape = _check_shape(shape)
    steps = parse_chain(spec, shape=shape)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InvalidInputError(f"seed must be an integer; got {seed!r}")
    hog = hog_params(shape)
    extractors = tuple(s for s in steps if isinstance(s, _EXTRACTOR_TYPES))
    reducers = [s for s in steps if not isinstance(s, _EXTRACTOR_TYPES)]
    extract = _Pipeline(shape, extractors, hog, ())
    width = sum(_extractor_width(s, shape, hog) for s in extractors)

    x: np.ndarray | da.Array
    if isinstance(images, da.Array):
        _check_layout(images.ndim, images.shape, images.dtype, shape)
        if any(math.isnan(c) for c in images.chunks[0]):
            images = images.compute_chunk_sizes()
        x = _dask_map(images, extract, width)
        if reducers:
            x = x.persist()
    else:
        x = extract(_numpy_rows(images, shape))
    n = int(x.shape[0])
    if n == 0:
        raise InvalidInputError("no training images to fit the feature chain on")

    states: list[_State] = []
    for step in reducers:
        state: _State
        if isinstance(step, Std):
            state = _fit_std(x)
        elif isinstance(step, Pca):
            if step.n_components > min(n, width):
                raise InvalidInputError(
                    f"{str(step)!r} needs at least {step.n_components} training images; got {n}"
                )
            state = _fit_pca(x, step.n_components, seed)
            width = step.n_components
        else:
            state = _fit_umap(x, step.n_components, seed)
            width = step.n_components
        states.append(state)
        if not isinstance(step, Umap):
            x = _map_state(x, state, width) if isinstance(x, da.Array) else state.apply(x)
    return ImageFeatures(shape, steps, states, seed=int(seed), hog=hog)


def _fit_std(x: np.ndarray | da.Array) -> _StdState:
    if isinstance(x, da.Array):
        mean, std = dask.compute(x.mean(axis=0), x.std(axis=0))
    else:
        mean, std = x.mean(axis=0), x.std(axis=0)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    return _StdState(mean, np.where(std > 0, std, 1.0))


def _flip_signs(components: np.ndarray) -> np.ndarray:
    """Each component's largest-magnitude entry made positive (scikit-learn's convention)."""
    biggest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), biggest])
    return components * np.where(signs == 0, 1.0, signs)[:, None]


def _fit_pca(x: np.ndarray | da.Array, n_components: int, seed: int) -> _PcaState:
    if isinstance(x, da.Array):
        from dask_ml.decomposition import PCA as DaskPCA

        solver = "full" if x.shape[1] <= FULL_SVD_MAX_COLUMNS else "randomized"
        pca = DaskPCA(
            n_components=n_components, svd_solver=solver, iterated_power=4, random_state=seed
        ).fit(x.rechunk({1: -1}))
        components = np.asarray(pca.components_, dtype=np.float64)
        mean = np.asarray(dask.compute(pca.mean_)[0], dtype=np.float64)
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=n_components, random_state=seed).fit(x)
        components = np.asarray(pca.components_, dtype=np.float64)
        mean = np.asarray(pca.mean_, dtype=np.float64)
    return _PcaState(np.ascontiguousarray(_flip_signs(components)), mean)


def umap_fit_neighbors(n_train: int) -> int:
    """UMAP's ``n_neighbors`` for ``n_train`` distinct training rows: about their square root.

    A fixed neighbourhood is either too wide for a small collection or too narrow for a large
    one. Measured on the default chain (5 seeds each): the 1,797 digits score ARI 0.822 at
    15 neighbours, 0.834 at 30 and 0.845 at 40; the 200 faces 0.513 at 15, 0.508 at 20 and
    0.471 at 10 (0.499 at 30). ``round(sqrt(n))`` clipped to ``UMAP_FIT_NEIGHBORS`` gives 40
    and 15 there, and never more than ``n_train - 1``.
    """
    low, high = UMAP_FIT_NEIGHBORS
    return max(1, min(n_train - 1, high, max(low, round(math.sqrt(n_train)))))


def _fit_umap(x: np.ndarray | da.Array, n_components: int, seed: int) -> _UmapState:
    rows = np.ascontiguousarray(
        np.asarray(x.compute() if isinstance(x, da.Array) else x), dtype=np.float32
    )
    _, first = np.unique(rows, axis=0, return_index=True)
    inputs = rows[np.sort(first)]
    n_train = inputs.shape[0]
    need = max(3, n_components + 2)
    if n_train < need:
        raise InvalidInputError(
            f"umap:{n_components} needs at least {need} distinct training images (after the "
            f"steps before it); got {n_train}"
        )
    with warnings.catch_warnings():
        # umap-learn warns at import that its optional ParametricUMAP needs TensorFlow.
        warnings.filterwarnings("ignore", "Tensorflow not installed", ImportWarning)
        from umap import UMAP

    reducer = UMAP(
        n_components=n_components,
        n_neighbors=umap_fit_neighbors(n_train),
        min_dist=UMAP_MIN_DIST,
        random_state=seed,
        n_jobs=1,
    )
    embedding = np.ascontiguousarray(reducer.fit_transform(inputs), dtype=np.float32)
    return _UmapState(inputs, embedding, UMAP_NEIGHBORS)
