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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np

from kmflow.core.model import Model
from kmflow.core.split import Split, active_split
from kmflow.errors import InvalidInputError, TooFewDistinctPointsError
from kmflow.jobs.palette.color import psnr, srgb_to_lab
from kmflow.jobs.palette.histogram import color_histogram
from kmflow.jobs.palette.per_image import QuantizedImage, palette_rgb
from kmflow.jobs.palette.render import (
    ColorHistogram,
    ColorPreprocessing,
    histogram_error,
    to_fit_space,
)
from kmflow.kernels.dense import nearest
from kmflow.kernels.drift import DriftReport, DriftThresholds, batch_statistics, drift_report
from kmflow.kernels.lloyd import Callback, assign
from kmflow.kernels.metrics import internal_metrics, silhouette_sample
from kmflow.kernels.split import holdout_items, holdout_rows
from kmflow.kernels.validation import check_centers
from kmflow.storage.fs import join_url, write_bytes_atomic
from kmflow.storage.images import encode_png
from kmflow.storage.pixelstore import ImageRecord, PixelStore

__all__ = [
    "ApplyReport",
    "Evaluation",
    "ImageQuality",
    "Palette",
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

    def preprocessing(self) -> ColorPreprocessing:
        """What maps sRGB pixels to the space of these centers (stored with the model)."""
        return ColorPreprocessing(self.color_space)

    def to_dict(self) -> dict[str, Any]:
        """The palette as JSON-ready values (floats as Python writes them: exact)."""
        return {
            "centers": self.centers.tolist(),
            "rgb": self.rgb.tolist(),
            "color_space": self.color_space,
            "method": self.method,
            "inertia": self.inertia,
            "n_iter": self.n_iter,
            "converged": self.converged,
            "seed": self.seed,
            "n_pixels": self.n_pixels,
            "n_colors": self.n_colors,
            "fit_seconds": self.fit_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Palette:
        """The palette :meth:`to_dict` wrote, checked field by field.

        Raises
        ------
        InvalidInputError
            A missing or extra field, centers that are not a finite (k, 3) array, sRGB
            colors outside 0..255 or of another shape, an unknown color space or method.
        """
        fields = set(cls.__dataclass_fields__)
        if not isinstance(data, Mapping) or set(data) != fields:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise InvalidInputError(f"not a palette: expected fields {sorted(fields)}, got {got}")
        try:
            centers = check_centers(data["centers"], None, 3, shape_from="3 color channels")
        except InvalidInputError as exc:
            raise InvalidInputError(f"not a palette: {exc}") from exc
        rgb = np.asarray(data["rgb"])
        if rgb.shape != centers.shape or rgb.min() < 0 or rgb.max() > 255:
            raise InvalidInputError(f"not a palette: sRGB colors of shape {rgb.shape}")
        if data["color_space"] not in ("rgb", "lab") or data["method"] not in (
            "histogram",
            "pixels",
        ):
            raise InvalidInputError(
                f"not a palette: color space {data['color_space']!r}, method {data['method']!r}"
            )
        return cls(
            centers=centers,
            rgb=rgb.astype(np.uint8),
            color_space=data["color_space"],
            method=data["method"],
            inertia=float(data["inertia"]),
            n_iter=int(data["n_iter"]),
            converged=bool(data["converged"]),
            seed=int(data["seed"]),
            n_pixels=int(data["n_pixels"]),
            n_colors=int(data["n_colors"]),
            fit_seconds=float(data["fit_seconds"]),
        )


def _pixels_in(pixels: da.Array, color_space: ColorSpace) -> da.Array:
    """Pixels in the fit space: uint8 RGB as stored, or float64 Lab converted per block."""
    if color_space == "rgb":
        return pixels
    return da.map_blocks(srgb_to_lab, pixels, dtype=np.float64, meta=np.empty((0, 3)))


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
        ``None`` (or a split holding nothing out) selects everything whatever ``part`` says.
    part : {"all", "train", "eval"}
    images : sequence of ImageRecord, optional
        Only these images of the store (e.g. the most recent ones); the split is then made
        among them. Default: every image.

    Raises
    ------
    InvalidInputError
        If nothing is selected, or a split by image has fewer than 2 images.
    """
    split = active_split(split)
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
    c = check_centers(centers, None, 3, name="palette centers", shape_from="3 color channels")
    return Palette(
        centers=c,
        rgb=palette_rgb(c, color_space),
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
        If the model is not an image palette (its kind is not "palette").
    """
    record = model.record
    if record.kind != "palette" or record.color_space is None:  # a palette always has one
        raise InvalidInputError(
            f"model {record.name} version {record.version} is a {record.kind!r} model, "
            "not an image palette"
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
    split = active_split(split)
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
    from kmflow.estimator import KMeans

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
        km.fit(to_fit_space(colors, color_space), sample_weight=counts)
        n_rows = len(colors)
    else:
        logger.info("fitting %d colors on all %d pixels", n_clusters, n_pixels)
        km.fit(_pixels_in(pixels, color_space), sample_weight=weight)
        n_rows = n_pixels
    centers = np.asarray(km.cluster_centers_, dtype=np.float64)
    return Palette(
        centers=centers,
        rgb=palette_rgb(centers, color_space),
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
class ApplyReport:
    """Outcome of :func:`apply_palette`: per-image figures and the overall ones.

    ``psnr`` pools the squared error of all pixels; ``delta_e`` is the pixel-weighted mean
    CIEDE2000 difference between each original pixel and the color it was painted with.
    """

    images: list[QuantizedImage]
    palette_url: str
    psnr: float
    delta_e: float
    n_pixels: int
    seconds: float
    labels_written: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    outputs: Sequence[str] | None = None,
    write_labels: bool = False,
    dither: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ApplyReport:
    """Render stored images with one palette, in one pass over each image's pixels.

    Parameters
    ----------
    store : PixelStore
    palette : Palette
    out : str
        Output folder or URL; the palette swatch goes to ``out/palette.png`` and each image
        to the name :func:`kmflow.jobs.palette.outputs.output_names` gives it, unless
        ``outputs`` says otherwise.
    storage_options : dict, optional
        fsspec options for ``out``.
    images : sequence of ImageRecord, optional
        Render only these (default: every image in the store).
    outputs : sequence of str, optional
        The URL of each image's PNG, aligned with ``images``.
    write_labels : bool, default False
        Also store ``labels(pixel)`` for every stored pixel (pixel classification; an extra
        assignment pass over the whole store).
    dither : bool, default False
        Floyd–Steinberg error diffusion; PSNR and ΔE then describe the dithered image.
    progress : callable, optional
        Called as ``progress(done, total)`` images as render tasks finish.

    Returns
    -------
    ApplyReport

    Notes
    -----
    Rendering reads each image's pixels once, labels its unique colors (not every pixel),
    encodes and writes the PNG in the same task, a batch of images per task, all submitted
    at once (:func:`kmflow.jobs.palette.per_image.quantize_images`). With ``write_labels``, one
    more ``compute`` writes the labels.
    """
    from kmflow.jobs.palette.outputs import PALETTE_NAME, output_urls
    from kmflow.jobs.palette.per_image import PerImageParams, quantize_images

    t0 = time.perf_counter()
    if write_labels:
        labels = assign(_pixels_in(store.pixels(), palette.color_space), palette.centers)
        store.write_labels(labels)
    records = list(store.images() if images is None else images)
    if outputs is None:
        outputs = output_urls(out, [r.relpath for r in records])
    if len(outputs) != len(records):
        raise InvalidInputError(f"outputs has {len(outputs)} entries for {len(records)} images")
    rendered = quantize_images(
        store,
        list(zip(records, outputs, strict=True)),
        PerImageParams(
            n_colors=max(1, palette.n_clusters),
            color_space=palette.color_space,
            dither=dither,
        ),
        centers=palette.centers,
        storage_options=storage_options,
        progress=progress,
    )
    palette_url = join_url(out, PALETTE_NAME)
    write_bytes_atomic(palette_url, encode_png(palette_swatch(palette.rgb)), storage_options)
    return ApplyReport(
        images=rendered.images,
        palette_url=palette_url,
        psnr=rendered.psnr,
        delta_e=rendered.delta_e,
        n_pixels=rendered.n_pixels,
        seconds=time.perf_counter() - t0,
        labels_written=write_labels,
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
    n = int(pixels.shape[0])
    if n == 0:
        return ImageQuality(record.relpath, record.sha256, 0, float("nan"), float("nan"))
    hist = ColorHistogram.of(pixels)
    labels = nearest(hist.in_space(color_space), centers)
    sse, delta_e = histogram_error(hist.colors, hist.counts, labels, palette_rgb)
    return ImageQuality(
        relpath=record.relpath,
        sha256=record.sha256,
        n_pixels=n,
        psnr=psnr(sse / (3 * n)),
        delta_e=delta_e,
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
    split = active_split(split)
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
    X = to_fit_space(colors, palette.color_space)
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
    sse, delta_e = histogram_error(colors, counts, lab, palette.rgb)
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
    X = to_fit_space(colors, palette.color_space)
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
