"""Shared fixtures: a generated platform and a replica API served on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from dbt.cli.main import dbtRunner

from simulator.generate import generate
from simulator.server import read_server_file

ROOT = Path(__file__).resolve().parent.parent
AS_OF = datetime(2026, 11, 1, tzinfo=timezone.utc)
TOKEN = "test-token-5f3a"


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


@pytest.fixture
def platform_dir(tmp_path: Path) -> Path:
    """A small generated platform (about 300 orders), fixed seed and as-of time."""
    d = tmp_path / "sim"
    generate(d, orders=300, seed=7, as_of=AS_OF, days=30)
    return d


@pytest.fixture
def simulator(platform_dir: Path) -> Iterator[Simulator]:
    """The small platform served statically (no live traffic)."""
    sim = start_simulator(platform_dir)
    yield sim
    sim.stop()


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty warehouse and dlt working dir of this test's own; quick retries."""
    path = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("SALESFLOW_DUCKDB_PATH", str(path))
    monkeypatch.setenv("SALESFLOW_PIPELINES_DIR", str(tmp_path / "dlt"))
    monkeypatch.setenv("DLT_PROJECT_DIR", str(ROOT))
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("RUNTIME__REQUEST_BACKOFF_FACTOR", "0.1")
    return path


def dbt_invoke(tmp_path: Path, *args: str) -> None:
    """A dbt command on the repository's project and the test's warehouse; fails the
    test on any error or failing test."""
    result = dbtRunner().invoke(
        [
            *args,
            "--project-dir", str(ROOT),
            "--profiles-dir", str(ROOT),
            "--target-path", str(tmp_path / "target"),
            "--log-path", str(tmp_path / "logs"),
        ]
    )
    assert result.exception is None, result.exception
    failed = [
        f"{r.node.unique_id}: {r.status} {r.message}"
        for r in getattr(result.result, "results", None) or []  # docs generate has none
        if str(r.status) in ("error", "fail", "runtime error")
    ]
    assert result.success and not failed, f"dbt {args[0]} failed:\n" + "\n".join(failed)


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server on 127.0.0.1 for the whole session (tests/pg.py),
    stopped at the end, also when tests fail. Without server binaries the tests using it
    skip, unless SALESFLOW_REQUIRE_POSTGRES=1 (make test) or CI is set: then they fail."""
    from tests.pg import PostgresUnavailable, start_server

    try:
        server = start_server()
    except PostgresUnavailable as exc:
        if os.environ.get("SALESFLOW_REQUIRE_POSTGRES") == "1" or os.environ.get("CI"):
            pytest.fail(f"{exc}; the PostgreSQL tests must run here", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()
