"""CLI command ``kmflow report``: a model version's report as one HTML page plus its PNGs.

Registered on the main application by :mod:`kmflow.cli`; it shares its error handling (one
line and exit code 2 for bad input: an unknown model or version, a damaged registry).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

__all__ = ["register", "report"]


def _base() -> Any:
    from kmflow import cli

    return cli


def report(
    model: Annotated[str, typer.Argument(help="Model name in the registry.")],
    version: Annotated[
        str,
        typer.Option(help="A version number, 'latest' or 'champion'."),
    ] = "latest",
    out: Annotated[
        str | None,
        typer.Option(
            help="Folder (path or URL) for report.html and the PNGs. Default: next to the "
            "model, <registry>/<model>/reports/v<version>/.",
            show_default=False,
        ),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(help="Registry path or URL. Default: KMFLOW_REGISTRY__URL."),
    ] = None,
) -> None:
    """Write a version's report: one self-contained HTML page (no network needed) and PNGs.

    Figures: the sweep over k (knee and chosen k marked), silhouette per cluster, the
    evaluation sample on its first two principal components, for palettes the RGB cube and
    the swatches with their shares, cluster sizes, the standardised centers, and the drift
    history (each statistic per checked batch against its threshold, retrains and
    promotions marked). A figure the stored data cannot give is named with the reason.
    """
    from kmflow.errors import InvalidInputError, KmflowError
    from kmflow.storage.fs import storage_options_for

    cli = _base()
    try:
        which: int | str = version
        if version.isascii() and version.isdigit():
            which = int(version)
        elif version not in ("latest", "champion"):
            raise InvalidInputError(
                f"--version must be a version number, 'latest' or 'champion'; got {version!r}"
            )
        from kmflow.reports.build import build_report, default_report_url, write_report

        reg = cli._registry(registry)
        built = build_report(reg, model, which)
        target = out or default_report_url(reg, model, built.version)
        options = (
            reg.storage_options
            if out is None
            else storage_options_for(target, cli._settings().storage)
        )
        files = write_report(built, target, options)
    except KmflowError as exc:
        cli._fail(exc)
    console = cli.out_console
    console.print(f"report of {model} version {built.version}: {files.html}", highlight=False)
    for picture in built.pictures:
        console.print(f"  {picture.name:<11} {files.pngs[picture.name]}", highlight=False)
    for missing in built.missing:
        console.print(f"  {missing.name:<11} not available: {missing.reason}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``report`` to the main application."""
    app.command("report")(report)
