"""Breaking changes still in force: the ``schema_break`` data alarm.

A change is notified once, when it is logged; the status must stay red for as long as it
breaks the marts. After every load, each logged field that stopped arriving is checked:
it is **resolved** when its records carry it again (the field profile says a later load
filled it), when a configured field mapping fills its raw column, when no staging model
reads it directly any more (the models were updated: the lineage says so), or when it
was announced (the announcement's own notices and checks follow it). Unresolved ones
form one alarm per entity (:mod:`loaders.monitoring.alarms`), with the marts they hold
back and the way to absorb them; the alarm clears by itself once they are resolved.

May import: :mod:`.changelog`, :mod:`.impact`, the monitoring alarms and the replica
source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loaders.monitoring.alarms import Condition
from loaders.replica.client import Announcement
from loaders.replica.mapping import FieldMap
from loaders.schema_changes.changelog import ChangelogEntry, FieldProfile
from loaders.schema_changes.impact import LineageSource, impact, resolve

KIND = "schema_break"


def _announced(entity: str, column: str, announcements: Sequence[Announcement]) -> bool:
    return any(
        fc.get("entity") == entity and fc.get("field") == column
        for a in announcements for fc in a.get("changes", [])
    )


def _back(entry: ChangelogEntry, profile: FieldProfile | None) -> bool:
    """Whether a later load's records carried the field again."""
    last = profile.last_filled_load if profile else None
    return bool(last and entry["load_id"] and last > entry["load_id"])


def unresolved(
    entries: Sequence[ChangelogEntry],
    profiles: Mapping[str, Mapping[str, FieldProfile]],
    maps: Mapping[str, tuple[FieldMap, ...]],
    announcements: Sequence[Announcement],
    lineage: LineageSource,
) -> list[Condition]:
    """One condition per entity with fields that stopped arriving and still break the
    marts (see the module's docstring); ``lineage`` is asked only if one is left."""
    by_entity: dict[str, list[tuple[ChangelogEntry, list[str]]]] = {}
    for e in entries:
        entity, column = e["entity"], e["column"]
        if e["kind"] != "column_removed" or e["category"] != "schema" or not column:
            continue
        if any(m.target == column for m in maps.get(entity, ())):
            continue
        if _back(e, profiles.get(entity, {}).get(column)):
            continue
        if _announced(entity, column, announcements):
            continue
        report = impact(resolve(lineage), entity, column, e["kind"],
                        maps=maps.get(entity, ()))
        if report.classification != "breaking":
            continue
        marts = sorted({*report.downstream_models, *report.exposures})
        by_entity.setdefault(entity, []).append((e, marts))
    return [_condition(entity, found) for entity, found in sorted(by_entity.items())]


def _condition(entity: str, found: list[tuple[ChangelogEntry, list[str]]]) -> Condition:
    fields = [e["column"] or "" for e, _ in found]
    marts = sorted({m for _, ms in found for m in ms})
    lines = [
        f"{entity}.{', '.join(fields)} stopped arriving and the models read"
        f" {'it' if len(fields) == 1 else 'them'} directly: new {entity} records lack"
        f" {'it' if len(fields) == 1 else 'them'}, so these marts and exposures are"
        f" incomplete: {', '.join(marts) or '(none found)'}."
    ]
    for e, _ in found:
        lines.append(f"- {e['column']} (since {e['detected_at']}): {e['detail'] or ''}")
    lines.append(
        "It clears when the records carry the field again, a field mapping fills it"
        " ([sources.replica.field_mapping] in .dlt/config.toml; then `salesflow quarantine"
        " replay`), or the staging models stop reading it."
    )
    return Condition(
        kind=KIND, entity=entity,
        title=f"{entity}: {', '.join(fields)} stopped arriving; marts incomplete",
        text="\n".join(lines),
        details={"fields": fields, "marts": marts},
    )
