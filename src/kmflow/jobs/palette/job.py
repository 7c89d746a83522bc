"""``quantize these images``: the whole image job as one library call, in two halves.

:func:`plan` does everything that can fail on a user's mistake without computing: it finds the
sources, names every output, refuses outputs that would overwrite a source or land where the
next run would ingest them, and checks the pixel store. Nothing is started and nothing is
written, so the CLI can call it before any Dask cluster exists.

:func:`run` then ingests the new images (the store keeps every image it ever saw), and renders
**the images given** (not the rest of the store): each with its own palette (``per-image``,
the default), or all with one palette fitted to them (``shared``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kmflow.errors import InvalidInputError
from kmflow.jobs.palette.outputs import PALETTE_NAME, check_outputs, output_urls
from kmflow.jobs.palette.per_image import ImageQuantizer, PerImageParams, QuantizedImage
from kmflow.storage.fs import join_url
from kmflow.storage.images import ImageSource, discover_sources
from kmflow.storage.pixelstore import ImageRecord, IngestProgress, IngestReport, PixelStore

__all__ = ["Plan", "QuantizeOptions", "QuantizeResult", "plan", "run"]

PaletteMode = Literal["per-image", "shared"]


@dataclass(frozen=True)
class QuantizeOptions:
    """What to do with the images (the CLI's options, the flows' parameters).

    Attributes
    ----------
    n_colors : int
        k.
    palette : {"per-image", "shared"}
        Each image its own k colors, or one palette fitted to all the images given.
    color_space : {"rgb", "lab"}
    method : {"histogram", "pixels"}
        How a shared palette is fitted (per-image fits always use the image's histogram).
    seed : int or None
        Per-image palettes use 0 when None (they are always reproducible); a shared palette
        is then seeded at random, as the estimator is.
    n_init : int
        Starts per image (per-image mode).
    max_iter : int
    dither : bool
        Floyd–Steinberg error diffusion when painting.
    write_labels : bool
        Also store ``labels(pixel)`` for every stored pixel (shared mode only).
    pattern : str or None
        Discovery filter inside folders.
    out_inside_source : bool
        Allow ``out`` inside a source folder although the next run would ingest the outputs.
    """

    n_colors: int
    palette: PaletteMode = "per-image"
    color_space: Literal["rgb", "lab"] = "rgb"
    method: Literal["histogram", "pixels"] = "histogram"
    seed: int | None = None
    n_init: int = 8
    max_iter: int = 300
    dither: bool = False
    write_labels: bool = False
    pattern: str | None = None
    out_inside_source: bool = False

    def __post_init__(self) -> None:
        if self.palette not in ("per-image", "shared"):
            raise InvalidInputError(
                f"palette must be 'per-image' or 'shared'; got {self.palette!r}"
            )
        if self.method not in ("histogram", "pixels"):
            raise InvalidInputError(f"method must be 'histogram' or 'pixels'; got {self.method!r}")
        if self.write_labels and self.palette != "shared":
            raise InvalidInputError(
                "labels(pixel) are written for a shared palette only (--palette shared)"
            )
        self.per_image_params()  # validates k, color space, n_init, max_iter

    def per_image_params(self) -> PerImageParams:
        return PerImageParams(
            n_colors=self.n_colors,
            color_space=self.color_space,
            seed=0 if self.seed is None else self.seed,
            n_init=self.n_init,
            max_iter=self.max_iter,
            dither=self.dither,
        )


@dataclass(frozen=True)
class Plan:
    """A checked run: the images found, where each goes, and the store."""

    sources: list[ImageSource]
    outputs: list[str]
    out: str
    store: PixelStore
    local_bytes: int | None  # size of the sources if all are local files, else None
    palette_url: str | None


def plan(
    source_roots: Sequence[str],
    out: str,
    store: PixelStore,
    options: QuantizeOptions,
    *,
    storage_options_for: Callable[[str], dict[str, Any] | None] = lambda url: None,
) -> Plan:
    """Find the sources, name the outputs and check everything that needs no computing.

    Raises
    ------
    SourceNotFoundError
        A source does not exist.
    OutputConflictError
        An output would overwrite a source, or land inside a source folder.
    StoreCorruptError
        ``store`` exists but is not a pixel store.
    InvalidInputError
        No images in the sources.
    """
    sources = discover_sources(
        source_roots,
        pattern=options.pattern,
        storage_options_for=storage_options_for,
        unique=True,
    )
    if not sources:
        raise InvalidInputError(
            "no images found in "
            + ", ".join(source_roots)
            + (f" matching {options.pattern!r}" if options.pattern else "")
        )
    outputs = output_urls(out, [s.relpath for s in sources])
    palette_url = join_url(out, PALETTE_NAME) if options.palette == "shared" else None
    check_outputs(
        out,
        source_roots,
        sources,
        [*outputs, *([palette_url] if palette_url else [])],
        pattern=options.pattern,
        allow_inside_sources=options.out_inside_source,
        storage_options=storage_options_for(out),
    )
    if store.exists():
        store.n_images  # noqa: B018 - validates the commit record (StoreCorruptError)
    local_bytes = None
    if all("://" not in s.url for s in sources):  # plain local paths
        local_bytes = sum(os.path.getsize(s.url) for s in sources if os.path.isfile(s.url))
    return Plan(sources, outputs, out, store, local_bytes, palette_url)


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`run` did: the ingest, every image written, and the overall figures."""

    ingest: IngestReport
    images: list[QuantizedImage]
    psnr: float
    delta_e: float
    n_pixels: int
    n_fitted: int
    palette: Any | None  # the shared Palette, in shared mode
    palette_url: str | None
    seconds: dict[str, float] = field(default_factory=dict)


def run(
    p: Plan,
    options: QuantizeOptions,
    *,
    max_pixels: int,
    source_storage_options: dict[str, Any] | None = None,
    out_storage_options: dict[str, Any] | None = None,
    on_ingest: Callable[[IngestProgress], None] | None = None,
    on_render: Callable[[int, int], None] | None = None,
    on_iteration: Callable[[Any], None] | None = None,
    strict: bool = False,
) -> QuantizeResult:
    """Ingest the planned sources and write each one quantized (see the module docstring).

    In per-image mode the new images are painted from their decoded pixels while the
    ingest writes them to the store (:class:`~kmflow.jobs.palette.per_image.ImageQuantizer`);
    the others (already stored) are read from the store. With ``strict``, nothing is rendered
    when any image could not be ingested (the result then has no images), so nothing is
    painted before the whole ingest is known to be clean. ``seconds`` of the result: the
    ingest (with the painting of new images, in per-image mode), then what follows it.
    Computes on the current Dask scheduler (a client from :func:`kmflow.cluster.connect`, or
    Dask's threads).
    """
    t0 = time.perf_counter()
    quantizer = (
        ImageQuantizer(
            p.store,
            options.per_image_params(),
            outputs=dict(zip((s.url for s in p.sources), p.outputs, strict=True)),
            storage_options=out_storage_options,
            progress=on_render,
        )
        if options.palette == "per-image"
        else None
    )
    with quantizer or contextlib.nullcontext():
        ingest = p.store.ingest(
            p.sources,
            max_pixels=max_pixels,
            storage_options=source_storage_options,
            progress=on_ingest,
            # New images painted from their decoded pixels while the store is written.
            on_batch=quantizer.decoded if quantizer is not None and not strict else None,
        )
        t_ingest = time.perf_counter() - t0
        if not ingest.hashes or (strict and ingest.errors):
            return QuantizeResult(
                ingest, [], float("nan"), float("nan"), 0, 0, None, None, {"ingest": t_ingest}
            )
        by_sha: dict[str, ImageRecord] = {r.sha256: r for r in p.store.images()}
        todo: list[tuple[ImageRecord, str]] = []
        for src, out in zip(p.sources, p.outputs, strict=True):
            sha = ingest.hashes.get(src.url)
            if sha is not None:  # named after this source, not after the first copy stored
                r = by_sha[sha]
                record = ImageRecord(src.url, src.relpath, sha, r.height, r.width, r.offset)
                todo.append((record, out))
        t1 = time.perf_counter()
        if quantizer is not None:
            report = quantizer.finish(todo)
            return QuantizeResult(
                ingest=ingest,
                images=report.images,
                psnr=report.psnr,
                delta_e=report.delta_e,
                n_pixels=report.n_pixels,
                n_fitted=report.n_fitted,
                palette=None,
                palette_url=None,
                seconds={"ingest": t_ingest, "render": time.perf_counter() - t1},
            )
    from kmflow.jobs.palette.shared import apply_palette, fit_palette

    records = [r for r, _ in todo]
    unique = list({r.sha256: r for r in records}.values())
    everything = {r.sha256 for r in unique} == set(by_sha)
    palette = fit_palette(
        p.store,
        options.n_colors,
        color_space=options.color_space,
        method=options.method,
        random_state=options.seed,
        max_iter=options.max_iter,
        callback=on_iteration,
        images=None if everything else unique,
    )
    t2 = time.perf_counter()
    applied = apply_palette(
        p.store,
        palette,
        p.out,
        storage_options=out_storage_options,
        images=records,
        outputs=[o for _, o in todo],
        write_labels=options.write_labels,
        dither=options.dither,
        progress=on_render,
    )
    return QuantizeResult(
        ingest=ingest,
        images=applied.images,
        psnr=applied.psnr,
        delta_e=applied.delta_e,
        n_pixels=applied.n_pixels,
        n_fitted=1,
        palette=palette,
        palette_url=applied.palette_url,
        seconds={"ingest": t_ingest, "fit": t2 - t1, "render": time.perf_counter() - t2},
    )
