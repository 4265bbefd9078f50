"""Announced vs observed: what the platform said it would change, against what the
changelog (``raw.schema_changelog``) logged.

Each announced field change is expected in the changelog in its words
(:data:`.announcements.ANNOUNCED_KIND`): added as ``new_column`` (of the announced type,
when given), removed as ``column_removed``, combined or renamed as ``column_removed`` of
the field and ``new_column`` of ``into``, type_changed as ``type_change`` to the new type,
new_value as ``new_value`` (of the value in ``note``, when given). Columns are compared
as dlt names them, types as the API's type loads (:data:`DLT_TYPES`). Three findings,
each reported once:

* **not seen** — the effective time plus a grace period has passed, in a cycle that read
  the API after it, and no matching change is logged;
* **seen but different** — no matching change, but a change of another kind or type on
  the same entity.field logged since the announcement (the earlier of announced_at and
  effective_at);
* **seen early** — the matching change was logged before the effective time.

An announcement that took effect before the changelog begins (the warehouse's first
load) is not compared: nothing before it was observed. A new value is expected only in a
column whose values are tracked (``CATEGORICAL``).

:func:`compare` is pure (announcements, changelog entries, the time of the observation);
:func:`report` notifies its findings; :func:`current_mismatches` answers for
``salesflow schema`` as of the last cycle.

May import: :mod:`.announcements` (the kinds), :mod:`.changelog`, the replica source's
declarations, :mod:`loaders.config`, the notifier and the health state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from loaders import config
from loaders.monitoring.health import Health
from loaders.monitoring.notify import Event, Notifier
from loaders.replica import settings
from loaders.replica.client import Announcement, FieldChange
from loaders.replica.pages import DLT_TYPES, NAMING
from loaders.schema_changes.announcements import ANNOUNCED_KIND
from loaders.schema_changes.changelog import ChangelogEntry, recent_changes

NOT_SEEN, DIFFERENT, EARLY = "not_seen", "different", "early"
HEADLINE = {NOT_SEEN: "not seen", DIFFERENT: "seen different", EARLY: "seen early"}
# changes of a column's shape: what a different change on an announced field may be (new
# values come and go on their own and say nothing against an announcement)
SHAPE_KINDS = ("new_column", "column_removed", "type_change")
# a change logged less than this before the effective time is on time (the platform's
# and the loader's clocks, and the changelog's one-second precision)
EARLY_MARGIN = timedelta(minutes=1)
# the changelog entries read for the comparison, newest first
CHANGELOG_LIMIT = 10_000
# where the time of the last cycle's observation is kept in the health state
STATE_KEY = "changes_observed_at"

Logged = list[tuple[datetime, ChangelogEntry]]  # one field's logged changes, oldest first


@dataclass(frozen=True)
class Expected:
    """One change an announced field change should leave in the changelog."""

    entity: str
    column: str  # as dlt names it
    kind: str  # the changelog's kind
    new_type: str | None = None  # the type it loads as, when announced
    value: str | None = None  # new_value: the value, when announced
    announced: str = ""  # the field change as announced, for people


@dataclass(frozen=True)
class Mismatch:
    """An announced change against the changelog: not seen, seen different or early."""

    finding: str  # not_seen | different | early
    change_id: str
    title: str
    source: str  # api | repository
    effective_at: str
    entity: str
    column: str
    expected: str  # the changelog kind expected
    announced: str  # the announced field change
    seen: str = ""  # different, early: what the changelog has

    @property
    def key(self) -> str:
        """The notice's key: one notice per announcement, field change and finding."""
        return (f"announced_vs_observed:{self.change_id}:{self.finding}:{self.entity}."
                f"{self.column}:{self.expected}")

    def describe(self) -> str:
        head = (f"{HEADLINE[self.finding]}: {self.change_id} ({self.title}) announced"
                f" {self.announced}, effective {self.effective_at}")
        if self.finding == NOT_SEEN:
            return f"{head}; no {self.expected} of {self.entity}.{self.column} logged"
        return f"{head}; logged {self.seen}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key, "text": self.describe()}


def _time(value: Any) -> datetime | None:
    """A time as the API, a declared file or the warehouse gives it (naive is UTC)."""
    if value is None or value == "":
        return None
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _loads_as(api_type: str | None) -> str | None:
    return DLT_TYPES.get(api_type, api_type) if api_type else None


def _announced(fc: FieldChange) -> str:
    said = f"{fc.get('entity')}.{fc.get('field')} {fc.get('change')}"
    if fc.get("into"):
        said += f" into {fc['into']}"
    if fc.get("new_type"):
        said += f" ({fc['new_type']})" if fc.get("change") == "added" else f" to {fc['new_type']}"
    if fc.get("change") == "new_value" and fc.get("note"):
        said += f" {fc['note']!r}"
    return said


def expectations(
    fc: FieldChange, categorical: Mapping[str, Sequence[str]] = settings.CATEGORICAL
) -> list[Expected]:
    """What one announced field change should leave in the changelog ([] for what the
    changelog cannot show: an unknown kind, a new value of an untracked column)."""
    entity, change = fc.get("entity", ""), fc.get("change", "")
    column = NAMING.normalize_identifier(fc.get("field") or "") if fc.get("field") else ""
    said = _announced(fc)
    if not entity or not column:
        return []
    if change in ("combined", "renamed"):
        out = [Expected(entity, column, "column_removed", announced=said)]
        if fc.get("into"):
            into = NAMING.normalize_identifier(fc["into"])
            out.append(Expected(entity, into, "new_column", announced=said))
        return out
    kind = ANNOUNCED_KIND.get(change)
    if kind is None:
        return []
    if kind == "new_value":
        if column not in categorical.get(entity, ()):
            return []
        return [Expected(entity, column, kind, value=fc.get("note") or None, announced=said)]
    new_type = _loads_as(fc.get("new_type")) if kind in ("new_column", "type_change") else None
    return [Expected(entity, column, kind, new_type=new_type, announced=said)]


def _matches(x: Expected, e: ChangelogEntry) -> bool:
    if (e["entity"], e["column"], e["kind"]) != (x.entity, x.column, x.kind):
        return False
    if x.new_type and e["new_type"] and e["new_type"] != x.new_type:
        return False
    return not (x.value is not None and e["value"] != x.value)


def _entry(at: datetime, e: ChangelogEntry) -> str:
    """One logged change, for people: 'type_change bigint -> text of products.price at …'."""
    what = e["kind"]
    if e["kind"] == "type_change" and e["new_type"]:
        what += f" {e['old_type'] or '?'} -> {e['new_type']}"
    elif e["kind"] == "new_column" and e["new_type"]:
        what += f" ({e['new_type']})"
    if e["value"]:
        what += f" {e['value']!r}"
    return f"{what} of {e['entity']}.{e['column']} at {at.isoformat(timespec='seconds')}"


def _logged(entries: Iterable[tuple[datetime, ChangelogEntry]]) -> str:
    return "; ".join(_entry(at, e) for at, e in entries)


def _finding(
    effective: datetime, since: datetime, x: Expected, logged: Logged, now: datetime,
    grace: timedelta,
) -> tuple[str, str] | None:
    """(finding, what was logged) for one expected change, given the changes logged on
    its field, or None when it is as announced."""
    matched = [p for p in logged if _matches(x, p[1])]
    if matched:
        first = matched[0]
        return (EARLY, _logged([first])) if first[0] < effective - EARLY_MARGIN else None
    other = [(at, e) for at, e in logged if at >= since and e["kind"] in SHAPE_KINDS]
    if other:
        return DIFFERENT, _logged(other)
    return (NOT_SEEN, "") if now >= effective + grace else None


def _by_field(entries: Sequence[ChangelogEntry]) -> dict[tuple[str, str | None], Logged]:
    out: dict[tuple[str, str | None], Logged] = {}
    for e in entries:
        at = _time(e["detected_at"])
        if at is not None:
            out.setdefault((e["entity"], e["column"]), []).append((at, e))
    for logged in out.values():
        logged.sort(key=lambda p: p[0])
    return out


def compare(
    announcements: Sequence[Announcement],
    entries: Sequence[ChangelogEntry],
    now: datetime,
    grace: timedelta = timedelta(minutes=config.ANNOUNCEMENT_GRACE_MINUTES),
    categorical: Mapping[str, Sequence[str]] = settings.CATEGORICAL,
) -> list[Mismatch]:
    """Each announced field change against the changelog ``entries``, as observed at
    ``now`` (the time the last cycle read the API): the findings (see the module's
    docstring), in the announcements' order."""
    by_field = _by_field(entries)
    if not by_field:
        return []
    begins = min(logged[0][0] for logged in by_field.values())
    now = _time(now) or now
    out: list[Mismatch] = []
    seen: set[str] = set()
    for a in announcements:
        effective = _time(a.get("effective_at"))
        if effective is None or effective < begins:
            continue
        since = min(filter(None, (_time(a.get("announced_at")), effective)))
        for fc in a.get("changes", []):
            for x in expectations(fc, categorical):
                logged = by_field.get((x.entity, x.column), [])
                found = _finding(effective, since, x, logged, now, grace)
                if found is None:
                    continue
                m = Mismatch(found[0], str(a.get("change_id")), str(a.get("title") or ""),
                             str(a.get("source") or "api"), str(a.get("effective_at")),
                             x.entity, x.column, x.kind, x.announced, found[1])
                if m.key not in seen:
                    seen.add(m.key)
                    out.append(m)
    return out


ADVICE = {
    NOT_SEEN: "The platform may have postponed or dropped it, or shipped it in a shape"
    " salesflow does not log. Ask the platform team; if it was postponed, the announcement"
    " should say so (its effective_at: the API's, or the file in announcements/ when it"
    " is declared there).",
    DIFFERENT: "The marts were checked against the change as announced, not as it"
    " happened: see `salesflow schema impact` for what the logged change reaches, and tell"
    " the platform team.",
    EARLY: "It reached the warehouse before the time announced: the notices counted down"
    " to a change already there. Check the marts it reaches (`salesflow schema impact`)"
    " and tell the platform team.",
}


def mismatch_event(m: Mismatch) -> Event:
    """The notice of one finding: what was announced, what the changelog has, what to do."""
    where = "declared in the repository" if m.source == "repository" else "announced by the API"
    return Event(
        key=m.key,
        kind="announcement_observed",
        title=f"Announced change {HEADLINE[m.finding]}: {m.announced} ({m.change_id})",
        text=f"{m.describe()}.\nThe change was {where}.\n{ADVICE[m.finding]}",
        severity="warning",
        details={"finding": m.as_dict()},
    )


def report(mismatches: Sequence[Mismatch], notifier: Notifier) -> list[str]:
    """Notify each finding not notified before; returns the keys raised."""
    raised = []
    for m in mismatches:
        if notifier.known(m.key):
            continue
        notifier.notify(mismatch_event(m))
        raised.append(m.key)
    return raised


def last_observed_at(state_dir: Path | None = None) -> datetime | None:
    """When the last cycle that logged changes read the API (None before one)."""
    state = Health(state_dir or config.pipelines_dir()).state()
    return _time(state.get(STATE_KEY))


def current_mismatches(
    announcements: Sequence[Announcement], state_dir: Path | None = None
) -> list[Mismatch]:
    """The findings as of the last cycle (none before one): for ``salesflow schema``."""
    at = last_observed_at(state_dir)
    if at is None:
        return []
    return compare(announcements, recent_changes(CHANGELOG_LIMIT), at,
                   config.announcement_grace())
