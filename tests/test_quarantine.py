"""The quarantine as a dead-letter queue, through real cycles against the served
simulator: what each cycle newly held per entity, the alarm when an entity's records are
mostly held, ``salesflow quarantine`` and replaying held records exactly once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from loaders import cli, config, replica
from loaders.monitoring import status
from loaders.replica.errors import ReplicaError
from loaders.replica.pages import RULES
from loaders.replica.settings import ENDPOINTS
from loaders.runners import dead_letters, pipeline
from simulator import faults, store
from simulator.faults import Faults
from tests.support import ROOT, TOKEN
from tests.support.simulator import start_simulator
from tests.support.warehouse import catch_up_and_reconcile


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



def malformed_load(simulator) -> pipeline.LoadResult:
    """A load with 5% of the records delivered wrong, then the fault switched off."""
    faults.save(simulator.dir, Faults(malformed_rate=0.05))
    try:
        return pipeline.load(base_url=simulator.url, token=TOKEN)
    finally:
        faults.save(simulator.dir, Faults())


def held_by_rule(warehouse: Path) -> dict[str, int]:
    return dict(query(warehouse, "select rule, count(*) from raw.quarantine group by 1"))


def test_salesflow_quarantine_says_what_is_held_why_and_what_replay_would_do(
    simulator, warehouse, capsys, monkeypatch
):
    monkeypatch.setenv("SOURCES__REPLICA__TOKEN", TOKEN)
    result = malformed_load(simulator)
    held = held_by_rule(warehouse)
    assert cli.main(["quarantine", "--json", "--base-url", simulator.url]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["records"] == result.quarantined and listing["dry_run_problem"] is None
    groups = listing["groups"]
    assert sum(g["records"] for g in groups) == result.quarantined
    assert [g["records"] for g in groups] == sorted((g["records"] for g in groups), reverse=True)
    for g in groups:
        assert g["meaning"] == RULES[g["rule"]] and g["sample"]
        assert g["first_held_at"] <= g["last_held_at"]
        # a copy of a record already loaded is superseded; a corrupted one still fails
        expected = "superseded" if g["rule"] == "duplicate_key" else "held"
        assert g["replay"] == {"loaded": 0, "superseded": 0, "held": 0} | {
            expected: g["records"]
        }, g
    assert cli.main(["quarantine", "--entity", "orders", "--limit", "2",
                     "--base-url", simulator.url]) == 0
    text = capsys.readouterr().out
    shown = [g for g in groups if g["entity"] == "orders"][:2]
    assert text.count("\norders — ") == len(shown) and "\nevents — " not in text
    first = shown[0]
    assert f"orders — {first['rule']} on {first['field']}: {first['records']} record(s)" in text
    assert f"rule: {RULES[first['rule']]}" in text and "replay now (all tried):" in text
    # the replay's dry run, of the entity given before or after `replay`
    for argv in (["quarantine", "--entity", "orders", "replay", "--dry-run"],
                 ["quarantine", "replay", "--dry-run", "--entity", "orders"]):
        assert cli.main([*argv, "--base-url", simulator.url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "dry run: replaying raw.quarantine now would give:"
        assert [line.split()[0] for line in lines[2:] if line.startswith("  ") and
                line.split()[1].isdigit()] == ["orders"]
    assert held_by_rule(warehouse) == held  # the dry runs changed nothing


def test_replay_takes_out_copies_already_loaded_and_keeps_what_still_fails(
    simulator, warehouse
):
    malformed_load(simulator)
    before = held_by_rule(warehouse)
    raw = query(warehouse, "select count(*), max(_dlt_load_id) from raw.orders")
    with pipeline.run_lock("test holder"), pytest.raises(pipeline.AlreadyRunning):
        dead_letters.replay(base_url=simulator.url, token=TOKEN)
    # a record held with a reason an older version gave: a replay gives today's
    with duckdb.connect(str(warehouse)) as con:
        [(key, reason)] = con.execute(
            "select record_key, reason from raw.quarantine where rule = 'wrong_type'"
            " order by record_key limit 1"
        ).fetchall()
        con.execute("update raw.quarantine set reason = 'bad' where record_key = ?", [key])

    report = dead_letters.replay(base_url=simulator.url, token=TOKEN)
    duplicates = before.pop("duplicate_key")
    assert report.total == {"loaded": 0, "superseded": duplicates, "held": sum(before.values())}
    assert report.load_id is None and held_by_rule(warehouse) == before
    assert query(warehouse, "select reason from raw.quarantine where record_key = ?", key) == [
        (reason,)
    ]
    assert query(warehouse, "select outcome, count(*), count(load_id) from"
                 " raw.quarantine_replays group by 1") == [("superseded", duplicates, 0)]
    assert query(warehouse, "select count(*), max(_dlt_load_id) from raw.orders") == raw

    again = dead_letters.replay(base_url=simulator.url, token=TOKEN)
    assert again.total == {"loaded": 0, "superseded": 0, "held": sum(before.values())}
    assert held_by_rule(warehouse) == before
    [(logged,)] = query(warehouse, "select count(*) from raw.quarantine_replays")
    assert logged == duplicates


def notices(warehouse: Path) -> list[dict]:
    path = warehouse.parent / "dlt" / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def share_alarms(warehouse: Path) -> list[dict]:
    """The quarantine alarm's notices (the change behind it has notices of its own)."""
    return [n for n in notices(warehouse)
            if n["key"].startswith("alarm:") and "quarantine_share" in n["key"]]


def open_share_alarms(state: Path) -> list[tuple]:
    return [(a["kind"], a["entity"]) for a in status.collect(state, ROOT)["open_alarms"]
            if a["kind"] == "quarantine_share"]


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
    assert share_alarms(warehouse) == [] and open_share_alarms(state) == []

    # 20 more in the next cycle: 40 held in a row, the alarm opens, once
    restamp(platform_dir, "orders", orders[20:], changed + timedelta(seconds=1))
    opened, quiet = serve_and_load(platform_dir, cycles=2)
    assert opened.quarantined_per_entity == {"orders": 20} and quiet.quarantined == 0
    [alarm] = share_alarms(warehouse)
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
    assert open_share_alarms(state) == [("quarantine_share", "orders")]

    # the platform restores the field and sends the 40 orders again: they load
    store.write_replica_only(platform_dir, "ALTER TABLE orders RENAME COLUMN order_total TO"
                             " total_cents")
    restamp(platform_dir, "orders", orders, changed + timedelta(minutes=1))
    [fixed] = serve_and_load(platform_dir)
    assert fixed.rows["orders"] == 40 and fixed.quarantined == 0
    assert [n["kind"] for n in share_alarms(warehouse)] == ["quarantine_share", "recovery"]
    assert status.collect(state, ROOT)["open_alarms"] == []
    assert query(warehouse, "select rows_loaded, rows_quarantined from raw.pipeline_loads"
                 " where entity = 'orders' order by cycle_id") == [
        (300, 0), (0, 20), (0, 0), (0, 20), (0, 0), (40, 0)
    ]
    [incident] = query(warehouse, "select family, kind, entity, failed_cycles, ended_at is"
                       " not null from raw.pipeline_incidents where kind = 'quarantine_share'")
    assert incident == ("data", "quarantine_share", "orders", 1, True)

    # the held copies are older than the orders now in raw: replaying drops them
    report = replay_served(platform_dir, entity="orders")
    assert report.total == {"loaded": 0, "superseded": 40, "held": 0}
    assert held_by_rule(warehouse) == {}
    catch_up_and_reconcile(platform_dir, warehouse)


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


def replay_served(sim_dir: Path, **options: Any) -> dead_letters.ReplayReport:
    """``salesflow quarantine replay`` against the platform at ``sim_dir``, served for it."""
    sim = start_simulator(sim_dir)
    try:
        return dead_letters.replay(base_url=sim.url, token=TOKEN, **options)
    finally:
        sim.stop()


def opt_in_not_required(monkeypatch) -> None:
    """A configuration change, made here in the test: customers' consent flag is no
    longer required, so the records held for lacking it parse now."""
    build = replica.entity_spec

    def lenient(name: str, *args: Any, **kwargs: Any) -> Any:
        spec = build(name, *args, **kwargs)
        if name == "customers":
            spec.required = tuple(f for f in spec.required if f != "is_marketing_opt_in")
        return spec

    monkeypatch.setattr(replica, "entity_spec", lenient)


def test_replay_loads_what_parses_now_once_never_over_newer_and_the_marts_take_it(
    platform_dir, warehouse, tmp_path, monkeypatch
):
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    serve_and_load(platform_dir)
    customers = [k for (k,) in store.query(
        platform_dir, "SELECT customer_id FROM customers ORDER BY updated_at DESC LIMIT 18"
    )]
    held, newer, later = customers[:12], customers[:4], customers[12:]
    [(newest,)] = store.query(platform_dir, "SELECT max(updated_at) FROM customers")
    start = store.parse_iso(newest)
    # the platform sends 12 customers, and a new one, without a consent flag the API
    # says is required; newer customers arrive after them, so no cycle reads them again
    first = start + timedelta(minutes=1)
    store.write_replica_only(
        platform_dir, "UPDATE customers SET is_marketing_opt_in = NULL, updated_at = ?"
        " WHERE customer_id = ?", [(store.iso(first), key) for key in held],
    )
    new = 1 + max(k for (k,) in store.query(platform_dir, "SELECT customer_id FROM customers"))
    store.write_replica_only(
        platform_dir, "INSERT INTO customers (customer_id, email, region_id,"
        " acquisition_channel, created_at, updated_at) SELECT ?, 'new@example.com',"
        " region_id, acquisition_channel, ?, ? FROM customers WHERE customer_id = ?",
        [(new, store.iso(first), store.iso(first), held[0])],
    )
    held.append(new)
    restamp(platform_dir, "customers", later, start + timedelta(minutes=3))
    [cycle] = serve_and_load(platform_dir)
    assert cycle.quarantined_per_entity == {"customers": 13}
    # 4 of them come again, with the flag: raw takes those versions
    store.write_replica_only(
        platform_dir, "UPDATE customers SET is_marketing_opt_in = 1, updated_at = ?"
        " WHERE customer_id = ?",
        [(store.iso(start + timedelta(minutes=5)), key) for key in newer],
    )
    serve_and_load(platform_dir)
    assert pipeline.dbt_build()
    sim = start_simulator(platform_dir)
    try:
        # as configured, none of them loads; 4 of them never would (raw has newer)
        still = dead_letters.replay(entity="customers", dry_run=True, base_url=sim.url,
                                    token=TOKEN)
        assert still.total == {"loaded": 0, "superseded": 4, "held": 9}
        # a configuration change (here in the test: the flag is no longer required)
        opt_in_not_required(monkeypatch)
        dry = dead_letters.replay(entity="customers", dry_run=True, base_url=sim.url,
                                  token=TOKEN)
        assert dry.total == {"loaded": 9, "superseded": 4, "held": 0}
        assert dry.load_id is None and held_by_rule(warehouse) == {"required_null": 13}
        versions = "select customer_id, updated_at, _dlt_load_id from raw.customers order by 1"
        report = dead_letters.replay(base_url=sim.url, token=TOKEN)
        assert report.total == {"loaded": 9, "superseded": 4, "held": 0}
        after = query(warehouse, versions)
        again = dead_letters.replay(base_url=sim.url, token=TOKEN)
        assert again.total == {"loaded": 0, "superseded": 0, "held": 0}
        assert query(warehouse, versions) == after
    finally:
        sim.stop()
    assert held_by_rule(warehouse) == {}
    rows = {k: (t, opt_in, load) for k, t, opt_in, load in query(
        warehouse, "select customer_id, updated_at, is_marketing_opt_in, _dlt_load_id from"
        " raw.customers"
    )}
    assert len(rows) == len(set(rows))
    for key in held:
        when, opt_in, load = rows[key]
        if key in newer:  # held version older than raw's: not loaded over it
            assert (when, opt_in) == (start + timedelta(minutes=5), True)
        else:
            assert (when, opt_in, load) == (first, None, report.load_id)
    assert sorted(query(warehouse, "select record_key is not null, outcome, load_id from"
                        " raw.quarantine_replays")) == sorted(
        [(True, "loaded", report.load_id)] * 9 + [(True, "superseded", None)] * 4
    )
    # replayed rows are older than rows built already: the marts take them by load id
    assert pipeline.dbt_build()
    built = dict(query(warehouse, "select customer_id, is_marketing_opt_in from"
                       " marts.dim_customers"))
    assert all(built[k] is None for k in held if k not in newer)
    assert all(built[k] is True for k in newer)
    catch_up_and_reconcile(platform_dir, warehouse)


def test_replay_never_brings_back_a_key_deleted_after_its_record_was_held(
    platform_dir, warehouse, tmp_path, monkeypatch
):
    """A record held, then its key deleted upstream (the row merged out of raw): the
    deletion is the newer version, so the replay supersedes the record."""
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    serve_and_load(platform_dir)
    customers = [k for (k,) in store.query(
        platform_dir, "SELECT customer_id FROM customers ORDER BY updated_at DESC LIMIT 6"
    )]
    held, later = customers[:3], customers[3:]
    gone, kept = held[:2], held[2:]
    [(newest,)] = store.query(platform_dir, "SELECT max(updated_at) FROM customers")
    start = store.parse_iso(newest)
    store.write_replica_only(
        platform_dir, "UPDATE customers SET is_marketing_opt_in = NULL, updated_at = ?"
        " WHERE customer_id = ?", [(store.iso(start + timedelta(minutes=1)), k) for k in held],
    )
    # newer customers after them, so no cycle reads the held ones again
    restamp(platform_dir, "customers", later, start + timedelta(minutes=3))
    [cycle] = serve_and_load(platform_dir)
    assert cycle.quarantined_per_entity == {"customers": 3}
    store.write_replica_only(
        platform_dir,
        "INSERT INTO deletions (entity, record_id, deleted_at) VALUES ('customers', ?, ?)",
        [(str(k), store.iso(start + timedelta(minutes=4))) for k in gone],
    )
    serve_and_load(platform_dir)
    in_raw = "select customer_id from raw.customers where customer_id in (?, ?, ?)"
    # raw kept the held three's older versions, then merged out the two deleted
    assert query(warehouse, in_raw, *held) == [(k,) for k in kept]
    opt_in_not_required(monkeypatch)
    report = replay_served(platform_dir, entity="customers")
    assert report.total == {"loaded": 1, "superseded": 2, "held": 0}
    assert query(warehouse, "select customer_id, updated_at from raw.customers where"
                 " customer_id in (?, ?, ?)", *held) == [
        (k, start + timedelta(minutes=1)) for k in kept]
