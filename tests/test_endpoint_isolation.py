"""One endpoint failing on its own (removed, a persistent 5xx, pages that are not
records) stops only its entity: the others load and reconcile, one ``endpoint_failed``
alarm names the endpoint, what it answered and the marts it holds back, and the entity
catches up with nothing lost once the endpoint answers again. The API down as a whole
still fails the cycle as an outage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pytest

from benchmarks.oracle import assert_reconciled, reconcile
from loaders import config
from loaders.monitoring import status
from loaders.replica.errors import ReplicaUnavailable
from loaders.replica.failures import EXCERPT, excerpt
from loaders.runners import pipeline
from simulator import faults, store
from simulator.faults import Faults
from simulator.platform import Platform
from tests.support import TOKEN
from tests.support.simulator import Simulator, clear_drifts, drift, start_simulator

BROKEN = "orders"


def notices() -> list[dict]:
    path = config.pipelines_dir() / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def of_kind(kind: str) -> list[dict]:
    return [n for n in notices() if n["kind"] == kind]


def write_traffic(sim: Simulator, orders: int = 5) -> None:
    """New orders and their items, sessions and customers, as the API serves them."""
    with Platform(sim.dir, seed=5) as platform:
        platform.tick(orders)
    store.wait_for_replica(sim.dir)


def break_endpoint(sim: Simulator, how: str) -> None:
    if how == "removed":
        drift(sim, "remove_endpoint", BROKEN)
    elif how == "server_error":
        faults.save(sim.dir, Faults(endpoint_status={BROKEN: 500}))
    else:
        faults.save(sim.dir, Faults(endpoint_garbled=[BROKEN]))


def repair_endpoint(sim: Simulator) -> None:
    clear_drifts(sim)
    faults.save(sim.dir, Faults())


def wait_broken(sim: Simulator, how: str) -> None:
    """Until the API serves the fault (the server re-reads the fault file)."""
    expected = {"removed": 404, "server_error": 500, "garbled_page": 200}[how]
    for _ in range(200):
        r = sim.get(f"/v1/{BROKEN}", params={"limit": 1})
        served = r.status_code == expected and (
            how != "garbled_page" or r.headers["Content-Type"].startswith("text/html")
        )
        if served:
            return
        time.sleep(0.02)
    raise AssertionError(f"the API does not serve the {how} fault")


def others_reconcile(sim_dir: Path, warehouse: Path) -> None:
    for entity, r in reconcile(sim_dir, warehouse).items():
        if entity == BROKEN:
            continue
        assert not r["missing"] and not r["unexpected"] and not r["duplicate_pks"], (
            entity, r
        )


def incidents(warehouse: Path) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            "select family, kind, entity, ended_at is not null from raw.pipeline_incidents"
            " order by started_at"
        ).fetchall()


ANSWERED = {"removed": "404", "server_error": "500", "garbled_page": "text/html"}


@pytest.mark.parametrize("how", ["removed", "server_error", "garbled_page"])
def test_a_failing_endpoint_stops_only_its_entity_and_catches_up_after(
    how, platform_dir, warehouse
):
    sim = start_simulator(platform_dir)
    try:
        pipeline.load(base_url=sim.url, token=TOKEN)  # a steady state
        held = {e: r["found"] for e, r in reconcile(platform_dir, warehouse).items()}
        break_endpoint(sim, how)
        wait_broken(sim, how)
        write_traffic(sim)

        result = pipeline.load(base_url=sim.url, token=TOKEN)
        assert result.outcome in ("success_new_data", "success_no_data")
        assert [(f.entity, f.path) for f in result.failed] == [(BROKEN, "v1/orders")]
        others_reconcile(platform_dir, warehouse)
        assert reconcile(platform_dir, warehouse)[BROKEN]["found"] == held[BROKEN]
        [opened] = of_kind("endpoint_failed")
        assert "/v1/orders" in opened["title"] and BROKEN in opened["title"]
        assert ANSWERED[how] in opened["text"]
        assert "fct_orders" in opened["text"]  # the marts it holds back
        assert TOKEN not in json.dumps(notices())
        assert [n["kind"] for n in notices()] == ["endpoint_failed"]  # nothing else
        report = status.collect(config.pipelines_dir())
        assert report["status"] == status.RED
        assert ("data", "endpoint_failed", BROKEN, False) in incidents(warehouse)

        write_traffic(sim)
        again = pipeline.load(base_url=sim.url, token=TOKEN)  # still failing: no notice
        assert again.failed_entities == {BROKEN}
        assert len(of_kind("endpoint_failed")) == 1 and not of_kind("recovery")
        others_reconcile(platform_dir, warehouse)

        repair_endpoint(sim)
        back = pipeline.load(base_url=sim.url, token=TOKEN)
        assert not back.failed and BROKEN in back.advanced
        [recovered] = of_kind("recovery")
        assert "endpoint failed" in recovered["text"] and BROKEN in recovered["text"]
        assert ("data", "endpoint_failed", BROKEN, True) in incidents(warehouse)
        assert_reconciled(platform_dir, warehouse)  # caught up: nothing lost, nothing twice
        assert [n["kind"] for n in notices()] == ["endpoint_failed", "recovery"]
    finally:
        sim.stop()


def test_every_endpoint_failing_fails_the_cycle_as_an_outage(platform_dir, warehouse):
    sim = start_simulator(platform_dir)
    try:
        pipeline.load(base_url=sim.url, token=TOKEN)
        faults.save(sim.dir, Faults(endpoint_status={
            e: 502 for e in ("regions", "customers", "products", "orders", "order_items",
                             "events")
        }))
        with pytest.raises(ReplicaUnavailable, match="answered 502"):
            pipeline.load(base_url=sim.url, token=TOKEN)
        assert not of_kind("endpoint_failed")
        [outage] = of_kind("outage")
        assert "unavailable" in outage["title"]
        faults.save(sim.dir, Faults())
        write_traffic(sim)
        pipeline.load(base_url=sim.url, token=TOKEN)
        assert len(of_kind("recovery")) == 1 and not of_kind("endpoint_failed")
        assert_reconciled(platform_dir, warehouse)
    finally:
        sim.stop()


def test_an_entity_whose_endpoint_fails_is_not_also_alarmed_as_stalled(
    platform_dir, warehouse, monkeypatch
):
    # stalls judged in seconds, as cycles here follow each other about every second
    monkeypatch.setenv("MONITORING__STALL_MIN_SECONDS", "2")
    monkeypatch.setenv("MONITORING__STALL_GAP_FACTOR", "3")
    monkeypatch.setenv("MONITORING__STALL_MIN_ARRIVALS", "8")
    sim = start_simulator(platform_dir, "--rate", "40")
    try:
        for _ in range(8):  # orders gets a rhythm
            assert not pipeline.load(base_url=sim.url, token=TOKEN).alarms.conditions
        break_endpoint(sim, "server_error")
        wait_broken(sim, "server_error")
        started = time.monotonic()
        failing = []
        while time.monotonic() - started < 8:  # well past orders' stall threshold
            failing.append(pipeline.load(base_url=sim.url, token=TOKEN))
        assert all(r.failed_entities == {BROKEN} for r in failing)
        found = {(c.kind, c.entity) for r in failing for c in r.alarms.conditions}
        assert found == {("endpoint_failed", BROKEN)}
        repair_endpoint(sim)
        back = pipeline.load(base_url=sim.url, token=TOKEN)
        assert BROKEN in back.new_rows and not back.alarms.conditions
    finally:
        sim.stop()
    assert [n["kind"] for n in notices()] == ["endpoint_failed", "recovery"]


def test_what_an_endpoint_answered_is_told_without_the_token():
    answer = '{"detail": "token test-token-5f3a refused", "auth": "Bearer abc.def"}\n' * 9
    told = excerpt(answer, (TOKEN,))
    assert TOKEN not in told and "abc.def" not in told and "Bearer ***" in told
    assert len(told) <= EXCERPT and "\n" not in told
