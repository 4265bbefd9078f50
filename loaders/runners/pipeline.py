"""Running the replica pipeline: one lock, one dlt pipeline, optional dbt build.

Warehouse layout (DuckDB by default, ``data/warehouse.duckdb``; PostgreSQL or another
warehouse with ``SALESFLOW_TARGET``, see :mod:`loaders.warehouse`):

* ``raw`` — written by dlt: one table per entity (current rows, merged on the primary
  key, deletions applied), ``quarantine`` (rejected records with the reason: see
  :mod:`.quarantine` and :mod:`.dead_letters`) and dlt's own ``_dlt_loads`` /
  ``_dlt_version`` / ``_dlt_pipeline_state``; beside them salesflow's own records (the
  cycles, the schema changelog, ``quarantine_replays``).
* dbt's schemas (staging, marts) are built from ``raw`` by ``salesflow run``.

DuckDB admits one writing process per file, so every command that writes takes the same
lock (``<pipelines dir>/salesflow.lock``; on every target: one salesflow writer at a
time); a second one is refused with a clear message. A cycle keeps a DuckDB file open
from its load to its records (:func:`loaders.warehouse.kept_open`), so its many clients
do not each open and checkpoint it; it is closed before dbt builds.
dlt's working directory (pending load packages, state) is ``data/dlt`` unless
``SALESFLOW_PIPELINES_DIR`` says otherwise; ``dlt pipeline --pipelines-dir data/dlt
salesflow_replica info`` inspects it. A package left half-normalized or half-loaded by a
crash is completed by the next run before anything new is extracted.

One entity's endpoint failing on its own (see :mod:`loaders.replica.failures`) does not
fail the cycle: the other entities load, the failures are in ``LoadResult.failed``, each
is an ``endpoint_failed`` data alarm (:mod:`.endpoints`), and the entity is left out of
what the cycle records as loaded and of the stall judgement. Every selected entity
failing fails the cycle with the first failure, as any failure did before.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dlt
from dlt.destinations.exceptions import DatabaseUndefinedRelation
from dlt.pipeline.exceptions import PipelineStepFailed

from loaders import config, dbt_project, warehouse
from loaders.contract import document as contract_document
from loaders.monitoring import health, marts, notify, rhythm
from loaders.monitoring.alarms import AlarmCheck, Condition
from loaders.replica import freezes_types, replica_source
from loaders.replica import settings as replica_settings
from loaders.replica.client import fetch_api_schema, fetch_replication_lag
from loaders.replica.errors import ReplicaError
from loaders.replica.failures import EndpointFailure, EndpointFailures
from loaders.replica.lookback import WindowFiles
from loaders.replica.observe import Observations
from loaders.replica.pages import type_changes
from loaders.replica.protocol import Api
from loaders.runners import endpoints, first_loads, holds, late_rows, quarantine
from loaders.schema_changes import observed, track, unresolved
from loaders.schema_changes.declared import Announced, all_announcements, report_invalid

log = logging.getLogger(__name__)

QUARANTINE = replica_settings.QUARANTINE_TABLE
# beside the pipeline's own files: the lookback windows' rows between loads
LOOKBACK_DIR = "lookback_windows"


class AlreadyRunning(RuntimeError):
    pass


@contextmanager
def run_lock(what: str) -> Iterator[None]:
    """Exclusive lock for anything that writes the warehouse."""
    d = config.pipelines_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / "salesflow.lock"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise AlreadyRunning(
            f"another salesflow run holds {path} ({holder}); wait for it to finish or stop it"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, {what}")
        fh.flush()
        yield
    finally:
        fh.seek(0)
        fh.truncate()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@dataclass
class LoadResult:
    rows: dict[str, int] = field(default_factory=dict)  # rows extracted per table
    quarantined: int = 0  # records newly held in raw.quarantine, all entities
    # records newly held in raw.quarantine per entity (a record read again is held once,
    # and counted once)
    quarantined_per_entity: dict[str, int] = field(default_factory=dict)
    load_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tracked: track.Tracked | None = None  # schema changes and notices of this load
    outcome: str = ""  # the cycle's outcome (see loaders.monitoring.health)
    # entities with new data: their cursor moved forward, or rows loaded (the lookback
    # window's unchanged rows are not loaded again, so a row loaded behind the cursor
    # is a late commit, or the entity's new shape)
    advanced: list[str] = field(default_factory=list)
    # the data alarms' checks after this load (see loaders.monitoring.alarms)
    alarms: AlarmCheck = field(default_factory=AlarmCheck)
    # the entities whose endpoint failed on its own while the others loaded (endpoint,
    # what it answered, the error: see loaders.replica.failures)
    failed: list[EndpointFailure] = field(default_factory=list)

    @property
    def failed_entities(self) -> set[str]:
        return {f.entity for f in self.failed}

    @property
    def last_load_id(self) -> str | None:
        return self.load_ids[-1] if self.load_ids else None

    @property
    def new_rows(self) -> dict[str, int]:
        return {k: v for k, v in self.rows.items() if k in self.advanced}

    @property
    def total_new(self) -> int:
        """Rows loaded for entities that had new data (the rows an outage caught up)."""
        return sum(self.new_rows.values())

    @property
    def total(self) -> int:
        return sum(v for k, v in self.rows.items() if k != replica_settings.QUARANTINE_TABLE)


def root_cause(exc: BaseException) -> BaseException:
    """The replica error behind dlt's step wrappers, if there is one."""
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ReplicaError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return exc


def _source_kwargs(
    base_url: str | None = None,
    token: str | None = None,
    entities: Sequence[str] | None = None,
    **source_options: Any,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(source_options)
    if base_url:
        kwargs["base_url"] = base_url
    if token:
        kwargs["token"] = token
    if entities:
        kwargs["entities"] = list(entities)
    return kwargs


def cycle(progress: str | None = None, defer_counts: bool = False,
          **options: Any) -> LoadResult:
    """One load recorded as a cycle, for a runner that holds the run lock already
    (options as for :func:`load`). ``defer_counts``: a count reconciliation due is left
    for :func:`start_reconciliation`, which the runner calls once the cycle's rows are
    published."""
    return _cycle(_source_kwargs(**options), progress, defer_counts)


def load(progress: str | None = None, **options: Any) -> LoadResult:
    """Extract, normalize and load the replica API into ``raw`` (options: base_url,
    token, entities and any argument of ``replica_source``). Raises ReplicaError
    subclasses with a clear message for auth and reachability problems."""
    with run_lock("load"):
        return cycle(progress, **options)


def start_reconciliation(**options: Any) -> late_rows.Reconciliation | None:
    """The count reconciliation a deferring cycle left, started: raw counted now, the
    API asked in a thread (options as for :func:`load`); None when none is pending or
    it cannot start (logged: it stays pending)."""
    kwargs = _source_kwargs(**options)
    try:
        if not late_rows.pending():
            return None
        with warehouse.kept_open():
            return late_rows.Reconciliation.start(
                warehouse.dlt_pipeline(),
                config.api_connection(kwargs.get("base_url"), kwargs.get("token")),
                config.endpoints(kwargs.get("endpoints")),
                config.lookback_seconds(kwargs.get("lookback_seconds")),
            )
    except Exception as exc:  # the next cycle's load must not wait on a count
        log.error("counts not reconciled: %s: %s", type(exc).__name__, exc)
        return None


def finish_reconciliation(reconciliation: late_rows.Reconciliation) -> list[str]:
    """A started reconciliation's findings kept for the next cycle to raise; the
    entities judged (none when it failed: logged, it stays pending)."""
    try:
        return reconciliation.finish()
    except Exception as exc:
        log.error("counts not reconciled: %s: %s", type(exc).__name__, exc)
        return []


def _cycle(kwargs: dict[str, Any], progress: str | None = None,
           defer_counts: bool = False) -> LoadResult:
    """A load recorded as a cycle: classified, kept in the health history, incidents
    opened or closed and notified (see :mod:`loaders.monitoring.health`)."""
    started = health.utcnow()
    pipeline = None
    # the load and its records open the warehouse many times: once is enough
    with warehouse.kept_open():
        try:
            pipeline = warehouse.dlt_pipeline(progress)
            result = _load(kwargs, pipeline, defer_counts)
        except Exception as exc:
            try:
                _record_cycle(started, kwargs, None, exc, pipeline)
            except Exception:  # never hide the cycle's own error behind the record's
                log.exception("could not record the failed cycle")
            raise
        result.outcome = _record_cycle(started, kwargs, result, None, pipeline)
    return result


def _record_cycle(
    started: Any,
    kwargs: dict[str, Any],
    result: LoadResult | None,
    exc: BaseException | None,
    pipeline: dlt.Pipeline | None = None,
) -> str:
    rows = result.new_rows if result else {}
    outcome, message = health.classify(exc, result.total_new if result else 0)
    cycle = health.Cycle(
        started, health.utcnow(), outcome, message, rows,
        load_id=result.last_load_id if result else None,
        quarantined=result.quarantined_per_entity if result else {},
    )
    tracked = result.tracked if result else None
    upcoming = [
        {k: a.get(k) for k in ("change_id", "title", "description", "effective_at",
                               "breaking", "source", "changes")}
        for a in (tracked.announcements if tracked else [])
        if a.get("status") != "applied"
    ]
    # the entities the cycle loaded: an endpoint that failed did not
    failed = result.failed_entities if result else set()
    extra: dict[str, Any] = {"entities": [
        e for e in kwargs.get("entities") or replica_settings.ENDPOINTS if e not in failed
    ]}
    if result is not None:
        extra["upcoming_announcements"] = upcoming
        extra["recent_changes"] = _recent_changes(result, cycle.ended_at)
    if tracked is not None and tracked.observed_at is not None:
        extra[observed.STATE_KEY] = health.iso(tracked.observed_at)
    try:
        tracker = health.Health(config.pipelines_dir(), notifier())
    except ValueError as config_problem:  # a misconfigured channel: record, tell no one
        log.error("notifications are misconfigured: %s", config_problem)
        tracker = health.Health(config.pipelines_dir(), None)
    check = result.alarms if result is not None else AlarmCheck()
    recorded = False
    try:
        with warehouse.sql_client(pipeline) as sql:
            tracker.record(cycle, sql, extra, check)
            recorded = True
    except Exception as warehouse_problem:  # the warehouse is unusable: keep the state file
        log.error("health history not written to the warehouse: %s", warehouse_problem)
        if not recorded:
            tracker.record(cycle, None, extra, check)
    if outcome not in health.SUCCESS:
        log.warning("cycle %s: %s", outcome, message)
    return outcome


# how long a change the platform did not announce keeps `salesflow status` at warn
RECENT_CHANGE_HOURS = 24


def _recent_changes(result: LoadResult, now: Any) -> list[dict[str, Any]]:
    """The changes logged in the last hours (kept in the health state for status): this
    cycle's, and the earlier ones still recent. The first load's baseline is not."""
    earlier = health.Health(config.pipelines_dir()).state().get("recent_changes") or []
    cutoff = health.iso(now - timedelta(hours=RECENT_CHANGE_HOURS))
    kept = [c for c in earlier if c.get("detected_at", "") >= cutoff]
    tracked = result.tracked
    if tracked is None or tracked.baseline:
        return kept
    return kept + [
        {"entity": c.entity, "column": c.column, "kind": c.kind,
         "detected_at": health.iso(now), "announced": c.announced,
         "what": c.describe(detail=False)}
        for c in tracked.changes
    ]


def notifier() -> notify.Notifier:
    """The notifier configured for this project (see :mod:`loaders.monitoring.notify`)."""
    return notify.from_config(config.pipelines_dir())


def finish_normalize_commits(pipeline: dlt.Pipeline) -> list[str]:
    """Complete what a process killed while normalizing left half committed.

    dlt commits a normalized package in two steps: it renames the package into the load
    storage (one atomic rename), then deletes the extracted copy. Killed in between, both
    remain, and every later normalize stops on the package already there ("Directory not
    empty"): no load would ever succeed again. The rename is atomic, so the normalized
    package is whole: deleting its extracted copy finishes that commit. Returns the
    load ids finished."""
    committed = set(pipeline.list_normalized_load_packages()) | set(
        pipeline.list_completed_load_packages()
    )
    finished = [i for i in pipeline.list_extracted_load_packages() if i in committed]
    if finished:
        # dlt has no public call for one extracted package
        extracted = pipeline._get_normalize_storage().extracted_packages
        for load_id in finished:
            log.warning("finishing the normalize of package %s, interrupted after its"
                        " commit", load_id)
            extracted.delete_package(load_id)
    return finished


def _announcements(api: Api, entities: Sequence[str]) -> Announced:
    """The API's announcements and the repository's; the API's unreadable fails the
    cycle as its records would, a declared file that cannot be used does not."""
    announced = all_announcements(api.base_url, api.token, entities=entities)
    if announced.api_error is not None:
        raise announced.api_error
    return announced


def complete_interrupted(pipeline: dlt.Pipeline) -> None:
    """Finish what a run killed half-way left, before a load of one's own: a normalize
    half committed, load packages not loaded, a first load not repaired."""
    finish_normalize_commits(pipeline)
    if pipeline.has_pending_data:
        # dlt's run() would only finish these and extract nothing new: finish them
        # first, then extract as usual
        log.warning("completing load packages left by an interrupted run")
        pipeline.run()
    # a first load the last run appended but did not live to repair
    first_loads.repair_pending(pipeline, config.pipelines_dir())


def _load(kwargs: dict[str, Any], pipeline: dlt.Pipeline,
          defer_counts: bool = False) -> LoadResult:
    started = time.perf_counter()
    try:
        complete_interrupted(pipeline)
        api = config.api_connection(kwargs.get("base_url"), kwargs.get("token"))
        limits = config.quarantine_limits()  # a bad setting fails before anything loads
        before = warehouse.known_types(pipeline)
        positions = warehouse.cursor_positions(pipeline)
        declared = config.endpoints(kwargs.get("endpoints"))
        observed_at = health.utcnow()  # the API is read from here on
        described = fetch_api_schema(api)  # the API's own description ({}: none)
        # an API without a schema endpoint: the types the data contract commits to (the
        # changes are still found in the records, see schema_changes.from_records)
        types = described if api.schema_path else contract_document.described()
        announced = _announcements(api, list(declared))
        entity_contracts = config.schema_contracts(kwargs.get("schema_contracts"))
        frozen = {
            name: changed
            for name, spec in described.items()
            if freezes_types(entity_contracts.get(name))
            and (
                changed := type_changes(
                    {f["name"]: f["type"] for f in spec.get("fields", [])},
                    before.get(name, {}),
                )
            )
        }
        appended = (
            first_loads.plan(declared, kwargs.get("entities"), before)
            if first_loads.supported(pipeline) else []
        )
        mappings = config.field_mapping(kwargs.get("field_mapping"))
        windows = WindowFiles(Path(pipeline.working_dir) / LOOKBACK_DIR)
        observations = Observations()
        failures = EndpointFailures()
        late = late_rows.plan(
            pipeline, declared, kwargs.get("entities"),
            kwargs.get("start_date") or dlt.config.get("sources.replica.start_date")
            or "2000-01-01T00:00:00Z",
            [r.table for r in appended], observed_at,
            config.lookback_seconds(kwargs.get("lookback_seconds")),
            # a runner that cycles walks a wide re-read in steps, a cycle each
            spread=defer_counts,
            page_size=int(kwargs.get("page_size")
                          or dlt.config.get("sources.replica.page_size") or 20000),
        )
        # the source and the repairs read the same endpoint declarations
        source = replica_source(
            **{**kwargs, "base_url": api.base_url, "token": api.token,
               "schema_contracts": entity_contracts, "endpoints": declared,
               "field_mapping": mappings, "api": api},
            known_types=before,
            described=types,
            append=[r.table for r in appended],
            observations=observations,
            failures=failures,
            rereads=late.rereads,
            windows=windows,
        )
        first_loads.mark(config.pipelines_dir(), appended)
        held_before = quarantine.held_before(pipeline)
        info = pipeline.run(source, loader_file_format=warehouse.loader_file_format())
        windows.commit()  # the load committed: the windows it read are kept
        first_loads.repair_pending(pipeline, config.pipelines_dir())
    except PipelineStepFailed as exc:
        cause = root_cause(exc)
        if isinstance(cause, ReplicaError):
            raise cause from None
        raise
    notices = notifier()
    tracked = track.after_load(
        pipeline, info, before, described, frozen, announced.announcements, notices,
        observed_at=observed_at, observations=observations,
        maps=config.field_maps(mappings), endpoints=declared,
    )
    tracked.notices += report_invalid(announced.declared_errors, notices)
    rows: dict[str, int] = {}
    alarms = AlarmCheck()
    alarms.add(unresolved.KIND, tracked.alarms)
    trace = pipeline.last_trace
    if trace is not None and trace.last_normalize_info is not None:
        for table, n in trace.last_normalize_info.row_counts.items():
            if not table.startswith("_dlt"):
                rows[table] = rows.get(table, 0) + n
    now = warehouse.cursor_positions(pipeline)
    held_after = quarantine.held_after(pipeline, held_before, rows.get(QUARANTINE, 0))
    held = quarantine.newly_held(held_before, held_after)
    result = LoadResult(
        rows=rows,
        quarantined=sum(held.values()),
        quarantined_per_entity=held,
        load_ids=list(info.loads_ids),
        seconds=time.perf_counter() - started,
        tracked=tracked,
        alarms=alarms,
        failed=list(failures.failed.values()),
        advanced=sorted(
            {k for k, v in now.items() if v != positions.get(k)}
            | {k for k, n in rows.items() if n and k in replica_settings.ENDPOINTS}
        ),
    )
    shares = quarantine.check_shares(
        pipeline, {k: n for k, n in rows.items() if k in declared}, held, result.load_ids,
        limits,
    )
    if shares is not None:
        result.alarms.add(quarantine.KIND, shares.conditions, entities=shares.judged)
    listed = list(kwargs.get("entities") or declared)
    endpoints.check(result.alarms, result.failed, listed)
    check_stalls(pipeline, api, listed, result)
    # an endpoint that failed is not reconciled: its own alarm says why raw is behind
    late_rows.after_load(
        pipeline, api, declared, [e for e in listed if e not in result.failed_entities],
        config.lookback_seconds(kwargs.get("lookback_seconds")), late, result.alarms,
        observed_at, defer=defer_counts,
    )
    return result


def check_stalls(
    pipeline: dlt.Pipeline, api: Api, loaded: Sequence[str],
    result: LoadResult,
) -> None:
    """Judge the data's rhythm after a successful load (see
    :mod:`loaders.monitoring.rhythm`): stalled entities, a stalled platform, into
    ``result.alarms``. Never fails the cycle: when the history cannot be read or judged,
    the stall alarms are left as they are and the problem is logged. An entity whose
    endpoint failed is not judged (its own alarm says why nothing new came): its stall
    alarm, if one is open, stays as it is."""
    failed = result.failed_entities
    try:
        found, judged = _judge_stalls(
            pipeline, api, [e for e in loaded if e not in failed],
            {e: n for e, n in result.new_rows.items() if e not in failed}, failed,
        )
    except Exception as exc:  # monitoring must not stop the loading it watches
        log.error("stall alarms not checked this cycle: %s: %s", type(exc).__name__, exc)
        return
    for kind, conditions in found.items():
        result.alarms.add(kind, conditions,
                          entities=judged if kind == rhythm.ENTITY_STALLED else None)


def _judge_stalls(
    pipeline: dlt.Pipeline, api: Api, loaded: Sequence[str],
    new_rows: dict[str, int], failed: set[str] | None = None,
) -> tuple[dict[str, list[Condition]], set[str | None] | None]:
    """The stall conditions, and the entities judged (None: all): every one but those
    ``failed``."""
    now = health.utcnow()
    settings = config.stall_settings()
    with warehouse.sql_client(pipeline) as sql:
        rows = _recent_loads(sql, now - timedelta(hours=settings.history_hours))
    seen = rhythm.with_cycle(rhythm.history(rows), now, new_rows, loaded)
    open_alarms = health.Health(config.pipelines_dir()).state().get("open_alarms") or {}
    judged: set[str | None] | None = None
    if failed:
        seen = {e: s for e, s in seen.items() if e not in failed}
        judged = {*seen, *(a["entity"] for a in open_alarms.values())} - set(failed)
    found = rhythm.judge(seen, settings, replication_lag(api), rhythm.remembered(open_alarms))
    return found, judged


def _recent_loads(sql: Any, since: datetime) -> list[tuple[str, datetime, int]]:
    try:
        return health.recent_loads(sql, since, rhythm.KEEP)
    except DatabaseUndefinedRelation:  # the first cycle: no history yet
        return []


def replication_lag(api: Api) -> float | None:
    """The replication lag the API reports (seconds), or None: not configured, not
    reported, or not readable (logged: the data's rhythm alone is judged then)."""
    source = config.lag_source()
    if not source.enabled:
        return None
    try:
        return fetch_replication_lag(api, source.path, source.lag_field)
    except ReplicaError as exc:
        log.warning("%s; stalls are judged by the data's rhythm alone", exc)
        return None


def run_cycle(select: Sequence[str] | None = None, **load_options: Any) -> tuple[LoadResult, bool]:
    """One cycle under one lock: load, then ``dbt build``. The marts a failure reaches
    are held back and a failing build is one incident, as in ``salesflow watch`` (see
    :mod:`loaders.runners.holds`); its notice carries the impact of the schema changes
    logged lately, the likely cause."""
    progress = load_options.pop("progress", None)
    with run_lock("run"):
        result = cycle(progress, **load_options)
        dbt = dbt_project.Session()
        built = dbt.build(list(select) if select else None)
        holds.record(dbt.manifest, built, marts.BUILD, result.last_load_id, True, notifier())
        return result, built.success


def dbt_build(select: Sequence[str] | None = None) -> bool:
    """``dbt build`` under the run lock."""
    with run_lock("dbt build"):
        return dbt_project.build(select)


def dbt_docs() -> Path:
    """Generate the static docs site; returns the page to open."""
    with run_lock("dbt docs generate"):
        ok = dbt_project.run("docs", "generate", "--static")
    if not ok:
        raise RuntimeError("dbt docs generate failed: see the output above")
    return dbt_project.target_dir() / "static_index.html"


def describe_load(result: LoadResult) -> str:
    """A load's rows per table beside what raw now holds, for people."""
    counts = warehouse.raw_counts()
    rate = result.total / max(result.seconds, 1e-9)
    lines = [
        f"loaded {result.total:,} rows in {result.seconds:.1f} s ({rate:,.0f} rows/s)"
        f" into {warehouse.describe()}",
        f"  {'table':<14}{'this load':>12}{'in raw':>12}",
    ]
    for table in sorted(set(counts) | set(result.rows)):
        lines.append(f"  {table:<14}{result.rows.get(table, 0):>12,}{counts.get(table, 0):>12,}")
    if result.quarantined:
        held = ", ".join(f"{e} {n:,}" for e, n in result.quarantined_per_entity.items())
        lines += [
            f"  {result.quarantined:,} record(s) newly held in raw.quarantine ({held}):"
            " `salesflow quarantine` says why;",
            "  once the cause is fixed, `salesflow quarantine replay` loads them",
        ]
    for failure in result.failed:
        lines.append(f"  {failure.entity}: endpoint /{failure.path} failed"
                     f" ({failure.status or 'page'}: {failure.answered}), its listing"
                     " stopped there; the other entities loaded: see `salesflow status`")
    if result.tracked and result.tracked.changes:
        lines.append(f"  {len(result.tracked.changes)} schema change(s) logged:")
        lines += [f"    {c.describe()}" for c in result.tracked.changes[:20]]
        lines.append("  see `salesflow schema` and `salesflow schema impact`")
    if result.tracked and result.tracked.mismatches:
        lines.append(f"  {len(result.tracked.mismatches)} announced change(s) not as"
                     " announced: see `salesflow schema`")
    if result.tracked and result.tracked.notices:
        lines.append(f"  {len(result.tracked.notices)} notification(s) raised")
    return "\n".join(lines)
