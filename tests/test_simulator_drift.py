"""A replication pause through a served simulator: production goes on, the replica stops
following it behind an API that answers 200, and ``/health`` shows the lag."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from loaders.cli import main as salesflow
from simulator import faults
from simulator.faults import Faults
from simulator.generate import generate
from simulator.platform import Platform
from tests.support import AS_OF
from tests.support.simulator import Simulator, start_simulator

Record = dict


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    d = tmp_path_factory.mktemp("drift") / "sim"
    generate(d, orders=300, seed=7, as_of=AS_OF, days=30)
    sim = start_simulator(d)
    yield sim
    sim.stop()


@pytest.fixture
def sim(served: Simulator) -> Iterator[Simulator]:
    """The served simulator, without faults at the start and the end of a test."""
    faults.save(served.dir, Faults())
    yield served
    faults.save(served.dir, Faults())


def ndjson(sim: Simulator, endpoint: str, **params) -> bytes:
    r = sim.get(f"/v1/{endpoint}", params={"limit": 50_000, "format": "ndjson", **params})
    assert r.status_code == 200, r.text
    return r.content


def records(sim: Simulator, endpoint: str) -> list[Record]:
    """The whole listing, in NDJSON, checked equal to the same listing in JSON."""
    lines = [json.loads(line) for line in ndjson(sim, endpoint).splitlines()]
    body = sim.get(f"/v1/{endpoint}", params={"limit": 50_000}).json()
    assert body["data"] == lines and body["has_more"] is False
    return lines


def health(sim: Simulator) -> dict:
    return requests.get(sim.url + "/health", timeout=5).json()


def test_a_replication_pause_stops_the_replica_behind_a_healthy_api(sim: Simulator) -> None:
    orders = records(sim, "orders")
    caught_up = health(sim)
    assert caught_up["replication_lag_seconds"] == 0
    assert caught_up["replica_seq"] == caught_up["production_seq"]

    faults.save(sim.dir, Faults(replication_paused_until=faults.window(30)))
    time.sleep(0.3)  # the platform reads the fault file every tick (0.1 s)
    with Platform(sim.dir, seed=6) as platform:
        platform.tick(2)
        time.sleep(0.3)
        lagging = health(sim)
        platform.tick(2)  # production goes on writing
        time.sleep(0.5)
    later = health(sim)
    assert lagging["replica_seq"] == caught_up["replica_seq"] == later["replica_seq"]
    assert later["production_seq"] == caught_up["production_seq"] + 2
    assert 0.2 < lagging["replication_lag_seconds"] < later["replication_lag_seconds"] - 0.4
    assert records(sim, "orders") == orders  # 200, and nothing new

    faults.save(sim.dir, Faults())
    deadline = time.monotonic() + 5
    while health(sim)["replication_lag_seconds"] != 0:
        assert time.monotonic() < deadline, "the replica did not catch up"
        time.sleep(0.05)
    resumed = health(sim)
    assert resumed["replica_seq"] == resumed["production_seq"]
    assert len(records(sim, "orders")) == len(orders) + 4


def test_the_command_line_pauses_and_resumes_replication(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert salesflow(["sim", "fault", "--pause-replication", "30", "--dir", d]) == 0
    assert 28 < faults.load(tmp_path).replication_paused_left() <= 30
    assert salesflow(["sim", "fault", "--pause-replication", "0", "--dir", d]) == 0
    assert faults.load(tmp_path).replication_paused_until is None
