"""Color quantization of an image collection: ingest, fit a palette, apply it.

Three steps over a :class:`~kmflow.storage.pixelstore.PixelStore`, each usable alone (the
Prefect tasks wrap them one by one):

1. :func:`ingest` decodes images on the Dask workers into the store (incremental, idempotent).
2. :func:`fit_palette` fits k-means to the stored pixels, by default on their color histogram
   (unique colors weighted by counts: the same centers as the full-pixel fit, much faster).
3. :func:`apply_palette` labels every stored pixel, writes ``labels`` to the store, renders
   each image with the palette as a PNG under the output folder or URL, writes a palette
   swatch, and measures PSNR and CIEDE2000 ΔE per image and overall.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np

from kmflow.errors import InvalidInputError, StoreCorruptError, TooFewDistinctPointsError
from kmflow.estimator import KMeans
from kmflow.kernels.color import ciede2000, lab_to_srgb, psnr, srgb_to_lab
from kmflow.kernels.drift import DriftReport, DriftThresholds, batch_statistics, drift_report
from kmflow.kernels.histogram import color_histogram, pack_rgb, unpack_rgb
from kmflow.kernels.lloyd import Callback, assign, nearest
from kmflow.kernels.metrics import internal_metrics, silhouette_sample
from kmflow.kernels.split import holdout_items, holdout_rows
from kmflow.model import Model
from kmflow.storage.fs import join_url, write_bytes_atomic
from kmflow.storage.images import encode_png, encode_png_indexed
from kmflow.storage.pixelstore import ImageRecord, PixelStore

__all__ = [
    "ApplyReport",
    "Evaluation",
    "ImageQuality",
    "ImageResult",
    "Palette",
    "Split",
    "apply_palette",
    "batch_drift",
    "evaluate_palette",
    "fit_palette",
    "palette_from_centers",
    "palette_from_model",
    "palette_swatch",
    "select",
]

logger = logging.getLogger(__name__)

ColorSpace = Literal["rgb", "lab"]
FitMethod = Literal["histogram", "pixels"]


@dataclass(frozen=True)
class Palette:
    """A fitted palette: k centers in the fit color space and their sRGB colors.

    Attributes
    ----------
    centers : ndarray of float64, shape (k, 3)
        Centers in ``color_space`` (RGB 0..255 or CIE Lab).
    rgb : ndarray of uint8, shape (k, 3)
        The output colors (sRGB), what quantized images are painted with.
    color_space : {"rgb", "lab"}
    method : {"histogram", "pixels"}
        Whether the fit ran on unique colors weighted by counts or on every pixel.
    inertia : float
        Sum over all pixels of the squared distance (in ``color_space``) to the nearest center.
    n_iter, converged, seed, n_pixels, n_colors, fit_seconds
        As the estimator reports them; ``n_colors`` is the number of rows fitted.
    """

    centers: np.ndarray
    rgb: np.ndarray
    color_space: ColorSpace
    method: FitMethod
    inertia: float
    n_iter: int
    converged: bool
    seed: int
    n_pixels: int
    n_colors: int
    fit_seconds: float

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])


def _to_fit_space(rgb: np.ndarray, color_space: ColorSpace) -> np.ndarray:
    return srgb_to_lab(rgb) if color_space == "lab" else rgb


def _pixels_in(pixels: da.Array, color_space: ColorSpace) -> da.Array:
    """Pixels in the fit space: uint8 RGB as stored, or float64 Lab converted per block."""
    if color_space == "rgb":
        return pixels
    return da.map_blocks(srgb_to_lab, pixels, dtype=np.float64, meta=np.empty((0, 3)))


def _palette_rgb(centers: np.ndarray, color_space: ColorSpace) -> np.ndarray:
    if color_space == "lab":
        return lab_to_srgb(centers)
    return np.clip(np.rint(centers), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Split:
    """A seeded train / held-out split of the stored pixels.

    Attributes
    ----------
    by : {"image", "row"}
        "image" holds out whole images (chosen by their content hash), "row" holds out
        single pixels (chosen by their row index); both are the same for any chunking.
    fraction : float in (0, 1)
        Share of images or rows held out for evaluation.
    seed : int
    """

    by: Literal["image", "row"]
    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.by not in ("image", "row"):
            raise InvalidInputError(f"split by must be 'image' or 'row'; got {self.by!r}")
        if not 0.0 < self.fraction < 1.0:
            raise InvalidInputError(f"holdout fraction must be in (0, 1); got {self.fraction!r}")


Part = Literal["all", "train", "eval"]


@dataclass(frozen=True)
class Selection:
    """The pixels of one part of a split: rows of ``pixels`` where ``mask`` is True."""

    pixels: da.Array
    mask: da.Array | None
    images: list[ImageRecord]
    masks: list[da.Array | None]  # per image, aligned with ``images``


def select(
    store: PixelStore,
    split: Split | None = None,
    part: Part = "all",
    images: Sequence[ImageRecord] | None = None,
) -> Selection:
    """The stored pixels of one part of a split (lazily; nothing is read).

    Parameters
    ----------
    store : PixelStore
    split : Split, optional
        ``None`` selects everything whatever ``part`` says.
    part : {"all", "train", "eval"}
    images : sequence of ImageRecord, optional
        Only these images of the store (e.g. the most recent ones); the split is then made
        among them. Default: every image.

    Raises
    ------
    InvalidInputError
        If nothing is selected, or a split by image has fewer than 2 images.
    """
    records = list(store.images() if images is None else images)
    if not records:
        raise InvalidInputError(f"the pixel store {store.url} holds no images: ingest some first")
    splitting = split is not None and part != "all"
    if splitting and split is not None and split.by == "image":
        held = holdout_items([r.sha256 for r in records], split.fraction, seed=split.seed)
        records = [r for r, h in zip(records, held, strict=True) if h == (part == "eval")]
    store_pixels = store.pixels()
    if images is None and not (splitting and split is not None and split.by == "image"):
        pixels, starts = store_pixels, [r.offset for r in records]
    else:
        parts = [store_pixels[r.offset : r.offset + r.n_pixels] for r in records]
        pixels = da.concatenate(parts, axis=0)
        starts = np.concatenate([[0], np.cumsum([r.n_pixels for r in records])[:-1]]).tolist()
    if not (splitting and split is not None and split.by == "row"):
        return Selection(pixels, None, records, [None] * len(records))
    held_rows = holdout_rows(pixels, split.fraction, seed=split.seed)
    mask = held_rows if part == "eval" else ~held_rows
    masks: list[da.Array | None] = [
        mask[s : s + r.n_pixels] for s, r in zip(starts, records, strict=True)
    ]
    return Selection(pixels, mask, records, masks)


def palette_from_centers(
    centers: np.ndarray,
    color_space: ColorSpace = "rgb",
    *,
    method: FitMethod = "histogram",
    inertia: float = float("nan"),
    n_iter: int = 0,
    converged: bool = True,
    seed: int = 0,
    n_pixels: int = 0,
    n_colors: int = 0,
) -> Palette:
    """A :class:`Palette` from stored centers (a registered model), to apply or evaluate.

    Raises
    ------
    InvalidInputError
        If ``centers`` is not a finite (k, 3) array or ``color_space`` is unknown.
    """
    if color_space not in ("rgb", "lab"):
        raise InvalidInputError(f"color_space must be 'rgb' or 'lab'; got {color_space!r}")
    c = np.asarray(centers, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 3 or c.shape[0] < 1 or not np.isfinite(c).all():
        raise InvalidInputError(
            f"a palette needs finite centers of shape (k, 3); got shape {c.shape}"
        )
    return Palette(
        centers=c,
        rgb=_palette_rgb(c, color_space),
        color_space=color_space,
        method=method,
        inertia=inertia,
        n_iter=n_iter,
        converged=converged,
        seed=seed,
        n_pixels=n_pixels,
        n_colors=n_colors,
        fit_seconds=0.0,
    )


def palette_from_model(model: Model) -> Palette:
    """The palette a registered image model paints with.

    Raises
    ------
    InvalidInputError
        If the model is not an image palette (its record has no color space).
    """
    record = model.record
    if record.color_space is None:
        raise InvalidInputError(
            f"model {record.name} version {record.version} is not an image palette (no color space)"
        )
    return palette_from_centers(
        model.centers,
        record.color_space,
        inertia=record.inertia,
        n_iter=record.n_iter,
        converged=record.converged,
        seed=record.seed,
    )


def fit_palette(
    store: PixelStore,
    n_clusters: int,
    *,
    color_space: ColorSpace = "rgb",
    method: FitMethod = "histogram",
    init: Any = "k-means||",
    random_state: int | np.random.Generator | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    callback: Callback | None = None,
    split: Split | None = None,
    images: Sequence[ImageRecord] | None = None,
) -> Palette:
    """Fit a k-color palette to the stored pixels (all of them, or a split's training part).

    Parameters
    ----------
    store : PixelStore
    n_clusters : int
        Number of colors ``k``.
    color_space : {"rgb", "lab"}, default "rgb"
        Space distances are measured in. Lab approximates perceived color difference.
    method : {"histogram", "pixels"}, default "histogram"
        "histogram" fits the unique colors weighted by their counts (computed once and cached
        in the store until new images arrive); "pixels" fits every pixel. Both give the same
        centers from the same initial centers.
    init, random_state, max_iter, tol, callback
        Passed to :class:`~kmflow.estimator.KMeans`. An array ``init`` (a warm start) holds
        centers in ``color_space``.
    split : Split, optional
        Fit only the training part of this split (its histogram is computed, not cached).
    images : sequence of ImageRecord, optional
        Fit only these images (a window of recent ones); the split is made among them.

    Returns
    -------
    Palette

    Raises
    ------
    InvalidInputError
        Empty store, bad parameters.
    TooFewDistinctPointsError
        More colors requested than the images contain.

    Notes
    -----
    "histogram": one pass over the pixels (unless cached), then the fit's passes over the
    unique colors. "pixels": the fit's passes over all pixels.
    """
    if color_space not in ("rgb", "lab"):
        raise InvalidInputError(f"color_space must be 'rgb' or 'lab'; got {color_space!r}")
    if method not in ("histogram", "pixels"):
        raise InvalidInputError(f"method must be 'histogram' or 'pixels'; got {method!r}")
    sel = select(store, split, "train", images)
    cacheable = split is None and images is None
    pixels = sel.pixels
    weight = None if sel.mask is None else sel.mask.astype(np.float64)
    n_pixels = int(pixels.shape[0])
    if sel.mask is not None and method == "pixels":  # the histogram path counts them itself
        n_pixels = int(sel.mask.sum().compute())
    if n_pixels == 0:
        raise InvalidInputError(
            f"the training part of the pixel store {store.url} holds no pixels: lower the "
            "holdout fraction or ingest more images"
        )
    km = KMeans(
        n_clusters,
        init=init,
        random_state=random_state,
        max_iter=max_iter,
        tol=tol,
        callback=callback,
    )
    t0 = time.perf_counter()
    if method == "histogram":
        hist = store.histogram() if cacheable else None
        if hist is None:
            hist = color_histogram(pixels, mask=sel.mask)
            if cacheable:
                store.write_histogram(*hist)
        colors, counts = hist
        n_pixels = int(counts.sum())
        if n_pixels == 0:
            raise InvalidInputError(
                f"the training part of the pixel store {store.url} holds no pixels: lower the "
                "holdout fraction or ingest more images"
            )
        if len(colors) < n_clusters:
            raise TooFewDistinctPointsError(n_clusters, len(colors))
        logger.info(
            "fitting %d colors on %d unique colors of %d pixels", n_clusters, len(colors), n_pixels
        )
        km.fit(_to_fit_space(colors, color_space), sample_weight=counts)
        n_rows = len(colors)
    else:
        logger.info("fitting %d colors on all %d pixels", n_clusters, n_pixels)
        km.fit(_pixels_in(pixels, color_space), sample_weight=weight)
        n_rows = n_pixels
    centers = np.asarray(km.cluster_centers_, dtype=np.float64)
    return Palette(
        centers=centers,
        rgb=_palette_rgb(centers, color_space),
        color_space=color_space,
        method=method,
        inertia=float(km.inertia_),
        n_iter=int(km.n_iter_),
        converged=bool(km.converged_),
        seed=int(km.seed_),
        n_pixels=n_pixels,
        n_colors=n_rows,
        fit_seconds=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class ImageResult:
    """One rendered image and how close it is to its original."""

    source: str
    relpath: str
    output: str
    height: int
    width: int
    psnr: float
    delta_e: float
    sse: float


@dataclass(frozen=True)
class ApplyReport:
    """Outcome of :func:`apply_palette`: per-image figures and the overall ones.

    ``psnr`` pools the squared error of all pixels; ``delta_e`` is the pixel-weighted mean
    CIEDE2000 difference between each original pixel and its palette color.
    """

    images: list[ImageResult]
    palette_url: str
    psnr: float
    delta_e: float
    n_pixels: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_url(out: str, relpath: str) -> str:
    """Where an image's rendering goes: its relative folder and stem under ``out``, as PNG."""
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    return join_url(out, stem + ".png")


def _image_error(
    pixels: np.ndarray, labels: np.ndarray, palette_rgb: np.ndarray
) -> tuple[float, float]:
    """Squared error (sum over pixels and channels) and mean CIEDE2000 ΔE of a rendering."""
    n = pixels.shape[0]
    if n == 0:
        return 0.0, 0.0
    quant = palette_rgb[labels]
    diff = pixels.astype(np.int32) - quant.astype(np.int32)
    sse = float(np.einsum("ij,ij->", diff, diff))
    # ΔE per unique (original color): its label is fixed by its color, so weight by count.
    packed, first, counts = np.unique(pack_rgb(pixels), return_index=True, return_counts=True)
    de = ciede2000(srgb_to_lab(unpack_rgb(packed)), srgb_to_lab(quant[first]))
    return sse, float((de * counts).sum() / n)


def _render_image(
    pixels: np.ndarray,
    labels: np.ndarray,
    record: ImageRecord,
    palette_rgb: np.ndarray,
    url: str,
    storage_options: dict[str, Any] | None,
) -> ImageResult:
    """Paint one image with the palette, write it as PNG, measure PSNR and mean ΔE."""
    sse, delta_e = _image_error(pixels, labels, palette_rgb)
    n = pixels.shape[0]
    quant = palette_rgb[labels]
    shape = (record.height, record.width)
    if len(palette_rgb) <= 256:
        data = encode_png_indexed(labels.reshape(shape), palette_rgb)
    else:
        data = encode_png(quant.reshape(*shape, 3))
    write_bytes_atomic(url, data, storage_options)
    return ImageResult(
        source=record.source,
        relpath=record.relpath,
        output=url,
        height=record.height,
        width=record.width,
        psnr=psnr(sse / (3 * n)),
        delta_e=delta_e,
        sse=sse,
    )


def palette_swatch(rgb: np.ndarray, *, size: int = 64) -> np.ndarray:
    """A swatch image of the palette: one ``size`` x ``size`` square per color, in a row."""
    return np.repeat(np.repeat(rgb[None, :, :], size, axis=0), size, axis=1)


def apply_palette(
    store: PixelStore,
    palette: Palette,
    out: str,
    *,
    storage_options: dict[str, Any] | None = None,
    images: Sequence[ImageRecord] | None = None,
    progress: Callable[[int, int], None] | None = None,
    group_size: int = 32,
) -> ApplyReport:
    """Label every stored pixel with its palette color and render the images.

    Parameters
    ----------
    store : PixelStore
    palette : Palette
    out : str
        Output folder or URL; each image goes to ``out/<relpath stem>.png`` and the palette
        swatch to ``out/palette.png``.
    storage_options : dict, optional
        fsspec options for ``out``.
    images : sequence of ImageRecord, optional
        Render only these (default: every image in the store). Labels are written for all.
    progress : callable, optional
        Called as ``progress(done, total)`` after each group of images.
    group_size : int
        Images rendered per ``compute``.

    Returns
    -------
    ApplyReport

    Notes
    -----
    One ``compute`` writes ``labels(pixel)`` to the store (an assignment pass), then one
    ``compute`` per group of images reads pixels and labels back and writes the PNGs; the
    driver only receives the small per-image figures.
    """
    t0 = time.perf_counter()
    pixels = store.pixels()
    labels = assign(_pixels_in(pixels, palette.color_space), palette.centers)
    store.write_labels(labels)
    stored_labels = store.labels()
    if stored_labels is None:  # written just above: only a concurrent ingest can cause this
        raise StoreCorruptError(f"{store.url}: labels vanished right after being written")
    records = list(store.images() if images is None else images)
    render = dask.delayed(_render_image, pure=False)
    results: list[ImageResult] = []
    for start in range(0, len(records), group_size):
        group = records[start : start + group_size]
        tasks = [
            render(
                pixels[r.offset : r.offset + r.height * r.width],
                stored_labels[r.offset : r.offset + r.height * r.width],
                r,
                palette.rgb,
                output_url(out, r.relpath),
                storage_options,
            )
            for r in group
        ]
        results.extend(dask.compute(*tasks))
        if progress is not None:
            progress(len(results), len(records))
    palette_url = join_url(out, "palette.png")
    write_bytes_atomic(palette_url, encode_png(palette_swatch(palette.rgb)), storage_options)
    n = sum(r.height * r.width for r in results)
    total_sse = sum(r.sse for r in results)
    overall_de = sum(r.delta_e * r.height * r.width for r in results) / n if n else float("nan")
    return ApplyReport(
        images=results,
        palette_url=palette_url,
        psnr=psnr(total_sse / (3 * n)) if n else float("nan"),
        delta_e=overall_de,
        n_pixels=n,
        seconds=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class ImageQuality:
    """How close one image's rendering with the palette is to the original."""

    relpath: str
    sha256: str
    n_pixels: int
    psnr: float
    delta_e: float


@dataclass(frozen=True)
class Evaluation:
    """Outcome of :func:`evaluate_palette`.

    Attributes
    ----------
    part : {"all", "eval"}
        Every stored pixel, or only a split's held-out part.
    metrics : dict
        ``inertia`` (in the fit color space), ``inertia_per_pixel``, ``calinski_harabasz``,
        ``davies_bouldin``, ``silhouette`` (on a seeded sample), ``psnr`` (dB, sRGB) and
        ``delta_e`` (mean CIEDE2000), all plain floats.
    sizes : list of int
        Pixels per palette color.
    images : list of ImageQuality
        Per evaluated image (only its held-out pixels for a split by row).
    channel_counts : list of 3 lists of 256 ints
        Histogram of each sRGB channel of the evaluated pixels (reference statistics for
        drift checks).
    n_pixels, n_colors : int
        Pixels evaluated, and their distinct colors.
    """

    part: Part
    metrics: dict[str, float]
    sizes: list[int]
    images: list[ImageQuality]
    channel_counts: list[list[int]]
    n_pixels: int
    n_colors: int
    silhouette_sample_size: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reference_statistics(self) -> dict[str, Any]:
        """What later drift checks compare new data with, as stored in a model record.

        ``cluster_fractions`` (occupancy of each center), ``mean_sqdist`` (mean squared
        distance to the nearest center, in the fit color space), ``channel_histograms``
        (256-bin sRGB histograms), plus ``part`` and ``n_pixels`` for provenance. See
        :func:`kmflow.kernels.drift.drift_report`.
        """
        total = max(1, sum(self.sizes))
        return {
            "part": self.part,
            "n_pixels": self.n_pixels,
            "cluster_fractions": [s / total for s in self.sizes],
            "mean_sqdist": self.metrics["inertia_per_pixel"],
            "channel_histograms": {"space": "srgb", "bins": 256, "counts": self.channel_counts},
        }


def _image_quality(
    pixels: np.ndarray,
    mask: np.ndarray | None,
    record: ImageRecord,
    centers: np.ndarray,
    palette_rgb: np.ndarray,
    color_space: ColorSpace,
) -> ImageQuality:
    if mask is not None:
        pixels = pixels[mask]
    labels = nearest(_to_fit_space(pixels, color_space), centers)
    sse, delta_e = _image_error(pixels, labels, palette_rgb)
    n = int(pixels.shape[0])
    return ImageQuality(
        relpath=record.relpath,
        sha256=record.sha256,
        n_pixels=n,
        psnr=psnr(sse / (3 * n)) if n else float("nan"),
        delta_e=delta_e if n else float("nan"),
    )


def evaluate_palette(
    store: PixelStore,
    palette: Palette,
    *,
    split: Split | None = None,
    silhouette_sample_size: int = 10_000,
    random_state: int | None = 0,
    per_image: bool = True,
    images: Sequence[ImageRecord] | None = None,
) -> Evaluation:
    """Measure a palette on the stored pixels: internal metrics and image quality.

    Parameters
    ----------
    store : PixelStore
    palette : Palette
        Its centers, in ``palette.color_space``, are what is measured.
    split : Split, optional
        Evaluate only this split's held-out part (the same split the palette was fitted
        with); ``None`` evaluates every pixel.
    silhouette_sample_size : int, default 10_000
        Pixels in the seeded silhouette sample (exact silhouette is O(n²)); 0 skips it.
    random_state : int or None
        Seed of the silhouette sample.
    per_image : bool, default True
        Also measure PSNR and ΔE image by image.
    images : sequence of ImageRecord, optional
        Only these images (the split is made among them, as in :func:`fit_palette`).

    Returns
    -------
    Evaluation

    Notes
    -----
    The internal metrics run on the color histogram of the evaluated pixels (unique colors
    weighted by their counts, exactly the same values as on every pixel), labelled once in
    memory: one ``compute`` for the histogram (unless cached), two for Calinski-Harabasz /
    Davies-Bouldin, two for the silhouette sample, then one ``compute`` for the per-image
    figures (a task per image).
    """
    t0 = time.perf_counter()
    part: Part = "all" if split is None else "eval"
    sel = select(store, split, part, images)
    cacheable = split is None and images is None
    hist = store.histogram() if cacheable else None
    if hist is None:
        if sel.pixels.shape[0] == 0:
            raise InvalidInputError(f"nothing to evaluate in {store.url}: the store is empty")
        hist = color_histogram(sel.pixels, mask=sel.mask)
        if cacheable:
            store.write_histogram(*hist)
    colors, counts = hist
    n_pixels = int(counts.sum())
    if n_pixels == 0:
        raise InvalidInputError(
            f"the held-out part of {store.url} holds no pixels: raise the holdout fraction"
        )
    X = _to_fit_space(colors, palette.color_space)
    chunk = max(1, min(len(X), 2**19))
    Xd = da.from_array(X, chunks=(chunk, X.shape[1]))
    wd = da.from_array(counts.astype(np.float64), chunks=(chunk,))
    # A small held-out set may fill a single cluster: CH/DB/silhouette are then undefined
    # (NaN), not an error; inertia, sizes and image quality are still measured.
    lab = nearest(X, palette.centers)  # one assignment, shared by every metric below
    labels = da.from_array(lab, chunks=(chunk,))
    internal = internal_metrics(
        Xd, palette.centers, sample_weight=wd, labels=labels, undefined="nan"
    )
    silhouette = float("nan")
    if silhouette_sample_size > 1 and not np.isnan(internal.davies_bouldin):
        try:
            silhouette = silhouette_sample(
                Xd,
                labels,
                sample_size=silhouette_sample_size,
                sample_weight=wd,
                random_state=random_state,
            )
        except InvalidInputError as exc:  # the sample drew a single cluster
            logger.warning("silhouette undefined on this sample: %s", exc)
    sse, delta_e = _histogram_error(colors, counts, lab, palette.rgb)
    qualities: list[ImageQuality] = []
    if per_image:
        quality = dask.delayed(_image_quality, pure=True)
        all_pixels = store.pixels()
        tasks = [
            quality(
                all_pixels[r.offset : r.offset + r.n_pixels],
                m,
                r,
                palette.centers,
                palette.rgb,
                palette.color_space,
            )
            for r, m in zip(sel.images, sel.masks, strict=True)
        ]
        qualities = list(dask.compute(*tasks))
    metrics = {
        "inertia": float(internal.inertia),
        "inertia_per_pixel": float(internal.inertia) / n_pixels,
        "calinski_harabasz": float(internal.calinski_harabasz),
        "davies_bouldin": float(internal.davies_bouldin),
        "silhouette": float(silhouette),
        "psnr": psnr(sse / (3 * n_pixels)),
        "delta_e": delta_e,
    }
    return Evaluation(
        part=part,
        metrics=metrics,
        sizes=[round(float(w)) for w in internal.weights],
        images=qualities,
        channel_counts=[
            np.bincount(colors[:, c], weights=counts, minlength=256).astype(np.int64).tolist()
            for c in range(3)
        ],
        n_pixels=n_pixels,
        n_colors=len(colors),
        silhouette_sample_size=silhouette_sample_size,
        seconds=time.perf_counter() - t0,
    )


def _histogram_error(
    colors: np.ndarray, counts: np.ndarray, labels: np.ndarray, palette_rgb: np.ndarray
) -> tuple[float, float]:
    """Pooled squared error and count-weighted mean ΔE of unique colors painted by label."""
    quant = palette_rgb[labels]
    diff = colors.astype(np.float64) - quant.astype(np.float64)
    w = counts.astype(np.float64)
    sse = float(w @ np.einsum("ij,ij->i", diff, diff))
    de = ciede2000(srgb_to_lab(colors), srgb_to_lab(quant))
    return sse, float((w @ de) / w.sum())


def batch_drift(
    store: PixelStore,
    palette: Palette,
    reference: dict[str, Any],
    images: Sequence[ImageRecord],
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Drift of a batch of stored images against a model's reference statistics.

    Parameters
    ----------
    store : PixelStore
    palette : Palette
        The model's centers and color space.
    reference : dict
        The model record's ``reference`` (see :meth:`Evaluation.reference_statistics`).
    images : sequence of ImageRecord
        The batch (e.g. the images one ingest added).
    thresholds : DriftThresholds, optional

    Returns
    -------
    DriftReport

    Notes
    -----
    One ``compute`` for the batch's color histogram, one for the occupancy and distances
    of its unique colors (weighted by their counts, the same as every pixel).
    """
    sel = select(store, None, "all", images)
    colors, counts = color_histogram(sel.pixels)
    X = _to_fit_space(colors, palette.color_space)
    chunk = max(1, min(len(X), 2**19))
    stats = batch_statistics(
        da.from_array(X, chunks=(chunk, X.shape[1])),
        palette.centers,
        sample_weight=da.from_array(counts.astype(np.float64), chunks=(chunk,)),
        channel_counts=np.stack(
            [np.bincount(colors[:, c], weights=counts, minlength=256) for c in range(3)]
        ),
    )
    return drift_report(reference, stats, thresholds)
