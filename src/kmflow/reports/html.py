"""A report as one self-contained HTML page, and as markdown for the Prefect UI.

The page needs no network and no other file: every figure is an ``<img>`` whose ``src`` is a
``data:image/png;base64,...`` URI, the style sheet is inline, there is no script. Text from
the registry (model names, metric names, reasons) is HTML-escaped.

The markdown (:func:`report_markdown`) holds the same figures as markdown images with data
URIs: the Prefect UI 3.8 renders them in a markdown artifact (checked in headless Chromium
by ``tests/reports/test_report_browser.py``).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Mapping

from PIL import Image

from kmflow.reports.build import Missing, Report
from kmflow.reports.plots import Picture

__all__ = ["data_uri", "render_html", "report_markdown"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.generated { color: #666; font-size: 0.85rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f4f4f4; }
.tables { display: flex; gap: 2rem; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0.5rem 0 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9rem; max-width: 900px; }
.missing { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6rem 0.9rem;
           font-size: 0.9rem; max-width: 900px; }
nav a { margin-right: 0.8rem; font-size: 0.9rem; }
"""


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` of the PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        return image.size


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    e = html.escape
    body = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows)
    return f"<table><tr><th>{e(header[0])}</th><th>{e(header[1])}</th></tr>{body}</table>"


def render_html(report: Report, *, generated: dt.datetime | None = None) -> str:
    """The report as one HTML page (every figure embedded as a PNG data URI).

    Parameters
    ----------
    report : Report
    generated : datetime, optional
        Shown under the title.

    Returns
    -------
    str
    """
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(report.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
    ]
    if generated is not None:
        when = generated.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        parts.append(f'<p class="generated">Report generated {e(when)} by kmflow.</p>')
    parts.append(
        "<nav>"
        + "".join(f'<a href="#{e(x.name)}">{e(x.title)}</a>' for x in report.entries)
        + "</nav>"
    )
    parts.append('<div class="tables">')
    parts.append(_table(report.summary, ("version", "")))
    if report.metrics:
        parts.append(_table(report.metrics, ("metric", "value")))
    parts.append("</div>")
    for entry in report.entries:
        parts.append(f'<h2 id="{e(entry.name)}">{e(entry.title)}</h2>')
        if isinstance(entry, Missing):
            parts.append(
                f'<p class="missing">Not available for this version: {e(entry.reason)}</p>'
            )
            continue
        width, height = _size(entry.png)
        parts.append(
            f'<figure><img src="{data_uri(entry.png)}" alt="{e(entry.title)}" '
            f'width="{width}" height="{height}"><figcaption>{e(entry.caption)}</figcaption>'
            "</figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md(text: str) -> str:
    """Plain text safe in markdown prose and table cells."""
    out = " ".join(str(text).split())
    for ch in ("\\", "|", "*", "_", "[", "]", "<", ">", "`"):
        out = out.replace(ch, "\\" + ch)
    return out


def report_markdown(report: Report, links: Mapping[str, str] | None = None) -> str:
    """The report as markdown: summary table, each figure as a data-URI image, the missing
    figures with their reasons, and `links` (label -> absolute URL) at the end."""
    parts = [f"# {_md(report.title)}\n", "| version | |", "|---|---|"]
    parts += [f"| {_md(k)} | {_md(v)} |" for k, v in report.summary]
    parts.append("")
    for entry in report.entries:
        parts.append(f"## {_md(entry.title)}\n")
        if isinstance(entry, Picture):
            parts.append(f"![{_md(entry.title)}]({data_uri(entry.png)})\n")
            parts.append(f"{_md(entry.caption)}\n")
        else:
            parts.append(f"_Not available for this version:_ {_md(entry.reason)}\n")
    if links:
        parts.append("## Files\n")
        for label, url in links.items():
            parts.append(f"- [{_md(label)}]({url.replace(' ', '%20').replace(')', '%29')})")
        parts.append("")
    return "\n".join(parts)
