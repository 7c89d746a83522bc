"""Model reports from the registry alone: what each figure marks, the page, the command.

The registry is filled directly (no flow run: those are covered where the flows are
tested): a vectors model with a sweep, an evaluation sample and a drift history, a palette
with a pixel sample, and a version registered without any of it.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    silhouette_samples,
)
from typer.testing import CliRunner

from kmflow.core.report_sample import SAMPLE_FILE
from kmflow.core.sweep import choose_k
from kmflow.errors import InvalidInputError
from kmflow.reports import plots
from kmflow.reports.build import FIGURES, build_report, default_report_url, write_report
from kmflow.reports.html import render_html, report_markdown

_DATA_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
FEATURES = ["age", "income", "visits", "spend", "tenure"]


def _png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


def test_every_figure_marks_what_was_computed(world: dict[str, Any]) -> None:
    report = build_report(world["registry"], "blobs", 1)
    assert [e.name for e in report.entries] == [f for f in FIGURES if f not in FIGURES_PALETTE]
    assert report.missing == []
    choice = world["choice"]
    sweep = report.picture("sweep")
    assert sweep.data["chosen_k"] == choice.k == 4
    assert sweep.data["knee"] == choose_k(world["registry"].record("blobs", 1).metrics["sweep"],
                                          "elbow").k  # fmt: skip
    assert sweep.data["ks"] == [2, 3, 4, 5, 6]
    assert _png_size(sweep.png) == (1000, 640)

    # per-cluster silhouette = scikit-learn's on the stored sample, labelled by the centers
    sample = world["sample"].astype(np.float64)
    labels = np.argmin(((sample[:, None, :] - world["centers"][None]) ** 2).sum(-1), axis=1)
    values = silhouette_samples(sample, labels)
    silhouette = report.picture("silhouette").data
    for j in range(4):
        assert silhouette["per_cluster"][j] == pytest.approx(values[labels == j].mean())
    assert silhouette["counts"] == np.bincount(labels, minlength=4).tolist()

    sizes = report.picture("sizes").data
    assert sizes["sizes"] == world["registry"].record("blobs", 1).metrics["sizes"]
    centers = report.picture("centers").data
    assert centers["features"] == FEATURES
    z = (world["centers"] - sample.mean(0)) / sample.std(0)
    np.testing.assert_allclose(centers["z"], z)
    assert report.picture("scatter").data["n"] == 400

    drift = report.picture("drift").data
    assert drift["statistics"] == ["psi", "sqdist_ratio"]
    assert (drift["checks"], drift["drifted"]) == (6, 3)
    assert drift["retrains"] == [2]
    assert drift["promotions"] == [1, 2]
    summary = dict(report.summary)
    assert summary["champion"] == "version 2"


FIGURES_PALETTE = ("rgb_cube", "swatches")


def test_a_palette_has_its_cube_and_swatches_but_no_sweep(world: dict[str, Any]) -> None:
    report = build_report(world["registry"], "pal")
    names = [e.name for e in report.pictures]
    assert names == ["silhouette", "scatter", "rgb_cube", "swatches", "sizes", "centers"]
    reasons = {m.name: m.reason for m in report.missing}
    assert set(reasons) == {"sweep", "drift"}
    assert "one given k (k=5)" in reasons["sweep"]
    assert "no drift check" in reasons["drift"]
    swatches = report.picture("swatches").data
    assert swatches["order"] == [0, 1, 2, 3, 4]
    assert swatches["shares"] == pytest.approx([0.5, 0.3, 0.1, 0.06, 0.04])
    assert swatches["hex"][0] == "#c82828"
    assert report.picture("rgb_cube").data["n"] == 700
    assert report.picture("centers").data["features"] == ["R", "G", "B"]


def test_a_version_without_sample_or_sweep_says_why(world: dict[str, Any]) -> None:
    report = build_report(world["registry"], "old")
    reasons = {m.name: m.reason for m in report.missing}
    assert set(reasons) == {"sweep", "silhouette", "scatter", "sizes", "drift"}
    assert SAMPLE_FILE in reasons["scatter"]
    assert "holds no sweep" in reasons["sweep"]
    # the centers are always there, standardised by their own spread
    assert [p.name for p in report.pictures] == ["centers"]
    html = render_html(report)
    assert html.count("Not available for this version") == 5


def test_the_page_embeds_every_figure_and_the_files_match(world: dict[str, Any]) -> None:
    registry = world["registry"]
    report = build_report(registry, "blobs", 1)
    url = default_report_url(registry, "blobs", 1)
    assert url == str(world["root"] / "models" / "blobs" / "reports" / "v000001")
    files = write_report(report, url)
    html = Path(files.html).read_text()
    embedded = _DATA_IMG.findall(html)
    assert len(embedded) == len(report.pictures) == 6
    for picture, data in zip(report.pictures, embedded, strict=True):
        png = base64.b64decode(data)
        assert png == Path(files.pngs[picture.name]).read_bytes()
        width, height = _png_size(png)
        assert f'width="{width}" height="{height}"' in html
    assert "http://" not in html  # nothing to fetch
    assert "https://" not in html
    assert "<script" not in html
    markdown = report_markdown(report, {"page": "file:///x/report.html"})
    assert markdown.count("](data:image/png;base64,") == 6
    assert "[page](file:///x/report.html)" in markdown


def test_figure_inputs_are_checked() -> None:
    rows = [{"k": 2, "inertia": 3.0}, {"k": 3, "inertia": 1.0}]
    with pytest.raises(InvalidInputError, match="chosen k=5 is not in the sweep"):
        plots.sweep_figure(rows, 5)
    picture = plots.sweep_figure(rows, 3)
    assert (picture.data["chosen_k"], picture.data["knee"]) == (3, None)
    with pytest.raises(InvalidInputError, match="no drift checks"):
        plots.drift_figure([])
    with pytest.raises(InvalidInputError, match="3 sizes for 2 palette colors"):
        plots.swatches_figure(np.zeros((2, 3)), [1, 2, 3])
    many = plots.centers_heatmap(np.random.default_rng(0).normal(size=(3, 60)), [])
    assert len(many.data["features"]) == plots.MAX_HEATMAP_FEATURES


# --------------------------------------------------------------------------- the command


def test_kmflow_report_writes_the_page(world: dict[str, Any], tmp_path: Path) -> None:
    from kmflow.cli import app

    runner = CliRunner()
    registry = str(world["root"] / "models")
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "blobs", "--registry", registry, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "report of blobs version 2" in result.output
    # version 2 has no sample and no sweep: the figures the registry still gives
    assert sorted(p.name for p in out.iterdir()) == ["centers.png", "drift.png", "report.html"]
    assert "scatter     not available" in result.output

    result = runner.invoke(app, ["report", "pal", "--registry", registry, "--version", "1"])
    assert result.exit_code == 0, result.output
    page = world["root"] / "models" / "pal" / "reports" / "v000001" / "report.html"
    assert len(_DATA_IMG.findall(page.read_text())) == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "model 'nope' has no versions"),
        (["blobs", "--version", "9"], "model 'blobs' has no version 9"),
        (["blobs", "--version", "two"], "--version must be a version number"),
        (["bad/name"], "invalid model name"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    world: dict[str, Any], args: list[str], message: str
) -> None:
    from kmflow.cli import app

    registry = str(world["root"] / "models")
    result = CliRunner().invoke(app, ["report", *args, "--registry", registry])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
