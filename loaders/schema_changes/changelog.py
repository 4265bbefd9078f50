"""The schema changelog in the warehouse: ``raw.schema_changelog`` and
``raw.schema_known_values``.

Each change is written once (keyed by a hash of what changed, so a change seen again is
not logged again); dbt documents the table as the ``salesflow`` source. Portable SQL
through a dlt sql client, so every warehouse keeps it the same way.

May import: :mod:`.changes`, :mod:`loaders.warehouse`, :mod:`loaders.monitoring.health`
(the cycles table) and dlt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypedDict

from dlt.common.schema.typing import C_DLT_LOAD_ID

from loaders import warehouse
from loaders.monitoring.health import CYCLES
from loaders.schema_changes.changes import Change

CHANGELOG = "schema_changelog"
KNOWN_VALUES = "schema_known_values"
# how often each field of each entity carried a value in the records seen so far
PROFILE = "schema_field_profile"

# evidence columns, added to a changelog made before they existed
_EVIDENCE = (
    ("observed_in", "VARCHAR"), ("rows_affected", "BIGINT"), ("sample_value", "VARCHAR"),
    ("schema_agrees", "BOOLEAN"), ("related_column", "VARCHAR"),
)
_COLUMNS = (
    "change_id", "load_id", "detected_at", "category", "entity", "column_name",
    "change_kind", "old_type", "new_type", "value", "detail", "schema_version",
    *(name for name, _ in _EVIDENCE),
)


def ensure_tables(sql: Any, dataset: str) -> None:
    """Create the changelog tables (portable SQL; ``sql`` is a dlt sql client)."""
    sql.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {dataset}.{CHANGELOG} ("
        " change_id VARCHAR PRIMARY KEY, load_id VARCHAR, detected_at TIMESTAMP WITH TIME"
        " ZONE, category VARCHAR, entity VARCHAR, column_name VARCHAR, change_kind VARCHAR,"
        " old_type VARCHAR, new_type VARCHAR, value VARCHAR, detail VARCHAR,"
        " schema_version INTEGER)"
    )
    for name, type_ in _EVIDENCE:
        sql.execute_sql(
            f"ALTER TABLE {dataset}.{CHANGELOG} ADD COLUMN IF NOT EXISTS {name} {type_}"
        )
    sql.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {dataset}.{KNOWN_VALUES} (entity VARCHAR, column_name"
        " VARCHAR, value VARCHAR, first_seen_at TIMESTAMP WITH TIME ZONE,"
        " PRIMARY KEY (entity, column_name, value))"
    )
    sql.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {dataset}.{PROFILE} (entity VARCHAR, field VARCHAR,"
        " data_type VARCHAR, records BIGINT, filled BIGINT, last_filled_load VARCHAR,"
        " described BOOLEAN, updated_at TIMESTAMP WITH TIME ZONE,"
        " PRIMARY KEY (entity, field))"
    )


def record(sql: Any, dataset: str, changes: Sequence[Change]) -> list[Change]:
    """Insert the changes not logged before; returns those (the new ones)."""
    if not changes:
        return []
    ids = [c.change_id for c in changes]
    marks = ", ".join(["%s"] * len(ids))
    logged = {
        r[0]
        for r in sql.execute_sql(
            f"SELECT change_id FROM {dataset}.{CHANGELOG} WHERE change_id IN ({marks})", *ids
        )
        or []
    }
    new, seen = [], set(logged)
    for c in changes:
        if c.change_id in seen:
            continue
        seen.add(c.change_id)
        sql.execute_sql(
            f"INSERT INTO {dataset}.{CHANGELOG} ({', '.join(_COLUMNS)}) VALUES"
            f" ({', '.join(['%s'] * len(_COLUMNS))})",
            c.change_id, c.load_id, c.detected_at, c.category, c.entity, c.column, c.kind,
            c.old_type, c.new_type, c.value, c.detail, c.schema_version, c.observed_in,
            c.rows, c.sample, c.schema_agrees, c.related,
        )
        new.append(c)
    return new


def known_values(sql: Any, dataset: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for entity, column, value in sql.execute_sql(
        f"SELECT entity, column_name, value FROM {dataset}.{KNOWN_VALUES}"
    ) or []:
        out.setdefault((entity, column), set()).add(value)
    return out


def remember_values(sql: Any, dataset: str, rows: Sequence[tuple[str, str, str]]) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for entity, column, value in rows:
        sql.execute_sql(
            f"INSERT INTO {dataset}.{KNOWN_VALUES} VALUES (%s, %s, %s, %s)",
            entity, column, value, now,
        )


def distinct_values(
    sql: Any,
    dataset: str,
    columns: Mapping[str, Sequence[str]],
    existing: dict[str, Any],
    known: dict[tuple[str, str], set[str]] | None = None,
    since: str | None = None,
) -> dict[tuple[str, str], set[str]]:
    """Distinct non-null values of each categorical column present in raw. A column
    with a baseline in ``known`` is read only in the rows written by loads after
    ``since`` (a load id; a new value comes with a new or changed row), which keeps a
    cycle from scanning whole tables; a column without one is read whole."""
    out = {}
    for entity, names in columns.items():
        have = existing.get(entity) or {}
        for name in names:
            if name not in have:
                continue
            column = sql.escape_column_name(name)
            where, args = f"{column} IS NOT NULL", []
            # dlt stamps every raw row with the load that wrote it
            if since and (known or {}).get((entity, name)) and C_DLT_LOAD_ID in have:
                where += f" AND {sql.escape_column_name(C_DLT_LOAD_ID)} > %s"
                args = [since]
            rows = sql.execute_sql(
                f"SELECT DISTINCT CAST({column} AS VARCHAR)"
                f" FROM {dataset}.{sql.escape_column_name(entity)} WHERE {where}", *args
            )
            out[(entity, name)] = {r[0] for r in rows or []}
    return out


class ChangelogEntry(TypedDict):
    """One row of ``raw.schema_changelog``, as read back."""

    change_id: str
    load_id: str | None
    detected_at: Any  # a timestamp with time zone, as the warehouse returns it
    category: str
    entity: str
    column: str | None
    kind: str
    old_type: str | None
    new_type: str | None
    value: str | None
    detail: str | None
    schema_version: int | None
    observed_in: str | None  # schema | records (None: logged before this was kept)
    rows_affected: int | None
    sample_value: str | None
    schema_agrees: bool | None
    related_column: str | None


def read_changelog(sql: Any, dataset: str, limit: int = 200) -> list[ChangelogEntry]:
    rows = sql.execute_sql(
        f"SELECT {', '.join(_COLUMNS)} FROM {dataset}.{CHANGELOG}"
        f" ORDER BY detected_at DESC, entity, column_name LIMIT {int(limit)}"
    ) or []
    keys = ["change_id", "load_id", "detected_at", "category", "entity", "column", "kind",
            "old_type", "new_type", "value", "detail", "schema_version",
            *(name for name, _ in _EVIDENCE)]
    return [ChangelogEntry(**dict(zip(keys, r, strict=True))) for r in rows]  # type: ignore[typeddict-item]


def recent_changes(limit: int = 200) -> list[ChangelogEntry]:
    """The schema changelog, newest first ([] before the first load)."""
    with warehouse.sql_client() as sql:
        if not sql.has_dataset():
            return []
        qualified = sql.fully_qualified_dataset_name()
        try:
            return read_changelog(sql, qualified, limit)
        except Exception as exc:  # no changelog table yet
            if CHANGELOG in str(exc):
                return []
            raise


def last_recorded_load(sql: Any, dataset: str) -> str | None:
    """The newest load of a cycle in the health history (:mod:`loaders.monitoring.health`):
    the loads after it are this run's, plus any whose run was cut short before its
    values were looked at. None without a history."""
    exists = sql.execute_sql(
        "SELECT count(*) FROM information_schema.tables"
        " WHERE table_schema = %s AND table_name = %s", sql.dataset_name, CYCLES,
    )
    if not exists or not exists[0][0]:
        return None
    rows = sql.execute_sql(f"SELECT max(load_id) FROM {dataset}.{CYCLES}")
    return rows[0][0] if rows else None


@dataclass
class FieldProfile:
    """How often a field carried a value in the live records seen since it first came."""

    data_type: str | None
    records: int
    filled: int
    last_filled_load: str | None = None  # the last load whose records carried a value
    described: bool | None = None  # by the API's schema, at the last load (None: unknown)

    @property
    def fill_rate(self) -> float:
        return self.filled / self.records if self.records else 0.0


def read_profile(
    sql: Any, dataset: str, existing: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, FieldProfile]]:
    """Each entity's field profile; an entity loaded before profiles were kept gets one
    from its raw table (one scan, once: ``existing`` are the raw tables' columns)."""
    out: dict[str, dict[str, FieldProfile]] = {}
    for entity, name, type_, records, filled, last, described in sql.execute_sql(
        f"SELECT entity, field, data_type, records, filled, last_filled_load, described"
        f" FROM {dataset}.{PROFILE}"
    ) or []:
        out.setdefault(entity, {})[name] = FieldProfile(type_, records, filled, last,
                                                        described)
    for entity, columns in existing.items():
        if entity in out:
            continue
        names = [c for c in columns if not c.startswith("_dlt")]
        if not names:
            continue
        counts = ", ".join(f"count({sql.escape_column_name(c)})" for c in names)
        [(total, *filled)] = sql.execute_sql(
            f"SELECT count(*), {counts} FROM {dataset}.{sql.escape_column_name(entity)}"
        )
        out[entity] = {
            c: FieldProfile(columns[c], int(total), int(n))
            for c, n in zip(names, filled, strict=True)
        }
    return out


def save_profile(
    sql: Any, dataset: str, profiles: Mapping[str, Mapping[str, FieldProfile]]
) -> None:
    """Replace the profiles of the entities given: one delete and one insert of many rows
    in one transaction (a statement per field would cost a cycle more than the rest of
    its bookkeeping)."""
    if not profiles:
        return
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = [
        (entity, name, p.data_type, p.records, p.filled, p.last_filled_load, p.described, now)
        for entity, fields in profiles.items() for name, p in fields.items()
    ]
    entities = list(profiles)
    with sql.begin_transaction():
        sql.execute_sql(
            f"DELETE FROM {dataset}.{PROFILE} WHERE entity IN"
            f" ({', '.join(['%s'] * len(entities))})", *entities,
        )
        warehouse.insert_rows(sql, f"{dataset}.{PROFILE}", None, rows)
