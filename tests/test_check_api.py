"""``salesflow check-api`` against every protocol profile of the simulator: with the
profile's own configuration every check passes; a wrong records path, auth type or
paginator fails naming the setting to change; the token is never printed, and nothing
is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loaders.runners.check_api import FAIL, OK, check_api
from simulator.generate import generate
from simulator.profiles import PROFILES, loader_env
from tests.support import AS_OF, ROOT, TOKEN
from tests.support.simulator import Simulator, start_simulator

HEADER_CURSOR = {"type": "header_cursor", "cursor_key": "X-Next-Cursor", "cursor_param": "cursor"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("generated") / "sim"
    generate(d, orders=60, seed=7, as_of=AS_OF, days=5)
    return d


class Served:
    """The profiles served from one directory, one at a time: asking for one stops the
    one served before."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sim: Simulator | None = None
        self.profile = ""

    def __call__(self, profile: str) -> str:
        if self.sim is None or self.profile != profile:
            self.stop()
            self.sim, self.profile = start_simulator(self.directory, "--profile", profile), profile
        return self.sim.url

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
            self.sim = None


@pytest.fixture(scope="module")
def served(generated: Path) -> Iterator[Served]:
    serving = Served(generated)
    yield serving
    serving.stop()


def configure(monkeypatch, url: str, profile: str, **changes: object) -> None:
    """The profile's loader environment, with ``changes`` (keys of ``[sources.replica]``)."""
    env = loader_env(profile, url, TOKEN)
    for key, value in changes.items():
        name = f"SOURCES__REPLICA__{key.upper()}"
        env[name] = json.dumps(value) if isinstance(value, dict) else str(value)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_check_passes_with_the_profiles_own_configuration(
    profile, served, warehouse, monkeypatch
):
    configure(monkeypatch, served(profile), profile)
    report = check_api()
    assert report.ok, "\n".join(report.lines())
    assert {c.status for c in report.checks} == {OK}, "\n".join(report.lines())
    subjects = {c.subject for c in report.checks}
    assert {"base_url", "auth", "schema", "orders page", "orders paging", "orders since",
            "orders fields", "orders deletions", "orders count"} <= subjects
    assert not warehouse.exists(), "check-api wrote to the warehouse"


WRONG = {
    # the records are under "data", not "items"
    "records_path": ("envelope", {"records_path": "items"}, "page", "records_path"),
    # the API takes an API key, not a bearer token
    "auth type": ("envelope", {"auth": {"type": "bearer"}}, "auth", "auth.type"),
    # the next cursor is in the body, not a header: paging stops after one page
    "paginator": ("envelope", {"paginator": HEADER_CURSOR}, "paging", "paginator"),
    # basic auth on an API taking a bearer token
    "auth type (basic)": ("pages", {"auth": {"type": "http_basic", "username": "salesflow"}},
                          "auth", "auth.type"),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_a_wrong_setting_fails_naming_the_setting(case, served, warehouse, monkeypatch):
    profile, changes, subject, setting = WRONG[case]
    configure(monkeypatch, served(profile), profile, **changes)
    report = check_api()
    assert not report.ok
    failed = [c for c in report.checks if c.status == FAIL]
    assert failed and all(subject in c.subject for c in failed), "\n".join(report.lines())
    assert all(f"sources.replica.{setting}" in c.setting for c in failed)
    assert all(f"sources.replica.{setting}" in c.line().split(" -> check ")[1] for c in failed)


@pytest.mark.parametrize("profile, changes", [
    ("offset", {"records_path": "data"}),  # the API key travels in the query
    ("envelope", {}),
])
def test_the_command_never_prints_the_token_and_writes_nothing(
    profile, changes, served, warehouse, monkeypatch
):
    configure(monkeypatch, served(profile), profile, **changes)
    done = subprocess.run(
        [sys.executable, "-m", "loaders.cli", "check-api"], cwd=ROOT, env=dict(os.environ),
        capture_output=True, text=True, timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == (1 if changes else 0), out
    assert ("FAIL" in out) == bool(changes), out
    assert TOKEN not in out
    assert not warehouse.exists() and not (warehouse.parent / "dlt").exists()


def test_an_unreachable_api_fails_on_base_url_alone(warehouse, monkeypatch):
    configure(monkeypatch, "http://127.0.0.1:9", "native")  # the discard port: refused
    report = check_api()
    assert [(c.status, c.subject) for c in report.checks] == [(FAIL, "base_url")]
    assert "sources.replica.base_url" in report.checks[0].setting
