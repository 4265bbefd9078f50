"""After each load: record schema and business changes, follow announced changes, notify.

One function, :func:`after_load`, runs in every cycle right after dlt's load, under the
same lock:

1. detect shape and business changes (:mod:`.detect`) and write the new ones to
   ``raw.schema_changelog`` (:mod:`.changelog`);
2. take the announced changes it is given (the API's and the repository's,
   :mod:`.declared`);
3. notify each newly logged change once, with its impact (:mod:`.impact`), and each
   upcoming announcement at its milestones (:mod:`.announcements`);
4. compare the announcements with the changelog and notify each finding once: not seen,
   seen different, seen early (:mod:`.observed`).

The first load of a warehouse sets the baseline: its tables and values are logged, not
announced to anyone.

May import: the other modules of this package, :mod:`loaders.warehouse`,
:mod:`loaders.config` and the notifier.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from loaders import config, warehouse
from loaders.monitoring.notify import Event, Notifier
from loaders.replica import settings
from loaders.replica.client import Announcement
from loaders.schema_changes import changelog, detect, observed
from loaders.schema_changes.announcements import annotate, follow_announcements
from loaders.schema_changes.changelog import ChangelogEntry
from loaders.schema_changes.changes import ADDITIVE, Change
from loaders.schema_changes.impact import (
    Impact,
    LineageSource,
    current_lineage,
    format_impact,
    impact,
    resolve,
)

log = logging.getLogger(__name__)


@dataclass
class Tracked:
    """What tracking did after one load."""

    changes: list[Change] = field(default_factory=list)  # newly logged this cycle
    announcements: list[Announcement] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # keys of events raised
    # announced vs observed, as of ``observed_at`` (when this cycle read the API)
    mismatches: list[observed.Mismatch] = field(default_factory=list)
    observed_at: datetime | None = None


def change_event(change: Change, report: Impact) -> Event:
    """The notice of one logged change, with its impact."""
    severity = "error" if report.classification == "breaking" else "warning"
    if change.kind in ADDITIVE:
        severity = "info"
    text = format_impact(change.describe(), report)
    return Event(
        key=f"change:{change.change_id}",
        kind="business_change" if change.category == "business" else "schema_change",
        title=f"Schema change: {change.describe()}",
        text=text + f"\nLogged in raw.{changelog.CHANGELOG} (change_id {change.change_id}).",
        severity=severity,
        details={"change": change.as_dict(), "impact": report.as_dict()},
    )


def _once(source: LineageSource) -> LineageSource:
    """``source``, asked at most once (a cycle may need the lineage for many notices)."""
    if not callable(source):
        return source
    answer: list[Any] = []

    def get() -> Any:
        if not answer:
            answer.append(source())
        return answer[0]

    return get


def after_load(
    pipeline: Any,
    load_info: Any,
    before: dict[str, dict[str, str]],
    described: dict[str, dict[str, Any]],
    frozen: dict[str, dict[str, tuple[str, str]]],
    announcements: Sequence[Announcement],
    notifier: Notifier,
    lineage: LineageSource = current_lineage,
    observed_at: datetime | None = None,
    grace: timedelta | None = None,
) -> Tracked:
    """Detect, record and notify (see the module's docstring). ``pipeline`` and
    ``load_info``: dlt's pipeline and the load's info; ``lineage`` is asked only when a
    notice needs an impact; ``observed_at``: when the cycle read the API (default now);
    ``grace``: how late an announced change may be logged (default: configured)."""
    entities = list(described) or list(settings.ENDPOINTS)
    api_fields = {
        e: {f["name"]: f["type"] for f in d.get("fields", [])} for e, d in described.items()
    }
    updates = [p.schema_update for p in getattr(load_info, "load_packages", []) or []]
    baseline = not any(t in before for t in entities)
    changes = detect.shape_changes(updates, before, api_fields, frozen, entities)
    version = pipeline.default_schema.version if pipeline.default_schema_name else None
    load_id = (getattr(load_info, "loads_ids", None) or [None])[-1]
    with pipeline.sql_client() as sql:
        if not sql.has_dataset():
            sql.create_dataset()
        qualified = sql.fully_qualified_dataset_name()
        changelog.ensure_tables(sql, qualified)
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
    observed_at = observed_at or datetime.now(timezone.utc)
    tracked = Tracked(changes=new, announcements=list(announcements), observed_at=observed_at)
    for c in new:
        log.log(logging.INFO if baseline else logging.WARNING, "schema change: %s", c.describe())
    lineage = _once(lineage)
    if not baseline:
        for c in new:
            event = change_event(c, impact(resolve(lineage), c.entity, c.column, c.kind))
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


def build_failed_event(
    load_id: str | None, changes: Sequence[ChangelogEntry], published: bool = False,
    lineage: LineageSource = current_lineage,
) -> Event:
    """The notice of a failed ``dbt build`` after load ``load_id``, with the impact of
    recent schema changes (the likely cause); with ``published``, of data tests that
    failed on marts already published."""
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
    resolved = resolve(lineage) if changes else None
    for c in changes[:10] if resolved is not None else []:
        report = impact(resolved, c["entity"], c["column"], c["kind"])
        label = f"{c['entity']}.{c['column'] or ''} {c['kind']} ({c['detected_at']})"
        impacts.append({"change": label, **report.as_dict()})
        lines.append(format_impact(label, report))
    if changes:
        lines.insert(1, "Recent schema changes, the likely cause:")
    load_id = load_id or "no-load"
    return Event(
        key=f"{'tests' if published else 'build'}_failed:{load_id}",
        kind="tests_failed" if published else "build_failed",
        title="data tests failed on published marts" if published
        else "dbt build failed: marts not refreshed",
        text="\n".join(lines),
        severity="error",
        details={"load_id": load_id, "impact": impacts},
    )
