"""Publication of the marts for analysts: a read-only DuckDB file, swapped atomically.

DuckDB admits one writing process per file and locks readers of other processes out
while it writes, so analysts never query the working warehouse. After every successful
build the marts are copied into ``data/published/analytics.duckdb``
(``SALESFLOW_PUBLISHED_PATH``), schema ``marts``:
the new version is written beside it under another name, checkpointed, and renamed
over the old one in one step (``os.replace``). Hence:

* a reader is never blocked by the pipeline: it opens a different file;
* a reader never sees a half-built mart: a file is complete before it is visible;
* a connection keeps reading the version it opened (the old file stays readable until
  it is closed); reconnect to see the latest. ``marts._published`` says which version a
  connection sees (when, and the cycle behind it).

The version being written is opened with the warehouse attached read-only; when this
process holds the warehouse open (``watch``, :func:`loaders.warehouse.kept_open`), DuckDB
refuses that attachment, and the version is attached to the warehouse's connection
instead (``through``): the same statements, from the other side.

A new version starts from an earlier one rather than from nothing. The versions before
the current one are kept beside it, a pool of **spares** (``analytics.duckdb.spare.<n>``,
``n`` numbering the versions, the newest highest): the newest spare no one has open
(DuckDB locks a file for its readers too) is brought up to date in place and renamed
over the current version, which joins the pool in turn — no copy of the file each cycle.
A reader keeping a connection (a BI tool's pool, an analyst's session) holds one version:
while fewer versions are held than the pool keeps, a publication still finds a free
spare. Only when every spare is held is the current version copied instead, and only
the marts the cycle rebuilt refreshed, the others carried over. The pool keeps the
``spares`` newest; older ones are deleted once no one has them open (a held one is left
to a later publication): on disk, the pool and the current version, plus the versions
readers hold. A whole publication (every mart copied: a first build, a full refresh)
deletes the pool, held spares too (their readers keep them): a mart may have changed
there beyond what its load ids tell. ``Published.route`` says how a version was made.

A spare some publications behind has every mart refreshed, so it ends equal to a copy:
non-refreshable marts copied whole, refreshable ones key by key from the newest load id
each holds, marts gone from dbt dropped. A rebuilt mart whose every change carries a
newer dlt load id (``last_load_id``; the marts named in ``by_load_id`` with their key: a
row's, or a period's for the sales aggregates) is refreshed key by key: the keys with a
row loaded after the newest load id that version holds take the warehouse's rows, and
keys the mart removed since (its log ``removed.<mart>__removed``) are deleted — so a
cycle publishes in proportion to what changed, not to the size of the mart. Such a mart
is copied whole when much of it changed (``WHOLE_SHARE`` of its keys or ``WHOLE_KEYS``:
a large delete in one transaction holds every deleted row in memory). Keys gone some
other way are found by comparing whole tables, only when the row counts differ
(``Published.swept``). Other marts are copied whole. Views (``pipeline_health``,
``mart_status``) are published as tables frozen at publication time, refreshed by every
publication.

Marts **held back** (``hold``: a failing build or test reaches them, see
:mod:`loaders.runners.holds`) are never taken from the warehouse: they keep the version
analysts have (their last good one), or stay absent if they were never published. Such
a publication starts from a copy of the current version, never from a spare (behind,
it would bring a held mart's older version back); ``marts._published`` lists them
(``held_back_tables``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from loaders.dbt_project import MARTS_SCHEMA, REMOVED_SCHEMA
from loaders.warehouse import quote_identifier, quote_literal

log = logging.getLogger(__name__)

SCHEMA = MARTS_SCHEMA
LOAD_ID = "last_load_id"
SPARES = 3  # spare versions kept beside the published one
# a mart refreshable key by key is copied whole when more than this share of its keys,
# or more than WHOLE_KEYS of them, changed since the version being brought up to date;
# never below SMALL_KEYS changed keys
WHOLE_SHARE, WHOLE_KEYS, SMALL_KEYS = 0.2, 1_000_000, 10_000
BY_KEY, WHOLE, SWEPT = "by key", "whole", "swept"  # how a mart was refreshed
# bounded like the loader's and dbt's DuckDB: copying a large mart whole spills to disk
# instead of growing the process (DuckDB's default is most of the machine's memory). As
# much as dbt's builds get: a publication through the warehouse's database (``through``)
# shares it with the warehouse's cached blocks and the rows not yet checkpointed
MEMORY_LIMIT = os.environ.get("SALESFLOW_PUBLISH_MEMORY_LIMIT", "1GB")


def published_path() -> Path:
    return Path(os.environ.get("SALESFLOW_PUBLISHED_PATH", "data/published/analytics.duckdb"))


@dataclass
class Published:
    path: Path
    tables: list[str]  # copied whole in this publication
    carried: list[str]  # carried over unchanged
    updated: dict[str, int]  # refreshed row by row: rows written
    seconds: float
    in_place: bool = False  # brought a spare version up to date instead of a copy
    held: tuple[str, ...] = ()  # held back: left as the previous version had them
    spare: str | None = None  # in place: the spare's file name
    behind: int | None = None  # in place: publications that spare was behind
    copied: bool = False  # started from a copy of the current version
    # refreshed row by row, but keys gone from them were found by comparing whole
    # tables (no removed log told them)
    swept: tuple[str, ...] = ()

    @property
    def route(self) -> str:
        """How this version was made: from a spare (which, how far behind), a copy of
        the current version, or from nothing (a whole publication)."""
        if self.in_place:
            return f"in place: {self.spare}, {self.behind} behind"
        return "copy" if self.copied else "whole"


def by_load_id(manifest: Any) -> dict[str, str]:
    """The marts analysts' copy may refresh row by row (see above), with their unique
    key: as dbt's config says, the incremental marts with one unique key and a
    ``last_load_id`` column (the pattern of the doc block ``incremental_by_load``,
    models/marts/marketing/_marketing__docs.md). ``manifest``: dbt's parsed manifest."""
    return {
        node.name: node.config.unique_key
        for node in manifest.nodes.values()
        if node.resource_type == "model" and node.schema == SCHEMA
        and node.config.materialized == "incremental"
        and isinstance(node.config.unique_key, str)
        and LOAD_ID in node.columns
    }


def publish(
    warehouse: Path,
    target: Path | None = None,
    changed: Iterable[str] | None = None,
    cycle_id: str | None = None,
    by_load_id: Mapping[str, str] | None = None,
    hold: Iterable[str] = (),
    spares: int = SPARES,
    through: duckdb.DuckDBPyConnection | None = None,
) -> Published:
    """Publish the ``marts`` schema of ``warehouse`` to ``target``. ``changed``: the marts
    rebuilt since the last publication (None: all of them, copied whole). ``by_load_id``:
    mart → unique key, for the rebuilt marts that may be refreshed row by row. ``hold``:
    marts left as the current version has them (absent if it has none). ``spares``:
    spare versions kept for the next publications to update in place. ``through``: a
    connection of this process that holds ``warehouse`` open (DuckDB refuses to attach a
    file this process has open as another database): the new version is attached to it
    instead, and the marts copied from there."""
    started = time.perf_counter()
    target = target or published_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, prev = (target.with_name(f"{target.name}.{s}") for s in ("next", "prev"))
    for stale in (tmp, _wal(tmp), prev):
        stale.unlink(missing_ok=True)
    changed_set = None if changed is None else set(changed)
    held = set(hold)
    pool = _pool(target)
    current = pool[0][0] + 1 if pool else 1  # the current version's number
    if changed_set is None:
        # a whole publication: the marts may have changed beyond what load ids tell (a
        # full refresh, new hashes), no earlier version may be refreshed key by key
        for _, spare_file in pool:
            _delete(spare_file)  # a reader holding it keeps reading it
        pool = []
    # from the previous version: the newest spare no one reads (updated in place, a
    # few publications behind, so every mart is brought up to date), else a copy; with
    # marts held back, always a copy (they must stay as analysts have them)
    from_previous = (changed_set is not None or bool(held)) and target.exists()
    opened, spare = None, None
    for version, candidate in pool if from_previous and not held else ():
        opened = _claim(candidate, warehouse, through)
        if opened is not None:
            spare = version, candidate
            break
    from_spare, path = spare is not None, spare[1] if spare is not None else tmp
    if opened is None:
        if from_previous:
            shutil.copyfile(target, tmp)
        opened = _open(tmp, warehouse, through)
    con, wh = opened
    try:
        db = quote_identifier(_scalar(con, "select current_database()"))
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {db}.{SCHEMA}")
        views = {
            r[0]
            for r in con.execute(
                "select view_name from duckdb_views() where database_name = ?"
                " and schema_name = ?", [wh, SCHEMA],
            ).fetchall()
        }
        source = views | {
            r[0]
            for r in con.execute(
                "select table_name from duckdb_tables() where database_name = ?"
                " and schema_name = ?", [wh, SCHEMA],
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
        refresh = sorted(
            t for t in source if t not in held and (
                # views (pipeline_health, mart_status) say "now": refreshed every time
                changed_set is None or from_spare or t in changed_set or t not in present
                or t in views
            )
        )
        by_rows = {
            t: key for t, key in (by_load_id or {}).items()
            if changed_set is not None and t in refresh and t in present
            and _refreshable(con, db, wh, t, key)
        }
        copy = [t for t in refresh if t not in by_rows]
        con.execute("BEGIN")
        for t in copy:
            _copy(con, f"{db}.{SCHEMA}.{quote_identifier(t)}",
                  f"{quote_identifier(wh)}.{SCHEMA}.{quote_identifier(t)}")
        refreshed = {t: _refresh_rows(con, db, wh, t, key) for t, key in by_rows.items()}
        updated = {t: written for t, (written, how) in refreshed.items() if how != WHOLE}
        copy += [t for t, (_, how) in refreshed.items() if how == WHOLE]
        swept = tuple(sorted(t for t, (_, how) in refreshed.items() if how == SWEPT))
        for t in present - source - held - {"_published"}:  # a mart gone from dbt
            con.execute(f"DROP TABLE {db}.{SCHEMA}.{quote_identifier(t)}")
        con.execute(
            f"CREATE OR REPLACE TABLE {db}.{SCHEMA}._published AS SELECT"
            " ?::TIMESTAMPTZ AS published_at, ?::VARCHAR AS cycle_id,"
            " ?::VARCHAR[] AS refreshed_tables, ?::VARCHAR[] AS held_back_tables",
            [datetime.now(timezone.utc), cycle_id, refresh, sorted(held)],
        )
        con.execute("COMMIT")
        _finish(con, wh, through)
    finally:
        con.close()
        if through is not None:  # a version left attached by a failure
            through.execute(f"DETACH DATABASE IF EXISTS {VERSION}")
    # the version being replaced joins the spares: readers may still have it open
    if target.exists() and changed_set is not None:
        try:
            os.link(target, prev)
        except OSError:  # a file system without hard links: no spare, the next one copies
            log.info("no spare publication kept: %s cannot be linked", target)
    os.replace(path, target)
    if prev.exists():
        os.replace(prev, spare_path(target, current))
    _trim(target, spares)
    carried = sorted(set(source) - set(refresh) - held)
    return Published(
        target, copy, carried, updated, time.perf_counter() - started, from_spare,
        tuple(sorted(held)), spare=spare[1].name if spare else None,
        behind=current + 1 - spare[0] if spare else None,
        copied=from_previous and not from_spare, swept=swept,
    )


def spare_path(target: Path, version: int) -> Path:
    """Where the spare holding version ``version`` of ``target`` is kept."""
    return target.with_name(f"{target.name}.spare.{version}")


def _pool(target: Path) -> list[tuple[int, Path]]:
    """The spare versions of ``target`` with their numbers, newest first. A spare named
    before versions were numbered (``.spare``) is the oldest."""
    pattern = re.compile(re.escape(target.name) + r"\.spare(?:\.(\d+))?", re.ASCII)
    spares = []
    for path in target.parent.iterdir():
        if number := pattern.fullmatch(path.name):
            spares.append((int(number[1] or 0), path))
    return sorted(spares, reverse=True)


def _trim(target: Path, keep: int) -> None:
    """Delete the spares beyond the ``keep`` newest that no one has open; a held one
    is left for a later publication to delete."""
    for _, path in _pool(target)[keep:]:
        if not _unopened_here(path):
            continue
        try:
            _connect(path).close()
        except duckdb.Error:  # locked by a reader in another process
            continue
        _delete(path)


def _delete(path: Path) -> None:
    # the log first: a database file left alone is a complete (older) version
    _wal(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _claim(path: Path, warehouse: Path,
           through: duckdb.DuckDBPyConnection | None) -> Opened | None:
    """``path`` opened for writing (see :func:`_open`) when no one has that file open:
    DuckDB locks a file for its readers too (an analyst may still be reading that
    version). None otherwise."""
    if not _unopened_here(path):
        return None
    try:
        return _open(path, warehouse, through)
    except duckdb.Error:  # locked by a reader in another process
        return None


def _unopened_here(path: Path) -> bool:
    """``path`` exists and no connection of this process has it open (DuckDB would hand
    it the database already open, or refuse to attach it)."""
    fds = Path("/proc/self/fd")
    if not path.exists() or not fds.is_dir():
        return False
    file = path.stat()
    for fd in fds.iterdir():
        try:
            opened = fd.stat()
            if (opened.st_dev, opened.st_ino) == (file.st_dev, file.st_ino):
                return False
        except OSError:
            continue
    return True


# the new version's name in a connection that holds the warehouse (``through``)
VERSION = "published_version"


Opened = tuple[duckdb.DuckDBPyConnection, str]


def _open(path: Path, warehouse: Path, through: duckdb.DuckDBPyConnection | None) -> Opened:
    """A connection whose current database is the version at ``path``, with the
    warehouse readable beside it, and the warehouse's name there: the file opened and
    the warehouse attached read-only as ``wh``, or, ``through`` a connection holding the
    warehouse, the file attached to a connection of it (the warehouse keeps its name)."""
    con = _connect(path) if through is None else through.cursor()
    try:
        if through is None:
            con.execute(f"ATTACH {quote_literal(str(warehouse))} AS wh (READ_ONLY)")
            return con, "wh"
        source = str(_scalar(con, "select current_database()"))
        # the database's limit is the last client's (a load's is lower): the
        # publication's own, as when it opens the version itself
        con.execute(f"SET memory_limit = {quote_literal(MEMORY_LIMIT)}")
        con.execute(f"ATTACH {quote_literal(str(path))} AS {VERSION}")
        con.execute(f"USE {VERSION}")
        return con, source
    except BaseException:
        con.close()
        raise


def _finish(con: duckdb.DuckDBPyConnection, source: str, through: Any) -> None:
    """Write the version out whole (checkpointed, no log beside it) and let go of the
    warehouse, or of the version (``through``: attached to the warehouse's connection)."""
    if through is None:
        con.execute("DETACH wh")
        con.execute("CHECKPOINT")
        return
    con.execute(f"USE {quote_identifier(source)}")
    con.execute(f"CHECKPOINT {VERSION}")
    con.execute(f"DETACH {VERSION}")


def _connect(path: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(path), config={"memory_limit": MEMORY_LIMIT})


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The one value a statement answers."""
    row = con.execute(sql, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from: {sql}")
    return row[0]


def _refreshable(con: duckdb.DuckDBPyConnection, db: str, wh: str, table: str,
                 key: str) -> bool:
    """The previous version can be refreshed key by key: same columns and types as in
    the warehouse (a mart whose shape changed is copied whole), with the key and the
    load id among them."""
    def shape(relation: str) -> list[tuple]:
        return [tuple(r[:2]) for r in con.execute(f"DESCRIBE {relation}").fetchall()]

    quoted = quote_identifier(table)
    mine = shape(f"{db}.{SCHEMA}.{quoted}")
    names = {name for name, _ in mine}
    return (key in names and LOAD_ID in names
            and mine == shape(f"{quote_identifier(wh)}.{SCHEMA}.{quoted}"))


def _refresh_rows(
    con: duckdb.DuckDBPyConnection, db: str, wh: str, table: str, key: str
) -> tuple[int, str]:
    """Bring the previous version of ``table`` up to the warehouse's: every ``key`` with
    a row loaded after the newest load id published (a row's key, or a period's), or
    removed since (the mart's removed log, ``removed.<mart>__removed``), is replaced by the
    warehouse's rows of that key, if any; when much of the mart changed (``WHOLE_*``)
    it is copied whole instead. Keys gone from the warehouse some other way are deleted
    too, looked for only when the row counts say some are (a version older than the log
    keeps). Returns rows written, and how (``BY_KEY``, ``WHOLE``, ``SWEPT``: that
    comparison ran)."""
    quoted = quote_identifier(table)
    source = quote_identifier(wh)
    mine, theirs = f"{db}.{SCHEMA}.{quoted}", f"{source}.{SCHEMA}.{quoted}"
    k, lid = quote_identifier(key), quote_identifier(LOAD_ID)
    # loads after the newest one the version holds: that one was built whole before
    # the version was published (a DuckDB file: no build sees a load half done)
    since = _newest_load_id(con, mine)
    changed = f"SELECT {k} FROM {theirs} WHERE {lid} > $since"
    removed = f"{table}__removed"
    if con.execute(
        "SELECT 1 FROM duckdb_tables() WHERE database_name = ? AND schema_name = ?"
        " AND table_name = ?", [wh, REMOVED_SCHEMA, removed],
    ).fetchone():
        changed += (
            f" UNION SELECT {k} FROM {source}.{REMOVED_SCHEMA}.{quote_identifier(removed)}"
            " WHERE removed_load_id > $since"
        )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _changed AS SELECT DISTINCT {k} FROM ({changed})",
        {"since": since},
    )
    count_theirs = _scalar(con, f"SELECT count(*) FROM {theirs}")
    keys = _scalar(con, "SELECT count(*) FROM _changed")
    if keys > SMALL_KEYS and (keys > WHOLE_SHARE * count_theirs or keys > WHOLE_KEYS):
        # most of the mart changed (a backfill's last load, a rebuilt history): a copy
        # is cheaper, and deleting millions of rows in one transaction would hold
        # them all in memory
        _copy(con, mine, theirs)
        con.execute("DROP TABLE _changed")
        return count_theirs, WHOLE
    con.execute(f"DELETE FROM {mine} WHERE {k} IN (SELECT {k} FROM _changed)")
    written = _scalar(
        con, f"INSERT INTO {mine} BY NAME SELECT * FROM {theirs}"
        f" WHERE {k} IN (SELECT {k} FROM _changed)"
    )
    con.execute("DROP TABLE _changed")
    # every key of the warehouse is now here (unchanged ones were already): a count
    # above the warehouse's means keys it no longer has, which no log named
    if _scalar(con, f"SELECT count(*) FROM {mine}") != count_theirs:
        con.execute(f"DELETE FROM {mine} WHERE {k} NOT IN (SELECT {k} FROM {theirs})")
        return written, SWEPT
    return written, BY_KEY


# how far back a version's newest load id is looked for first, in seconds (load ids are
# epoch seconds as text): a filter the scan skips older blocks by (as dbt's macro
# recent_load_id_bounds does for the marts themselves)
RECENT_LOADS_S = (600, 86400, 7 * 86400)


def _newest_load_id(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """The newest load id in ``table`` ('' when none): looked for among recent load ids
    first, the first range with a row holding the maximum, then over the whole column
    (a scan that grows with the mart, once per mart and publication otherwise)."""
    lid = quote_identifier(LOAD_ID)
    now = time.time()
    for seconds in RECENT_LOADS_S:
        newest = _scalar(con, f"SELECT max({lid}) FROM {table} WHERE {lid} >= ?",
                         [f"{now - seconds:.6f}"])
        if newest is not None:
            return str(newest)
    return str(_scalar(con, f"SELECT coalesce(max({lid}), '') FROM {table}"))


def _copy(con: duckdb.DuckDBPyConnection, mine: str, theirs: str) -> None:
    con.execute(f"CREATE OR REPLACE TABLE {mine} AS SELECT * FROM {theirs}")
