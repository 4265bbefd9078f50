"""``salesflow status``: is the data current, is anything broken, what was said.

Reads the loader's state file (``health.json``, written at the end of every cycle, so
it answers while a cycle holds the warehouse: last success and last new data per
entity, open incident and alarms), the notification ledger, and the warehouse (a DuckDB
file read-only, when it is free): rows and newest record per raw table, and so how old
the data is by its own timestamps. Freshness thresholds are dbt's
(``freshness_*_minutes`` vars in dbt_project.yml), so the command, source freshness and
the ``pipeline_health`` mart agree.

A schema change the platform did not announce keeps the status at warn for a day; a
mart held back by a failing build or test (:mod:`.marts`) keeps it at least at warn and
is listed with since when and why (the failing build's open alarm makes it red).

What it prints passes through :func:`~loaders.monitoring.redact.redact`: an error kept
in the state files or said by the warehouse never shows a configured secret.

Exit code: 0 when everything is green or only warns, 1 when something is red (an open
incident, an open data alarm, an entity past the error threshold, or nothing ever loaded),
so schedulers and monitors can act on it.

May import: :mod:`.health`, :mod:`.notify`, :mod:`.redact`, the foundations and the replica source's
settings.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loaders import dbt_project, warehouse
from loaders.config import PROJECT_ROOT
from loaders.monitoring import health, marts
from loaders.monitoring.notify import Ledger
from loaders.monitoring.redact import redact
from loaders.replica import settings

RED, WARN, GREEN = "red", "warn", "green"


def thresholds(project_root: Path = PROJECT_ROOT) -> tuple[float, float]:
    """(warn, error) minutes, from dbt_project.yml's vars."""
    v = dbt_project.project_file(project_root).get("vars") or {}
    return float(v.get("freshness_warn_minutes", 30)), float(v.get("freshness_error_minutes", 120))


def _warehouse() -> tuple[dict[str, dict[str, Any]], str | None]:
    """Rows and newest updated_at per raw table, or why they could not be read (a DuckDB
    file is opened read-only, and is busy while a cycle writes it)."""
    duckdb = warehouse.is_duckdb()
    if duckdb and not warehouse.duckdb_path().exists():
        return {}, "no warehouse yet"
    client = warehouse.sql_client(read_only=True)
    try:
        client.open_connection()
    except Exception as exc:  # busy file or unreachable server: say so, answer the rest
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = "warehouse busy (a cycle is writing)" if duckdb else "warehouse unreachable"
        return {}, f"{what}: {first}"
    out: dict[str, dict[str, Any]] = {}
    try:
        if not client.has_dataset():
            return {}, "no warehouse yet"
        tables = {
            r[0]
            for r in client.execute_sql(
                "select table_name from information_schema.tables where table_schema = %s",
                client.dataset_name,
            ) or []
        }
        for entity, ep in settings.ENDPOINTS.items():
            if entity not in tables:
                continue
            cursor = settings.cursor_of(ep)
            [(rows, newest)] = client.execute_sql(
                f"select count(*), max({client.escape_column_name(cursor)}) from"
                f" {client.make_qualified_table_name(entity)}"
            ) or [(0, None)]
            out[entity] = {"rows": rows, "newest_record_at": newest}
    finally:
        client.close_connection()
    return out, None


def _age_minutes(t: Any, now: datetime) -> float | None:
    """How old the data's newest record is, by its own timestamp (None if unknown)."""
    if isinstance(t, str):
        try:
            t = datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(t, datetime):
        return None
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t
    return round(max((now - t).total_seconds(), 0.0) / 60, 1)


def collect(
    state_dir: Path, project_root: Path = PROJECT_ROOT, now: datetime | None = None,
    read_warehouse: bool = True,
) -> dict[str, Any]:
    """The status report; ``read_warehouse=False`` leaves the warehouse alone (the live
    board reads only what analysts may: no rows in raw, no newest record)."""
    now = now or datetime.now(timezone.utc)
    warn_after, error_after = thresholds(project_root)
    state = health.Health(state_dir).state()
    tables, warehouse_note = _warehouse() if read_warehouse else ({}, "not read")
    entities = []
    for entity in settings.ENDPOINTS:
        e = state.get("entities", {}).get(entity, {})
        last = e.get("last_success_at")
        minutes = (now - datetime.fromisoformat(last)).total_seconds() / 60 if last else None
        level = (
            RED if minutes is None or minutes >= error_after
            else WARN if minutes >= warn_after
            else GREEN
        )
        newest = tables.get(entity, {}).get("newest_record_at")
        entities.append({
            "entity": entity,
            "last_success_at": last,
            "minutes_since_success": None if minutes is None else round(minutes, 1),
            "freshness": level,
            "last_new_data_at": e.get("last_new_data_at"),
            "rows_in_raw": tables.get(entity, {}).get("rows"),
            "newest_record_at": newest,
            "newest_record_age_minutes": _age_minutes(newest, now),
        })
    incident = state.get("open_incident")
    open_alarms = sorted(
        (state.get("open_alarms") or {}).values(), key=lambda a: a["started_at"]
    )
    for e in entities:
        e["alarms"] = [a["kind"] for a in open_alarms if a["entity"] in (e["entity"], None)]
    ledger_path = state_dir / "notifications.sqlite3"
    notices = Ledger(ledger_path).recent(5) if ledger_path.exists() else []
    held = [
        {"mart": m, "since": s.get("since"), "held_back_by": s.get("node"),
         "reason": s.get("reason"), "last_published_at": s.get("last_published_at")}
        for m, s in sorted(marts.held_back(state.get("marts") or {}).items())
    ]
    overall = GREEN
    unannounced = [c for c in state.get("recent_changes") or [] if not c.get("announced")]
    if unannounced or held or any(e["freshness"] == WARN for e in entities):
        overall = WARN
    if incident or open_alarms or any(e["freshness"] == RED for e in entities):
        overall = RED
    return {
        "status": overall,
        "checked_at": now.isoformat(timespec="seconds"),
        "thresholds_minutes": {"warn": warn_after, "error": error_after},
        "last_cycle": state.get("last_cycle"),
        "open_incident": incident,
        "last_recovery": state.get("last_closed_incident"),
        "open_alarms": [
            {k: a.get(k) for k in ("kind", "entity", "title", "started_at", "failed_cycles",
                                   "last_error")}
            for a in open_alarms
        ],
        "entities": entities,
        "held_back_marts": held,
        "upcoming_announcements": state.get("upcoming_announcements", []),
        "recent_changes": state.get("recent_changes") or [],
        "recent_notifications": notices,
        "warehouse": warehouse_note or "readable",
    }


def render(report: dict[str, Any]) -> str:
    mark = {GREEN: "ok", WARN: "WARN", RED: "RED"}
    lines = [f"salesflow status: {mark[report['status']]}  (checked {report['checked_at']})"]
    c = report["last_cycle"]
    if c:
        lines.append(f"last cycle:  {c['ended_at']}  {c['outcome']}  — {c['message'][:120]}")
    else:
        lines.append("last cycle:  none yet (run `salesflow load`)")
    i = report["open_incident"]
    if i:
        lines.append(
            f"OPEN INCIDENT: {i['kind']} ({i['family']}) since {i['started_at']},"
            f" {i['failed_cycles']} failed cycle(s): {i['last_error'][:120]}"
        )
    else:
        lines.append("incidents:   none open")
        last = report.get("last_recovery")
        if last and not last.get("superseded_by"):
            lines.append(f"last incident: {last['kind']} from {last['started_at']} to"
                         f" {last['ended_at']}, {last.get('rows_caught_up', 0):,} rows"
                         " caught up after it")
    for a in report["open_alarms"]:
        lines.append(f"ALARM: {a['title']} (since {a['started_at']},"
                     f" {a['failed_cycles']} cycle(s))")
        lines += [f"  {line}" for line in a["last_error"].splitlines()[:6]]
    held = report.get("held_back_marts") or []
    lines.append("marts: " + ("all current" if not held else
                              f"{len(held)} HELD BACK (analysts keep their last good version)"))
    for m in held:
        published = m["last_published_at"] or "never"
        lines.append(f"  {m['mart']:<26} since {m['since']}  (last published {published})")
        lines.append(f"    why: {(m['reason'] or '-')[:160]}")
    t = report["thresholds_minutes"]
    lines.append(f"freshness (warn {t['warn']:.0f} min, error {t['error']:.0f} min):")
    lines.append(f"  {'entity':<12} {'last success':<26} {'min ago':>8}  {'state':<6}"
                 f" {'last new data':<26} {'rows in raw':>12}  newest record (age)")
    for e in report["entities"]:
        ago = "-" if e["minutes_since_success"] is None else f"{e['minutes_since_success']:.1f}"
        rows = "-" if e["rows_in_raw"] is None else f"{e['rows_in_raw']:,}"
        age = e.get("newest_record_age_minutes")
        newest = f"{e['newest_record_at'] or '-'}" + ("" if age is None else f" ({_old(age)})")
        alarm = f"  ALARM: {', '.join(e['alarms'])}" if e["alarms"] else ""
        lines.append(
            f"  {e['entity']:<12} {e['last_success_at'] or 'never':<26} {ago:>8}"
            f"  {mark[e['freshness']]:<6} {e.get('last_new_data_at') or '-':<26}"
            f" {rows:>12}  {newest}{alarm}"
        )
    if report["warehouse"] != "readable":
        lines.append(f"  ({report['warehouse']})")
    recent = report["recent_changes"]
    if recent:
        lines.append("schema changes in the last day (unannounced ones keep status at WARN):")
    for c in recent[-10:]:
        lines.append(f"  {c['detected_at']}  {c['what']}"
                     + ("" if c.get("announced") else "  (UNANNOUNCED)"))
    ups = report["upcoming_announcements"]
    lines.append("announced schema changes: " + ("none pending" if not ups else ""))
    for a in ups:
        lines.append(f"  {a['change_id']}: {a['title']} — effective {a['effective_at']}"
                     + (" (breaking)" if a.get("breaking") else "")
                     + (" [declared in the repository]" if a.get("source") == "repository"
                        else ""))
    lines.append("last notifications:" + (" none" if not report["recent_notifications"] else ""))
    for n in report["recent_notifications"]:
        where = ", ".join(n["delivered"]) or "-"
        pending = f"; pending on {', '.join(n['pending'])}" if n["pending"] else ""
        lines.append(f"  {n['at']}  {n['title']}  [{where}{pending}]")
    return redact("\n".join(lines))


def _old(minutes: float) -> str:
    """An age for people: ``40 s``, ``12 min``, ``5.5 h``, ``3 d``."""
    if minutes < 2:
        return f"{minutes * 60:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / 1440:.0f} d"


def as_json(report: dict[str, Any]) -> str:
    return redact(json.dumps(report, indent=2, default=str))
