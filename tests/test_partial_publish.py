"""A failing build publishes what is good: only the marts a failure reaches are held
back."""

from __future__ import annotations

from pathlib import Path

import duckdb

from loaders.runners import publish


def marts_warehouse(path: Path, version: int, tables: tuple[str, ...] = ("a", "b")) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("create schema if not exists marts")
        for t in tables:
            con.execute(f"create or replace table marts.{t} as select {version} as v")


def versions(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [r[0] for r in con.execute(
            "select table_name from duckdb_tables() where schema_name = 'marts'"
            " and table_name != '_published'").fetchall()]
        return {t: con.execute(f"select v from marts.{t}").fetchone()[0] for t in tables}


def test_held_marts_keep_the_published_version_also_from_the_spare(tmp_path):
    wh, target = tmp_path / "wh.duckdb", tmp_path / "pub" / "analytics.duckdb"
    marts_warehouse(wh, 1)
    publish.publish(wh, target)  # version 1 of both
    marts_warehouse(wh, 2)
    publish.publish(wh, target, changed=["a", "b"])  # version 2; the spare holds 1
    marts_warehouse(wh, 3, ("a", "b", "c"))
    # b and the never-published c held: b stays at 2 (not the spare's 1), c absent
    pub = publish.publish(wh, target, changed=["a", "b", "c"], hold=["b", "c"])
    assert versions(target) == {"a": 3, "b": 2} and not pub.in_place
    assert pub.held == ("b", "c")
    # a full publication holds back too
    marts_warehouse(wh, 4, ("a", "b", "c"))
    publish.publish(wh, target, hold=["b"])
    assert versions(target) == {"a": 4, "b": 2, "c": 4}
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.execute("select held_back_tables from marts._published").fetchone()[0] == ["b"]
