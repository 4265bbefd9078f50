"""A generated platform served in its own process, as the loader meets it in production,
and drifts declared on it while it serves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from simulator import drift as drift_mod
from simulator import store
from simulator.drift import Drift
from simulator.platform import Platform
from simulator.server import read_server_file
from tests.support import TOKEN, stop_process


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
        stop_process(self.proc)


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


def _served_url(sim_or_dir: Simulator | Path) -> str | None:
    if isinstance(sim_or_dir, Simulator):
        return sim_or_dir.url
    server = Path(sim_or_dir) / "server.json"
    return read_server_file(sim_or_dir)["url"] if server.exists() else None


def _wait_for_drifts(url: str | None, ids: list[str], timeout: float = 10.0) -> None:
    """Until the API serving ``url`` knows exactly the drifts ``ids`` (``/health``)."""
    if url is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        known = requests.get(url + "/health", timeout=5).json()["drifts"]
        if known == ids:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API knows drifts {known}, not {ids}")
        time.sleep(0.02)


def drift(
    sim_or_dir: Simulator | Path, kind: str, entity: str, field: str | None = None,
    **options: Any,
) -> Drift:
    """Declare a drift (``simulator.drift.add``; ``options`` as :class:`Drift`'s fields,
    ``effective_at`` may be a datetime) and, if the platform is served, return once the
    API serves it: its id is among the drifts ``/health`` lists."""
    directory = sim_or_dir.dir if isinstance(sim_or_dir, Simulator) else Path(sim_or_dir)
    for name in ("effective_at", "announced_at"):
        if isinstance(options.get(name), datetime):
            options[name] = store.iso(options[name])
    added = drift_mod.add(directory, Drift(kind, entity, field, **options))
    _wait_for_drifts(_served_url(sim_or_dir), [d.id for d in drift_mod.load(directory)])
    return added


def clear_drifts(sim_or_dir: Simulator | Path) -> None:
    """Remove every drift and, if the platform is served, return once the API serves none."""
    directory = sim_or_dir.dir if isinstance(sim_or_dir, Simulator) else Path(sim_or_dir)
    drift_mod.clear(directory)
    _wait_for_drifts(_served_url(sim_or_dir), [])


def wait_for_new_records(sim_dir: Path, entity: str, after: str, timeout: float = 20.0) -> None:
    """Wait until the platform's live traffic has written ``entity`` records updated after
    ``after`` (an ISO time)."""
    deadline = time.monotonic() + timeout
    while not store.query(sim_dir, f"select 1 from {entity} where updated_at > ? limit 1",
                          after):
        assert time.monotonic() < deadline, f"no new {entity} records after {after}"
        time.sleep(0.1)
