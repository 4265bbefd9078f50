"""Rows committed later than the lookback, on a listing read by ``updated_at``.

A long transaction's rows carry its start time but become visible at its commit: one
committed later than the lookback (``lookback_seconds``) is behind every later request,
and would never load. Where the API offers a commit sequence the endpoint declares it and
the listing is read by it (see :mod:`loaders.replica.settings`); nothing here applies to
those entities. For the others, two slower defences:

* **Wide re-reads.** Every ``reread_interval_seconds``, each entity is read again from
  ``reread_window_seconds`` before its cursor: a walk, a listing of its own before the
  usual one. Raw's versions from where it starts (key and cursor: one query per entity,
  straight into Arrow) go to the source, which drops the rows it reads again unchanged
  (:class:`loaders.replica.Reread`): only what was missed or changed loads. A load walks
  the whole window; a runner that cycles (``watch``) walks ``reread_pages_per_cycle``
  pages a cycle, on from where the last cycle got to (kept in the state below), so no
  cycle's new rows wait for an hour of history read again. A commit up to the window
  late is caught within the interval (plus the cycles of the walk).
* **Count reconciliation.** Every ``reconcile_interval_seconds``, after the load (a
  runner that cycles defers it past the cycle's publication and asks the API in a
  thread, :class:`Reconciliation`, whose findings the next cycle after it raises: over
  a long history the API's count can take many seconds, and no sale should wait for
  it), per
  entity: the API's count of live records updated before ``T`` (raw's newest cursor minus
  the lookback, so rows still in flight do not count) against raw's rows with a cursor
  before ``T``. More upstream than in raw is a gap, however late its rows committed: it
  is logged, raised as a ``count_gap`` data alarm (one notice; it clears when a later
  check finds none) and repaired: the next cycle re-reads that entity from the start
  date, its unchanged rows still not loaded again, and checks it again. Fewer upstream
  is not a gap (records updated or deleted since the load). An API without counts
  (404) is not reconciled, said once in the log (asked again if the API's address
  changes).

The times of the last re-read and reconciliation, where each walk got to, the entities
to repair and a deferred reconciliation's entities and findings are kept in
``late_rows.json`` in the pipelines directory, written after a load succeeds: a failed
cycle leaves them due (and a walk where it was).

May import: :mod:`loaders.config`, :mod:`loaders.warehouse`, the replica source and the
monitoring's alarms.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa

from loaders import config, warehouse
from loaders.monitoring.alarms import AlarmCheck, Condition
from loaders.replica import Reread, deleted_table
from loaders.replica import settings as replica_settings
from loaders.replica.client import fetch_live_count
from loaders.replica.errors import ReplicaError
from loaders.replica.lookback import no_versions, versions
from loaders.replica.protocol import Api

log = logging.getLogger(__name__)

KIND = "count_gap"
STATE_FILE = "late_rows.json"
PENDING = "reconcile"  # state key: the entities a deferred reconciliation is to judge
FOUND = "reconciled"  # state key: what it found, for the next cycle to raise
WALK = "rereading"  # state key: entity -> where its wide re-read got to (None: its start)
DONE = "done"  # an entity's walk in this cycle's plan that is over


@dataclass
class Plan:
    """This cycle's re-reads, and what to do after the load."""

    rereads: dict[str, Reread] = field(default_factory=dict)
    reread_due: bool = False  # a wide re-read starts
    walking: dict[str, str | None] = field(default_factory=dict)  # entity -> reached
    repairs: list[str] = field(default_factory=list)  # entities re-read from the start
    state: dict[str, Any] = field(default_factory=dict)


def _state_path() -> Path:
    return config.pipelines_dir() / STATE_FILE


def _read_state() -> dict[str, Any]:
    path = _state_path()
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError:
        log.warning("%s is not JSON: re-reads and reconciliation start afresh", path)
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(state: dict[str, Any]) -> None:
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, sort_keys=True))
    os.replace(tmp, path)


def _due(state: dict[str, Any], key: str, interval: float, now: datetime) -> bool:
    """Whether ``interval`` seconds have passed since ``state[key]``. The first time, the
    clock starts now: the first loads just read everything there was, nothing older can
    be missing yet."""
    if interval <= 0:
        return False
    last = state.get(key)
    if last is None:
        state[key] = now.isoformat()
        return False
    return (now - datetime.fromisoformat(last)).total_seconds() >= interval


def _by_time(declared: dict[str, Any], entities: Any) -> list[str]:
    """The entities of this cycle read by ``updated_at`` (no commit sequence)."""
    return [
        name for name, ep in declared.items()
        if (not entities or name in entities) and not replica_settings.sequence_of(ep)
    ]


def _raw_versions(
    sql: Any, ep: replica_settings.Endpoint, table: str, since: datetime | None,
    limit: int | None = None,
) -> pa.Table:
    """The versions (:func:`~loaders.replica.lookback.versions`) of raw's rows of
    ``table`` with a cursor at or after ``since`` (all of them: None), the first
    ``limit`` by cursor (None: all), read as Arrow."""
    key = sql.escape_column_name(ep["primary_key"])
    cursor = sql.escape_column_name(replica_settings.cursor_of(ep))
    query = f"select {key} as k, {cursor} as c from {sql.make_qualified_table_name(table)}"
    args: tuple[Any, ...] = ()
    if since is not None:
        query += f" where {cursor} >= %s"
        args = (since,)
    if limit is not None:
        query += f" order by {cursor} limit {int(limit)}"
    with sql.execute_query(query, *args) as cur:
        # DuckDB hands Arrow over natively (dlt's helper for it predates DuckDB 2's
        # name for it); other warehouses through dlt's
        native = getattr(cur, "native_cursor", None)
        rows = native.to_arrow_table() if native is not None and hasattr(
            native, "to_arrow_table") else cur.arrow()
    if rows is None or rows.num_rows == 0:
        return no_versions()
    return versions(rows["k"], rows["c"])


def plan(
    pipeline: dlt.Pipeline, declared: dict[str, Any], entities: Any, start_date: str,
    appended: list[str], now: datetime, lookback: float, spread: bool = False,
    page_size: int = 20000,
) -> Plan:
    """The re-reads of this cycle: the entities a gap was found in, from the start; the
    others read by time walk the window of a wide re-read from where they got to (a
    walk starts for each when one is due and none is under way), in one cycle, or with
    ``spread`` (a runner that cycles) in steps of ``reread_pages_per_cycle`` pages.
    None before an entity's first load (nothing to re-read) or in it (``appended``)."""
    s = config.late_row_settings()
    state = _read_state()
    kept = state.get(WALK)
    candidates = [e for e in _by_time(declared, entities) if e not in appended]
    walking: dict[str, str | None] = {
        e: at for e, at in (kept.items() if isinstance(kept, dict) else ())
        if e in candidates}
    out = Plan(state=state, reread_due=not walking and _due(
        state, "reread_at", s.reread_interval, now))
    if out.reread_due:
        walking = dict.fromkeys(candidates)  # each from its window's start
    repairs = [e for e in state.get("repair", []) if e in candidates]
    wide = sorted({*walking, *repairs})
    out.walking = walking
    if not wide:
        return out
    start = datetime.fromisoformat(start_date.replace("Z", "+00:00"))
    with warehouse.sql_client(pipeline) as sql:
        for name, ep, newest in _loaded(sql, declared, wide):
            if name in repairs:
                seconds = (newest - start).total_seconds() + 1
                out.rereads[name] = Reread(seconds, _raw_versions(sql, ep, name, None))
                out.repairs.append(name)
                continue
            at = walking[name]
            since = (datetime.fromisoformat(at) if at
                     else newest - timedelta(seconds=s.reread_window))
            if since >= newest - timedelta(seconds=lookback):
                walking[name] = DONE  # the lookback reads the rest
                continue
            pages = s.reread_pages if spread else 0
            out.rereads[name] = Reread(
                # what dlt lets through: from the walk's start, counted back from dlt's
                # last cursor (a deletion's may be past raw's newest), a lookback to spare
                (_newest_known(sql, ep, name, newest) - since).total_seconds() + lookback + 1,
                # a step's rows (at most its pages, twice over for raw's own): their
                # versions are raw's first rows from the walk's start
                _raw_versions(sql, ep, name, since,
                              limit=2 * pages * page_size if pages else None),
                since=since, pages=pages)
    if out.rereads:
        log.info(
            "re-reading %s (%s)", ", ".join(sorted(out.rereads)),
            "repairs" if not walking else f"every {s.reread_interval:g} s",
        )
    return out


def after_load(
    pipeline: dlt.Pipeline, api: Api, declared: dict[str, Any],
    entities: Any, lookback: float, late: Plan, alarms: AlarmCheck, now: datetime,
    defer: bool = False,
) -> None:
    """After a successful load: remember the re-read, reconcile the counts when due (and
    the entities just repaired), raise a ``count_gap`` alarm for each gap and plan its
    repair. With ``defer``, the entities to reconcile are kept for
    :class:`Reconciliation` instead; what an earlier deferred reconciliation found is
    raised now."""
    s = config.late_row_settings()
    state = dict(late.state)
    if late.reread_due:
        state["reread_at"] = now.isoformat()
    walking = dict(late.walking)
    for name, walk in late.rereads.items():
        if name not in walking or walk.since is None:
            continue
        if walk.finished:
            walking[name] = DONE
        elif walk.reached is not None:
            walking[name] = walk.reached.isoformat()
    # an entity not loaded yet has nothing to walk; one whose endpoint failed walks on
    state[WALK] = {e: at for e, at in walking.items() if at != DONE
                   and (e in late.rereads or at is not None)}
    state["repair"] = [e for e in state.get("repair", []) if e not in late.repairs]
    earlier = state.pop(FOUND, None)
    if isinstance(earlier, dict):
        alarms.add(KIND, [Condition(**c) for c in earlier.get("conditions", [])],
                   entities=earlier.get("judged", []))
    due = _due(state, "reconciled_at", s.reconcile_interval, now)
    check = _by_time(declared, entities) if due else list(late.repairs)
    if check and state.get("no_counts") != api.base_url:
        if due:
            state["reconciled_at"] = now.isoformat()
        if defer:
            state[PENDING] = sorted({*state.get(PENDING, []), *check})
        else:
            found, judged = reconcile(pipeline, api, declared, check, lookback, state)
            alarms.add(KIND, found, entities=judged)
            state["repair"] = sorted({*state["repair"],
                                      *(c.entity for c in found if c.entity)})
    _write_state(state)


def pending() -> bool:
    """Whether a deferring load left a reconciliation to do."""
    return bool(_read_state().get(PENDING))


# how long a deferred reconciliation waits for one count: it holds up no cycle, and an
# API counting years of records may take long
COUNT_TIMEOUT = 300.0


@dataclass
class RawCount:
    """Raw's side of one entity's reconciliation, taken before the API is asked."""

    name: str
    path: str
    before: datetime
    in_raw: int


class Reconciliation:
    """The reconciliation a deferring load left (see :func:`after_load`), under way:
    raw's counts taken at once (:meth:`start`, on the caller's connection), the API's
    asked in a thread of its own, so that no cycle waits for them; :meth:`finish`, once
    :meth:`done`, keeps the gaps for the next cycle to raise and plans their repairs.
    Raw is counted before the API, as inline: a record updated in between leaves the
    API's count, never raw's alone, so no gap is made up."""

    def __init__(self, api: Api, counts: list[RawCount]) -> None:
        self.api = api
        self.counts = counts
        self.answers: dict[str, int | None | ReplicaError] = {}
        self._thread = threading.Thread(target=self._ask, name="reconcile", daemon=True)

    @classmethod
    def start(cls, pipeline: dlt.Pipeline, api: Api, declared: dict[str, Any],
              lookback: float) -> Reconciliation | None:
        """The pending reconciliation started (None: nothing pending)."""
        check = [e for e in _read_state().get(PENDING, []) if e in declared]
        if not check:
            return None
        with warehouse.sql_client(pipeline) as sql:
            counts = [RawCount(name, ep["path"], before, n)
                      for name, ep, before, n in _raw_counts(sql, declared, check, lookback)]
        out = cls(api, counts)
        out._thread.start()
        return out

    def _ask(self) -> None:
        for c in self.counts:
            try:
                self.answers[c.name] = fetch_live_count(
                    self.api, c.path, c.before, timeout=COUNT_TIMEOUT)
            except ReplicaError as exc:
                self.answers[c.name] = exc
            except Exception as exc:  # noqa: BLE001 - said by finish, never lost in a thread
                self.answers[c.name] = ReplicaError(f"{type(exc).__name__}: {exc}")

    def done(self) -> bool:
        return not self._thread.is_alive()

    def finish(self) -> list[str]:
        """Once done: the gaps kept for the next cycle, their repairs planned, nothing
        pending any more. Returns the entities judged."""
        self._thread.join()
        state = _read_state()
        found, judged = _judge(
            self.api, [(c.name, c.path, c.before, c.in_raw,
                        self.answers.get(c.name, ReplicaError("the count was not asked")))
                       for c in self.counts], state)
        left = [e for e in state.get(PENDING, []) if e not in {c.name for c in self.counts}]
        if left:  # asked for by cycles since it started
            state[PENDING] = left
        else:
            state.pop(PENDING, None)
        kept = state.get(FOUND)
        earlier: dict[str, Any] = kept if isinstance(kept, dict) else {}
        state[FOUND] = {
            "conditions": [*earlier.get("conditions", []), *(asdict(c) for c in found)],
            "judged": sorted({*earlier.get("judged", []), *judged}),
        }
        state["repair"] = sorted({*state.get("repair", []),
                                  *(c.entity for c in found if c.entity)})
        _write_state(state)
        return judged


def reconcile(
    pipeline: dlt.Pipeline, api: Api, declared: dict[str, Any],
    check: list[str], lookback: float, state: dict[str, Any],
) -> tuple[list[Condition], list[str]]:
    """The gaps found in ``check`` and the entities judged. An API without counts marks
    ``state`` so that it is not asked again (said once)."""
    asked: list[tuple[str, str, datetime, int, int | None | ReplicaError]] = []
    with warehouse.sql_client(pipeline) as sql:
        for name, ep, before, in_raw in _raw_counts(sql, declared, check, lookback):
            try:
                upstream: int | None | ReplicaError = fetch_live_count(api, ep["path"], before)
            except ReplicaError as exc:
                upstream = exc
            asked.append((name, ep["path"], before, in_raw, upstream))
            if upstream is None:
                break  # no counts: the others are not asked
    return _judge(api, asked, state)


def _raw_counts(
    sql: Any, declared: dict[str, Any], check: list[str], lookback: float,
) -> Iterator[tuple[str, replica_settings.Endpoint, datetime, int]]:
    """Per entity of ``check`` raw holds rows of: its endpoint, the time before which
    rows are counted (raw's newest cursor minus the lookback) and raw's count."""
    for name, ep, newest in _loaded(sql, declared, check):
        before = newest - timedelta(seconds=lookback)
        cursor = sql.escape_column_name(replica_settings.cursor_of(ep))
        in_raw = _scalar(
            sql, f"select count(*) from {sql.make_qualified_table_name(name)}"
            f" where {cursor} < %s", before,
        )
        yield name, ep, before, int(in_raw or 0)


def _judge(
    api: Api, asked: list[tuple[str, str, datetime, int, int | None | ReplicaError]],
    state: dict[str, Any],
) -> tuple[list[Condition], list[str]]:
    """The gaps in ``asked`` (entity, path, before, raw's count, the API's answer) and
    the entities judged; an API without counts marks ``state`` (said once)."""
    found: list[Condition] = []
    judged: list[str] = []
    for name, path, before, in_raw, upstream in asked:
        if isinstance(upstream, ReplicaError):
            log.warning("%s: counts not reconciled this cycle: %s", name, upstream)
            continue
        if upstream is None:
            where = (
                f"{api.count_path.replace('{path}', path.strip('/'))} answers 404"
                if api.count_path else 'sources.replica.count_path = ""'
            )
            log.warning(
                "the replica API serves no record counts (%s): counts are not"
                " reconciled; rows committed later than the lookback are caught only by"
                " wide re-reads", where,
            )
            state["no_counts"] = api.base_url
            break
        judged.append(name)
        if upstream > in_raw:
            found.append(_gap(name, upstream, in_raw, before))
            log.warning("%s: %d live records upstream updated before %s, %d in raw",
                        name, upstream, before.isoformat(), in_raw)
    return found, judged


def _loaded(
    sql: Any, declared: dict[str, Any], names: list[str]
) -> Iterator[tuple[str, replica_settings.Endpoint, Any]]:
    """Of ``names``, the entities raw holds rows of: name, endpoint, newest cursor value."""
    existing = warehouse.raw_tables(sql)
    for name in names:
        if name not in existing:
            continue
        ep = declared[name]
        cursor = sql.escape_column_name(replica_settings.cursor_of(ep))
        newest = _scalar(sql, f"select max({cursor}) from {sql.make_qualified_table_name(name)}")
        if newest is not None:
            yield name, ep, newest


def _newest_known(sql: Any, ep: replica_settings.Endpoint, name: str, newest: Any) -> Any:
    """The newest cursor the loader has read of entity ``name``: raw's ``newest``, or a
    later deletion's from its deletion log (its row is gone from raw)."""
    log_table = deleted_table(name)
    if log_table not in warehouse.raw_tables(sql):
        return newest
    cursor = sql.escape_column_name(replica_settings.cursor_of(ep))
    deleted = _scalar(sql, f"select max({cursor}) from {sql.make_qualified_table_name(log_table)}")
    return max(newest, deleted) if deleted is not None else newest


def _scalar(sql: Any, query: str, *args: Any) -> Any:
    """The one value ``query`` answers (None: no row)."""
    rows = sql.execute_sql(query, *args)
    return rows[0][0] if rows else None


def _gap(entity: str, upstream: int, in_raw: int, before: datetime) -> Condition:
    missing = upstream - in_raw
    return Condition(
        kind=KIND,
        entity=entity,
        title=f"{entity}: {missing} record(s) upstream missing from raw",
        text=(
            f"The API counts {upstream} live {entity} records updated before"
            f" {before.isoformat()}, raw holds {in_raw}: rows committed later than the"
            " lookback (and any wide re-read) were never loaded. The next cycle re-reads"
            f" {entity} from the start date to load them; the alarm clears once the counts"
            " agree. If it keeps opening, widen reread_window_seconds or have the API"
            " offer a commit sequence."
        ),
        details={"upstream": upstream, "raw": in_raw, "missing": missing,
                 "updated_before": before.isoformat()},
    )
