"""An entity's first load appends and is repaired into exactly what a merge leaves, even
when the run is killed between the load and the repair."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dlt
import duckdb
import pytest

from benchmarks.oracle import assert_reconciled
from loaders.replica import tombstones_table
from loaders.replica.settings import SOURCE_NAME
from loaders.runners import first_loads, pipeline
from loaders.warehouse import dlt_pipeline
from simulator import store
from tests.support import TOKEN
from tests.support.simulator import start_simulator


def raw_keys(path: Path, table: str, key: str) -> list:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [k for (k,) in con.execute(f"select {key} from raw.{table}").fetchall()]
    finally:
        con.close()


def schema_disposition(table: str) -> str:
    p = dlt_pipeline()
    return p.schemas[SOURCE_NAME].tables[table]["write_disposition"]


def test_first_load_appends_then_later_loads_merge(platform_dir, warehouse):
    sim = start_simulator(platform_dir)
    try:
        pipeline.load(base_url=sim.url, token=TOKEN)
        assert schema_disposition("orders") == "append"
        assert not (warehouse.parent / "dlt" / first_loads.PENDING_FILE).exists()
        assert_reconciled(platform_dir, warehouse)
    finally:
        sim.stop()
    # every order changes: the next load must replace them, not add to them
    [(latest,)] = store.query(platform_dir, "SELECT max(updated_at) FROM orders")
    store.write_replica_only(
        platform_dir,
        "UPDATE orders SET status = 'refunded', updated_at = ?",
        [(store.iso(store.parse_iso(latest) + timedelta(minutes=5)),)],
    )
    sim = start_simulator(platform_dir)
    try:
        pipeline.load(base_url=sim.url, token=TOKEN)
    finally:
        sim.stop()
    assert schema_disposition("orders") == "merge"
    assert_reconciled(platform_dir, warehouse)
    con = duckdb.connect(str(warehouse), read_only=True)
    assert con.execute("select distinct status from raw.orders").fetchall() == [("refunded",)]
    con.close()


def test_a_first_load_killed_before_its_repair_is_repaired_by_the_next_run(
    platform_dir, warehouse, monkeypatch
):
    """The backfill lists a customer and later its tombstone: the row is appended, the
    tombstone set aside; the repair is what deletes the row."""
    [(customer, newest)] = store.query(
        platform_dir, "SELECT customer_id, updated_at FROM customers ORDER BY updated_at LIMIT 1"
    )
    [(latest,)] = store.query(platform_dir, "SELECT max(updated_at) FROM customers")
    store.write_replica_only(
        platform_dir,
        "INSERT INTO deletions (entity, record_id, deleted_at) VALUES ('customers', ?, ?)",
        [(str(customer), store.iso(store.parse_iso(latest) + timedelta(seconds=1)))],
    )

    repair, calls = first_loads.repair_pending, []

    def killed(*args, **kwargs):  # the run's second call comes after its load
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed after the load, before the repair")
        return repair(*args, **kwargs)

    sim = start_simulator(platform_dir)
    try:
        with monkeypatch.context() as m:
            m.setattr(first_loads, "repair_pending", killed)
            with pytest.raises(KeyboardInterrupt):
                pipeline.load(base_url=sim.url, token=TOKEN, page_size=25,
                              entities=["customers"])
        assert (warehouse.parent / "dlt" / first_loads.PENDING_FILE).exists()
        keys = raw_keys(warehouse, "customers", "customer_id")
        assert keys.count(customer) == 1, "the row was appended"
        aside = raw_keys(warehouse, tombstones_table("customers"), "customer_id")
        assert aside == [customer], "its tombstone set aside"

        pipeline.load(base_url=sim.url, token=TOKEN, page_size=25, entities=["customers"])
    finally:
        sim.stop()
    keys = raw_keys(warehouse, "customers", "customer_id")
    assert customer not in keys, "the tombstone is the newest version: the row is deleted"
    assert len(keys) == len(set(keys))
    assert not (warehouse.parent / "dlt" / first_loads.PENDING_FILE).exists()
    assert raw_keys(warehouse, tombstones_table("customers"), "customer_id") == []


@pytest.mark.parametrize("with_marker", [True, False])
def test_repair_keeps_the_newest_version_of_each_key(tmp_path, with_marker):
    """Versions of one key, an exact copy (a load job run twice), tombstones newer,
    older and tied with a row."""
    rows = [
        {"id": 1, "v": "old", "updated_at": "2026-01-01T00:00:00Z", "deleted_at": None},
        {"id": 1, "v": "new", "updated_at": "2026-01-02T00:00:00Z", "deleted_at": None},
        {"id": 2, "v": "copy", "updated_at": "2026-01-01T00:00:00Z", "deleted_at": None},
        {"id": 2, "v": "copy", "updated_at": "2026-01-01T00:00:00Z", "deleted_at": None},
        {"id": 3, "v": "gone", "updated_at": "2026-01-01T00:00:00Z", "deleted_at": None},
        {"id": 3, "v": None, "updated_at": "2026-01-03T00:00:00Z",
         "deleted_at": "2026-01-03T00:00:00Z"},
        {"id": 4, "v": None, "updated_at": "2026-01-01T00:00:00Z",
         "deleted_at": "2026-01-01T00:00:00Z"},
        {"id": 4, "v": "back", "updated_at": "2026-01-05T00:00:00Z", "deleted_at": None},
        {"id": 5, "v": "tie", "updated_at": "2026-01-01T00:00:00Z", "deleted_at": None},
        {"id": 5, "v": None, "updated_at": "2026-01-01T00:00:00Z",
         "deleted_at": "2026-01-01T00:00:00Z"},
    ]
    if not with_marker:
        rows = [{k: v for k, v in r.items() if k != "deleted_at"} for r in rows
                if r["deleted_at"] is None]
    db = tmp_path / "w.duckdb"
    p = dlt.pipeline("repair_test", destination=dlt.destinations.duckdb(str(db)),
                     dataset_name="raw", pipelines_dir=str(tmp_path / "dlt"))
    p.run(rows, table_name="things", write_disposition="append")
    repair = first_loads.Repair("things", "id", "updated_at",
                                "deleted_at" if with_marker else None)
    first_loads.mark(tmp_path, [repair])
    removed = first_loads.repair_pending(p, tmp_path)
    con = duckdb.connect(str(db), read_only=True)
    got = dict(con.execute("select id, v from raw.things").fetchall())
    count = con.execute("select count(*) from raw.things").fetchone()[0]
    con.close()
    if with_marker:
        assert got == {1: "new", 2: "copy", 4: "back"}
        assert removed == {"things": 7}
    else:
        assert got == {1: "new", 2: "copy", 3: "gone", 4: "back", 5: "tie"}
        assert removed == {"things": 2}
    assert count == len(got)
    assert first_loads.pending(tmp_path) == []
    assert first_loads.repair_pending(p, tmp_path) == {}, "nothing left to repair"

