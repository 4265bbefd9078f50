"""Pipeline health: classify every cycle, keep the history, and tell people once.

Every load (``salesflow load``, ``run``, ``watch``, the demo) is a **cycle** with one
outcome:

=====================  ===============================================  =============
outcome                what happened                                    incident kind
=====================  ===============================================  =============
success_new_data       loaded, rows arrived                             —
success_no_data        loaded, nothing new upstream                     —
maintenance            503 with Retry-After after the retries           outage
source_unavailable     refused, timed out, 5xx after the retries        outage
rate_limited           429 after the retries                            outage
auth_error             the token was refused                            error
config_error           bad URL, unknown endpoint, missing setting       error
pipeline_error         our code or the warehouse failed                 error
=====================  ===============================================  =============

Failed cycles in a row form one **incident** (an outage, or an error streak): exactly one
notice when it opens and one when a successful cycle closes it (with its duration and
the rows caught up in that cycle); a different family of failure closes the open
incident and opens its own. An outage is not a bug: outage notices tell users to wait
and that nothing will be lost; error notices tell the data team what to fix.

The history is kept in the warehouse (``raw.pipeline_cycles``, ``raw.pipeline_loads``:
one row per entity per successful cycle, with the rows it loaded and the records it
newly held in quarantine, ``raw.pipeline_incidents``), documented as the
dbt source ``salesflow``; the current state is also kept in ``health.json`` beside dlt's
working directory, so ``salesflow status`` answers while a cycle holds the warehouse.
A failure's explanation is redacted before it is kept or told: no secret reaches them.

Besides cycle incidents, data alarms (:mod:`.alarms`: conditions of the data found while
cycles succeed) are recorded here with each cycle, in the same table. A build or test
run after the load is recorded by :meth:`Health.record_build`: the marts' status
(:mod:`.marts`, current or held back) and the build's alarms, in the same state file and
incidents table, so a failing build is one incident too.

May import: :mod:`.notify`, :mod:`.alarms`, :mod:`.redact`, :mod:`.marts`,
:mod:`loaders.warehouse` and the replica source's errors.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loaders import warehouse
from loaders.monitoring import alarms, marts
from loaders.monitoring.alarms import AlarmCheck
from loaders.monitoring.notify import Event, Notifier
from loaders.monitoring.redact import redact
from loaders.replica.errors import ReplicaAuthError, ReplicaError, ReplicaUnavailable

log = logging.getLogger(__name__)

SUCCESS = ("success_new_data", "success_no_data")
OUTAGE = ("maintenance", "source_unavailable", "rate_limited")
ERROR = ("auth_error", "config_error", "pipeline_error")

CYCLES = "pipeline_cycles"
LOADS = "pipeline_loads"
INCIDENTS = "pipeline_incidents"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def cycle_id_at(t: datetime) -> str:
    """The id of a cycle started at ``t`` (UTC): ids sort as their start times."""
    return t.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")


def classify(exc: BaseException | None, rows: int = 0) -> tuple[str, str]:
    """A cycle's outcome and a one-line explanation (secrets masked)."""
    outcome, explanation = _classify(exc, rows)
    return outcome, redact(explanation)


def _classify(exc: BaseException | None, rows: int) -> tuple[str, str]:
    if exc is None:
        return ("success_new_data", f"{rows:,} rows loaded") if rows else (
            "success_no_data", "nothing new upstream"
        )
    if isinstance(exc, ReplicaAuthError):
        return "auth_error", str(exc)
    if isinstance(exc, ReplicaUnavailable):
        kind = {"maintenance": "maintenance", "rate_limited": "rate_limited"}.get(
            exc.kind, "source_unavailable"
        )
        return kind, str(exc)
    if isinstance(exc, ReplicaError):
        return "config_error", str(exc)
    return "pipeline_error", f"{type(exc).__name__}: {exc}"


def family(outcome: str) -> str | None:
    return "outage" if outcome in OUTAGE else "error" if outcome in ERROR else None


@dataclass
class Cycle:
    started_at: datetime
    ended_at: datetime
    outcome: str
    message: str
    rows: dict[str, int] = field(default_factory=dict)
    load_id: str | None = None
    # records newly held in raw.quarantine, per entity
    quarantined: dict[str, int] = field(default_factory=dict)

    @property
    def cycle_id(self) -> str:
        return cycle_id_at(self.started_at)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


ADVICE = {
    "maintenance": "The platform is in planned maintenance. Nothing to do: salesflow keeps"
    " trying and catches up on everything missed once it is back; marts stay as they are"
    " (complete up to the last load) until then.",
    "source_unavailable": "The replica API cannot be reached. Nothing is lost: salesflow"
    " keeps trying and loads everything missed when it is back; marts stay complete up to"
    " the last load. Escalate to the platform team if it lasts.",
    "rate_limited": "The replica API keeps refusing requests (rate limit). salesflow backs"
    " off and retries; if it lasts, lower the cycle frequency or page size.",
    "auth_error": "The replica API refused salesflow's token. Nothing loads until the"
    " token is fixed: update SOURCES__REPLICA__TOKEN or .dlt/secrets.toml.",
    "config_error": "salesflow's configuration does not match the API (URL, endpoint or a"
    " missing setting). Fix .dlt/config.toml; see the message.",
    "pipeline_error": "salesflow itself failed (code or warehouse), not the platform. The"
    " data team should look at the error and the logs; the next cycle retries.",
}


class Health:
    """Records cycles, opens and closes incidents, raises their notices."""

    def __init__(self, state_dir: Path, notifier: Notifier | None = None) -> None:
        self.path = state_dir / "health.json"
        self.notifier = notifier

    # state ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"open_incident": None, "last_cycle": None, "entities": {},
                    "open_alarms": {}}

    def _save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.path)

    # a cycle ------------------------------------------------------------------------
    def record(self, cycle: Cycle, sql_client: Any = None, extra: dict[str, Any] | None = None,
               check: AlarmCheck | None = None) -> list[str]:
        """Record ``cycle`` and the data alarms of its ``check``; returns the keys of the
        notices it raised."""
        state = self.state()
        alarm_changes = alarms.update(
            state.setdefault("open_alarms", {}), check or AlarmCheck(), cycle.ended_at,
            cycle.cycle_id,
        )
        notices: list[str] = []
        closed: dict[str, Any] | None = None
        opened: dict[str, Any] | None = None
        incident = state.get("open_incident")
        fam = family(cycle.outcome)
        if incident and fam != incident["family"]:
            closed = {**incident, "ended_at": iso(cycle.ended_at),
                      "rows_caught_up": cycle.total if fam is None else 0,
                      "superseded_by": cycle.outcome if fam else None}
            state["open_incident"] = incident = None
            state["last_closed_incident"] = closed  # the board's recovery notice
        if fam is not None:
            if incident is None:
                opened = {
                    "incident_id": f"{cycle.cycle_id}-{cycle.outcome}",
                    "family": fam,
                    "kind": cycle.outcome,
                    "started_at": iso(cycle.started_at),
                    "failed_cycles": 1,
                    "last_error": cycle.message[:500],
                }
                state["open_incident"] = opened
            else:
                incident["failed_cycles"] += 1
                incident["last_error"] = cycle.message[:500]
                incident["last_kind"] = cycle.outcome
        else:
            # a cycle with nothing new still proves every entity it loaded is current
            for entity in _loaded(cycle, (extra or {}).get("entities", [])):
                entry = state["entities"].setdefault(entity, {})
                entry.update(last_success_at=iso(cycle.ended_at),
                             rows_last_cycle=cycle.rows.get(entity, 0),
                             quarantined_last_cycle=cycle.quarantined.get(entity, 0))
                if cycle.rows.get(entity, 0):
                    entry["last_new_data_at"] = iso(cycle.ended_at)
            state["last_success_at"] = iso(cycle.ended_at)
        state["last_cycle"] = {
            "cycle_id": cycle.cycle_id, "outcome": cycle.outcome, "message": cycle.message,
            "started_at": iso(cycle.started_at), "ended_at": iso(cycle.ended_at),
            "rows": cycle.total,
        }
        if extra:
            state.update({k: v for k, v in extra.items() if k != "entities"})
        self._save(state)
        if sql_client is not None:
            try:
                self._write(sql_client, cycle, opened, closed, state.get("open_incident"),
                            (extra or {}).get("entities", []), alarm_changes)
            except Exception as exc:  # the history is a record, not the pipeline
                log.error("could not write the health history to the warehouse: %s", exc)
        if self.notifier is not None:
            if closed:
                notices.append(self._notify_closed(self.notifier, closed))
            if opened:
                notices.append(self._notify_opened(self.notifier, opened, cycle))
            notices += alarms.notify(self.notifier, alarm_changes)
        return notices

    # a build ------------------------------------------------------------------------
    def mart_status(self) -> dict[str, dict[str, Any]]:
        """Each mart's status as last recorded (see :mod:`.marts`)."""
        return self.state().get("marts") or {}

    def record_build(
        self, status: dict[str, dict[str, Any]], check: AlarmCheck, now: datetime,
        run_id: str, sql_client: Any = None, resolution: str | None = None,
    ) -> list[str]:
        """Record the marts' ``status`` after a build or test run, and update the alarms
        of the kinds ``check`` judged (the others are left as they are); ``resolution``:
        what caught up, told with the recovery of an alarm this closes. Returns the keys
        of the notices raised."""
        state = self.state()
        changes = alarms.update(state.setdefault("open_alarms", {}), check, now, run_id)
        for alarm in changes.closed:
            alarm["resolution"] = resolution
        state["marts"] = status
        self._save(state)
        if sql_client is not None:
            try:
                if not sql_client.has_dataset():
                    sql_client.create_dataset()
                ds = sql_client.fully_qualified_dataset_name()
                self.ensure_tables(sql_client, ds)
                marts.write(sql_client, ds, status, iso(now))
                alarms.write(sql_client, ds, INCIDENTS, changes)
            except Exception as exc:  # the history is a record, not the pipeline
                log.error("could not write the marts' status to the warehouse: %s", exc)
        if self.notifier is None:
            return []
        return alarms.notify(self.notifier, changes)

    # warehouse ------------------------------------------------------------------------
    @staticmethod
    def ensure_tables(sql: Any, dataset: str) -> None:
        sql.execute_sql(
            f"CREATE TABLE IF NOT EXISTS {dataset}.{CYCLES} (cycle_id VARCHAR PRIMARY KEY,"
            " started_at TIMESTAMP WITH TIME ZONE, ended_at TIMESTAMP WITH TIME ZONE,"
            " outcome VARCHAR, message VARCHAR, rows_loaded BIGINT, load_id VARCHAR)"
        )
        sql.execute_sql(
            f"CREATE TABLE IF NOT EXISTS {dataset}.{LOADS} (cycle_id VARCHAR, entity VARCHAR,"
            " rows_loaded BIGINT, loaded_at TIMESTAMP WITH TIME ZONE, rows_quarantined"
            " BIGINT, PRIMARY KEY (cycle_id, entity))"
        )
        # records newly held per entity (a history kept before they were counted lacks it)
        sql.execute_sql(f"ALTER TABLE {dataset}.{LOADS} ADD COLUMN IF NOT EXISTS"
                        " rows_quarantined BIGINT")
        sql.execute_sql(
            f"CREATE TABLE IF NOT EXISTS {dataset}.{INCIDENTS} (incident_id VARCHAR PRIMARY"
            " KEY, family VARCHAR, kind VARCHAR, started_at TIMESTAMP WITH TIME ZONE,"
            " ended_at TIMESTAMP WITH TIME ZONE, duration_seconds DOUBLE PRECISION,"
            " failed_cycles INTEGER, rows_caught_up BIGINT, last_error VARCHAR,"
            " entity VARCHAR)"
        )
        # the entity a data alarm is about (a history kept before alarms lacks it)
        sql.execute_sql(f"ALTER TABLE {dataset}.{INCIDENTS} ADD COLUMN IF NOT EXISTS entity"
                        " VARCHAR")
        # before the first build: pipeline_health reads it from the first cycle on
        marts.ensure_table(sql, dataset)

    def _write(self, sql: Any, cycle: Cycle, opened: dict | None, closed: dict | None,
               current: dict | None, entities: Sequence[str],
               alarm_changes: alarms.AlarmChanges | None = None) -> None:
        if not sql.has_dataset():
            sql.create_dataset()
        ds = sql.fully_qualified_dataset_name()
        self.ensure_tables(sql, ds)
        # one transaction, one row per entity in one statement: a cycle's record is
        # written whole or not at all, and costs one commit
        with sql.begin_transaction():
            self._write_rows(sql, ds, cycle, opened, closed, current, entities,
                             alarm_changes)

    def _write_rows(self, sql: Any, ds: str, cycle: Cycle, opened: dict | None,
                    closed: dict | None, current: dict | None, entities: Sequence[str],
                    alarm_changes: alarms.AlarmChanges | None) -> None:
        sql.execute_sql(
            f"INSERT INTO {ds}.{CYCLES} (cycle_id, started_at, ended_at, outcome, message,"
            " rows_loaded, load_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            cycle.cycle_id, iso(cycle.started_at), iso(cycle.ended_at), cycle.outcome,
            cycle.message[:1000], cycle.total, cycle.load_id,
        )
        loaded = _loaded(cycle, entities) if family(cycle.outcome) is None else []
        if loaded:
            warehouse.insert_rows(
                sql, f"{ds}.{LOADS}",
                ("cycle_id", "entity", "rows_loaded", "rows_quarantined", "loaded_at"),
                [(cycle.cycle_id, entity, cycle.rows.get(entity, 0),
                  cycle.quarantined.get(entity, 0), iso(cycle.ended_at)) for entity in loaded],
            )
        if closed:
            sql.execute_sql(
                f"UPDATE {ds}.{INCIDENTS} SET ended_at = %s, duration_seconds = %s,"
                " failed_cycles = %s, rows_caught_up = %s, last_error = %s"
                " WHERE incident_id = %s",
                closed["ended_at"], alarms.duration(closed), closed["failed_cycles"],
                closed["rows_caught_up"], closed["last_error"], closed["incident_id"],
            )
        if opened:
            sql.execute_sql(
                f"INSERT INTO {ds}.{INCIDENTS} (incident_id, family, kind, started_at,"
                " failed_cycles, last_error) VALUES (%s, %s, %s, %s, %s, %s)",
                opened["incident_id"], opened["family"], opened["kind"], opened["started_at"],
                opened["failed_cycles"], opened["last_error"],
            )
        elif current:
            sql.execute_sql(
                f"UPDATE {ds}.{INCIDENTS} SET failed_cycles = %s, last_error = %s"
                " WHERE incident_id = %s",
                current["failed_cycles"], current["last_error"], current["incident_id"],
            )
        if alarm_changes is not None:
            alarms.write(sql, ds, INCIDENTS, alarm_changes)

    # notices ------------------------------------------------------------------------
    def _notify_opened(
        self, notifier: Notifier, incident: dict[str, Any], cycle: Cycle
    ) -> str:
        kind = incident["kind"]
        outage = incident["family"] == "outage"
        title = {
            "maintenance": "Replica API in maintenance: loading paused",
            "source_unavailable": "Replica API unavailable: loading paused",
            "rate_limited": "Replica API rate-limiting: loading paused",
            "auth_error": "Replica API refused the token: loading stopped",
            "config_error": "salesflow configuration error: loading stopped",
            "pipeline_error": "salesflow pipeline error: loading stopped",
        }[kind]
        event = Event(
            key=f"incident:{incident['incident_id']}:opened",
            kind="outage" if outage else kind,
            title=title,
            text=f"Since {incident['started_at']}. {ADVICE[kind]}\nDetail: {cycle.message}",
            severity="warning" if outage else "error",
            details={k: incident[k] for k in ("incident_id", "kind", "started_at")},
        )
        notifier.notify(event)
        return event.key

    def _notify_closed(self, notifier: Notifier, incident: dict[str, Any]) -> str:
        outage = incident["family"] == "outage"
        seconds = alarms.duration(incident)
        if incident.get("superseded_by"):
            event = Event(
                key=f"incident:{incident['incident_id']}:closed",
                kind="incident_changed",
                title=f"{incident['kind'].replace('_', ' ')} became"
                f" {incident['superseded_by'].replace('_', ' ')}",
                text=f"The {incident['kind'].replace('_', ' ')} that started at"
                f" {incident['started_at']} turned into a"
                f" {incident['superseded_by'].replace('_', ' ')}: see the next notice.",
                severity="warning",
                details={"incident_id": incident["incident_id"]},
            )
            notifier.notify(event)
            return event.key
        what = "Replica API back" if outage else "salesflow loading again"
        event = Event(
            key=f"incident:{incident['incident_id']}:closed",
            kind="recovery",
            title=f"{what} after {alarms.human(seconds)}",
            text=(
                f"The {incident['kind'].replace('_', ' ')} that started at"
                f" {incident['started_at']} ended at {incident['ended_at']}"
                f" ({alarms.human(seconds)}, {incident['failed_cycles']} failed cycle(s))."
                f" {incident['rows_caught_up']:,} rows were caught up in the first cycle"
                " after it; nothing was lost or loaded twice."
            ),
            severity="info",
            details={k: incident.get(k) for k in ("incident_id", "kind", "started_at",
                                                 "ended_at", "failed_cycles",
                                                 "rows_caught_up")}
            | {"duration_seconds": seconds},
        )
        notifier.notify(event)
        return event.key


def recent_loads(sql: Any, since: datetime, keep: int) -> list[tuple[str, datetime, int]]:
    """``(entity, loaded_at, rows_loaded)`` of the cycles started since ``since``: per
    entity its last ``keep`` loads that brought rows, and its last load that brought none.
    One query, bounded by the cycle id (the key's leading column)."""
    ds = sql.fully_qualified_dataset_name()
    rows = sql.execute_sql(
        "select entity, loaded_at, rows_loaded from (select entity, loaded_at, rows_loaded,"
        " row_number() over (partition by entity, rows_loaded > 0 order by loaded_at desc)"
        f" as newest from {ds}.{LOADS} where cycle_id >= %s) as recent"
        " where newest <= case when rows_loaded > 0 then %s else 1 end",
        cycle_id_at(since), keep,
    )
    return [(str(e), at, int(n or 0)) for e, at, n in rows or []]


def _loaded(cycle: Cycle, entities: Sequence[str]) -> list[str]:
    """The entities a successful cycle loaded: those it was asked for, and any that
    brought rows or records held in quarantine."""
    return sorted(set(entities) | set(cycle.rows) | set(cycle.quarantined))


def as_dict(cycle: Cycle) -> dict[str, Any]:
    return {**asdict(cycle), "cycle_id": cycle.cycle_id}
