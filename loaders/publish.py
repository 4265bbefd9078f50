"""Publication of the marts for analysts: a read-only DuckDB file, swapped atomically.

DuckDB admits one writing process per file and locks readers of other processes out
while it writes, so analysts never query the working warehouse. After every successful
build the marts are copied into ``data/published/analytics.duckdb``
(``SALESFLOW_PUBLISHED_PATH``), schema ``marts``:
the new version is written beside it under a temporary name, checkpointed, and renamed
over the old one in one step (``os.replace``). Hence:

* a reader is never blocked by the pipeline: it opens a different file;
* a reader never sees a half-built mart: a file is complete before it is visible;
* a connection keeps reading the version it opened (the old file stays readable until
  it is closed); reconnect to see the latest. ``marts._published`` says which version a
  connection sees (when, and the cycle behind it).

Only the marts a cycle rebuilt are copied again; the others are carried over from the
previous version with a file copy. Views (``pipeline_health``) are published as tables
frozen at publication time.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

SCHEMA = "marts"


def published_path() -> Path:
    return Path(os.environ.get("SALESFLOW_PUBLISHED_PATH", "data/published/analytics.duckdb"))


@dataclass
class Published:
    path: Path
    tables: list[str]  # copied in this publication
    carried: list[str]  # carried over unchanged
    seconds: float


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def publish(
    warehouse: Path,
    target: Path | None = None,
    changed: Iterable[str] | None = None,
    cycle_id: str | None = None,
) -> Published:
    """Publish the ``marts`` schema of ``warehouse`` to ``target``. ``changed``: the marts
    rebuilt since the last publication (None: all of them)."""
    started = time.perf_counter()
    target = target or published_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".next")
    for stale in (tmp, tmp.with_name(tmp.name + ".wal")):
        stale.unlink(missing_ok=True)
    changed_set = None if changed is None else set(changed)
    if changed_set is not None and target.exists():
        shutil.copyfile(target, tmp)  # start from the previous version
    con = duckdb.connect(str(tmp))
    try:
        con.execute(f"ATTACH {_literal(str(warehouse))} AS wh (READ_ONLY)")
        db = _quote(con.execute("select current_database()").fetchone()[0])
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {db}.{SCHEMA}")
        source = {
            r[0]
            for r in con.execute(
                "select table_name from duckdb_tables() where database_name = 'wh'"
                " and schema_name = ? union select view_name from duckdb_views()"
                " where database_name = 'wh' and schema_name = ?",
                [SCHEMA, SCHEMA],
            ).fetchall()
        }
        present = {
            r[0]
            for r in con.execute(
                "select table_name from duckdb_tables()"
                " where database_name = current_database() and schema_name = ?",
                [SCHEMA],
            ).fetchall()
        }
        copy = sorted(
            t for t in source
            # pipeline_health is a view of "now": refreshed with every publication
            if changed_set is None or t in changed_set or t not in present
            or t == "pipeline_health"
        )
        con.execute("BEGIN")
        for t in copy:
            con.execute(
                f"CREATE OR REPLACE TABLE {db}.{SCHEMA}.{_quote(t)} AS"
                f" SELECT * FROM wh.{SCHEMA}.{_quote(t)}"
            )
        for t in present - source - {"_published"}:  # a mart that no longer exists
            con.execute(f"DROP TABLE {db}.{SCHEMA}.{_quote(t)}")
        con.execute(
            f"CREATE OR REPLACE TABLE {db}.{SCHEMA}._published AS SELECT"
            " ?::TIMESTAMPTZ AS published_at, ?::VARCHAR AS cycle_id,"
            " ?::VARCHAR[] AS refreshed_tables",
            [datetime.now(timezone.utc), cycle_id, copy],
        )
        con.execute("COMMIT")
        con.execute("DETACH wh")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, target)
    carried = sorted(set(source) - set(copy))
    return Published(target, copy, carried, time.perf_counter() - started)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
