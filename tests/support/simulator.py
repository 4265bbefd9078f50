"""A generated platform served in its own process, as the loader meets it in production."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import requests

from simulator import store
from simulator.platform import Platform
from simulator.server import read_server_file
from tests.support import TOKEN


@dataclass
class Simulator:
    """A serving simulator in its own process."""

    dir: Path
    url: str
    token: str
    proc: subprocess.Popen

    def get(self, path: str, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        headers.setdefault("Authorization", f"Bearer {self.token}")
        return requests.get(self.url + path, headers=headers, timeout=10, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_simulator(directory: Path, *args: str, token: str = TOKEN) -> Simulator:
    """Serve the platform in ``directory`` (already generated) and wait until it answers."""
    stale = directory / "server.json"
    if stale.exists():
        stale.unlink()
    log = open(directory / "serve.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loaders.cli", "sim", "serve", "--dir", str(directory),
         "--token", token, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        info = read_server_file(directory, timeout=30)
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(info["url"] + "/health", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    except BaseException:
        proc.kill()
        raise
    return Simulator(directory, info["url"], token, proc)


def evolve(sim: Simulator, name: str, when: datetime | None = None) -> Simulator:
    """Stop the server, announce ``name`` (effective ``when``, default now), apply it if
    due, write some traffic in the new shape, and serve again."""
    sim.stop()
    with Platform(sim.dir, seed=11) as platform:
        platform.evolve(name, effective_at=when, orders=40)
    store.replicate(sim.dir)
    return start_simulator(sim.dir, token=sim.token)
