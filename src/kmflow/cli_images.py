"""CLI commands of the image-clustering job: ``kmflow cluster-images``, and ``kmflow assign``,
``monitor`` and ``retrain`` for image models.

Registered on the main application by :mod:`kmflow.cli`; they share its error handling
(one line and exit code 2 for bad input), its cluster options and its report writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kmflow.config import Settings

__all__ = ["assign_images_command", "cluster_images", "register"]

#: The metrics table's rows, in this order, when the images have known classes.
_EXTERNAL = (
    ("ari", "adjusted Rand index"),
    ("ami", "adjusted mutual information"),
    ("nmi", "normalized mutual information"),
    ("fmi", "Fowlkes-Mallows index"),
    ("accuracy", "accuracy (Hungarian matching)"),
    ("purity", "purity"),
    ("entropy", "entropy (0 = pure)"),
    ("f1", "pairwise F1"),
)
_INTERNAL = (
    ("davies_bouldin", "Davies-Bouldin (lower is better)"),
    ("calinski_harabasz", "Calinski-Harabasz"),
    ("silhouette", "silhouette (sample)"),
    ("inertia", "inertia"),
)


def _base() -> Any:
    from kmflow import cli

    return cli


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    """The external metrics (when there are classes) and the internal ones, as one table."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, name in (*_EXTERNAL, *_INTERNAL):
        if key in metrics:
            table.add_row(name, _fmt(metrics[key]))
    _base().out_console.print(table)


def _print_sizes(sizes: list[int], sheets: list[str]) -> None:
    table = Table(title="clusters", title_justify="left")
    table.add_column("cluster", justify="right")
    table.add_column("images", justify="right")
    table.add_column("contact sheet")
    for j, n in enumerate(sizes):
        table.add_row(str(j), str(n), sheets[j] if j < len(sheets) else "")
    _base().out_console.print(table)


def cluster_images(
    source: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders, globs or URLs; or a CSV/Parquet table of images.",
            show_default=False,
        ),
    ],
    k: Annotated[str, typer.Option("--k", "-k", help="One k ('10') or a sweep ('2..12').")] = "10",
    features: Annotated[
        str | None,
        typer.Option(
            help="Feature chain (default raw,pca:30,umap:5): extractors raw, hog, color, then "
            "std, pca:N, umap:N; e.g. 'hog,pca:30,umap:5' for photos, 'raw,pca:30' without UMAP."
        ),
    ] = None,
    labels_from: Annotated[
        str | None,
        typer.Option(help="'subfolders': known classes from the layout class/image.png."),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="CSV of known classes, columns relpath,label.")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="A table's column of known classes.")
    ] = None,
    image_shape: Annotated[
        str | None,
        typer.Option(help="HxW or HxWxC: images are resized to it; a table's rows read as it."),
    ] = None,
    select: Annotated[
        str, typer.Option(help="How a sweep chooses k: 'db', 'ch', 'silhouette', 'elbow'.")
    ] = "db",
    n_init: Annotated[int, typer.Option(min=1, max=100, help="k-means restarts.")] = 4,
    holdout: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Share of images held out of the fits.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the chain and of k-means.")] = 0,
    model: Annotated[str, typer.Option(help="Model name in the registry.")] = "images",
    store: Annotated[
        str, typer.Option(help="Folder or URL of the decoded image row stores.")
    ] = "kmflow-data/images",
    out: Annotated[
        str,
        typer.Option("--out", "-o", help="Folder for clusters.csv, contact sheets, heatmap."),
    ] = "kmflow-out",
    promote: Annotated[
        str, typer.Option(help="'if-better' (default), 'always' or 'never'.")
    ] = "if-better",
    workers: Annotated[int | None, typer.Option(min=1, help="Local Dask worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the run's report as JSON.")] = None,
) -> None:
    """Cluster whole images by what they show, and score the grouping against known classes.

    Images are resized to --image-shape (default 32x32x3), turned into features by the
    --features chain (fitted on these images and stored with the model), grouped by
    k-means, and registered as a model that labels new images (kmflow assign).

    Writes OUT/clusters.csv (id: the relative path, or the 0-based row of a table;
    cluster; distance), OUT/sheets/cluster_<j>.png (the images nearest each center, then
    random members) and, with known classes, OUT/contingency.png; prints the metrics.
    """
    from kmflow.params import DEFAULT_IMAGE_FEATURES, ImageClusterParams

    base = _base()
    with base._as_bad_parameter(
        {"source": "SOURCE", "labels_from": "--labels-from", "image_shape": "--image-shape"}
    ):
        params = ImageClusterParams(
            source=list(source),
            k=k,
            features=features or DEFAULT_IMAGE_FEATURES,
            labels_from=labels_from,  # type: ignore[arg-type]
            labels=labels,
            label_column=label_column,
            image_shape=image_shape,
            select=select,  # type: ignore[arg-type]
            n_init=n_init,
            holdout=holdout,
            seed=seed,
            model=model,
            store=store,
            out=out,
            promote=promote,  # type: ignore[arg-type]
        )

    def check(settings: Settings) -> None:
        from kmflow.jobs.image_clusters.inputs import check_inputs, is_table_source
        from kmflow.preflight import check_folder, check_registry, check_sources

        # options, shape, chain; a table's columns and pixel values: before any cluster
        check_inputs(params)
        if not is_table_source(params.source) and check_sources(params.source, settings) == 0:
            from kmflow.errors import InvalidInputError

            raise InvalidInputError(f"no images found in {', '.join(params.source)}")
        check_folder(out, settings, label="--out")
        check_registry(settings.registry.url, settings)

    base._preflight(check, workers, scheduler)
    from kmflow.flows.cluster_images import cluster_images_flow

    result = base._run_flow(cluster_images_flow, params, workers, scheduler)
    for skipped in result.skipped[:20]:
        base.console.print(f"not used: {skipped['id']}: {skipped['reason']}", soft_wrap=True)
    if len(result.skipped) > 20:
        base.console.print(f"... and {len(result.skipped) - 20} more images not used")
    _print_sizes(result.sizes, result.sheets)
    print_metrics(
        result.metrics,
        f"{result.n_images} images, features {result.features} ({result.n_features}), "
        f"k={result.chosen_k}",
    )
    base.out_console.print(
        f"{result.model} version {result.version}: k={result.chosen_k}; promotion: {result.reason}",
        soft_wrap=True,
    )
    base.out_console.print(f"outputs:   {out}", soft_wrap=True)
    base._write_report(report, result.to_dict())


def assign_images_command(loaded: Any, data: list[str], out: str, report: Path | None) -> None:
    """``kmflow assign`` with an image model: new images (or a table of them), as the model
    read its training images, through its stored feature chain."""
    from kmflow.jobs.image_clusters.job import assign_images, input_params

    base = _base()
    # kmflow and storage errors reach the one line of `kmflow assign`'s own handler
    params = input_params(loaded.record, list(data))
    result = assign_images(loaded, params, out)
    table = Table(title=f"{loaded.record.name} v{loaded.record.version}: {result.n_images} images")
    table.add_column("cluster", justify="right")
    table.add_column("images", justify="right")
    for j, n in enumerate(result.sizes):
        table.add_row(str(j), str(n))
    base.out_console.print(table)
    for skipped in result.skipped:
        base.console.print(f"not used: {skipped['id']}: {skipped['reason']}", soft_wrap=True)
    if result.external:
        print_metrics(result.external, "against the known classes")
    base.out_console.print(f"written:   {out}", soft_wrap=True)
    base._write_report(report, result.to_dict())


def register(app: typer.Typer) -> None:
    """Add ``cluster-images`` to the main application."""
    app.command("cluster-images")(cluster_images)
