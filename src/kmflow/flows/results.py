"""What the flows return: one frozen dataclass per flow (the image and the records job).

Every value is a plain Python value (str, int, float, bool, None, lists and dicts of them),
so a result pickles (Prefect may persist it) and ``to_dict()`` is what ``--report`` writes
as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from kmflow.core.jsonable import json_ready

__all__ = [
    "ApplyResult",
    "EvaluateResult",
    "ImageClusterResult",
    "IngestResult",
    "MonitorResult",
    "PipelineResult",
    "RetrainResult",
    "SegmentMonitorResult",
    "SegmentResult",
    "TrainResult",
]


def _flat(result: Any) -> dict[str, Any]:
    """A flat result's fields as a dict, in declaration order."""
    return {f.name: getattr(result, f.name) for f in fields(result)}


@dataclass(frozen=True)
class IngestResult:
    """What an ``ingest`` run did to the pixel store.

    ``added`` (image records as dicts), ``duplicates`` (sources already stored),
    ``errors`` (``source`` and ``reason`` of each image that could not be ingested),
    ``hashes`` (source → sha256), ``n_pixels_added`` and ``seconds`` describe this run;
    ``n_images``, ``n_pixels`` and ``fingerprint`` the store after it; ``n_discovered`` is
    how many images the sources held.
    """

    added: list[dict[str, Any]]
    duplicates: list[str]
    errors: list[dict[str, Any]]
    hashes: dict[str, str]
    n_pixels_added: int
    seconds: float
    n_images: int
    n_pixels: int
    fingerprint: str
    n_discovered: int

    @classmethod
    def from_dict(cls, summary: dict[str, Any]) -> IngestResult:
        """The result of an ingest summary (:func:`kmflow.tasks.ingest.ingest_images`)."""
        return cls(**summary)

    def to_dict(self) -> dict[str, Any]:
        return _flat(self)


@dataclass(frozen=True)
class TrainResult:
    """What a ``train`` run registered and decided.

    ``champion`` is the champion version after the run; ``metrics`` are measured on the
    evaluation part (held out, or every stored pixel). ``skipped`` is True when a version
    was already registered with the run's idempotency key: that version is returned, with
    its stored float metrics and no timings.
    """

    model: str
    version: int
    parent: int | None
    promoted: bool
    reason: str
    champion: int | None
    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _flat(self)


@dataclass(frozen=True)
class RetrainResult:
    """What a ``retrain`` run did: the train run's result and the event that started it."""

    model: str
    version: int
    parent: int | None
    promoted: bool
    reason: str
    champion: int | None
    metrics: dict[str, Any]
    timings: dict[str, float]
    skipped: bool
    event_id: str | None
    batch_id: str | None

    @classmethod
    def from_train(
        cls, train: TrainResult, event_id: str | None, batch_id: str | None
    ) -> RetrainResult:
        return cls(**_flat(train), event_id=event_id, batch_id=batch_id)

    def to_dict(self) -> dict[str, Any]:
        return _flat(self)


@dataclass(frozen=True)
class EvaluateResult:
    """A registered version measured on the store (see :class:`kmflow.jobs.palette.Evaluation`).

    ``images`` holds one dict per evaluated image (``relpath``, ``n_pixels``, ``psnr``,
    ``delta_e``).
    """

    model: str
    version: int
    part: str
    metrics: dict[str, float]
    sizes: list[int]
    images: list[dict[str, Any]]
    channel_counts: list[list[int]]
    n_pixels: int
    n_colors: int
    silhouette_sample_size: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return _flat(self)


#: The keys only one kind of apply run reports, in the order its report lists them.
_SHARED_ONLY = ("labels_written", "extra")
_PER_IMAGE_ONLY = ("n_fitted", "n_tasks")


@dataclass(frozen=True)
class ApplyResult:
    """What an ``apply`` run wrote.

    ``images`` holds one dict per image written (``relpath``, ``output``, ``psnr``,
    ``delta_e``, ...). With a shared palette ``version`` is the model version applied and
    ``palette_url`` its swatch, ``labels_written`` and ``extra`` are set; with a palette
    per image ``version`` and ``palette_url`` are None and ``n_fitted``, ``n_tasks`` and
    ``params`` are set. ``to_dict()`` leaves out the fields of the other kind.
    """

    model: str
    version: int | None
    images: list[dict[str, Any]]
    palette_url: str | None
    psnr: float
    delta_e: float
    n_pixels: int
    seconds: float
    labels_written: bool | None = None
    extra: dict[str, Any] | None = None
    n_fitted: int | None = None
    n_tasks: int | None = None
    params: dict[str, Any] | None = None

    @classmethod
    def from_report(cls, model: str, version: int | None, report: dict[str, Any]) -> ApplyResult:
        """The result of an apply task's report (:mod:`kmflow.tasks.apply`)."""
        return cls(model=model, version=version, **report)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "version": self.version}
        keys: tuple[str, ...]
        if self.n_fitted is None:  # a shared palette
            keys = ("images", "palette_url", "psnr", "delta_e", "n_pixels", "seconds")
            keys += _SHARED_ONLY
        else:
            keys = ("images", "psnr", "delta_e", "n_pixels", *_PER_IMAGE_ONLY, "seconds")
            keys += ("params", "palette_url")
        out.update({k: getattr(self, k) for k in keys})
        return out


@dataclass(frozen=True)
class MonitorResult:
    """What a ``monitor`` run checked.

    ``report`` is the drift report as a dict (``drifted``, ``statistics``, ...),
    ``n_images`` the images in the batch, ``event_id`` the drift event emitted, if any;
    ``errors`` are the images the ingest could not read. With no new images to check,
    ``report``, ``batch_id``, ``report_url``, ``champion_version`` and ``event_id`` are
    None (:meth:`nothing_new`).
    """

    drifted: bool
    batch_id: str | None
    n_images: int
    report: dict[str, Any] | None
    report_url: str | None
    champion_version: int | None
    event_id: str | None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def nothing_new(cls, errors: list[dict[str, Any]]) -> MonitorResult:
        """The result of a run that found no image to check."""
        return cls(
            drifted=False,
            batch_id=None,
            n_images=0,
            report=None,
            report_url=None,
            champion_version=None,
            event_id=None,
            errors=errors,
        )

    def to_dict(self) -> dict[str, Any]:
        return _flat(self)


@dataclass(frozen=True)
class PipelineResult:
    """What a ``pipeline`` run did: its three subflows' results, and its wall time.

    ``out`` is the folder the apply stage wrote to. ``to_dict()`` is the pipeline report:
    the train result whole, the ingest and apply results summarised (``added`` as a count,
    ``images`` as the output URLs).
    """

    ingest: IngestResult
    train: TrainResult
    apply: ApplyResult
    out: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        ingest, applied = self.ingest, self.apply
        return {
            "ingest": {
                "n_images": ingest.n_images,
                "n_pixels": ingest.n_pixels,
                "fingerprint": ingest.fingerprint,
                "added": len(ingest.added),
                "errors": ingest.errors,
            },
            "train": self.train.to_dict(),
            "apply": {
                "out": self.out,
                "palette": applied.palette_url,
                "psnr": applied.psnr,
                "delta_e": applied.delta_e,
                "images": [i["output"] for i in applied.images],
            },
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class SegmentResult:
    """What a ``segment`` run did: the registered version and everything the report holds."""

    model: str
    version: int
    promoted: bool
    reason: str
    champion: int | None
    chosen_k: int
    rule: str
    runner_up: int | None
    sweep: list[dict[str, Any]]
    metrics: dict[str, Any]
    missing: dict[str, int]
    columns: dict[str, Any]
    profiles: list[dict[str, Any]]
    segment_models: dict[str, Any] | None
    external: dict[str, Any] | None
    sizes: list[int]
    outputs: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report JSON: ``chosen_k``, ``sweep``, ``missing``, ``profiles`` at the top
        level, ``segment_models`` with a target."""
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "promoted": self.promoted,
            "reason": self.reason,
            "champion": self.champion,
            "chosen_k": self.chosen_k,
            "rule": self.rule,
            "runner_up": self.runner_up,
            "sweep": self.sweep,
            "metrics": self.metrics,
            "missing": self.missing,
            "columns": self.columns,
            "sizes": self.sizes,
            "profiles": self.profiles,
            "outputs": self.outputs,
            "timings": self.timings,
        }
        if self.segment_models is not None:
            out["segment_models"] = self.segment_models
        if self.external is not None:
            out["external"] = self.external
        return json_ready(out)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ImageClusterResult:
    """What a ``cluster-images`` run did: the registered version, its scores and pictures.

    ``metrics`` holds the external metrics against the known classes (``ari``, ``ami``,
    ``nmi``, ``fmi``, ``purity``, ``entropy``, ``f1``, ``accuracy``) when there are any, and
    the internal ones (``davies_bouldin``, ``calinski_harabasz``, ``silhouette``,
    ``inertia``) always.
    """

    model: str
    version: int
    promoted: bool
    reason: str
    champion: int | None
    chosen_k: int
    rule: str
    runner_up: int | None
    features: str
    n_features: int
    n_images: int
    image_shape: list[int]
    sweep: list[dict[str, Any]]
    metrics: dict[str, Any]
    contingency: dict[str, Any] | None
    sizes: list[int]
    skipped: list[dict[str, str]]
    outputs: dict[str, str]
    sheets: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report JSON: ``metrics`` (external and internal), ``chosen_k``, ``sweep``,
        ``contingency``, ``sizes``, ``outputs`` and ``sheets`` at the top level."""
        return json_ready(_flat(self))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class SegmentMonitorResult:
    """What a ``monitor-segments`` run found."""

    drifted: bool
    batch_id: str
    n_rows: int
    report: dict[str, Any]
    report_url: str
    champion_version: int
    event_id: str | None
    retrain_sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json_ready(self.__dict__)  # type: ignore[no-any-return]
