"""CLI commands of the records job: ``kmflow segment`` and ``kmflow assign``.

Registered on the main application by :mod:`kmflow.cli`; they share its error handling
(one line and exit code 2 for bad input), its cluster options and its report writing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kmflow.config import Settings

__all__ = [
    "assign",
    "champion_kind",
    "monitor_records",
    "register",
    "retrain_with_flow",
    "segment",
]


def _base() -> Any:
    """The main CLI module (imported when a command runs: it imports this module)."""
    from kmflow import cli

    return cli


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


class _SweepBar(logging.Handler):
    """Draws the sweep's progress (reported by the sweep task) as a rich progress bar."""

    def __init__(self, bar: Any, task: Any) -> None:
        super().__init__()
        self.bar, self.task = bar, task

    def emit(self, record: logging.LogRecord) -> None:
        progress = getattr(record, "kmflow_progress", None)
        if progress is not None:
            done, total, text = progress
            self.bar.update(self.task, completed=done, total=total, info=text)


def _print_sweep(result: Any) -> None:
    base = _base()
    table = Table(title=f"sweep over k ({result.rule})", title_justify="left")
    for col in ("k", "inertia", "davies-bouldin", "calinski-harabasz", "silhouette", "s", ""):
        table.add_column(col, justify="right")
    for row in result.sweep:
        mark = (
            "◀ chosen"
            if row["k"] == result.chosen_k
            else ("runner-up" if row["k"] == result.runner_up else "")
        )
        table.add_row(
            str(row["k"]),
            _fmt(row["inertia"], 6),
            _fmt(row["davies_bouldin"]),
            _fmt(row["calinski_harabasz"], 6),
            _fmt(row["silhouette"]),
            f"{row['seconds']:.2f}",
            mark,
        )
    base.out_console.print(table)


def _print_profiles(result: Any) -> None:
    base = _base()
    table = Table(title="segment profiles", title_justify="left")
    for col in ("segment", "size", "share", "target", "most distinctive (standardised diff)"):
        table.add_column(col, justify="left" if col.startswith("most") else "right")
    for p in result.profiles:
        target = "; ".join(f"{k} {_fmt(v, 3)}" for k, v in p["target"].items()) or "-"
        top = ", ".join(f"{name} {diff:+.2f}" for name, diff in p["distinguishing"][:3])
        table.add_row(str(p["segment"]), str(p["size"]), f"{p['share']:.1%}", target, top)
    base.out_console.print(table)


def _print_models(scores: dict[str, Any]) -> None:
    base = _base()
    table = Table(title="a classifier per segment vs one global model", title_justify="left")
    for col in ("segment", "test rows", "model", "F1", "ROC AUC", "global F1", "global AUC"):
        table.add_column(col, justify="right")
    for row in scores["segments"]:
        table.add_row(
            str(row["segment"]),
            str(row["n_test"]),
            row["model"],
            _fmt(row["f1"], 3),
            _fmt(row["roc_auc"], 3),
            _fmt(row["global"]["f1"], 3),
            _fmt(row["global"]["roc_auc"], 3),
        )
    overall = scores["overall"]
    table.add_row(
        "all",
        str(overall["n_test"]),
        "segmented",
        _fmt(overall["segmented"]["f1"], 3),
        _fmt(overall["segmented"]["roc_auc"], 3),
        _fmt(overall["global"]["f1"], 3),
        _fmt(overall["global"]["roc_auc"], 3),
    )
    base.out_console.print(table)


def segment(
    data: Annotated[
        list[str],
        typer.Argument(help="CSV/TSV/Parquet: files, folders, globs or URLs.", show_default=False),
    ],
    id: Annotated[str | None, typer.Option("--id", help="Id column (never a feature).")] = None,
    target: Annotated[
        str | None,
        typer.Option(help="Target column: profiles, ARI/NMI and a classifier per segment."),
    ] = None,
    features: Annotated[
        list[str] | None, typer.Option("--features", help="Feature column (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Column never used (repeatable).")
    ] = None,
    categorical: Annotated[
        list[str] | None,
        typer.Option("--categorical", help="One-hot this column even if it holds numbers."),
    ] = None,
    k: Annotated[str, typer.Option("--k", "-k", help="One k ('7') or a sweep ('2..12').")] = (
        "2..12"
    ),
    select: Annotated[
        str, typer.Option(help="Choose k by 'db', 'ch', 'silhouette' or 'elbow'.")
    ] = "db",
    min_k: Annotated[int | None, typer.Option(min=1, help="Smallest k to choose.")] = None,
    scale: Annotated[
        str, typer.Option(help="'standard', 'robust', 'minmax' or 'none'.")
    ] = "standard",
    missing: Annotated[
        str, typer.Option(help="Missing numbers: 'median', 'drop' or 'error'.")
    ] = "median",
    holdout: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Share of rows held out for evaluation.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split, fits and models.")] = 0,
    model: Annotated[str, typer.Option(help="Model name in the registry.")] = "segments",
    store: Annotated[
        str, typer.Option(help="Folder or URL of the prepared row stores.")
    ] = "kmflow-data/segments",
    out: Annotated[
        str, typer.Option("--out", "-o", help="Folder for segments.csv and profiles.csv.")
    ] = "kmflow-out",
    promote: Annotated[
        str, typer.Option(help="'if-better' (default), 'always' or 'never'.")
    ] = "if-better",
    workers: Annotated[int | None, typer.Option(min=1, help="Local Dask worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the run's report as JSON.")] = None,
) -> None:
    """Segment a table's records: k by a sweep, profiles, a classifier per segment.

    Fits every k of the sweep, chooses k by --select, profiles every segment, fits a
    classifier per segment with --target, and registers the model.

    Writes OUT/segments.csv (the id column, or 'row'; 'segment'; 'distance') and
    OUT/profiles.csv, and prints the sweep (the chosen k marked) and the profiles.
    """
    from kmflow.params import SegmentParams

    base = _base()
    with base._as_bad_parameter({"source": "DATA"}):
        params = SegmentParams(
            source=list(data),
            id=id,
            target=target,
            features=list(features) if features else None,
            exclude=list(exclude or []),
            categorical=list(categorical or []),
            k=k,
            select=select,  # type: ignore[arg-type]
            min_k=min_k,
            scale=scale,  # type: ignore[arg-type]
            missing=missing,  # type: ignore[arg-type]
            holdout=holdout,
            seed=seed,
            model=model,
            store=store,
            out=out,
            promote=promote,  # type: ignore[arg-type]
        )

    def check(settings: Settings) -> None:
        from kmflow.jobs.segments.prepare import check_names
        from kmflow.preflight import check_folder, check_registry
        from kmflow.storage.tables import read_table

        table = read_table(params.source)  # a missing or malformed table, before any cluster
        for option, names in (
            ("--id", [params.id] if params.id else []),
            ("--target", [params.target] if params.target else []),
            ("--features", params.features or []),
            ("--exclude", params.exclude),
            ("--categorical", params.categorical),
        ):
            check_names(names, table.columns, option)
        check_folder(params.out or out, settings, label="--out")
        check_registry(settings.registry.url, settings)

    base._preflight(check, workers, scheduler)
    from kmflow.flows.segment import segment_flow
    from kmflow.tasks.segment import PROGRESS_LOGGER

    reporter = logging.getLogger(PROGRESS_LOGGER)
    with base._progress() as bar:
        task = bar.add_task("sweep", total=len(params.ks), info="preparing the table")
        handler = _SweepBar(bar, task)
        reporter.addHandler(handler)
        reporter.setLevel(logging.INFO)
        try:
            result = base._run_flow(segment_flow, params, workers, scheduler)
        finally:
            reporter.removeHandler(handler)
    _print_sweep(result)
    _print_profiles(result)
    if result.segment_models is not None:
        _print_models(result.segment_models)
    missing_cells = {c: n for c, n in result.missing.items() if n}
    if missing_cells:
        base.out_console.print(
            "missing values: "
            + ", ".join(f"{c} {n}" for c, n in missing_cells.items())
            + f" ({params.missing})"
        )
    for line in result.columns["report"]:
        base.out_console.print(f"note: {line}", soft_wrap=True)
    base.out_console.print(
        f"{result.model} version {result.version}: k={result.chosen_k} "
        f"({result.rule}; runner-up {result.runner_up}); promotion: {result.reason}"
    )
    base.out_console.print(f"outputs:   {out}", soft_wrap=True)
    base._write_report(report, result.to_dict())


def assign(
    data: Annotated[
        list[str],
        typer.Argument(help="New records: CSV/TSV/Parquet files, folders, globs or URLs."),
    ],
    model: Annotated[str, typer.Option(help="Registered segment or image model.")] = "segments",
    version: Annotated[
        int | None, typer.Option(min=1, help="Version to use; default: the champion.")
    ] = None,
    out: Annotated[
        str, typer.Option("--out", "-o", help="CSV to write (id or row, segment, distance).")
    ] = "kmflow-out/assigned.csv",
    registry: Annotated[
        str | None, typer.Option(help="Registry path or URL. Default: KMFLOW_REGISTRY__URL.")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the counts as JSON.")] = None,
) -> None:
    """Label new records (or images) with a registered segment (or image) model.

    Records go through the model's stored preprocessing: missing values and unseen
    categories are handled as in training, and counted. With an image model (kmflow
    cluster-images), DATA holds new images (or a table of them), read as its training
    images were and labelled through its stored feature chain.
    """
    from kmflow.jobs.segments.job import assign_records

    base = _base()
    reg = base._registry(registry)
    try:
        loaded = reg.load(model, version if version is not None else "champion")
        if loaded.record.kind == "images":
            from kmflow.cli_images import assign_images_command

            assign_images_command(loaded, list(data), out, report)
            return
        result = assign_records(loaded, data, out)
    except Exception as exc:
        failure = exc if isinstance(exc, base.KmflowError) else base._storage_failure(exc)
        if failure is None:
            raise
        base._fail(failure)
    table = Table(title=f"{model} v{loaded.record.version}: {result.n_assigned} records")
    table.add_column("segment", justify="right")
    table.add_column("records", justify="right")
    for s, n in enumerate(result.sizes):
        table.add_row(str(s), str(n))
    base.out_console.print(table)
    odd = {c: n for c, n in result.missing.items() if n}
    unseen = {c: n for c, n in result.unseen.items() if n}
    if odd:
        base.out_console.print("missing values: " + ", ".join(f"{c} {n}" for c, n in odd.items()))
    if unseen:
        base.out_console.print(
            "unseen categories: " + ", ".join(f"{c} {n}" for c, n in unseen.items())
        )
    if result.n_assigned < result.n_rows:
        base.out_console.print(f"{result.n_rows - result.n_assigned} rows dropped (missing)")
    base.out_console.print(f"written:   {out}", soft_wrap=True)
    base._write_report(report, result.to_dict())


def champion_kind(model: str) -> str | None:
    """The kind of `model`'s champion in the configured registry (None: no champion)."""
    from kmflow.errors import KmflowError
    from kmflow.storage.fs import storage_options_for
    from kmflow.storage.registry import ModelRegistry

    settings = _base()._settings()
    url = settings.registry.url
    try:
        registry = ModelRegistry(url, storage_options=storage_options_for(url, settings.storage))
        record = registry.champion(model) if model in registry.names() else None
    except KmflowError:
        return None  # the monitor command reports a missing registry or model itself
    return None if record is None else record.kind


def monitor_records(
    source: list[str],
    model: str,
    reports: str,
    thresholds: dict[str, float],
    workers: int | None,
    scheduler: str | None,
    report: Path | None,
) -> None:
    """``kmflow monitor`` for a segment model (a table) or an image model (new images): the
    monitor-segments flow."""
    from kmflow.params import SegmentMonitorParams

    base = _base()
    with base._as_bad_parameter(base._THRESHOLD_OPTIONS | {"source": "SOURCE"}):
        params = SegmentMonitorParams(
            source=source,
            model=model,
            reports=reports,
            thresholds=thresholds,  # type: ignore[arg-type]
        )

    def check(settings: Settings) -> None:
        from kmflow.jobs.image_clusters.inputs import is_table_source
        from kmflow.preflight import check_sources
        from kmflow.storage.tables import read_table

        if is_table_source(params.source):
            read_table(params.source)
        else:
            check_sources(params.source, settings)

    base._preflight(check, workers, scheduler)
    from kmflow.flows.monitor_segments import monitor_segments_flow

    result = base._run_flow(monitor_segments_flow, params, workers, scheduler)
    table = Table(
        title=f"drift of {result.n_rows} rows against {model} v{result.champion_version}",
        title_justify="left",
    )
    for col in ("statistic", "value", "threshold", "drifted"):
        table.add_column(col, justify="right")
    for name, stat in result.report["statistics"].items():
        table.add_row(
            name, _fmt(stat["value"]), _fmt(stat["threshold"]), "yes" if stat["drifted"] else ""
        )
    base.out_console.print(table)
    worst = sorted(result.report["features"].items(), key=lambda kv: -kv[1]["wasserstein"])[:5]
    base.out_console.print(
        "features moved most (Wasserstein): "
        + ", ".join(f"{n} {s['wasserstein']:.3g}" for n, s in worst)
    )
    verdict = "DRIFTED: event kmflow.drift.detected emitted" if result.drifted else "no drift"
    base.out_console.print(f"{verdict}; report {result.report_url}", soft_wrap=True)
    base._write_report(report, result.to_dict())


def retrain_with_flow(
    model: str,
    promote: str,
    workers: int | None,
    scheduler: str | None,
    *,
    params_type: Any,
    flow_path: str,
) -> None:
    """``kmflow retrain`` for a segment or image model: its training flow again, with the
    champion's parameters, on its sources as they are now (a folder or glob picks up new
    files).

    Parameters
    ----------
    params_type : type
        The flow's parameter model (``SegmentParams``, ``ImageClusterParams``).
    flow_path : str
        ``module:flow`` of the training flow, imported once the inputs are checked.
    """
    import importlib

    from kmflow.storage.fs import storage_options_for
    from kmflow.storage.registry import ModelRegistry

    base = _base()
    settings = base._settings()
    url = settings.registry.url
    record = ModelRegistry(url, storage_options=storage_options_for(url, settings.storage)).record(
        model, "champion"
    )
    given = {k: v for k, v in record.params.items() if k in params_type.model_fields}
    with base._as_bad_parameter({"source": "the champion's source"}):
        params = params_type.model_validate({**given, "promote": promote})
    base._preflight(lambda settings: None, workers, scheduler)
    module, name = flow_path.split(":")
    flow = getattr(importlib.import_module(module), name)
    result = base._run_flow(flow, params, workers, scheduler)
    state = "promoted to champion" if result.promoted else "registered, not promoted"
    base.out_console.print(
        f"{model} version {result.version} (k={result.chosen_k}, retrained from "
        f"v{record.version}): {state}"
    )
    base.out_console.print(f"reason: {result.reason}")


def register(app: typer.Typer) -> None:
    """Add ``segment`` and ``assign`` to the main application."""
    app.command()(segment)
    app.command()(assign)
