"""Prefect artifacts of a flow run: metrics table, markdown report, palette, links to outputs.

Everything here is written for a person reading the Prefect UI: markdown tables stay valid
whatever a cell holds (``k-means||`` included), seconds and bytes are shown in units, a
palette is shown as a swatch image with its hex codes, and every link is an absolute URL
(``file:///...`` for local paths, ``s3://...`` as given), never a path relative to the
worker's working directory.
"""

from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from dask.utils import format_bytes
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from kmflow.tasks._common import artifact_key

__all__ = [
    "absolute_url",
    "cluster_table",
    "escape_cell",
    "fmt",
    "fmt_bytes",
    "fmt_seconds",
    "link",
    "markdown_table",
    "palette_markdown",
    "publish_links",
    "publish_metrics",
    "publish_model_report",
    "publish_palette",
    "publish_report",
    "swatch_png",
    "timings_table",
]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
#: At most this many palette colors are listed (and drawn) in an artifact.
MAX_PALETTE_ROWS = 64


def absolute_url(url: str | os.PathLike[str]) -> str:
    """`url` as an absolute URL a browser or a user can follow from anywhere.

    A plain local path (relative or absolute) becomes a ``file://`` URL of its absolute
    path; a URL with a scheme (``s3://``, ``file://``, ``https://``) is returned as given.

    Examples
    --------
    >>> absolute_url("/data/out/a.png")
    'file:///data/out/a.png'
    >>> absolute_url("s3://bucket/out/")
    's3://bucket/out/'
    """
    text = os.fspath(url)
    if _SCHEME.match(text) or "::" in text:
        return text
    return Path(text).expanduser().absolute().as_uri()


def link(url: str | os.PathLike[str], text: str | None = None) -> str:
    """A markdown link to the absolute URL of `url` (text: `url` as given)."""
    target = absolute_url(url)
    label = escape_cell(text if text is not None else os.fspath(url))
    return f"[{label}]({target.replace(' ', '%20').replace(')', '%29')})"


def escape_cell(text: str) -> str:
    """Text safe inside a markdown table cell: ``|`` escaped, line breaks as spaces."""
    return " ".join(str(text).replace("\\|", "|").replace("|", "\\|").split())


def fmt_seconds(seconds: float) -> str:
    """A duration for people: ``'850 ms'``, ``'12.3 s'``, ``'4 min 05 s'``."""
    if not math.isfinite(seconds):
        return "n/a"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def fmt_bytes(n: int | float) -> str:
    """A byte count in binary units (``'4.00 GiB'``); 0 means no limit for memory."""
    return format_bytes(int(n))


def fmt(value: Any) -> str:
    """A value as a table cell: floats to 6 significant digits, NaN as 'n/a', escaped."""
    if isinstance(value, bool) or value is None:
        text = "-" if value is None else str(value)
    elif isinstance(value, float):
        text = "n/a" if math.isnan(value) else f"{value:.6g}"
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    elif isinstance(value, list | tuple):
        text = ", ".join(_plain(v) for v in value)
    else:
        text = str(value)
    return escape_cell(text)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return "-" if value is None else str(value)


class Cell(str):
    """Markdown already written for a cell (a link, an image): escaped, not re-formatted."""


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of dict rows (columns: every key, in first-seen order).

    Cells are escaped (``|`` and line breaks), so any value keeps the table valid; a
    :class:`Cell` is markdown (a link) and is only made safe for the table.
    """
    if not rows:
        return "_none_\n"
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]

    def cell(value: Any) -> str:
        return escape_cell(value) if isinstance(value, Cell) else fmt(value)

    lines = ["| " + " | ".join(escape_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def timings_table(timings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``stage | seconds`` from a mapping of seconds (nested mappings as 'outer: inner')."""
    rows: list[dict[str, Any]] = []

    def walk(prefix: str, mapping: Mapping[str, Any]) -> None:
        for name, value in mapping.items():
            label = f"{prefix}{name}"
            if isinstance(value, Mapping):
                walk(f"{label}: ", value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                rows.append({"stage": label, "time": fmt_seconds(float(value))})

    walk("", timings)
    return rows


def cluster_table(info: Mapping[str, Any], *, dashboard: bool | None = None) -> dict[str, Any]:
    """The Dask cluster of a run (:func:`kmflow.cluster.session.describe`) for people.

    Memory in binary units (``0``: no limit), the dashboard as a link only when it is on.

    Parameters
    ----------
    info : mapping
        ``scheduler``, ``workers``, ``threads``, ``memory_bytes``, ``dashboard`` (a URL).
    dashboard : bool, optional
        Whether the dashboard serves pages. Default: off for a local cluster started with
        ``KMFLOW_CLUSTER__DASHBOARD_ADDRESS`` unset (its scheduler still names a dashboard
        port, where every page is a 404), on otherwise.
    """
    if dashboard is None:
        from kmflow.config import get_settings

        settings = get_settings().cluster
        dashboard = not (settings.mode == "local" and settings.dashboard_address is None)
    rows: dict[str, Any] = {
        "scheduler": info.get("scheduler", "?"),
        "workers": info.get("workers", 0),
        "threads": info.get("threads", 0),
    }
    memory = int(info.get("memory_bytes", 0) or 0)
    rows["memory"] = fmt_bytes(memory) if memory else "no limit"
    url = info.get("dashboard")
    if dashboard and url:
        rows["dashboard"] = Cell(link(url))
    return rows


def swatch_png(rgb: np.ndarray, *, cell: int = 24, per_row: int = 16) -> bytes:
    """A PNG swatch of the colors `rgb` (``(k, 3)`` in 0-255): `cell`-pixel squares in rows."""
    from kmflow.storage.images import encode_png

    colors = np.clip(np.rint(np.asarray(rgb, dtype=np.float64)), 0, 255).astype(np.uint8)
    k = len(colors)
    cols = max(1, min(per_row, k))
    n_rows = max(1, -(-k // cols))
    image = np.full((n_rows * cell, cols * cell, 3), 255, dtype=np.uint8)
    for i, color in enumerate(colors):
        r, c = divmod(i, cols)
        image[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = color
    return encode_png(image)


def _hex(color: Sequence[float]) -> str:
    r, g, b = (int(np.clip(round(float(v)), 0, 255)) for v in color)
    return f"#{r:02x}{g:02x}{b:02x}"


def palette_markdown(
    rgb: np.ndarray,
    sizes: Sequence[int] | None = None,
    *,
    swatch_url: str | None = None,
    sizes_label: str = "pixels",
) -> str:
    """A palette for the Prefect UI: a swatch image (PNG data URI) and a table of hex codes.

    Parameters
    ----------
    rgb : numpy.ndarray of shape (k, 3)
        The colors in sRGB, 0-255.
    sizes : sequence of int, optional
        Pixels per color (adds a `sizes_label` column and a ``share`` column).
    swatch_url : str, optional
        Where the full-size swatch file is (linked as an absolute URL).

    Notes
    -----
    The Prefect UI renders a markdown image's ``src`` as given, so a ``data:image/png``
    URI shows without any file server; the table has the same colors as text for readers
    that show no images. At most :data:`MAX_PALETTE_ROWS` colors are listed.
    """
    colors = np.asarray(rgb, dtype=np.float64)[:MAX_PALETTE_ROWS]
    encoded = base64.b64encode(swatch_png(colors)).decode("ascii")
    total = sum(sizes) if sizes is not None else 0
    rows: list[dict[str, Any]] = []
    for i, color in enumerate(colors):
        row: dict[str, Any] = {
            "color": i,
            "hex": f"`{_hex(color)}`",
            "RGB": ", ".join(str(int(np.clip(round(v), 0, 255))) for v in color),
        }
        if sizes is not None:
            row[sizes_label] = int(sizes[i])
            row["share"] = f"{100 * sizes[i] / total:.1f} %" if total else "-"
        rows.append(row)
    parts = [f"![palette of {len(rgb)} colors](data:image/png;base64,{encoded})\n"]
    parts.append(markdown_table(rows))
    if len(rgb) > MAX_PALETTE_ROWS:
        parts.append(f"_… and {len(rgb) - MAX_PALETTE_ROWS} more colors_\n")
    if swatch_url:
        parts.append(f"Swatch file: {link(swatch_url)}\n")
    return "\n".join(parts)


def publish_metrics(model: str, flow: str, metrics: Mapping[str, Any]) -> None:
    """A table artifact ``<model>-<flow>-metrics``: one row per metric."""
    rows = [{"metric": k, "value": fmt(v)} for k, v in metrics.items()]
    create_table_artifact(
        rows, key=artifact_key(model, flow, "metrics"), description=f"{flow} metrics of {model}"
    )


def _section(body: Any) -> str:
    if isinstance(body, str):
        return body.rstrip() + "\n"
    if isinstance(body, Mapping):
        return markdown_table([{"name": k, "value": v} for k, v in body.items()])
    return markdown_table(list(body))


def publish_report(model: str, flow: str, title: str, sections: Mapping[str, Any]) -> None:
    """A markdown artifact ``<model>-<flow>-report`` with one section per entry.

    A section's value is markdown text, a list of dict rows (rendered as a table) or a
    mapping (rendered as a two-column table); cells are escaped, :class:`Cell` values are
    markdown (links).
    """
    parts = [f"# {title}\n"]
    for heading, body in sections.items():
        parts.append(f"## {heading}\n")
        parts.append(_section(body))
    create_markdown_artifact(
        "\n".join(parts), key=artifact_key(model, flow, "report"), description=title
    )


def publish_palette(
    model: str,
    title: str,
    rgb: np.ndarray,
    sizes: Sequence[int] | None = None,
    swatch_url: str | None = None,
    sizes_label: str = "pixels",
) -> None:
    """A markdown artifact ``<model>-palette``: swatch image, hex codes, link to the PNG."""
    create_markdown_artifact(
        f"# {title}\n\n"
        + palette_markdown(rgb, sizes, swatch_url=swatch_url, sizes_label=sizes_label),
        key=artifact_key(model, "palette"),
        description=title,
    )


def publish_links(model: str, links: Mapping[str, str]) -> None:
    """One link artifact per output (``<model>-<name>``), to the output's absolute URL."""
    for name, url in links.items():
        create_link_artifact(absolute_url(url), link_text=name, key=artifact_key(model, name))


def publish_pictures(
    model: str, flow: str, title: str, pictures: Mapping[str, bytes], links: Mapping[str, str]
) -> None:
    """A markdown artifact ``<model>-<flow>-pictures``: each PNG embedded as a data URI (the
    Prefect UI shows them with no file server), with a link to its file."""
    parts = [f"# {title}\n"]
    for name, png in pictures.items():
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f"## {name}\n\n![{name}](data:image/png;base64,{encoded})\n")
        if name in links:
            parts.append(f"File: {link(links[name])}\n")
    create_markdown_artifact(
        "\n".join(parts), key=artifact_key(model, flow, "pictures"), description=title
    )


def publish_model_report(model: str, outcome: tuple[Any, Any] | None) -> None:
    """The report of a version (:func:`kmflow.tasks.report.report_task`) in the Prefect UI.

    A markdown artifact ``<model>-figures`` with every figure as a PNG data URI (the Prefect
    UI 3.8 renders those in markdown artifacts: checked in headless Chromium by
    ``tests/reports/test_report_browser.py``), the figures it could not draw with the
    reason, and the page's file; and a link artifact ``<model>-report-page`` to the HTML
    page. Nothing when there is no report.

    Notes
    -----
    The links are absolute URLs (``file://`` for local registries). A browser does not
    follow a ``file://`` link from a page served over HTTP (the UI): copy it into the
    address bar, or read the figures in the markdown artifact itself.
    """
    if outcome is None:
        return
    from kmflow.reports.html import report_markdown

    report, files = outcome
    page = absolute_url(files.html)
    create_markdown_artifact(
        report_markdown(report, {"report page (HTML)": page}),
        key=artifact_key(model, "figures"),
        description=f"Figures of {report.title}",
    )
    create_link_artifact(
        page,
        link_text=f"report of {model} version {report.version}",
        key=artifact_key(model, "report-page"),
    )
