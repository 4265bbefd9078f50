"""The platform's production database and its read replica.

Both are SQLite files in WAL mode inside the simulator's directory:

* ``production.db`` is written only by the platform (bulk generation, live traffic,
  schema evolutions). Every write transaction takes the next sequence number (like a
  log sequence number), stamps it on every row it writes (``_seq``) and records it in
  ``txlog`` with its commit time. Schema changes are recorded in ``txlog`` too.
  A **late commit** (a long transaction) is written at once but committed later: its rows
  carry its start time as ``updated_at`` and a provisional negative ``_seq`` (``-txid``,
  listed in ``pending_commits`` with the time it commits), and only at its commit take
  the next sequence number and their ``txlog`` entry. So sequence numbers follow commit
  order, as a log sequence number does, and a row's ``updated_at`` may be older than rows
  committed before it: the lateness a loader on ``updated_at`` has to tolerate.
* ``replica.db`` is what the replica API reads. :func:`replicate` replays production's
  log onto it in sequence order, applying only transactions committed at least
  ``lag`` seconds ago: a real replica lag, not a filter on reads.

Deleted rows are removed from the entity table and recorded in ``deletions``; the API
serves them as tombstones.

The replica also keeps each entity's **feed** (``feed_<entity>``): every live row and
tombstone rendered as the API serves it (a JSON record), in the listing's keyset order
``(updated_at, key)`` or in commit order (``seq``, the sequence number of the commit that
wrote it, for ``since_seq``), with its live rows and tombstones apart as ``live_<entity>``
and ``dead_<entity>``. The replica keeps it one of two ways (:data:`FEED_STORAGES`,
chosen when the history is generated, recorded in ``feed_storage``):

* **stored** (the default): every record rendered once, when replication writes its row,
  kept in a table clustered on the listing's order, so a page is one range scan of
  ready records, as with a platform that keeps its API's records ready (an outbox or a
  serving cache). The price is disk: each record is held twice, in its columns and as
  JSON; a schema change that alters how an entity renders rebuilds its feed.
* **views**: the entity's table read through its own ``(updated_at, key)`` and ``_seq``
  indexes and rendered by ``json_object`` as it is read, the tombstones a small table
  keyed as the listing orders them (``tomb_<entity>``), the two merged in order by
  SQLite. Each record is held once and a schema change only makes the views again; the
  price is rendering each record served and a lookup from index to row: the way a
  history too large for the disk twice is served.

The API reads the same relations either way and serves the same bytes.

A row replicated over an older version leaves that version's position behind in
``superseded_<entity>`` (position only, no record), read from the replica before the
row is replaced: in commit order the feed and these together only ever grow at the end, so a
listing paged by offset or page number counts positions that never move, whatever the
platform writes meanwhile (see :mod:`simulator.api`). The price: one small row per
replaced version, kept for good.

May import ``model`` only.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from simulator.model import ENTITIES, create_table_sql, fields_at

PRODUCTION = "production.db"
REPLICA = "replica.db"
# how the replica keeps its feeds: records stored once rendered, or views over the tables
FEED_STORAGE = "feed_storage"
STORED, VIEWS = "stored", "views"
FEED_STORAGES = (STORED, VIEWS)

# late commits written but not committed yet (see Production.tx)
PENDING_DDL = (
    "CREATE TABLE IF NOT EXISTS pending_commits (txid INTEGER PRIMARY KEY,"
    " started_at TEXT NOT NULL, commit_at TEXT NOT NULL)"
)
SYSTEM_DDL = (
    "CREATE TABLE IF NOT EXISTS txlog (seq INTEGER PRIMARY KEY, committed_at TEXT NOT NULL,"
    " ddl TEXT)",
    "CREATE TABLE IF NOT EXISTS deletions (deletion_id INTEGER PRIMARY KEY, entity TEXT NOT NULL,"
    " record_id TEXT NOT NULL, deleted_at TEXT NOT NULL, _seq INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS evolutions (name TEXT PRIMARY KEY, announced_at TEXT NOT NULL,"
    " effective_at TEXT NOT NULL, applied_at TEXT, _seq INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    PENDING_DDL,
)
# tables replicated row by row (by _seq)
REPLICATED = (*ENTITIES, "deletions", "evolutions")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    """The platform's timestamp format: ISO-8601 UTC, microseconds, trailing Z."""
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# address space, not memory (pages read stay in the page cache, shared and reclaimable):
# as much of the file as SQLite maps at most (its build's limit, 2 GB in common builds)
MMAP_BYTES = 1 << 34


def connect(path: Path | str, readonly: bool = False) -> sqlite3.Connection:
    """Open a platform database in WAL mode, waiting (not failing) on a busy writer."""
    if readonly:
        con = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False
        )
    else:
        con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA busy_timeout=30000")
    # read pages through a memory map, not a read() call and a copy per page: large
    # listings are index range scans that touch many pages
    con.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    return con


def indexes_sql(entity: str) -> list[str]:
    pk = ENTITIES[entity].primary_key
    return [
        f"CREATE INDEX IF NOT EXISTS ix_{entity}_cursor ON {entity} (updated_at, {pk})",
        f"CREATE INDEX IF NOT EXISTS ix_{entity}_seq ON {entity} (_seq)",
    ]


def create_schema(con: sqlite3.Connection, with_indexes: bool = True) -> None:
    for ddl in SYSTEM_DDL:
        con.execute(ddl)
    for entity in ENTITIES:
        con.execute(create_table_sql(entity))
        if with_indexes:
            for ddl in indexes_sql(entity):
                con.execute(ddl)
    con.execute("CREATE INDEX IF NOT EXISTS ix_deletions_seq ON deletions (_seq)")
    con.execute(
        "CREATE INDEX IF NOT EXISTS ix_deletions_cursor ON deletions (entity, deleted_at,"
        " deletion_id)"
    )


class Production:
    """Write access to the production database: every write goes through :meth:`tx`."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self.path = self.dir / PRODUCTION
        if not self.path.exists():
            raise FileNotFoundError(
                f"no platform database at {self.path}: run `salesflow sim generate` first"
            )
        self.con = connect(self.path)
        self.con.execute(PENDING_DDL)  # a database generated before late commits existed

    def close(self) -> None:
        self.con.close()

    @contextmanager
    def tx(
        self, ddl: str | None = None, commit_in: float = 0.0
    ) -> Iterator[tuple[sqlite3.Connection, int]]:
        """A write transaction with its sequence number; rows written must carry it.

        ``commit_in`` > 0: a late commit. The rows are written now and carry a provisional
        sequence number (negative, the transaction's id in ``pending_commits``); the
        transaction commits — takes its sequence number and its ``txlog`` entry, and so
        may be replicated — ``commit_in`` seconds later, at :meth:`commit_due`."""
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            if commit_in > 0:
                if ddl is not None:
                    raise ValueError("a schema change commits at once, never late")
                txid = con.execute(
                    "SELECT coalesce(max(txid), 0) + 1 FROM pending_commits"
                ).fetchone()[0]
                started = utcnow()
                yield con, -txid
                con.execute(
                    "INSERT INTO pending_commits (txid, started_at, commit_at) VALUES (?, ?, ?)",
                    (txid, iso(started), iso(started + timedelta(seconds=commit_in))),
                )
                con.execute("COMMIT")
                return
            seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM txlog").fetchone()[0]
            yield con, seq
            con.execute(
                "INSERT INTO txlog (seq, committed_at, ddl) VALUES (?, ?, ?)",
                (seq, iso(utcnow()), ddl),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def commit_due(self, everything: bool = False) -> list[int]:
        """Commit the late transactions whose time has come (``everything``: all of them),
        in the order of their commit times, each taking the next sequence number. Returns
        the ids of the transactions committed."""
        now = iso(utcnow())
        due = self.con.execute(
            "SELECT txid FROM pending_commits WHERE ? OR commit_at <= ? ORDER BY commit_at, txid",
            (int(everything), now),
        ).fetchall()
        for (txid,) in due:
            con = self.con
            con.execute("BEGIN IMMEDIATE")
            try:
                seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM txlog").fetchone()[0]
                for table in REPLICATED:
                    con.execute(f"UPDATE {table} SET _seq = ? WHERE _seq = ?", (seq, -txid))
                con.execute(
                    "INSERT INTO txlog (seq, committed_at, ddl) VALUES (?, ?, NULL)",
                    (seq, iso(utcnow())),
                )
                con.execute("DELETE FROM pending_commits WHERE txid = ?", (txid,))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return [txid for (txid,) in due]

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, con: sqlite3.Connection, key: str, value: object) -> None:
        con.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )

    def columns(self, table: str) -> list[str]:
        return [r[1] for r in self.con.execute(f"PRAGMA table_info({table})")]


def create_replica(directory: Path | str, feed: str = STORED) -> None:
    """Start the replica as a copy of production (used after bulk generation), its feeds
    kept as ``feed`` says (:data:`FEED_STORAGES`)."""
    d = Path(directory)
    con = connect(d / PRODUCTION)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    last = con.execute("SELECT coalesce(max(seq), 0) FROM txlog").fetchone()[0]
    con.close()
    tmp = d / (REPLICA + ".tmp")
    shutil.copyfile(d / PRODUCTION, tmp)
    # a file of its own until it is complete: no journal while building it
    rcon = sqlite3.connect(tmp, isolation_level=None)
    rcon.execute("PRAGMA journal_mode=OFF")
    rcon.execute("PRAGMA synchronous=OFF")
    rcon.execute("BEGIN")
    rcon.execute("CREATE TABLE IF NOT EXISTS replication_state (last_seq INTEGER NOT NULL)")
    rcon.execute("DELETE FROM replication_state")
    rcon.execute("INSERT INTO replication_state VALUES (?)", (last,))
    set_feed_storage(rcon, feed)
    sync_feeds(rcon, rebuild=True)
    rcon.execute("COMMIT")
    rcon.execute("PRAGMA journal_mode=WAL")
    rcon.close()
    for suffix in ("", "-wal", "-shm"):
        p = d / (REPLICA + suffix)
        if p.exists():
            p.unlink()
    os.replace(tmp, d / REPLICA)
    for suffix in ("-wal", "-shm"):
        p = Path(str(tmp) + suffix)
        if p.exists():
            p.unlink()


def replicate(
    directory: Path | str, lag: float = 0.0, con: sqlite3.Connection | None = None
) -> int:
    """Apply to the replica every production transaction committed ``lag`` seconds ago or
    earlier, in sequence order, schema changes included. Returns the last applied seq."""
    d = Path(directory)
    own = con is None
    if con is None:
        con = connect(d / REPLICA)
    try:
        attached = {r[1] for r in con.execute("PRAGMA database_list")}
        if "p" not in attached:
            con.execute("ATTACH DATABASE ? AS p", (str(d / PRODUCTION),))
        # the replica's position is read inside the write transaction: two replicators
        # (the platform and a one-off `sim evolve`) never replay the same changes twice
        con.execute("BEGIN IMMEDIATE")
        try:
            last = _replicate_due(con, lag)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return last
    finally:
        if own:
            con.close()


def _replicate_due(con: sqlite3.Connection, lag: float) -> int:
    last = con.execute("SELECT last_seq FROM replication_state").fetchone()[0]
    horizon = iso(utcnow() - timedelta(seconds=lag))
    upto = con.execute(
        "SELECT max(seq) FROM p.txlog WHERE seq > ? AND committed_at <= ?", (last, horizon)
    ).fetchone()[0]
    if upto is None:
        sync_feeds(con)  # a replica written before it had feeds gets them here
        return last
    # Rows are copied as production holds them now, i.e. in its newest shape: so the
    # replica takes every schema change before copying rows, and a schema change that
    # is committed but not due yet holds replication back until it is due.
    if con.execute(
        "SELECT 1 FROM p.txlog WHERE seq > ? AND ddl IS NOT NULL LIMIT 1", (upto,)
    ).fetchone():
        sync_feeds(con)
        return last
    ddls = con.execute(
        "SELECT ddl FROM p.txlog WHERE seq > ? AND seq <= ? AND ddl IS NOT NULL ORDER BY seq",
        (last, upto),
    ).fetchall()
    if ddls:
        drop_feed_views(con)
    for (ddl,) in ddls:
        for statement in json.loads(ddl):
            con.execute(statement)
    if feed_storage(con) == VIEWS:  # a stored feed keeps its own superseded positions
        supersede(con, last, upto)
    _copy_rows(con, last, upto)
    sync_feeds(con, last, upto)
    con.execute("UPDATE replication_state SET last_seq = ?", (upto,))
    return upto


def _copy_rows(con: sqlite3.Connection, lo: int, hi: int) -> None:
    if hi <= lo:
        return
    for table in REPLICATED:
        con.execute(
            f"INSERT OR REPLACE INTO main.{table} SELECT * FROM p.{table}"
            " WHERE _seq > ? AND _seq <= ?",
            (lo, hi),
        )
    for entity, record_id in con.execute(
        "SELECT entity, record_id FROM p.deletions WHERE _seq > ? AND _seq <= ?", (lo, hi)
    ).fetchall():
        con.execute(*delete_sql(entity, record_id, schema="main"))


def delete_sql(entity: str, record_id: str, schema: str = "main") -> tuple[str, tuple]:
    """The statement that deletes one record by its id as stored in ``deletions``."""
    e = ENTITIES[entity]
    key: object = int(record_id) if _key_type(entity) == "INTEGER" else record_id
    return f"DELETE FROM {schema}.{entity} WHERE {e.primary_key} = ?", (key,)


# -- the feed ---------------------------------------------------------------------------

FEED_SHAPES = "feed_shapes"


def feed_storage(con: sqlite3.Connection) -> str:
    """How the replica on ``con`` keeps its feeds (stored when never said)."""
    if _kind(con, FEED_STORAGE) != "table":
        return STORED
    row = con.execute(f"SELECT mode FROM main.{FEED_STORAGE}").fetchone()
    return row[0] if row else STORED


def set_feed_storage(con: sqlite3.Connection, mode: str) -> None:
    """Say how the replica on ``con`` keeps its feeds; :func:`sync_feeds` makes them so."""
    if mode not in FEED_STORAGES:
        raise ValueError(f"feed storage must be one of {', '.join(FEED_STORAGES)}, not {mode!r}")
    con.execute(f"CREATE TABLE IF NOT EXISTS main.{FEED_STORAGE} (mode TEXT NOT NULL)")
    con.execute(f"DELETE FROM main.{FEED_STORAGE}")
    con.execute(f"INSERT INTO main.{FEED_STORAGE} VALUES (?)", (mode,))


def feed_table(entity: str) -> str:
    return f"feed_{entity}"


def superseded_table(entity: str) -> str:
    return f"superseded_{entity}"


def _key_type(entity: str) -> str:
    e = ENTITIES[entity]
    return "INTEGER" if e.field(e.primary_key).type == "integer" else "TEXT"


def _tombstone_key(entity: str) -> str:
    """A tombstone's key, typed as the entity's key (``deletions`` keeps it as text)."""
    return "CAST(record_id AS INTEGER)" if _key_type(entity) == "INTEGER" else "record_id"


def applied_evolutions(con: sqlite3.Connection) -> list[str]:
    """The schema changes applied to the database of ``con`` (its main schema), in order."""
    return [
        r[0]
        for r in con.execute(
            "SELECT name FROM main.evolutions WHERE applied_at IS NOT NULL ORDER BY applied_at"
        )
    ]


def record_sql(con: sqlite3.Connection, entity: str, applied: list[str]) -> str:
    """The SQL expression rendering a row of ``entity`` as the API's JSON record, for the
    replica's columns as they stand on ``con`` and the schema changes ``applied``: every
    column but ``_seq``, booleans as ``true``/``false`` (SQLite stores them as 0/1)."""
    types = {f.name: f.type for f in fields_at(entity, applied)}
    parts = []
    for (column,) in con.execute(
        "SELECT name FROM pragma_table_info(?, 'main') WHERE name != '_seq' ORDER BY cid",
        (entity,),
    ):
        if types.get(column) == "boolean":
            parts.append(
                f"'{column}', json(CASE WHEN {column} IS NULL THEN 'null' WHEN {column}"
                " THEN 'true' ELSE 'false' END)"
            )
        else:
            parts.append(f"'{column}', {column}")
    return f"json_object({', '.join(parts)})"


def _tombstone_sql(entity: str) -> str:
    pk, key = ENTITIES[entity].primary_key, _tombstone_key(entity)
    return f"json_object('{pk}', {key}, 'updated_at', deleted_at, 'deleted_at', deleted_at)"


def tomb_table(entity: str) -> str:
    return f"tomb_{entity}"


def live_view(entity: str) -> str:
    return f"live_{entity}"


def dead_view(entity: str) -> str:
    return f"dead_{entity}"


def _create_tombs(con: sqlite3.Connection, entity: str) -> None:
    # an entity's tombstones keyed as the listing orders them (``deletions`` keeps keys
    # as text, whose order is not the key's): (updated_at, key), and in commit order
    con.execute(
        f"CREATE TABLE IF NOT EXISTS main.{tomb_table(entity)} (updated_at TEXT NOT NULL,"
        f" k {_key_type(entity)} NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (updated_at, k))"
        " WITHOUT ROWID"
    )
    con.execute(
        f"CREATE INDEX IF NOT EXISTS main.ix_{tomb_table(entity)}_seq"
        f" ON {tomb_table(entity)} (seq, k)"
    )


def _create_superseded(con: sqlite3.Connection, entity: str) -> None:
    # the feed's positions in commit order, of the versions replaced since
    con.execute(
        f"CREATE TABLE IF NOT EXISTS main.{superseded_table(entity)} (seq INTEGER NOT NULL,"
        f" k {_key_type(entity)} NOT NULL, dead INTEGER NOT NULL, updated_at TEXT NOT NULL,"
        " PRIMARY KEY (seq, k, dead)) WITHOUT ROWID"
    )


def _create_feed_views(con: sqlite3.Connection, entity: str, record: str) -> None:
    """The entity's feed as views: its rows rendered (``live_``, read through the
    table's ``(updated_at, key)`` and ``_seq`` indexes), its tombstones rendered
    (``dead_``), and the two merged (``feed_``) in either order."""
    pk = ENTITIES[entity].primary_key
    live, dead, feed = live_view(entity), dead_view(entity), feed_table(entity)
    _drop_views(con, entity)
    con.execute(
        f"CREATE VIEW main.{live} AS SELECT updated_at, {pk} AS k, 0 AS dead,"
        f" {record} AS record, _seq AS seq FROM main.{entity}"
    )
    con.execute(
        f"CREATE VIEW main.{dead} AS SELECT updated_at, k, 1 AS dead,"
        f" json_object('{pk}', k, 'updated_at', updated_at, 'deleted_at', updated_at)"
        f" AS record, seq FROM main.{tomb_table(entity)}"
    )
    con.execute(
        f"CREATE VIEW main.{feed} AS SELECT updated_at, k, dead, record, seq FROM {live}"
        f" UNION ALL SELECT updated_at, k, dead, record, seq FROM {dead}"
    )
    con.execute(
        f"INSERT OR REPLACE INTO main.{FEED_SHAPES} (entity, record_sql) VALUES (?, ?)",
        (entity, record),
    )


def _changed_keys(entity: str, schema: str) -> str:
    """The keys of ``entity`` that rows and deletions of ``schema`` with sequence numbers
    in ``(?, ?]`` write (parameters: lo, hi, entity, lo, hi)."""
    pk = ENTITIES[entity].primary_key
    return (
        f"SELECT {pk} FROM {schema}.{entity} WHERE _seq > ? AND _seq <= ?"
        f" UNION ALL SELECT {_tombstone_key(entity)} FROM {schema}.deletions"
        " WHERE entity = ? AND _seq > ? AND _seq <= ?"
    )


def supersede(con: sqlite3.Connection, lo: int, hi: int) -> None:
    """Keep the positions of the rows that production's rows and deletions with sequence
    numbers in ``(lo, hi]`` replace, before they are copied over (rows being the feed's
    live entries, the versions replaced are read from the replica's tables)."""
    if hi <= lo:
        return
    for entity in ENTITIES:
        _create_superseded(con, entity)
        pk = ENTITIES[entity].primary_key
        con.execute(
            f"INSERT OR IGNORE INTO main.{superseded_table(entity)}"
            f" SELECT _seq, {pk}, 0, updated_at FROM main.{entity}"
            f" WHERE _seq <= ? AND {pk} IN ({_changed_keys(entity, 'p')})",
            (lo, lo, hi, entity, lo, hi),
        )


def _add_tombs(con: sqlite3.Connection, entity: str, lo: int | None, hi: int | None) -> None:
    """Key the tombstones of ``entity`` replicated in ``(lo, hi]`` (all: ``lo`` None)."""
    where = "entity = ?"
    args: list[object] = [entity]
    if lo is not None:
        where += " AND _seq > ? AND _seq <= ?"
        args += [lo, hi]
    if ENTITIES[entity].deletable:  # the API lists tombstones of these
        con.execute(
            f"INSERT OR REPLACE INTO main.{tomb_table(entity)}"
            f" SELECT deleted_at, {_tombstone_key(entity)}, _seq FROM main.deletions"
            f" WHERE {where} ORDER BY deletion_id",
            args,
        )


def _kind(con: sqlite3.Connection, name: str) -> str | None:
    row = con.execute("SELECT type FROM main.sqlite_schema WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def drop_feed_views(con: sqlite3.Connection) -> None:
    """Drop the feeds' views (a schema change may not drop or rename a column a view
    reads); :func:`sync_feeds` makes them again."""
    for entity in ENTITIES:
        _drop_views(con, entity)


def _drop_views(con: sqlite3.Connection, entity: str) -> None:
    """Drop the entity's feed views: ``live_``, ``dead_``, and ``feed_`` when it is
    one (a stored feed's table stays)."""
    for view in (feed_table(entity), live_view(entity), dead_view(entity)):
        if _kind(con, view) == "view":
            con.execute(f"DROP VIEW main.{view}")


# -- feeds stored: every record rendered once, kept in a table ---------------------------

def _create_feed_table(con: sqlite3.Connection, entity: str) -> None:
    feed = feed_table(entity)
    # clustered on the listing's order: a page is a contiguous range of the table
    con.execute(
        f"CREATE TABLE IF NOT EXISTS main.{feed} (updated_at TEXT NOT NULL,"
        f" k {_key_type(entity)} NOT NULL, dead INTEGER NOT NULL, record TEXT NOT NULL,"
        " seq INTEGER NOT NULL, PRIMARY KEY (updated_at, k, dead)) WITHOUT ROWID"
    )
    con.execute(f"CREATE INDEX IF NOT EXISTS main.ix_{feed}_k ON {feed} (k)")
    # the listing in commit order: a range of this index, then the record by its key
    con.execute(f"CREATE INDEX IF NOT EXISTS main.ix_{feed}_seq ON {feed} (seq, k, dead)")


def _create_stored_views(con: sqlite3.Connection, entity: str) -> None:
    """The live rows and the tombstones of a stored feed, as the views feeds have."""
    feed = feed_table(entity)
    _drop_views(con, entity)
    for view, dead in ((live_view(entity), 0), (dead_view(entity), 1)):
        con.execute(
            f"CREATE VIEW main.{view} AS SELECT updated_at, k, dead, record, seq"
            f" FROM main.{feed} WHERE dead = {dead}"
        )


def _supersede_stored(con: sqlite3.Connection, entity: str, lo: int, hi: int) -> None:
    """Keep the positions of the live feed entries that the rows and deletions replicated
    with sequence numbers in ``(lo, hi]`` replace, before they leave the feed."""
    con.execute(
        f"INSERT OR IGNORE INTO main.{superseded_table(entity)}"
        f" SELECT seq, k, dead, updated_at FROM main.{feed_table(entity)}"
        f" WHERE dead = 0 AND seq <= ? AND k IN ({_changed_keys(entity, 'main')})",
        (lo, lo, hi, entity, lo, hi),
    )


def _rebuild_feed(con: sqlite3.Connection, entity: str, record: str) -> None:
    feed, pk = feed_table(entity), ENTITIES[entity].primary_key
    _drop_views(con, entity)  # kept as views until now, or a stored feed's views
    con.execute(f"DROP TABLE IF EXISTS main.{feed}")
    con.execute(f"DROP TABLE IF EXISTS main.{tomb_table(entity)}")
    _create_feed_table(con, entity)
    con.execute(
        f"INSERT INTO main.{feed} SELECT updated_at, {pk}, 0, {record}, _seq"
        f" FROM main.{entity} ORDER BY updated_at, {pk}"
    )
    if ENTITIES[entity].deletable:
        con.execute(
            f"INSERT OR REPLACE INTO main.{feed} SELECT deleted_at, {_tombstone_key(entity)},"
            f" 1, {_tombstone_sql(entity)}, _seq FROM main.deletions WHERE entity = ?",
            (entity,),
        )
    _create_stored_views(con, entity)
    con.execute(
        f"INSERT OR REPLACE INTO main.{FEED_SHAPES} (entity, record_sql) VALUES (?, ?)",
        (entity, record),
    )


def _update_feed(con: sqlite3.Connection, entity: str, record: str, lo: int, hi: int) -> None:
    """Bring the feed up to the rows and tombstones replicated with sequence numbers in
    ``(lo, hi]``: the versions they replace (or the rows they delete) leave, they come in."""
    feed, pk = feed_table(entity), ENTITIES[entity].primary_key
    changed = f"SELECT {pk} FROM main.{entity} WHERE _seq > ? AND _seq <= ?"
    deleted = (
        f"SELECT {_tombstone_key(entity)} FROM main.deletions"
        " WHERE entity = ? AND _seq > ? AND _seq <= ?"
    )
    _supersede_stored(con, entity, lo, hi)
    for keys, args in ((changed, (lo, hi)), (deleted, (entity, lo, hi))):
        con.execute(f"DELETE FROM main.{feed} WHERE dead = 0 AND k IN ({keys})", args)
    if ENTITIES[entity].deletable:  # the API lists tombstones of these
        con.execute(
            f"INSERT OR REPLACE INTO main.{feed} SELECT deleted_at, {_tombstone_key(entity)},"
            f" 1, {_tombstone_sql(entity)}, _seq FROM main.deletions"
            " WHERE entity = ? AND _seq > ? AND _seq <= ?",
            (entity, lo, hi),
        )
    con.execute(
        f"INSERT OR REPLACE INTO main.{feed} SELECT updated_at, {pk}, 0, {record}, _seq"
        f" FROM main.{entity} WHERE _seq > ? AND _seq <= ?",
        (lo, hi),
    )


def _sync_stored(
    con: sqlite3.Connection, entity: str, record: str, built: str | None,
    span: tuple[int, int] | None, rebuild: bool,
) -> None:
    has_seq = _kind(con, feed_table(entity)) == "table" and con.execute(
        "SELECT 1 FROM pragma_table_info(?, 'main') WHERE name = 'seq'", (feed_table(entity),)
    ).fetchone() is not None  # a feed built before it kept sequence numbers is rebuilt
    if rebuild or built != record or not has_seq:
        if span and has_seq:
            _supersede_stored(con, entity, *span)
        _rebuild_feed(con, entity, record)
        return
    if span:
        _update_feed(con, entity, record, *span)
    if _kind(con, live_view(entity)) is None:  # dropped for a schema change
        _create_stored_views(con, entity)


# -- feeds as views over the tables -------------------------------------------------------

def _sync_views(
    con: sqlite3.Connection, entity: str, record: str, built: str | None,
    span: tuple[int, int] | None, rebuild: bool,
) -> None:
    kind = _kind(con, feed_table(entity))
    if kind == "table":  # stored until now
        _drop_views(con, entity)
        con.execute(f"DROP TABLE main.{feed_table(entity)}")
    fresh = kind == "table" or _kind(con, tomb_table(entity)) is None
    _create_tombs(con, entity)
    if rebuild or kind != "view" or built != record:
        _create_feed_views(con, entity, record)
    if rebuild or fresh:
        con.execute(f"DELETE FROM main.{tomb_table(entity)}")
        _add_tombs(con, entity, None, None)
    elif span:
        _add_tombs(con, entity, *span)


def sync_feeds(
    con: sqlite3.Connection, lo: int | None = None, hi: int | None = None,
    rebuild: bool = False,
) -> None:
    """Keep the replica's feeds equal to its tables (inside the caller's transaction), as
    the replica's :func:`feed_storage` says. Stored: an entity whose rendering changed (a
    schema change, or no feed yet) is rebuilt whole, the others take the rows replicated
    in ``(lo, hi]``. Views: the views of an entity whose rendering changed are made
    again, and the tombstones replicated in ``(lo, hi]`` are keyed. ``rebuild``: rebuild
    them all (after the tables were written other than by replication). A feed kept the
    other way is replaced."""
    con.execute(
        f"CREATE TABLE IF NOT EXISTS main.{FEED_SHAPES} (entity TEXT PRIMARY KEY,"
        " record_sql TEXT NOT NULL)"
    )
    built = dict(con.execute(f"SELECT entity, record_sql FROM main.{FEED_SHAPES}"))
    applied = applied_evolutions(con)
    sync = _sync_views if feed_storage(con) == VIEWS else _sync_stored
    # the rows replicated since the last sync, if any
    span = (lo, hi) if lo is not None and hi is not None and hi > lo else None
    for entity in ENTITIES:
        _create_superseded(con, entity)
        sync(con, entity, record_sql(con, entity, applied), built.get(entity), span, rebuild)


def query(directory: Path | str, sql: str, *args: object, db: str = REPLICA) -> list[tuple]:
    """Rows of a read-only query on the replica (or on production, ``db=PRODUCTION``):
    what a check compares the warehouse or the API with."""
    con = connect(Path(directory) / db, readonly=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def write_replica_only(
    directory: Path | str, sql: str, rows: Iterable[Sequence[object]] = ((),)
) -> None:
    """Run a write on the replica alone, once per parameter row, behind replication's
    back, and rebuild its feeds: a replica saying what production never did (a tombstone
    newer than its row, a rewrite of every row), for a client to be tested against."""
    con = connect(Path(directory) / REPLICA)
    try:
        con.execute("BEGIN")
        con.executemany(sql, rows)
        sync_feeds(con, rebuild=True)
        con.execute("COMMIT")
    finally:
        con.close()


def feeds(directory: Path | str, rebuild: bool = False) -> dict[str, list[tuple]]:
    """Every entity's feed as ``(updated_at, k, dead, record, seq)`` rows in listing order;
    with ``rebuild``, as rendered afresh from the tables instead (in a transaction rolled
    back: the replica is left as it was). The two must always be equal."""
    con = connect(Path(directory) / REPLICA)
    try:
        con.execute("BEGIN")
        try:
            if rebuild:
                sync_feeds(con, rebuild=True)
            return {
                entity: con.execute(
                    f"SELECT updated_at, k, dead, record, seq FROM {feed_table(entity)}"
                    " ORDER BY updated_at, k, dead"
                ).fetchall()
                for entity in ENTITIES
            }
        finally:
            con.execute("ROLLBACK")
    finally:
        con.close()


def drop_feeds(directory: Path | str) -> None:
    """Remove the replica's feeds, leaving a replica as made before it kept them; the
    next :func:`replicate` builds them again."""
    con = connect(Path(directory) / REPLICA)
    try:
        con.execute("BEGIN")
        drop_feed_views(con)
        for entity in ENTITIES:
            con.execute(f"DROP TABLE IF EXISTS {feed_table(entity)}")
            con.execute(f"DROP TABLE IF EXISTS {tomb_table(entity)}")
            con.execute(f"DROP TABLE IF EXISTS {superseded_table(entity)}")
        con.execute(f"DROP TABLE {FEED_SHAPES}")
        con.execute("COMMIT")
    finally:
        con.close()


def wait_for_replica(directory: Path | str, timeout: float = 30.0) -> None:
    """Block until the replica has applied everything production has committed."""
    d = Path(directory)
    deadline = time.monotonic() + timeout
    pcon = connect(d / PRODUCTION, readonly=True)
    rcon = connect(d / REPLICA, readonly=True)
    try:
        target = pcon.execute("SELECT coalesce(max(seq), 0) FROM txlog").fetchone()[0]
        while True:
            last = rcon.execute("SELECT last_seq FROM replication_state").fetchone()[0]
            if last >= target:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica at seq {last}, production at {target}")
            time.sleep(0.05)
    finally:
        pcon.close()
        rcon.close()
