"""The lake: raw data as parquet files in a folder or a bucket, for the ``spark`` target.

dlt's filesystem destination lands every load as new files,
``<bucket>/<dataset>/<table>/<load_id>.<file_id>.parquet``, and merges nothing: raw keeps
every version of every record and every tombstone (a record whose deleted marker is
set). Readers make what a merge would have left: dbt's staging on Spark (macro
``newest_versions``) and the loader's own reads here, where each entity's table is a view
keeping the newest version of each key (by cursor, then load) unless it is a tombstone.

The loader's SQL (its own tables: the health history, the schema changelog, the marts'
status; the quarantine it settles) runs as on any warehouse, through
:class:`LakeSqlClient`: a DuckDB database in memory in which every folder of the dataset
is a table. An entity's folder is a view over dlt's files, as above; any other folder is
read whole when the client opens, and written back when it closes having changed: one
file (:data:`OWN_FILE`) replacing the files it was read from, dlt's included, so a
folder is always "every parquet file in it". Spark reads all folders alike (dbt's
on-run-start macro). One loader writes at a time (the run lock); two clients of one
process changing the same table would keep the last one's rows, which the loader never
does.

May import: dlt, duckdb, pyarrow, :mod:`loaders.config` and the replica source's settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dlt.common.storages.configuration import FilesystemConfiguration
from dlt.common.storages.fsspec_filesystem import fsspec_from_config
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.destinations.impl.duckdb.sql_client import DuckDbSqlClient

from loaders import config
from loaders.replica import settings as replica_settings

log = logging.getLogger(__name__)

# dlt's own setting for the filesystem destination: one place for the loader and dbt
BUCKET_URL_ENV = "DESTINATION__FILESYSTEM__BUCKET_URL"
DEFAULT_BUCKET = "data/lake"
# the file the loader writes a table it changed to (dlt's are named by load), and the
# key of its metadata naming the files whose rows it holds
OWN_FILE = "salesflow.parquet"
FOLDED_KEY = b"salesflow.folded"


def bucket_url() -> str:
    """The lake's root: ``DESTINATION__FILESYSTEM__BUCKET_URL``, else ``data/lake``; a
    local path is made absolute, so dlt, DuckDB and Spark read the same place."""
    url = os.environ.get(BUCKET_URL_ENV) or DEFAULT_BUCKET
    if "://" in url:
        return url
    return str(Path(url).absolute())


def filesystem() -> tuple[Any, str]:
    """The lake's fsspec filesystem (dlt's, with its credentials) and its root path."""
    fs, root = fsspec_from_config(FilesystemConfiguration(bucket_url()))
    return fs, root.rstrip("/")


def entity_keys(
    endpoints: Mapping[str, Any] | None = None,
) -> dict[str, tuple[str, str, str | None]]:
    """(primary key, cursor, deleted marker) of each declared entity's raw table."""
    declared = endpoints if endpoints is not None else config.endpoints()
    return {
        name: (ep["primary_key"], replica_settings.cursor_of(ep), ep.get("deleted_marker"))
        for name, ep in declared.items()
    }


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def current_versions(files: Iterable[str], key: str, cursor: str, marker: str | None,
                     columns: Iterable[str]) -> str:
    """SQL reading an entity's files as a merge leaves them: the newest version of each
    key (by cursor, then load; a tombstone first among equals), none where that is a
    tombstone. ``columns``: those the files have (a marker never set may be missing)."""
    source = f"read_parquet([{', '.join(_literal(f) for f in files)}], union_by_name = true)"
    have = set(columns)
    order = [f"{_quote(cursor)} desc nulls last"]
    if "_dlt_load_id" in have:
        order.append("_dlt_load_id desc")
    extra, live = "", "true"
    if marker and marker in have:
        order.append(f"{_quote(marker)} is null")
        live = f"{_quote(marker)} is null"
    elif marker:
        extra = f", cast(null as timestamp with time zone) as {_quote(marker)}"
    return (
        f"select * exclude (_salesflow_version){extra} from ("
        f" select *, row_number() over (partition by {_quote(key)} order by"
        f" {', '.join(order)}) as _salesflow_version from {source}"
        f") where _salesflow_version = 1 and {live}"
    )


class LakeSqlClient(DuckDbSqlClient):
    """dlt's DuckDB SQL client on the lake (see the module's docstring): the dataset's
    folders as tables of an in-memory database, the loader's own written back on close."""

    def __init__(self, dataset_name: str, capabilities: Any, read_only: bool = False,
                 endpoints: Mapping[str, Any] | None = None) -> None:
        credentials = DuckDbCredentials(duckdb.connect(":memory:"))
        credentials.resolve()
        super().__init__(dataset_name, f"{dataset_name}_staging", credentials, capabilities)
        self.read_only = read_only
        self._keys = entity_keys(endpoints)
        self._opened: dict[str, str] = {}  # table -> fingerprint when read
        # table -> the files it was read from (and those folded in already, still there)
        self._read: dict[str, list[str]] = {}

    def open_connection(self) -> Any:
        conn = super().open_connection()
        fs, root = filesystem()
        if not _is_local(fs):
            conn.register_filesystem(fs)
        dataset = posixpath.join(root, self.dataset_name)
        conn.execute(f"create schema if not exists {_quote(self.dataset_name)}")
        self._opened, self._read = {}, {}
        for table, files in _folders(fs, dataset).items():
            self._attach(conn, fs, table, files)
        return conn

    def _attach(self, conn: Any, fs: Any, table: str, files: list[str]) -> None:
        name = f"{_quote(self.dataset_name)}.{_quote(table)}"
        urls = [_url(fs, f) for f in files]
        if table in self._keys:  # an entity: dlt's files only, read as a merge leaves them
            key, cursor, marker = self._keys[table]
            columns = [r[0] for r in conn.execute(
                "describe select * from read_parquet(?, union_by_name = true)", [urls]
            ).fetchall()]
            if key in columns and cursor in columns:
                conn.execute(f"create view {name} as "
                             + current_versions(urls, key, cursor, marker, columns))
                return
        # any other table: read whole, the files an earlier write-back folded in left out
        own = [f for f in files if posixpath.basename(f) == OWN_FILE]
        folded = _folded(fs, own[0]) if own else set()
        read = [f for f in files if posixpath.basename(f) not in folded]
        conn.execute(f"create table {name} as select * from read_parquet("
                     f"[{', '.join(_literal(_url(fs, f)) for f in read)}],"
                     " union_by_name = true)")
        self._read[table] = read + [f for f in files if posixpath.basename(f) in folded]
        self._opened[table] = self._fingerprint(conn, name)

    @staticmethod
    def _fingerprint(conn: Any, name: str) -> str:
        [(rows, digest)] = conn.execute(
            f"select count(*), coalesce(sum(hash(t)), 0) from {name} as t"
        ).fetchall()
        columns = conn.execute(f"describe {name}").fetchall()
        return hashlib.sha256(repr((rows, digest, columns)).encode()).hexdigest()

    def close_connection(self) -> None:
        conn = self._conn
        try:
            if conn is not None and not self.read_only:
                self._write_back(conn)
        finally:
            super().close_connection()

    def _write_back(self, conn: Any) -> None:
        """Write each table (not view) that changed, or is new, to its folder as one file
        replacing the files it was read from: written beside, moved over the last one
        written, which names the files it folds in (readers leave those out, so a crash
        before they are removed duplicates nothing); then those are removed. Files dlt
        added to the folder meanwhile are left as they are."""
        tables = [r[0] for r in conn.execute(
            "select table_name from duckdb_tables() where schema_name = ?",
            [self.dataset_name],
        ).fetchall()]
        fs, root = filesystem()
        for table in tables:
            name = f"{_quote(self.dataset_name)}.{_quote(table)}"
            now = self._fingerprint(conn, name)
            if self._opened.get(table) == now:
                continue
            folder = posixpath.join(root, self.dataset_name, table)
            path = posixpath.join(folder, OWN_FILE)
            replaced = [f for f in self._read.get(table, []) if posixpath.basename(f) != OWN_FILE]
            data = _plain(conn.sql(f"select * from {name}").to_arrow_table())
            folds = json.dumps(sorted(posixpath.basename(f) for f in replaced))
            data = data.replace_schema_metadata({**(data.schema.metadata or {}),
                                                 FOLDED_KEY: folds.encode()})
            fs.makedirs(folder, exist_ok=True)
            part = posixpath.join(folder, f".{OWN_FILE}.{os.getpid()}.part")
            with fs.open(part, "wb") as f:
                pq.write_table(data, f)
            fs.mv(part, path)
            for old in replaced:
                fs.rm(old)
            self._read[table] = [path]
            self._opened[table] = now


def _folded(fs: Any, own: str) -> set[str]:
    """The files of its folder that the loader's file ``own`` holds the rows of."""
    with fs.open(own, "rb") as f:
        metadata = pq.read_schema(f).metadata or {}
    return set(json.loads(metadata.get(FOLDED_KEY, b"[]")))


def _plain(data: pa.Table) -> pa.Table:
    """Timestamps kept as microseconds with their zone: what Spark reads as timestamp."""
    fields = []
    for f in data.schema:
        if pa.types.is_timestamp(f.type) and f.type.unit == "ns":
            f = f.with_type(pa.timestamp("us", tz=f.type.tz))
        fields.append(f)
    return data.cast(pa.schema(fields))


def _folders(fs: Any, dataset: str) -> dict[str, list[str]]:
    """The dataset's tables: each folder with parquet files in it, and those files."""
    if not fs.exists(dataset):
        return {}
    out: dict[str, list[str]] = {}
    for entry in fs.ls(dataset, detail=True):
        if entry["type"] != "directory":
            continue
        files = sorted(f["name"] for f in fs.ls(entry["name"], detail=True)
                       if f["type"] == "file" and f["name"].endswith(".parquet"))
        if files:
            out[posixpath.basename(entry["name"].rstrip("/"))] = files
    return out


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _is_local(fs: Any) -> bool:
    return bool({"file", "local"} & set(_protocols(fs)))


def _url(fs: Any, path: str) -> str:
    """A path of the lake as DuckDB reads it (with its scheme for remote storage)."""
    return path if _is_local(fs) else f"{_protocols(fs)[0]}://{path}"
