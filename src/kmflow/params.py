"""Flow parameters: *what* a run does (data, k, seed, outputs), one typed model per flow.

Each flow takes exactly one of these models. Prefect validates it when a run is created, and
its JSON schema is what the Prefect UI renders as the run form, so every field has a
description, bounds and a default where one makes sense. *Where and how* (cluster, registry
location, credentials) are settings (:mod:`kmflow.config`), never parameters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kmflow.core.model import NAME_PATTERN
from kmflow.core.split import Split
from kmflow.core.sweep import SelectRule
from kmflow.errors import InvalidInputError
from kmflow.kernels.drift import DriftThresholds
from kmflow.kernels.sweep import parse_ks

__all__ = [
    "ApplyParams",
    "EvaluateParams",
    "ImageClusterParams",
    "IngestParams",
    "MonitorParams",
    "PipelineParams",
    "RetrainParams",
    "SegmentMonitorParams",
    "SegmentParams",
    "TrainParams",
]

ModelName = Field(
    default="palette",
    pattern=NAME_PATTERN,
    description="Name of the model in the registry (letters, digits, '.', '_', '-').",
)
StoreUrl = Field(
    default="kmflow-data/store.zarr",
    min_length=1,
    description="Zarr pixel store: a local path or URL (s3://bucket/store.zarr).",
)


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestParams(_Params):
    """Images into the pixel store."""

    sources: list[str] = Field(
        default_factory=list,
        description=(
            "Image files, folders (recursive), globs or URLs (s3://bucket/photos/). Empty: "
            "the sample photos that ship with scikit-learn."
        ),
    )
    store: str = StoreUrl
    pattern: str | None = Field(
        default=None, description="Only files matching this glob inside folders, e.g. '*.tif'."
    )
    strict: bool = Field(default=False, description="Fail the run if any image cannot be ingested.")


class TrainParams(_Params):
    """Fit a palette on the store, evaluate it, register it, maybe promote it."""

    store: str = StoreUrl
    model: str = ModelName
    k: int = Field(default=16, ge=1, le=65536, description="Number of colors (clusters).")
    color_space: Literal["rgb", "lab"] = Field(
        default="rgb", description="Fit in sRGB or in perceptual CIE Lab."
    )
    method: Literal["histogram", "pixels"] = Field(
        default="histogram",
        description="Fit unique colors weighted by counts (fast, same result) or every pixel.",
    )
    init: Literal["k-means||", "k-means++", "random", "warm-start"] = Field(
        default="k-means||",
        description="Initial centers; 'warm-start' starts from a registered version.",
    )
    warm_start_version: int | None = Field(
        default=None,
        ge=1,
        description="Version to warm-start from (init='warm-start'); empty: the champion.",
    )
    seed: int | None = Field(default=None, ge=0, description="Random seed; empty: random.")
    max_iter: int = Field(default=300, ge=1, le=10_000, description="Maximum Lloyd iterations.")
    tol: float = Field(default=1e-4, ge=0.0, description="Relative center-shift tolerance.")
    holdout: Split = Field(default_factory=Split, description="Held-out split for evaluation.")
    silhouette_sample_size: int = Field(
        default=10_000,
        ge=0,
        le=100_000,
        description="Pixels in the seeded silhouette sample (O(n²)); 0 skips silhouette.",
    )
    promote: Literal["if-better", "always", "never"] = Field(
        default="if-better",
        description=(
            "Make the new version the champion: if its held-out inertia per pixel is not "
            "worse than the champion's on the same data, always, or never."
        ),
    )
    window: int | None = Field(
        default=None,
        ge=1,
        description="Train and evaluate on the most recent N images only; empty: all of them.",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description=(
            "A run with a key that already registered a version returns that version "
            "without training again (e.g. one key per drift event). Empty: the flow run id."
        ),
    )


class EvaluateParams(_Params):
    """Evaluate a registered model version on the store."""

    store: str = StoreUrl
    model: str = ModelName
    version: int | None = Field(
        default=None, ge=1, description="Version to evaluate; empty: the champion."
    )
    holdout: Split = Field(
        default_factory=Split,
        description="Evaluate only this split's held-out part (fraction 0: everything).",
    )
    silhouette_sample_size: int = Field(default=10_000, ge=0, le=100_000)


class ApplyParams(_Params):
    """Quantize every stored image: with a registered model, or each with its own palette."""

    store: str = StoreUrl
    model: str = ModelName
    version: int | None = Field(
        default=None, ge=1, description="Version to apply; empty: the champion."
    )
    out: str = Field(
        default="kmflow-out",
        min_length=1,
        description="Output folder or URL for the quantized PNGs and the palette swatch.",
    )
    palette: Literal["shared", "per-image"] = Field(
        default="shared",
        description=(
            "'shared': paint every image with the model's palette (and store labels(pixel)); "
            "'per-image': give each image its own k colors (the model is not used)."
        ),
    )
    k: int = Field(default=16, ge=1, le=65536, description="Colors per image in 'per-image' mode.")
    seed: int = Field(default=0, ge=0, description="Seed of the per-image palettes.")
    dither: bool = Field(default=False, description="Floyd-Steinberg dithering.")
    labels: bool = Field(
        default=True,
        description="'shared' mode: also store labels(pixel) for every stored pixel.",
    )


class PipelineParams(TrainParams):
    """The whole chain: ingest → train (fit, evaluate, register) → apply.

    Every training field is :class:`TrainParams`' own (inherited, declared once) and reaches
    the train step unchanged; ingest adds its sources and filters, apply its output folder.
    """

    sources: list[str] = IngestParams.model_fields["sources"]  # type: ignore[assignment]
    pattern: str | None = IngestParams.model_fields["pattern"]  # type: ignore[assignment]
    strict: bool = IngestParams.model_fields["strict"]  # type: ignore[assignment]
    out: str = ApplyParams.model_fields["out"]  # type: ignore[assignment]

    def ingest(self) -> IngestParams:
        return IngestParams(
            sources=self.sources, store=self.store, pattern=self.pattern, strict=self.strict
        )

    def train(self) -> TrainParams:
        return TrainParams(**{name: getattr(self, name) for name in TrainParams.model_fields})

    def apply(self, version: int) -> ApplyParams:
        return ApplyParams(store=self.store, model=self.model, version=version, out=self.out)


class MonitorParams(_Params):
    """Ingest a new batch of images and check it for drift against the champion."""

    sources: list[str] = Field(
        default_factory=lambda: ["kmflow-data/incoming"],
        min_length=1,
        description="Where new images arrive: files, folders, globs or URLs.",
    )
    store: str = StoreUrl
    model: str = ModelName
    pattern: str | None = Field(default=None, description="Glob filter inside folders.")
    thresholds: DriftThresholds = Field(
        default_factory=DriftThresholds,
        description="When the batch counts as drifted: any statistic above its threshold.",
    )
    reports: str = Field(
        default="kmflow-data/drift",
        min_length=1,
        description="Folder or URL where each batch's drift report is saved as <batch>.json.",
    )
    batch: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description=(
            "Check this recorded batch again (its id, from an earlier report or run) instead "
            "of ingesting: its image list is kept in <reports>/batches/<id>.json."
        ),
    )


class RetrainParams(_Params):
    """Warm-start a challenger from the champion; promote it only if it is not worse."""

    store: str = StoreUrl
    model: str = ModelName
    window: int | None = Field(
        default=None,
        ge=2,
        description="Train on the most recent N images (the new batch included); empty: all.",
    )
    holdout: Split = Field(
        default_factory=lambda: Split(fraction=0.2, by="row", seed=0),
        description=(
            "Held-out split on which challenger and champion are compared; by row (default) "
            "the held-out pixels follow the data as it is now, old and new images alike."
        ),
    )
    max_iter: int = Field(default=300, ge=1, le=10_000)
    silhouette_sample_size: int = Field(default=10_000, ge=0, le=100_000)
    promote: Literal["if-better", "always", "never"] = Field(default="if-better")
    event_id: str | None = Field(
        default=None,
        description="The drift event that started this run: retraining twice on one event "
        "registers one version.",
    )
    batch_id: str | None = Field(default=None, description="The batch the event was about.")

    def idempotency_key(self) -> str | None:
        if self.event_id:
            return f"drift-event:{self.event_id}"
        if self.batch_id:
            return f"drift-batch:{self.batch_id}"
        return None


class SegmentParams(_Params):
    """Segment the records of a table: prepare, sweep k, fit, profile, classify, register."""

    source: list[str] = Field(
        min_length=1,
        description="CSV/TSV/Parquet files, folders, globs or URLs (s3://bucket/table/).",
    )
    id: str | None = Field(default=None, description="Id column: kept, never a feature.")
    target: str | None = Field(
        default=None,
        description="Target column: profiles, external metrics and a classifier per segment.",
    )
    features: list[str] | None = Field(
        default=None, description="Feature columns; empty: inferred (numbers, flags, text)."
    )
    exclude: list[str] = Field(default_factory=list, description="Columns never used.")
    categorical: list[str] = Field(
        default_factory=list, description="Columns to one-hot even if they hold numbers."
    )
    k: str = Field(
        default="2..12",
        description="One k ('7') or a sweep ('2..12', '3,5,8').",
    )
    select: SelectRule = Field(
        default="db",
        description="How the sweep chooses k: lowest Davies-Bouldin, highest "
        "Calinski-Harabasz or silhouette, or the inertia curve's elbow (Kneedle).",
    )
    min_k: int | None = Field(default=None, ge=1, description="Smallest k that may be chosen.")
    scale: Literal["standard", "robust", "minmax", "none"] = Field(default="standard")
    missing: Literal["error", "drop", "median"] = Field(
        default="median",
        description="Missing numbers: fail, drop the row, or the training median.",
    )
    holdout: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Share of rows held out (by row number, seeded) for evaluation.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the split, the fits and the models.")
    max_iter: int = Field(default=300, ge=1, le=10_000)
    tol: float = Field(default=1e-4, ge=0.0)
    silhouette_sample_size: int = Field(default=10_000, ge=0, le=100_000)
    max_levels: int = Field(
        default=50, ge=2, description="Text columns with more distinct values are left out."
    )
    store: str = Field(
        default="kmflow-data/segments",
        min_length=1,
        description="Folder or URL of the prepared row stores.",
    )
    model: str = Field(default="segments", pattern=NAME_PATTERN)
    out: str | None = Field(
        default=None, description="Folder for segments.csv and profiles.csv; empty: none."
    )
    promote: Literal["if-better", "always", "never"] = Field(default="if-better")
    classifiers: bool = Field(
        default=True, description="With a target: a classifier per segment and a global one."
    )

    @field_validator("k")
    @classmethod
    def _check_k(cls, value: str) -> str:
        try:
            parse_ks(value)
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @property
    def ks(self) -> list[int]:
        return parse_ks(self.k)


#: The feature chain of ``kmflow cluster-images`` when none is given: chosen by
#: ``benchmarks/bench_image_clusters.py`` (ARI 0.82 on digits, raw-pixel k-means 0.66).
DEFAULT_IMAGE_FEATURES = "raw,pca:30,umap:5"


class ImageClusterParams(_Params):
    """Cluster whole images by content: decode or read, features, k-means, score, register."""

    source: list[str] = Field(
        min_length=1,
        description="Image files, folders, globs or URLs; or a table (CSV/TSV/Parquet) of "
        "fixed-size images, one per row (see image_shape).",
    )
    input: Literal["auto", "images", "table"] = Field(
        default="auto",
        description="What the source holds; auto: a table when every source names a table "
        "file (.csv, .tsv, .parquet, ...), else images.",
    )
    image_shape: str | None = Field(
        default=None,
        description="HxW or HxWxC (C = 1 gray, 3 RGB). Images are resized to it; a table's "
        "pixel columns are read as it. Default: 32x32x3 for images; for a table, required.",
    )
    labels_from: Literal["subfolders"] | None = Field(
        default=None, description="Known classes from the folder layout class/image.png."
    )
    labels: str | None = Field(
        default=None, description="Known classes from a CSV file with columns relpath,label."
    )
    label_column: str | None = Field(
        default=None, description="A table's column of known classes (never a pixel)."
    )
    features: str = Field(
        default=DEFAULT_IMAGE_FEATURES,
        description="Feature chain: extractors raw, hog, color (comma-joined, concatenated), "
        "then reducers std, pca:N, umap:N (e.g. 'hog,pca:30,umap:5').",
    )
    k: str = Field(default="10", description="One k ('10') or a sweep ('2..12', '3,5,8').")
    select: SelectRule = Field(default="db", description="How a sweep chooses k (as for segments).")
    min_k: int | None = Field(default=None, ge=1, description="Smallest k that may be chosen.")
    n_init: int = Field(default=4, ge=1, le=100, description="k-means restarts for one k.")
    holdout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of images held out of every fit (features and k-means), seeded.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the split, the chain and k-means.")
    max_iter: int = Field(default=300, ge=1, le=10_000)
    tol: float = Field(default=1e-4, ge=0.0)
    silhouette_sample_size: int = Field(default=10_000, ge=0, le=100_000)
    store: str = Field(
        default="kmflow-data/images",
        min_length=1,
        description="Folder or URL of the decoded image row stores.",
    )
    model: str = Field(default="images", pattern=NAME_PATTERN)
    out: str | None = Field(
        default=None, description="Folder for clusters.csv, contact sheets and the heatmap."
    )
    sheet_size: int = Field(
        default=8, ge=1, le=64, description="Images per contact sheet: nearest, then random."
    )
    promote: Literal["if-better", "always", "never"] = Field(default="if-better")

    @field_validator("k")
    @classmethod
    def _check_k(cls, value: str) -> str:
        try:
            parse_ks(value)
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("image_shape")
    @classmethod
    def _check_shape(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_image_shape(value)
            except InvalidInputError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @property
    def ks(self) -> list[int]:
        return parse_ks(self.k)


def parse_image_shape(text: str, *, channels: int | None = None) -> tuple[int, int, int]:
    """``"28x28"`` → (28, 28, `channels` or 1), ``"32x32x3"`` → (32, 32, 3).

    Raises
    ------
    InvalidInputError
        Not ``HxW`` or ``HxWxC`` with positive sizes, C 1 or 3, and at most 4096 x 4096.
    """
    parts = text.lower().replace(" ", "").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (2, 3) or any(v < 1 for v in sizes):
        raise InvalidInputError(
            f"image shape {text!r} must be HxW or HxWxC with positive integers, e.g. 28x28"
        )
    h, w = sizes[0], sizes[1]
    c = sizes[2] if len(sizes) == 3 else (channels or 1)
    if c not in (1, 3):
        raise InvalidInputError(f"image shape {text!r}: C must be 1 (gray) or 3 (RGB)")
    if h > 4096 or w > 4096:
        raise InvalidInputError(f"image shape {text!r}: at most 4096x4096")
    return h, w, c


class SegmentMonitorParams(_Params):
    """Check a batch of new records for drift against a segment model's champion."""

    source: list[str] = Field(
        min_length=1, description="The new records: CSV/TSV/Parquet files, folders, globs, URLs."
    )
    model: str = Field(default="segments", pattern=NAME_PATTERN)
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds)
    reports: str = Field(
        default="kmflow-data/drift",
        min_length=1,
        description="Folder or URL where each batch's drift report is saved as <batch>.json.",
    )
