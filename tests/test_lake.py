"""The lake's SQL client (loaders/lake.py): raw read as a merge leaves it, and the
loader's own tables kept as one file per folder, with no row lost or doubled by a
write-back, also one interrupted half-way."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import dlt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loaders import lake

ENDPOINTS = {"orders": {"primary_key": "order_id", "deleted_marker": "deleted_at"},
             "regions": {"primary_key": "region_id"}}


def ts(minute: int) -> datetime:
    return datetime(2026, 11, 1, 12, minute, tzinfo=timezone.utc)


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(lake.BUCKET_URL_ENV, str(tmp_path / "lake"))
    return tmp_path / "lake" / "raw"


def land(bucket: Path, table: str, name: str, rows: dict[str, list]) -> Path:
    """A parquet file in a table's folder, as dlt lands one."""
    (bucket / table).mkdir(parents=True, exist_ok=True)
    path = bucket / table / name
    pq.write_table(pa.table(rows), path)
    return path


def client(read_only: bool = False) -> lake.LakeSqlClient:
    caps = dlt.destinations.duckdb().capabilities()
    return lake.LakeSqlClient("raw", caps, read_only=read_only, endpoints=ENDPOINTS)


def rows(sql, query: str) -> list[tuple]:
    return sorted(sql.execute_sql(query) or [])


def test_an_entity_reads_as_a_merge_leaves_it(bucket):
    land(bucket, "orders", "1.1.a.parquet", {
        "order_id": [1, 2, 3], "status": ["new", "new", "new"],
        "updated_at": [ts(0), ts(0), ts(0)], "deleted_at": [None, None, None],
        "_dlt_load_id": ["1", "1", "1"]})
    land(bucket, "orders", "2.1.b.parquet", {  # 1 updated, 2 deleted (tombstone)
        "order_id": [1, 2], "status": ["paid", None],
        "updated_at": [ts(5), ts(5)], "deleted_at": [None, ts(5)],
        "_dlt_load_id": ["2", "2"]})
    land(bucket, "orders", "3.1.c.parquet", {  # 3 read again, unchanged, in a later load
        "order_id": [3], "status": ["new"], "updated_at": [ts(0)], "deleted_at": [None],
        "_dlt_load_id": ["3"]})
    land(bucket, "orders", "4.1.d.parquet", {  # 4 listed and deleted at one time, one load
        "order_id": [4, 4], "status": ["new", None], "updated_at": [ts(7), ts(7)],
        "deleted_at": [None, ts(7)], "_dlt_load_id": ["4", "4"]})
    land(bucket, "regions", "1.1.a.parquet", {  # no deleted marker declared, none in files
        "region_id": ["eu", "eu"], "updated_at": [ts(0), ts(1)], "_dlt_load_id": ["1", "2"],
        "name": ["Europe", "Europa"]})
    with client(read_only=True) as sql:
        assert rows(sql, "select order_id, status, _dlt_load_id from raw.orders") == [
            (1, "paid", "2"), (3, "new", "3")]
        assert rows(sql, "select region_id, name from raw.regions") == [("eu", "Europa")]


def test_a_marker_never_set_is_still_a_column(bucket):
    land(bucket, "orders", "1.1.a.parquet", {
        "order_id": [1], "updated_at": [ts(0)], "_dlt_load_id": ["1"]})
    with client(read_only=True) as sql:
        assert rows(sql, "select order_id, deleted_at from raw.orders") == [(1, None)]


def test_the_loaders_tables_are_written_back_only_when_changed(bucket):
    with client() as sql:
        sql.execute_sql("create table raw.pipeline_loads (entity varchar, n bigint)")
        sql.execute_sql("insert into raw.pipeline_loads values ('orders', 3)")
    own = bucket / "pipeline_loads" / lake.OWN_FILE
    assert pq.read_table(own).to_pylist() == [{"entity": "orders", "n": 3}]
    written = own.stat().st_mtime_ns
    with client() as sql:
        assert rows(sql, "select * from raw.pipeline_loads") == [("orders", 3)]
    assert own.stat().st_mtime_ns == written  # read, not changed: not rewritten
    with client(read_only=True) as sql:
        sql.execute_sql("insert into raw.pipeline_loads values ('regions', 1)")
    assert pq.read_table(own).num_rows == 1  # a reader never writes


def test_a_changed_table_of_dlt_files_becomes_one_file(bucket):
    first = land(bucket, "quarantine", "1.1.a.parquet", {"record_key": ["a", "b"]})
    second = land(bucket, "quarantine", "2.1.b.parquet", {"record_key": ["c"]})
    with client() as sql:
        sql.execute_sql("delete from raw.quarantine where record_key = 'b'")
    assert not first.exists() and not second.exists()
    assert sorted(p.name for p in (bucket / "quarantine").iterdir()) == [lake.OWN_FILE]
    land(bucket, "quarantine", "3.1.c.parquet", {"record_key": ["d"]})  # a later load
    with client() as sql:
        assert rows(sql, "select * from raw.quarantine") == [("a",), ("c",), ("d",)]


def test_a_write_back_cut_short_doubles_nothing(bucket):
    land(bucket, "quarantine", "1.1.a.parquet", {"record_key": ["a", "b"]})
    removed: list[str] = []
    # the process dies after moving its file in, before removing those it replaces
    with pytest.MonkeyPatch.context() as mp, client() as sql:
        mp.setattr("fsspec.implementations.local.LocalFileSystem.rm",
                   lambda self, path, *a, **k: removed.append(path))
        sql.execute_sql("delete from raw.quarantine where record_key = 'b'")
    assert removed and (bucket / "quarantine" / "1.1.a.parquet").exists()
    with client() as sql:  # the file folded in is left out, then removed by a write
        assert rows(sql, "select * from raw.quarantine") == [("a",)]
        sql.execute_sql("insert into raw.quarantine values ('e')")
    assert sorted(p.name for p in (bucket / "quarantine").iterdir()) == [lake.OWN_FILE]
    with client(read_only=True) as sql:
        assert rows(sql, "select * from raw.quarantine") == [("a",), ("e",)]
