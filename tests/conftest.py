"""Fixtures: a generated platform, the replica API serving it on 127.0.0.1, the test's own
warehouse and a throw-away PostgreSQL server. Plain helpers are in ``tests/support/``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.generate import generate
from tests.support import AS_OF, ROOT
from tests.support.postgres import PostgresServer, PostgresUnavailable, start_server
from tests.support.simulator import Simulator, start_simulator


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server on 127.0.0.1 for the whole session
    (tests/support/postgres.py), stopped at the end, also when tests fail. Without server
    binaries the tests using it skip, unless SALESFLOW_REQUIRE_POSTGRES=1 (make test) or
    CI is set: then they fail."""
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
