"""Field mappings: a change of the API's fields absorbed by configuration, not code.

When the platform renames, combines, retypes or nests a field, one entry under
``[sources.replica.field_mapping.<entity>]`` in ``.dlt/config.toml`` keeps the raw
column the models read as it was::

    [sources.replica.field_mapping.orders]
    total_cents = "total_amount"                      # renamed: total_amount -> total_cents
    [sources.replica.field_mapping.products]
    price = { from = "price", cast = "integer", multiply = 100 }  # "12.99" -> 1299
    [sources.replica.field_mapping.customers]
    full_name = { combine = ["first_name", "last_name"], separator = " " }
    [sources.replica.field_mapping.order_items]
    quantity = "amounts.quantity"                     # a field moved into an object

The left-hand side is the raw column (the field as the models know it); the right, what
the API sends now. Each page is mapped as it is parsed, vectorised, before validation,
so a record mapped into shape loads instead of going to quarantine; ``salesflow
quarantine replay`` loads again what was held before the mapping existed. A target the
API still sends keeps its own values; the mapped value fills it where it is null. The
sources leave the loaded table (a cast in place keeps its name).

May import: pyarrow, and this package's ``errors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from loaders.replica.errors import ReplicaError

CASTS = ("integer", "string", "boolean", "timestamp", "decimal", "number")
_KEYS = {"from", "combine", "cast", "multiply", "separator"}


@dataclass(frozen=True)
class FieldMap:
    """One raw column and what the API sends for it now."""

    target: str
    sources: tuple[str, ...]  # one field (a dotted path reaches into an object), or several
    cast: str | None = None  # an API type, or "number"
    multiply: float | None = None
    separator: str | None = None  # set: the sources are combined into one string

    def describe(self) -> str:
        if self.separator is not None:
            how = f"{' + '.join(self.sources)} combined with {self.separator!r}"
        else:
            how = self.sources[0]
        if self.multiply is not None:
            how += f" x {self.multiply:g}"
        if self.cast:
            how += f" as {self.cast}"
        return f"{self.target} <- {how}"

    @property
    def moves(self) -> bool:
        """A rename or a move: one field taken as it comes, nothing cast or combined."""
        return self.cast is None and self.multiply is None and self.separator is None

    @property
    def top_sources(self) -> set[str]:
        """The API's top-level fields this mapping reads."""
        return {s.split(".", 1)[0] for s in self.sources}


def parse(entity: str, config: Mapping[str, Any] | None) -> tuple[FieldMap, ...]:
    """One entity's mappings from configuration; a bad entry is a :class:`ReplicaError`
    naming it."""
    out = []
    for target, spec in (config or {}).items():
        where = f"sources.replica.field_mapping.{entity}.{target}"
        if isinstance(spec, str):
            out.append(FieldMap(target, (_path(where, spec),)))
            continue
        if not isinstance(spec, Mapping):
            raise ReplicaError(f"{where}: expected a field name or a table, got {spec!r}")
        unknown = set(spec) - _KEYS
        if unknown:
            raise ReplicaError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        if ("from" in spec) == ("combine" in spec):
            raise ReplicaError(f"{where}: give exactly one of 'from' or 'combine'")
        cast = spec.get("cast")
        if cast is not None and cast not in CASTS:
            raise ReplicaError(f"{where}: cast must be one of {', '.join(CASTS)}, got {cast!r}")
        multiply = spec.get("multiply")
        if multiply is not None and not isinstance(multiply, int | float):
            raise ReplicaError(f"{where}: multiply must be a number, got {multiply!r}")
        if "combine" in spec:
            fields = spec["combine"]
            if not isinstance(fields, list) or len(fields) < 2:
                raise ReplicaError(f"{where}: combine takes a list of two fields or more")
            sources = tuple(_path(where, f) for f in fields)
            separator = str(spec.get("separator", " "))
        else:
            sources, separator = (_path(where, spec["from"]),), None
        out.append(FieldMap(target, sources, cast, multiply, separator))
    return tuple(out)


def _path(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value or value.startswith(".") or ".." in value:
        raise ReplicaError(f"{where}: {value!r} is not a field name (or a.b path)")
    return value


def _column(table: pa.Table, path: str) -> pa.ChunkedArray | None:
    """A top-level field, or a field inside an object (``amounts.total_cents``)."""
    head, *rest = path.split(".")
    if head not in table.column_names:
        return None
    column = table[head]
    for name in rest:
        if not pa.types.is_struct(column.type) or column.type.get_field_index(name) < 0:
            return None
        column = pc.struct_field(column, name)
    return column


def _values(m: FieldMap, table: pa.Table) -> pa.ChunkedArray | None:
    columns = [_column(table, s) for s in m.sources]
    if any(c is None for c in columns):
        return None
    if m.separator is not None:
        texts = [pc.cast(c, pa.string()) for c in columns]
        return pc.binary_join_element_wise(*texts, m.separator, null_handling="skip")
    values = columns[0]
    if m.multiply is not None:
        values = pc.multiply(pc.cast(values, pa.float64()), m.multiply)
    return values


def apply(
    maps: tuple[FieldMap, ...], table: pa.Table, types: Mapping[str, pa.DataType]
) -> pa.Table:
    """``table`` with each mapping applied (``types``: the type each target loads as).
    A value that cannot be cast raises :class:`pa.ArrowInvalid`: the page then takes
    the slow path, record by record."""
    drop: set[str] = set()
    for m in maps:
        values = _values(m, table)
        if values is None:
            continue  # the API does not send the source (any more, or yet)
        target_type = types.get(m.target) or _cast_type(m.cast) or values.type
        if pa.types.is_integer(target_type) and pa.types.is_floating(values.type):
            values = pc.round(values)
        values = pc.cast(values, target_type)
        if m.target in table.column_names:
            current = pc.cast(table[m.target], target_type)
            merged = pc.coalesce(current, values)
            table = table.set_column(table.column_names.index(m.target), m.target, merged)
        else:
            table = table.append_column(m.target, values)
        drop |= m.top_sources
    targets = {m.target for m in maps}
    gone = [n for n in table.column_names if n in drop and n not in targets]
    return table.drop_columns(gone) if gone else table


def _cast_type(cast: str | None) -> pa.DataType | None:
    return {
        "integer": pa.int64(), "string": pa.string(), "boolean": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"), "decimal": pa.string(),
        "number": pa.float64(),
    }.get(cast or "")


def targets_of(maps: tuple[FieldMap, ...]) -> dict[str, FieldMap]:
    """Each mapped source field (top level) -> its mapping."""
    return {s: m for m in maps for s in m.top_sources}


def _get(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for name in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _converted(value: Any, m: FieldMap) -> Any:
    """``value`` scaled and cast as ``m`` says; a value that does not convert is left as
    sent (the check reading it then reports its type)."""
    if value is None:
        return None
    try:
        if m.multiply is not None:
            value = round(float(value) * m.multiply, 9)
        if m.cast == "integer" and float(value).is_integer():
            return int(float(value))
        if m.cast == "number":
            return float(value)
        if m.cast in ("string", "decimal", "timestamp"):
            return str(value)
    except (TypeError, ValueError):
        return value
    return value


def map_record(maps: tuple[FieldMap, ...], record: dict[str, Any]) -> dict[str, Any]:
    """One record (a dict) as the loader maps it, for checks that read a few records
    (the contract's verification); values are renamed, combined and scaled, not cast."""
    out = dict(record)
    drop: set[str] = set()
    for m in maps:
        if not all(s.split(".", 1)[0] in record for s in m.sources):
            continue
        values = [_get(record, s) for s in m.sources]
        if m.separator is not None:
            value: Any = m.separator.join(str(v) for v in values if v is not None)
        else:
            value = _converted(values[0], m)
        if out.get(m.target) is None:
            out[m.target] = value
        drop |= m.top_sources
    targets = {m.target for m in maps}
    return {k: v for k, v in out.items() if k not in drop or k in targets}


def map_described(
    maps: tuple[FieldMap, ...], fields: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """An entity's fields as the API's schema describes them, as the loader maps them: a
    mapped target is described with its source's requirement (and the cast type)."""
    by_name = {f["name"]: f for f in fields}
    out = [f for f in fields if f["name"] not in targets_of(maps)]
    for m in maps:
        if m.target in by_name or not all(s.split(".", 1)[0] in by_name for s in m.sources):
            continue
        first = by_name[m.sources[0].split(".", 1)[0]]
        api_type = m.cast or ("string" if m.separator is not None else first.get("type"))
        if "." in m.sources[0]:
            api_type = m.cast or None
        out.append({**first, "name": m.target, "type": api_type,
                    "description": f"mapped: {m.describe()}"})
    return out
