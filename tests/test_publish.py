"""Publication from a pool of spare versions: readers holding versions open leave a
free spare to update in place, a spare several publications behind ends equal to the
warehouse's marts, held-back marts keep analysts' version, and the pool stays bounded."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from loaders.runners import publish
from tests.support.readers import Reader

BY_KEY = {"orders": "order_id"}  # refreshed key by key; daily and extra copied whole


@pytest.fixture
def wh(tmp_path: Path) -> Path:
    path = tmp_path / "wh.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("create schema marts")
        con.execute(
            "create table marts.orders as select i as order_id, i * 10 as amount,"
            " '0000' as last_load_id from range(1, 41) t(i)"
        )
        con.execute("create table marts.extra as select 1 as x")
    daily(path)
    return path


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "published" / "analytics.duckdb"


def daily(wh: Path) -> None:
    with duckdb.connect(str(wh)) as con:
        con.execute(
            "create or replace table marts.daily as select last_load_id, count(*) as n,"
            " sum(amount) as amount from marts.orders group by all"
        )


def load(wh: Path, step: int) -> list[str]:
    """A cycle's changes, loaded as load id ``step``: an order new, one changed, one
    deleted, the aggregate rebuilt. Returns the marts the cycle rebuilt."""
    lid = f"{step:04d}"
    with duckdb.connect(str(wh)) as con:
        con.execute("insert into marts.orders values (?, ?, ?)", [100 + step, step, lid])
        con.execute("update marts.orders set amount = amount + ?, last_load_id = ?"
                    " where order_id = ?", [step, lid, 20 + step % 20])
        con.execute("delete from marts.orders where order_id = ?", [step % 20 + 1])
    daily(wh)
    return ["orders", "daily"]


def differences(target: Path, wh: Path, held: tuple[str, ...] = ()) -> dict[str, int]:
    """Rows of each mart in one file and not the other (either way), and the marts
    only one has; held marts left out."""
    with duckdb.connect(str(target), read_only=True) as con:
        con.execute(f"attach '{wh}' as wh (read_only)")
        db = con.execute("select current_database()").fetchone()[0]

        def marts(database: str) -> set[str]:
            return {r[0] for r in con.execute(
                "select table_name from duckdb_tables() where database_name = ?"
                " and schema_name = 'marts' and table_name != '_published'", [database],
            ).fetchall()} - set(held)

        mine, theirs = marts(db), marts("wh")
        out = {t: -1 for t in mine ^ theirs}
        for t in mine & theirs:
            (n,) = con.execute(
                f"select count(*) from ((select * from {db}.marts.{t} except all"
                f" select * from wh.marts.{t}) union all (select * from wh.marts.{t}"
                f" except all select * from {db}.marts.{t}))"
            ).fetchone()
            if n:
                out[t] = n
    return out


def spares(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if ".spare" in p.name)


def test_a_reader_moving_to_the_newest_version_leaves_a_free_spare(wh, target):
    """A connection recycled every other publication (a BI tool's pool) holds the
    newest spare at every second publication: the one before it is free."""
    publish.publish(wh, target)
    routes = []
    with Reader() as reader:
        for step in range(1, 13):
            if step % 2:
                reader.open(target)
            pub = publish.publish(wh, target, changed=load(wh, step), by_load_id=BY_KEY)
            routes.append((pub.in_place, pub.behind))
            assert differences(target, wh) == {}, step
            assert len(spares(target)) <= publish.SPARES + 1
    # the first two have no spare to start from yet (a copy each)
    assert [r[0] for r in routes[:2]] == [False, False]
    assert all(in_place for in_place, _ in routes[2:]), routes
    # in turn the spare before the held one (two behind), and the one before that,
    # kept in the pool meanwhile (four behind)
    assert {behind for _, behind in routes[3:]} == {2, 4}, routes


def test_two_readers_holding_two_spares_leave_the_third(wh, target):
    """Two connections each kept over three publications, moving in turn: at most
    publications both spares before the current version are held."""
    publish.publish(wh, target)
    pubs = []
    with Reader() as first, Reader() as second:
        for step in range(1, 16):
            if step % 3 == 1:
                first.open(target)
            elif step % 3 == 2:
                second.open(target)
            pub = publish.publish(wh, target, changed=load(wh, step), by_load_id=BY_KEY)
            pubs.append(pub)
            assert differences(target, wh) == {}, step
    assert all(p.in_place for p in pubs[4:]), [p.route for p in pubs]
    assert max(p.behind or 0 for p in pubs) >= 3
    assert all(p.updated.get("orders") for p in pubs[4:])  # key by key, not copied
    assert len(spares(target)) <= publish.SPARES + 2


def test_a_spare_many_publications_behind_is_brought_fully_up_to_date(wh, target):
    publish.publish(wh, target)
    readers = [Reader() for _ in range(4)]
    try:
        # every version held as soon as published: four copies, each version a spare
        for step, reader in enumerate(readers, 1):
            reader.open(target)
            pub = publish.publish(wh, target, changed=load(wh, step), by_load_id=BY_KEY,
                                  spares=5)
            assert pub.route == "copy" and differences(target, wh) == {}
        # rows changed, deleted and new; a mart gone from dbt, a new one
        for step in range(5, 8):
            load(wh, step)
        with duckdb.connect(str(wh)) as con:
            con.execute("update marts.orders set amount = -1, last_load_id = '0007'"
                        " where order_id = 35")
            con.execute("delete from marts.orders where order_id between 30 and 33")
            con.execute("drop table marts.extra")
            con.execute("create table marts.fresh as select 2 as y")
        readers[0].open(target)  # the first version free, the three after it held
        pub = publish.publish(wh, target, changed=["orders", "daily", "fresh"],
                              by_load_id=BY_KEY, spares=5)
    finally:
        for reader in readers:
            reader.close()
    # the first version: published before four others, the fifth is this one
    assert pub.in_place and pub.behind == 5, pub.route
    assert pub.route == f"in place: {pub.spare}, 5 behind"
    assert pub.updated["orders"] > 0 and "daily" in pub.tables
    assert differences(target, wh) == {}


def test_held_back_marts_are_never_taken_from_a_spare(wh, target):
    publish.publish(wh, target)
    for step in range(1, 4):
        publish.publish(wh, target, changed=load(wh, step), by_load_id=BY_KEY)
    with duckdb.connect(str(target), read_only=True) as con:
        daily_before = con.execute("select * from marts.daily order by all").fetchall()
    pub = publish.publish(wh, target, changed=load(wh, 4), by_load_id=BY_KEY,
                          hold=["daily"])
    assert not pub.in_place and pub.route == "copy"
    assert differences(target, wh, held=("daily",)) == {}
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.execute("select * from marts.daily order by all").fetchall() == daily_before
    # released: the next publication, from a spare, takes it from the warehouse again
    pub = publish.publish(wh, target, changed=load(wh, 5), by_load_id=BY_KEY)
    assert pub.in_place and differences(target, wh) == {}


def test_the_pool_keeps_its_newest_spares_and_deletes_a_held_one_once_free(wh, target):
    def step(n: int) -> publish.Published:
        return publish.publish(wh, target, changed=load(wh, n), by_load_id=BY_KEY, spares=1)

    publish.publish(wh, target)
    with Reader() as reader:
        step(1)
        reader.open(target.with_name(target.name + ".spare.1"))  # the first version
        for n in range(2, 7):
            step(n)
            assert len(spares(target)) <= 2  # the newest, and the held one
        assert "analytics.duckdb.spare.1" in spares(target)  # held: left
    step(7)
    assert spares(target) == ["analytics.duckdb.spare.7"]
    # a spare named before versions were numbered is the oldest of the pool
    legacy = target.with_name(target.name + ".spare")
    legacy.write_bytes(target.read_bytes())
    newest = target.with_name(target.name + ".spare.7")
    assert [p for _, p in publish._pool(target)] == [newest, legacy]
    assert step(8).spare == "analytics.duckdb.spare.7"
    assert not legacy.exists() and differences(target, wh) == {}


def test_a_whole_publication_leaves_no_earlier_version_to_start_from(wh, target):
    """Marts rewritten without a newer load id (a full refresh, hashes under a new key)
    are published whole: no spare from before may be refreshed key by key later."""
    publish.publish(wh, target)
    with Reader() as reader:
        for step in range(1, 4):
            if step == 3:
                reader.open(target)  # held: a spare after this publication
            publish.publish(wh, target, changed=load(wh, step), by_load_id=BY_KEY)
        assert spares(target) == ["analytics.duckdb.spare.3"]
        with duckdb.connect(str(wh)) as con:
            con.execute("update marts.orders set amount = amount * 2")
        daily(wh)
        assert publish.publish(wh, target).route == "whole"
        assert spares(target) == []  # the held one too: its reader keeps it
        reader.open(target)
    pub = publish.publish(wh, target, changed=load(wh, 4), by_load_id=BY_KEY)
    assert pub.route == "copy" and differences(target, wh) == {}
    pub = publish.publish(wh, target, changed=load(wh, 5), by_load_id=BY_KEY)
    assert pub.in_place and differences(target, wh) == {}


def test_a_publication_is_bounded_in_memory(wh, target, monkeypatch):
    """The publisher's DuckDB spills past its limit instead of taking most of the
    machine's memory (its default) to copy a large mart; checked on the connection it
    writes the new version with."""
    monkeypatch.setattr(publish, "MEMORY_LIMIT", "300MiB")
    seen: list[str] = []
    connect = publish._connect

    def spying(path: Path) -> duckdb.DuckDBPyConnection:
        con = connect(path)
        seen.append(con.execute("select current_setting('memory_limit')").fetchone()[0])
        return con

    monkeypatch.setattr(publish, "_connect", spying)
    publish.publish(wh, target)
    assert seen == ["300.0 MiB"]


def test_a_mart_mostly_changed_is_copied_whole_a_little_changed_key_by_key(
    wh, target, monkeypatch
):
    """Past ``WHOLE_SHARE`` of its keys changed (a backfill's last load rebuilt), a mart
    refreshable key by key is copied whole: deleting most of a large mart in one
    transaction holds every deleted row in memory."""
    publish.publish(wh, target)
    pub = publish.publish(wh, target, changed=load(wh, 1), by_load_id=BY_KEY)
    assert "orders" in pub.updated and "orders" not in pub.tables
    monkeypatch.setattr(publish, "SMALL_KEYS", 5)  # the fixture's mart is small
    with duckdb.connect(str(wh)) as con:
        con.execute("update marts.orders set amount = amount + 1, last_load_id = '0002'"
                    " where order_id <= 30")
    daily(wh)
    pub = publish.publish(wh, target, changed=["orders", "daily"], by_load_id=BY_KEY)
    assert "orders" in pub.tables and "orders" not in pub.updated and pub.swept == ()
    assert differences(target, wh) == {}


def test_a_refresh_takes_the_loads_after_the_versions_newest(wh, target):
    """A version is refreshed from the loads after the newest one it holds: that load
    was built whole before the version was published, so its rows are not written again
    (after a backfill they are the whole mart)."""
    publish.publish(wh, target)
    pub = publish.publish(wh, target, changed=load(wh, 1), by_load_id=BY_KEY)
    assert pub.updated["orders"] == 2, pub.updated  # the new order and the changed one
    assert differences(target, wh) == {}


@pytest.mark.parametrize("age_s", [None, 60, 2 * 86400, 30 * 86400])
def test_a_versions_newest_load_is_found_however_old_it_is(tmp_path, age_s):
    """Looked for among recent load ids first, then over the whole column: exact for a
    minute-old, days-old or month-old newest load; '' for a mart without rows."""
    import time

    newest = "" if age_s is None else f"{time.time() - age_s:.6f}"
    with duckdb.connect(str(tmp_path / "v.duckdb")) as con:
        con.execute("create table t (last_load_id varchar)")
        if newest:
            older = [f"{float(newest) - s:.6f}" for s in (1, 3600, 40 * 86400)]
            con.execute("insert into t select unnest(?)", [[*older, newest, *older]])
        assert publish._newest_load_id(con, "t") == newest
