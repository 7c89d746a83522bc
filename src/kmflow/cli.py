"""The ``kmflow`` command line: one command per job.

Each command builds parameters and calls library code; progress bars and tables are drawn with
rich. ``kmflow quantize`` is the main job: images in, images quantized to k colors out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kmflow.cluster import connect
from kmflow.config import ClusterSettings, get_settings
from kmflow.errors import KmflowError
from kmflow.kernels.lloyd import IterationInfo
from kmflow.quantize import apply_palette, fit_palette
from kmflow.storage.fs import join_url, storage_options_for, write_bytes_atomic
from kmflow.storage.images import discover_images
from kmflow.storage.pixelstore import IngestProgress, PixelStore
from kmflow.storage.samples import sample_images_dir

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
            help="'histogram' (unique colors weighted by counts) or 'pixels' (every pixel)."
        ),
    ] = "histogram",
    seed: Annotated[int | None, typer.Option(help="Random seed (reproducible palettes).")] = None,
    max_iter: Annotated[int, typer.Option(min=1, help="Maximum Lloyd iterations.")] = 300,
    pattern: Annotated[
        str | None, typer.Option(help="Only files matching this glob (e.g. '*.tif') in folders.")
    ] = None,
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
    """Quantize images to K colors: ingest into a Zarr store, fit a palette, write PNGs."""
    if workers is not None and scheduler:
        raise typer.BadParameter("give --workers or --scheduler, not both")
    if color_space not in ("rgb", "lab"):
        raise typer.BadParameter("--color-space must be 'rgb' or 'lab'")
    if method not in ("histogram", "pixels"):
        raise typer.BadParameter("--method must be 'histogram' or 'pixels'")
    settings = get_settings()
    sources = list(source) if source else [sample_images_dir()]
    store_url = store or join_url(out, "store.zarr")
    t0 = time.perf_counter()
    try:
        with connect(_cluster_settings(workers, scheduler)), _progress() as bar:
            src_options = storage_options_for(sources[0], settings.storage)
            images = [
                img
                for s in sources
                for img in discover_images(
                    s, pattern=pattern, storage_options=storage_options_for(s, settings.storage)
                )
            ]
            pixel_store = PixelStore(
                store_url,
                storage_options=storage_options_for(store_url, settings.storage),
                chunk_pixels=settings.storage.chunk_pixels,
            )
            ingest_task = bar.add_task("ingest", total=len(images), info="")

            def on_ingest(p: IngestProgress) -> None:
                bar.update(
                    ingest_task, completed=p.images_done, info=f"{p.pixels_done / 1e6:.1f} MP"
                )

            ingest = pixel_store.ingest(
                images,
                max_pixels=settings.storage.max_image_pixels,
                storage_options=src_options,
                progress=on_ingest,
            )
            bar.update(ingest_task, completed=len(images))
            if ingest.errors:
                _print_errors(ingest.errors)
            if strict and ingest.errors:
                _write_report(report, {"ingest": ingest.to_dict()})
                console.print(f"[red]--strict: {len(ingest.errors)} image(s) could not be ingested")
                raise typer.Exit(1)
            if not ingest.added and not ingest.duplicates:
                _write_report(report, {"ingest": ingest.to_dict()})
                console.print("[red]nothing could be ingested: no image to quantize")
                raise typer.Exit(1)
            fit_task = bar.add_task("fit", total=max_iter, info="")

            def on_iteration(info: IterationInfo) -> None:
                bar.update(fit_task, completed=info.iteration, info=f"inertia {info.inertia:.4g}")

            palette = fit_palette(
                pixel_store,
                k,
                color_space=color_space,  # type: ignore[arg-type]
                method=method,  # type: ignore[arg-type]
                random_state=seed,
                max_iter=max_iter,
                callback=on_iteration,
            )
            bar.update(fit_task, total=palette.n_iter, completed=palette.n_iter)
            write_task = bar.add_task("write", total=len(pixel_store.images()), info="")
            applied = apply_palette(
                pixel_store,
                palette,
                out,
                storage_options=storage_options_for(out, settings.storage),
                progress=lambda done, total: bar.update(write_task, completed=done, total=total),
            )
    except KmflowError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    seconds = time.perf_counter() - t0
    summary = {
        "images": len(applied.images),
        "megapixels": round(applied.n_pixels / 1e6, 3),
        "k": k,
        "color_space": color_space,
        "method": method,
        "iterations": palette.n_iter,
        "converged": palette.converged,
        "inertia": palette.inertia,
        "inertia_per_pixel": palette.inertia / max(1, palette.n_pixels),
        "psnr_db": applied.psnr,
        "delta_e": applied.delta_e,
        "seconds": round(seconds, 3),
        "store": store_url,
        "out": out,
        "palette": applied.palette_url,
        "seed": palette.seed,
    }
    _print_summary(summary)
    _write_report(
        report,
        {
            "summary": summary,
            "palette_rgb": palette.rgb.tolist(),
            "images": [{k_: v for k_, v in vars(r).items() if k_ != "sse"} for r in applied.images],
            "ingest": ingest.to_dict(),
        },
    )


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
    try:
        with connect(_cluster_settings(workers, scheduler)):
            return flow(params)
    except KmflowError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


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
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
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
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
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
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out_console.print(f"{record.name} version {record.version} is now the champion")


def _print_errors(errors: list[Any]) -> None:
    table = Table(title="Images that could not be ingested", title_justify="left")
    table.add_column("file")
    table.add_column("reason")
    for e in errors:
        table.add_row(e.source, e.reason)
    console.print(table)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="kmflow quantize", title_justify="left")
    for col in ("images", "MP", "k", "iterations", "SSE/px", "PSNR dB", "ΔE00", "seconds"):
        table.add_column(col, justify="right")
    table.add_row(
        str(summary["images"]),
        f"{summary['megapixels']:.2f}",
        str(summary["k"]),
        str(summary["iterations"]),
        f"{summary['inertia_per_pixel']:.2f}",
        f"{summary['psnr_db']:.2f}",
        f"{summary['delta_e']:.2f}",
        f"{summary['seconds']:.1f}",
    )
    out_console.print(table)
    out_console.print(f"outputs: {summary['out']}")
    out_console.print(f"palette: {summary['palette']}")
    out_console.print(f"store:   {summary['store']}")


def _write_report(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    write_bytes_atomic(str(path), json.dumps(payload, indent=2, default=str).encode(), None)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="kmflow")


if __name__ == "__main__":
    main()
