"""The data's rhythm: is an entity, or the whole platform, stalled behind an API that
still answers?

A read replica behind an API can stop following production while every request still
succeeds: loads bring nothing new, which on its own looks like a quiet platform. What
tells the two apart is the data's **rhythm**, learnt from the history of new rows per
entity per successful cycle (``raw.pipeline_loads``) plus this cycle's:

* an entity **flows** when at least ``min_arrivals`` cycles of the history brought it
  new rows (**arrivals**), and they span at least its stall threshold: it has been
  seen flowing for longer than the silence that would alarm. Reference data that
  changes now and then, a burst of edits, or a platform with static data has no
  rhythm, and never alarms;
* its **typical gap** is the median time between its arrivals; its **threshold** is
  ``max(min_seconds, gap_factor x typical gap)``; its **silence** runs from its last
  arrival to the last successful cycle that loaded it;
* an entity that flows and has been silent past its threshold is **stalled**.

Conditions (see :mod:`.alarms`):

* ``entity_stalled`` (the entity): stalled while other entities kept their own rhythm
  all through its silence and still receive new rows — the platform stopped writing or
  replicating that entity, or its records changed shape and wait in quarantine;
* ``platform_stalled`` (no entity): every entity that flows is stalled while cycles
  succeed, or the API itself reports a replication lag over ``lag_max_seconds``. Stops
  close together are one platform alarm, not one per entity.

Only the last ``history_hours`` of the history are read; an entity whose stall alarm is
open keeps the rhythm recorded in the alarm (:func:`remembered`), so a long stall stays
open until its data comes back instead of being forgotten with the history.

Pure functions: no I/O, no clock. May import: :mod:`.alarms` and :mod:`loaders.config`'s
settings.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from loaders.config import StallSettings
from loaders.monitoring.alarms import Condition

ENTITY_STALLED = "entity_stalled"
PLATFORM_STALLED = "platform_stalled"
KINDS = (ENTITY_STALLED, PLATFORM_STALLED)
# arrivals kept per entity: enough to span the threshold of an entity that arrives every
# second (180 s), few enough to read every cycle
KEEP = 500

ADVICE_ENTITY = (
    "Probably the platform stopped writing or replicating {entity}, or the records of"
    " {entity} changed shape and are held in quarantine: see `salesflow quarantine` and"
    " `salesflow status`. Marts built on {entity} are stale meanwhile; if nothing is"
    " quarantined, escalate to the platform team."
)
ADVICE_PLATFORM = (
    "Marts are stale although every load succeeds: {stale}."
    " Escalate to the platform team: its replica stopped following production"
    " (replication paused or broken), or production stopped writing. Nothing is lost:"
    " salesflow catches up on its own once the data flows again."
)


@dataclass
class Seen:
    """What the history says of one entity."""

    arrivals: list[datetime] = field(default_factory=list)  # cycles with new rows, in order
    observed_until: datetime | None = None  # the last successful cycle that loaded it


@dataclass(frozen=True)
class Rhythm:
    """One entity's rhythm, as judged now."""

    entity: str
    last_new_at: datetime | None
    silent_seconds: float  # from the last arrival to the last cycle that loaded it
    arrivals: int = 0
    typical_gap: float | None = None  # seconds between arrivals (median)
    threshold: float | None = None  # None: no rhythm, never alarms

    @property
    def flows(self) -> bool:
        return self.threshold is not None

    @property
    def stalled(self) -> bool:
        return self.threshold is not None and self.silent_seconds > self.threshold

    def details(self) -> dict[str, Any]:
        """JSON evidence, also what :func:`remembered` reads back."""
        return {
            "last_new_at": _iso(self.last_new_at) if self.last_new_at else None,
            "silent_seconds": round(self.silent_seconds, 1),
            "arrivals": self.arrivals,
            "typical_gap_seconds": _round(self.typical_gap),
            "threshold_seconds": _round(self.threshold),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _iso(t: datetime) -> str:
    return _utc(t).isoformat(timespec="seconds")


def human(seconds: float) -> str:
    """A duration for people: ``0.5 s``, ``40 s``, ``6 min``, ``2.5 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- the history ------------------------------------------------------------------------


def history(rows: Iterable[tuple[str, datetime, int]]) -> dict[str, Seen]:
    """Each entity's arrivals and last observation from ``(entity, loaded_at,
    rows_loaded)`` rows of ``raw.pipeline_loads``, in any order."""
    seen: dict[str, Seen] = {}
    for entity, loaded_at, rows_loaded in rows:
        s = seen.setdefault(entity, Seen())
        at = _utc(loaded_at)
        if rows_loaded:
            s.arrivals.append(at)
        if s.observed_until is None or at > s.observed_until:
            s.observed_until = at
    for s in seen.values():
        s.arrivals.sort()
    return seen


def with_cycle(
    seen: Mapping[str, Seen], now: datetime, new_rows: Mapping[str, int], loaded: Iterable[str]
) -> dict[str, Seen]:
    """``seen`` and this cycle: every entity it ``loaded`` observed ``now``, an arrival
    for each with new rows. ``seen`` is not changed."""
    now = _utc(now)
    out = {e: Seen(list(s.arrivals), s.observed_until) for e, s in seen.items()}
    for entity in set(loaded) | {e for e, n in new_rows.items() if n}:
        s = out.setdefault(entity, Seen())
        s.observed_until = now
        if new_rows.get(entity):
            s.arrivals.append(now)
    return out


# -- one entity -------------------------------------------------------------------------


def rhythm(
    entity: str, seen: Seen, settings: StallSettings, remembered: Rhythm | None = None
) -> Rhythm:
    """``entity``'s rhythm from its last :data:`KEEP` arrivals. An entity without one in
    the history keeps the ``remembered`` one (from its open alarm) until new rows come."""
    arrivals = seen.arrivals[-KEEP:]
    last = arrivals[-1] if arrivals else None
    until = seen.observed_until or last
    judged = _learnt(entity, arrivals, until, settings)
    if judged.flows or remembered is None or remembered.last_new_at is None:
        return judged
    if last is not None and last > remembered.last_new_at:
        return judged  # its data came back
    since = remembered.last_new_at
    return Rhythm(
        entity, since, max(((until or since) - since).total_seconds(), 0.0),
        remembered.arrivals, remembered.typical_gap, remembered.threshold,
    )


def _learnt(
    entity: str, arrivals: list[datetime], until: datetime | None, settings: StallSettings
) -> Rhythm:
    last = arrivals[-1] if arrivals else None
    silent = (until - last).total_seconds() if until and last else 0.0
    if len(arrivals) < max(settings.min_arrivals, 2):
        return Rhythm(entity, last, silent, len(arrivals))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(arrivals)]
    typical = statistics.median(gaps)
    threshold = max(settings.min_seconds, settings.gap_factor * typical)
    span = (arrivals[-1] - arrivals[0]).total_seconds()
    if span < threshold:  # a burst, or not seen long enough: no rhythm yet
        return Rhythm(entity, last, silent, len(arrivals), typical)
    return Rhythm(entity, last, silent, len(arrivals), typical, threshold)


# -- the conditions ---------------------------------------------------------------------


def judge(
    seen: Mapping[str, Seen],
    settings: StallSettings,
    lag: float | None = None,
    remembered: Mapping[str, Rhythm] | None = None,
) -> dict[str, list[Condition]]:
    """The stall conditions, by kind (both kinds always present: both were checked).
    ``lag``: the replication lag the API reports (None: not reported)."""
    rhythms = {e: rhythm(e, s, settings, (remembered or {}).get(e)) for e, s in seen.items()}
    flowing = [r for r in rhythms.values() if r.flows]
    stalled = [r for r in flowing if r.stalled]
    entity_found = []
    for r in sorted(stalled, key=lambda r: r.entity):
        kept = _kept_flowing(r, rhythms, seen)
        if kept:
            entity_found.append(entity_stalled(r, kept))
    platform_found = []
    all_stalled = bool(flowing) and len(stalled) == len(flowing)
    lagging = lag is not None and lag > settings.lag_max_seconds
    if all_stalled or lagging:
        platform_found.append(platform_stalled(flowing, lag, settings.lag_max_seconds,
                                               all_stalled))
    return {ENTITY_STALLED: entity_found, PLATFORM_STALLED: platform_found}


def _kept_flowing(
    stall: Rhythm, rhythms: Mapping[str, Rhythm], seen: Mapping[str, Seen]
) -> list[Rhythm]:
    """The other entities with a rhythm that kept it while ``stall``'s silence grew into
    a stall, and received new rows after: no silence of their own past their threshold
    from ``stall``'s last arrival to their first arrival after it became a stall (when
    the history read starts later, their rhythm now). Stops close together, and
    comebacks a few cycles apart after a platform stall, are not each other's
    evidence."""
    assert stall.last_new_at is not None and stall.threshold is not None
    start = stall.last_new_at
    point = start + timedelta(seconds=stall.threshold)
    kept = []
    for entity, r in sorted(rhythms.items()):
        if entity == stall.entity or r.threshold is None:
            continue
        arrivals = seen[entity].arrivals
        before = [a for a in arrivals if a <= start][-1:]
        through = [a for a in arrivals if start < a <= point]
        after = [a for a in arrivals if a > point][:1]
        if not after:
            continue
        if not before + through:  # the history read starts after the stall began
            if not r.stalled:
                kept.append(r)
            continue
        steps = before + through + after
        if all((b - a).total_seconds() <= r.threshold for a, b in itertools.pairwise(steps)):
            kept.append(r)
    return kept


def _usual(r: Rhythm) -> str:
    if r.typical_gap is None:
        return "no regular rhythm"
    return f"usually every {human(r.typical_gap)}"


def entity_stalled(r: Rhythm, kept: list[Rhythm]) -> Condition:
    """The ``entity_stalled`` condition of ``r``, with the entities that kept flowing."""
    assert r.last_new_at is not None and r.threshold is not None
    names = ", ".join(k.entity for k in kept)
    text = "\n".join([
        f"No new {r.entity} since {_iso(r.last_new_at)} ({human(r.silent_seconds)}),"
        " although every cycle succeeds.",
        f"Its rhythm: new rows {_usual(r)} ({r.arrivals} cycles with new rows lately);"
        f" it alarms after {human(r.threshold)} of silence.",
        "Still arriving meanwhile: " + ", ".join(
            f"{k.entity} (last {_iso(k.last_new_at)})" for k in kept if k.last_new_at
        ) + ".",
        ADVICE_ENTITY.format(entity=r.entity),
    ])
    return Condition(
        kind=ENTITY_STALLED,
        entity=r.entity,
        title=f"{r.entity} stalled: nothing new for {human(r.silent_seconds)} while {names}"
        " keep arriving",
        text=text,
        details={**r.details(), "entity": r.entity,
                 "kept_flowing": {k.entity: k.details()["last_new_at"] for k in kept}},
    )


def platform_stalled(
    flowing: list[Rhythm], lag: float | None, lag_max: float, all_stalled: bool
) -> Condition:
    """The ``platform_stalled`` condition: the entities' evidence and the lag reported."""
    flowing = sorted(flowing, key=lambda r: r.entity)
    last = [r.last_new_at for r in flowing if r.last_new_at]
    since = max(last) if last else None
    silent = min((r.silent_seconds for r in flowing), default=0.0)
    lines = []
    if all_stalled and since is not None:
        lines.append(f"Nothing new from any entity since {_iso(since)} ({human(silent)}),"
                     " while every cycle succeeds: the API answers, the data stopped.")
    lines.append("Last new data: " + ("; ".join(
        f"{r.entity} {_iso(r.last_new_at)} ({_usual(r)})" for r in flowing if r.last_new_at
    ) or "no entity has a rhythm yet") + ".")
    lines.append(_lag_line(lag, lag_max))
    lagging = lag is not None and lag > lag_max
    stale = (f"they lag production by {human(lag)}" if lag is not None and lagging
             else f"they show the data as of {_iso(since) if since else 'the last new rows'}")
    lines.append(ADVICE_PLATFORM.format(stale=stale))
    if lag is not None and lagging:
        title = (f"Platform stalled: the replica is {human(lag)} behind production"
                 " although loads succeed")
    else:
        title = (f"Platform stalled: no new data for {human(silent)} from "
                 + ", ".join(r.entity for r in flowing) + " although loads succeed")
    return Condition(
        kind=PLATFORM_STALLED,
        entity=None,
        title=title,
        text="\n".join(lines),
        details={
            "entities": {r.entity: r.details() for r in flowing},
            "replication_lag_seconds": lag,
            "replication_lag_max_seconds": lag_max,
        },
    )


def _lag_line(lag: float | None, lag_max: float) -> str:
    if lag is None:
        return "The API reports no replication lag: judged by the data's rhythm alone."
    if lag > lag_max:
        return (f"The API reports a replication lag of {human(lag)} (alarm over"
                f" {human(lag_max)}): its replica is not following production.")
    return (f"The API reports a replication lag of {human(lag)} (under {human(lag_max)}):"
            " production itself may have stopped writing.")


# -- memory of open alarms ----------------------------------------------------------------


def remembered(open_alarms: Mapping[str, Mapping[str, Any]]) -> dict[str, Rhythm]:
    """Each entity's rhythm as recorded in the open stall alarms (``open_alarms``: the
    health state's, key -> alarm), for :func:`rhythm`."""
    out: dict[str, Rhythm] = {}
    for alarm in open_alarms.values():
        details = alarm.get("details") or {}
        if alarm.get("kind") == ENTITY_STALLED and alarm.get("entity"):
            found = {str(alarm["entity"]): details}
        elif alarm.get("kind") == PLATFORM_STALLED:
            found = dict(details.get("entities") or {})
        else:
            continue
        for entity, d in found.items():
            r = _from_details(entity, d)
            if r is not None:
                out[entity] = r
    return out


def _from_details(entity: str, d: Mapping[str, Any]) -> Rhythm | None:
    if not d.get("last_new_at") or d.get("threshold_seconds") is None:
        return None
    return Rhythm(
        entity,
        _utc(datetime.fromisoformat(d["last_new_at"])),
        float(d.get("silent_seconds") or 0.0),
        int(d.get("arrivals") or 0),
        d.get("typical_gap_seconds"),
        float(d["threshold_seconds"]),
    )
