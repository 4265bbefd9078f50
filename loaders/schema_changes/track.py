"""After each load: record schema and business changes, follow announced changes, notify.

One function, :func:`after_load`, runs in every cycle right after dlt's load, under the
same lock:

1. detect shape and business changes — from the API's schema and dlt's
   (:mod:`.detect`) and from the records themselves (:mod:`.from_records`) — and write
   the new ones to ``raw.schema_changelog`` (:mod:`.changelog`);
2. take the announced changes it is given (the API's and the repository's,
   :mod:`.declared`);
3. notify each newly logged change once, with its impact (:mod:`.impact`), and each
   upcoming announcement at its milestones (:mod:`.announcements`);
4. compare the announcements with the changelog and notify each finding once: not seen,
   seen different, seen early (:mod:`.observed`);
5. check which breaking changes are still in force (:mod:`.unresolved`): the runner hands
   them to the data alarms.

The first load of a warehouse sets the baseline: its tables and values are logged, not
announced to anyone.

May import: the other modules of this package, :mod:`loaders.warehouse`,
:mod:`loaders.config`, the replica source, the notifier and the data alarms.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from loaders import config, warehouse
from loaders.monitoring.alarms import Condition
from loaders.monitoring.notify import Event, Notifier
from loaders.replica import settings
from loaders.replica.client import Announcement
from loaders.replica.mapping import FieldMap
from loaders.replica.observe import EntitySeen, Observations
from loaders.replica.pages import NAMING
from loaders.schema_changes import changelog, detect, from_records, observed, unresolved
from loaders.schema_changes.announcements import annotate, follow_announcements
from loaders.schema_changes.changelog import ChangelogEntry
from loaders.schema_changes.changes import ADDITIVE, Change
from loaders.schema_changes.impact import (
    Impact,
    LineageSource,
    current_lineage,
    format_impact,
    impact,
    once,
    resolve,
)

log = logging.getLogger(__name__)


@dataclass
class Tracked:
    """What tracking did after one load."""

    changes: list[Change] = field(default_factory=list)  # newly logged this cycle
    announcements: list[Announcement] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # keys of events raised
    # breaking changes still in force (see .unresolved), checked after this load
    alarms: list[Condition] = field(default_factory=list)
    baseline: bool = False  # the warehouse's first load: logged, told to no one
    # announced vs observed, as of ``observed_at`` (when this cycle read the API)
    mismatches: list[observed.Mismatch] = field(default_factory=list)
    observed_at: datetime | None = None


def change_event(change: Change, report: Impact) -> Event:
    """The notice of one logged change, with its impact."""
    severity = "error" if report.classification == "breaking" else "warning"
    if change.kind in ADDITIVE:
        severity = "info"
    elif change.kind == "schema_disagrees":
        severity = "warning"
    # a disagreement is about the API's self-description; its fields' own notices
    # carry their impact
    text = (change.describe() if change.kind == "schema_disagrees"
            else format_impact(change.describe(), report))
    return Event(
        key=f"change:{change.change_id}",
        kind="business_change" if change.category == "business" else "schema_change",
        title=f"Schema change: {change.describe(detail=False)}",
        text=text + f"\nLogged in raw.{changelog.CHANGELOG} (change_id {change.change_id}).",
        severity=severity,
        details={"change": change.as_dict(), "impact": report.as_dict()},
    )


def _schema_updates(pipeline: Any, load_info: Any,
                    before: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """The tables and columns the load added: as dlt's packages report them, and those
    of the schema after the load that no package reported (``before``: the types before
    it), in the same shape. A destination of files (the lake) reports only dlt's own
    tables: there nothing is created, and the schema is the one record of a change."""
    updates = [p.schema_update for p in getattr(load_info, "load_packages", []) or []]
    if not pipeline.default_schema_name:
        return updates
    reported = {(t, c) for u in updates for t, ts in u.items() for c in ts.get("columns", {})}
    tables = {t for u in updates for t in u}
    added: dict[str, Any] = {}
    for table, schema in pipeline.default_schema.tables.items():
        known = before.get(table, {})
        columns = {name: col for name, col in schema.get("columns", {}).items()
                   if col.get("data_type") and name not in known
                   and (table, name) not in reported}
        if columns or (table not in before and table not in tables):
            added[table] = {"columns": columns}
    return [*updates, added]


def after_load(
    pipeline: Any,
    load_info: Any,
    before: dict[str, dict[str, str]],
    described: dict[str, dict[str, Any]],
    frozen: dict[str, dict[str, tuple[str, str]]],
    announcements: Sequence[Announcement],
    notifier: Notifier,
    lineage: LineageSource = current_lineage,
    observations: Observations | None = None,
    maps: dict[str, tuple[FieldMap, ...]] | None = None,
    endpoints: dict[str, Any] | None = None,
    observed_at: datetime | None = None,
    grace: timedelta | None = None,
) -> Tracked:
    """Detect, record and notify (see the module's docstring). ``pipeline`` and
    ``load_info``: dlt's pipeline and the load's info; ``lineage`` is asked only when a
    notice needs an impact; ``observations``: what the load's records looked like;
    ``maps``: the configured field mappings; ``endpoints``: the declared endpoints;
    ``observed_at``: when the cycle read the API (default now); ``grace``: how late an
    announced change may be logged (default: configured)."""
    maps = maps or {}
    declared = endpoints or settings.ENDPOINTS
    seen = {e: o for e, o in (observations.entities if observations else {}).items()
            if o.records}
    structural = {
        e: {ep["primary_key"], settings.cursor_of(ep), ep.get("deleted_marker") or ""}
        for e, ep in declared.items()
    }
    entities = list(described) or list(settings.ENDPOINTS)
    api_fields = {
        e: {f["name"]: f["type"] for f in d.get("fields", [])} for e, d in described.items()
    }
    updates = _schema_updates(pipeline, load_info, before)
    baseline = not any(t in before for t in entities)
    changes = detect.shape_changes(updates, before, api_fields, frozen, entities)
    changes += [
        Change(e, None, "new_table", detail="described by /v1/schema but not declared, so"
               " not loaded: declare it under [sources.replica.endpoints] to load it")
        for e in described if e not in declared
    ]
    version = pipeline.default_schema.version if pipeline.default_schema_name else None
    load_id = (getattr(load_info, "loads_ids", None) or [None])[-1]
    with warehouse.sql_client(pipeline) as sql:
        if not sql.has_dataset():
            sql.create_dataset()
        qualified = sql.fully_qualified_dataset_name()
        changelog.ensure_tables(sql, qualified)
        previous = changelog.read_profile(
            sql, qualified, {e: before[e] for e in seen if e in before}
        )
        # a raw column the schema stops listing is gone only if the schema listed it
        changes = [c for c in changes if c.kind != "column_removed" or c.observed_in
                   != "schema" or from_records.described_before(c, previous)]
        from_data, profiles = _from_records(
            sql, qualified, seen, before, api_fields, maps, structural, declared, load_id,
            previous,
        )
        changes = from_data + changes
        known = changelog.known_values(sql, qualified)
        distinct = changelog.distinct_values(
            sql, qualified, settings.CATEGORICAL, warehouse.known_types(pipeline), known,
            changelog.last_recorded_load(sql, qualified),
        )
        business, remember = detect.business_changes(distinct, known)
        changelog.remember_values(sql, qualified, remember)
        for c in (*changes, *business):
            c.load_id, c.schema_version = load_id, version
        annotate([*changes, *business], announcements)
        new = changelog.record(sql, qualified, [*changes, *business])
        logged = changelog.read_changelog(sql, qualified, observed.CHANGELOG_LIMIT)
    lineage = once(lineage)
    observed_at = observed_at or datetime.now(timezone.utc)
    tracked = Tracked(changes=new, announcements=list(announcements), observed_at=observed_at,
                      baseline=baseline)
    tracked.alarms = unresolved.unresolved(logged, profiles, maps, announcements, lineage)
    for c in new:
        log.log(logging.INFO if baseline else logging.WARNING, "schema change: %s", c.describe())
    if not baseline:
        for c in new:
            report = impact(resolve(lineage), c.entity, c.column, c.kind,
                            maps=maps.get(c.entity, ()))
            event = change_event(c, report)
            if _told_with_partner(c, new):
                notifier.skip(event.key)
                continue
            notifier.notify(event)
            tracked.notices.append(event.key)
    tracked.notices += follow_announcements(announcements, notifier, lineage)
    tracked.mismatches = observed.compare(
        announcements, logged, observed_at,
        config.announcement_grace() if grace is None else grace,
    )
    tracked.notices += observed.report(tracked.mismatches, notifier)
    notifier.retry_pending()
    return tracked


def _told_with_partner(change: Change, new: Sequence[Change]) -> bool:
    """A field that appeared as the likely new name of one that stopped: the stopped
    one's notice tells both."""
    return change.kind == "new_column" and any(
        o.kind == "column_removed" and o.entity == change.entity
        and o.column == change.related for o in new
    )


def _from_records(
    sql: Any, dataset: str, seen: dict[str, EntitySeen], before: dict[str, dict[str, str]],
    api_fields: dict[str, dict[str, str]], maps: dict[str, tuple[FieldMap, ...]],
    structural: dict[str, set[str]], declared: dict[str, Any], load_id: str | None,
    profiles: dict[str, dict[str, changelog.FieldProfile]],
) -> tuple[list[Change], dict[str, dict[str, changelog.FieldProfile]]]:
    """The changes the load's records show, paired into likely renames; the field
    ``profiles`` are brought up to date (and returned, every entity's)."""
    found = from_records.record_changes(seen, profiles, before, api_fields, maps, structural)

    def compare(entity: str, column: str, samples: Sequence[tuple[Any, str]]) -> tuple[int, int]:
        key = declared[entity]["primary_key"]
        if column not in before.get(entity, {}) or not samples:
            return 0, 0
        by_key = {k: v for k, v in samples if k is not None}
        marks = ", ".join(["%s"] * len(by_key))
        k_col, v_col = (sql.escape_column_name(NAMING.normalize_identifier(c))
                        for c in (key, column))
        rows = sql.execute_sql(
            f"SELECT {k_col}, {v_col} FROM {dataset}.{sql.escape_column_name(entity)}"
            f" WHERE {k_col} IN ({marks})",
            *by_key,
        ) or []
        agree = sum(from_records.same_value(v, by_key[k]) for k, v in rows if k in by_key)
        return agree, len(rows)

    from_records.pair_renames(found, seen, compare)
    updated = from_records.updated_profiles(profiles, seen, structural, load_id)
    updated |= from_records.mark_described({**profiles, **updated}, api_fields)
    changelog.save_profile(sql, dataset, updated)
    return found, {**{e: dict(p) for e, p in profiles.items()}, **updated}


def build_failed_event(
    load_id: str | None, changes: Sequence[ChangelogEntry], published: bool = False,
    lineage: LineageSource = current_lineage, failures: Sequence[str] = (),
    held: Sequence[str] = (), exposures: Sequence[str] = (),
) -> Event:
    """The notice of a failed ``dbt build`` after load ``load_id``, with the impact of
    recent schema changes (the likely cause); with ``published``, of data tests that
    failed on marts already published. ``failures``: the failing nodes, described;
    ``held``: the marts held back at their last good version (the others are published
    as usual); ``exposures``: those that read them."""
    lines = [
        "dbt data tests failed on the marts published by this cycle: analysts may be"
        " reading data that breaks a test; those marts are held back from the next"
        " publications until their tests pass. See `dbt test` output or"
        " target/run_results.json for the failing tests."
        if published else
        "dbt build failed after the load: the marts it reaches were not refreshed"
        " (they keep their last good version), the others were published as usual."
        " Run `salesflow run` after a fix, and see `dbt build` output or"
        " target/run_results.json for the failing nodes.",
    ]
    if failures:
        lines.append("Failing: " + "; ".join(failures[:10]))
    if held or failures:
        lines.append("Marts held back: " + (", ".join(held) or "none"))
    if exposures:
        lines.append("Exposures reading them: " + ", ".join(exposures))
    impacts = []
    resolved = resolve(lineage) if changes else None
    first_impact = len(lines)
    for c in changes[:10] if resolved is not None else []:
        report = impact(resolved, c["entity"], c["column"], c["kind"])
        label = f"{c['entity']}.{c['column'] or ''} {c['kind']} ({c['detected_at']})"
        impacts.append({"change": label, **report.as_dict()})
        lines.append(format_impact(label, report))
    if changes:
        lines.insert(first_impact, "Recent schema changes, the likely cause:")
    load_id = load_id or "no-load"
    return Event(
        key=f"{'tests' if published else 'build'}_failed:{load_id}",
        kind="tests_failed" if published else "build_failed",
        title="data tests failed on published marts" if published
        else "dbt build failed: marts held back" if held
        else "dbt build failed",
        text="\n".join(lines),
        severity="error",
        details={"load_id": load_id, "impact": impacts, "failures": list(failures),
                 "held_back": list(held), "exposures": list(exposures)},
    )
