"""Injected faults through a served simulator, switched at runtime with ``faults.save``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from simulator import faults
from simulator.faults import Faults
from simulator.generate import generate
from simulator.model import ENTITIES
from tests.support import AS_OF
from tests.support.simulator import Simulator, start_simulator


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    d = tmp_path_factory.mktemp("faults") / "sim"
    generate(d, orders=300, seed=7, as_of=AS_OF, days=30)
    sim = start_simulator(d)
    yield sim
    sim.stop()


@pytest.fixture
def sim(served: Simulator) -> Iterator[Simulator]:
    """The served simulator, healthy at the start and the end of each test."""
    faults.save(served.dir, Faults())
    assert served.get("/v1/regions").status_code == 200
    yield served
    faults.save(served.dir, Faults())
    wait_until(lambda: served.get("/v1/regions").status_code == 200, within=5)


def wait_until(check, within: float) -> float:
    """Seconds until ``check()`` held; fails after ``within``. Connection errors count as no."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except requests.RequestException:
            pass
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s")
        time.sleep(0.02)


def test_maintenance_answers_503_with_retry_after(sim: Simulator) -> None:
    faults.save(sim.dir, Faults(maintenance_until=faults.window(30)))

    for r in (sim.get("/v1/orders"), sim.get("/health"), sim.get("/v1/schema")):
        assert r.status_code == 503
        assert 1 <= int(r.headers["Retry-After"]) <= 30
        assert r.json()["error"] == "maintenance"

    faults.save(sim.dir, Faults())
    assert sim.get("/health").status_code == 200


def test_maintenance_ends_by_itself(sim: Simulator) -> None:
    faults.save(sim.dir, Faults(maintenance_until=faults.window(1.0)))
    assert sim.get("/v1/orders").status_code == 503
    waited = wait_until(lambda: sim.get("/v1/orders").status_code == 200, within=4)
    assert waited > 0.5


def test_hard_outage_refuses_connections_then_comes_back_on_the_same_url(sim: Simulator) -> None:
    faults.save(sim.dir, Faults(outage_until=faults.window(1.5)))
    started = time.monotonic()

    def refused() -> bool:
        try:
            requests.get(sim.url + "/health", timeout=2)
        except requests.ConnectionError:
            return True
        return False

    wait_until(refused, within=1.0)
    with pytest.raises(requests.ConnectionError):
        sim.get("/v1/orders")
    wait_until(lambda: sim.get("/health").status_code == 200, within=5)
    assert time.monotonic() - started >= 1.4  # not before the window ends
    r = sim.get("/v1/orders", params={"limit": 5})
    assert r.status_code == 200 and len(r.json()["data"]) == 5


def test_error_rate_one_answers_5xx_on_the_api(sim: Simulator) -> None:
    faults.save(sim.dir, Faults(error_rate=1.0))
    codes = [sim.get("/v1/orders").status_code for _ in range(12)]
    assert set(codes) <= {500, 502, 503, 504}
    assert len(set(codes)) > 1  # a mix of server errors
    assert sim.get("/health").status_code == 200  # liveness is not an API route


def test_rate_limit_rate_one_answers_429_with_retry_after(sim: Simulator) -> None:
    faults.save(sim.dir, Faults(rate_limit_rate=1.0))
    for _ in range(3):
        r = sim.get("/v1/customers")
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert "data" not in r.json()


def test_drop_rate_one_cuts_the_body(sim: Simulator) -> None:
    faults.save(sim.dir, Faults(drop_rate=1.0))
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        sim.get("/v1/events", params={"limit": 500})
    # the status line got through: a client that streams sees the cut while reading
    r = requests.get(
        sim.url + "/v1/events", params={"limit": 500}, stream=True, timeout=10,
        headers={"Authorization": f"Bearer {sim.token}"},
    )
    assert r.status_code == 200
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        r.content  # noqa: B018 (reading the body is the point)


def test_slow_ms_delays_every_response(sim: Simulator) -> None:
    started = time.monotonic()
    sim.get("/v1/regions")
    fast = time.monotonic() - started

    faults.save(sim.dir, Faults(slow_ms=400))
    started = time.monotonic()
    assert sim.get("/v1/regions").status_code == 200
    slow = time.monotonic() - started
    assert slow >= 0.4
    assert fast < 0.4
    r = sim.get("/health")
    assert r.status_code == 200 and r.elapsed.total_seconds() >= 0.4


def test_malformed_rate_one_delivers_broken_records(sim: Simulator) -> None:
    faults.save(sim.dir, Faults(malformed_rate=1.0))
    r = sim.get("/v1/orders", params={"limit": 200})
    assert r.status_code == 200
    records = r.json()["data"]

    required = [f.name for f in ENTITIES["orders"].fields if f.required]
    ids = Counter(rec["order_id"] for rec in records)
    wrong_type = [rec for rec in records if "not-a-number" in rec.values()]
    null_required = [rec for rec in records if any(rec[f] is None for f in required)]
    duplicated = [oid for oid, n in ids.items() if n > 1 and oid is not None]
    assert wrong_type and null_required and duplicated
    assert len(records) == 200 + len(duplicated)  # duplicates come on top
    # at rate 1 no record comes through intact and alone
    for rec in records:
        assert rec in wrong_type or rec in null_required or ids[rec["order_id"]] > 1


def test_clearing_faults_restores_normal_answers(sim: Simulator) -> None:
    clean = sim.get("/v1/orders", params={"limit": 50}).json()
    faults.save(sim.dir, Faults(error_rate=0.5, malformed_rate=1.0, slow_ms=50))
    assert any(sim.get("/v1/orders", params={"limit": 50}).status_code >= 500 for _ in range(20))

    faults.save(sim.dir, Faults())
    for _ in range(10):
        r = sim.get("/v1/orders", params={"limit": 50})
        assert r.status_code == 200
        assert r.json() == clean


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [{"error_rate": 2}, {"drop_rate": -0.1}, {"malformed_rate": 1.01},
     {"rate_limit_rate": 5}, {"slow_ms": -1}],
)
def test_faults_are_validated(settings: dict) -> None:
    with pytest.raises(ValueError):
        Faults(**settings)


def test_fault_file_round_trips_and_rejects_unknown_settings(tmp_path: Path) -> None:
    assert faults.load(tmp_path) == Faults()
    f = Faults(error_rate=0.25, slow_ms=10, maintenance_until=faults.window(60))
    faults.save(tmp_path, f)
    assert faults.load(tmp_path) == f
    assert 58 < faults.load(tmp_path).maintenance_left() <= 60
    assert "error_rate=0.25" in f.describe() and Faults().describe() == "none"

    (tmp_path / faults.FAULTS_FILE).write_text('{"error_rate": 0.1, "explode": true}')
    with pytest.raises(ValueError, match="explode"):
        faults.load(tmp_path)


def test_one_endpoint_fails_on_its_own_behind_a_healthy_api(sim: Simulator) -> None:
    faults.save(sim.dir, Faults(endpoint_status={"orders": 503}, endpoint_garbled=["events"]))
    wait_until(lambda: sim.get("/v1/orders").status_code == 503, within=5)
    assert [sim.get("/v1/orders").status_code for _ in range(3)] == [503] * 3  # persistent
    page = sim.get("/v1/events", headers={"Accept": "application/x-ndjson"})
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html") and b"<html>" in page.content
    r = sim.get("/v1/customers", params={"limit": 5})
    assert r.status_code == 200 and len(r.json()["data"]) == 5
    assert sim.get("/v1/schema").status_code == 200
    with pytest.raises(ValueError, match="endpoint_status orders"):
        Faults(endpoint_status={"orders": 200})
