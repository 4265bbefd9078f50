"""The quarantine as a dead-letter queue: what it holds, and loading it again.

``salesflow quarantine`` lists what ``raw.quarantine`` holds per entity, rule and field
(count, first and last time held, a sample, what the rule means) and whether replaying
would now load it: a dry run of the replay on (up to :data:`DRY_RUN_RECORDS` of) each
group's records.

``salesflow quarantine replay`` loads held records again through the **current**
configuration: each entity's spec is built as the source builds it
(:func:`loaders.replica.entity_spec`, on the API's schema fetched as a cycle fetches it),
each record is parsed by the source's parser (:func:`loaders.replica.pages.parse_page`),
and the rows are merged with the source's own hints (:func:`loaders.replica.resource_hints`)
in one dlt load into the same pipeline, under the run lock. Each held record ends one way:

* **loaded** — it parses now and is newer than its key's version in raw (or raw has
  none): merged as if it had just arrived; incremental models rebuild it by its new
  ``_dlt_load_id``, however old its cursor;
* **superseded** — raw holds its key (a row, or its deletion) at the same or a newer
  cursor, or another held record of the key is newer (the first of equals loads): it is
  not loaded over it
  (cursors compared vectorised). A record that still fails is superseded too when its
  text states its key and cursor: it would never load over that version either;
* **held** — it still fails: it stays, with the reason it fails for now.

Loaded and superseded records leave the quarantine once the load has committed, and are
logged in ``raw.quarantine_replays``. A crash in between leaves them held; the next replay
finds them superseded by the versions just loaded: nothing loaded twice, nothing lost.
Run again, a replay has nothing left to do.

A key deleted upstream after its record was held has no row left in raw: its deletion
in the entity's deletion log (``raw.<entity>__deleted``) is the version the record is
compared with, so it is superseded and the key stays deleted. Not seen: a deletion read
by a table's first load (set aside for its repair, not logged).

May import: every service, the foundations, and :mod:`.pipeline` (its run lock and the
completion of interrupted loads).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import dlt
import pyarrow as pa
import pyarrow.compute as pc

from loaders import config, replica, warehouse
from loaders.contract import document as contract_document
from loaders.replica import settings as replica_settings
from loaders.replica.client import fetch_api_schema
from loaders.replica.errors import ReplicaError
from loaders.replica.pages import RULES, EntitySpec, parse_page
from loaders.replica.protocol import Api
from loaders.runners import pipeline as runner
from loaders.runners import quarantine as quarantine_runner

log = logging.getLogger(__name__)

QUARANTINE = replica_settings.QUARANTINE_TABLE
REPLAYS = "quarantine_replays"
LOADED, SUPERSEDED, HELD = "loaded", "superseded", "held"
OUTCOMES = (LOADED, SUPERSEDED, HELD)
# records of each group the listing's dry run tries
DRY_RUN_RECORDS = 1000
SAMPLE_CHARS = 300
# keys per statement when the warehouse is asked about or told of many records
CHUNK = 500
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

T = TypeVar("T")


class WarehouseBusy(RuntimeError):
    """The warehouse could not be read (a cycle writing a DuckDB file, a server down)."""


@dataclass(frozen=True)
class Held:
    """One record held in the quarantine."""

    key: str  # record_key
    entity: str
    rule: str
    field: str | None
    reason: str
    record: str


@dataclass(frozen=True)
class Failure:
    """Why a held record still does not load."""

    rule: str
    field: str | None
    reason: str


@dataclass
class Parsed:
    """Held records that parse now: one table, whose rows are the records ``keys``."""

    table: pa.Table
    keys: list[str]


@dataclass
class Sorted:
    """One entity's held records put through the current configuration: each record's
    outcome, the rows to load, and why each record still held fails."""

    entity: str
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)  # record key -> outcome
    tables: list[pa.Table] = dataclasses.field(default_factory=list)  # the rows to load
    failures: dict[str, Failure] = dataclasses.field(default_factory=dict)
    problem: str | None = None  # why none of them could be tried

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)


# ------------------------------------------------------------------ the current parser


def sort_out(spec: EntitySpec, held: Sequence[Held], sql: Any) -> Sorted:
    """Put ``held`` (records of ``spec``'s entity) through the current parser and compare
    their versions with raw's (``sql``: an open client of the pipeline). A record that
    still fails but whose key and cursor can be read is superseded too when raw (or a
    record replayed with it) holds its key at the same or a newer cursor: it would never
    load over it."""
    out = Sorted(spec.name)
    parsed, out.failures = parse_held(spec, held)
    versions = _versions(spec, parsed)
    stated, stated_values = _stated_versions(spec, [h for h in held if h.key in out.failures])
    if versions is None:  # no typed cursor to compare: everything that parses loads
        loading = {key for part in parsed for key in part.keys}
        behind: set[str] = set()
    else:
        raw = _raw_versions(sql, spec, [*versions["value"].to_pylist(), *stated_values])
        loading = _newer_than_raw(versions, raw)
        loaded = versions.filter(pc.is_in(versions["record_key"], value_set=pa.array(
            sorted(loading), pa.string()))).select(["k", "us"]).rename_columns(["k", "raw_us"])
        behind = _behind(stated, pa.concat_tables([raw, loaded]))
    out.outcomes = {key: SUPERSEDED if key in behind else HELD for key in out.failures}
    out.failures = {key: f for key, f in out.failures.items() if key not in behind}
    for part in parsed:
        out.outcomes.update({k: LOADED if k in loading else SUPERSEDED for k in part.keys})
    out.tables = _rows_to_load(parsed, loading)
    return out


def _rows_to_load(parsed: Sequence[Parsed], loading: set[str]) -> list[pa.Table]:
    """The rows of the records ``loading`` (record keys), table by table."""
    wanted = pa.array(sorted(loading), pa.string())
    tables = [part.table.filter(pc.is_in(pa.array(part.keys, pa.string()), value_set=wanted))
              for part in parsed]
    return [t for t in tables if t.num_rows]


def parse_held(spec: EntitySpec, held: Sequence[Held]) -> tuple[list[Parsed], dict[str, Failure]]:
    """The held records that parse now, as tables whose rows are the records in order,
    and why each other one fails now. Records are parsed as one page; a page with any
    record failing is split in halves until each part parses whole or is one record
    (a few parses per failing record, one for all when none fails)."""
    parsed: list[Parsed] = []
    failures: dict[str, Failure] = {}
    pending = [list(held)] if held else []
    while pending:
        batch = pending.pop()
        table, failure = _parse(spec, batch)
        if table is not None:
            parsed.append(Parsed(table, [h.key for h in batch]))
        elif len(batch) == 1:
            failures[batch[0].key] = failure or Failure("unreadable", None, "no record")
        else:
            half = len(batch) // 2
            pending += [batch[half:], batch[:half]]
    return parsed, failures


def _parse(spec: EntitySpec, batch: Sequence[Held]) -> tuple[pa.Table | None, Failure | None]:
    """``batch`` parsed as one page: the table of its records, one row each in order, or
    the first reason one of them fails."""
    body = "\n".join(h.record for h in batch).encode()
    try:
        page = parse_page(spec, body)
    except ReplicaError as exc:  # e.g. no record of the page has the key field at all
        return None, Failure("unreadable", None, str(exc))
    if page.quarantined:
        first = page.quarantined[0]
        return None, Failure(first["rule"], first["field"], first["reason"])
    if page.table is None or page.table.num_rows != len(batch):
        return None, Failure("unreadable", None, "the record holds no row")
    return page.table, None


def _versions(spec: EntitySpec, parsed: Sequence[Parsed]) -> pa.Table | None:
    """(record key, key as text, cursor in µs, position) of every record that parses;
    None when the cursor is not a timestamp (an API without a schema)."""
    key = spec.variants.get(spec.primary_key, spec.primary_key)
    cursor = spec.variants.get(spec.cursor, spec.cursor)
    parts, position = [], 0
    for part in parsed:
        if not pa.types.is_timestamp(part.table[cursor].type):
            return None
        rows = part.table.num_rows
        parts.append(pa.table({
            "record_key": pa.array(part.keys, pa.string()),
            "k": pc.cast(part.table[key], pa.string()),
            "us": pc.cast(pc.cast(part.table[cursor], pa.timestamp("us", tz="UTC")),
                          pa.int64()),
            "pos": pa.array(range(position, position + rows), pa.int64()),
            "value": part.table[key],
        }))
        position += rows
    if not parts:
        return pa.table({"record_key": pa.array([], pa.string()), "k": pa.array([], pa.string()),
                         "us": pa.array([], pa.int64()), "pos": pa.array([], pa.int64()),
                         "value": pa.array([], pa.null())})
    return pa.concat_tables(parts, promote_options="permissive")


def _raw_versions(sql: Any, spec: EntitySpec, values: Sequence[Any]) -> pa.Table:
    """(key as text, newest cursor in µs) that raw knows of each key in ``values``: its
    row, or its deletion in the entity's deletion log (a key deleted since its record
    was held has no row left, and the held record must not bring it back)."""
    found: list[tuple[Any, Any]] = []
    present = warehouse.raw_tables(sql) if values else set()
    key, cursor = (sql.escape_column_name(c) for c in (spec.primary_key, spec.cursor))
    for name in (spec.name, replica.deleted_table(spec.name)):
        if name not in present:
            continue
        table = sql.make_qualified_table_name(name)
        for chunk in _chunks(sorted(set(values), key=str), CHUNK):
            found += sql.execute_sql(
                f"select {key}, {cursor} from {table} where {key} in"
                f" ({', '.join(['%s'] * len(chunk))})", *chunk,
            ) or []
    known = pa.table({
        "k": pa.array([str(k) for k, _ in found], pa.string()),
        "raw_us": pa.array([_microseconds(t) for _, t in found], pa.int64()),
    })
    newest = known.group_by("k").aggregate([("raw_us", "max")])
    return newest.select(["k", "raw_us_max"]).rename_columns(["k", "raw_us"])


def _newer_than_raw(versions: pa.Table, raw: pa.Table) -> set[str]:
    """The record keys to load: per key, the newest held record (the first of equals),
    if it is newer than raw's version of the key or raw has none."""
    if not versions.num_rows:
        return set()
    ordered = versions.select(["record_key", "k", "us", "pos"]).sort_by(
        [("k", "ascending"), ("us", "descending"), ("pos", "ascending")]
    )
    keys = ordered["k"].combine_chunks()
    first = pa.concat_arrays(
        [pa.array([True]), pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))]
    )
    newest = ordered.filter(first).join(raw, "k", join_type="left outer")
    # Kleene: a key raw does not hold (null) is newer, whatever the comparison gives
    newer = pc.or_kleene(pc.is_null(newest["raw_us"]), pc.greater(newest["us"], newest["raw_us"]))
    return set(newest.filter(newer)["record_key"].to_pylist())


def _behind(stated: pa.Table, known: pa.Table) -> set[str]:
    """The record keys of ``stated`` whose key ``known`` holds at the same or a newer
    cursor."""
    if not stated.num_rows or not known.num_rows:
        return set()
    newest = known.group_by("k").aggregate([("raw_us", "max")])
    both = stated.join(newest, "k", join_type="inner")
    return set(both.filter(pc.less_equal(both["us"], both["raw_us_max"]))["record_key"]
               .to_pylist())


def _stated_versions(spec: EntitySpec, held: Sequence[Held]) -> tuple[pa.Table, list[Any]]:
    """(record key, key as text, cursor in µs) of the records whose text states a key of
    the declared type and a readable cursor, and those keys as values."""
    rows = [(h.key, *stated) for h in held if (stated := _stated(spec, h.record))]
    table = pa.table({
        "record_key": pa.array([r[0] for r in rows], pa.string()),
        "k": pa.array([str(r[1]) for r in rows], pa.string()),
        "us": pa.array([r[2] for r in rows], pa.int64()),
    })
    return table, [r[1] for r in rows]


def _stated(spec: EntitySpec, text: str) -> tuple[Any, int] | None:
    """The key and cursor (µs) a record's text states, when both can be read as the API
    declares them; None otherwise (broken JSON, a null or mistyped key or cursor)."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    key, cursor = record.get(spec.primary_key), record.get(spec.cursor)
    declared = spec.fields.get(spec.primary_key)
    typed = (
        isinstance(key, int) and not isinstance(key, bool) and -(2**63) <= key < 2**63
        if declared == "integer" else isinstance(key, str) if declared == "string" else False
    )
    if not typed or not isinstance(cursor, str):
        return None
    try:
        stamp = datetime.fromisoformat(cursor.replace("Z", "+00:00"))
    except ValueError:
        return None
    us = _microseconds(stamp)
    return (key, us) if us is not None else None


def _microseconds(value: Any) -> int | None:
    """A raw cursor (a datetime from the warehouse) in µs since the epoch, exactly."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - EPOCH) // timedelta(microseconds=1)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def specs(pipe: dlt.Pipeline, entities: Iterable[str], api: Api,
          ) -> dict[str, EntitySpec]:
    """The current spec of each declared entity of ``entities``, built as the source
    builds it: the endpoints and schema contracts configured, the API's schema now and
    the raw columns' types."""
    declared = config.endpoints()
    described = fetch_api_schema(api) if api.schema_path else contract_document.described()
    known = warehouse.known_types(pipe)
    contracts = config.schema_contracts()
    maps = config.field_maps()
    return {
        name: replica.entity_spec(name, declared[name], described, known, contracts.get(name),
                                  maps.get(name, ()))
        for name in sorted(set(entities)) if name in declared
    }


def _sort_all(sql: Any, held: Sequence[Held], entity_specs: dict[str, EntitySpec]
              ) -> dict[str, Sorted]:
    """Every entity's held records put through its current spec."""
    by_entity: dict[str, list[Held]] = {}
    for h in held:
        by_entity.setdefault(h.entity, []).append(h)
    out = {}
    for name, records in sorted(by_entity.items()):
        spec = entity_specs.get(name)
        if spec is None:
            out[name] = Sorted(name, {h.key: HELD for h in records}, problem=(
                f"{name} is not a declared endpoint: declare it (sources.replica.endpoints)"
                " to replay its records"
            ))
        else:
            out[name] = sort_out(spec, records, sql)
    return out


# ---------------------------------------------------------------- reading the quarantine


def _held(sql: Any, where: str = "", *params: Any, limit: int | None = None) -> list[Held]:
    table = sql.make_qualified_table_name(QUARANTINE)
    rows = sql.execute_sql(
        f"select record_key, entity, rule, field, reason, record from {table}"
        f"{' where ' + where if where else ''} order by quarantined_at, record_key"
        + (f" limit {int(limit)}" if limit is not None else ""),
        *params,
    )
    return [Held(str(k), str(e), str(r), f, str(why), str(rec or ""))
            for k, e, r, f, why, rec in rows or []]


def _no_warehouse() -> bool:
    """Whether the warehouse is a DuckDB file not created yet (nothing loaded)."""
    return warehouse.is_duckdb() and not warehouse.duckdb_path().exists()


def _has_quarantine(sql: Any) -> bool:
    return QUARANTINE in warehouse.raw_tables(sql)


# ----------------------------------------------------------------------- the listing


@dataclass
class HeldGroup:
    """The records held for one rule on one field of one entity."""

    entity: str
    rule: str
    field: str | None
    records: int
    first_held_at: str
    last_held_at: str
    sample: str
    meaning: str
    # the dry run: outcome -> records of the group tried (up to DRY_RUN_RECORDS)
    replay: dict[str, int] = dataclasses.field(default_factory=dict)
    # why the records tried that are still held fail now, the most common first
    failing_now: list[str] = dataclasses.field(default_factory=list)


@dataclass
class Listing:
    groups: list[HeldGroup]
    records: int  # held in all, also in groups beyond the limit
    dry_run_problem: str | None = None  # why replay outcomes are missing

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_held(
    entity: str | None = None, limit: int = 50, base_url: str | None = None,
    token: str | None = None,
) -> Listing:
    """What the quarantine holds, per entity, rule and field (the ``limit`` largest
    groups), and what replaying each would do now. The warehouse is only read (a DuckDB
    file read-only); an API that cannot be reached leaves the dry run out, saying why."""
    if _no_warehouse():
        return Listing([], 0)
    pipe = warehouse.dlt_pipeline(read_only=True)
    with _reading(pipe) as sql:
        if not _has_quarantine(sql):
            return Listing([], 0)
        groups, records = _groups(sql, entity, limit)
        problem = None
        try:
            api = config.api_connection(base_url, token)
            _dry_run(sql, groups, specs(pipe, {g.entity for g in groups}, api))
        except ReplicaError as exc:  # no API, no token, API down: list what is held
            problem = f"replay outcomes unknown: {exc}"
    return Listing(groups, records, problem)


class _reading:
    """An open sql client of the pipeline, or :class:`WarehouseBusy` saying why not."""

    def __init__(self, pipe: dlt.Pipeline) -> None:
        self.client = warehouse.sql_client(pipe)

    def __enter__(self) -> Any:
        try:
            self.client.open_connection()
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            what = ("the warehouse is busy (a cycle or `salesflow watch` is writing it)"
                    if warehouse.is_duckdb() else "the warehouse cannot be reached")
            raise WarehouseBusy(f"{what}: {first}; try again when it is free") from None
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close_connection()


def _groups(sql: Any, entity: str | None, limit: int) -> tuple[list[HeldGroup], int]:
    table = sql.make_qualified_table_name(QUARANTINE)
    where, params = ("where entity = %s", [entity]) if entity else ("", [])
    [(records,)] = sql.execute_sql(f"select count(*) from {table} {where}", *params) or [(0,)]
    rows = sql.execute_sql(
        f"select entity, rule, field, count(*) as n, min(quarantined_at),"
        f" max(quarantined_at), min(record) from {table} {where}"
        f" group by entity, rule, field order by n desc, entity, rule, field"
        f" limit {int(limit)}",
        *params,
    ) or []
    groups = [
        HeldGroup(str(e), str(r), f, int(n), _iso(first), _iso(last), _truncated(sample),
                  RULES.get(str(r), "see the reason column"))
        for e, r, f, n, first, last, sample in rows
    ]
    return groups, int(records)


def _dry_run(sql: Any, groups: list[HeldGroup], entity_specs: dict[str, EntitySpec]) -> None:
    """Fill in each group's replay outcomes: its records (up to DRY_RUN_RECORDS) put
    through the current configuration, nothing written."""
    tried: dict[tuple[str, str, str | None], list[Held]] = {}
    for g in groups:
        tried[(g.entity, g.rule, g.field)] = _held(
            sql, "entity = %s and rule = %s and field is not distinct from %s",
            g.entity, g.rule, g.field, limit=DRY_RUN_RECORDS,
        )
    sorted_out = _sort_all(sql, [h for hs in tried.values() for h in hs], entity_specs)
    for g in groups:
        done = sorted_out[g.entity]
        records = tried[(g.entity, g.rule, g.field)]
        outcomes = Counter(done.outcomes[h.key] for h in records)
        g.replay = {o: outcomes.get(o, 0) for o in OUTCOMES}
        why = Counter(
            _described(done.failures[h.key]) if h.key in done.failures else done.problem
            for h in records if done.outcomes[h.key] == HELD
        )
        g.failing_now = [f"{reason} ({n})" for reason, n in why.most_common(3) if reason]


def _described(failure: Failure) -> str:
    return f"{failure.rule} on {failure.field}" if failure.field else failure.rule


def render_listing(listing: Listing, entity: str | None = None) -> str:
    """The listing (of ``entity``'s records) for people."""
    if not listing.records:
        return f"raw.quarantine holds no record{f' of {entity}' if entity else ''}."
    entities = len({g.entity for g in listing.groups})
    lines = [f"raw.quarantine holds {listing.records:,} record(s); by entity, rule and field"
             f" ({len(listing.groups)} group(s), {entities}"
             f" entit{'y' if entities == 1 else 'ies'}):"]
    for g in listing.groups:
        lines += [
            "",
            f"{g.entity} — {g.rule} on {g.field or 'the whole record'}: {g.records:,}"
            f" record(s), held {g.first_held_at} … {g.last_held_at}",
            f"  rule: {g.meaning}",
            f"  sample: {g.sample}",
        ]
        if g.replay:
            tried = sum(g.replay.values())
            of = "all" if tried == g.records else f"{tried:,} of {g.records:,}"
            lines.append(
                f"  replay now ({of} tried): {g.replay[LOADED]:,} would load,"
                f" {g.replay[SUPERSEDED]:,} superseded by newer versions in raw,"
                f" {g.replay[HELD]:,} still held"
                + (f" ({'; '.join(g.failing_now)})" if g.failing_now else "")
            )
    if listing.dry_run_problem:
        lines += ["", listing.dry_run_problem]
    lines += [
        "",
        "Fix the cause first (a field mapping, the schema contract, the platform), then"
        " `salesflow quarantine replay [--entity E]` loads what would load; records"
        " superseded leave the quarantine, the others stay with their reason.",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------ the replay


@dataclass
class EntityReplay:
    entity: str
    loaded: int = 0
    superseded: int = 0
    held: int = 0
    problem: str | None = None


@dataclass
class ReplayReport:
    entities: list[EntityReplay]
    load_id: str | None = None
    dry_run: bool = False

    @property
    def total(self) -> dict[str, int]:
        return {o: sum(getattr(e, o) for e in self.entities) for o in OUTCOMES}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def replay(
    entity: str | None = None, dry_run: bool = False, base_url: str | None = None,
    token: str | None = None,
) -> ReplayReport:
    """Load the records held in the quarantine (of ``entity``, or all) again through the
    current configuration, under the run lock (see the module's docstring); with
    ``dry_run``, only say what would happen."""
    with runner.run_lock("quarantine replay" + (" --dry-run" if dry_run else "")):
        if _no_warehouse():
            return ReplayReport([], dry_run=dry_run)
        # held for the whole load, as every load is: no build (another process) sees
        # it half done
        with warehouse.kept_open():
            pipe = warehouse.dlt_pipeline()
            if not dry_run:
                runner.complete_interrupted(pipe)
            with warehouse.sql_client(pipe) as sql:
                held = (_held(sql, "entity = %s" if entity else "", *([entity] if entity else []))
                        if _has_quarantine(sql) else [])
                if not held:
                    return ReplayReport([], dry_run=dry_run)
                api = config.api_connection(base_url, token)
                entity_specs = specs(pipe, {h.entity for h in held}, api)
                sorted_out = _sort_all(sql, held, entity_specs)
            report = ReplayReport([_counted(s) for s in sorted_out.values()], dry_run=dry_run)
            if dry_run:
                return report
            report.load_id = _load(pipe, sorted_out, entity_specs)
            _settle(pipe, held, sorted_out, report.load_id)
            return report


def _counted(done: Sorted) -> EntityReplay:
    return EntityReplay(done.entity, done.count(LOADED), done.count(SUPERSEDED),
                        done.count(HELD), done.problem)


@dlt.source(name=replica_settings.SOURCE_NAME, max_table_nesting=0)
def held_records(
    tables: dict[str, list[pa.Table]], entity_specs: dict[str, EntitySpec],
    contracts: dict[str, Any],
) -> list[Any]:
    """The rows replayed, as resources of the replica source: the same tables, hints and
    schema contracts as the source's own."""
    resources = []
    for name, parts in tables.items():
        resource = dlt.resource(
            [replica.with_load_id_slot(t) for t in parts],
            **replica.resource_hints(entity_specs[name]),
        )
        resource.apply_hints(schema_contract=contracts.get(name))
        resources.append(resource)
    return resources


def _load(pipe: dlt.Pipeline, sorted_out: dict[str, Sorted],
          entity_specs: dict[str, EntitySpec]) -> str | None:
    """One dlt load of every row replayed; its load id (None: nothing to load)."""
    tables = {name: s.tables for name, s in sorted_out.items() if s.tables}
    if not tables:
        return None
    info = pipe.run(
        held_records(tables, entity_specs, config.schema_contracts()),
        loader_file_format=warehouse.loader_file_format(),
    )
    return info.loads_ids[-1] if info.loads_ids else None


def _settle(pipe: dlt.Pipeline, held: Sequence[Held], sorted_out: dict[str, Sorted],
            load_id: str | None) -> None:
    """After the load: log and remove the records loaded or superseded, and give those
    still held the reason they fail for now; one transaction."""
    done = [(h.key, h.entity, sorted_out[h.entity].outcomes[h.key]) for h in held
            if sorted_out[h.entity].outcomes[h.key] != HELD]
    changed = [
        (h.key, f.rule, f.field, f.reason)
        for h in held
        if (f := sorted_out[h.entity].failures.get(h.key)) is not None
        and (f.rule, f.field, f.reason) != (h.rule, h.field, h.reason)
    ]
    now = datetime.now(timezone.utc).isoformat()
    quarantine_runner.forget_count(pipe)
    with warehouse.sql_client(pipe) as sql:
        replays = sql.make_qualified_table_name(REPLAYS)
        quarantine = sql.make_qualified_table_name(QUARANTINE)
        ensure_replays_table(sql)
        with sql.begin_transaction():
            for chunk in _chunks(done, CHUNK):
                sql.execute_sql(
                    f"insert into {replays} (record_key, entity, outcome, replayed_at,"
                    f" load_id) values {', '.join(['(%s, %s, %s, %s, %s)'] * len(chunk))}",
                    *[v for key, entity, outcome in chunk
                      for v in (key, entity, outcome, now,
                                load_id if outcome == LOADED else None)],
                )
                sql.execute_sql(
                    f"delete from {quarantine} where record_key in"
                    f" ({', '.join(['%s'] * len(chunk))})", *[key for key, _, _ in chunk],
                )
            for update in _chunks(changed, CHUNK):
                sql.execute_sql(
                    f"update {quarantine} as q set rule = v.rule, field = v.field, reason ="
                    f" v.reason from (values {', '.join(['(%s, %s, %s, %s)'] * len(update))})"
                    " as v (record_key, rule, field, reason) where q.record_key = v.record_key",
                    *[v for row in update for v in row],
                )


def ensure_replays_table(sql: Any) -> None:
    sql.execute_sql(
        f"create table if not exists {sql.make_qualified_table_name(REPLAYS)} (record_key"
        " varchar, entity varchar, outcome varchar, replayed_at timestamp with time zone,"
        " load_id varchar)"
    )


def render_replay(report: ReplayReport) -> str:
    """A replay's outcomes per entity, for people."""
    if not report.entities:
        return "raw.quarantine holds nothing to replay."
    head = ("dry run: replaying raw.quarantine now would give" if report.dry_run
            else "replayed raw.quarantine through the current configuration"
            + (f" (load {report.load_id})" if report.load_id else " (nothing to load)"))
    lines = [head + ":", f"  {'entity':<14}{'loaded':>10}{'superseded':>12}{'still held':>12}"]
    for e in report.entities:
        lines.append(f"  {e.entity:<14}{e.loaded:>10,}{e.superseded:>12,}{e.held:>12,}"
                     + (f"  ({e.problem})" if e.problem else ""))
    total = report.total
    if total[HELD]:
        lines.append(f"  {total[HELD]:,} record(s) still held: `salesflow quarantine` says"
                     " why each fails now")
    if not report.dry_run and (total[LOADED] or total[SUPERSEDED]):
        lines.append("  loaded and superseded records left the quarantine (logged in"
                     " raw.quarantine_replays); `salesflow run` or `dbt build` brings the"
                     " loaded ones into the marts")
    return "\n".join(lines)


def _iso(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value)


def _truncated(text: Any) -> str:
    text = str(text or "")
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…"
