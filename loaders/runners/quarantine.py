"""The quarantine after each cycle: the records it newly holds per entity, and the alarm
when an entity's records mostly go there.

``raw.quarantine`` is one table for every entity, merged on a hash of the entity and the
record, so a bad record the lookback window reads again is held once. The records a cycle
newly held are what the table holds after the load beyond what it held before, per
entity (one ``group by``), so a record read again is not counted again, just as a row
read again unchanged is not loaded again: the counts are new records, comparable with
the rows loaded. No query at all while the warehouse has no quarantine; the count after
a load only when the load wrote to it; the count before it from this process's last
count (``salesflow watch`` holds the run lock, so nothing else changed it), else one
query.

**The share alarm** (kind ``quarantine_share``, see :mod:`loaders.monitoring.alarms`): a
platform that renames a field without saying so sends every new record of that entity to
quarantine, and the marts silently stop counting them. Per entity and cycle, the share
held is ``held / (loaded + held)``; over ``[monitoring] quarantine_share_max`` with at
least ``quarantine_min_records`` held (counting the cycles in a row before it that were
over the share too, so a trickle of a few bad records a cycle adds up), the entity is
alarmed: one notice naming the field and rule, the count and share, a sample, what the
field reaches downstream and what to do. A cycle with records of the entity under the
share clears it; a cycle without any record of it, or with too few to tell, leaves the
alarm as it is.

May import: every service and the foundations (see :mod:`loaders.runners`); not the
pipeline runner, which imports this.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dlt

from loaders import config, warehouse
from loaders.config import QuarantineLimits
from loaders.monitoring import health
from loaders.monitoring.alarms import Condition
from loaders.replica import settings as replica_settings
from loaders.replica.pages import NAMING, RULES
from loaders.schema_changes.impact import (
    Lineage,
    current_lineage,
    format_impact,
    impact,
    once,
)

log = logging.getLogger(__name__)

QUARANTINE = replica_settings.QUARANTINE_TABLE
KIND = "quarantine_share"
SAMPLE_CHARS = 600
# how far back a run of cycles over the share is followed
HISTORY_CYCLES = 200


# this process's last count of each warehouse's quarantine: (working dir, target) -> counts
_LAST_COUNT: dict[tuple[str, str], dict[str, int]] = {}


def _warehouse_key(pipeline: dlt.Pipeline) -> tuple[str, str]:
    return pipeline.working_dir, f"{warehouse.target_name()}:{warehouse.duckdb_path()}"


def held_before(pipeline: dlt.Pipeline) -> dict[str, int]:
    """Records held in ``raw.quarantine`` per entity before a load: this process's last
    count (taken, so a cycle that fails before counting again leaves none to trust), else
    the warehouse's; nothing when no load ever wrote a quarantine."""
    last = _LAST_COUNT.pop(_warehouse_key(pipeline), None)
    if last is not None:
        return last
    schema = pipeline.schemas.get(replica_settings.SOURCE_NAME)
    if schema is None or QUARANTINE not in schema.tables:
        return {}
    return held_counts(pipeline)


def held_after(pipeline: dlt.Pipeline, before: dict[str, int], written: int) -> dict[str, int]:
    """Records held per entity after a load that wrote ``written`` quarantine rows (read
    again or new); remembered as the next load's count before."""
    after = held_counts(pipeline) if written else before
    _LAST_COUNT[_warehouse_key(pipeline)] = after
    return after


def forget_count(pipeline: dlt.Pipeline) -> None:
    """The quarantine changed other than by a cycle (a replay): count it again."""
    _LAST_COUNT.pop(_warehouse_key(pipeline), None)


def held_counts(pipeline: dlt.Pipeline) -> dict[str, int]:
    """Records held in ``raw.quarantine`` now, per entity."""
    with warehouse.sql_client(pipeline) as sql:
        return _held_counts(sql)


def _held_counts(sql: Any) -> dict[str, int]:
    if QUARANTINE not in warehouse.raw_tables(sql):
        return {}
    rows = sql.execute_sql(
        f"select entity, count(*) from {sql.make_qualified_table_name(QUARANTINE)}"
        " group by entity"
    )
    return {str(entity): int(n) for entity, n in rows or []}


def newly_held(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Records held after a load beyond those held before it, per entity (only those
    with some)."""
    grown = {e: n - before.get(e, 0) for e, n in after.items()}
    return {e: n for e, n in sorted(grown.items()) if n > 0}


# ------------------------------------------------------------------------ the share alarm


@dataclass(frozen=True)
class Share:
    """An entity's new records held and loaded, in one cycle or a run of cycles."""

    entity: str
    held: int
    loaded: int
    cycles: int = 1

    @property
    def share(self) -> float:
        total = self.held + self.loaded
        return self.held / total if total else 0.0

    def plus(self, held: int, loaded: int) -> Share:
        return Share(self.entity, self.held + held, self.loaded + loaded, self.cycles + 1)


@dataclass
class ShareCheck:
    """The alarms the check found, and the entities it could judge."""

    conditions: list[Condition] = field(default_factory=list)
    judged: list[str] = field(default_factory=list)


def check_shares(
    pipeline: dlt.Pipeline,
    loaded: dict[str, int],
    held: dict[str, int],
    load_ids: Sequence[str],
    limits: QuarantineLimits,
) -> ShareCheck | None:
    """The share alarm after one cycle (``loaded``, ``held``: rows loaded and records
    newly held per entity; ``load_ids``: the cycle's loads). None when it could not be
    checked (logged): open alarms then stay as they are."""
    try:
        return _check_shares(pipeline, loaded, held, load_ids, limits)
    except Exception:  # the load is committed: a failed check must not fail the cycle
        log.exception("the quarantine share could not be checked after this load")
        return None


def _check_shares(
    pipeline: dlt.Pipeline,
    loaded: dict[str, int],
    held: dict[str, int],
    load_ids: Sequence[str],
    limits: QuarantineLimits,
) -> ShareCheck:
    out = ShareCheck()
    entities = sorted(e for e in set(loaded) | set(held) if loaded.get(e) or held.get(e))
    if not held:  # nothing held: every entity with records is judged clear, no query
        out.judged = entities
        return out
    is_open = _open_alarms()
    lineage = once(current_lineage)
    with warehouse.sql_client(pipeline) as sql:
        columns = warehouse.known_types(pipeline)
        for entity in entities:
            share = Share(entity, held.get(entity, 0), loaded.get(entity, 0))
            verdict = _judge(sql, share, limits)
            if verdict is None:
                continue  # too few records to tell: neither found nor cleared
            out.judged.append(entity)
            if verdict.share > limits.share_max:
                evidence = _evidence(sql, entity, load_ids)
                opening = f"{KIND}:{entity}" not in is_open
                out.conditions.append(_condition(
                    verdict, evidence, limits, set(columns.get(entity, {})),
                    lineage if opening else None,
                ))
    return out


def _judge(sql: Any, share: Share, limits: QuarantineLimits) -> Share | None:
    """The share to judge the entity by: this cycle's when it is under the threshold or
    held enough records; else the run of cycles over the threshold it ends, if that held
    enough; None when there are too few records to tell."""
    if share.share <= limits.share_max or share.held >= limits.min_records:
        return share
    run = share
    for loaded, held in _history(sql, share.entity):
        if held + loaded == 0:
            continue  # a cycle without records of the entity says nothing
        if held / (held + loaded) <= limits.share_max:
            break
        run = run.plus(held, loaded)
        if run.held >= limits.min_records:
            return run
    return None


def _history(sql: Any, entity: str) -> list[tuple[int, int]]:
    """(rows loaded, records newly held) of the entity's last cycles, newest first."""
    if health.LOADS not in warehouse.raw_tables(sql):
        return []
    rows = sql.execute_sql(
        f"select rows_loaded, rows_quarantined from {sql.make_qualified_table_name(health.LOADS)}"
        " where entity = %s and rows_quarantined is not null"
        f" order by loaded_at desc, cycle_id desc limit {HISTORY_CYCLES}",
        entity,
    )
    return [(int(n or 0), int(q or 0)) for n, q in rows or []]


@dataclass(frozen=True)
class Evidence:
    """What the entity's records held by the cycle were held for: (rule, field, count),
    the most common first, and one of them."""

    reasons: list[tuple[str, str | None, int]]
    sample: str


def _evidence(sql: Any, entity: str, load_ids: Sequence[str]) -> Evidence:
    table = sql.make_qualified_table_name(QUARANTINE)
    ids = ", ".join(["%s"] * len(load_ids)) or "null"
    cycle = f"entity = %s and _dlt_load_id in ({ids})"
    reasons = [
        (str(rule), field_name, int(n))
        for rule, field_name, n in sql.execute_sql(
            f"select rule, field, count(*) as n from {table} where {cycle}"
            " group by rule, field order by n desc, rule, field limit 3",
            entity, *load_ids,
        ) or []
    ]
    if not reasons:
        return Evidence([], "")
    rule, field_name, _ = reasons[0]
    [(sample,)] = sql.execute_sql(
        f"select record from {table} where {cycle} and rule = %s and field is not distinct"
        " from %s order by record_key limit 1",
        entity, *load_ids, rule, field_name,
    ) or [("",)]
    return Evidence(reasons, str(sample or ""))


def _condition(
    share: Share, evidence: Evidence, limits: QuarantineLimits, columns: set[str],
    lineage: Callable[[], Lineage | None] | None,
) -> Condition:
    """The alarm: what was held and why, a sample, what to do, and (``lineage``: when it
    opens) what the field at fault reaches downstream."""
    entity = share.entity
    rule, fields = (evidence.reasons[0][0], evidence.reasons[0][1]) if evidence.reasons else (
        "unknown", None
    )
    at_fault = f"{fields}: {rule}" if fields else rule
    span = "this cycle" if share.cycles == 1 else f"over the last {share.cycles} cycles"
    lines = [
        f"{share.held:,} of {share.held + share.loaded:,} new {entity} records {span}"
        f" ({share.share:.0%}, over the {limits.share_max:.0%} threshold) went to"
        f" raw.quarantine instead of raw.{entity}: the marts do not count them.",
        "Held for: " + "; ".join(
            f"{r} on {f or 'the whole record'} ({n:,})" for r, f, n in evidence.reasons
        ) + f". {rule}: {RULES.get(rule, 'see raw.quarantine.reason')}.",
    ]
    unknown = _unknown_fields(evidence.sample, columns)
    if unknown:
        lines.append(
            f"The sample carries field(s) raw.{entity} has never had: {', '.join(unknown)}"
            " (a field renamed upstream?)."
        )
    lines += [
        f"Sample: {_truncated(evidence.sample)}",
        "What to do: fix the cause (a field mapping for a renamed field, the schema"
        " contract for a changed type, the platform for bad data), check that the held"
        f" records would now load with `salesflow quarantine --entity {entity}`, then load"
        f" them with `salesflow quarantine replay --entity {entity}`.",
    ]
    reports = _impacts(lineage, entity, fields) if lineage else []
    if reports:
        lines += ["Downstream impact:", *reports]
    elif lineage is None:
        lines.append("Downstream impact: in the notice that opened this alarm.")
    return Condition(
        kind=KIND,
        entity=entity,
        title=f"{entity}: {share.share:.0%} of new records held in quarantine ({at_fault})",
        text="\n".join(lines),
        details={
            "held": share.held, "loaded": share.loaded, "share": round(share.share, 4),
            "cycles": share.cycles, "share_max": limits.share_max,
            "min_records": limits.min_records, "rule": rule, "field": fields,
            "reasons": [{"rule": r, "field": f, "records": n} for r, f, n in evidence.reasons],
            "sample": _truncated(evidence.sample),
        },
    )


def _impacts(
    lineage: Callable[[], Lineage | None], entity: str, fields: str | None
) -> list[str]:
    """What each field at fault (the whole entity, when no field is) reaches, as the
    impact report says it; tests are counted, not listed."""
    lines = []
    names: list[str | None] = list(fields.split(", ")) if fields else [None]
    for name in names:
        report = impact(lineage(), entity, name, "column_removed")
        label = f"{entity}.{name}" if name else f"{entity} (every field)"
        text = format_impact(label, dataclasses.replace(report, tests=[]))
        if report.tests:
            text += (f"\n  tests: {len(report.tests)} (`salesflow schema impact --entity"
                     f" {entity}{f' --column {name}' if name else ''}` lists them)")
        lines.append(text)
    return lines


def _unknown_fields(sample: str, columns: set[str]) -> list[str]:
    """Fields of the sample record that are no column of the raw table (none when raw
    has no columns yet or the record is not a JSON object)."""
    try:
        record = json.loads(sample)
    except ValueError:
        return []
    if not columns or not isinstance(record, dict):
        return []
    return [k for k in record if NAMING.normalize_identifier(k) not in columns]


def _truncated(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…"


def _open_alarms() -> set[str]:
    """The keys of the data alarms open now (from the health state file)."""
    state = health.Health(config.pipelines_dir()).state()
    return set(state.get("open_alarms") or {})
