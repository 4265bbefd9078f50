"""`salesflow watch` and the analysts' published file: readers never blocked nor shown a
half-built state; kill and restart; an outage during watch; analyses run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from loaders import cli, dbt_project, pii
from loaders.replica.settings import ENDPOINTS
from loaders.runners import pipeline, publish
from loaders.runners.watch import watch
from loaders.warehouse import held as warehouse_held
from simulator import faults, model, store
from simulator.faults import Faults
from simulator.generate import generate
from simulator.platform import Platform
from tests.support import AS_OF, ROOT, TOKEN
from tests.support.simulator import start_simulator
from tests.support.warehouse import catch_up_and_reconcile

CONSISTENT = """
select
    (select sum(revenue_usd) from marts.product_sales_daily)
        = (select sum(revenue_usd) from marts.product_sales_hourly),
    (select sum(units) from marts.product_sales_daily)
        = (select sum(units) from marts.product_sales_hourly),
    (select count(*) from marts.fct_orders),
    (select cycle_id from marts._published)
"""


@pytest.fixture
def published(tmp_path: Path, warehouse: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "published" / "analytics.duckdb"
    monkeypatch.setenv("SALESFLOW_PUBLISHED_PATH", str(path))
    return path


READER = """
import duckdb, json, sys, time
path, hold, seconds, query = sys.argv[1], sys.argv[2] == "hold", float(sys.argv[3]), sys.argv[4]
deadline, held = time.monotonic() + seconds, None
while time.monotonic() < deadline:
    try:
        if hold:
            held = held or duckdb.connect(path, read_only=True)
            row = held.execute(query).fetchone()
        else:
            with duckdb.connect(path, read_only=True) as con:
                row = con.execute(query).fetchone()
        print(json.dumps({"row": [str(v) for v in row]}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": repr(exc)}), flush=True)
    time.sleep(0.05)
"""


def reader(path: Path, hold: bool, seconds: float) -> subprocess.Popen:
    """An analyst's process: a fresh read-only connection per query, or one held."""
    return subprocess.Popen(
        [sys.executable, "-c", READER, str(path), "hold" if hold else "fresh", str(seconds),
         CONSISTENT],
        stdout=subprocess.PIPE, text=True,
    )


def test_readers_see_whole_versions_while_watch_builds(platform_dir, warehouse, published):
    sim = start_simulator(platform_dir, "--rate", "30")
    try:
        watch(interval=0.5, max_cycles=1, base_url=sim.url, token=TOKEN)  # first version
        readers = [reader(published, hold, 600) for hold in (False, True)]  # until stopped
        stats = watch(interval=0.5, max_cycles=4, base_url=sim.url, token=TOKEN)
        for r in readers:
            r.terminate()
        outputs = [[json.loads(line) for line in r.communicate(timeout=30)[0].splitlines()]
                   for r in readers]
    finally:
        sim.stop()
    assert stats.published >= 3 and stats.failures == 0
    for out in outputs:
        assert out and [o for o in out if "error" in o] == []
        assert all(o["row"][0] == "True" and o["row"][1] == "True" for o in out)
    fresh, held = ([o["row"] for o in out] for out in outputs)
    assert len({row[3] for row in fresh}) >= 3  # fresh connections follow publications
    assert [int(row[2]) for row in fresh] == sorted(int(row[2]) for row in fresh)
    assert len({tuple(row) for row in held}) == 1  # a held connection keeps its version


def run_watch(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "loaders.cli", "watch", "--interval", "0.5", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_cycles(proc: subprocess.Popen, n: int, timeout: float = 180) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if sum(1 for x in lines if x.startswith("cycle ")) >= n:
            return lines
    raise AssertionError("watch did not run its cycles:\n" + "".join(lines[-30:]))


def test_watch_killed_mid_cycle_restarts_and_stops_cleanly(
    platform_dir, warehouse, published, tmp_path
):
    sim = start_simulator(platform_dir, "--rate", "30")
    env = {**os.environ, "SOURCES__REPLICA__BASE_URL": sim.url, "SOURCES__REPLICA__TOKEN": TOKEN}
    try:
        proc = run_watch(env)
        wait_for_cycles(proc, 2)
        time.sleep(0.7)  # inside the next cycle (load or build)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        before = published.stat().st_mtime_ns

        proc = run_watch(env)  # recovers by itself: pending package, lock, published file
        wait_for_cycles(proc, 2)
        proc.send_signal(signal.SIGTERM)  # finishes the cycle in progress, then exits
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "stopped after" in out
        assert published.stat().st_mtime_ns > before
    finally:
        sim.stop()
    catch_up_and_reconcile(platform_dir, warehouse)
    with duckdb.connect(str(published), read_only=True) as con:
        [(ok, units_ok, orders, _)] = con.execute(CONSISTENT).fetchall()
    assert ok and units_ok and orders > 0


def test_an_outage_during_watch_is_one_alert_and_one_recovery(
    platform_dir, warehouse, published, monkeypatch
):
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("RUNTIME__REQUEST_BACKOFF_FACTOR", "0.1")
    sim = start_simulator(platform_dir, "--rate", "20")
    timeline: list[str] = []

    def on_cycle(stats) -> None:
        timeline.append(stats.last["outcome"])
        if stats.cycles == 2:
            faults.save(platform_dir, Faults(outage_until=faults.window(4)))
            time.sleep(1)

    try:
        watch(interval=0.5, max_cycles=9, max_backoff=2, on_cycle=on_cycle,
              base_url=sim.url, token=TOKEN)
    finally:
        sim.stop()
    assert "failed" in timeline and timeline[-1].startswith("success"), timeline
    log = warehouse.parent / "dlt" / "notifications.jsonl"
    kinds = [json.loads(line)["kind"] for line in log.read_text().splitlines()]
    assert kinds.count("outage") == 1 and kinds.count("recovery") == 1, kinds


def test_analyses_run_on_the_published_file(simulator, warehouse, published, capsys):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    assert dbt_project.run("build", "--exclude-resource-type", "unit_test")
    publish.publish(warehouse)
    for sql in sorted((ROOT / "analyses").glob("*.sql")):
        assert cli.main(["query", str(sql), "--csv"]) == 0, sql.name
        out = capsys.readouterr().out.splitlines()
        assert len(out) >= 2, f"{sql.name} returned no rows"
    with duckdb.connect(str(published), read_only=True) as con:
        columns = {
            r[0] for r in con.execute(
                "select column_name from information_schema.columns"
            ).fetchall()
        }
    # no readable personal data reaches analysts
    assert not {"email", "first_name", "last_name", "full_name", "phone"} & columns


# columns that say when a row was last rebuilt, not what it holds: an incremental build
# leaves a row alone when nothing it shows changed (a product's new price)
REBUILD_MARKERS = {"last_load_id", "source_updated_at", "last_source_updated_at"}


def _marts(con: duckdb.DuckDBPyConnection, db: str) -> dict[str, list[str]]:
    rows = con.execute(
        "select table_name, column_name from duckdb_columns() where database_name = ?"
        " and schema_name = 'marts' and table_name not in ('_published', 'pipeline_health')"
        " order by table_name, column_index", [db],
    ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        if column not in REBUILD_MARKERS:
            out.setdefault(table, []).append(f'"{column}"')
    return out


def test_incremental_cycles_and_their_publication_equal_a_full_rebuild(
    simulator, warehouse, published, tmp_path, monkeypatch
):
    """Cycles with new orders, updates, product price changes and deletions, built
    incrementally by load id and published key by key, end where a rebuild from
    scratch of the same raw data does; what the deletions removed reaches analysts'
    copy through the marts' removed logs, never a comparison of whole tables."""
    swept: list[str] = []
    emptied: list[str] = []
    held: list[bool] = []
    checkpointed: list[bool] = []

    def between(stats) -> None:
        swept.extend(stats.last.get("published_swept", []))
        held.append(warehouse_held() is not None)
        # a checkpoint that ended in the cycle, or one running on past its end
        checkpointed.append("checkpoint_s" in stats.last or "checkpointing" in stats.last)
        with Platform(simulator.dir, seed=stats.cycles) as platform:
            platform.tick(40)
            if stats.cycles in (2, 3):
                # every order of an hour cancelled, then of another deleted: the hour
                # has no sale left and leaves the sales marts
                [(hour,)] = store.query(
                    simulator.dir, "SELECT substr(ordered_at, 1, 13) FROM orders"
                    " ORDER BY ordered_at LIMIT 1 OFFSET ?", 50 * stats.cycles,
                    db=store.PRODUCTION,
                )
                orders = [oid for (oid,) in store.query(
                    simulator.dir, "SELECT order_id FROM orders"
                    " WHERE substr(ordered_at, 1, 13) = ?", hour, db=store.PRODUCTION,
                )]
                if stats.cycles == 2:
                    for oid in orders:
                        platform.update("orders", oid, status="cancelled")
                else:
                    platform.delete_records("orders", orders)
                emptied.append(hour.replace("T", " ") + ":00:00")
            # the cancellations' load, and the one before, delete nothing: a build
            # looking for what a deletion took away would not look then
            for entity in ("orders", "order_items", "customers") if stats.cycles > 2 else ():
                key = ENDPOINTS[entity]["primary_key"]
                [(victim,)] = store.query(
                    simulator.dir,
                    f"SELECT {key} FROM {entity} ORDER BY {key} LIMIT 1 OFFSET ?",
                    stats.cycles * 7,
                    db=store.PRODUCTION,
                )
                platform.delete_records(entity, [victim])
        store.replicate(simulator.dir)

    target = tmp_path / "target"
    monkeypatch.setenv("DBT_TARGET_PATH", str(target))
    # every cycle's log written out, each while its marts are published
    monkeypatch.setenv("SALESFLOW_CHECKPOINT_WAL_MB", "0")
    # with dlt's progress display, as `salesflow watch --progress log` runs
    stats = watch(interval=0, max_cycles=5, on_cycle=between, base_url=simulator.url,
                  token=TOKEN, progress="log")
    assert stats.failures == 0 and stats.published == 5
    assert swept == []
    assert checkpointed == [True] * 5
    # cycles back to back keep the warehouse open (published through its connection),
    # and watch lets go of it when it ends
    assert held == [True] * 5 and warehouse_held() is None
    # the first cycle publishes whole, the second copies it, the next ones update a spare
    assert stats.last["published_from"].startswith("in place: analytics.duckdb.spare.")
    # a cycle's run writes no manifest, but its results are where dbt users look
    ran = json.loads((target / "run_results.json").read_text())
    assert ran["args"]["which"] == "run"
    assert "model.salesflow.fct_orders" in {r["unique_id"] for r in ran["results"]}
    # the marts built at their own rhythm (dbt's build_after) wait with their new data
    waiting = set(stats.last["waiting"])
    assert waiting == {"customer_cohorts_monthly", "funnel_daily"}
    # a spare version is updated in place unless readers hold every one
    spares = [p for p in published.parent.glob(published.name + ".spare.*")
              if p.suffix[1:].isdigit()]
    by_key = {"fct_orders": "order_id", "fct_order_items": "order_item_id"}
    held = [reader(spare, True, 60) for spare in spares]
    assert spares and all(json.loads(h.stdout.readline())["row"] for h in held)  # open
    pub = publish.publish(warehouse, published, changed=[], by_load_id=by_key)
    assert not pub.in_place and pub.route == "copy"
    for h in held:
        h.terminate()
        h.wait(timeout=30)
    assert publish.publish(warehouse, published, changed=[], by_load_id=by_key).in_place
    rebuilt = tmp_path / "rebuilt.duckdb"
    rebuilt.write_bytes(warehouse.read_bytes())
    # the key personal data is hashed with goes with the warehouse
    pii.key_file(rebuilt).write_bytes(pii.key_file(warehouse).read_bytes())
    os.environ["SALESFLOW_DUCKDB_PATH"] = str(rebuilt)  # restored by the fixture
    assert dbt_project.run("run", "--full-refresh", "--select", "marts")
    # the waiting marts' next build (at their time) takes everything that waited
    os.environ["SALESFLOW_DUCKDB_PATH"] = str(warehouse)
    assert dbt_project.run("run", "--select", *waiting)
    with duckdb.connect(str(published), read_only=True) as con:
        con.execute(f"ATTACH '{rebuilt}' AS rebuilt (READ_ONLY)")
        con.execute(f"ATTACH '{warehouse}' AS wh (READ_ONLY)")
        db = con.execute("select current_database()").fetchone()[0]
        marts = _marts(con, "rebuilt")
        assert marts == _marts(con, db) == _marts(con, "wh")
        assert len(emptied) == 2
        for hour in emptied:  # the day has other hours: the comparison below says it
            for version in (db, "wh"):
                [(rows,)] = con.execute(
                    f"select count(*) from {version}.marts.product_sales_hourly"
                    " where sales_hour = cast(? as timestamp)", [hour]
                ).fetchall()
                assert rows == 0, f"{hour} still in {version}.product_sales_hourly"
        for table, columns in marts.items():
            cols = ", ".join(columns)
            pairs = [("wh", "rebuilt"), ("rebuilt", "wh")]
            if table not in waiting:  # published as they wait
                pairs += [(db, "rebuilt"), ("rebuilt", db)]
            for left, right in pairs:
                (diff,) = con.execute(
                    f"select count(*) from (select {cols} from {left}.marts.{table}"
                    f" except all select {cols} from {right}.marts.{table})"
                ).fetchone()
                assert diff == 0, f"{table}: {diff} rows of {left} not in {right}"


def test_late_commits_and_clock_skew_never_hold_the_sales_marts_back(
    tmp_path, warehouse, published, monkeypatch
):
    """With commits landing late and device clocks ahead (as the demo and the benchmark
    play them), every cycle with new data publishes fresh sales marts, the periodic data
    tests pass (reading the rows loaded since the last run), nothing is notified, the
    counts are reconciled beside the cycles, and raw reconciles with the platform."""
    monkeypatch.setenv("SOURCES__REPLICA__RECONCILE_INTERVAL_SECONDS", "5")
    sim_dir = tmp_path / "skewed"
    generate(sim_dir, orders=300, seed=11, as_of=AS_OF, days=30,
             clock_skew=model.REAL_WORLD_CLOCK_SKEW_S)
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    sim = start_simulator(sim_dir, "--rate", "30", *model.real_world_args())
    cycles: list[dict] = []

    def on_cycle(stats) -> None:
        cycles.append(dict(stats.last))
        if "publish_s" in stats.last:
            with duckdb.connect(str(published), read_only=True) as con:
                cycles[-1]["refreshed"], cycles[-1]["held"] = con.execute(
                    "select refreshed_tables, held_back_tables from marts._published"
                ).fetchone()

    try:
        # the periodic data tests run twice within the window
        stats = watch(interval=0.5, max_cycles=40, test_interval=15, on_cycle=on_cycle,
                      base_url=sim.url, token=TOKEN)
    finally:
        sim.stop()
    assert stats.failures == 0
    with_rows = [c for c in cycles if c.get("rows")]
    assert len(with_rows) >= 30, cycles
    for c in with_rows:
        assert "product_sales_hourly" in c["refreshed"] and not c["held"], cycles
    assert sum(1 for c in cycles if c.get("test_s") is not None) >= 2, cycles
    assert not any(c.get("tests_failed") for c in cycles), cycles
    assert any(c.get("tests_since") for c in cycles), cycles
    assert any(c.get("reconciled") for c in cycles), cycles
    with duckdb.connect(str(warehouse), read_only=True) as con:
        skewed = con.execute(
            "select count(*) from staging.stg_replica__events where is_clock_skewed"
        ).fetchone()[0]
    assert skewed > 0
    log = warehouse.parent / "dlt" / "notifications.jsonl"
    notices = [json.loads(line)["kind"] for line in
               (log.read_text().splitlines() if log.exists() else [])]
    assert "build_failed" not in notices and "tests_failed" not in notices, notices
    catch_up_and_reconcile(sim_dir, warehouse, *model.real_world_args())


def test_a_signal_during_a_dlt_step_reaches_watch(warehouse, monkeypatch):
    """dlt's normalize and load steps intercept SIGINT/SIGTERM for themselves unless told
    not to: a signal then failed the step and never reached watch, which ran on."""
    import os

    from loaders import warehouse as warehouse_mod
    from loaders.runners import pipeline as pipeline_mod

    seen = []

    def cycle(*args, **kwargs):
        seen.append(warehouse_mod.dlt_pipeline().runtime_config.intercept_signals)
        raise RuntimeError("no platform in this test")

    monkeypatch.setattr(pipeline_mod, "cycle", cycle)
    monkeypatch.delenv("RUNTIME__INTERCEPT_SIGNALS", raising=False)
    watch(interval=0, max_cycles=1, max_backoff=0)
    assert seen == [False]
    assert "RUNTIME__INTERCEPT_SIGNALS" not in os.environ
