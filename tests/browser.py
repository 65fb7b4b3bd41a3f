"""Headless Chromium driven over the DevTools protocol, for checks of the Airflow UI.

Just enough of the protocol to open a page, wait for what it renders, click, read the
DOM and take a screenshot: one page, one websocket, one command answered at a time.
Chromium is Debian's ``chromium`` (``make browser-tool`` installs it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

from websockets.sync.client import connect

from mai_ops.dev.embedded import free_port

COMMAND_TIMEOUT = 60.0
START_TIMEOUT = 60.0


class BrowserError(AssertionError):
    """The page did not do what the check waited for, or Chromium refused a command."""


class Page:
    """One browser tab, over its DevTools websocket."""

    def __init__(self, ws):
        self.ws = ws
        self.last_id = 0

    def send(self, method: str, **params) -> dict:
        """One DevTools command; events arriving meanwhile are dropped."""
        self.last_id += 1
        self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=COMMAND_TIMEOUT))
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60.0):
        """Poll ``expression`` until it is truthy; its value. A readiness bound only."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{what}: not there after {timeout:.0f} s")
            time.sleep(0.2)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def _page_target(port: int, proc: subprocess.Popen) -> dict:
    """The first page target, once Chromium's DevTools endpoint answers."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise BrowserError(f"chromium exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                pages = [t for t in json.load(resp) if t.get("type") == "page"]
            if pages:
                return pages[0]
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BrowserError(f"no DevTools page from chromium within {START_TIMEOUT:.0f} s")
        time.sleep(0.2)


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Generator[Page]:
    """A headless Chromium with a fresh profile; yields its one page, kills it afterwards."""
    exe = shutil.which("chromium")
    if exe is None:
        raise BrowserError(
            "chromium is not on PATH; `make browser-tool` installs it (Debian package chromium)"
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helpers (renderer, zygote) stop with it, as a group
        )
        try:
            target = _page_target(port, proc)
            with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
                yield Page(ws)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
