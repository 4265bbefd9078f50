"""The pipeline's notices for people reading the board, from ``salesflow status``.

:func:`from_status` turns the status report (:func:`loaders.monitoring.status.collect`,
which reads the loader's state file and the notification ledger) into a few sentences,
most urgent first: an outage in progress and how far the figures are complete, a
recent recovery, announced changes and their verdict against the data contract (the
check their notices carry, :func:`loaders.contract.assess.assess_announcement`) with
the dashboards and owners they touch, schema changes detected in the last day with what
they reach, held-back marts, open data alarms and stale entities. No figures of its own:
the same facts as the command and the notifications.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from loaders.contract.assess import assess_announcement
from loaders.monitoring import alarms

ERROR, WARNING, INFO, SUCCESS = "error", "warning", "info", "success"
ORDER = {ERROR: 0, WARNING: 1, INFO: 2, SUCCESS: 3}

# how long a recovery stays on the board once the platform is back
RECOVERY_SHOWN = timedelta(hours=1)

# detected change kinds that break a field the marts read
BREAKING_KINDS = {"column_removed", "type_change", "entity_removed"}


@dataclass(frozen=True)
class Notice:
    level: str  # error | warning | info | success
    title: str
    text: str = ""
    dashboards: tuple[str, ...] = field(default=())
    owners: tuple[str, ...] = field(default=())


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    t = value if isinstance(value, datetime) else datetime.fromisoformat(
        str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def clock(value: Any) -> str:
    """``10:02 UTC`` today, ``Dec 5 10:02 UTC`` another day."""
    t = _time(value)
    if t is None:
        return "an unknown time"
    t = t.astimezone(timezone.utc)
    today = datetime.now(timezone.utc).date()
    return t.strftime("%H:%M UTC") if t.date() == today else t.strftime("%b %-d %H:%M UTC")


def _complete_up_to(report: Mapping[str, Any]) -> str:
    """The last successful load of every entity: the figures hold everything up to it."""
    times = [_time(e.get("last_success_at")) for e in report.get("entities") or []]
    known = [t for t in times if t is not None]
    return clock(min(known)) if known else "no successful load yet"


def _incident(report: Mapping[str, Any]) -> list[Notice]:
    i = report.get("open_incident")
    if not i:
        return []
    since, upto = clock(i.get("started_at")), _complete_up_to(report)
    cycles = i.get("failed_cycles", 1)
    if i.get("family") == "outage":
        what = {"maintenance": "is down for maintenance",
                "rate_limited": "is refusing requests (rate limited)"}.get(
            i.get("kind", ""), "has been unavailable")
        return [Notice(
            ERROR, f"The sales platform {what} since {since}",
            f"Figures are complete up to {upto}. Nothing is lost: they catch up by"
            f" themselves when it returns ({cycles} failed attempt(s) so far).",
        )]
    return [Notice(
        ERROR, f"Loading has been failing since {since} ({i.get('kind', 'error')})",
        f"Figures are complete up to {upto}; newer sales are not shown until the data"
        f" team fixes it ({cycles} failed cycle(s)). They were notified.",
    )]


def _recovery(report: Mapping[str, Any], now: datetime) -> list[Notice]:
    c = report.get("last_recovery")
    ended = _time((c or {}).get("ended_at"))
    if not c or c.get("superseded_by") or report.get("open_incident") or ended is None:
        return []
    if now - ended > RECOVERY_SHOWN:
        return []
    outage = c.get("family") == "outage"
    title = (f"The sales platform is back since {clock(ended)}" if outage
             else f"Loading works again since {clock(ended)}")
    return [Notice(
        SUCCESS, title,
        f"It was {'unavailable' if outage else 'failing'} from {clock(c.get('started_at'))}"
        f" for {alarms.human(alarms.duration(c))}; {c.get('rows_caught_up', 0):,} rows"
        " caught up in the first cycle after it. Nothing was lost or counted twice.",
    )]


def _announcements(report: Mapping[str, Any], contract: Mapping[str, Any] | None,
                   now: datetime) -> list[Notice]:
    out = []
    for a in report.get("upcoming_announcements") or []:
        effective = _time(a.get("effective_at"))
        days = (effective.date() - now.date()).days if effective else None
        when = ("an unannounced date" if days is None else "today" if days <= 0
                else "tomorrow" if days == 1 else f"in {days} days")
        assessment = assess_announcement(a, dict(contract)) if contract and a.get(
            "changes") else None
        fields = assessment["fields"] if assessment else []
        dashboards = tuple(sorted({x for f in fields for x in f["exposures"]}))
        owners = tuple(sorted({x for f in fields for x in f["owners"]}))
        verdict = assessment["verdict"] if assessment else None
        breaking = verdict == "breaking" or (verdict is None and a.get("breaking"))
        head = "Breaking change announced" if breaking else "Schema change announced"
        text = f"{a.get('title')} — takes effect {clock(effective)} ({when})."
        if fields:
            text += " Fields: " + "; ".join(
                f"{f['entity']}.{f['field']} {f['change']}" for f in fields) + "."
            marts = sorted({m for f in fields for m in f["marts"]})
            text += f" Marts: {', '.join(marts)}."
        elif assessment is not None:
            text += " Safe for the marts: no field they read changes."
        out.append(Notice(WARNING if breaking else INFO,
                          f"{head}: {a.get('change_id')} {when}", text, dashboards, owners))
    return out


def _contract_field(contract: Mapping[str, Any] | None, entity: str,
                    column: str | None) -> Mapping[str, Any] | None:
    if not contract or not column:
        return None
    prop = contract.get("$defs", {}).get(entity, {}).get("properties", {}).get(column)
    return prop.get("x-salesflow") if prop else None


def _detected(report: Mapping[str, Any], contract: Mapping[str, Any] | None) -> list[Notice]:
    out = []
    for c in (report.get("recent_changes") or [])[-10:]:
        info = _contract_field(contract, c.get("entity", ""), c.get("column"))
        dashboards = tuple(info["exposures"]) if info else ()
        owners = tuple(info["owners"]) if info else ()
        if info and c.get("kind") in BREAKING_KINDS:
            level, effect = WARNING, (
                f"The marts read this field ({', '.join(sorted(info['marts']))}): their"
                " figures may stop updating or be held back until the project follows.")
        elif info:
            level, effect = INFO, (f"The marts read this field"
                                   f" ({', '.join(sorted(info['marts']))}).")
        else:
            level, effect = INFO, "No mart reads this field: the figures are unaffected."
        announced = "announced" if c.get("announced") else "NOT announced"
        out.append(Notice(
            WARNING if not c.get("announced") and info else level,
            f"Schema change detected {clock(c.get('detected_at'))} ({announced})",
            f"{c.get('what')}. {effect}", dashboards, owners,
        ))
    return out


def _held(report: Mapping[str, Any]) -> list[Notice]:
    held = report.get("held_back_marts") or []
    if not held:
        return []
    names = ", ".join(m["mart"] for m in held)
    lines = [f"{m['mart']}: held since {clock(m.get('since'))}, "
             + (f"showing its version of {clock(m['last_published_at'])}"
                if m.get("last_published_at") else "not published yet")
             + f" ({(m.get('reason') or 'a failing build or test')[:160]})" for m in held]
    return [Notice(WARNING, f"Held back (last good version shown): {names}",
                   "; ".join(lines) + ".")]


def _alarms_and_staleness(report: Mapping[str, Any]) -> list[Notice]:
    out = [Notice(WARNING, f"Data alarm: {a.get('title')}",
                  f"Since {clock(a.get('started_at'))}.")
           for a in report.get("open_alarms") or []]
    if report.get("open_incident"):
        return out  # the incident already says how current the figures are
    stale = [e for e in report.get("entities") or [] if e.get("freshness") in ("warn", "red")]
    if stale:
        out.append(Notice(
            ERROR if any(e["freshness"] == "red" for e in stale) else WARNING,
            "Stale data: " + ", ".join(e["entity"] for e in stale),
            "; ".join(
                f"{e['entity']} last loaded {clock(e['last_success_at'])}"
                if e.get("last_success_at") else f"{e['entity']} never loaded"
                for e in stale) + ".",
        ))
    return out


def from_status(report: Mapping[str, Any], contract: Mapping[str, Any] | None = None,
                now: datetime | None = None) -> list[Notice]:
    """The notices for ``report`` (``status.collect``), most urgent first; ``contract``:
    the committed data contract (:func:`loaders.contract.document.committed`)."""
    now = now or datetime.now(timezone.utc)
    found = (_incident(report) + _recovery(report, now) + _held(report)
             + _announcements(report, contract, now) + _detected(report, contract)
             + _alarms_and_staleness(report))
    return sorted(found, key=lambda n: ORDER[n.level])
