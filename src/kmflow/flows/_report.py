"""Prefect artifacts of a flow run: metrics table, markdown report, links to outputs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from kmflow.tasks._common import artifact_key

__all__ = ["fmt", "markdown_table", "publish_links", "publish_metrics", "publish_report"]


def fmt(value: Any) -> str:
    """A value as a table cell: floats to 6 significant digits, NaN as 'n/a'."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def markdown_table(rows: list[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of dict rows (columns from the first row)."""
    if not rows:
        return "_none_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def publish_metrics(model: str, flow: str, metrics: Mapping[str, Any]) -> None:
    """A table artifact ``<model>-<flow>-metrics``: one row per metric."""
    rows = [{"metric": k, "value": fmt(v)} for k, v in metrics.items()]
    create_table_artifact(
        rows, key=artifact_key(model, flow, "metrics"), description=f"{flow} metrics of {model}"
    )


def publish_report(model: str, flow: str, title: str, sections: Mapping[str, Any]) -> None:
    """A markdown artifact ``<model>-<flow>-report`` with one section per entry.

    A section's value is markdown text, a list of dict rows (rendered as a table) or a
    mapping (rendered as a two-column table).
    """
    parts = [f"# {title}\n"]
    for heading, body in sections.items():
        parts.append(f"## {heading}\n")
        if isinstance(body, str):
            parts.append(body.rstrip() + "\n")
        elif isinstance(body, Mapping):
            parts.append(markdown_table([{"name": k, "value": v} for k, v in body.items()]))
        else:
            parts.append(markdown_table(list(body)))
    create_markdown_artifact(
        "\n".join(parts), key=artifact_key(model, flow, "report"), description=title
    )


def publish_links(model: str, links: Mapping[str, str]) -> None:
    """One link artifact per output (``<model>-<name>``)."""
    for name, url in links.items():
        create_link_artifact(url, link_text=name, key=artifact_key(model, name))
