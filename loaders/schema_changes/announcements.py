"""Announced changes: which detected changes they explain, and their notices.

Each upcoming announcement is notified when first seen and then 7 days, 1 day and on the
day before it takes effect (a milestone already passed when an announcement is first
seen is not sent on top of it). Each is checked against the data contract
(:mod:`loaders.contract.assess`): one that removes, combines, renames or retypes a
contracted field says BREAKING, with the fields, marts and owners affected, from its
first notice on; one touching only fields the marts do not use says it is safe.

May import: :mod:`.changes`, :mod:`.impact`, the contract and the notifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from loaders.contract.assess import assess_announcement, format_assessment
from loaders.contract.document import committed
from loaders.monitoring.notify import Event, Notifier
from loaders.replica.client import Announcement
from loaders.schema_changes.changes import Change
from loaders.schema_changes.impact import (
    Impact,
    LineageSource,
    format_impact,
    impact,
    resolve,
)

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


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def annotate(changes: Sequence[Change], announcements: Sequence[Announcement]) -> None:
    """Say which detected changes were announced (and how: 'combined into full_name')."""
    for c in changes:
        for a in announcements:
            for fc in a.get("changes", []):
                if fc.get("entity") != c.entity or fc.get("field") != (c.column or ""):
                    continue
                if ANNOUNCED_KIND.get(fc.get("change", "")) != c.kind and c.kind != "new_value":
                    continue
                how = f"combined into {fc['into']}" if fc.get("into") else "announced"
                c.announced = True
                c.detail = "; ".join(
                    filter(None, [c.detail, f"{how} ('{a.get('title', a.get('change_id'))}')"])
                )


def announcement_impacts(
    announcement: Announcement, lineage: LineageSource
) -> list[tuple[str, Impact]]:
    """Each field change an announcement lists, with its impact on the project."""
    out = []
    project = resolve(lineage) if announcement.get("changes") else None
    for fc in announcement.get("changes", []):
        change = fc.get("change", "")
        kind = ANNOUNCED_KIND.get(change, change)
        label = f"{fc.get('entity')}.{fc.get('field')}: {fc.get('change')}"
        if fc.get("into"):
            label += f" into {fc['into']}"
        if fc.get("note"):
            label += f" ({fc['note']})"
        out.append((label, impact(project, fc.get("entity", ""), fc.get("field"), kind)))
    return out


def announcement_event(
    a: Announcement,
    when: str,
    lineage: LineageSource,
    key: str,
    contract_doc: dict[str, Any] | None = None,
) -> Event:
    """The notice of an announced change: its impact on the dbt project and, against the
    data contract (``contract_doc``), whether it breaks a field the marts depend on."""
    impacts = announcement_impacts(a, lineage)
    breaking = any(r.classification == "breaking" for _, r in impacts)
    assessment = assess_announcement(a, contract_doc) if contract_doc else None
    title = f"Announced schema change {a.get('change_id')}: {a.get('title')} ({when})"
    if assessment is None:
        verdict = "data contract unavailable: not checked against it"
    else:
        verdict = format_assessment(assessment)
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
    ] + [format_impact(label, r) for label, r in impacts]
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
                                                   "announced_at", "effective_at", "source")},
            "contract": assessment,
            "impact": [{"change": label, **r.as_dict()} for label, r in impacts],
        },
    )


def follow_announcements(
    announcements: Sequence[Announcement],
    notifier: Notifier,
    lineage: LineageSource,
    now: datetime | None = None,
    contract_doc: dict[str, Any] | None = None,
) -> list[str]:
    """Raise the notices due for upcoming announcements; returns their keys. Each is
    checked against ``contract_doc`` (default: the committed data contract); ``lineage``
    is asked only when a notice is due."""
    now = now or datetime.now(timezone.utc)
    raised = []
    upcoming = [a for a in announcements if a.get("status") != "applied"]
    if upcoming and contract_doc is None:
        contract_doc = committed()
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
            notifier.notify(announcement_event(a, when, lineage, seen_key, contract_doc))
            raised.append(seen_key)
            for d in crossed:  # already covered by this first notice
                notifier.skip(f"announcement:{cid}:d{d}")
            continue
        if not crossed:
            continue
        key = f"announcement:{cid}:d{crossed[-1]}"  # the most urgent milestone reached
        if notifier.known(key):
            continue
        notifier.notify(announcement_event(a, when, lineage, key, contract_doc))
        raised.append(key)
        for earlier in crossed[:-1]:
            notifier.skip(f"announcement:{cid}:d{earlier}")
    return raised
