"""Data alarms: what is wrong with the data while every cycle succeeds.

A cycle can succeed and still bring bad news: an entity whose records mostly go to
quarantine, an entity whose new records stopped while related ones keep arriving, a
platform whose replica stopped following production behind an API that answers 200,
an endpoint failing while the others answer. Each such **condition** is checked after
every cycle by whoever knows it (the quarantine, the data's rhythm, the endpoints) and
handed to :class:`Alarms`, which turns it into an **alarm**: one notice when it is first
seen, nothing while it lasts, one recovery notice when a later check no longer finds it.
An open alarm turns ``salesflow status`` and the ``pipeline_health`` mart red; alarms
are kept with the cycle incidents in ``raw.pipeline_incidents`` (family ``data``, with
the entity).

The same mechanism keeps a failing dbt build, or failing periodic data tests, one
incident (family ``build``, kinds ``build_failed`` and ``tests_failed``: see
:meth:`loaders.monitoring.health.Health.record_build`); its recovery notice says what
caught up (an alarm's ``resolution``).

May import: :mod:`.notify`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loaders.monitoring.notify import Event, Notifier

log = logging.getLogger(__name__)

FAMILY = "data"
BUILD_FAMILY = "build"  # a failing dbt build or periodic test run


@dataclass
class Condition:
    """One thing found wrong with the data by one check."""

    kind: str  # e.g. quarantine_share, entity_stalled, platform_stalled
    entity: str | None  # None: the whole platform
    title: str  # one line, for the notice and status
    text: str  # what was seen, the evidence, the impact and what to do
    details: dict[str, Any] = field(default_factory=dict)
    severity: str = "error"
    family: str = FAMILY

    @property
    def key(self) -> str:
        """What makes two checks' findings the same alarm."""
        return f"{self.kind}:{self.entity or '*'}"


@dataclass
class AlarmCheck:
    """The conditions found after one cycle, and the kinds of check that ran: an open
    alarm of a kind that was not checked (the cycle failed before it could be) stays
    open. A check may also have had evidence about some entities only (``scopes``): an
    open alarm of that kind on another entity stays open too, neither found nor cleared."""

    conditions: list[Condition] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)
    # kind -> the entities a check of that kind could judge this cycle (absent: all)
    scopes: dict[str, set[str | None]] = field(default_factory=dict)

    def add(
        self, kind: str, found: Sequence[Condition],
        entities: Iterable[str | None] | None = None,
    ) -> None:
        """The conditions a check of ``kind`` found; ``entities``: those it could judge
        (default: every entity; an alarm it found is judged whatever this says)."""
        whole = kind in self.checked and kind not in self.scopes
        self.checked.add(kind)
        if entities is None:
            self.scopes.pop(kind, None)
        elif not whole:
            self.scopes.setdefault(kind, set()).update(entities)
        self.conditions.extend(found)

    def judged(self, kind: str, entity: str | None) -> bool:
        """Whether this cycle's checks could tell if an alarm of ``kind`` on ``entity``
        still holds."""
        return kind in self.checked and (kind not in self.scopes or entity in self.scopes[kind])


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


@dataclass
class AlarmChanges:
    opened: list[dict[str, Any]] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)
    closed: list[dict[str, Any]] = field(default_factory=list)


def update(
    open_alarms: dict[str, dict[str, Any]], check: AlarmCheck, now: datetime, cycle_id: str
) -> AlarmChanges:
    """Open, keep or close alarms in ``open_alarms`` (key -> alarm, changed in place)
    from one cycle's ``check``."""
    changes = AlarmChanges()
    found = {c.key: c for c in check.conditions}
    for key, c in found.items():
        alarm = open_alarms.get(key)
        if alarm is None:
            alarm = {
                "incident_id": f"{cycle_id}-{c.kind}-{c.entity or 'platform'}",
                "family": c.family, "kind": c.kind, "entity": c.entity,
                "started_at": _iso(now), "failed_cycles": 1, "title": c.title,
                "last_error": c.text[:1000], "text": c.text, "severity": c.severity,
                "details": c.details,
            }
            open_alarms[key] = alarm
            changes.opened.append(alarm)
        else:
            alarm.update(failed_cycles=alarm["failed_cycles"] + 1, title=c.title,
                         last_error=c.text[:1000], text=c.text, details=c.details)
            changes.updated.append(alarm)
    for key in [k for k, a in open_alarms.items() if check.judged(a["kind"], a["entity"])]:
        if key not in found:
            alarm = open_alarms.pop(key)
            alarm["ended_at"] = _iso(now)
            changes.closed.append(alarm)
    return changes


def duration(alarm: dict[str, Any]) -> float:
    """Seconds from an alarm's or incident's ``started_at`` to its ``ended_at``."""
    start = datetime.fromisoformat(alarm["started_at"])
    end = datetime.fromisoformat(alarm["ended_at"])
    return max((end - start).total_seconds(), 0.0)


def human(seconds: float) -> str:
    """A duration for notices: ``40 s``, ``6 min``, ``2.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def notify(notifier: Notifier, changes: AlarmChanges) -> list[str]:
    """One notice per alarm opened, one per alarm closed; returns their keys."""
    keys = []
    for alarm in changes.opened:
        event = Event(
            key=f"alarm:{alarm['incident_id']}:opened",
            kind=alarm["kind"],
            title=alarm["title"],
            # the whole text: the incidents table keeps its first 1000 characters
            text=f"Since {alarm['started_at']}. {alarm.get('text') or alarm['last_error']}",
            severity=alarm["severity"],
            details={k: alarm[k] for k in ("incident_id", "kind", "entity", "started_at")}
            | {"evidence": alarm["details"]},
        )
        notifier.notify(event)
        keys.append(event.key)
    for alarm in changes.closed:
        seconds = duration(alarm)
        where = alarm["entity"] or "the platform"
        event = Event(
            key=f"alarm:{alarm['incident_id']}:closed",
            kind="recovery",
            title=f"Cleared after {human(seconds)}: {alarm['title']}",
            text=(
                f"The {alarm['kind'].replace('_', ' ')} alarm on {where} that opened at"
                f" {alarm['started_at']} cleared at {alarm['ended_at']}"
                f" ({human(seconds)}, {alarm['failed_cycles']} cycle(s))."
                + (f" {alarm['resolution']}" if alarm.get("resolution") else "")
            ),
            severity="info",
            details={k: alarm[k] for k in ("incident_id", "kind", "entity", "started_at",
                                            "ended_at")} | {"duration_seconds": seconds},
        )
        notifier.notify(event)
        keys.append(event.key)
    return keys


def write(sql: Any, dataset: str, table: str, changes: AlarmChanges) -> None:
    """Keep alarms in the incidents table (see :mod:`.health`)."""
    for alarm in changes.opened:
        sql.execute_sql(
            f"INSERT INTO {dataset}.{table} (incident_id, family, kind, entity, started_at,"
            " failed_cycles, last_error) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            alarm["incident_id"], alarm.get("family", FAMILY), alarm["kind"], alarm["entity"],
            alarm["started_at"], alarm["failed_cycles"], alarm["last_error"],
        )
    for alarm in changes.updated:
        sql.execute_sql(
            f"UPDATE {dataset}.{table} SET failed_cycles = %s, last_error = %s"
            " WHERE incident_id = %s",
            alarm["failed_cycles"], alarm["last_error"], alarm["incident_id"],
        )
    for alarm in changes.closed:
        sql.execute_sql(
            f"UPDATE {dataset}.{table} SET ended_at = %s, duration_seconds = %s,"
            " failed_cycles = %s WHERE incident_id = %s",
            alarm["ended_at"], duration(alarm), alarm["failed_cycles"],
            alarm["incident_id"],
        )
