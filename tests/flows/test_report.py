"""What a person reads in the Prefect UI: valid markdown tables, units, palettes, live links."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from kmflow.flows._report import (
    Cell,
    absolute_url,
    cluster_table,
    escape_cell,
    fmt,
    fmt_bytes,
    fmt_seconds,
    link,
    markdown_table,
    palette_markdown,
    timings_table,
)

_PIPE = re.compile(r"(?<!\\)\|")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def table_cells(markdown: str) -> list[list[str]]:
    """The cells of each row of the first markdown table (split on unescaped pipes)."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in _PIPE.split(row)[1:-1]] for row in rows]


def test_pipes_and_line_breaks_in_cells_keep_the_table_valid() -> None:
    rows = [
        {"parameter": "init", "value": "k-means||"},
        {"parameter": "note|with pipe", "value": "two\nlines"},
        {"parameter": "holdout", "value": {"fraction": 0.2, "by": "image"}},
    ]
    cells = table_cells(markdown_table(rows))
    assert [len(r) for r in cells] == [2, 2, 2, 2, 2]  # header, rule, three rows
    assert cells[2] == ["init", r"k-means\|\|"]
    assert cells[3] == [r"note\|with pipe", "two lines"]
    assert cells[4] == ["holdout", "fraction=0.2, by=image"]


def test_rows_with_different_keys_get_every_column() -> None:
    cells = table_cells(markdown_table([{"a": 1}, {"a": 2, "b": 3.0}]))
    assert cells[0] == ["a", "b"]
    assert cells[2] == ["1", ""]
    assert cells[3] == ["2", "3"]


def test_values_for_people() -> None:
    assert fmt(float("nan")) == "n/a"
    assert fmt(0.123456789) == "0.123457"
    assert fmt(None) == "-"
    assert fmt_seconds(0.25) == "250 ms"
    assert fmt_seconds(12.345) == "12.3 s"
    assert fmt_seconds(125) == "2 min 05 s"
    assert fmt_bytes(4 * 2**30) == "4.00 GiB"
    assert escape_cell(r"already \| escaped | not") == r"already \| escaped \| not"


def test_timings_are_rows_of_seconds_not_a_dict() -> None:
    rows = timings_table({"train": {"fit": 1.5, "evaluate": 0.5}, "pipeline total": 63.0})
    assert rows == [
        {"stage": "train: fit", "time": "1.5 s"},
        {"stage": "train: evaluate", "time": "500 ms"},
        {"stage": "pipeline total", "time": "1 min 03 s"},
    ]
    assert "{" not in markdown_table(rows)


def test_cluster_memory_in_units_and_no_dead_dashboard_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = {"scheduler": "tcp://127.0.0.1:1", "workers": 2, "threads": 2, "memory_bytes": 2**33}
    off = cluster_table({**info, "dashboard": None}, dashboard=True)
    assert off["memory"] == "8.00 GiB"
    assert "dashboard" not in off
    # A local cluster with the dashboard off still names a port: not shown.
    dead = cluster_table({**info, "dashboard": "http://127.0.0.1:8787/status"})
    assert "dashboard" not in dead
    on = cluster_table({**info, "dashboard": "http://127.0.0.1:8787/status"}, dashboard=True)
    assert on["dashboard"] == "[http://127.0.0.1:8787/status](http://127.0.0.1:8787/status)"
    assert cluster_table({**info, "memory_bytes": 0})["memory"] == "no limit"
    monkeypatch.setenv("KMFLOW_CLUSTER__DASHBOARD_ADDRESS", ":8787")
    assert "dashboard" in cluster_table({**info, "dashboard": "http://127.0.0.1:8787/status"})
    text = markdown_table([{"name": k, "value": v} for k, v in on.items()])
    assert "8589934592" not in text
    assert "(http://127.0.0.1:8787/status)" in text


def test_links_are_absolute_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_url("out/palette.png") == (tmp_path / "out" / "palette.png").as_uri()
    assert absolute_url("s3://bucket/out/") == "s3://bucket/out/"
    assert absolute_url("file:///data/x.png") == "file:///data/x.png"
    assert link("out dir") == f"[out dir]({(tmp_path / 'out dir').as_uri()})"
    assert isinstance(Cell(link("x")), str)


def test_palette_shows_a_swatch_and_hex_codes() -> None:
    rgb = np.array([[255, 0, 0], [0, 128, 255], [12, 34, 56]], dtype=np.float64)
    text = palette_markdown(rgb, [50, 30, 20], swatch_url="/data/out/palette.png")
    (uri,) = re.findall(r"!\[[^]]*\]\((data:image/png;base64,[^)]+)\)", text)
    swatch = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert {tuple(c) for c in swatch.reshape(-1, 3)} == {tuple(c) for c in rgb.astype(int)}
    assert swatch.shape == (24, 3 * 24, 3)
    cells = table_cells(text)
    assert cells[0] == ["color", "hex", "RGB", "pixels", "share"]
    assert cells[2] == ["0", "`#ff0000`", "255, 0, 0", "50", "50.0 %"]
    assert cells[4][1] == "`#0c2238`"
    assert "[/data/out/palette.png](file:///data/out/palette.png)" in text


# --------------------------------------------------------------------------- artifacts


def _artifacts(*keys: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys)))
            )

    # The session's other tests may have made artifacts with the same keys: the newest wins.
    return {a.key: a for a in sorted(asyncio.run(read()), key=lambda a: a.created)}


def _target_exists(url: str) -> bool:
    parsed = urlparse(url)
    assert parsed.scheme == "file", url
    return Path(unquote(parsed.path)).exists()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_every_link_in_the_artifacts_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative --out and --store (as a worker's defaults are): links still absolute and live."""
    from kmflow.core.split import Split
    from kmflow.flows import pipeline_flow
    from kmflow.params import PipelineParams

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KMFLOW_REGISTRY__URL", "models")
    monkeypatch.setenv("KMFLOW_CLUSTER__PROCESSES", "false")
    monkeypatch.setenv("KMFLOW_CLUSTER__N_WORKERS", "1")
    rng = np.random.default_rng(3)
    (tmp_path / "photos").mkdir()
    colors = np.array([[220, 30, 30], [30, 200, 60], [40, 40, 220], [240, 240, 20]])
    for i in range(2):
        labels = rng.integers(0, 4, (20, 24))
        Image.fromarray(colors[labels].astype(np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    params = PipelineParams(
        sources=["photos"], store="data/linkcheck.zarr", out="out", model="swatch", k=4, seed=0,
        holdout=Split(fraction=0.5, by="row", seed=0),
    )  # fmt: skip
    pipeline_flow(params)

    keys = [f"swatch-{name}" for name in ("palette", "outputs", "apply-report",
                                          "train-report", "pipeline-report", "figures",
                                          "report-page")]  # fmt: skip
    found = _artifacts(*keys, "store-ingest-report")
    assert set(found) == {*keys, "store-ingest-report"}
    for key, artifact in found.items():
        text = str(artifact.data)
        for url in _LINK.findall(text):
            if url.startswith("data:"):
                assert url.startswith("data:image/png;base64,"), key
                continue
            assert _target_exists(url), (key, url)
        assert "{'" not in text, key  # no raw dicts
        assert '{"' not in text, key
    assert _LINK.findall(str(found["swatch-outputs"].data)) == [(tmp_path / "out").as_uri()]
    page = (tmp_path / "models" / "swatch" / "reports" / "v000001" / "report.html").as_uri()
    assert _LINK.findall(str(found["swatch-report-page"].data)) == [page]
    assert page in _LINK.findall(str(found["swatch-figures"].data))
    palette = str(found["swatch-palette"].data)
    assert (tmp_path / "out" / "palette.png").as_uri() in palette
    (uri,) = [u for u in _LINK.findall(palette) if u.startswith("data:")]
    swatch = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert len({tuple(c) for c in swatch.reshape(-1, 3)}) == 4
    assert palette.count("`#") == 4  # one hex code per color
    apply_links = _LINK.findall(str(found["swatch-apply-report"].data))
    assert (tmp_path / "out" / "0.png").as_uri() in apply_links
    pipeline = str(found["swatch-pipeline-report"].data)
    assert "held-out 50% of the pixels" in pipeline
    assert "PSNR " in pipeline
    assert "on all of them" in pipeline
    for table in (pipeline, str(found["swatch-train-report"].data)):
        assert "k-means\\|\\|" in table or "k-means||" not in table
