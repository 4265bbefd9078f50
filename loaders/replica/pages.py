"""The replica source's hot path: pages of NDJSON parsed straight into Arrow tables.

No Python object is built per row on the normal path: a page's body goes to pyarrow's
JSON reader with the entity's schema, validation is vectorised, and the resulting table
is handed to dlt as is (parquet files, loaded by DuckDB). A page that fails to parse
(a value of the wrong type, broken JSON) takes the slow path: each line is checked on
its own, and only the bad ones are set aside in the quarantine table with the reason.

Each page is also observed (:mod:`.observe`: what its records looked like, before any is
set aside) and mapped (:mod:`.mapping`: fields renamed, combined, cast or moved by
configuration) before it is validated.

A soft-deleted record (its ``soft_delete_field`` true) becomes a tombstone here, vectorised:
its ``deleted_marker`` is set to its cursor, and it is applied as any tombstone. A
deletions endpoint's pages ({key, deleted marker}) are read by :func:`parse_deletions`.

May import: pyarrow, dlt's naming convention, and this package's ``settings``,
``errors``, ``protocol`` (content types), ``observe`` and ``mapping``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from dlt.common.normalizers.naming.snake_case import NamingConvention
from requests import Response

from loaders.replica import mapping
from loaders.replica.errors import PageError
from loaders.replica.mapping import FieldMap
from loaders.replica.observe import EntitySeen, observe_held, observe_table
from loaders.replica.protocol import Listing, check_content_type
from loaders.replica.settings import PARAM_SINCE

# how dlt names raw columns after the API's fields (its default naming convention)
NAMING = NamingConvention()

ARROW_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int64(),
    "string": pa.string(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    # decimals travel as strings ("12.99") and stay exact; staging casts them
    "decimal": pa.string(),
    "number": pa.float64(),
}


# the Arrow type a raw column of each dlt data type is loaded from
DLT_ARROW_TYPES: dict[str, pa.DataType] = {
    "bigint": pa.int64(),
    "text": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "double": pa.float64(),
}

# the dlt data type each API type lands as
DLT_TYPES: dict[str, str] = {
    "integer": "bigint",
    "string": "text",
    "boolean": "bool",
    "timestamp": "timestamp",
    "decimal": "text",
    "number": "double",
    "object": "json",
    "array": "json",
}


def type_changes(fields: dict[str, str], known: dict[str, str]) -> dict[str, tuple[str, str]]:
    """API fields whose type no longer matches the raw column: field -> (dlt type of the
    raw column, API type now)."""
    out = {}
    for name, api_type in fields.items():
        old, new = known.get(name), DLT_TYPES.get(api_type)
        if old and new and old != new:
            out[name] = (old, api_type)
    return out


@dataclass
class EntitySpec:
    """What the loader knows of one entity: declared endpoint plus the API's schema."""

    name: str
    path: str
    primary_key: str
    cursor: str  # the record's version: which of two copies of a key is newer
    deleted_marker: str | None = None
    # the commit sequence the listing is read by, and its request parameter (see
    # settings.sequence_of); None: the listing is read by ``cursor``
    sequence: str | None = None
    sequence_param: str | None = None
    # deletions by a flag in the records (a record whose flag is true is deleted: its
    # deleted_marker is set to its cursor), or listed by an endpoint of their own
    soft_delete_field: str | None = None
    deletions_path: str | None = None
    # from the API's schema endpoint; empty when the API has none (types are inferred)
    fields: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    # fields whose type changed upstream -> the variant column they now load into
    variants: dict[str, str] = field(default_factory=dict)
    # fields whose type changed upstream on an entity whose data types are frozen by its
    # schema contract -> (raw column's dlt type, API type): their rows are quarantined
    frozen: dict[str, tuple[str, str]] = field(default_factory=dict)
    # the API describes a field raw does not have yet, or with another type: rows read
    # again are loaded again, in the new shape (see LookbackWindow)
    reshaped: bool = False
    # fields renamed, combined, cast or moved by configuration (see .mapping)
    mapping: tuple[FieldMap, ...] = ()
    # the Arrow type each mapped raw column loads as
    mapped_types: dict[str, pa.DataType] = field(default_factory=dict)

    def with_mapping(self, maps: tuple[FieldMap, ...], known: dict[str, str]) -> EntitySpec:
        """Apply configured field mappings (``known``: the raw columns' dlt types): a
        target loads in its raw column's type (else the declared or cast one), and is
        required where its source is. A field only renamed or moved whose type the API
        describes otherwise than raw holds it loads as described, into its variant column
        as it would without the mapping (see :meth:`with_variants`)."""
        self.mapping = maps
        sources = mapping.targets_of(maps)
        self.mapped_types = {}
        for m in maps:
            declared = self.fields.get(m.target)
            raw = known.get(m.target)
            retyped = m.moves and declared and raw and DLT_TYPES.get(declared) != raw
            kind = None if retyped else DLT_ARROW_TYPES.get(raw or "")
            if kind is None and declared:
                kind = ARROW_TYPES.get(declared)
            if kind is not None:
                self.mapped_types[m.target] = kind
        required = [sources[n].target if n in sources else n for n in self.required]
        self.required = tuple(dict.fromkeys(required))
        return self

    def with_variants(self, known: dict[str, str], freeze_types: bool = False) -> EntitySpec:
        """Route a field whose API type no longer matches its raw column (``known``:
        column -> dlt data type) to a variant column ``<field>__v_<type>``, as dlt does
        for rows of dicts: the old column keeps its type and values, nothing is cast.
        With ``freeze_types`` (the entity's contract freezes data types) the field is
        held back instead: rows carrying a value in it go to quarantine."""
        # a field a mapping casts or combines keeps its raw column; one it only renames
        # or moves changes type as the API describes it
        mapped = self.mapped_sources | {m.target for m in self.mapping if not m.moves}
        fields = {n: t for n, t in self.fields.items() if n not in mapped}
        changed = type_changes(fields, known)
        self.reshaped = bool(known) and (
            bool(changed) or any(name not in known for name in fields)
        )
        if freeze_types:
            self.frozen, self.variants = changed, {}
        else:
            self.variants = {n: f"{n}__v_{DLT_TYPES[new]}" for n, (_, new) in changed.items()}
            self.frozen = {}
        return self

    @property
    def mapped_sources(self) -> set[str]:
        """API fields a mapping reads: read in whatever type they come, then mapped."""
        return set(mapping.targets_of(self.mapping))

    def arrow_schema(self) -> pa.Schema | None:
        if not self.fields:
            return None
        free = self.mapped_sources
        # a type the loader does not know (an object, a list) is read as it comes
        cols = [
            pa.field(n, ARROW_TYPES[t])
            for n, t in self.fields.items() if n not in free and t in ARROW_TYPES
        ]
        if self.deleted_marker and self.deleted_marker not in self.fields:
            cols.append(pa.field(self.deleted_marker, pa.timestamp("us", tz="UTC")))
        return pa.schema(cols)


@dataclass
class ParsedPage:
    table: pa.Table | None
    quarantined: list[dict[str, Any]]
    # what the page's records looked like, before validation and mapping
    seen: EntitySeen = field(default_factory=EntitySeen)


def check_page_type(
    spec: EntitySpec, number: int, response: Response, listing: Listing | None = None
) -> None:
    """Refuse a page that is not in the listing's format (default NDJSON): an HTML error
    page a proxy answered with 200, a JSON document where NDJSON was asked for. Its lines
    are not records, and quarantining them line by line would hide that the listing was
    cut short."""
    listing = listing or Listing()
    media = check_content_type(listing, response)
    if media is None:
        return
    query = response.request.path_url.partition("?")[2] if response.request else ""
    raise PageError(
        f"{spec.name}: page {number} of {spec.path} ({query or 'first page'}) came back as"
        f" {media} ({response.status_code}), not {listing.format.upper()}:"
        f" {response.content[:120]!r}. The"
        " API, or a proxy in front of it, answered with something other than records;"
        f" the listing of {spec.name} stopped there: run it again once the API serves"
        " records",
        response.status_code,
        f"a {media} page instead of records:"
        f" {response.content[:200].decode('utf-8', 'replace')}",
    )


def _read(body: bytes, schema: pa.Schema | None) -> pa.Table:
    opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
    return pj.read_json(io.BytesIO(body), parse_options=opts)


# why a record is held, in one word (the quarantine's ``rule`` column)
RULES = {
    "malformed_json": "the line is not JSON",
    "not_an_object": "the line is JSON but not an object",
    "wrong_type": "a value does not have its field's type",
    "required_null": "a required field (key, cursor, or required by the API) is null or"
    " missing",
    "out_of_order": "the record is older than the start the page was requested from",
    "duplicate_key": "the same key came twice in one page; the newest loads",
    "name_collision": "two fields become the same column once normalized",
    "frozen_type": "a field's type changed on an entity whose data types are frozen",
    "unreadable": "the record cannot be read into a table",
}


def _quarantine_row(
    spec: EntitySpec, reason: str, record: str, rule: str, field_name: str | None = None
) -> dict[str, Any]:
    return {
        "entity": spec.name,
        "rule": rule,
        "field": field_name,
        "reason": reason,
        "record": record,
        "quarantined_at": datetime.now(timezone.utc),
    }


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_FRACTION = re.compile(r"T[0-9:]+\.([0-9]+)")
# the column pyarrow's JSON reader names in its errors ("Column(/price) changed from...")
_ARROW_COLUMN = re.compile(r"Column\(/([^)/]+)")


def _check_value(value: Any, type_name: str) -> str | None:
    """Why ``value`` does not fit the API's declared type, or None if it does."""
    if value is None:
        return None
    ok = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "decimal": isinstance(value, str | int | float) and not isinstance(value, bool),
        "timestamp": isinstance(value, str),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }.get(type_name, True)
    if ok and type_name == "integer" and not INT64_MIN <= value <= INT64_MAX:
        return f"expected integer, got {json.dumps(value)[:60]} (beyond 64 bits)"
    if ok and type_name == "timestamp":
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            ok = False
        fraction = _FRACTION.search(value)
        if ok and fraction and len(fraction.group(1)) > 6:
            return f"expected timestamp, got {json.dumps(value)[:60]} (finer than microseconds)"
    if ok and type_name == "decimal" and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            ok = False
    return None if ok else f"expected {type_name}, got {json.dumps(value)[:60]}"


def _slow_path(
    spec: EntitySpec, body: bytes, schema: pa.Schema | None, seen: EntitySeen
) -> tuple[pa.Table | None, list[dict[str, Any]]]:
    """Split a page that does not parse as a whole into a table of its good lines and
    quarantined ones."""
    good: list[bytes] = []
    bad: list[dict[str, Any]] = []
    # a mapped field is read in whatever type it comes: only the others are checked
    free = spec.mapped_sources
    checked = {n: t for n, t in spec.fields.items() if n not in free}
    for raw in body.splitlines():
        if not raw.strip():
            continue
        text = raw.decode("utf-8", errors="replace")
        try:
            rec = json.loads(raw)
        except ValueError as exc:
            bad.append(_quarantine_row(spec, f"malformed JSON: {exc}", text, "malformed_json"))
            continue
        if not isinstance(rec, dict):
            bad.append(
                _quarantine_row(spec, "record is not a JSON object", text, "not_an_object")
            )
            continue
        problems = {
            name: f"{name}: {why}"
            for name, type_name in checked.items()
            if (why := _check_value(rec.get(name), type_name))
        }
        if problems:
            reason = "wrong type: " + "; ".join(problems.values())
            bad.append(_quarantine_row(spec, reason, text, "wrong_type", ", ".join(problems)))
            observe_held(seen, rec, spec.primary_key, spec.deleted_marker,
                         {n: rec.get(n) for n in problems})
        else:
            good.append(raw)
    if not good:
        return None, bad
    try:
        return _read(b"\n".join(good), schema), bad
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    return _read_line_by_line(spec, good, schema, bad), bad


def _read_line_by_line(
    spec: EntitySpec, lines: list[bytes], schema: pa.Schema | None, bad: list[dict[str, Any]]
) -> pa.Table | None:
    """The good lines still do not read together: a value Arrow cannot take in its
    declared type (a decimal sent as a number), the same field twice in a record, or a
    field the API does not declare arriving with different types. Each line is read on
    its own; a field the API does not declare takes the type of the first line with a
    value in it, and the lines that disagree are quarantined with Arrow's reason."""
    pinned = schema if schema is not None else pa.schema([])
    keep: list[bytes] = []
    for raw in lines:
        try:
            row = _read(raw, pinned)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            message = str(exc).splitlines()[0]
            column = _ARROW_COLUMN.search(message)
            text = raw.decode("utf-8", errors="replace")
            if column and "changed from" in message:
                reason = f"wrong type: {column.group(1)}: {message}"
                bad.append(_quarantine_row(spec, reason, text, "wrong_type", column.group(1)))
            else:
                reason = f"unreadable record: {message}"
                bad.append(_quarantine_row(spec, reason, text, "unreadable"))
            continue
        keep.append(raw)
        for f in row.schema:
            if pinned.get_field_index(f.name) < 0 and not _holds_null_type(f.type):
                pinned = pinned.append(f)
    return _read(b"\n".join(keep), pinned) if keep else None


def _holds_null_type(type_: pa.DataType) -> bool:
    """Whether a type inferred from one line says nothing about some value (null)."""
    if pa.types.is_null(type_):
        return True
    if pa.types.is_struct(type_):
        return any(_holds_null_type(type_.field(i).type) for i in range(type_.num_fields))
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return _holds_null_type(type_.value_type)
    return False


def _rows_as_json(table: pa.Table, mask: pa.Array) -> list[str]:
    return [json.dumps(r, default=str) for r in table.filter(mask).to_pylist()]


def _any_of(masks: Iterable[pa.Array]) -> pa.Array:
    return functools.reduce(pc.or_, masks)


def _carries(table: pa.Table, names: Iterable[str]) -> pa.Array:
    """Rows with a value in any of the columns ``names``."""
    return _any_of(pc.is_valid(table[n]) for n in names)


def _set_aside(
    spec: EntitySpec, table: pa.Table, mask: pa.Array, reason: str,
    quarantined: list[dict[str, Any]], rule: str, field_name: str | None = None,
) -> pa.Table:
    """``table`` without the rows of ``mask``, which go to ``quarantined`` with
    ``reason`` (``rule``: one of :data:`RULES`; ``field_name``: the field(s) at fault)."""
    if not pc.any(mask).as_py():
        return table
    quarantined.extend(
        _quarantine_row(spec, reason, rec, rule, field_name)
        for rec in _rows_as_json(table, mask)
    )
    return table.filter(pc.invert(mask))


def _set_aside_null_required(
    spec: EntitySpec, table: pa.Table, quarantined: list[dict[str, Any]]
) -> pa.Table:
    """Set aside the rows with a null in the key, the cursor, or (live rows only) a field
    the API declares required; each reason names the fields that are null."""
    pk, cursor = spec.primary_key, spec.cursor
    nulls = {n: pc.is_null(table[n]) for n in (pk, cursor)}
    live = None
    if spec.deleted_marker and spec.deleted_marker in table.column_names:
        live = pc.is_null(table[spec.deleted_marker])
    for name in spec.required:
        if name in table.column_names and name not in nulls:
            null = pc.is_null(table[name])
            nulls[name] = pc.and_(null, live) if live is not None else null
    bad = _any_of(nulls.values())
    if not pc.any(bad).as_py():
        return table
    # per row, the names of its null fields ("total_cents, ordered_at"; "" if none)
    parts = [pc.if_else(pc.fill_null(mask, False), f"{n}, ", "") for n, mask in nulls.items()]
    named = pc.utf8_rtrim(pc.binary_join_element_wise(*parts, ""), characters=", ")
    for fields in pc.unique(pc.filter(named, bad)).to_pylist():
        which = pc.equal(named, fields)
        reason = f"null in a required field: {fields} (null or missing)"
        table = _set_aside(spec, table, which, reason, quarantined, "required_null", fields)
        named = pc.filter(named, pc.invert(which))
    return table


def parse_page(
    spec: EntitySpec, body: bytes, since: datetime | None = None,
    since_param: str = PARAM_SINCE,
) -> ParsedPage:
    """Parse one NDJSON page into a valid Arrow table plus quarantined records
    (``since``: the start the page was requested from, as ``since_param``; rows before
    it are quarantined)."""
    quarantined: list[dict[str, Any]] = []
    seen = EntitySeen()
    if not body.strip():
        return ParsedPage(None, quarantined, seen)
    schema = spec.arrow_schema()
    try:
        table = _read(body, schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        parsed, quarantined = _slow_path(spec, body, schema, seen)
        if parsed is None:
            return ParsedPage(None, quarantined, seen)
        table = parsed
    observe_table(seen, table, spec.primary_key, spec.deleted_marker)
    if spec.mapping:
        table = _map(spec, table, quarantined)
        if table is None:
            return ParsedPage(None, quarantined, seen)

    # required values: key and cursor always; declared required fields on live rows
    pk, cursor = spec.primary_key, spec.cursor
    for name in (pk, cursor):
        if name not in table.column_names:
            raise PageError(
                f"{spec.name}: the API's records have no {name!r} field; check the endpoint"
                " declaration (primary_key / cursor)",
                answered=f"records without the {name!r} field",
            )
    if spec.soft_delete_field:
        table = mark_soft_deleted(spec, table)
    table = _set_aside_null_required(spec, table, quarantined)

    # rows behind the requested start: the API broke its order; merging them could put
    # an older version over a newer one, and dlt's incremental would drop them unseen
    if since is not None and table.num_rows and pa.types.is_timestamp(table[cursor].type):
        behind = pc.less(table[cursor], pa.scalar(since, table[cursor].type))
        reason = (
            f"{cursor} before the requested {since_param} ({since.isoformat()}): the"
            " API served a row out of order"
        )
        table = _set_aside(spec, table, behind, reason, quarantined, "out_of_order", cursor)

    # the same key twice in one page: the newest version loads (the first of equals),
    # the others are quarantined
    if table.num_rows and pc.count_distinct(table[pk]).as_py() < table.num_rows:
        older = pc.invert(pa.array(_newest_per_key(table[pk], table[cursor])))
        table = _set_aside(spec, table, older, f"duplicate {pk} in the same page", quarantined,
                           "duplicate_key", pk)
    table = _drop_colliding_names(spec, table, quarantined)
    if not table.num_rows:
        return ParsedPage(None, quarantined, seen)
    # the key and the cursor are never null past this point: saying so, as dlt's schema
    # does for the key, spares dlt's incremental from splitting every page by cursor nulls
    schema = table.schema
    for name in (pk, cursor):
        i = schema.get_field_index(name)
        schema = schema.set(i, schema.field(i).with_nullable(False))
    table = table.cast(schema)
    if spec.frozen:
        table = _hold_back_frozen(spec, table, quarantined)
        if table is None:
            return ParsedPage(None, quarantined, seen)
    if spec.variants:
        table = table.rename_columns([spec.variants.get(n, n) for n in table.column_names])
    return ParsedPage(table, quarantined, seen)


MARKER_TYPE = pa.timestamp("us", tz="UTC")


def mark_soft_deleted(spec: EntitySpec, table: pa.Table) -> pa.Table:
    """``table`` with the records whose ``soft_delete_field`` is true made tombstones:
    their ``deleted_marker`` set to their cursor (a marker the record already carries
    stays)."""
    flag_name, marker = spec.soft_delete_field, spec.deleted_marker
    if not flag_name or not marker or flag_name not in table.column_names:
        return table
    try:
        flag = pc.fill_null(pc.cast(table[flag_name], pa.bool_()), False)
        version = pc.cast(table[spec.cursor], MARKER_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PageError(
            f"{spec.name}: the soft-delete flag {flag_name!r} is not a boolean, or the"
            f" cursor {spec.cursor!r} not a time: {exc}; check soft_delete_field under"
            f" [sources.replica.endpoints.{spec.name}]",
            answered=f"records whose {flag_name!r} is not a boolean",
        ) from None
    deleted = pc.if_else(flag, version, pa.scalar(None, MARKER_TYPE))
    if marker in table.column_names:
        deleted = pc.coalesce(pc.cast(table[marker], MARKER_TYPE), deleted)
        return table.set_column(
            table.schema.get_field_index(marker), pa.field(marker, MARKER_TYPE), deleted
        )
    return table.append_column(pa.field(marker, MARKER_TYPE), deleted)


def parse_deletions(spec: EntitySpec, body: bytes) -> pa.Table | None:
    """A page of the deletions endpoint ({key, deleted marker} per line; other fields
    ignored) as (key, marker), rows without either left out (they delete nothing)."""
    marker = spec.deleted_marker
    if not body.strip() or not marker:
        return None
    key_type = ARROW_TYPES.get(spec.fields.get(spec.primary_key, ""))
    try:
        # the key inferred, so that a page without it is told from one without deletions
        table = pj.read_json(io.BytesIO(body), parse_options=pj.ParseOptions(
            explicit_schema=pa.schema([pa.field(marker, MARKER_TYPE)]),
            unexpected_field_behavior="infer"))
        if key_type is not None and spec.primary_key in table.column_names:
            table = table.set_column(
                table.schema.get_field_index(spec.primary_key), spec.primary_key,
                pc.cast(table[spec.primary_key], key_type))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise PageError(
            f"{spec.name}: a page of {spec.deletions_path} is not deletions"
            f" ({{{spec.primary_key}, {marker}}} per record): {exc}",
            answered=f"deletions that cannot be read: {exc}"[:200],
        ) from None
    if spec.primary_key not in table.column_names:
        raise PageError(
            f"{spec.name}: the deletions at {spec.deletions_path} have no"
            f" {spec.primary_key!r} field",
            answered=f"deletions without the {spec.primary_key!r} field",
        )
    table = table.select([spec.primary_key, marker])
    table = table.filter(pc.and_(pc.is_valid(table[spec.primary_key]),
                                 pc.is_valid(table[marker])))
    # the key is never null past this point, as dlt's schema says of it
    return table.cast(table.schema.set(0, table.schema.field(0).with_nullable(False)))


def _map(
    spec: EntitySpec, table: pa.Table, quarantined: list[dict[str, Any]]
) -> pa.Table | None:
    """``table`` with the configured field mappings applied; a record whose value the
    mapping cannot convert is quarantined (each record is tried on its own only then)."""
    try:
        return mapping.apply(spec.mapping, table, spec.mapped_types)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass  # some value does not convert: find which, record by record, below
    kept = []
    for i in range(table.num_rows):
        row = table.slice(i, 1)
        try:
            kept.append(mapping.apply(spec.mapping, row, spec.mapped_types))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            maps = "; ".join(m.describe() for m in spec.mapping)
            reason = f"wrong type: the field mapping ({maps}) cannot convert it: {exc}"
            [record] = _rows_as_json(row, pa.array([True]))
            targets = ", ".join(m.target for m in spec.mapping)
            quarantined.append(_quarantine_row(spec, reason, record, "wrong_type", targets))
    return pa.concat_tables(kept, promote_options="permissive") if kept else None


def _newest_per_key(keys: pa.ChunkedArray, cursors: pa.ChunkedArray) -> list[bool]:
    """Which rows are the newest of their key (the first one, among equals)."""
    stamps = pc.cast(pc.cast(cursors, pa.timestamp("us", tz="UTC")), pa.int64()).to_pylist()
    best: dict[Any, int] = {}
    for i, key in enumerate(keys.to_pylist()):
        if key not in best or stamps[i] > stamps[best[key]]:
            best[key] = i
    chosen = set(best.values())
    return [i in chosen for i in range(len(stamps))]


def _drop_colliding_names(
    spec: EntitySpec, table: pa.Table, quarantined: list[dict[str, Any]]
) -> pa.Table:
    """Fields whose names become the same column once normalized (``Price`` and
    ``price``): the declared one (or the first) stays; records carrying a value in
    another are quarantined whole, so no value is stored under a column it was not
    sent in."""
    groups: dict[str, list[str]] = {}
    for name in table.column_names:
        groups.setdefault(NAMING.normalize_identifier(name), []).append(name)
    declared = {*spec.fields, spec.primary_key, spec.cursor, spec.deleted_marker}
    extra: list[str] = []
    for column, names in groups.items():
        if len(names) < 2:
            continue
        stays = next((n for n in names if n in declared), names[0])
        others = [n for n in names if n != stays]
        reason = (
            f"field names collide once normalized: {', '.join(map(repr, names))} all"
            f" become column {column!r}; only {stays!r} is loaded"
        )
        table = _set_aside(spec, table, _carries(table, others), reason, quarantined,
                           "name_collision", ", ".join(names))
        extra += others
    return table.drop_columns(extra) if extra else table


def _hold_back_frozen(
    spec: EntitySpec, table: pa.Table, quarantined: list[dict[str, Any]]
) -> pa.Table | None:
    """Quarantine the rows that carry a value in a field whose type changed on an entity
    with frozen data types; the field is dropped from the rows that load (all null)."""
    names = [n for n in spec.frozen if n in table.column_names]
    if not names:
        return table
    changes = "; ".join(
        f"type of {n} changed from {spec.frozen[n][0]} to {spec.frozen[n][1]} upstream"
        for n in names
    )
    reason = (
        f"{changes}: data types are frozen on {spec.name} (schema contract); load once"
        " the change is accepted"
    )
    table = _set_aside(spec, table, _carries(table, names), reason, quarantined,
                       "frozen_type", ", ".join(names))
    table = table.drop_columns(names)
    return table if table.num_rows else None


QUARANTINE_KEY = "record_key"


def quarantine_key(entity: str, record: str) -> str:
    """What identifies a quarantined record: the entity and the record as received. A
    bad record the lookback window reads again has the same key, so the quarantine (a
    merge on it) holds it once, with the latest reason and time."""
    return hashlib.sha256(f"{entity}\n{record}".encode()).hexdigest()


def quarantine_table(rows: Iterable[dict[str, Any]], cursor: str) -> pa.Table:
    """Rejected records with the reason and their key. The (always null) cursor column
    lets the table pass the resource's incremental step untouched."""
    rows = [
        {**r, QUARANTINE_KEY: quarantine_key(r["entity"], r["record"])} for r in rows
    ]
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                pa.field(QUARANTINE_KEY, pa.string(), nullable=False),
                ("entity", pa.string()),
                ("rule", pa.string()),
                ("field", pa.string()),
                ("reason", pa.string()),
                ("record", pa.string()),
                ("quarantined_at", pa.timestamp("us", tz="UTC")),
            ]
        ),
    )
    return table.append_column(
        pa.field(cursor, pa.timestamp("us", tz="UTC")),
        pa.nulls(table.num_rows, pa.timestamp("us", tz="UTC")),
    )
