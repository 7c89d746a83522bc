"""The ``kmflow`` command line: one command per job.

Each command builds parameters and calls library code; progress bars and tables are drawn with
rich. ``kmflow quantize`` is the main job: images in, images quantized to k colors out.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kmflow.config import ClusterSettings, get_settings
from kmflow.errors import KmflowError
from kmflow.storage.fs import join_url, storage_options_for

app = typer.Typer(
    name="kmflow",
    help="k-means clustering as a production workflow on Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out_console = Console()


def _cluster_settings(workers: int | None, scheduler: str | None) -> ClusterSettings:
    base = get_settings().cluster
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    """k-means clustering as a production workflow on Dask."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
        typer.Option(help="Random seed (per-image palettes use 0 unless given)."),
    ] = None,
    n_init: Annotated[
        int, typer.Option("--n-init", min=1, max=100, help="Per-image: seeded starts per image.")
    ] = 8,
    max_iter: Annotated[int, typer.Option(min=1, help="Maximum Lloyd iterations.")] = 300,
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
    from kmflow.quantize.job import QuantizeOptions, plan, run

    if workers is not None and scheduler:
        raise typer.BadParameter("give --workers or --scheduler, not both")
    for name, value, allowed in (
        ("--palette", palette, ("per-image", "shared")),
        ("--color-space", color_space, ("rgb", "lab")),
        ("--method", method, ("histogram", "pixels")),
    ):
        if value not in allowed:
            raise typer.BadParameter(f"{name} must be one of {', '.join(map(repr, allowed))}")
    settings = get_settings()
    t0 = time.perf_counter()
    try:
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
        "seed": shared.seed if shared is not None else options.per_image_params().seed,
    }
    if shared is not None:
        summary.update(
            {
                "iterations": shared.n_iter,
                "converged": shared.converged,
                "inertia": shared.inertia,
                "inertia_per_pixel": shared.inertia / max(1, shared.n_pixels),
                "palette_url": result.palette_url,
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


def _job_cluster(workers: int | None, scheduler: str | None, local_bytes: int | None) -> Any:
    """The Dask context of a job: a cluster, or this process's threads for a small local job."""
    settings = get_settings()
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

        # Dask's threads, named so that no default client of this process is picked up.
        return dask.config.set(scheduler="threads")
    from kmflow.cluster import connect

    _quiet_distributed()
    return connect(_cluster_settings(workers, scheduler))


def _quiet_distributed() -> None:
    """Dask's own INFO lines (scheduler, nanny, worker start and stop) only with -v."""
    if not logging.getLogger().isEnabledFor(logging.INFO):
        for name in ("distributed", "distributed.scheduler", "distributed.nanny"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _fail(exc: BaseException) -> NoReturn:
    """A kmflow error as one line on stderr and exit code 2 (the traceback with -v)."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        console.print_exception()
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
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
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed.")] = None,
    max_iter: Annotated[int, typer.Option(min=1, help="Maximum Lloyd iterations.")] = 300,
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
    recorded on that server (artifacts, logs, subflow runs).
    """
    from kmflow.flows.pipeline import pipeline_flow
    from kmflow.params import PipelineParams, SplitParams

    with _as_bad_parameter():
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
            holdout=SplitParams(fraction=holdout, by=holdout_by, seed=seed or 0),  # type: ignore[arg-type]
            promote=promote,  # type: ignore[arg-type]
            pattern=pattern,
            strict=strict,
        )
    result = _run_flow(pipeline_flow, params, workers, scheduler)
    train = result["train"]
    table = Table(
        title=f"kmflow pipeline: {model} version {train['version']}", title_justify="left"
    )
    for col in ("images", "k", "version", "champion", "SSE/px", "PSNR dB", "ΔE00", "seconds"):
        table.add_column(col, justify="right")
    metrics = train["metrics"]
    table.add_row(
        str(result["ingest"]["n_images"]),
        str(k),
        str(train["version"]),
        str(train["champion"]),
        f"{metrics['inertia_per_pixel']:.2f}",
        f"{result['apply']['psnr']:.2f}",
        f"{result['apply']['delta_e']:.2f}",
        f"{result['seconds']:.1f}",
    )
    out_console.print(table)
    out_console.print(f"promotion: {train['reason']}")
    out_console.print(f"outputs:   {out}")
    _write_report(report, result)


@app.command()
def monitor(
    source: Annotated[
        list[str],
        typer.Argument(
            help="The new batch: image files, folders, globs or URLs.", show_default=False
        ),
    ],
    model: Annotated[str, typer.Option(help="Model whose champion is the reference.")] = "palette",
    store: Annotated[
        str, typer.Option(help="Pixel store the batch is ingested into.")
    ] = "kmflow-data/store.zarr",
    reports: Annotated[
        str, typer.Option(help="Folder or URL for the drift report of each batch.")
    ] = "kmflow-data/drift",
    pattern: Annotated[str | None, typer.Option(help="Glob filter inside folders.")] = None,
    psi: Annotated[float, typer.Option(min=0.0, help="PSI threshold (occupancy).")] = 0.2,
    js: Annotated[float, typer.Option(min=0.0, max=1.0, help="JS distance threshold.")] = 0.1,
    sqdist_ratio: Annotated[
        float, typer.Option(min=1.0, help="Squared-distance ratio threshold.")
    ] = 1.5,
    wasserstein: Annotated[
        float, typer.Option(min=0.0, help="Per-channel Wasserstein threshold.")
    ] = 8.0,
    workers: Annotated[int | None, typer.Option(min=1, help="Local Dask worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write the drift report (top-level 'drifted') as JSON.")
    ] = None,
) -> None:
    """Check a new batch of images for drift against the champion (the monitor flow).

    Ingests the batch, compares the images it added with the champion's training data and
    prints each statistic with its threshold and the decision. On drift the flow raises the
    Prefect event kmflow.drift.detected (which starts retraining where kmflow-retrain is
    deployed). Runs in Prefect's ephemeral mode unless PREFECT_API_URL is set.
    """
    from kmflow.flows.monitor import monitor_flow
    from kmflow.params import DriftThresholdParams, MonitorParams

    with _as_bad_parameter():
        params = MonitorParams(
            sources=list(source),
            store=store,
            model=model,
            pattern=pattern,
            reports=reports,
            thresholds=DriftThresholdParams(
                psi=psi, js_distance=js, sqdist_ratio=sqdist_ratio, wasserstein=wasserstein
            ),
        )
    result = _run_flow(monitor_flow, params, workers, scheduler)
    if result["report"] is None:
        out_console.print("no new images: nothing to check")
        _write_report(report, {"drifted": False, "batch_id": None, "n_images": 0})
        return
    table = Table(
        title=f"drift: {result['n_images']} new image(s) vs {model} v{result['champion_version']}",
        title_justify="left",
    )
    for col in ("statistic", "value", "threshold", "drifted"):
        table.add_column(col, justify="right" if col != "statistic" else "left")
    for name, stat in result["report"]["statistics"].items():
        table.add_row(
            name,
            f"{stat['value']:.4g}",
            f"{stat['threshold']:.4g}",
            "[red]yes[/red]" if stat["drifted"] else "no",
        )
    out_console.print(table)
    out_console.print(
        "decision: [red]DRIFTED[/red] (event kmflow.drift.detected emitted)"
        if result["drifted"]
        else "decision: no drift"
    )
    out_console.print(f"report:   {result['report_url']}")
    _write_report(
        report,
        {
            "drifted": result["drifted"],
            "batch_id": result["batch_id"],
            "n_images": result["n_images"],
            "model": model,
            "champion_version": result["champion_version"],
            "statistics": result["report"]["statistics"],
            "report_url": result["report_url"],
            "event_id": result["event_id"],
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
    """Retrain the champion on the store now (the retrain flow), promote only if not worse."""
    from kmflow.flows.retrain import retrain_flow
    from kmflow.params import RetrainParams, SplitParams

    with _as_bad_parameter():
        params = RetrainParams(
            store=store,
            model=model,
            window=window,
            holdout=SplitParams(fraction=holdout, by="row", seed=0),
            promote=promote,  # type: ignore[arg-type]
        )
    result = _run_flow(retrain_flow, params, workers, scheduler)
    state = "promoted to champion" if result["promoted"] else "registered, not promoted"
    out_console.print(f"{model} version {result['version']} (parent {result['parent']}): {state}")
    out_console.print(f"reason: {result['reason']}")


@contextmanager
def _as_bad_parameter() -> Iterator[None]:
    """Parameter-model validation errors as a usage error (exit code 2) naming the fields."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as exc:
        raise typer.BadParameter(_validation_message(exc)) from exc


def _run_flow(
    flow: Callable[[Any], dict[str, Any]], params: Any, workers: int | None, scheduler: str | None
) -> dict[str, Any]:
    """Run a flow in this process on the cluster the options ask for; kmflow errors exit 2."""
    if workers is not None and scheduler:
        raise typer.BadParameter("give --workers or --scheduler, not both")
    from kmflow.cluster import connect
    from kmflow.cluster.session import check_paths_visible, run_paths

    _quiet_distributed()
    try:
        with connect(_cluster_settings(workers, scheduler)) as client:
            check_paths_visible(client, run_paths(params))  # before the flow run starts
            return flow(params)
    except KmflowError as exc:
        _fail(exc)


def _validation_message(exc: Any) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


models_app = typer.Typer(help="The model registry: list, show and promote versions.")
app.add_typer(models_app, name="models")

RegistryOption = Annotated[
    str | None,
    typer.Option(help="Registry path or URL. Default: KMFLOW_REGISTRY__URL."),
]


def _registry(url: str | None) -> Any:
    from kmflow.storage.registry import ModelRegistry

    settings = get_settings()
    target = url or settings.registry.url
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
            champion = reg.champion(name)
            latest = versions[-1]
            table.add_row(
                name,
                str(len(versions)),
                str(latest.version),
                "-" if champion is None else str(champion.version),
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
) -> None:
    """A version's record (model.json) and centers, as JSON."""
    which: int | str = int(version) if version.isdigit() else version
    if which not in ("latest", "champion") and not isinstance(which, int):
        raise typer.BadParameter("--version must be a number, 'latest' or 'champion'")
    try:
        model = _registry(registry).load(name, which)
    except KmflowError as exc:
        _fail(exc)
    payload = json.loads(model.record.to_json())
    payload["centers"] = model.centers.tolist()
    out_console.print_json(json.dumps(payload))


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
    out_console.print(f"outputs: {summary['out']}")
    if "palette_url" in summary:
        out_console.print(f"palette: {summary['palette_url']}")
    out_console.print(f"store:   {summary['store']}")


def _json_ready(value: Any) -> Any:
    """Non-finite floats become null (JSON has no inf/NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _write_report(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    from kmflow.storage.fs import write_bytes_atomic

    data = json.dumps(_json_ready(payload), indent=2, default=str, allow_nan=False).encode()
    write_bytes_atomic(str(path), data, None)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="kmflow")


if __name__ == "__main__":
    main()
