"""Every kind of change of shape, told by /v1/schema or not, through real HTTP and real
cycles: detected within one cycle, logged once, notified once with its impact, the status
no longer green, and no record lost (what is not loaded is held in quarantine)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pytest

from loaders import config, dbt_project
from loaders.monitoring import status
from loaders.runners import pipeline
from simulator import store
from tests.support import TOKEN
from tests.support.simulator import drift, start_simulator, wait_for_new_records

KEYS = {"orders": "order_id", "order_items": "order_item_id"}

# (entity, kind, field, options) -> the changes logged for it, (kind, column)
CASES = {
    "rename": ("orders", "rename", "total_cents", {"to": "total_amount"},
               {("column_removed", "total_cents"), ("new_column", "total_amount")}),
    "drop": ("order_items", "drop", "discount_cents", {},
             {("column_removed", "discount_cents")}),
    "null": ("order_items", "null", "product_id", {}, {("column_removed", "product_id")}),
    "retype": ("orders", "retype", "total_cents", {"to": "string"},
               {("type_change", "total_cents")}),
    "add": ("orders", "add", "gift_wrap", {"value": True}, {("new_column", "gift_wrap")}),
    "nest": ("order_items", "nest", None, {"fields": "quantity,unit_price_cents", "to": "line"},
             {("column_removed", "quantity"), ("column_removed", "unit_price_cents"),
              ("new_column", "line")}),
    "new_value": ("orders", "new_value", "channel", {"value": "tiktok", "share": 0.5},
                  {("new_value", "channel")}),
}
DESCRIBABLE = ("rename", "drop", "retype", "add", "nest")
MATRIX = [(name, False) for name in CASES] + [(name, True) for name in DESCRIBABLE]


def logged(warehouse: Path) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            "select change_kind, entity, column_name, change_id from raw.schema_changelog"
            " where change_kind != 'new_table'"
        ).fetchall()


def notices() -> list[dict]:
    path = config.pipelines_dir() / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def held_or_loaded(sim_dir: Path, warehouse: Path, entity: str) -> None:
    """Every record of the replica is in raw or held in quarantine: none lost."""
    key = KEYS[entity]
    wanted = {r[0] for r in store.query(sim_dir, f"select {key} from {entity}")}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        loaded = {r[0] for r in con.execute(f"select {key} from raw.{entity}").fetchall()}
        held_records = con.execute(
            "select record from raw.quarantine where entity = ?", [entity]
        ).fetchall() if con.execute(
            "select count(*) from information_schema.tables where table_name = 'quarantine'"
        ).fetchone()[0] else []
    held = {json.loads(r[0]).get(key) for r in held_records}
    missing = wanted - loaded - held
    assert not missing, f"{len(missing)} {entity} neither loaded nor held: {sorted(missing)[:5]}"


@pytest.mark.parametrize("name, described", MATRIX,
                         ids=[f"{n}-{'described' if d else 'silent'}" for n, d in MATRIX])
def test_a_change_is_detected_logged_and_notified_once_and_nothing_is_lost(
    name, described, platform_dir, warehouse
):
    entity, kind, field, options, expected = CASES[name]
    sim = start_simulator(platform_dir, "--rate", "20")
    try:
        pipeline.load(base_url=sim.url, token=TOKEN)
        pipeline.load(base_url=sim.url, token=TOKEN)  # live traffic: a steady state
        assert logged(warehouse) == [] and not notices()
        since = store.iso(store.utcnow())
        drift(sim, kind, entity, field, described=described, **options)
        wait_for_new_records(platform_dir, entity, since)
        pipeline.load(base_url=sim.url, token=TOKEN)  # the cycle the change lands in
        changes = {(k, c): i for k, e, c, i in logged(warehouse) if e == entity}
        assert expected <= set(changes), f"logged: {sorted(changes)}"

        # a field the marts read that stopped, or records held: red; else warn
        report = status.collect(config.pipelines_dir())
        breaks = name in ("rename", "drop", "null", "nest", "retype")
        assert report["status"] == (status.RED if breaks else status.WARN), report

        pipeline.load(base_url=sim.url, token=TOKEN)  # seen again: logged once
        again = logged(warehouse)
        assert len(again) == len({i for *_, i in again})
        assert {(k, c) for k, e, c, _ in again if e == entity} == set(changes)
    finally:
        sim.stop()
    quiet = start_simulator(platform_dir)  # the platform at rest, still drifted
    try:
        pipeline.load(base_url=quiet.url, token=TOKEN)
    finally:
        quiet.stop()

    told = [n for n in notices() if n["key"].startswith("change:")]
    keys = [n["key"] for n in told]
    assert len(keys) == len(set(keys)), "a change was notified twice"
    ours = [n for n in told if n["details"]["change"]["entity"] == entity]
    assert ours, "nothing notified"
    for n in ours:
        assert n["details"]["impact"]["source"] == f"replica.{entity}"
    held_or_loaded(platform_dir, warehouse, entity)


def test_a_silent_rename_is_absorbed_by_one_mapping_and_a_replay(
    platform_dir, warehouse, tmp_path, monkeypatch
):
    from benchmarks.oracle import assert_reconciled, revenue
    from loaders.runners import dead_letters
    from tests.support.warehouse import dbt_invoke

    # a short lookback, so that the cycles after the mapping read little again: what
    # they do not, the replay loads (what they did is superseded there)
    lookback = {"lookback_seconds": 0.5}
    sim = start_simulator(platform_dir, "--rate", "20")
    try:
        pipeline.load(base_url=sim.url, token=TOKEN, **lookback)
        since = store.iso(store.utcnow())
        drift(sim, "rename", "orders", "total_cents", to="total_amount")
        wait_for_new_records(platform_dir, "orders", since)
        held = pipeline.load(base_url=sim.url, token=TOKEN, **lookback)
        assert held.quarantined
        advice = next(n for n in notices() if n["key"].startswith("change:")
                      and n["details"]["change"]["column"] == "total_cents")
        assert 'total_cents = "total_amount"' in advice["text"]
        # the advice, as configuration: new records load from now on
        monkeypatch.setenv("SOURCES__REPLICA__FIELD_MAPPING",
                           json.dumps({"orders": {"total_cents": "total_amount"}}))
        time.sleep(1)
        wait_for_new_records(platform_dir, "orders", store.iso(store.utcnow()))
        absorbed = pipeline.load(base_url=sim.url, token=TOKEN, **lookback)
        assert absorbed.rows.get("orders") and not absorbed.quarantined
    finally:
        sim.stop()
    quiet = start_simulator(platform_dir)
    try:
        replayed = dead_letters.replay("orders", base_url=quiet.url, token=TOKEN)
        total = replayed.total
        assert total["loaded"] + total["superseded"] >= held.quarantined
        assert total["held"] == 0
        again = dead_letters.replay("orders", base_url=quiet.url, token=TOKEN)
        assert again.entities == []  # each record once: nothing is held any more
        pipeline.load(base_url=quiet.url, token=TOKEN, **lookback)
    finally:
        quiet.stop()
    assert_reconciled(platform_dir, warehouse)  # raw holds exactly the replica's rows
    dbt_invoke(tmp_path, "build", "--exclude-resource-type", "unit_test")
    dbt_project.release_warehouse()  # dbt-duckdb keeps the file open in this process
    assert revenue(platform_dir, warehouse)["match"]  # the marts count every sale
    assert status.collect(config.pipelines_dir())["status"] != status.RED
