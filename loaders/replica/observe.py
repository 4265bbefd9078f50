"""What the records of a load actually looked like, per entity: the data's own schema.

The API's self-description (``/v1/schema``) can lag behind its data, or say nothing of
a change: the records are the truth. Every page is observed as it is parsed, before
any record is set aside, so a field that only arrives in records that go to quarantine
is seen too. Observing a page is vectorised (a column's null count is known to Arrow;
live rows are one pass over the deletion marker) and keeps a handful of sample values
per field; the quarantine's slow path, which reads bad lines one by one anyway, adds
the fields of the records it holds and the values of the wrong type it found.

May import: pyarrow (nothing else of the project).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# sample values kept per field and page (for evidence and for recognising a rename)
SAMPLES = 5


def json_type(value: Any) -> str:
    """The JSON type of a parsed value: string, integer, number, boolean, object, array."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def arrow_json_type(type_: pa.DataType) -> str:
    """The JSON type behind an Arrow type read from NDJSON."""
    if pa.types.is_boolean(type_):
        return "boolean"
    if pa.types.is_integer(type_):
        return "integer"
    if pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        return "number"
    if pa.types.is_struct(type_) or pa.types.is_map(type_):
        return "object"
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return "array"
    if pa.types.is_null(type_):
        return "null"
    return "string"  # strings, and timestamps (ISO strings in the JSON)


# the dlt data type a column of each JSON type loads as
DLT_TYPE_OF_JSON = {
    "integer": "bigint", "number": "double", "string": "text", "boolean": "bool",
    "object": "json", "array": "json",
}


def arrow_dlt_type(type_: pa.DataType) -> str:
    """The dlt data type a column read as ``type_`` loads as."""
    if pa.types.is_timestamp(type_):
        return "timestamp"
    return DLT_TYPE_OF_JSON.get(arrow_json_type(type_), "text")


@dataclass
class FieldSeen:
    """One field over the records of a load."""

    filled: int = 0  # live records with a value in it
    json_type: str = "null"  # of its values (the first non-null type seen)
    data_type: str | None = None  # the dlt data type it would load as
    nested_keys: tuple[str, ...] = ()  # an object's keys
    # (key, value as JSON) of a few records with a value
    samples: list[tuple[Any, str]] = field(default_factory=list)
    wrong_type: int = 0  # records held because its value had another type
    wrong_json_type: str | None = None

    def sample(self) -> str | None:
        return self.samples[0][1] if self.samples else None


@dataclass
class EntitySeen:
    """The records of one entity in one load."""

    records: int = 0  # live records (tombstones carry nothing but key and time)
    fields: dict[str, FieldSeen] = field(default_factory=dict)

    def field(self, name: str) -> FieldSeen:
        return self.fields.setdefault(name, FieldSeen())


def _live(table: pa.Table, deleted_marker: str | None) -> pa.Array | None:
    if deleted_marker and deleted_marker in table.column_names:
        return pc.is_null(table[deleted_marker])
    return None


def observe_table(
    seen: EntitySeen, table: pa.Table, key: str, deleted_marker: str | None
) -> None:
    """Add a parsed page (every record, before validation) to ``seen``."""
    live = _live(table, deleted_marker)
    n_live = table.num_rows if live is None else int(pc.sum(live).as_py() or 0)
    seen.records += n_live
    if not n_live:
        return
    head = table.slice(0, min(table.num_rows, 256))  # samples come from the page's head
    head_live = live.slice(0, head.num_rows) if live is not None else None
    for name, column in zip(table.column_names, table.columns, strict=True):
        if name == deleted_marker:
            continue
        filled = len(column) - column.null_count
        if live is not None and filled:
            filled = int(pc.sum(pc.and_(pc.is_valid(column), live)).as_py() or 0)
        f = seen.field(name)
        f.filled += filled
        if not filled:
            continue
        if f.json_type == "null":
            f.json_type, f.data_type = arrow_json_type(column.type), arrow_dlt_type(column.type)
            if pa.types.is_struct(column.type):
                f.nested_keys = tuple(column.type.field(i).name
                                      for i in range(column.type.num_fields))
        if len(f.samples) < SAMPLES:
            _add_samples(f, head, head_live, name, key)


def _add_samples(
    f: FieldSeen, head: pa.Table, live: pa.Array | None, name: str, key: str
) -> None:
    mask = pc.is_valid(head[name])
    if live is not None:
        mask = pc.and_(mask, live)
    picked = head.filter(mask).slice(0, SAMPLES - len(f.samples))
    keys = picked[key].to_pylist() if key in picked.column_names else [None] * picked.num_rows
    for k, v in zip(keys, picked[name].to_pylist(), strict=True):
        f.samples.append((k, json.dumps(v, default=str)[:200]))


def observe_held(
    seen: EntitySeen, record: dict[str, Any], key: str, deleted_marker: str | None,
    wrong: dict[str, Any] | None = None,
) -> None:
    """Add one record the slow path held back (``wrong``: its fields whose values had
    another type than declared, with the value)."""
    if deleted_marker and record.get(deleted_marker) is not None:
        return
    seen.records += 1
    for name, value in record.items():
        if value is None:
            continue
        f = seen.field(name)
        if wrong and name in wrong:
            f.wrong_type += 1
            f.wrong_json_type = f.wrong_json_type or json_type(value)
        else:
            f.filled += 1
            if f.json_type == "null":
                f.json_type = json_type(value)
                f.data_type = DLT_TYPE_OF_JSON.get(f.json_type, "text")
                if isinstance(value, dict):
                    f.nested_keys = tuple(value)
        if len(f.samples) < SAMPLES:
            f.samples.append((record.get(key), json.dumps(value, default=str)[:200]))


class Observations:
    """What every entity's records looked like in one load; pages of several entities
    are parsed in parallel threads, so adding is locked."""

    def __init__(self) -> None:
        self.entities: dict[str, EntitySeen] = {}
        self._lock = threading.Lock()

    def add(self, entity: str, page: EntitySeen) -> None:
        with self._lock:
            total = self.entities.setdefault(entity, EntitySeen())
            total.records += page.records
            for name, f in page.fields.items():
                t = total.field(name)
                t.filled += f.filled
                t.wrong_type += f.wrong_type
                t.wrong_json_type = t.wrong_json_type or f.wrong_json_type
                if t.json_type == "null":
                    t.json_type, t.nested_keys = f.json_type, f.nested_keys
                    t.data_type = f.data_type
                t.samples.extend(f.samples[: max(0, 4 * SAMPLES - len(t.samples))])
