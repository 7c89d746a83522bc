"""A model version's report, built from the registry alone, and the files it is written to.

:func:`build_report` reads one version (its record, centers and files, checked as every load
is), the model's other versions and its history (promotions, drift checks), and draws every
figure the stored data allows (:mod:`kmflow.reports.plots`); a figure it cannot draw becomes
a :class:`Missing` entry saying why (a palette has no sweep; a version registered before
versions kept an evaluation sample has no scatter). :func:`write_report` writes the
self-contained page (:func:`kmflow.reports.html.render_html`) and the PNGs; by default next
to the model: ``<registry>/<name>/reports/v000003/`` (:func:`default_report_url`).

Which data each figure comes from:

==============  ===========================================================================
figure          data
==============  ===========================================================================
sweep           ``metrics.sweep`` (one row per k), ``metrics.chosen_k``, ``metrics.rule``
silhouette      the evaluation sample (:data:`kmflow.core.report_sample.SAMPLE_FILE`),
                labelled by the nearest center, :func:`sklearn.metrics.silhouette_samples`
scatter         the same sample and the centers, on the sample's first two components
rgb_cube        palettes: the sample's pixels and the palette colors
swatches        palettes: the palette colors and ``metrics.sizes``
sizes           ``metrics.sizes`` (else the sample's labels)
centers         the centers, standardised by the sample's mean and spread (else the
                centers' own); feature names from the reference statistics
drift           the model's history: drift checks, promotions; versions' ``created_at``
==============  ===========================================================================
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kmflow.core.model import Model, read_npy
from kmflow.core.report_sample import SAMPLE_FILE
from kmflow.errors import KmflowError
from kmflow.reports import plots
from kmflow.reports.plots import Picture
from kmflow.storage.fs import join_url, write_bytes_atomic
from kmflow.storage.registry import ModelRegistry

__all__ = [
    "FIGURES",
    "Missing",
    "Report",
    "ReportFiles",
    "build_report",
    "default_report_url",
    "write_report",
]

#: Every figure a report may hold, in page order: name -> title.
FIGURES: dict[str, str] = {
    "sweep": "Choosing k",
    "silhouette": "Silhouette per cluster",
    "scatter": "Sample on its first two principal components",
    "rgb_cube": "Pixels in the RGB cube",
    "swatches": "Palette colors and their shares",
    "sizes": "Cluster sizes",
    "centers": "Cluster centers (standardised)",
    "drift": "Drift history",
}
_PALETTE_ONLY = ("rgb_cube", "swatches")
HTML_FILE = "report.html"


@dataclass(frozen=True)
class Missing:
    """A figure the report cannot draw for this version, and why."""

    name: str
    title: str
    reason: str


@dataclass(frozen=True)
class Report:
    """Everything one report page shows.

    Attributes
    ----------
    name, version, kind : str, int, str
        The model version reported on.
    title : str
    summary : list of (str, str)
        The version at a glance (k, parent, champion, when, ...).
    metrics : list of (str, str)
        Its scalar metrics, nested ones as ``held_out.davies_bouldin``.
    entries : list of Picture or Missing
        The figures, in :data:`FIGURES` order.
    """

    name: str
    version: int
    kind: str
    title: str
    summary: list[tuple[str, str]]
    metrics: list[tuple[str, str]]
    entries: list[Picture | Missing] = field(default_factory=list)

    @property
    def pictures(self) -> list[Picture]:
        return [e for e in self.entries if isinstance(e, Picture)]

    @property
    def missing(self) -> list[Missing]:
        return [e for e in self.entries if isinstance(e, Missing)]

    def picture(self, name: str) -> Picture:
        """The figure called `name` (KeyError when it is missing)."""
        for p in self.pictures:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass(frozen=True)
class ReportFiles:
    """Where a report was written: the page and each PNG (URLs)."""

    folder: str
    html: str
    pngs: dict[str, str]


def default_report_url(registry: ModelRegistry, name: str, version: int) -> str:
    """``<registry>/<name>/reports/v<version, 6 digits>``: where reports go by default."""
    return join_url(registry.url, name, "reports", f"v{version:06d}")


# --------------------------------------------------------------------------- building


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _scalar_metrics(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in metrics.items():
        if key in ("sweep", "sizes", "promotion", "classes", "segment_models"):
            continue
        label = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _scalar_metrics(value, f"{label}.")
        elif isinstance(value, bool | int | float | str) or value is None:
            rows.append((label, _fmt(value)))
    return rows


def _feature_names(model: Model) -> list[str]:
    record = model.record
    if record.kind == "palette":
        return ["L*", "a*", "b*"] if record.color_space == "lab" else ["R", "G", "B"]
    names = (record.reference.get("feature_histograms") or {}).get("names") or []
    if len(names) == record.n_features:
        return [str(n) for n in names]
    return [f"f{j}" for j in range(record.n_features)]


def _sample(model: Model) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(rows in the centers' space, raw RGB for palettes, why there is none)."""
    data = model.artifacts.get(SAMPLE_FILE)
    if data is None:
        return (
            None,
            None,
            (
                f"version {model.record.version} was registered without an evaluation sample "
                f"({SAMPLE_FILE}; versions keep one since kmflow's reports were added, or it was "
                "registered by other code): retrain to get this figure"
            ),
        )
    raw = read_npy(data, SAMPLE_FILE)
    if raw.ndim != 2 or raw.shape[0] == 0:
        return None, None, f"the evaluation sample of this version is empty ({raw.shape})"
    if model.record.kind == "palette":
        rgb = raw.astype(np.uint8)
        return np.asarray(model.transform(rgb), dtype=np.float64), rgb, ""
    if raw.shape[1] != model.record.n_features:
        return (
            None,
            None,
            (
                f"the evaluation sample has {raw.shape[1]} columns, the centers "
                f"{model.record.n_features}"
            ),
        )
    return raw.astype(np.float64), None, ""


def _colors(model: Model) -> tuple[np.ndarray, np.ndarray | None]:
    """Cluster colors (RGBA, 0-1): the palette colors for a palette; and the palette RGB."""
    if model.record.kind == "palette":
        from kmflow.jobs.palette import palette_from_model

        rgb = np.asarray(palette_from_model(model).rgb, dtype=np.float64)
        rgba = np.column_stack([np.clip(rgb, 0, 255) / 255.0, np.ones(len(rgb))])
        return rgba, rgb
    return plots.cluster_colors(model.record.n_clusters), None


def _summary(model: Model, registry: ModelRegistry, versions: list[Any]) -> list[tuple[str, str]]:
    record = model.record
    try:
        champion = registry.champion(record.name)
    except KmflowError:
        champion = None
    promotion = record.metrics.get("promotion") or {}
    rows = [
        ("model", record.name),
        ("version", str(record.version)),
        ("kind", record.kind),
        ("clusters (k)", str(record.n_clusters)),
        ("features", str(record.n_features)),
        ("registered", record.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("parent (retrained from)", _fmt(record.parent)),
        (
            "champion",
            "this version"
            if champion is not None and champion.version == record.version
            else (f"version {champion.version}" if champion is not None else "none promoted"),
        ),
        ("promotion decision", _fmt(promotion.get("reason"))),
        ("versions of the model", ", ".join(str(v.version) for v in versions) or "-"),
        ("initialisation", record.init),
        ("iterations", f"{record.n_iter} ({'converged' if record.converged else 'not converged'})"),
        ("training inertia", _fmt(record.inertia)),
        ("training data fingerprint", record.fingerprint[:16]),
        ("kmflow", record.kmflow_version),
    ]
    if record.kind == "palette":
        rows.insert(5, ("color space", str(record.color_space)))
    return rows


def build_report(registry: ModelRegistry, name: str, version: int | str = "latest") -> Report:
    """The report of one version of model `name`, from what the registry holds.

    Parameters
    ----------
    registry : ModelRegistry
    name : str
    version : int or {"latest", "champion"}, default "latest"

    Returns
    -------
    Report

    Raises
    ------
    InvalidInputError, ModelNotFoundError, ModelCorruptError, StorageError
        As :meth:`ModelRegistry.load` does (an unknown model or version, altered files).

    Notes
    -----
    The silhouette of the sample is exact (:func:`sklearn.metrics.silhouette_samples`,
    O(n² d) for a sample of at most 2,000 rows); everything else is small.
    """
    model = registry.load(name, version)
    record = model.record
    versions = registry.versions(name)
    k = record.n_clusters
    entries: dict[str, Picture | Missing] = {}

    def missing(figure: str, reason: str) -> None:
        entries[figure] = Missing(figure, FIGURES[figure], reason)

    colors, palette_rgb = _colors(model)
    sample, rgb, why = _sample(model)
    labels = model.predict_features(sample) if sample is not None else None

    # the sweep
    sweep = record.metrics.get("sweep")
    chosen = record.metrics.get("chosen_k", k)
    if isinstance(sweep, list) and len(sweep) > 1:
        entries["sweep"] = plots.sweep_figure(sweep, int(chosen), rule=record.metrics.get("rule"))
    elif isinstance(sweep, list) and sweep:
        missing("sweep", f"the training run fitted one k (k={chosen}): there is no sweep over k")
    elif record.kind == "palette":
        missing("sweep", f"a palette is fitted at one given k (k={k}): there is no sweep over k")
    else:
        missing("sweep", f"the record of version {record.version} holds no sweep over k")

    # silhouette and scatter from the sample
    if sample is None or labels is None:
        missing("silhouette", why)
        missing("scatter", why)
    else:
        n_labels = len(np.unique(labels))
        if 2 <= n_labels < len(sample):
            from sklearn.metrics import silhouette_samples

            recorded = record.metrics.get("silhouette")
            if recorded is None:
                recorded = (record.metrics.get("train") or {}).get("silhouette")
            entries["silhouette"] = plots.silhouette_figure(
                silhouette_samples(sample, labels),
                labels,
                k,
                colors=colors,
                recorded=None if recorded is None else float(recorded),
            )
        else:
            missing(
                "silhouette",
                f"the evaluation sample falls in {n_labels} cluster(s) of {len(sample)} rows: "
                "a silhouette needs at least 2 clusters and fewer clusters than rows",
            )
        space = (
            f"the {record.color_space} color space"
            if record.kind == "palette"
            else "the centers' feature space"
        )
        entries["scatter"] = plots.pca_scatter(
            sample, labels, model.centers, colors=colors, space=space
        )

    # palettes: the cube and the swatches
    recorded_sizes = record.metrics.get("sizes")
    sizes: list[float] = []
    if isinstance(recorded_sizes, list) and len(recorded_sizes) == k:
        sizes = [float(v) for v in recorded_sizes]
    sizes_ok = bool(sizes)
    if record.kind == "palette" and palette_rgb is not None:
        if rgb is not None and labels is not None:
            entries["rgb_cube"] = plots.rgb_cube(rgb, labels, palette_rgb)
        else:
            missing("rgb_cube", why)
        if sizes_ok:
            entries["swatches"] = plots.swatches_figure(palette_rgb, sizes)
        else:
            missing("swatches", "the record holds no pixel count per palette color")

    # sizes
    unit = {"palette": "pixels", "images": "images"}.get(record.kind, "rows")
    if sizes_ok:
        entries["sizes"] = plots.sizes_figure(sizes, colors=colors, unit=unit)
    elif labels is not None:
        counts = np.bincount(labels, minlength=k)
        entries["sizes"] = plots.sizes_figure(counts, colors=colors, unit="sampled rows")
    else:
        missing("sizes", "the record holds no cluster sizes and the version no sample")

    # the centers
    names = _feature_names(model)
    if sample is not None:
        entries["centers"] = plots.centers_heatmap(
            model.centers,
            names,
            mean=sample.mean(axis=0),
            scale=sample.std(axis=0),
            basis="of the evaluation sample",
        )
    else:
        entries["centers"] = plots.centers_heatmap(
            model.centers, names, basis="of the centers themselves: this version has no sample"
        )

    # drift history
    history = registry.history(name)
    checks = [e for e in history if e["type"] == "drift" and e.get("statistics")]
    if checks:
        entries["drift"] = plots.drift_figure(
            checks,
            versions=[
                {"version": v.version, "created_at": v.created_at.isoformat(), "parent": v.parent}
                for v in versions
            ],
            promotions=[e for e in history if e["type"] == "promotion"],
        )
    else:
        missing(
            "drift",
            f"no drift check of {name!r} has been logged yet (the monitor flows log one entry "
            "per checked batch in the model's history)",
        )

    ordered = [entries[f] for f in FIGURES if f in entries]
    title = f"{name} version {record.version}: {record.kind}, k={k}"
    return Report(
        name=name,
        version=record.version,
        kind=record.kind,
        title=title,
        summary=_summary(model, registry, versions),
        metrics=_scalar_metrics(record.metrics),
        entries=ordered,
    )


# --------------------------------------------------------------------------- writing


def write_report(
    report: Report, url: str, storage_options: dict[str, Any] | None = None
) -> ReportFiles:
    """Write ``report.html`` (self-contained) and ``<figure>.png`` into the folder `url`.

    Parameters
    ----------
    report : Report
    url : str
        A local folder or any fsspec URL (created as needed).
    storage_options : dict, optional

    Returns
    -------
    ReportFiles

    Raises
    ------
    StorageError
        If a file cannot be written.

    Notes
    -----
    Each file is written whole (temporary file and rename, or one PUT): a reader never sees
    half a page, and writing the same report again replaces it.
    """
    from kmflow.reports.html import render_html

    pngs: dict[str, str] = {}
    for picture in report.pictures:
        target = join_url(url, f"{picture.name}.png")
        write_bytes_atomic(target, picture.png, storage_options)
        pngs[picture.name] = target
    html = join_url(url, HTML_FILE)
    generated = dt.datetime.now(dt.UTC)
    write_bytes_atomic(html, render_html(report, generated=generated).encode(), storage_options)
    return ReportFiles(folder=url, html=html, pngs=pngs)
