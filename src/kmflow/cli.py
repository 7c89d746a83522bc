"""The ``kmflow`` command line: one command per job.

Each command builds parameters and calls library code; progress bars and tables are drawn with
rich. ``kmflow quantize`` is the main job: images in, images quantized to k colors out.
"""

from __future__ import annotations

if __name__ == "__main__":
    # ``python -m kmflow.cli``: run the one ``kmflow.cli`` module (the job commands use its
    # helpers and settings), not a second copy of this file under the name __main__.
    from kmflow.cli import main as _main

    _main()
    raise SystemExit(0)

import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from kmflow.config import ClusterSettings, Settings
from kmflow.errors import KmflowError, ModelCorruptError
from kmflow.storage.fs import join_url, storage_options_for

_WANTS_HELP = "kmflow.wants_help"
# verbose: -v, tracebacks on errors; process: running as the kmflow process (main()).
_state = {"verbose": False, "process": False}


class _Group(TyperGroup):
    """kmflow's command group: a usage error is two plain lines, not a framed box.

    ``error: Invalid value for '--seed': -1 is not in the range x>=0.`` and where the help
    is; exit code 2 as for every user mistake.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # Settings are checked before every command except a request for its help.
        ctx.meta[_WANTS_HELP] = "--help" in args
        return super().parse_args(ctx, args)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's exceptions, as typer vendors them
            if type(exc).__name__ == "NoArgsIsHelpError":  # as typer itself tells it apart
                exc.show()  # type: ignore[attr-defined]
                sys.exit(exc.exit_code)
            _error_line(exc.format_message())
            ctx = getattr(exc, "ctx", None)  # a usage error knows its command
            if ctx is not None:
                console.print(
                    f"Try '{ctx.command_path} --help' for help.",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
            sys.exit(exc.exit_code)
        except typer.Abort:
            console.print("Aborted.", markup=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


_R = TypeVar("_R")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _error_line(message: str) -> None:
    """``error: <message>`` on stderr, on one line however wide the terminal."""
    console.print(f"[red]error:[/red] {_escape(message)}", highlight=False, soft_wrap=True)


app = typer.Typer(
    name="kmflow",
    cls=_Group,
    help="k-means clustering as a production workflow on Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out_console = Console()


def _settings() -> Settings:
    """The settings in effect; a bad ``KMFLOW_*`` variable is one line and exit code 2."""
    from kmflow.preflight import load_settings

    try:
        return load_settings()
    except KmflowError as exc:
        _fail(exc)


def _cluster_settings(workers: int | None, scheduler: str | None) -> ClusterSettings:
    base = _settings().cluster
    if scheduler:
        return base.model_copy(update={"mode": "address", "address": scheduler})
    if workers is not None:
        return base.model_copy(update={"n_workers": workers})
    return base


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@app.callback()
def main_callback(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log every step; tracebacks on errors.")
    ] = False,
) -> None:
    """k-means clustering as a production workflow on Dask.

    Mistakes (a missing source, an unknown model, a bad option or KMFLOW_* variable) exit
    with code 2 and one line on stderr naming the culprit, before any cluster starts.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _state["verbose"] = verbose
    # before anything imports Prefect (its settings are read once): see _run_flow
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if not ctx.resilient_parsing and not ctx.meta.get(_WANTS_HELP):
        _settings()  # a bad KMFLOW_* variable fails every command the same way


@app.command()
def quantize(
    source: Annotated[
        list[str] | None,
        typer.Argument(
            help="Images: files, folders (recursive), globs or URLs (s3://bucket/prefix/). "
            "Default: the sample photos that ship with scikit-learn.",
            show_default=False,
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=65536, help="Number of colors.")] = 16,
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output folder or URL for the quantized PNGs.")
    ] = "kmflow-out",
    palette: Annotated[
        str,
        typer.Option(
            help="'per-image': each image its own K colors (what pngquant and Pillow do); "
            "'shared': one palette fitted to all the images given."
        ),
    ] = "per-image",
    store: Annotated[
        str | None,
        typer.Option(
            help="Zarr pixel store (path or URL); reused by later runs. Default: OUT/store.zarr."
        ),
    ] = None,
    color_space: Annotated[
        str, typer.Option("--color-space", help="Fit in 'rgb' or perceptual 'lab'; output is sRGB.")
    ] = "rgb",
    method: Annotated[
        str,
        typer.Option(
            help="Shared palette: 'histogram' (unique colors weighted by counts) or 'pixels'."
        ),
    ] = "histogram",
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Random seed, >= 0 (per-image palettes use 0 unless given; a shared palette "
            "is seeded at random). The report's random_key is the 63-bit key drawn from it.",
        ),
    ] = None,
    n_init: Annotated[
        int, typer.Option("--n-init", min=1, max=100, help="Per-image: seeded starts per image.")
    ] = 8,
    max_iter: Annotated[
        int, typer.Option(min=1, max=10_000, help="Maximum Lloyd iterations.")
    ] = 300,
    dither: Annotated[
        bool, typer.Option(help="Floyd-Steinberg dithering (PSNR/ΔE describe the dithered PNG).")
    ] = False,
    labels: Annotated[
        bool,
        typer.Option(help="Shared palette: also store labels(pixel) for every stored pixel."),
    ] = False,
    pattern: Annotated[
        str | None, typer.Option(help="Only files matching this glob (e.g. '*.tif') in folders.")
    ] = None,
    out_inside_source: Annotated[
        bool,
        typer.Option(
            "--out-inside-source",
            help="Allow --out inside a source folder (the next run would ingest the outputs). "
            "Overwriting a source file is never allowed.",
        ),
    ] = False,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Local Dask worker processes (default: CPU cores).")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing Dask scheduler to use instead.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write the summary, per-image figures and errors as JSON.")
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Fail (exit 1) if any image cannot be ingested.")
    ] = False,
) -> None:
    """Quantize images to K colors: each its own palette by default, PNGs under OUT.

    Sources, outputs and the store are checked before any cluster starts; small jobs run in
    this process without one. The store keeps every image's pixels and per-image palette, so
    a later run over the same images re-renders without fitting again.
    """
    with _imports_without_gc():
        from kmflow.jobs.palette.job import QuantizeOptions, plan, run

    if workers is not None and scheduler:
        raise typer.BadParameter("give --workers or --scheduler, not both")
    for name, value, allowed in (
        ("--palette", palette, ("per-image", "shared")),
        ("--color-space", color_space, ("rgb", "lab")),
        ("--method", method, ("histogram", "pixels")),
    ):
        if value not in allowed:
            raise typer.BadParameter(f"{name} must be one of {', '.join(map(repr, allowed))}")
    settings = _settings()
    t0 = time.perf_counter()
    try:
        from kmflow.preflight import check_store
        from kmflow.storage.fs import storage_options_for
        from kmflow.storage.pixelstore import PixelStore

        options = QuantizeOptions(
            n_colors=k,
            palette=palette,  # type: ignore[arg-type]
            color_space=color_space,  # type: ignore[arg-type]
            method=method,  # type: ignore[arg-type]
            seed=seed,
            n_init=n_init,
            max_iter=max_iter,
            dither=dither,
            write_labels=labels,
            pattern=pattern,
            out_inside_source=out_inside_source,
        )
        if source:
            sources = list(source)
        else:
            from kmflow.storage.samples import sample_images_dir

            sources = [sample_images_dir()]
        store_url = store or join_url(out, "store.zarr")
        check_store(store_url, settings, label="--store" if store else "store")
        pixel_store = PixelStore(
            store_url,
            storage_options=storage_options_for(store_url, settings.storage),
            chunk_pixels=settings.storage.chunk_pixels,
        )
        checked = plan(
            sources,
            out,
            pixel_store,
            options,
            storage_options_for=lambda url: storage_options_for(url, settings.storage),
        )
        cluster = _job_cluster(workers, scheduler, checked.local_bytes)
        with cluster, _progress() as bar:
            ingest_task = bar.add_task("ingest", total=len(checked.sources), info="")
            write_task = bar.add_task("quantize", total=len(checked.sources), info="", start=False)

            def on_ingest(p: Any) -> None:
                bar.update(
                    ingest_task, completed=p.images_done, info=f"{p.pixels_done / 1e6:.1f} MP"
                )

            def on_render(done: int, total: int) -> None:
                bar.start_task(write_task)  # no-op once started: the clock runs from the first
                bar.update(write_task, completed=done, total=total)

            def on_iteration(info: Any) -> None:
                bar.update(write_task, info=f"fit: iteration {info.iteration}")

            result = run(
                checked,
                options,
                max_pixels=settings.storage.max_image_pixels,
                source_storage_options=storage_options_for(sources[0], settings.storage),
                out_storage_options=storage_options_for(out, settings.storage),
                on_ingest=on_ingest,
                on_render=on_render,
                on_iteration=on_iteration,
                strict=strict,
            )
            bar.update(ingest_task, completed=len(checked.sources))
    except KmflowError as exc:
        _fail(exc)
    except Exception as exc:
        failure = _storage_failure(exc)
        if failure is None:
            raise
        _fail(failure)
    ingest = result.ingest
    if ingest.errors:
        _print_errors(ingest.errors)
    if strict and ingest.errors:
        _write_report(report, {"ingest": ingest.to_dict()})
        console.print(f"[red]--strict: {len(ingest.errors)} image(s) could not be ingested")
        raise typer.Exit(1)
    if not result.images:
        _write_report(report, {"ingest": ingest.to_dict()})
        console.print("[red]nothing could be ingested: no image to quantize")
        raise typer.Exit(1)
    seconds = time.perf_counter() - t0
    shared = result.palette
    summary = {
        "images": len(result.images),
        "megapixels": round(result.n_pixels / 1e6, 3),
        "k": k,
        "palette": palette,
        "color_space": color_space,
        "method": method if shared is not None else "histogram",
        "dither": dither,
        "psnr_db": result.psnr,
        "delta_e": result.delta_e,
        "palettes_fitted": result.n_fitted,
        "exact_images": sum(1 for r in result.images if r.exact),
        "seconds": round(seconds, 3),
        "stage_seconds": {k_: round(v, 3) for k_, v in result.seconds.items()},
        "store": store_url,
        "out": out,
        # The seed given (per-image palettes: 0 unless given) and, for a shared palette, the
        # 63-bit key the fit drew every random choice from (derived from the seed).
        "seed": seed if shared is not None else options.per_image_params().seed,
    }
    if shared is not None:
        summary.update(
            {
                "iterations": shared.n_iter,
                "converged": shared.converged,
                "inertia": shared.inertia,
                "inertia_per_pixel": shared.inertia / max(1, shared.n_pixels),
                "palette_url": result.palette_url,
                "random_key": shared.seed,
            }
        )
    _print_quantize_summary(summary, result.images)
    payload: dict[str, Any] = {
        "summary": summary,
        "images": [
            {k_: v for k_, v in vars(r).items() if k_ not in ("sse",)} for r in result.images
        ],
        "ingest": ingest.to_dict(),
    }
    if shared is not None:
        payload["palette_rgb"] = shared.rgb.tolist()
        for image in payload["images"]:
            image.pop("palette", None)  # the shared palette, once above
    _write_report(report, payload)


@contextmanager
def _imports_without_gc() -> Iterator[None]:
    """Import a job's modules (numba, dask.array, xarray, zarr) without the cyclic collector.

    They create about a million long-lived objects, which the collector would otherwise walk
    again and again while they load (0.3 s of a small job). In the kmflow process (not when
    the CLI is called in another program's process) they are then frozen: never walked again.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _state["process"]:
            gc.freeze()
        if enabled:
            gc.enable()


def _job_cluster(workers: int | None, scheduler: str | None, local_bytes: int | None) -> Any:
    """The Dask context of a job: a cluster, or this process's threads for a small local job."""
    settings = _settings()
    small = (
        settings.cluster.mode == "local"
        and workers is None
        and not scheduler
        and local_bytes is not None
        and local_bytes <= settings.cluster.small_job_bytes
    )
    if small:
        logging.getLogger(__name__).info(
            "%d bytes of local images: computing in this process", local_bytes
        )
        import dask
        import dask.threaded

        # Dask's threads, given as the function itself: no default client of this process
        # is picked up, and dask does not import distributed to look for one (0.2 s).
        return dask.config.set(scheduler=dask.threaded.get)
    from kmflow.cluster import connect

    _quiet_distributed()
    return connect(_cluster_settings(workers, scheduler))


def _quiet_distributed() -> None:
    """Dask's own INFO lines (scheduler, nanny, worker start and stop) only with -v.

    Also its warning that the default dashboard port is taken (with the dashboard off, the
    scheduler's HTTP server then just takes another port): noise to a user.
    """
    import warnings

    warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        for name in ("distributed", "distributed.scheduler", "distributed.nanny"):
            logging.getLogger(name).setLevel(logging.WARNING)


# Where an object store's client raises its own exceptions from.
_STORAGE_MODULES = frozenset({"botocore", "aiobotocore", "s3fs", "aiohttp", "gcsfs", "adlfs"})


def _storage_failure(exc: BaseException) -> KmflowError | None:
    """An object store's own exception that got past kmflow's storage layer, as a StorageError.

    botocore's ``EndpointConnectionError`` (an S3 endpoint that still does not answer after
    the bounded retries), ``ClientError`` and the like, found on `exc` or its chain of
    causes, become one line naming the exception and its message (which names the
    endpoint, never the credentials); None for anything else (a bug keeps its traceback).
    """
    from kmflow.errors import StorageError
    from kmflow.storage.fs import redact_url

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__module__.split(".")[0] in _STORAGE_MODULES:
            message = redact_url(" ".join(str(current).split()))
            return StorageError(f"storage failed: {type(current).__name__}: {message}")
        current = current.__cause__ or current.__context__
    return None


def _fail(exc: BaseException) -> NoReturn:
    """A kmflow error as one line on stderr and exit code 2 (the traceback with -v)."""
    if _state["verbose"]:
        console.print_exception()
    _error_line(" ".join(str(exc).split()))  # one line, whatever the message held
    raise typer.Exit(2) from exc


@app.command()
def pipeline(
    source: Annotated[
        list[str] | None,
        typer.Argument(
            help="Images: files, folders, globs or URLs. Default: scikit-learn's sample photos.",
            show_default=False,
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=65536, help="Number of colors.")] = 16,
    model: Annotated[str, typer.Option(help="Model name in the registry.")] = "palette",
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder or URL.")] = "kmflow-out",
    store: Annotated[
        str,
        typer.Option(help="Zarr pixel store (path or URL), shared with monitor and retrain."),
    ] = "kmflow-data/store.zarr",
    color_space: Annotated[str, typer.Option("--color-space", help="'rgb' or 'lab'.")] = "rgb",
    method: Annotated[str, typer.Option(help="'histogram' or 'pixels'.")] = "histogram",
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Random seed, >= 0 (also seeds the held-out split). The model record keeps it "
            "as params.seed; its 'seed' field is the 63-bit key the fit drew from it.",
        ),
    ] = None,
    max_iter: Annotated[
        int, typer.Option(min=1, max=10_000, help="Maximum Lloyd iterations.")
    ] = 300,
    holdout: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Share held out for evaluation (0: none).")
    ] = 0.0,
    holdout_by: Annotated[
        str, typer.Option("--holdout-by", help="Hold out whole 'image's or single 'row's.")
    ] = "image",
    promote: Annotated[
        str, typer.Option(help="'if-better' (default), 'always' or 'never'.")
    ] = "if-better",
    pattern: Annotated[str | None, typer.Option(help="Glob filter inside folders.")] = None,
    strict: Annotated[bool, typer.Option(help="Fail if any image cannot be ingested.")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Local Dask worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the flow's result as JSON.")] = None,
) -> None:
    """Run the pipeline flow (ingest → train → evaluate → register → apply) on this machine.

    With no PREFECT_API_URL set, Prefect runs it against a temporary local server it starts
    itself (ephemeral mode): nothing to start by hand. With PREFECT_API_URL set, the run is
    recorded on that server (artifacts, logs, subflow runs). Sources, store and registry are
    checked before any cluster or flow starts.
    """
    from kmflow.core.split import Split
    from kmflow.params import PipelineParams

    # The split is built on its own, so its fields are named without the "holdout." prefix.
    with _as_bad_parameter({"by": "--holdout-by", "fraction": "--holdout"}):
        params = PipelineParams(
            sources=list(source or []),
            store=store,
            out=out,
            model=model,
            k=k,
            color_space=color_space,  # type: ignore[arg-type]
            method=method,  # type: ignore[arg-type]
            seed=seed,
            max_iter=max_iter,
            holdout=Split(fraction=holdout, by=holdout_by, seed=seed or 0),  # type: ignore[arg-type]
            promote=promote,  # type: ignore[arg-type]
            pattern=pattern,
            strict=strict,
        )

    def check(settings: Settings) -> None:
        from kmflow.errors import InvalidInputError
        from kmflow.preflight import check_folder, check_registry, check_sources, check_store

        found = check_sources(params.sources, settings, pattern=pattern) if params.sources else 1
        stored = check_store(params.store, settings, label="--store")
        if not found and not stored:
            matching = f" matching {pattern!r}" if pattern else ""
            raise InvalidInputError(
                f"no images found in {', '.join(params.sources)}{matching}, and no store yet "
                f"at {params.store}: nothing to train on"
            )
        check_folder(params.out, settings, label="--out")
        check_registry(settings.registry.url, settings)

    _preflight(check, workers, scheduler)
    from kmflow.flows.pipeline import pipeline_flow

    result = _run_flow(pipeline_flow, params, workers, scheduler)
    train = result.train
    title = f"kmflow pipeline: {model} version {train.version}"
    table = Table(title=title, title_justify="left")
    for col in ("images", "k", "version", "champion", "seconds"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result.ingest.n_images),
        str(k),
        str(train.version),
        str(train.champion),
        f"{result.seconds:.1f}",
    )
    out_console.print(table)
    # Training metrics are measured on the evaluation part (held out, or every stored image);
    # PSNR and ΔE describe the images the apply stage wrote (all of them).
    measured = (
        f"held-out {holdout:.0%} of the {'images' if holdout_by == 'image' else 'pixels'}"
        if holdout > 0
        else "all stored pixels (no hold-out)"
    )
    n_written = len(result.apply.images)
    metrics = Table(show_header=True, box=None)
    for col in ("metric", "value", "measured on"):
        metrics.add_column(col, justify="right" if col == "value" else "left")
    metrics.add_row("SSE per pixel", f"{train.metrics['inertia_per_pixel']:.2f}", measured)
    written = f"all {n_written} image(s) written"
    metrics.add_row("PSNR dB", f"{result.apply.psnr:.2f}", written)
    metrics.add_row("ΔE00", f"{result.apply.delta_e:.2f}", written)
    out_console.print(metrics)
    out_console.print(f"promotion: {train.reason}")
    out_console.print(f"outputs:   {out}", soft_wrap=True)
    _write_report(report, result.to_dict())


_THRESHOLD_OPTIONS = {
    "thresholds.psi": "--psi",
    "thresholds.js_distance": "--js",
    "thresholds.sqdist_ratio": "--sqdist-ratio",
    "thresholds.wasserstein": "--wasserstein",
    "sources": "SOURCE",
}


@app.command()
def monitor(
    source: Annotated[
        list[str] | None,
        typer.Argument(
            help="The new batch: image files, folders, globs or URLs (none with --batch).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="Model whose champion is the reference.")] = "palette",
    store: Annotated[
        str, typer.Option(help="Pixel store the batch is ingested into.")
    ] = "kmflow-data/store.zarr",
    reports: Annotated[
        str, typer.Option(help="Folder or URL for the drift report of each batch.")
    ] = "kmflow-data/drift",
    pattern: Annotated[str | None, typer.Option(help="Glob filter inside folders.")] = None,
    psi: Annotated[float, typer.Option(min=0.0, help="PSI threshold (occupancy), > 0.")] = 0.2,
    js: Annotated[float, typer.Option(min=0.0, max=1.0, help="JS distance threshold.")] = 0.1,
    sqdist_ratio: Annotated[
        float, typer.Option(min=1.0, help="Squared-distance ratio threshold, > 1.")
    ] = 1.5,
    wasserstein: Annotated[
        float, typer.Option(min=0.0, help="Per-channel Wasserstein threshold, > 0.")
    ] = 8.0,
    workers: Annotated[int | None, typer.Option(min=1, help="Local Dask worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write the drift report (top-level 'drifted') as JSON.")
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(
            help="Check this recorded batch id again (from an earlier report) instead of "
            "ingesting SOURCE.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check a new batch for drift against the champion (the monitor flow).

    For a segment model (kmflow segment), SOURCE is a table of new records and the check
    adds per-feature PSI and Wasserstein (the monitor-segments flow); for an image model
    (kmflow cluster-images), SOURCE holds new images, read as the model's training images
    were, and the same checks run on their features.

    Ingests the batch, compares every image no saved report covers yet (those it added, and
    any an earlier failed run left unchecked) with the champion's training data and prints
    each statistic with its threshold and the decision. On drift the flow raises the
    Prefect event kmflow.drift.detected (which starts retraining where kmflow-retrain is
    deployed). Runs in Prefect's ephemeral mode unless PREFECT_API_URL is set. Sources, store
    and model are checked before any cluster or flow starts.
    """
    from kmflow.params import MonitorParams

    if bool(source) == (batch is not None):
        raise typer.BadParameter("give SOURCE (a new batch) or --batch ID, not both or neither")
    if source and batch is None:
        from kmflow.cli_segments import champion_kind, monitor_records

        if champion_kind(model) in ("segments", "images"):  # SOURCE: records or images
            monitor_records(
                list(source),
                model,
                reports,
                {"psi": psi, "js_distance": js, "sqdist_ratio": sqdist_ratio},
                workers,
                scheduler,
                report,
            )
            return
    with _as_bad_parameter(_THRESHOLD_OPTIONS):
        params = MonitorParams(
            **({"sources": list(source)} if source else {}),
            batch=batch,
            store=store,
            model=model,
            pattern=pattern,
            reports=reports,
            # A mapping, validated as the field: an error names thresholds.<statistic>.
            thresholds={  # type: ignore[arg-type]
                "psi": psi,
                "js_distance": js,
                "sqdist_ratio": sqdist_ratio,
                "wasserstein": wasserstein,
            },
        )

    def check(settings: Settings) -> None:
        from kmflow.preflight import check_folder, check_model, check_sources, check_store

        if batch is None:
            check_sources(params.sources, settings, pattern=pattern)  # an empty folder is fine
        check_store(params.store, settings, label="--store")
        check_folder(params.reports, settings, label="--reports")
        check_model(params.model, settings)

    _preflight(check, workers, scheduler)
    from kmflow.flows.monitor import monitor_flow

    result = _run_flow(monitor_flow, params, workers, scheduler)
    if result.report is None:
        out_console.print("no new images: nothing to check")
        _write_report(report, {"drifted": False, "batch_id": None, "n_images": 0})
        return
    table = Table(
        title=f"drift: {result.n_images} new image(s) vs {model} v{result.champion_version}",
        title_justify="left",
    )
    for col in ("statistic", "value", "threshold", "drifted"):
        table.add_column(col, justify="right" if col != "statistic" else "left")
    for name, stat in result.report["statistics"].items():
        table.add_row(
            name,
            f"{stat['value']:.4g}",
            f"{stat['threshold']:.4g}",
            "[red]yes[/red]" if stat["drifted"] else "no",
        )
    out_console.print(table)
    out_console.print(
        "decision: [red]DRIFTED[/red] (event kmflow.drift.detected emitted)"
        if result.drifted
        else "decision: no drift"
    )
    out_console.print(f"report:   {result.report_url}", soft_wrap=True)
    _write_report(
        report,
        {
            "drifted": result.drifted,
            "batch_id": result.batch_id,
            "n_images": result.n_images,
            "model": model,
            "champion_version": result.champion_version,
            "statistics": result.report["statistics"],
            "report_url": result.report_url,
            "event_id": result.event_id,
        },
    )


@app.command()
def retrain(
    model: Annotated[str, typer.Option(help="Model to retrain from its champion.")] = "palette",
    store: Annotated[str, typer.Option(help="Pixel store to train on.")] = "kmflow-data/store.zarr",
    window: Annotated[
        int | None, typer.Option(min=2, help="Only the most recent N images (default: all).")
    ] = None,
    holdout: Annotated[
        float, typer.Option(min=0.01, max=0.95, help="Share of pixels held out to compare.")
    ] = 0.2,
    promote: Annotated[
        str, typer.Option(help="'if-better' (default), 'always' or 'never'.")
    ] = "if-better",
    workers: Annotated[int | None, typer.Option(min=1, help="Local Dask worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
) -> None:
    """Retrain the champion now (the retrain flow), promote only if not worse.

    For a segment model (kmflow segment), the segment flow runs again with the champion's
    parameters on its tables as they are now. The store and the model's champion are
    checked before any cluster or flow starts.
    """
    from kmflow.cli_segments import champion_kind, retrain_with_flow
    from kmflow.core.split import Split
    from kmflow.params import ImageClusterParams, RetrainParams, SegmentParams

    kind = champion_kind(model)
    if kind in ("segments", "images"):
        params_type, flow_path = (
            (SegmentParams, "kmflow.flows.segment:segment_flow")
            if kind == "segments"
            else (ImageClusterParams, "kmflow.flows.cluster_images:cluster_images_flow")
        )
        retrain_with_flow(
            model, promote, workers, scheduler, params_type=params_type, flow_path=flow_path
        )
        return

    with _as_bad_parameter({"fraction": "--holdout"}):
        params = RetrainParams(
            store=store,
            model=model,
            window=window,
            holdout=Split(fraction=holdout, by="row", seed=0),
            promote=promote,  # type: ignore[arg-type]
        )

    def check(settings: Settings) -> None:
        from kmflow.preflight import check_model, check_store

        check_store(params.store, settings, must_exist=True, label="--store")
        check_model(params.model, settings)

    _preflight(check, workers, scheduler)
    from kmflow.flows.retrain import retrain_flow

    result = _run_flow(retrain_flow, params, workers, scheduler)
    state = "promoted to champion" if result.promoted else "registered, not promoted"
    out_console.print(f"{model} version {result.version} (parent {result.parent}): {state}")
    out_console.print(f"reason: {result.reason}")


@app.command()
def apply(
    model: Annotated[str, typer.Option(help="Model whose palette paints the images.")] = "palette",
    version: Annotated[
        int | None, typer.Option(min=1, help="Version to apply (default: the champion).")
    ] = None,
    store: Annotated[
        str, typer.Option(help="Pixel store whose images are rendered.")
    ] = "kmflow-data/store.zarr",
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder or URL.")] = "kmflow-out",
    dither: Annotated[bool, typer.Option(help="Floyd-Steinberg dithering.")] = False,
    labels: Annotated[
        bool, typer.Option(help="Also store labels(pixel) for every stored pixel.")
    ] = True,
    workers: Annotated[int | None, typer.Option(min=1, help="Local Dask worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the flow's result as JSON.")] = None,
) -> None:
    """Paint every stored image with a registered palette (the apply flow), PNGs under OUT.

    The store, the model and the version are checked before any cluster or flow starts.
    """
    from kmflow.params import ApplyParams

    with _as_bad_parameter({}):
        params = ApplyParams(
            store=store, model=model, version=version, out=out, dither=dither, labels=labels
        )

    def check(settings: Settings) -> None:
        from kmflow.preflight import check_folder, check_model, check_store

        check_store(params.store, settings, must_exist=True, label="--store")
        check_folder(params.out, settings, label="--out")
        check_model(params.model, settings, champion=version is None, version=version)

    _preflight(check, workers, scheduler)
    from kmflow.flows.apply import apply_flow

    result = _run_flow(apply_flow, params, workers, scheduler)
    out_console.print(
        f"{model} version {result.version}: {len(result.images)} image(s) written to {out}"
    )
    out_console.print(f"PSNR {result.psnr:.2f} dB, ΔE00 {result.delta_e:.2f} (all images written)")
    if result.palette_url:
        out_console.print(f"palette: {result.palette_url}", soft_wrap=True)
    _write_report(report, result.to_dict())


@contextmanager
def _as_bad_parameter(options: Mapping[str, str]) -> Iterator[None]:
    """Parameter-model validation errors as a usage error (exit code 2) naming the options.

    ``options`` maps a field path of the parameter model (``"thresholds.psi"``) to the CLI
    option it came from (``"--psi"``); other fields are named ``--field-name``.
    """
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as exc:
        names, messages = [], []
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            names.append(options.get(field) or "--" + field.replace("_", "-"))
            messages.append(f"{error['input']!r}: {error['msg']}")
        if len(names) == 1:
            raise typer.BadParameter(messages[0], param_hint=f"'{names[0]}'") from exc
        raise typer.BadParameter(
            "; ".join(f"{n} {m}" for n, m in zip(names, messages, strict=True))
        ) from exc


def _preflight(
    check: Callable[[Settings], None], workers: int | None, scheduler: str | None
) -> None:
    """Run a flow command's checks before anything starts; a failure is one line, exit code 2.

    The command's own `check`, then the Prefect API the flow run will report to (when
    ``PREFECT_API_URL`` names one).
    """
    from kmflow.preflight import check_prefect_api

    if workers is not None and scheduler:
        raise typer.BadParameter("give --workers or --scheduler, not both")
    settings = _settings()
    try:
        check(settings)
        check_prefect_api()
    except KmflowError as exc:
        _fail(exc)


def _run_flow(
    flow: Callable[[Any], _R], params: Any, workers: int | None, scheduler: str | None
) -> _R:
    """Run a flow in this process on the cluster the options ask for; kmflow errors exit 2.

    Without ``PREFECT_API_URL`` Prefect starts a temporary server for the run; on a busy
    machine its first start (a fresh database) can take longer than Prefect's default 20 s
    wait, so the wait is 90 s unless ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
    says otherwise.
    """
    import os

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from kmflow.cluster import connect
    from kmflow.cluster.session import check_paths_visible, run_paths

    _quiet_distributed()
    try:
        with connect(_cluster_settings(workers, scheduler)) as client:
            check_paths_visible(client, run_paths(params))  # before the flow run starts
            return flow(params)
    except KmflowError as exc:
        _fail(exc)
    except Exception as exc:
        failure = _storage_failure(exc)
        if failure is not None:
            _fail(failure)
        if not isinstance(exc, RuntimeError) or "ephemeral Prefect API server" not in str(exc):
            raise
        if _state["verbose"]:
            console.print_exception()
        _error_line(
            f"{exc} Raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (now "
            f"{os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS']} s), or set "
            "PREFECT_API_URL to a running Prefect server."
        )
        raise typer.Exit(1) from exc


models_app = typer.Typer(help="The model registry: list, show and promote versions.")
app.add_typer(models_app, name="models")

RegistryOption = Annotated[
    str | None,
    typer.Option(help="Registry path or URL. Default: KMFLOW_REGISTRY__URL."),
]


def _registry(url: str | None) -> Any:
    from kmflow.preflight import check_registry
    from kmflow.storage.registry import ModelRegistry

    settings = _settings()
    target = url or settings.registry.url
    check_registry(target, settings)
    return ModelRegistry(target, storage_options=storage_options_for(target, settings.storage))


@models_app.command("list")
def models_list(registry: RegistryOption = None) -> None:
    """Every model with its versions and champion."""
    try:
        reg = _registry(registry)
        table = Table(title=f"models in {reg.url}", title_justify="left")
        for col in ("name", "versions", "latest", "champion", "k", "created"):
            table.add_column(col)
        for name in reg.names():
            versions = reg.versions(name)
            try:
                champion: str = str(getattr(reg.champion(name), "version", "-"))
            except ModelCorruptError as exc:  # one bad pointer must not hide the others
                console.print(f"[yellow]warning:[/yellow] {_escape(str(exc))}", soft_wrap=True)
                champion = "corrupt"
            if not versions:
                table.add_row(name, "0", "-", champion, "-", "-")
                continue
            latest = versions[-1]
            table.add_row(
                name,
                str(len(versions)),
                str(latest.version),
                champion,
                str(latest.n_clusters),
                latest.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
    except KmflowError as exc:
        _fail(exc)
    out_console.print(table)


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        str, typer.Option(help="A version number, 'latest' or 'champion'.")
    ] = "latest",
    registry: RegistryOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the whole record (model.json: parameters, metrics, reference "
            "statistics with every histogram count) and the centers as JSON.",
        ),
    ] = False,
) -> None:
    """A version's record: a readable summary, or everything with --json.

    The summary names both seeds: 'seed given' is the --seed of the training run (its
    params.seed, empty when none was given); 'random key' is the record's 'seed' field, the
    63-bit key the fit drew every random choice from (derived from the seed given).
    """
    which: int | str = int(version) if version.isdigit() else version
    if which not in ("latest", "champion") and not isinstance(which, int):
        raise typer.BadParameter(
            f"must be a number, 'latest' or 'champion'; got {version!r}", param_hint="'--version'"
        )
    try:
        from kmflow.preflight import check_model

        check_model(name, _settings(), registry=registry, champion=which == "champion")
        reg = _registry(registry)
        model = reg.load(name, which)
        champion = reg.champion(name)
    except KmflowError as exc:
        _fail(exc)
    payload = json.loads(model.record.to_json())
    payload["centers"] = model.centers.tolist()
    if as_json:
        out_console.print_json(json.dumps(payload))
        return
    rgb = None
    if model.record.kind == "palette":
        from kmflow.jobs.palette import palette_from_model

        rgb = palette_from_model(model).rgb
    summary = _model_summary(
        payload, champion=None if champion is None else champion.version, rgb=rgb
    )
    for heading, rows in summary.items():
        table = Table(title=heading, title_justify="left", show_header=False, box=None)
        table.add_column("name", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in rows.items():
            table.add_row(key, _escape(str(value)))
        out_console.print(table)
    out_console.print("(--json prints the whole record)", style="dim")


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(min=1, help="Version to make the champion.")],
    registry: RegistryOption = None,
) -> None:
    """Make a version the champion (the version apply and monitoring use by default)."""
    try:
        record = _registry(registry).promote(name, version)
    except KmflowError as exc:
        _fail(exc)
    out_console.print(f"{record.name} version {record.version} is now the champion")


_MAX_CENTERS = 64


def _hex(color: Sequence[float]) -> str:
    r, g, b = (int(min(255, max(0, round(float(v))))) for v in color)
    return f"#{r:02x}{g:02x}{b:02x}"


def _levels(counts: Sequence[float]) -> str:
    """Mean, median and 5-95 % range of one 256-bin channel histogram."""
    import numpy as np

    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return "empty"
    levels = np.arange(len(c))
    cdf = np.cumsum(c) / total
    p5, p50, p95 = (int(np.searchsorted(cdf, q)) for q in (0.05, 0.5, 0.95))
    return f"mean {float(levels @ c / total):.1f}, median {p50}, 5-95 % {p5}-{p95}"


def _model_summary(
    payload: Mapping[str, Any],
    *,
    champion: int | None = None,
    rgb: Iterable[Sequence[float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """A model record (``model.json`` plus ``centers``) summarised in sections of rows.

    The reference statistics are summarised (occupancy per cluster, mean squared distance,
    per-channel levels) instead of listing every histogram count; ``kmflow models show
    --json`` prints everything. ``seed given`` is the training run's seed parameter,
    ``random key`` the 63-bit key the fit drew from it (the record's ``seed`` field).
    """
    params = payload.get("params") or {}
    seed_given = params.get("seed")
    model: dict[str, Any] = {
        "name": payload.get("name"),
        "version": payload.get("version"),
        "champion": (
            "none yet"
            if champion is None
            else "yes"
            if champion == payload.get("version")
            else f"no (v{champion} is)"
        ),
        "parent": payload.get("parent"),
        "created": payload.get("created_at"),
        "k": payload.get("n_clusters"),
        "features": payload.get("n_features"),
        "color space": payload.get("color_space"),
        "init": payload.get("init"),
        "iterations": payload.get("n_iter"),
        "converged": payload.get("converged"),
        "inertia": f"{payload.get('inertia', float('nan')):.6g}",
        "seed given": "none (random)" if seed_given is None else seed_given,
        "random key": payload.get("seed"),
        "training data": payload.get("fingerprint"),
        "kmflow": payload.get("kmflow_version"),
    }
    sections: dict[str, dict[str, Any]] = {"Model": model}
    metrics = payload.get("metrics") or {}
    shown = {
        k: (f"{v:.6g}" if isinstance(v, float) else v)
        for k, v in metrics.items()
        if isinstance(v, int | float | str) and not isinstance(v, bool)
    }
    promotion = metrics.get("promotion") or {}
    if promotion:
        shown["promoted"] = f"{promotion.get('promoted')}: {promotion.get('reason', '')}"
    if "sizes" in metrics:
        shown["cluster sizes"] = ", ".join(str(s) for s in metrics["sizes"])
    sections["Metrics"] = shown
    ref = payload.get("reference") or {}
    if ref:
        summary: dict[str, Any] = {
            "measured on": f"{ref.get('part', '?')} ({ref.get('n_pixels', '?')} pixels)"
        }
        fractions = ref.get("cluster_fractions") or []
        if fractions:
            summary["occupancy"] = ", ".join(f"{100 * f:.1f} %" for f in fractions)
        if "mean_sqdist" in ref:
            summary["mean squared distance"] = f"{ref['mean_sqdist']:.6g}"
        hist = ref.get("channel_histograms") or {}
        space = str(hist.get("space", "")).lower()
        names = {"srgb": ["R", "G", "B"], "rgb": ["R", "G", "B"], "lab": ["L", "a", "b"]}.get(
            space, ["1", "2", "3"]
        )
        for i, counts in enumerate(hist.get("counts") or []):
            name = names[i] if i < len(names) else str(i)
            summary[f"{name} levels"] = _levels(counts)
        sections["Reference statistics (drift checks)"] = summary
    centers = payload.get("centers") or []
    colors = list(rgb) if rgb is not None else None
    rows: dict[str, Any] = {}
    for i, center in enumerate(centers[:_MAX_CENTERS]):
        text = ", ".join(f"{float(v):.4g}" for v in center)
        if colors is not None:
            text = f"{_hex(colors[i])}  ({text})"
        rows[str(i)] = text
    if len(centers) > _MAX_CENTERS:
        rows["…"] = f"{len(centers) - _MAX_CENTERS} more (--json)"
    sections["Centers" + (" (sRGB hex)" if colors is not None else "")] = rows
    return {
        heading: {k: "-" if v is None else v for k, v in rows.items()}
        for heading, rows in sections.items()
    }


def _print_errors(errors: list[Any]) -> None:
    table = Table(title="Images that could not be ingested", title_justify="left")
    table.add_column("file")
    table.add_column("reason")
    for e in errors:
        table.add_row(e.source, e.reason)
    console.print(table)


_MAX_ROWS = 20


def _fmt_db(value: float) -> str:
    return "exact" if value == float("inf") else f"{value:.2f}"


def _print_quantize_summary(summary: dict[str, Any], images: list[Any]) -> None:
    """Per-image PSNR/ΔE (the first rows, then a count), then the totals."""
    rows = Table(title=f"kmflow quantize: {summary['palette']} palette", title_justify="left")
    for col in ("image", "size", "colors", "PSNR dB", "ΔE00", "output"):
        rows.add_column(col, justify="left" if col in ("image", "output") else "right")
    for r in images[:_MAX_ROWS]:
        colors = f"{len(r.palette)}{'*' if r.exact else ''}" if r.palette else "-"
        rows.add_row(
            r.relpath,
            f"{r.width}x{r.height}",
            colors,
            _fmt_db(r.psnr),
            f"{r.delta_e:.2f}",
            r.output,
        )
    if len(images) > _MAX_ROWS:
        rows.add_row(f"… and {len(images) - _MAX_ROWS} more (all in --report)", "", "", "", "", "")
    out_console.print(rows)
    if summary["exact_images"]:
        out_console.print(
            f"* {summary['exact_images']} image(s) have no more than {summary['k']} colors and "
            "keep them exactly"
        )
    total = Table(show_header=True, box=None)
    for col in ("images", "MP", "k", "PSNR dB", "ΔE00", "fitted", "seconds"):
        total.add_column(col, justify="right")
    total.add_row(
        str(summary["images"]),
        f"{summary['megapixels']:.2f}",
        str(summary["k"]),
        _fmt_db(summary["psnr_db"]),
        f"{summary['delta_e']:.2f}",
        str(summary["palettes_fitted"]),
        f"{summary['seconds']:.1f}",
    )
    out_console.print(total)
    out_console.print(f"outputs: {summary['out']}", soft_wrap=True)
    if "palette_url" in summary:
        out_console.print(f"palette: {summary['palette_url']}", soft_wrap=True)
    out_console.print(f"store:   {summary['store']}", soft_wrap=True)


def _write_report(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    from kmflow.core.jsonable import json_ready
    from kmflow.storage.fs import write_bytes_atomic

    data = json.dumps(json_ready(payload), indent=2, default=str, allow_nan=False).encode()
    write_bytes_atomic(str(path), data, None)


def _register_job_commands() -> None:
    from kmflow import cli_images, cli_report, cli_segments, cli_serve

    cli_segments.register(app)
    cli_images.register(app)
    cli_report.register(app)
    cli_serve.register(app)


_register_job_commands()  # the other commands: segment, assign, cluster-images, report, serve


def main() -> None:
    """Console-script entry point."""
    _state["process"] = True
    try:
        app(prog_name="kmflow")
    finally:
        # The interpreter's teardown would walk every object left (imports included) with
        # the cyclic collector, 0.3 s and more; the process ends: leave them to the OS.
        gc.freeze()
