"""After each load: record schema and business changes, follow announced changes, notify.

One function, :func:`after_load`, runs in every cycle right after dlt's load, under the
same lock:

1. detect shape and business changes (:mod:`loaders.schema_changes`) and write the new
   ones to ``raw.schema_changelog``;
2. read the API's announced changes;
3. notify each newly logged change once, with its impact from dbt's manifest, and each
   upcoming announcement when first seen and then 7 days, 1 day and on the day before
   it takes effect (a milestone already passed when an announcement is first seen is
   not sent on top of it). Each announcement is checked against the data contract
   (:mod:`loaders.contract`): one that removes, combines, renames or retypes a
   contracted field says BREAKING, with the fields, marts and owners affected, from its
   first notice on; one touching only fields the marts do not use says it is safe.

The first load of a warehouse sets the baseline: its tables and values are logged, not
announced to anyone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from loaders import contract
from loaders import schema_changes as sc
from loaders.health import CYCLES
from loaders.notify import Event, Notifier
from loaders.replica import settings

log = logging.getLogger(__name__)

# days before an announced change takes effect at which it is notified again
MILESTONES: tuple[int, ...] = (7, 1, 0)

# an announced field change, in the changelog's words
ANNOUNCED_KIND = {
    "added": "new_column",
    "removed": "column_removed",
    "combined": "column_removed",
    "type_changed": "type_change",
    "new_value": "new_value",
}


@dataclass
class Tracked:
    changes: list[sc.Change] = field(default_factory=list)  # newly logged this cycle
    announcements: list[dict[str, Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # keys of events raised


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def annotate(changes: Sequence[sc.Change], announcements: Sequence[dict[str, Any]]) -> None:
    """Say which detected changes were announced (and how: 'combined into full_name')."""
    for c in changes:
        for a in announcements:
            for fc in a.get("changes", []):
                if fc.get("entity") != c.entity or fc.get("field") != (c.column or ""):
                    continue
                if ANNOUNCED_KIND.get(fc.get("change")) != c.kind and c.kind != "new_value":
                    continue
                how = f"combined into {fc['into']}" if fc.get("into") else "announced"
                c.detail = "; ".join(
                    filter(None, [c.detail, f"{how} ('{a.get('title', a.get('change_id'))}')"])
                )


def change_event(change: sc.Change, report: dict[str, Any]) -> Event:
    severity = "error" if report["classification"] == "breaking" else "warning"
    if change.kind in sc.ADDITIVE:
        severity = "info"
    text = sc.format_impact(change.describe(), report)
    return Event(
        key=f"change:{change.change_id}",
        kind="business_change" if change.category == "business" else "schema_change",
        title=f"Schema change: {change.describe()}",
        text=text + f"\nLogged in raw.{sc.CHANGELOG} (change_id {change.change_id}).",
        severity=severity,
        details={"change": change.as_dict(), "impact": report},
    )


def announcement_impacts(
    announcement: dict[str, Any], manifest: dict[str, Any] | None
) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for fc in announcement.get("changes", []):
        kind = ANNOUNCED_KIND.get(fc.get("change"), fc.get("change"))
        label = f"{fc.get('entity')}.{fc.get('field')}: {fc.get('change')}"
        if fc.get("into"):
            label += f" into {fc['into']}"
        if fc.get("note"):
            label += f" ({fc['note']})"
        report = (
            sc.impact(manifest, fc.get("entity"), fc.get("field"), kind)
            if manifest is not None
            else {"classification": "unknown", "advice": "dbt manifest not available"}
        )
        out.append((label, report))
    return out


def announcement_event(
    a: dict[str, Any],
    when: str,
    manifest: dict[str, Any] | None,
    key: str,
    contract_doc: dict[str, Any] | None = None,
) -> Event:
    """The notice of an announced change: its impact on the dbt project and, against the
    data contract (``contract_doc``), whether it breaks a field the marts depend on."""
    impacts = announcement_impacts(a, manifest)
    breaking = any(r.get("classification") == "breaking" for _, r in impacts)
    assessment = contract.assess_announcement(a, contract_doc) if contract_doc else None
    title = f"Announced schema change {a.get('change_id')}: {a.get('title')} ({when})"
    if assessment is None:
        verdict = "data contract unavailable: not checked against it"
    else:
        verdict = contract.format_assessment(assessment)
        if assessment["verdict"] == "breaking":
            title = f"BREAKING for the marts: {title}"
        elif assessment["verdict"] == "safe":
            title += " — safe for the marts"
    lines = [
        f"{a.get('title')} — takes effect {a.get('effective_at')} ({when}).",
        a.get("description", ""),
        "",
        verdict,
        "",
    ] + [sc.format_impact(label, r) for label, r in impacts]
    severity = "warning" if breaking or a.get("breaking") else "info"
    if assessment and assessment["verdict"] == "breaking":
        severity = "error"
    return Event(
        key=key,
        kind="announcement",
        title=title,
        text="\n".join(lines),
        severity=severity,
        details={
            "announcement": {k: a.get(k) for k in ("change_id", "title", "breaking",
                                                   "announced_at", "effective_at")},
            "contract": assessment,
            "impact": [{"change": label, **r} for label, r in impacts],
        },
    )


def follow_announcements(
    announcements: Sequence[dict[str, Any]],
    notifier: Notifier,
    manifest: dict[str, Any] | None,
    now: datetime | None = None,
    contract_doc: dict[str, Any] | None = None,
) -> list[str]:
    """Raise the notices due for upcoming announcements; returns their keys. Each is
    checked against ``contract_doc`` (default: the committed data contract)."""
    now = now or datetime.now(timezone.utc)
    raised = []
    upcoming = [a for a in announcements if a.get("status") != "applied"]
    if upcoming and contract_doc is None:
        contract_doc = contract.committed()
    for a in announcements:
        if a.get("status") == "applied" or not a.get("effective_at"):
            continue
        cid = a.get("change_id")
        effective = _parse_time(a["effective_at"])
        days_left = (effective.date() - now.date()).days
        when = "today" if days_left <= 0 else "tomorrow" if days_left == 1 else (
            f"in {days_left} days"
        )
        crossed = [d for d in MILESTONES if days_left <= d]
        seen_key = f"announcement:{cid}:seen"
        if not notifier.known(seen_key):
            notifier.notify(announcement_event(a, when, manifest, seen_key, contract_doc))
            raised.append(seen_key)
            for d in crossed:  # already covered by this first notice
                notifier.skip(f"announcement:{cid}:d{d}")
            continue
        if not crossed:
            continue
        key = f"announcement:{cid}:d{crossed[-1]}"  # the most urgent milestone reached
        if notifier.known(key):
            continue
        notifier.notify(announcement_event(a, when, manifest, key, contract_doc))
        raised.append(key)
        for earlier in crossed[:-1]:
            notifier.skip(f"announcement:{cid}:d{earlier}")
    return raised


def _last_recorded_load(sql: Any, dataset: str) -> str | None:
    """The newest load of a cycle in the health history (see :mod:`loaders.health`):
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


def after_load(
    pipeline: Any,
    load_info: Any,
    before: dict[str, dict[str, str]],
    described: dict[str, dict[str, Any]],
    frozen: dict[str, dict[str, tuple[str, str]]],
    announcements: Sequence[dict[str, Any]],
    notifier: Notifier,
    manifest_loader: Any = None,
) -> Tracked:
    """Detect, record and notify (see the module's docstring)."""
    from loaders.pipeline import known_types

    entities = list(described) or list(settings.ENDPOINTS)
    api_fields = {
        e: {f["name"]: f["type"] for f in d.get("fields", [])} for e, d in described.items()
    }
    updates = [p.schema_update for p in getattr(load_info, "load_packages", []) or []]
    baseline = not any(t in before for t in entities)
    changes = sc.shape_changes(updates, before, api_fields, frozen, entities)
    version = pipeline.default_schema.version if pipeline.default_schema_name else None
    load_id = (getattr(load_info, "loads_ids", None) or [None])[-1]
    with pipeline.sql_client() as sql:
        if not sql.has_dataset():
            sql.create_dataset()
        qualified = sql.fully_qualified_dataset_name()
        sc.ensure_tables(sql, qualified)
        known = sc.known_values(sql, qualified)
        distinct = sc.distinct_values(
            sql, qualified, settings.CATEGORICAL, known_types(pipeline), known,
            _last_recorded_load(sql, qualified),
        )
        business, remember = sc.business_changes(distinct, known)
        sc.remember_values(sql, qualified, remember)
        for c in (*changes, *business):
            c.load_id, c.schema_version = load_id, version
        annotate([*changes, *business], announcements)
        new = sc.record(sql, qualified, [*changes, *business])
    tracked = Tracked(changes=new, announcements=list(announcements))
    for c in new:
        log.log(logging.INFO if baseline else logging.WARNING, "schema change: %s", c.describe())
    manifest = None
    if (new and not baseline) or any(a.get("status") != "applied" for a in announcements):
        manifest = _manifest(manifest_loader)
    if not baseline:
        for c in new:
            report = (
                sc.impact(manifest, c.entity, c.column, c.kind)
                if manifest is not None
                else {"classification": "unknown", "advice": "dbt manifest not available"}
            )
            event = change_event(c, report)
            notifier.notify(event)
            tracked.notices.append(event.key)
    tracked.notices += follow_announcements(announcements, notifier, manifest)
    notifier.retry_pending()
    return tracked


def build_failed_event(
    result: Any, changes: Sequence[dict[str, Any]], published: bool = False
) -> Event:
    """The notice of a failed ``dbt build``, with the impact of recent schema changes;
    with ``published``, of data tests that failed on marts already published."""
    manifest = _manifest(None)
    lines = [
        "dbt data tests failed on the marts published by this cycle: analysts may be"
        " reading data that breaks a test. See `dbt test` output or"
        " target/run_results.json for the failing tests."
        if published else
        "dbt build failed after the load: the marts analysts read were not refreshed"
        " (they keep their previous content). Run `salesflow run` after a fix, and see"
        " `dbt build` output or target/run_results.json for the failing nodes.",
    ]
    impacts = []
    for c in changes[:10]:
        if manifest is None:
            break
        report = sc.impact(manifest, c["entity"], c["column"], c["kind"])
        label = f"{c['entity']}.{c['column'] or ''} {c['kind']} ({c['detected_at']})"
        impacts.append({"change": label, **report})
        lines.append(sc.format_impact(label, report))
    if changes:
        lines.insert(1, "Recent schema changes, the likely cause:")
    load_id = (getattr(result, "load_ids", None) or ["no-load"])[-1]
    return Event(
        key=f"{'tests' if published else 'build'}_failed:{load_id}",
        kind="tests_failed" if published else "build_failed",
        title="data tests failed on published marts" if published
        else "dbt build failed: marts not refreshed",
        text="\n".join(lines),
        severity="error",
        details={"load_id": load_id, "impact": impacts},
    )


def _manifest(loader: Any) -> dict[str, Any] | None:
    try:
        if loader is not None:
            return loader()
        from loaders.pipeline import PROJECT_ROOT

        return sc.load_manifest(PROJECT_ROOT)
    except Exception as exc:  # impact is advice: a missing manifest never stops a load
        log.warning("dbt manifest unavailable, impact not computed: %s", exc)
        return None
