"""Drifts: any change of shape to any entity of the replica API, declared at runtime.

A drift (:class:`Drift`) is one change — a field renamed, dropped, nulled, retyped, added,
nested, given a new value; an endpoint removed, added or stalled — declared in
``drifts.json`` in the simulator's directory (replaced atomically by :func:`add` and
:func:`clear`, or ``salesflow sim drift ...``) and re-read by the serving process when the
file changes. Three switches say who learns of it: ``enacted`` (the records change),
``described`` (``/v1/schema`` says so) and ``announced`` (``/v1/announcements`` lists it).

A drift changes only what the API serves: production, the replica and its feeds are
untouched, so the simulator's database stays the truth a test reconciles against. The
API rewrites records in SQLite: each drift in force on an endpoint is one SQL expression
over the feed's ``record`` column (``json_set``, ``json_remove``, ``->``, ``CASE`` on the
feed key ``k``), applied in order as layers over the page (:func:`plan`); a drifted page
still builds no Python object per row, and an endpoint without drifts is served by the
same SQL as before.

Imports no other project module but ``model``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from simulator.model import ENTITIES, Field, fields_at

DRIFTS_FILE = "drifts.json"
REPLICA_DB = "replica.db"  # simulator.store.REPLICA: read for the evolutions applied

KINDS = (
    "rename", "drop", "null", "retype", "add", "nest", "new_value",
    "remove_endpoint", "add_endpoint", "stall",
)
RETYPES = ("string", "number", "integer", "boolean")
BREAKING = ("rename", "drop", "null", "retype", "nest", "remove_endpoint")
# the drift's arguments each kind requires, and those it may take besides
ARGUMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rename": (("field", "to"), ()),
    "drop": (("field",), ()),
    "null": (("field",), ()),
    "retype": (("field", "to"), ()),
    "add": (("field",), ("value", "source")),
    "nest": (("fields", "to"), ()),
    "new_value": (("field", "value"), ("share",)),
    "remove_endpoint": ((), ()),
    "add_endpoint": (("to",), ()),
    "stall": ((), ()),
}
RESERVED = ("schema", "announcements")  # /v1/ paths that are not listings
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DriftError(ValueError):
    """A drift that cannot be applied as declared."""


class _Unset:
    """No ``value`` given (``None`` is a value: JSON null)."""

    def __repr__(self) -> str:
        return "UNSET"

    def __deepcopy__(self, memo: dict) -> _Unset:
        return self


UNSET: Any = _Unset()


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_iso() -> str:
    return _iso(datetime.now(timezone.utc))


def normalize_time(value: str) -> str:
    """An ISO time in the platform's format (UTC, microseconds, ``Z``)."""
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise DriftError(f"not an ISO-8601 time: {value!r}") from exc
    return _iso(ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc))


@dataclass(frozen=True)
class Drift:
    kind: str  # one of KINDS
    entity: str  # the endpoint it applies to (an entity, or one an add_endpoint made)
    field: str | None = None
    to: str | None = None  # rename/nest: the new field; retype: the type; add_endpoint: name
    value: Any = UNSET  # add, new_value: a JSON value
    source: str | None = None  # add: the field copied
    fields: tuple[str, ...] = ()  # nest: the fields moved
    share: float = 0.1  # new_value: the share of records (by key) served the new value
    effective_at: str | None = None  # ISO; in force for every record served from then on
    described: bool = False  # /v1/schema reflects it
    announced: bool = False  # /v1/announcements lists it
    enacted: bool = True  # False: described or announced, but records never change
    announced_at: str | None = None
    breaking: bool | None = None  # default by kind
    title: str = ""
    description: str = ""
    id: str = ""  # given by add()

    def __post_init__(self) -> None:
        items = self.fields.split(",") if isinstance(self.fields, str) else self.fields
        object.__setattr__(self, "fields", tuple(f.strip() for f in items if f.strip()))
        for name in ("effective_at", "announced_at"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, normalize_time(value))
        self._check_arguments()

    def _check_arguments(self) -> None:
        if self.kind not in KINDS:
            raise DriftError(f"unknown drift kind {self.kind!r}; known: {', '.join(KINDS)}")
        required, optional = ARGUMENTS[self.kind]
        given = {
            "field": self.field is not None, "to": self.to is not None,
            "value": self.value is not UNSET, "source": self.source is not None,
            "fields": bool(self.fields), "share": self.share != 0.1,
        }
        missing = [a for a in required if not given[a]]
        if missing:
            raise DriftError(f"{self.kind} needs {' and '.join(missing)}")
        extra = [a for a, g in given.items() if g and a not in required + optional]
        if extra:
            raise DriftError(f"{self.kind} takes no {' or '.join(extra)}")
        if self.kind == "add" and given["value"] == given["source"]:
            raise DriftError("add needs either a value or a source field (not both)")
        if not 0.0 < self.share <= 1.0:
            raise DriftError(f"share must be above 0 and at most 1, got {self.share}")
        if self.kind == "retype" and self.to not in RETYPES:
            raise DriftError(f"retype to {self.to!r}: one of {', '.join(RETYPES)}")
        names = [self.entity, self.field, self.source, *self.fields]
        if self.kind != "retype":
            names.append(self.to)
        for name in names:
            if name is not None and not NAME.match(name):
                raise DriftError(f"{name!r} is not a field or entity name (letters, digits, _)")
        if self.kind == "stall" and (self.described or self.announced):
            raise DriftError("a stall is not a change of shape: it is neither described"
                             " nor announced")
        if self.kind == "new_value" and self.described:
            raise DriftError("new_value changes no field's type: nothing to describe"
                             " (announce it instead)")

    # -- reading ---------------------------------------------------------------------

    def in_force(self, now: str) -> bool:
        """Whether the records (or the endpoint) are changed at ``now``."""
        return self.enacted and self.effective_at is not None and self.effective_at <= now

    def effective(self, now: str) -> bool:
        return self.effective_at is not None and self.effective_at <= now

    def is_breaking(self) -> bool:
        return self.kind in BREAKING if self.breaking is None else self.breaking

    def summary(self) -> str:
        """What the drift does, in one line."""
        e, f = self.entity, self.field
        value = json.dumps(self.value) if self.value is not UNSET else ""
        return {
            "rename": f"{e}.{f} renamed to {self.to}",
            "drop": f"{e}.{f} removed",
            "null": f"{e}.{f} served as null",
            "retype": f"{e}.{f} served as {self.to}",
            "add": f"new field {e}.{f} ("
            + (f"copy of {self.source})" if self.source else f"constant {value})"),
            "nest": f"{e}.{', '.join(self.fields)} moved into {self.to}",
            "new_value": f"new value {value} in {e}.{f} ({self.share:.0%} of records)",
            "remove_endpoint": f"endpoint /v1/{e} removed",
            "add_endpoint": f"new endpoint /v1/{self.to} with the records of {e}",
            "stall": f"{e} stops following production (stalled)",
        }[self.kind]

    def describe(self, now: str | None = None) -> str:
        """The drift and its state, in one line: ``d3 orders.total_cents renamed to ...``."""
        now = now or now_iso()
        if not self.enacted:
            state = "never enacted"
        elif self.effective(now):
            state = f"in force since {self.effective_at}"
        else:
            state = f"in force from {self.effective_at}"
        flags = [name for name in ("described", "announced") if getattr(self, name)]
        return f"{self.id} {self.summary()}: {state}" + (f"; {', '.join(flags)}" if flags else "")

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["fields"] = list(self.fields)
        if self.value is UNSET:
            del out["value"]
        return out


# -- the drift file ------------------------------------------------------------------------


def _read(directory: Path | str) -> tuple[int, list[Drift]]:
    path = Path(directory) / DRIFTS_FILE
    if not path.exists():
        return 1, []
    data = json.loads(path.read_text())
    known = {f.name for f in fields(Drift)}
    drifts = []
    for item in data.get("drifts", []):
        unknown = set(item) - known
        if unknown:
            raise DriftError(f"{path}: unknown drift settings {sorted(unknown)}")
        drifts.append(Drift(**item))
    return int(data.get("next_id", 1)), drifts


def _write(directory: Path | str, next_id: int, drifts: Sequence[Drift]) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".drifts-")
    with os.fdopen(fd, "w") as fh:
        json.dump({"next_id": next_id, "drifts": [x.to_json() for x in drifts]}, fh, indent=1)
    os.replace(tmp, d / DRIFTS_FILE)


def load(directory: Path | str) -> list[Drift]:
    """The drifts declared in ``directory``, in the order they apply."""
    return _read(directory)[1]


def add(directory: Path | str, drift: Drift) -> Drift:
    """Check ``drift`` against the entity's shape (its schema as the replica holds it, and
    the drifts declared before), give it an id and its times, and append it."""
    next_id, drifts = _read(directory)
    now = now_iso()
    drift = replace(
        drift,
        id=f"d{next_id}",
        effective_at=drift.effective_at or now,
        announced_at=drift.announced_at or now,
    )
    check(drift, drifts, applied_evolutions(directory))
    _write(directory, next_id + 1, [*drifts, drift])
    return drift


def clear(directory: Path | str) -> None:
    """Remove every drift (ids are not given again)."""
    next_id, _ = _read(directory)
    _write(directory, next_id, [])


def applied_evolutions(directory: Path | str) -> list[str]:
    """The schema evolutions applied to the replica in ``directory``, in order."""
    path = Path(directory) / REPLICA_DB
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in con.execute(
            "SELECT name FROM evolutions WHERE applied_at IS NOT NULL ORDER BY applied_at"
        )]
    finally:
        con.close()


class DriftWatcher:
    """The drifts declared, re-read when the file changes. A file changed less than
    :attr:`RACY` seconds ago is re-read on every call: a second change within the file
    system's timestamp granularity would not change its stamp."""

    RACY = 2.0

    def __init__(self, directory: Path | str) -> None:
        self.path = Path(directory) / DRIFTS_FILE
        self._stamp: tuple[int, int, int] | None = None
        self._racy = False
        self._lock = threading.Lock()
        self.current: list[Drift] = []

    def get(self) -> list[Drift]:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not self._racy:
            return self.current
        with self._lock:
            self.current = load(self.path.parent) if stamp else []
            self._stamp = stamp
            self._racy = stamp is not None and time.time() - stamp[0] / 1e9 < self.RACY
        return self.current


# -- shapes --------------------------------------------------------------------------------


def endpoints(drifts: Sequence[Drift]) -> dict[str, str]:
    """Every endpoint the drifts may name, to the entity whose records it serves."""
    out = {name: name for name in ENTITIES}
    for d in drifts:
        if d.kind == "add_endpoint" and d.to:
            out[d.to] = d.entity
    return out


def json_type(value: object) -> str:
    """The schema's type for a JSON value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string"


def reshape(shape: list[Field], d: Drift) -> list[Field]:
    """The fields once ``d`` is applied (a field it names that is not there: unchanged)."""
    names = {f.name: f for f in shape}
    if d.kind == "rename" and d.field in names and d.to:
        return [replace(f, name=d.to) if f.name == d.field else f for f in shape]
    if d.kind == "drop":
        return [f for f in shape if f.name != d.field]
    if d.kind == "null":
        return [replace(f, required=False) if f.name == d.field else f for f in shape]
    if d.kind == "retype" and d.to:
        return [replace(f, type=d.to) if f.name == d.field else f for f in shape]
    if d.kind == "add" and d.field:
        source = names.get(d.source or "")
        kind = source.type if source else json_type(d.value)
        return [*shape, Field(d.field, kind, False, d.summary())]
    if d.kind == "nest" and d.to:
        moved = [f for f in shape if f.name in d.fields]
        kept = [f for f in shape if f.name not in d.fields]
        return [*kept, Field(d.to, "object", any(f.required for f in moved),
                             f"{', '.join(f.name for f in moved)}")]
    return shape


def shape_of(endpoint: str, drifts: Sequence[Drift], applied: Sequence[str] = ()) -> list[Field]:
    """The endpoint's fields once ``drifts`` (those naming it, in order) are applied."""
    entity = endpoints(drifts).get(endpoint, endpoint)
    shape = fields_at(entity, list(applied))
    for d in drifts:
        if d.entity == endpoint:
            shape = reshape(shape, d)
    return shape


def enacted(drifts: Sequence[Drift]) -> list[Drift]:
    return [d for d in drifts if d.enacted]


def check(d: Drift, before: Sequence[Drift], applied: Sequence[str] = ()) -> None:
    """Raise :class:`DriftError` unless ``d`` applies to the records the drifts ``before``
    leave (those enacted: a drift never enacted leaves the records as they were)."""
    known = endpoints(before)
    if d.entity not in known:
        raise DriftError(f"unknown entity {d.entity!r}; known: {', '.join(known)}")
    if d.kind == "add_endpoint":
        if d.entity not in ENTITIES:
            raise DriftError(f"add_endpoint serves an entity's records; {d.entity!r} is not one")
        if d.to in known or d.to in RESERVED:
            raise DriftError(f"endpoint /v1/{d.to} exists already")
        return
    shape = [f.name for f in shape_of(d.entity, enacted(before), applied)]

    def need(name: str | None, role: str = "field") -> None:
        if name not in shape:
            raise DriftError(f"{d.entity} has no {role} {name!r}; it has {', '.join(shape)}")

    def free(name: str | None) -> None:
        if name in shape:
            raise DriftError(f"{d.entity} has a field {name!r} already")

    if d.kind in ("rename", "drop", "null", "retype", "new_value"):
        need(d.field)
    if d.kind in ("rename", "nest"):
        free(d.to)
    if d.kind == "add":
        free(d.field)
        if d.source is not None:
            need(d.source, "source field")
    for name in d.fields:
        need(name)


# -- serving -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How an endpoint is served at a given time."""

    entity: str  # whose feed is read
    layers: tuple[str, ...] = ()  # SQL over (record, k, dead), each on the previous one
    until: str | None = None  # stall: no record updated after this time
    removed: bool = False  # the listing answers 404


def plan(drifts: Sequence[Drift], endpoint: str, now: str) -> Plan | None:
    """How ``endpoint`` is served at ``now``: None if it is no endpoint then."""
    if not drifts:
        return Plan(endpoint) if endpoint in ENTITIES else None
    active = [d for d in drifts if d.in_force(now)]
    if endpoint in ENTITIES:
        entity = endpoint
    else:
        made = [d.entity for d in active if d.kind == "add_endpoint" and d.to == endpoint]
        if not made:
            return None
        entity = made[0]
    mine = [d for d in active if d.entity == endpoint]
    stalls = [d.effective_at for d in mine if d.kind == "stall" and d.effective_at]
    return Plan(
        entity=entity,
        layers=tuple(layer for d in mine if (layer := layer_sql(d, entity))),
        until=min(stalls) if stalls else None,
        removed=any(d.kind == "remove_endpoint" for d in mine),
    )


def _path(name: str | None) -> str:
    return f"'$.{name}'"  # names are checked: letters, digits and _


def _json_literal(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return "json('" + text.replace("'", "''") + "')"


def _key_hash(entity: str, salt: int) -> str:
    """SQL for a number in [0, 65536) drawn from the record's key: the same key, the
    same number (Fibonacci hashing of the key, or of a fold of a text key's characters).
    Every term stays within SQLite's 64-bit integers."""
    e = ENTITIES[entity]
    if e.field(e.primary_key).type == "integer":
        key = "k"
    else:
        # the first six characters, the last two and the length
        at = [*(str(i) for i in range(1, 7)), "-2", "-1"]
        chars = " + ".join(
            f"coalesce(unicode(substr(k, {p}, 1)), 0) * {31 ** i}" for i, p in enumerate(at)
        )
        key = f"({chars} + length(k) * {31 ** len(at)})"
    return f"(((({key} % 2147483648) + {salt}) * 2654435761) & 4294967295) >> 16"


def _retyped(to: str, path: str) -> str:
    value = f"record ->> {path}"
    if to == "string":
        return (f"CASE json_type(record, {path}) WHEN 'true' THEN 'true'"
                f" WHEN 'false' THEN 'false' ELSE CAST({value} AS TEXT) END")
    if to == "number":
        return f"CAST({value} AS REAL)"
    if to == "integer":
        return f"CAST({value} AS INTEGER)"
    return (f"json(CASE WHEN {value} IS NULL THEN 'null' WHEN {value} IN (0, '0', 'false', '')"
            " THEN 'false' ELSE 'true' END)")


def layer_sql(d: Drift, entity: str) -> str | None:
    """The SQL expression serving ``record`` (of the row ``k``, a tombstone if ``dead``)
    with ``d`` applied; None for a drift that changes no record. A field a record lacks
    (a tombstone's) is left absent; fields are added to live records only."""
    p = _path(d.field)
    if d.kind == "rename":
        return (f"CASE WHEN json_type(record, {p}) IS NULL THEN record"
                f" ELSE json_set(json_remove(record, {p}), {_path(d.to)}, record -> {p}) END")
    if d.kind == "drop":
        return f"json_remove(record, {p})"
    if d.kind == "null":
        return f"json_replace(record, {p}, NULL)"
    if d.kind == "retype" and d.to:
        return f"json_replace(record, {p}, {_retyped(d.to, p)})"
    if d.kind == "add":
        value = f"record -> {_path(d.source)}" if d.source else _json_literal(d.value)
        return f"CASE WHEN dead THEN record ELSE json_set(record, {p}, {value}) END"
    if d.kind == "nest":
        moved = ", ".join(_path(f) for f in d.fields)
        members = ", ".join(f"'{f}', record -> {_path(f)}" for f in d.fields)
        return (f"CASE WHEN dead THEN record ELSE json_set(json_remove(record, {moved}),"
                f" {_path(d.to)}, json_object({members})) END")
    if d.kind == "new_value":
        salt = zlib.crc32(d.id.encode()) & 0xFFFF
        share = round(d.share * 65536)
        return (f"CASE WHEN NOT dead AND {_key_hash(entity, salt)} < {share}"
                f" THEN json_replace(record, {p}, {_json_literal(d.value)}) ELSE record END")
    return None


# -- what the schema and announcements say --------------------------------------------------


def described(drifts: Sequence[Drift], now: str) -> list[Drift]:
    """The drifts ``/v1/schema`` reflects at ``now``."""
    return [d for d in drifts if d.described and d.effective(now)]


def schema_entities(drifts: Sequence[Drift], now: str) -> dict[str, str]:
    """The endpoints ``/v1/schema`` lists at ``now``, to the entity each serves."""
    told = described(drifts, now)
    removed = {d.entity for d in told if d.kind == "remove_endpoint"}
    return {name: entity for name, entity in endpoints(told).items() if name not in removed}


def renamed(field_name: str, endpoint: str, drifts: Sequence[Drift]) -> str:
    """What ``field_name`` (the primary key, the cursor) is called after the renames."""
    for d in drifts:
        if d.entity == endpoint and d.kind == "rename" and d.field == field_name and d.to:
            field_name = d.to
    return field_name


def changes(d: Drift, shape: Sequence[Field]) -> list[dict]:
    """The drift as announced field changes, ``shape`` being the fields before it."""
    types = {f.name: f.type for f in shape}
    e, f = d.entity, d.field
    out: list[dict[str, Any]]
    if d.kind == "rename":
        out = [{"field": f, "change": "combined", "into": d.to},
               {"field": d.to, "change": "added", "new_type": types.get(f or "")}]
    elif d.kind == "drop":
        out = [{"field": f, "change": "removed"}]
    elif d.kind == "null":
        out = [{"field": f, "change": "new_value", "note": "null in every record"}]
    elif d.kind == "retype":
        out = [{"field": f, "change": "type_changed", "new_type": d.to,
                "old_type": types.get(f or "")}]
    elif d.kind == "add":
        new_type = types.get(d.source or "") if d.source else json_type(d.value)
        out = [{"field": f, "change": "added", "new_type": new_type}]
    elif d.kind == "nest":
        out = [{"field": x, "change": "combined", "into": d.to} for x in d.fields]
        out.append({"field": d.to, "change": "added", "new_type": "object"})
    elif d.kind == "new_value":
        note = d.value if isinstance(d.value, str) else json.dumps(d.value)
        out = [{"field": f, "change": "new_value", "note": note}]
    elif d.kind == "remove_endpoint":
        out = [{"change": "removed", "note": f"the listing /v1/{e} is withdrawn"}]
    else:  # add_endpoint (a stall is never announced)
        e = d.to or e
        out = [{"change": "added", "note": f"a new listing with the records of {d.entity}"}]
    return [{"entity": e, **{k: v for k, v in c.items() if v not in (None, "")}} for c in out]


def announcements(drifts: Sequence[Drift], applied: Sequence[str], now: str) -> list[dict]:
    """The announced drifts, as ``/v1/announcements`` lists them at ``now``."""
    out = []
    for i, d in enumerate(drifts):
        if not d.announced or (d.announced_at or "") > now:
            continue
        shape = shape_of(d.entity, enacted(drifts[:i]), applied)
        applied_at = d.effective_at if d.effective(now) else None
        out.append({
            "change_id": d.id,
            "title": d.title or d.summary(),
            "description": d.description or f"{d.summary()}, from {d.effective_at}.",
            "breaking": d.is_breaking(),
            "announced_at": d.announced_at,
            "effective_at": d.effective_at,
            "applied_at": applied_at,
            "status": "applied" if applied_at else "upcoming",
            "changes": changes(d, shape),
        })
    return out
