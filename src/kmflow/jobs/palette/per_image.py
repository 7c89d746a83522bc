"""A palette per image: each image quantized to its own k colors.

What pngquant, Pillow and ImageMagick's ``-colors`` do, and what "quantize these photos"
means. Each fit is a weighted k-means on that image's color histogram (unique colors weighted
by their counts: the same objective as k-means on every pixel):

1. the unique colors are pooled into cells of 4 and of 5 bits per sRGB channel (at most
   4,096 and 32,768 cells), each cell their weighted mean color and total count;
2. ``n_init`` seeded k-means++ starts, each followed by Lloyd iterations on the 4-bit
   cells; the start with the lowest inertia is kept;
3. Lloyd iterations from there on the 5-bit cells until the centers move less than ``tol``
   (scaled by the colors' variance) or ``max_iter``, then at most 10 on the exact unique
   colors. Small images skip the levels they do not need.

An image with no more distinct colors than k keeps its exact colors. Randomness is keyed on
the seed and the image's content hash, so a palette does not depend on the batch an image
lands in, the number of workers, or the other images of the run.

:func:`quantize_images` runs thousands of such fits as Dask tasks, a batch of images per task
(about ``batch_pixels`` each) so that scheduling costs little against the work; each task
reads its images' pixels once, fits, paints, encodes and writes the PNGs, and returns only
small per-image figures. An image larger than ``max_task_pixels`` gets its histogram and its
fit from the distributed estimator instead, then is painted in a task of its own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import dask
import numba as nb
import numpy as np

from kmflow.errors import InvalidInputError
from kmflow.jobs.palette.color import lab_to_srgb
from kmflow.jobs.palette.render import ColorHistogram, ColorSpace, paint
from kmflow.kernels import _numba
from kmflow.kernels.dense import tolerance
from kmflow.storage.fs import write_bytes_atomic
from kmflow.storage.images import DecodedImage, ImageRecord

if TYPE_CHECKING:  # not at run time: a worker painting images never imports the store
    from kmflow.storage.pixelstore import DecodedBatch, PixelStore

__all__ = [
    "ImagePalette",
    "ImageQuantizer",
    "PerImageParams",
    "PerImageReport",
    "QuantizedImage",
    "fit_image_palette",
    "quantize_images",
]

logger = logging.getLogger(__name__)

#: Version of the per-image fitting procedure; part of every stored palette's key, so a
#: changed procedure never reuses palettes fitted by an older one.
ALGORITHM_VERSION = 1
_COARSE_BITS, _COARSE_LIMIT = 4, 4096
_FINE_BITS, _FINE_LIMIT = 5, 32768
#: Lloyd iterations on the exact colors after convergence on the 5-bit cells.
_EXACT_ITER = 10
_DEFAULT_BATCH_PIXELS = 4_000_000
#: Dask priority of the painting tasks (the ingest's tasks have the default, 0).
_PAINT_PRIORITY = -1
_DEFAULT_MAX_TASK_PIXELS = 64_000_000


@dataclass(frozen=True)
class PerImageParams:
    """How each image's palette is fitted and painted.

    Attributes
    ----------
    n_colors : int
        k, the palette size of every image (fewer for an image with fewer colors).
    color_space : {"rgb", "lab"}
        Space the distances are measured in; output colors are sRGB.
    seed : int
        With the image's content hash, seeds its k-means++ starts.
    n_init : int
        Seeded starts per image; the best one (lowest inertia) is kept.
    max_iter : int
        Lloyd iterations at most, per start and for the final refinement.
    tol : float
        Relative tolerance on the center shift (scaled by the colors' variance).
    dither : bool
        Floyd–Steinberg error diffusion when painting.
    """

    n_colors: int
    color_space: ColorSpace = "rgb"
    seed: int = 0
    n_init: int = 8
    max_iter: int = 300
    tol: float = 1e-4
    dither: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.n_colors, bool) or not isinstance(self.n_colors, int):
            raise InvalidInputError(f"n_colors must be an int; got {self.n_colors!r}")
        if not 1 <= self.n_colors <= 65536:
            raise InvalidInputError(f"n_colors must be in [1, 65536]; got {self.n_colors}")
        if self.color_space not in ("rgb", "lab"):
            raise InvalidInputError(f"color_space must be 'rgb' or 'lab'; got {self.color_space!r}")
        if self.n_init < 1 or self.max_iter < 1 or self.tol < 0:
            raise InvalidInputError(
                f"need n_init >= 1, max_iter >= 1 and tol >= 0; got n_init={self.n_init}, "
                f"max_iter={self.max_iter}, tol={self.tol}"
            )

    def palette_key(self, sha256: str) -> str:
        """Identity of an image's fitted palette: its content and every fitting knob."""
        text = (
            f"{sha256}:{self.n_colors}:{self.color_space}:{self.seed}:{self.n_init}:"
            f"{self.max_iter}:{self.tol!r}:v{ALGORITHM_VERSION}"
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ImagePalette:
    """One image's fitted palette.

    Attributes
    ----------
    centers : ndarray of float64, shape (m, 3)
        In the fit color space; ``m`` is k, or the number of distinct colors when smaller.
    rgb : ndarray of uint8, shape (m, 3)
    inertia : float
        Sum over the image's pixels of the squared distance to the nearest center.
    n_iter : int
        Lloyd iterations of the final refinement on the exact colors.
    exact : bool
        True when the image has no more distinct colors than k (kept exactly).
    labels : ndarray of int32, shape (n_colors,), optional
        The nearest center of each of the histogram's colors, when the fit computed it (so
        that painting need not again); not stored.
    """

    centers: np.ndarray
    rgb: np.ndarray
    inertia: float
    n_iter: int
    exact: bool
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)


def palette_rgb(centers: np.ndarray, color_space: ColorSpace) -> np.ndarray:
    """The sRGB colors (uint8) that centers in ``color_space`` are painted as."""
    if color_space == "lab":
        return lab_to_srgb(centers)
    return np.clip(np.rint(centers), 0, 255).astype(np.uint8)


def _rng(seed: int, sha256: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(sha256[:16], 16), int(sha256[16:32], 16)])


@nb.njit(nogil=True, cache=True)
def _pool(codes, drop, bits, X, w, sums, weight):  # type: ignore[no-untyped-def]
    """Add each row to its cell: codes ``>> drop`` to ``bits`` per channel, packed."""
    for i in range(codes.shape[0]):
        c = (
            ((np.int64(codes[i, 0]) >> drop) << (2 * bits))
            | ((np.int64(codes[i, 1]) >> drop) << bits)
            | (np.int64(codes[i, 2]) >> drop)
        )
        weight[c] += w[i]
        for f in range(X.shape[1]):
            sums[c, f] += w[i] * np.float64(X[i, f])


def _cells(
    codes: np.ndarray, X: np.ndarray, w: np.ndarray, bits: int, code_bits: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool rows into cells of ``bits`` per sRGB channel: weighted means, weights, codes.

    ``codes`` are the rows' sRGB colors (``code_bits`` per channel: 8 for colors, fewer for
    cells pooled already) as three integer columns; the returned codes are the occupied
    cells' own (0 .. 2**bits - 1), for pooling them further. One compiled pass over the rows.
    """
    n_cells = 1 << (3 * bits)
    sums = np.zeros((n_cells, X.shape[1]))
    weight = np.zeros(n_cells)
    _pool(
        np.ascontiguousarray(codes),
        code_bits - bits,
        bits,
        np.ascontiguousarray(X),
        w,
        sums,
        weight,
    )
    used = np.flatnonzero(weight)
    cell_codes = np.stack(
        [
            (used >> (2 * bits)) & ((1 << bits) - 1),
            (used >> bits) & ((1 << bits) - 1),
            used & ((1 << bits) - 1),
        ],
        axis=1,
    )
    return sums[used] / weight[used, None], weight[used], cell_codes


@nb.njit(nogil=True, cache=True)
def _kmeans_pp(X, w, trials, u, centers):  # type: ignore[no-untyped-def]
    n, d = X.shape
    k = centers.shape[0]
    d2 = np.empty(n)
    cand = np.empty(n)
    best_d2 = np.empty(n)
    target = u[0] * w.sum()
    acc = 0.0
    first = n - 1
    for i in range(n):
        acc += w[i]
        if acc > target:
            first = i
            break
    centers[0, :] = X[first, :]
    for i in range(n):
        v = 0.0
        for f in range(d):
            t = X[i, f] - centers[0, f]
            v += t * t
        d2[i] = v
    cum = np.empty(n)
    for c in range(1, k):
        # Running sums of the weighted distances, once for all trials: a trial's pick, the
        # first row whose running sum passes its target, is then a binary search.
        pot = 0.0
        for i in range(n):
            pot += w[i] * d2[i]
            cum[i] = pot
        if pot <= 0.0:  # every point sits on a center already
            for r in range(c, k):
                centers[r, :] = centers[0, :]
            return
        best_pot = np.inf
        best = 0
        for trial in range(trials):
            target = u[1 + (c - 1) * trials + trial] * pot
            pick = min(np.searchsorted(cum, target, side="right"), n - 1)
            p = 0.0
            for i in range(n):
                v = 0.0
                for f in range(d):
                    t = X[i, f] - X[pick, f]
                    v += t * t
                m = min(d2[i], v)
                cand[i] = m
                p += w[i] * m
            if p < best_pot:
                best_pot = p
                best = pick
                best_d2[:] = cand
        centers[c, :] = X[best, :]
        d2[:] = best_d2


def _kmeans_plusplus(X: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted greedy k-means++ (2 + log k candidates per center, as scikit-learn does)."""
    trials = 2 + int(math.log(k))
    centers = np.empty((k, X.shape[1]))
    uniforms = rng.random(1 + (k - 1) * trials)
    _kmeans_pp(np.ascontiguousarray(X, dtype=np.float64), w, trials, uniforms, centers)
    return centers


def _lloyd(
    X: np.ndarray, w: np.ndarray, centers: np.ndarray, max_iter: int, tol_abs: float
) -> tuple[np.ndarray, float, int, np.ndarray]:
    """Weighted Lloyd iterations in memory; empty clusters move to the farthest points.

    Returns the centers, their inertia, the iterations run and each row's nearest center
    (int32, as :func:`kmflow.kernels.dense.nearest` gives it).
    """
    k, d = centers.shape
    centers = centers.copy()
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is returned
        sums = np.zeros((k, d))
        counts = np.zeros(k)
        _numba.accumulate(X, w, True, np.ascontiguousarray(centers.T), sums, counts)
        empty = counts <= 0
        new = sums / np.where(empty, 1.0, counts)[:, None]
        if empty.any():
            labels = np.empty(X.shape[0], dtype=np.int32)
            d2 = np.empty(X.shape[0])
            _numba.assign(X, np.ascontiguousarray(centers.T), labels, d2)
            far = np.argsort(-(w * d2), kind="stable")[: int(empty.sum())]
            new[empty] = X[far]
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if shift <= tol_abs:
            break
    labels = np.empty(X.shape[0], dtype=np.int32)
    d2 = np.empty(X.shape[0])
    _numba.assign(X, np.ascontiguousarray(centers.T), labels, d2)
    return centers, float(w @ d2), n_iter, labels


def _variance(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted per-feature variance (of the cells: it only scales the tolerance)."""
    mean = (w @ X) / w.sum()
    return (w @ (X - mean) ** 2) / w.sum()


def fit_image_palette(hist: ColorHistogram, params: PerImageParams, sha256: str) -> ImagePalette:
    """Fit one image's palette: weighted k-means on its color histogram.

    Parameters
    ----------
    hist : ColorHistogram
        The image's unique colors and counts.
    params : PerImageParams
    sha256 : str
        The image's content hash (hex); with ``params.seed`` it seeds the starts.

    Returns
    -------
    ImagePalette
        ``exact`` when the image has no more than k distinct colors.

    Notes
    -----
    In memory, no Dask: meant to run inside a task. Cost: the k-means++ starts and their
    Lloyd iterations on at most 32,768 cells, then a few iterations on the unique colors.
    """
    k = params.n_colors
    X = np.asarray(hist.in_space(params.color_space), dtype=np.float64)
    w = hist.counts.astype(np.float64)
    if X.shape[0] <= k:
        return ImagePalette(
            centers=X.copy(),
            rgb=hist.colors.copy(),
            inertia=0.0,
            n_iter=0,
            exact=True,
        )
    rng = _rng(params.seed, sha256)
    # Three resolutions: starts on <= 4,096 cells, convergence on <= 32,768, then at most
    # a few iterations on the exact unique colors (the cells' optimum is already close).
    codes, code_bits = hist.colors, 8
    if X.shape[0] > _FINE_LIMIT:
        fine_x, fine_w, codes = _cells(codes, hist.in_space(params.color_space), w, _FINE_BITS)
        code_bits = _FINE_BITS
    else:
        fine_x, fine_w = X, w
    if fine_x.shape[0] > _COARSE_LIMIT:
        coarse_x, coarse_w, _ = _cells(codes, fine_x, fine_w, _COARSE_BITS, code_bits)
    else:
        coarse_x, coarse_w = fine_x, fine_w
    tol_abs = tolerance(_variance(fine_x, fine_w), params.tol)
    if coarse_x.shape[0] <= k:
        start = _kmeans_plusplus(fine_x, fine_w, k, rng)
    else:
        best = (np.inf, np.empty((0, 3)))
        for _ in range(params.n_init):
            seeded = _kmeans_plusplus(coarse_x, coarse_w, k, rng)
            centers, inertia, _, _ = _lloyd(coarse_x, coarse_w, seeded, params.max_iter, tol_abs)
            if inertia < best[0]:
                best = (inertia, centers)
        start = best[1]
    centers, inertia, n_iter, labels = _lloyd(fine_x, fine_w, start, params.max_iter, tol_abs)
    if fine_x is not X:
        refine = min(params.max_iter, _EXACT_ITER)
        centers, inertia, n_iter, labels = _lloyd(X, w, centers, refine, tol_abs)
    return ImagePalette(
        centers=centers,
        rgb=palette_rgb(centers, params.color_space),
        inertia=inertia,
        n_iter=n_iter,
        exact=False,
        labels=labels,
    )


# --------------------------------------------------------------------------- many images


@dataclass(frozen=True)
class QuantizedImage:
    """One image written with its own palette, and how close it is to the original."""

    source: str
    relpath: str
    sha256: str
    output: str
    height: int
    width: int
    n_colors: int
    palette: list[list[int]]
    exact: bool
    refitted: bool
    psnr: float
    delta_e: float
    sse: float


@dataclass(frozen=True)
class PerImageReport:
    """Outcome of :func:`quantize_images`.

    ``psnr`` pools the squared error of every pixel written; ``delta_e`` is the pixel-
    weighted mean CIEDE2000 difference. ``n_fitted`` palettes were fitted, the others were
    found in the store (same image content, same parameters).
    """

    images: list[QuantizedImage]
    psnr: float
    delta_e: float
    n_pixels: int
    n_fitted: int
    n_tasks: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Job:
    record: ImageRecord
    output: str
    centers: np.ndarray | None  # a stored (or distributed-fitted) palette, else fit here


class _Jobs(tuple):  # type: ignore[type-arg]
    """A task's jobs as one argument: Dask searches plain lists and tuples (and dataclasses)
    for collections element by element, and would add a task per job to rebuild them; a
    subclass it passes as it is, inside the task that takes it."""

    __slots__ = ()


def _runs(jobs: Sequence[_Job]) -> list[tuple[int, int]]:
    """Row ranges of the store covering a batch's images, one per run of adjacent images."""
    runs: list[tuple[int, int]] = []
    for job in jobs:
        start, stop = job.record.offset, job.record.offset + job.record.n_pixels
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs


def _image_rows(blocks: list[np.ndarray], jobs: Sequence[_Job]) -> list[np.ndarray]:
    """Each job's pixel rows, cut from the blocks :func:`_runs` described."""
    ranges = _runs(jobs)
    out = []
    for job in jobs:
        start = job.record.offset
        i = next(i for i, (a, b) in enumerate(ranges) if a <= start < b)
        base = start - ranges[i][0]
        out.append(blocks[i][base : base + job.record.n_pixels])
    return out


def _quantize_rows(
    rows: list[np.ndarray],
    jobs: Sequence[_Job],
    params: PerImageParams,
    storage_options: dict[str, Any] | None,
) -> list[tuple[QuantizedImage, np.ndarray]]:
    """Fit, paint, encode and write images given their pixel rows (the body of every task)."""
    results = []
    for px, job in zip(rows, jobs, strict=True):
        r = job.record
        hist = ColorHistogram.of(px)
        labels = None
        if job.centers is None:
            pal = fit_image_palette(hist, params, r.sha256)
            centers, rgb, exact, refitted = pal.centers, pal.rgb, pal.exact, True
            labels = pal.labels
        else:
            centers = job.centers
            rgb = palette_rgb(centers, params.color_space)
            exact, refitted = len(hist.colors) <= params.n_colors, False
        painted = paint(
            hist,
            r.height,
            r.width,
            centers,
            rgb,
            params.color_space,
            dither=params.dither,
            labels=labels,
        )
        # Atomic for readers; no fsync per file: a re-run recreates any output a crash lost.
        write_bytes_atomic(job.output, painted.png, storage_options, durable=False)
        results.append(
            (
                QuantizedImage(
                    source=r.source,
                    relpath=r.relpath,
                    sha256=r.sha256,
                    output=job.output,
                    height=r.height,
                    width=r.width,
                    n_colors=len(hist.colors),
                    palette=rgb.tolist(),
                    exact=exact,
                    refitted=refitted,
                    psnr=painted.psnr,
                    delta_e=painted.delta_e,
                    sse=painted.sse,
                ),
                centers,
            )
        )
    return results


def _quantize_batch(
    blocks: list[np.ndarray],
    jobs: Sequence[_Job],
    params: PerImageParams,
    storage_options: dict[str, Any] | None,
) -> list[tuple[QuantizedImage, np.ndarray]]:
    """One Dask task on stored images.

    ``blocks`` are the store rows of :func:`_runs` of the batch: adjacent images arrive as
    one slice, so a batch of many small images costs the graph one slice, not one per image.
    """
    return _quantize_rows(_image_rows(blocks, jobs), jobs, params, storage_options)


def _quantize_decoded(
    images: list[DecodedImage],
    picks: list[int],
    jobs: Sequence[_Job],
    params: PerImageParams,
    storage_options: dict[str, Any] | None,
) -> list[tuple[QuantizedImage, np.ndarray]]:
    """One Dask task on images just decoded by an ingest: ``images[picks]`` of one decode
    task, on the worker that decoded them (nothing read from the store, nothing moved)."""
    rows = [images[i].pixels for i in picks]  # only decoded images are picked
    return _quantize_rows(rows, jobs, params, storage_options)  # type: ignore[arg-type]


def _fit_large(store: PixelStore, record: ImageRecord, params: PerImageParams) -> np.ndarray:
    """Centers for an image too large for one task: the distributed histogram and estimator."""
    from kmflow.estimator import KMeans
    from kmflow.jobs.palette.color import srgb_to_lab
    from kmflow.jobs.palette.histogram import color_histogram

    pixels = store.pixels()[record.offset : record.offset + record.n_pixels]
    colors, counts = color_histogram(pixels)
    if len(colors) <= params.n_colors:
        return (srgb_to_lab(colors) if params.color_space == "lab" else colors).astype(np.float64)
    X = srgb_to_lab(colors) if params.color_space == "lab" else colors
    seed = int(_rng(params.seed, record.sha256).integers(2**31))
    km = KMeans(params.n_colors, random_state=seed, max_iter=params.max_iter, tol=params.tol)
    km.fit(X, sample_weight=counts)
    return np.asarray(km.cluster_centers_, dtype=np.float64)


def _batches(jobs: Sequence[_Job], batch_pixels: int, max_images: int = 256) -> list[list[_Job]]:
    out: list[list[_Job]] = []
    current: list[_Job] = []
    size = 0
    for job in jobs:
        if current and (size + job.record.n_pixels > batch_pixels or len(current) >= max_images):
            out.append(current)
            current, size = [], 0
        current.append(job)
        size += job.record.n_pixels
    if current:
        out.append(current)
    return out


class ImageQuantizer:
    """Quantizes images, each to its own palette, as their pixels become available.

    Two ways in: :meth:`decoded` takes the new images of an ingest batch while their decoded
    pixels are still on the workers (pass it as ``PixelStore.ingest(on_batch=...)``), so they
    are fitted, painted and written beside the store's own write and never read back;
    :meth:`finish` then renders every other image asked for from the store (duplicates of
    stored images, images too large for one task, everything when nothing was streamed),
    waits for all of them, stores the new palettes and returns the report. Use it as a
    context manager: leaving it early cancels what is still running.

    Parameters
    ----------
    store : PixelStore
        Holds the images' pixels, and the palettes fitted by earlier runs.
    params : PerImageParams
    outputs : mapping of str to str, optional
        Source URL to output URL of the images :meth:`decoded` may render; images not in it
        are left to :meth:`finish`.
    centers : ndarray of shape (k, 3), optional
        One palette (in ``params.color_space``) for every image instead of a fit per
        image: how a shared palette is rendered. Nothing is then fitted or stored.
    storage_options : dict, optional
        fsspec options for the outputs.
    reuse_palettes : bool, default True
        Paint a stored image with the palette the store already holds for the same content
        and parameters instead of fitting again; new palettes are stored either way.
    batch_pixels : int, default 4,000,000
        Pixels of stored images fitted per task (decoded images go one task per decode task
        of the ingest, on the worker that holds them).
    max_task_pixels : int, default 64,000,000
        Larger images are fitted with the distributed estimator on their histogram.
    progress : callable, optional
        ``progress(done, total)`` images, as tasks finish.
    max_pending : int, default 2
        Ingest batches whose renders may be unfinished at once; :meth:`decoded` waits for
        the oldest beyond that, which bounds the decoded pixels held on the workers.

    Notes
    -----
    On a distributed client tasks are submitted as they come and collected as they finish
    (no wave waits for its slowest task); without one each call computes its tasks at once.
    A painting of decoded images runs on the worker holding them unless that worker has
    more painting queued than another would have with it added: then the pixels travel.
    """

    def __init__(
        self,
        store: PixelStore,
        params: PerImageParams,
        *,
        outputs: Mapping[str, str] | None = None,
        centers: np.ndarray | None = None,
        storage_options: dict[str, Any] | None = None,
        reuse_palettes: bool = True,
        batch_pixels: int = _DEFAULT_BATCH_PIXELS,
        max_task_pixels: int = _DEFAULT_MAX_TASK_PIXELS,
        progress: Callable[[int, int], None] | None = None,
        max_pending: int = 2,
    ) -> None:
        if batch_pixels < 1 or max_task_pixels < 1 or max_pending < 1:
            raise InvalidInputError(
                f"batch_pixels, max_task_pixels and max_pending must be positive; got "
                f"{batch_pixels}, {max_task_pixels}, {max_pending}"
            )
        self._t0 = time.perf_counter()
        self._store = store
        self._params = params
        self._outputs = dict(outputs or {})
        self._centers = centers
        self._storage_options = storage_options
        self._reuse = reuse_palettes
        self._batch_pixels = batch_pixels
        self._max_task_pixels = max_task_pixels
        self._progress = progress
        self._max_pending = max_pending
        self._streamed: set[str] = set()  # outputs submitted by decoded()
        self._results: dict[str, tuple[QuantizedImage, np.ndarray]] = {}  # by output URL
        self._pending: deque[list[tuple[Any, list[_Job]]]] = deque()  # futures per call
        self._placed: dict[Any, str] = {}  # future key: the worker a painting was sent to
        self._n_tasks = 0
        self._done = 0
        self._total = len(self._outputs)

    def __enter__(self) -> ImageQuantizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Cancel the tasks still running (their images may or may not be written)."""
        while self._pending:
            for future, _ in self._pending.popleft():
                future.cancel()

    def decoded(self, batch: DecodedBatch) -> None:
        """Render the new images of one ingest batch from their decoded pixels."""
        if self._centers is not None:
            raise ValueError("decoded() is for per-image palettes (no shared centers)")
        picked: dict[int, tuple[list[int], list[_Job]]] = {}
        for record, (gi, ii) in zip(batch.records, batch.where, strict=True):
            output = self._outputs.get(record.source)
            if (
                output is None
                or output in self._streamed
                or record.n_pixels > self._max_task_pixels
            ):
                continue
            self._streamed.add(output)
            picks, jobs = picked.setdefault(gi, ([], []))
            picks.append(ii)
            jobs.append(_Job(record, output, None))
        task = dask.delayed(_quantize_decoded, pure=False)
        self._submit(
            [
                task(
                    batch.groups[gi],
                    picks,
                    _Jobs(jobs),
                    self._params,
                    self._storage_options,
                )
                for gi, (picks, jobs) in picked.items()
            ],
            [jobs for _, jobs in picked.values()],
            inputs=[batch.groups[gi] for gi in picked],
        )

    def finish(self, images: Sequence[tuple[ImageRecord, str]]) -> PerImageReport:
        """Render the images not yet rendered, wait for every task, and report.

        Parameters
        ----------
        images : sequence of (ImageRecord, str)
            Every stored image asked for with the URL its PNG goes to (see
            :func:`kmflow.jobs.palette.outputs.output_urls`), those :meth:`decoded` already
            rendered included: the report lists them in this order.
        """
        items = list(images)
        self._total = len(items)
        params, shared = self._params, self._centers is not None
        rest = [(r, o) for r, o in items if o not in self._streamed]
        keys = {r.sha256: params.palette_key(r.sha256) for r, _ in rest}
        known: dict[str, np.ndarray] = {}
        if self._reuse and rest and not shared:
            known = self._store.image_palettes(list(keys.values()))
        jobs: list[_Job] = []
        fitted_large: dict[str, np.ndarray] = {}
        for record, output in rest:
            given = self._centers if shared else known.get(keys[record.sha256])
            if given is None and record.n_pixels > self._max_task_pixels:
                if record.sha256 not in fitted_large:
                    logger.info(
                        "fitting %s (%d pixels) on the cluster", record.relpath, record.n_pixels
                    )
                    fitted_large[record.sha256] = _fit_large(self._store, record, params)
                given = fitted_large[record.sha256]
            jobs.append(_Job(record, output, given))
        if self._progress is not None and not self._done:
            self._progress(0, self._total)
        batches = _batches(jobs, self._batch_pixels)
        pixels = self._store.pixels() if jobs else None
        task = dask.delayed(_quantize_batch, pure=False)
        self._submit(
            [
                task(
                    [pixels[a:b] for a, b in _runs(batch)] if pixels is not None else [],
                    _Jobs(batch),
                    params,
                    self._storage_options,
                )
                for batch in batches
            ],
            batches,
        )
        self._collect(keep=0)
        results = [self._results[o] for _, o in items]
        new = {params.palette_key(q.sha256): c for q, c in results if q.refitted}
        new.update({params.palette_key(s): c for s, c in fitted_large.items()})
        if new and not shared:
            self._store.write_image_palettes(new)
        quantized = [q for q, _ in results]
        if shared:  # "exact" means an image kept its own colors: never so with a shared palette
            quantized = [replace(q, exact=False) for q in quantized]
        n = sum(q.height * q.width for q in quantized)
        sse = sum(q.sse for q in quantized)
        de = sum(q.delta_e * q.height * q.width for q in quantized)
        from kmflow.jobs.palette.color import psnr

        return PerImageReport(
            images=quantized,
            psnr=psnr(sse / (3 * n)) if n else float("nan"),
            delta_e=de / n if n else float("nan"),
            n_pixels=n,
            n_fitted=sum(1 for q in quantized if q.refitted) + len(fitted_large),
            n_tasks=self._n_tasks,
            seconds=time.perf_counter() - self._t0,
            params=asdict(params),
        )

    # ------------------------------------------------------------------- tasks

    def _submit(
        self, tasks: list[Any], jobs: list[list[_Job]], inputs: list[Any] | None = None
    ) -> None:
        """Run ``tasks`` (``jobs`` are their images); ``inputs``: each one's decode task."""
        if not tasks:
            return
        self._n_tasks += len(tasks)
        client = _client()
        if client is None:
            for out, batch in zip(dask.compute(*tasks), jobs, strict=True):
                self._take(out, batch)
            return
        # Below the ingest's own tasks: its decodes and writes never queue behind paintings
        # (the ingest would then wait for every batch's slowest image), and the workers
        # paint whenever the ingest leaves them idle.
        if inputs is None:
            futures = client.compute(tasks, priority=_PAINT_PRIORITY)
        else:
            futures = [None] * len(tasks)
            places = self._places(client, inputs, jobs)
            for worker in set(places):
                picks = [i for i, w in enumerate(places) if w == worker]
                for i, future in zip(
                    picks,
                    client.compute(
                        [tasks[i] for i in picks],
                        priority=_PAINT_PRIORITY,
                        workers=[worker],
                        allow_other_workers=True,
                    ),
                    strict=True,
                ):
                    futures[i] = future
                    self._placed[future.key] = worker
        self._pending.append(list(zip(futures, jobs, strict=True)))
        self._collect(keep=self._max_pending)

    def _places(self, client: Any, inputs: list[Any], jobs: list[list[_Job]]) -> list[str]:
        """The worker each painting of decoded images is sent to: the one that decoded them,
        unless it has so much painting queued that another worker would still have less
        with this one added (then the images travel; Dask's work stealing rarely moves a
        task whose input is megabytes, so one worker would paint while the other waits)."""
        from distributed import futures_of

        threads = client.nthreads()
        keys = [futures_of(d)[0].key for d in inputs]
        holders = client.who_has([f for d in inputs for f in futures_of(d)])
        load = dict.fromkeys(threads, 0.0)  # pixels queued per thread
        for call in self._pending:
            for future, batch in call:
                worker = self._placed.get(future.key)
                if worker in load and not future.done():
                    load[worker] += sum(j.record.n_pixels for j in batch) / threads[worker]
        places = []
        for key, batch in zip(keys, jobs, strict=True):
            pixels = sum(j.record.n_pixels for j in batch)
            home = next((w for w in holders.get(key, ()) if w in load), None)
            least = min(load, key=load.__getitem__)
            if home is None or load[home] > load[least] + pixels / threads[least]:
                home = least
            load[home] += pixels / threads[home]
            places.append(home)
        return places

    def _collect(self, keep: int) -> None:
        """Take every finished task, then wait until at most ``keep`` calls have some left."""
        from distributed import wait

        for call in self._pending:
            for item in [i for i in call if i[0].done()]:
                self._take_future(call, item)
        self._pending = deque(call for call in self._pending if call)
        while len(self._pending) > keep:
            call = self._pending[0]
            wait([future for future, _ in call])
            for item in list(call):
                self._take_future(call, item)
            self._pending.popleft()

    def _take_future(
        self, call: list[tuple[Any, list[_Job]]], item: tuple[Any, list[_Job]]
    ) -> None:
        future, batch = item
        out = future.result()  # a task's error is raised here
        self._placed.pop(future.key, None)
        future.release()
        call.remove(item)
        self._take(out, batch)

    def _take(self, out: list[tuple[QuantizedImage, np.ndarray]], batch: Sequence[_Job]) -> None:
        for job, result in zip(batch, out, strict=True):
            self._results[job.output] = result
        self._done += len(batch)
        if self._progress is not None:
            self._progress(self._done, max(self._total, self._done))


def quantize_images(
    store: PixelStore,
    images: Sequence[tuple[ImageRecord, str]],
    params: PerImageParams,
    *,
    centers: np.ndarray | None = None,
    storage_options: dict[str, Any] | None = None,
    reuse_palettes: bool = True,
    batch_pixels: int = _DEFAULT_BATCH_PIXELS,
    max_task_pixels: int = _DEFAULT_MAX_TASK_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> PerImageReport:
    """Quantize stored images, each to its own palette, and write them as PNG.

    :class:`ImageQuantizer` with nothing streamed: every image is read from the store (once,
    by the task that renders it). The parameters are the quantizer's; ``images`` those of
    :meth:`ImageQuantizer.finish`. Large images cost one histogram ``compute`` and one
    distributed fit each.
    """
    with ImageQuantizer(
        store,
        params,
        centers=centers,
        storage_options=storage_options,
        reuse_palettes=reuse_palettes,
        batch_pixels=batch_pixels,
        max_task_pixels=max_task_pixels,
        progress=progress,
    ) as quantizer:
        return quantizer.finish(images)


def _client() -> Any:
    """The distributed client tasks run on, or None (without importing distributed)."""
    import sys

    if "distributed" not in sys.modules:  # a client can only exist once it is imported
        return None
    from kmflow.cluster.resources import current_client

    return current_client()
