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
