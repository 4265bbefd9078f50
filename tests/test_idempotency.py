"""Idempotency and state: reading twice loads nothing, a cycle run again changes no mart,
every saved state resumes to an exact copy of the replica, a cursor from the future
loses nothing, and an extract interrupted half-way leaves raw and state as they were."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from benchmarks.oracle import assert_reconciled, raw_versions, replica_versions
from loaders.replica import settings
from loaders.replica.lookback import LookbackWindow
from loaders.runners import pipeline
from loaders.warehouse import cursor_positions, dlt_pipeline
from simulator import store
from simulator.platform import Platform
from tests.support import TOKEN
from tests.support.simulator import start_simulator

MARTS = "marts"


def mart_checksums(path: Path) -> dict[str, tuple[int, int]]:
    """Per mart table: row count and an order-independent checksum over all columns."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [
            r[0] for r in con.execute(
                "select table_name from information_schema.tables"
                " where table_schema = ? and table_type = 'BASE TABLE' order by 1",
                [MARTS],
            ).fetchall()
        ]
        return {
            t: con.execute(
                f"select count(*), coalesce(sum(hash(m)::hugeint), 0) from {MARTS}.{t} as m"
            ).fetchone()
            for t in tables
        }


def resource_states() -> dict[str, dict[str, Any]]:
    """Each entity's dlt resource state (incremental cursor, lookback window)."""
    p = dlt_pipeline(read_only=True)
    try:
        resources = p.state["sources"][settings.SOURCE_NAME]["resources"]
    except KeyError:
        return {}
    return {name: _plain(r) for name, r in resources.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def staged_rows(path: Path) -> dict[str, int]:
    """Rows per data table of dlt's staging dataset, which every merge goes through."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [r[0] for r in con.execute(
            "select table_name from duckdb_tables() where schema_name = ?"
            " and table_name not like '\\_dlt%' escape '\\'",
            [f"{settings.DATASET_NAME}_staging"]).fetchall()]
        return {t: con.execute(
            f'select count(*) from "{settings.DATASET_NAME}_staging"."{t}"').fetchone()[0]
            for t in tables}


def change_an_order(sim_dir: Path, status: str) -> int:
    """Update the most recently changed order in production, replicated at once."""
    [(order_id,)] = store.query(
        sim_dir,
        "SELECT order_id FROM orders ORDER BY updated_at DESC, order_id LIMIT 1",
        db=store.PRODUCTION,
    )
    with Platform(sim_dir) as platform:
        platform.update("orders", order_id, status=status)
    store.replicate(sim_dir)
    return order_id


def test_reads_and_cycles_run_again_change_nothing(simulator, warehouse):
    """Two reads in a row: the second loads nothing. Any cycle (load + dbt build) run
    again leaves every mart identical, after the backfill and after a change."""
    first, ok = pipeline.run_cycle(base_url=simulator.url, token=TOKEN)
    assert ok and first.total > 0
    built = mart_checksums(warehouse)
    assert len(built) >= 8 and all(n for n, _ in built.values()), built
    raw = raw_versions(warehouse)

    again, ok = pipeline.run_cycle(base_url=simulator.url, token=TOKEN)
    assert ok and again.total == 0 and again.advanced == [] and again.quarantined == 0
    assert raw_versions(warehouse) == raw
    assert mart_checksums(warehouse) == built

    # a change, built as watch builds it (what the entity feeds), then that cycle again
    change_an_order(simulator.dir, "returned")
    feeds = [f"source:{settings.SOURCE_NAME}.orders+"]
    changed, ok = pipeline.run_cycle(select=feeds, base_url=simulator.url, token=TOKEN)
    assert ok and changed.rows.get("orders") == 1 and changed.advanced == ["orders"]
    # the change was merged through dlt's staging tables, emptied once it was loaded:
    # the file keeps no second copy of a load
    staged = staged_rows(warehouse)
    assert "orders" in staged and not any(staged.values()), staged
    after_change = mart_checksums(warehouse)
    assert after_change != built, "the return reached the marts"
    rerun, ok = pipeline.run_cycle(select=feeds, base_url=simulator.url, token=TOKEN)
    assert ok and rerun.total == 0
    assert mart_checksums(warehouse) == after_change
    assert_reconciled(simulator.dir, warehouse)


def test_a_build_does_not_read_the_newest_built_load_again(simulator, warehouse):
    """On DuckDB the loader holds the file for the whole of a load, so no build sees one
    half done: an incremental build takes the loads after the newest one it built, not
    that one again. After a backfill that one is the whole history."""
    first, ok = pipeline.run_cycle(base_url=simulator.url, token=TOKEN)
    assert ok and first.last_load_id
    # a probe: a row of the backfill's load changed in place, under the same load id;
    # a build that read that load again would carry it into the mart
    with duckdb.connect(str(warehouse)) as con:
        [(probed, status)] = con.execute(
            f"select order_id, status from {settings.DATASET_NAME}.orders"
            " where _dlt_load_id = ? order by order_id limit 1", [first.last_load_id]
        ).fetchall()
        probe = "shipped" if status != "shipped" else "delivered"  # any status valid
        con.execute(f"update {settings.DATASET_NAME}.orders set status = ?"
                    " where order_id = ?", [probe, probed])
    changed_id = change_an_order(simulator.dir, "returned")
    assert changed_id != probed
    changed, ok = pipeline.run_cycle(select=[f"source:{settings.SOURCE_NAME}.orders+"],
                                     base_url=simulator.url, token=TOKEN)
    assert ok and changed.rows.get("orders") == 1
    with duckdb.connect(str(warehouse), read_only=True) as con:
        built = dict(con.execute(
            f"select order_id, order_status from {MARTS}.fct_orders where order_id in (?, ?)",
            [probed, changed_id]).fetchall())
    assert built == {probed: status, changed_id: "returned"}, built


@dataclass
class Checkpoint:
    """The warehouse and dlt's working directory as they were after one load."""

    dir: Path
    states: dict[str, dict[str, Any]]

    def restore(self, warehouse: Path, pipelines_dir: Path, keep_working_dir: bool) -> None:
        """Put the checkpoint back; without the working dir, dlt must take its state
        (cursor, lookback window) from the warehouse, as on a new machine."""
        shutil.copy(self.dir / "warehouse.duckdb", warehouse)
        shutil.rmtree(pipelines_dir, ignore_errors=True)
        if keep_working_dir:
            shutil.copytree(self.dir / "dlt", pipelines_dir)


def save_checkpoint(tmp_path: Path, n: int, warehouse: Path, pipelines_dir: Path) -> Checkpoint:
    d = tmp_path / f"checkpoint-{n}"
    d.mkdir()
    shutil.copy(warehouse, d / "warehouse.duckdb")
    shutil.copytree(pipelines_dir, d / "dlt")
    return Checkpoint(d, resource_states())


def test_every_state_checkpoint_resumes_to_an_exact_copy(platform_dir, warehouse, tmp_path):
    """Loads under live traffic, the state saved after each; every checkpoint, put back
    into a fresh copy and run again against the quiet platform, reconciles exactly."""
    pipelines_dir = tmp_path / "dlt"
    checkpoints: list[Checkpoint] = []
    backfill = 0
    sim = start_simulator(platform_dir, "--rate", "40", "--lag", "0.2")
    try:
        for n in range(4):
            loaded = pipeline.load(base_url=sim.url, token=TOKEN, lookback_seconds=2)
            backfill = backfill if n else loaded.total
            checkpoints.append(save_checkpoint(tmp_path, n, warehouse, pipelines_dir))
            time.sleep(1.5)
    finally:
        sim.stop()  # flushes the replica
    cursors = [c.states["orders"]["incremental"]["updated_at"]["last_value"] for c in checkpoints]
    assert cursors == sorted(cursors) and cursors[0] < cursors[-1], "traffic moved the cursor"
    for c in checkpoints:
        window = c.states["orders"].get(LookbackWindow.STATE_KEY)
        assert window and window["until"], "the lookback window is kept with the cursor"

    replica_rows = sum(len(v) for v in replica_versions(platform_dir).values())
    quiet = start_simulator(platform_dir)
    try:
        for n, checkpoint in enumerate(checkpoints):
            checkpoint.restore(warehouse, pipelines_dir, keep_working_dir=n % 2 == 0)
            resumed = pipeline.load(base_url=quiet.url, token=TOKEN, lookback_seconds=2)
            assert_reconciled(platform_dir, warehouse)
            # it resumed from the checkpoint's cursors: the history the checkpoint held
            # (most of the first load's rows, untouched since) is not read again
            assert 0 < resumed.total < replica_rows - backfill // 2, (n, resumed.total)
            # the state it resumed from was the checkpoint's: cursors only move forward
            states = resource_states()
            for entity, state in checkpoint.states.items():
                was = state["incremental"]["updated_at"]["last_value"]
                now = states[entity]["incremental"]["updated_at"]["last_value"]
                assert now >= was, f"checkpoint {n}: {entity} cursor moved back"
    finally:
        quiet.stop()


def set_cursor(entity: str, value: datetime) -> None:
    p = dlt_pipeline()
    with p.managed_state() as state:
        inc = state["sources"][settings.SOURCE_NAME]["resources"][entity]["incremental"]
        inc["updated_at"]["last_value"] = value


def test_a_cursor_from_the_future_loads_nothing_and_loses_nothing(simulator, warehouse):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    raw = raw_versions(warehouse)
    future = datetime.now(timezone.utc) + timedelta(days=1)
    set_cursor("orders", future)

    change_an_order(simulator.dir, "returned")  # newer than every row, older than the cursor
    result = pipeline.load(base_url=simulator.url, token=TOKEN)
    assert result.rows.get("orders", 0) == 0 and result.quarantined == 0
    assert raw_versions(warehouse) == raw, "raw kept every row it had"
    cursor = cursor_positions(dlt_pipeline())["orders"]
    assert cursor == future, "the cursor did not move backwards"

    # once the cursor is put back where the data is, the change loads
    set_cursor("orders", raw_cursor_max(warehouse))
    pipeline.load(base_url=simulator.url, token=TOKEN)
    assert_reconciled(simulator.dir, warehouse)


def raw_cursor_max(path: Path) -> datetime:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("select max(updated_at) from raw.orders").fetchone()[0]


class Interrupted(RuntimeError):
    pass


def test_an_interrupted_sync_leaves_raw_and_state_as_before(
    simulator, warehouse, tmp_path, monkeypatch
):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    for status in ("returned", "shipped", "paid"):
        change_an_order(simulator.dir, status)
    with Platform(simulator.dir) as platform:
        platform.touch("products")  # every product changed: several pages
    store.replicate(simulator.dir)
    raw, states = raw_versions(warehouse), resource_states()

    import loaders.replica as replica

    parse, calls = replica.parse_page, []

    def failing_parse(spec, body, *args, **kwargs):
        calls.append(spec.name)
        if spec.name == "products" and calls.count("products") == 3:
            raise Interrupted("the extract stopped after two pages")
        return parse(spec, body, *args, **kwargs)

    monkeypatch.setattr(replica, "parse_page", failing_parse)
    with pytest.raises(Exception, match="the extract stopped after two pages"):
        pipeline.load(base_url=simulator.url, token=TOKEN, page_size=10)
    assert calls.count("products") == 3
    assert raw_versions(warehouse) == raw
    assert resource_states() == states
    assert not dlt_pipeline().has_pending_data

    monkeypatch.setattr(replica, "parse_page", parse)
    pipeline.load(base_url=simulator.url, token=TOKEN, page_size=10)
    assert_reconciled(simulator.dir, warehouse)
