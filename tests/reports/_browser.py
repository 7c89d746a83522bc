"""Headless Chromium driven over the DevTools protocol, for the browser tests.

A small client (``websockets``, already there as a Prefect dependency) instead of Playwright:
Playwright's own browsers come from a CDN these machines cannot reach, and the Debian
``chromium`` package is what CI installs (``make test`` does it when it is missing). The
client opens one page, collects console errors, uncaught exceptions and failed loads,
waits until the page's images are there, reports each image's natural width and keeps a
screenshot.

Screenshots are written to ``$KMFLOW_TEST_ARTIFACTS`` when it is set, else to
``tests-artifacts/`` at the repository root (ignored by git): :func:`artifacts_dir`.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

__all__ = ["Browser", "PageCheck", "artifacts_dir", "chromium_path"]

_ROOT = Path(__file__).resolve().parents[2]

#: What the page's images look like: one entry per <img>, in document order.
_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
    src: i.currentSrc || i.src, complete: i.complete, width: i.naturalWidth,
    height: i.naturalHeight})))"""


def chromium_path() -> str:
    """The Chromium executable (``$KMFLOW_CHROMIUM``, else ``chromium`` on the PATH).

    Raises RuntimeError naming the install command when there is none: the browser tests
    never skip silently (CI installs it through ``make test``).
    """
    found = os.environ.get("KMFLOW_CHROMIUM") or shutil.which("chromium")
    if not found:
        raise RuntimeError(
            "no Chromium found: install the Debian package (apt-get install -y chromium, "
            "which `make test` does when it runs as root) or set KMFLOW_CHROMIUM"
        )
    return found


def artifacts_dir() -> Path:
    """Where browser tests keep their screenshots (created)."""
    folder = Path(os.environ.get("KMFLOW_TEST_ARTIFACTS") or _ROOT / "tests-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class PageCheck:
    """What one page load showed."""

    url: str
    images: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    text: str = ""
    screenshot: Path | None = None


class Browser:
    """One headless Chromium process with one page, driven over the DevTools protocol."""

    def __init__(self, *, width: int = 1400, height: int = 1000) -> None:
        self._profile = tempfile.mkdtemp(prefix="kmflow-chromium-")
        self._process = subprocess.Popen(
            [
                chromium_path(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._height = height
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self._ws: ClientConnection | None = None
        try:
            port = self._port()
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
            page = next(t for t in targets if t["type"] == "page")
            self._ws = connect(page["webSocketDebuggerUrl"], max_size=2**28, open_timeout=20)
            for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
                self.call(method)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def _port(self, timeout: float = 30.0) -> int:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self._process.returncode}")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the browser and remove its profile."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------------ protocol

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events meanwhile are kept)."""
        assert self._ws is not None
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self._events.append(message)

    def _drain(self, seconds: float) -> None:
        assert self._ws is not None
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = json.loads(self._ws.recv(timeout=left))
            except TimeoutError:
                return
            if "method" in message:
                self._events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _errors(self) -> list[str]:
        errors = []
        for event in self._events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = [str(a.get("value", a.get("description", ""))) for a in params["args"]]
                errors.append("console.error: " + " ".join(args))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                errors.append(f"uncaught: {text}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}".strip())
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                errors.append(f"load failed: {params.get('errorText')}")
        return errors

    # ------------------------------------------------------------------ pages

    def open(
        self,
        url: str,
        *,
        ready: str = "document.readyState === 'complete'",
        timeout: float = 60.0,
        settle: float = 1.0,
        screenshot: str | None = None,
    ) -> PageCheck:
        """Load `url`, wait until the JavaScript condition `ready` holds and every image is
        complete, then report images, errors and page text (and keep a screenshot).

        Raises TimeoutError (with what the page showed) when `ready` never holds.
        """
        self._events.clear()
        self.call("Page.navigate", url=url)
        condition = (
            f"(() => {{ try {{ return Boolean({ready}) && "
            "Array.from(document.images).every(i => i.complete); } "
            "catch (e) { return false; } })()"
        )
        deadline = time.monotonic() + timeout
        while not self.evaluate(condition):
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise TimeoutError(
                    f"{url}: not ready after {timeout:.0f} s ({ready}); errors "
                    f"{self._errors()}; page text: {text[:800]!r}"
                )
            self._drain(0.25)
        self._drain(settle)  # late console errors (a failed render after the first paint)
        check = PageCheck(
            url=url,
            images=json.loads(self.evaluate(_IMAGES_JS)),
            errors=self._errors(),
            text=self.evaluate("document.body.innerText") or "",
        )
        if screenshot is not None:
            check.screenshot = self.screenshot(screenshot)
        return check

    def screenshot(self, name: str, *, max_height: int = 12_000) -> Path:
        """The whole page as ``<artifacts_dir()>/<name>``.

        Single-page apps (the Prefect UI) scroll inside an element of the viewport's height,
        so the viewport is made as tall as the tallest scrolling content first.
        """
        height = self.evaluate(
            "Math.max(document.documentElement.scrollHeight, "
            "...Array.from(document.querySelectorAll('*')).map(e => e.scrollHeight))"
        )
        width = self.evaluate("window.innerWidth")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=int(width),
            height=min(int(height) + 40, max_height),
            deviceScaleFactor=1,
            mobile=False,
        )
        self._drain(0.5)
        shot = self.call("Page.captureScreenshot", format="png")
        path = artifacts_dir() / name
        path.write_bytes(base64.b64decode(shot["data"]))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=int(width),
            height=self._height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return path


@contextlib.contextmanager
def browser() -> Iterator[Browser]:
    """A :class:`Browser`, closed afterwards."""
    with Browser() as b:
        yield b
