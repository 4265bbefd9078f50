"""The live board served in its own process, and headless Chromium looking at it.

``salesflow board`` runs Streamlit on a free port of 127.0.0.1; :class:`Browser` drives
Debian's chromium through Playwright (no browser download), collecting what the page
logs as errors and the requests that failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.support import ROOT, free_port, stop_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Streamlit's front end first asks for its health and host config under the page's own
# path (``/live/_stcore/health``), then under the app's root: those first 404s are how it
# finds its base path, not errors of the board
BASE_PATH_PROBE = re.compile(r"/[a-z]+/_stcore/(health|host-config)$")


@dataclass
class Board:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


def start_board(env: dict[str, str], log: Path, refresh: float = 1.0) -> Board:
    """``salesflow board`` on a free port; returns once Streamlit answers its health."""
    port = free_port()
    out = open(log, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loaders.cli", "board", "--port", str(port),
         "--refresh", str(refresh)],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/_stcore/health", timeout=2).ok:
                return Board(url, proc, log)
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the board did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@dataclass
class Browser:
    """One headless Chromium page; ``errors``: console errors, page errors and failed
    requests (Streamlit's base-path probes aside) since the last :meth:`open`."""

    page: Any
    errors: list[str] = field(default_factory=list)

    def open(self, url: str) -> Any:
        self.errors.clear()
        self.page.goto(url)
        return self.page

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 400 and not BASE_PATH_PROBE.search(response.url):
            self.errors.append(f"HTTP {response.status} {response.url}")


@contextlib.contextmanager
def browser(home: Path) -> Iterator[Browser]:
    """Debian's chromium, headless, as the machine allows it (no sandbox as root, no
    background networking: the network is closed)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                  "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run"],
            env={**os.environ, "HOME": str(home)},
        )
        try:
            page = b.new_page(viewport={"width": 1400, "height": 1400})
            view = Browser(page)
            page.on("console", view._console)
            page.on("pageerror", lambda exc: view.errors.append(f"page: {exc}"))
            page.on("response", view._response)
            yield view
        finally:
            b.close()
