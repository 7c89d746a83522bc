"""The report in a real browser: the HTML page, and a flow run's artifact in the Prefect UI.

Headless Chromium (the Debian package; ``make test`` installs it when it is missing) loads
each page over the DevTools protocol (:mod:`_browser`): every image must have loaded
(natural width > 0, the size of its PNG) and the console must hold no error. Screenshots are
kept in ``$KMFLOW_TEST_ARTIFACTS`` (default ``tests-artifacts/`` at the repository root):
``report-html.png`` and ``prefect-ui-figures.png``.

What this found about Prefect 3.8.8's UI: a markdown artifact's images with
``data:image/png;base64`` sources render (its markdown renderer keeps ``data:`` URIs), so the
figures are embedded in the artifact itself; a ``file://`` link in an artifact is shown but
the browser refuses to open it from the UI's http:// page ("Not allowed to load local
resource"), so the link to the HTML file is for copying, not clicking.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _browser import Browser
from PIL import Image

from kmflow.reports.build import build_report, write_report

pytestmark = pytest.mark.integration

#: The Prefect UI asks for these itself and the server has none (404): not kmflow's errors.
_UI_OWN_MISSING = ("/favicon.ico", "/ico/undefined.svg")


def _png_width(src: str) -> int:
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
        return int(image.size[0])


def _own_errors(errors: list[str]) -> list[str]:
    return [e for e in errors if not any(e.endswith(path) for path in _UI_OWN_MISSING)]


def test_the_html_report_shows_every_figure(world: dict[str, Any], tmp_path: Path) -> None:
    report = build_report(world["registry"], "blobs", 1)
    files = write_report(report, str(tmp_path / "page"))
    with Browser() as browser:
        page = browser.open(Path(files.html).as_uri(), screenshot="report-html.png")
    assert page.errors == []
    assert len(page.images) == len(report.pictures) == 6
    for image, picture in zip(page.images, report.pictures, strict=True):
        assert image["complete"]
        assert image["width"] > 0
        assert image["width"] == _png_width(image["src"])
        assert image["src"].startswith("data:image/png;base64,")
        assert picture.title in page.text
    assert "Not available" not in page.text
    assert page.screenshot is not None
    assert page.screenshot.stat().st_size > 10_000


# --------------------------------------------------------------------------- the Prefect UI

_PUBLISH = textwrap.dedent(
    """
    import json, sys
    from prefect import flow
    from prefect.runtime import flow_run
    from kmflow.flows._report import publish_model_report
    from kmflow.reports.build import ReportFiles, build_report
    from kmflow.storage.registry import ModelRegistry

    @flow(name="report-in-the-ui")
    def publish(registry: str, name: str) -> str:
        report = build_report(ModelRegistry(registry), name, 1)
        files = ReportFiles(folder=registry, html=registry + "/report.html", pngs={})
        publish_model_report(name, (report, files))
        return str(flow_run.get_id())

    print(json.dumps({"flow_run": publish(sys.argv[1], sys.argv[2])}))
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prefect_ui(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A Prefect server with its UI on loopback: (its URL, the environment of its clients)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KMFLOW_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=f"{url}/api",
        PREFECT_UI_API_URL=f"{url}/api",
        PREFECT_SERVER_UI_ENABLED="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_CLI_PROMPT="false",
        PREFECT_SERVER_DATABASE_TIMEOUT="60",
    )
    log = tmp_path / "server.log"
    prefect = str(Path(sys.executable).with_name("prefect"))
    with log.open("wb") as out:
        server = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/health", timeout=5).json() is True:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, env
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_the_prefect_ui_shows_the_figures_of_a_flow_run(
    world: dict[str, Any], prefect_ui: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = prefect_ui
    script = tmp_path / "publish.py"
    script.write_text(_PUBLISH)
    registry = str(world["root"] / "models")
    done = subprocess.run(
        [sys.executable, str(script), registry, "blobs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    flow_run = json.loads(done.stdout.strip().splitlines()[-1])["flow_run"]
    found = httpx.post(
        f"{url}/api/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run]}}},
        timeout=30,
    ).json()
    by_key = {a["key"]: a for a in found}
    assert set(by_key) == {"blobs-figures", "blobs-report-page"}
    expected = build_report(world["registry"], "blobs", 1)
    n = len(expected.pictures)
    with Browser() as browser:
        page = browser.open(
            f"{url}/artifacts/artifact/{by_key['blobs-figures']['id']}",
            ready=f"document.querySelectorAll('img[src^=\"data:image/png\"]').length >= {n}",
            timeout=90,
            screenshot="prefect-ui-figures.png",
        )
    assert _own_errors(page.errors) == []
    figures = [i for i in page.images if i["src"].startswith("data:image/png;base64,")]
    assert len(figures) == n == 6
    for image in figures:
        assert image["complete"]
        assert image["width"] > 0
        assert image["width"] == _png_width(image["src"])
    for picture in expected.pictures:
        assert picture.title in page.text
    assert "blobs version 1" in page.text
