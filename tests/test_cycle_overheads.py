"""The fixed costs a cycle no longer pays, each with what must stay true: the field
profiles written in one statement read back whole, the warehouse kept open for a cycle
is closed after it, the simulated API answers on a socket without Nagle's delay, and
dbt's statements are logged to the file only when asked for."""

from __future__ import annotations

import socket
from pathlib import Path

import duckdb
import pytest

from loaders import warehouse as wh
from loaders.runners import publish
from loaders.schema_changes import changelog
from loaders.schema_changes.changelog import FieldProfile
from simulator.server import _bind


def _profiles(entity: str, n: int, records: int) -> dict[str, FieldProfile]:
    return {f"field_{i}": FieldProfile("text", records, i % records, f"load{i}", i % 2 == 0)
            for i in range(n)}


def test_profiles_saved_in_batches_read_back_whole(warehouse: Path) -> None:
    many = wh.INSERT_BATCH + 7  # more than one statement's worth of rows
    with wh.dlt_pipeline().sql_client() as sql:
        sql.create_dataset()
        ds = sql.fully_qualified_dataset_name()
        changelog.ensure_tables(sql, ds)
        changelog.save_profile(sql, ds, {"orders": _profiles("orders", many, 50),
                                         "events": _profiles("events", 3, 9)})
        # saving one entity again replaces its fields and leaves the other's alone
        changelog.save_profile(sql, ds, {"events": _profiles("events", 2, 11)})
        changelog.save_profile(sql, ds, {})
        read = changelog.read_profile(sql, ds, {})
    assert read["orders"] == _profiles("orders", many, 50)
    assert read["events"] == _profiles("events", 2, 11)


def test_warehouse_kept_open_for_a_block_then_closed(warehouse: Path) -> None:
    with wh.kept_open():
        for n in range(2):  # clients open and close as usual, and see each other's work
            with wh.dlt_pipeline().sql_client() as sql:
                if n == 0:
                    sql.execute_sql("CREATE TABLE kept AS SELECT 42 AS answer")
                else:
                    assert sql.execute_sql("SELECT answer FROM kept") == [(42,)]
        # held by this process: a reader with another configuration is refused
        with pytest.raises(duckdb.ConnectionException):
            duckdb.connect(str(warehouse), read_only=True)
    # closed afterwards: the file opens read-only again
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        assert conn.execute("SELECT answer FROM kept").fetchall() == [(42,)]


def test_a_warehouse_that_cannot_be_kept_open_is_left_to_dlt(warehouse: Path) -> None:
    warehouse.mkdir()  # a directory where the file should be: DuckDB cannot open it
    refused = pytest.raises(Exception, match="(?i)database|directory|open")
    with wh.kept_open(), refused, wh.dlt_pipeline().sql_client() as sql:
        sql.execute_sql("SELECT 1")


def test_blocks_within_a_held_warehouse_share_its_connection(warehouse: Path) -> None:
    assert wh.held() is None
    with wh.kept_open() as outer:
        with wh.kept_open() as inner:  # a cycle's own block inside watch's
            assert inner is outer is wh.held()
        assert wh.held() is outer  # the inner block's end closes nothing
        outer.execute("CREATE TABLE t AS SELECT 1 AS one")
    assert wh.held() is None
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        assert conn.execute("SELECT one FROM t").fetchall() == [(1,)]


def test_a_held_warehouse_is_checkpointed_once_its_log_grows(warehouse: Path) -> None:
    log = warehouse.with_name(warehouse.name + ".wal")
    nothing_held = wh.checkpoint_behind(min_bytes=1)
    assert nothing_held.thread is None and nothing_held.seconds is None
    with wh.kept_open() as conn:
        conn.execute("CREATE TABLE big AS SELECT range AS n, md5(range::varchar) AS h"
                     " FROM range(200000)")
        grown = log.stat().st_size
        assert grown > 0
        not_due = wh.checkpoint_behind(min_bytes=grown + 1)  # left alone
        assert not_due.thread is None and not_due.seconds is None
        assert log.stat().st_size == grown
        due = wh.checkpoint_behind(min_bytes=grown)
        due.wait()
        assert due.seconds is not None
        assert not log.exists() or log.stat().st_size < grown
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (200000,)


def test_a_checkpoint_behind_runs_past_its_call(warehouse: Path, tmp_path: Path) -> None:
    log = warehouse.with_name(warehouse.name + ".wal")
    with wh.kept_open() as conn:
        conn.execute("CREATE TABLE big AS SELECT range AS n, md5(range::varchar) AS h"
                     " FROM range(200000)")
        grown = log.stat().st_size
        not_due = wh.checkpoint_behind(min_bytes=grown + 1)
        assert not not_due.running and not_due.seconds is None
        assert log.stat().st_size == grown  # not due: nothing runs
        done = wh.checkpoint_behind(min_bytes=grown)
        # the warehouse is read, another file written and the warehouse written
        # meanwhile (DuckDB has the write wait for the checkpoint)
        other = tmp_path / "other.duckdb"
        working = conn.cursor()
        working.execute(f"ATTACH '{other}' AS other")
        working.execute("CREATE TABLE other.copied AS SELECT * FROM big")
        working.execute("DETACH other")
        working.execute("INSERT INTO big VALUES (-1, 'after')")
        working.close()
        done.wait()
        assert done.seconds is not None and not done.running
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (200001,)
    with duckdb.connect(str(other), read_only=True) as copy:
        assert copy.execute("SELECT count(*) FROM copied").fetchone() == (200000,)


def test_a_held_warehouse_is_let_go_once_its_checkpoint_is_done(warehouse: Path) -> None:
    log = warehouse.with_name(warehouse.name + ".wal")
    with wh.kept_open() as conn:
        for part in range(20):  # a log that takes a while to write out
            conn.execute(f"INSERT INTO big SELECT range, md5(range::varchar) FROM"
                         f" range({part} * 50000, {part + 1} * 50000)" if part else
                         "CREATE TABLE big AS SELECT range AS n, md5(range::varchar) AS h"
                         " FROM range(50000)")
        done = wh.checkpoint_behind(min_bytes=log.stat().st_size)
        assert done.thread is not None
    # the block's end waited for it before closing the file
    assert not done.running and done.seconds is not None
    assert not log.exists() or log.stat().st_size == 0
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (1_000_000,)


def test_a_publication_goes_through_the_held_warehouse(warehouse: Path,
                                                       tmp_path: Path) -> None:
    target = tmp_path / "published" / "analytics.duckdb"
    key = {"orders": "order_id"}
    with wh.kept_open() as conn:
        conn.execute("CREATE SCHEMA marts")
        conn.execute("CREATE TABLE marts.orders AS SELECT range AS order_id,"
                     " '1' AS last_load_id FROM range(5)")
        # the warehouse cannot be attached while this process holds it
        with pytest.raises(duckdb.Error):
            publish.publish(warehouse, target)
        conn.execute("SET memory_limit = '100MB'")  # a load's, lower than publishing's
        first = publish.publish(warehouse, target, through=conn)
        # the publication ran under its own limit, not the load's
        assert conn.execute("SELECT current_setting('memory_limit')").fetchone() == (
            duckdb.connect(":memory:", config={"memory_limit": publish.MEMORY_LIMIT})
            .execute("SELECT current_setting('memory_limit')").fetchone())
        for n in (2, 3, 4):
            conn.execute(f"INSERT INTO marts.orders SELECT range, '{n}'"
                         f" FROM range({n}0, {n}3)")
            last = publish.publish(warehouse, target, changed=["orders"], by_load_id=key,
                                   through=conn)
        # nothing of the publication is left attached to the warehouse's connection
        assert conn.execute("SELECT count(*) FROM duckdb_databases()"
                            " WHERE database_name = ?", [publish.VERSION]).fetchone() == (0,)
        expected = conn.execute("SELECT * FROM marts.orders ORDER BY 1").fetchall()
    assert first.route == "whole" and last.route.startswith("in place")
    assert "orders" in last.updated  # refreshed key by key, not copied whole
    with duckdb.connect(str(target), read_only=True) as published:
        assert published.execute("SELECT * FROM marts.orders ORDER BY 1").fetchall() == expected


def test_simulated_api_socket_sends_without_delay() -> None:
    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()


def test_session_commands_log_info_to_the_file_unless_told(monkeypatch) -> None:
    from loaders import dbt_project

    sent: list[list[str]] = []

    class Done:
        exception = None

    def fake_invoke(args, runner=None, project_root=None):
        sent.append(list(args))
        return Done()

    monkeypatch.setattr(dbt_project, "invoke", fake_invoke)
    session = object.__new__(dbt_project.Session)
    session.manifest = type("Manifest", (), {"nodes": {}})()
    session.runner = None
    monkeypatch.delenv("DBT_LOG_LEVEL_FILE", raising=False)
    session._invoke(["run", "--select", "fct_orders"])
    assert sent[-1][-2:] == ["--log-level-file", "info"]
    # a user asking for the statements gets them: dbt reads the variable itself
    monkeypatch.setenv("DBT_LOG_LEVEL_FILE", "debug")
    session._invoke(["run", "--select", "fct_orders"])
    assert "--log-level-file" not in sent[-1]
