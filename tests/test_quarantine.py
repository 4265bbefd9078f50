"""The quarantine as a dead-letter queue, through real cycles against the served
simulator: what each cycle newly held per entity, the alarm when an entity's records are
mostly held, ``salesflow quarantine`` and replaying held records exactly once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from loaders import config
from loaders.monitoring import status
from loaders.replica.errors import ReplicaError
from loaders.replica.settings import ENDPOINTS
from loaders.runners import pipeline
from simulator import faults, store
from simulator.faults import Faults
from tests.support import ROOT, TOKEN
from tests.support.simulator import start_simulator


def query(path: Path, sql: str, *params: object) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_a_cycle_counts_the_records_it_newly_held_per_entity(simulator, warehouse):
    faults.save(simulator.dir, Faults(malformed_rate=0.05))
    first = pipeline.load(base_url=simulator.url, token=TOKEN)
    held = dict(query(warehouse, "select entity, count(*) from raw.quarantine group by 1"))
    assert len(held) >= 3 and first.quarantined_per_entity == held
    assert first.quarantined == sum(held.values())
    recorded = {e: q for e, q in query(
        warehouse, "select entity, rows_quarantined from raw.pipeline_loads"
    )}
    assert set(recorded) == set(ENDPOINTS)
    assert {e: q for e, q in recorded.items() if q} == held
    assert f"{first.quarantined:,} record(s) newly held" in pipeline.describe_load(first)

    faults.save(simulator.dir, Faults())
    again = pipeline.load(base_url=simulator.url, token=TOKEN)
    assert again.quarantined == 0 and again.quarantined_per_entity == {}
    [(cycles, zero)] = query(
        warehouse, "select count(distinct cycle_id), bool_and(rows_quarantined = 0)"
        " from raw.pipeline_loads where cycle_id = (select max(cycle_id) from"
        " raw.pipeline_loads)"
    )
    assert (cycles, zero) == (1, True)


def notices(warehouse: Path) -> list[dict]:
    path = warehouse.parent / "dlt" / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def restamp(sim_dir: Path, entity: str, keys: list, at: datetime) -> None:
    """Stamp records of the replica as changed at ``at`` (a new version of each)."""
    pk = ENDPOINTS[entity]["primary_key"]
    store.write_replica_only(
        sim_dir, f"UPDATE {entity} SET updated_at = ? WHERE {pk} = ?",
        [(store.iso(at), key) for key in keys],
    )


def serve_and_load(sim_dir: Path, cycles: int = 1) -> list[pipeline.LoadResult]:
    """Serve the platform and run ``cycles`` loads from it."""
    sim = start_simulator(sim_dir)
    try:
        return [pipeline.load(base_url=sim.url, token=TOKEN) for _ in range(cycles)]
    finally:
        sim.stop()


def test_an_entity_mostly_held_is_one_alarm_with_its_evidence_then_one_recovery(
    platform_dir, warehouse, monkeypatch
):
    monkeypatch.setenv("MONITORING__QUARANTINE_MIN_RECORDS", "30")
    state = warehouse.parent / "dlt"
    serve_and_load(platform_dir)
    # the platform renames a field without saying so; orders keep changing, 20 at a time
    orders = [k for (k,) in store.query(
        platform_dir, "SELECT order_id FROM orders ORDER BY updated_at DESC LIMIT 40"
    )]
    [(newest,)] = store.query(platform_dir, "SELECT max(updated_at) FROM orders")
    changed = store.parse_iso(newest) + timedelta(minutes=1)
    store.write_replica_only(platform_dir, "ALTER TABLE orders RENAME COLUMN total_cents TO"
                             " order_total")
    restamp(platform_dir, "orders", orders[:20], changed)

    # 20 held: fewer than the 30 that page anyone; read again, held and counted once
    first, again = serve_and_load(platform_dir, cycles=2)
    assert first.quarantined_per_entity == {"orders": 20} and again.quarantined == 0
    assert notices(warehouse) == [] and status.collect(state, ROOT)["open_alarms"] == []

    # 20 more in the next cycle: 40 held in a row, the alarm opens, once
    restamp(platform_dir, "orders", orders[20:], changed + timedelta(seconds=1))
    opened, quiet = serve_and_load(platform_dir, cycles=2)
    assert opened.quarantined_per_entity == {"orders": 20} and quiet.quarantined == 0
    [alarm] = notices(warehouse)
    assert alarm["kind"] == "quarantine_share" and alarm["severity"] == "error"
    assert alarm["title"] == "orders: 100% of new records held in quarantine (total_cents:" \
        " required_null)"
    text = alarm["text"]
    for said in ("40 of 40 new orders records over the last 2 cycles",
                 "required_null on total_cents (40)", "never had: order_total",
                 'Sample: {"order_id": ', '"order_total": ', "stg_replica__orders",
                 "fct_orders", "salesflow quarantine replay --entity orders"):
        assert said in text, f"{said!r} not in the notice:\n{text}"
    report = status.collect(state, ROOT)
    assert report["status"] == status.RED
    assert [(a["kind"], a["entity"]) for a in report["open_alarms"]] == [
        ("quarantine_share", "orders")
    ]

    # the platform restores the field and sends the 40 orders again: they load
    store.write_replica_only(platform_dir, "ALTER TABLE orders RENAME COLUMN order_total TO"
                             " total_cents")
    restamp(platform_dir, "orders", orders, changed + timedelta(minutes=1))
    [fixed] = serve_and_load(platform_dir)
    assert fixed.rows["orders"] == 40 and fixed.quarantined == 0
    assert [n["kind"] for n in notices(warehouse)] == ["quarantine_share", "recovery"]
    assert status.collect(state, ROOT)["open_alarms"] == []
    assert query(warehouse, "select rows_loaded, rows_quarantined from raw.pipeline_loads"
                 " where entity = 'orders' order by cycle_id") == [
        (300, 0), (0, 20), (0, 0), (0, 20), (0, 0), (40, 0)
    ]
    [incident] = query(warehouse, "select family, kind, entity, failed_cycles, ended_at is"
                       " not null from raw.pipeline_incidents")
    assert incident == ("data", "quarantine_share", "orders", 1, True)


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("QUARANTINE_SHARE_MAX", "1.5", "quarantine_share_max must be a share"),
        ("QUARANTINE_SHARE_MAX", "five percent", "quarantine_share_max must be a number"),
        ("QUARANTINE_MIN_RECORDS", "0", "quarantine_min_records must be a count"),
    ],
)
def test_a_bad_alarm_setting_is_a_configuration_error_saying_which_and_how(
    monkeypatch, name, value, said
):
    monkeypatch.setenv(f"MONITORING__{name}", value)
    with pytest.raises(ReplicaError, match=said):
        config.quarantine_limits()
