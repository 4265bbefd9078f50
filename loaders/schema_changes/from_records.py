"""Changes seen in the records themselves, whatever the API's schema says.

Each load's records (observed page by page, :mod:`loaders.replica.observe`) are compared
with each entity's **field profile**: how often each field carried a value in the live
records seen before (``raw.schema_field_profile``). Found:

* a field never seen before (also in records that went to quarantine) — ``new_column``,
  ``json`` when it holds an object (nesting that appeared);
* a field that stopped arriving — absent, or null in every live record of the load,
  where its fill rate so far makes that all but impossible by chance
  (``(1 - fill rate) ** records < ALPHA``): ``column_removed``;
* values whose JSON type changed — most of the load's values of a field held in
  quarantine for their type: ``type_change``;
* the API's ``/v1/schema`` disagreeing with its records — ``schema_disagrees``.

Each carries its evidence (records affected, a sample value, whether ``/v1/schema``
agrees). A field that stopped in the load where another appeared is paired with it when
the new one carries the old one's values for the same keys, or holds it in an object:
the notice then names the likely rename (or nesting) and the configuration that absorbs
it (:mod:`loaders.replica.mapping`). An entity's first load only sets its profile.

May import: :mod:`.changes` and the replica source.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from loaders.replica.mapping import FieldMap, targets_of
from loaders.replica.observe import EntitySeen, FieldSeen
from loaders.replica.pages import DLT_TYPES
from loaders.schema_changes.changelog import FieldProfile
from loaders.schema_changes.changes import Change

# how unlikely by chance a field's silence must be before it is said to have stopped
ALPHA = 1e-3
# share of a field's values of another type that makes a type change rather than dirt
TYPE_CHANGE_SHARE = 0.5
# share of compared keys whose values must agree to call two fields the same
SAME_VALUES = 0.8
_VARIANT = re.compile(r".+__v_[a-z0-9_]+")
NUMERIC = {"bigint", "double", "decimal"}

# (entity, field, [(key, value as JSON)]) -> (values that agree, values compared): the
# old field's loaded values for the keys of the new field's samples
Compare = Callable[[str, str, Sequence[tuple[Any, str]]], tuple[int, int]]


def record_changes(
    seen: Mapping[str, EntitySeen],
    profiles: Mapping[str, Mapping[str, FieldProfile]],
    raw: Mapping[str, Mapping[str, str]],
    described: Mapping[str, Mapping[str, str]],
    maps: Mapping[str, tuple[FieldMap, ...]],
    structural: Mapping[str, set[str]],
) -> list[Change]:
    """The changes the records of one load show (see the module's docstring).

    ``raw``: raw column types before the load; ``described``: the API's fields now
    (entity -> field -> API type; empty: no schema); ``maps``: configured field
    mappings; ``structural``: per entity the key, cursor and deletion marker (never
    judged)."""
    out: list[Change] = []
    for entity, obs in seen.items():
        profile = profiles.get(entity)
        if not obs.records or not profile:
            continue
        out += _entity_changes(
            entity, obs, profile, raw.get(entity, {}), described.get(entity, {}),
            maps.get(entity, ()), structural.get(entity, set()),
        )
    return out


def _judged(name: str, skip: set[str]) -> bool:
    return not (name in skip or name.startswith("_dlt") or _VARIANT.fullmatch(name))


def _entity_changes(
    entity: str, obs: EntitySeen, profile: Mapping[str, FieldProfile],
    raw: Mapping[str, str], described: Mapping[str, str], maps: tuple[FieldMap, ...],
    skip: set[str],
) -> list[Change]:
    sources = targets_of(maps)
    new, stopped, retyped = [], [], []
    for name, f in obs.fields.items():
        if not _judged(name, skip) or not (f.filled or f.wrong_type):
            continue
        known = name in raw or (name in profile and profile[name].filled)
        if known:
            if f.wrong_type and f.wrong_type >= TYPE_CHANGE_SHARE * (f.wrong_type + f.filled):
                retyped.append(_retyped(entity, name, f, raw, described))
            continue
        new.append(_new_field(entity, name, f, obs.records, described, sources.get(name)))
    for name, p in profile.items():
        if not _judged(name, skip) or not p.filled:
            continue
        now = obs.fields.get(name)
        if now is not None and (now.filled or now.wrong_type):
            continue
        if _absorbed(name, maps, obs):
            continue
        if (1 - p.fill_rate) ** obs.records >= ALPHA:
            continue  # a field that is often empty may be empty in a small load
        stopped.append(_stopped(entity, name, p, obs, raw, described))
    out = [*stopped, *retyped, *new]
    if described:
        carried = [n for n, f in obs.fields.items() if _judged(n, skip) and f.filled
                   and n not in sources]
        out += _disagreement(entity, stopped, carried, described)
    return out


def _absorbed(name: str, maps: tuple[FieldMap, ...], obs: EntitySeen) -> bool:
    """A raw column a configured mapping fills from fields that do arrive."""
    return any(
        m.target == name and all(obs.fields.get(s) and obs.fields[s].filled
                                 for s in m.top_sources)
        for m in maps
    )


def _agrees(described: Mapping[str, str], name: str, present: bool) -> bool | None:
    if not described:
        return None
    return (name in described) == present


def _new_field(
    entity: str, name: str, f: FieldSeen, records: int, described: Mapping[str, str],
    mapped: FieldMap | None,
) -> Change:
    new_type = DLT_TYPES.get(described[name]) if name in described else f.data_type
    what = f"seen in {f.filled + f.wrong_type:,} of {records:,} records of the load"
    if f.nested_keys:
        what += f"; nested: an object holding {', '.join(f.nested_keys)}"
    if described:
        what += "; /v1/schema " + ("describes it" if name in described else
                                   "does not describe it")
    if mapped is not None:
        what += f"; absorbed by the field mapping {mapped.describe()}"
    return Change(
        entity, name, "new_column", new_type=new_type, detail=what, observed_in="records",
        rows=f.filled + f.wrong_type, sample=f.sample(),
        schema_agrees=_agrees(described, name, True),
    )


def _stopped(
    entity: str, name: str, p: FieldProfile, obs: EntitySeen, raw: Mapping[str, str],
    described: Mapping[str, str],
) -> Change:
    what = (
        f"absent or null in all {obs.records:,} records of the load; it carried a value in"
        f" {p.fill_rate:.0%} of the {p.records:,} records before"
    )
    if described:
        what += "; /v1/schema " + ("still describes it" if name in described else
                                   "no longer describes it either")
    return Change(
        entity, name, "column_removed", old_type=raw.get(name) or p.data_type, detail=what,
        observed_in="records", rows=obs.records,
        schema_agrees=_agrees(described, name, False),
    )


def _retyped(
    entity: str, name: str, f: FieldSeen, raw: Mapping[str, str],
    described: Mapping[str, str],
) -> Change:
    json_type = f.wrong_json_type or "another type"
    new_type = {"integer": "bigint", "number": "double", "string": "text",
                "boolean": "bool", "object": "json", "array": "json"}.get(json_type)
    total = f.wrong_type + f.filled
    declared = described.get(name) or raw.get(name) or "another type"
    samples = [v for _, v in f.samples]
    what = (
        f"{f.wrong_type:,} of the load's {total:,} values are a JSON {json_type}"
        f" (e.g. {samples[-1] if samples else '?'}) where {declared} is declared: those"
        " records are held in quarantine"
    )
    if described:
        what += "; /v1/schema still says " + described.get(name, "nothing of it")
    return Change(
        entity, name, "type_change", old_type=raw.get(name) or DLT_TYPES.get(declared),
        new_type=new_type, detail=what, observed_in="records", rows=f.wrong_type,
        sample=samples[-1] if samples else None,
        schema_agrees=False if described else None,
    )


def _disagreement(
    entity: str, stopped: list[Change], carried: list[str], described: Mapping[str, str]
) -> list[Change]:
    """What the records carry that the API does not describe, and what it describes
    that they no longer carry (mapped fields aside: the mapping answers for them)."""
    undescribed = sorted(n for n in carried if n not in described)
    absent = sorted(c.column for c in stopped if c.column and c.column in described)
    if not undescribed and not absent:
        return []
    parts = []
    if undescribed:
        parts.append(f"the records carry {', '.join(undescribed)}, which it does not describe")
    if absent:
        parts.append(f"it describes {', '.join(absent)}, which the records no longer carry")
    return [Change(
        entity, None, "schema_disagrees", value=", ".join([*undescribed, *absent]),
        detail="; ".join(parts) + ": the API's self-description lags behind its data",
        observed_in="records", schema_agrees=False,
    )]


def pair_renames(
    changes: Sequence[Change], seen: Mapping[str, EntitySeen], compare: Compare | None
) -> None:
    """Name the likely rename (or nesting) where a field stopped in the load where
    another appeared, with the configuration that absorbs it (in place)."""
    removed = [c for c in changes if c.kind == "column_removed"]
    for gone in removed:
        candidates = [
            c for c in changes
            if c.kind == "new_column" and c.entity == gone.entity and c.related is None
        ]
        alone = sum(c.entity == gone.entity for c in removed) == 1
        obs = seen.get(gone.entity)
        found = _best_partner(gone, candidates, obs, compare, alone) if obs else None
        if found is None:
            continue
        partner, evidence, path = found
        gone.related, partner.related = partner.column, gone.column
        hint = (
            f"{gone.entity}.{gone.column} stopped arriving while {gone.entity}.{path}"
            f" appeared with {evidence}: probably {'moved' if '.' in path else 'renamed'}."
            f" To absorb it: add `{gone.column} = \"{path}\"` under"
            f" [sources.replica.field_mapping.{gone.entity}] in .dlt/config.toml, then run"
            f" `salesflow quarantine replay --entity {gone.entity}`"
        )
        for c in (gone, partner):
            c.detail = f"{c.detail}; {hint}" if c.detail else hint


def _best_partner(
    gone: Change, candidates: list[Change], obs: EntitySeen, compare: Compare | None,
    alone: bool,
) -> tuple[Change, str, str] | None:
    """The new field that most likely replaces ``gone``, how it was recognised, and the
    path to map: an object holding it; else the same values for the same keys; else,
    when one field stopped and one appeared in the entity, a compatible type."""
    for c in candidates:  # nesting: the object holds the field
        f = obs.fields.get(c.column or "")
        if f is not None and gone.column in f.nested_keys:
            return c, f"an object holding {gone.column}", f"{c.column}.{gone.column}"
    compatible = [c for c in candidates if _compatible(gone.old_type, c.new_type)]
    if compare is not None:
        for c in compatible:
            f = obs.fields.get(c.column or "")
            if f is None or not f.samples:
                continue
            agree, compared = compare(gone.entity, gone.column or "", f.samples)
            if compared and agree >= SAME_VALUES * compared:
                evidence = (f"the same values ({agree} of {compared} records whose key was"
                            " loaded before agree)")
                return c, evidence, c.column or ""
    if alone and len(compatible) == 1 and len(candidates) == 1:
        c = compatible[0]
        return c, f"values of a compatible type ({c.new_type})", c.column or ""
    return None


def _compatible(old: str | None, new: str | None) -> bool:
    if not old or not new:
        return False
    return old == new or (old in NUMERIC and new in NUMERIC) or new == "text"


def same_value(loaded: Any, sample: str) -> bool:
    """Whether a loaded value and a record's JSON value are the same value."""
    try:
        value = json.loads(sample)
    except ValueError:
        value = sample
    if loaded is None or value is None:
        return loaded is None and value is None
    if isinstance(loaded, int | float) and isinstance(value, int | float):
        return float(loaded) == float(value)
    if isinstance(loaded, datetime) and isinstance(value, str):
        try:
            return loaded == datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return False
    return str(loaded) == str(value)


def updated_profiles(
    profiles: Mapping[str, Mapping[str, FieldProfile]], seen: Mapping[str, EntitySeen],
    structural: Mapping[str, set[str]], load_id: str | None = None,
) -> dict[str, dict[str, FieldProfile]]:
    """The profiles of the entities seen, with this load's records (load ``load_id``)
    added."""
    out: dict[str, dict[str, FieldProfile]] = {}
    for entity, obs in seen.items():
        if not obs.records:
            continue
        fields = {n: replace(p) for n, p in (profiles.get(entity) or {}).items()}
        for name, p in fields.items():
            f = obs.fields.get(name)
            p.records += obs.records
            p.filled += f.filled if f else 0
            if f and f.filled:
                p.last_filled_load = load_id or p.last_filled_load
        for name, f in obs.fields.items():
            if name in fields or not _judged(name, structural.get(entity, set())):
                continue
            if f.filled:
                fields[name] = FieldProfile(f.data_type, obs.records, f.filled, load_id)
        out[entity] = fields
    return out


def mark_described(
    profiles: Mapping[str, Mapping[str, FieldProfile]], described: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, FieldProfile]]:
    """The profiles whose fields' being described by the API's schema changed (or was not
    known), marked as it is now; entities the schema does not list are left alone."""
    out: dict[str, dict[str, FieldProfile]] = {}
    for entity, fields in profiles.items():
        api = described.get(entity)
        if not api:
            continue
        marked = {n: replace(p, described=n in api) for n, p in fields.items()}
        if any(p.described != fields[n].described for n, p in marked.items()):
            out[entity] = marked
    return out


def described_before(
    change: Change, profiles: Mapping[str, Mapping[str, FieldProfile]]
) -> bool:
    """Whether a raw column the API's schema no longer lists was listed at the last load
    (unknown counts as listed): a field only the records ever carried is not "gone from
    the schema"."""
    p = profiles.get(change.entity, {}).get(change.column or "")
    return p is None or p.described is not False
