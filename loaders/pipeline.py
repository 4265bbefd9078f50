"""Running the replica pipeline: one lock, one dlt pipeline, optional dbt build.

Warehouse layout (DuckDB by default, ``data/warehouse.duckdb``; PostgreSQL or another
warehouse with ``SALESFLOW_TARGET``, see :mod:`loaders.warehouse`):

* ``raw`` — written by dlt only: one table per entity (current rows, merged on the
  primary key, deletions applied), ``quarantine`` (rejected records with the reason) and
  dlt's own ``_dlt_loads`` / ``_dlt_version`` / ``_dlt_pipeline_state``.
* dbt's schemas (staging, marts) are built from ``raw`` by ``salesflow run``.

DuckDB admits one writing process per file, so every command that writes takes the same
lock (``<pipelines dir>/salesflow.lock``; on every target: one salesflow writer at a
time); a second one is refused with a clear message.
dlt's working directory (pending load packages, state) is ``data/dlt`` unless
``SALESFLOW_PIPELINES_DIR`` says otherwise; ``dlt pipeline --pipelines-dir data/dlt
salesflow_replica info`` inspects it. A package left half-normalized or half-loaded by a
crash is completed by the next run before anything new is extracted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
from dlt.pipeline.exceptions import PipelineStepFailed

from loaders import first_loads, health, notify, tracking, warehouse
from loaders.replica import (
    ReplicaError,
    fetch_announcements,
    fetch_api_schema,
    freezes_types,
    replica_source,
)
from loaders.replica import settings as replica_settings
from loaders.replica.helpers import type_changes

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def warehouse_path() -> Path:
    """The DuckDB warehouse file (the ``dev`` target)."""
    return warehouse.duckdb_path()


def pipelines_dir() -> Path:
    return Path(os.environ.get("SALESFLOW_PIPELINES_DIR", "data/dlt"))


class AlreadyRunning(RuntimeError):
    pass


@contextmanager
def run_lock(what: str) -> Iterator[None]:
    """Exclusive lock for anything that writes the warehouse."""
    d = pipelines_dir()
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


def make_pipeline(progress: str | None = None, read_only: bool = False) -> dlt.Pipeline:
    """The replica pipeline on the current target's warehouse (``read_only``: for
    readers of a DuckDB file, which must not take its write lock)."""
    return dlt.pipeline(
        pipeline_name=replica_settings.PIPELINE_NAME,
        destination=warehouse.destination(read_only=read_only),
        dataset_name=replica_settings.DATASET_NAME,
        pipelines_dir=str(pipelines_dir()),
        progress=progress,  # type: ignore[arg-type]
    )


@dataclass
class LoadResult:
    rows: dict[str, int] = field(default_factory=dict)  # rows extracted per table
    quarantined: int = 0
    load_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tracked: tracking.Tracked | None = None  # schema changes and notices of this load
    outcome: str = ""  # the cycle's outcome (see loaders.health)
    # entities with new data: their cursor moved forward, or rows loaded (the lookback
    # window's unchanged rows are not loaded again, so a row loaded behind the cursor
    # is a late commit, or the entity's new shape)
    advanced: list[str] = field(default_factory=list)

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


def known_types(pipeline: dlt.Pipeline) -> dict[str, dict[str, str]]:
    """Column data types of the raw tables loaded so far (table -> column -> type)."""
    if replica_settings.SOURCE_NAME not in pipeline.schema_names:
        return {}
    schema = pipeline.schemas[replica_settings.SOURCE_NAME]
    return {
        table: {c: col["data_type"] for c, col in t["columns"].items() if col.get("data_type")}
        for table, t in schema.tables.items()
        if not table.startswith("_dlt")
    }


def cursor_positions(pipeline: dlt.Pipeline) -> dict[str, Any]:
    """Each resource's incremental cursor (last value seen), from dlt's state."""
    try:
        resources = pipeline.state["sources"][replica_settings.SOURCE_NAME]["resources"]
    except KeyError:
        return {}
    out = {}
    for name, r in resources.items():
        for inc in (r.get("incremental") or {}).values():
            out[name] = inc.get("last_value")
    return out


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


def load(progress: str | None = None, **options: Any) -> LoadResult:
    """Extract, normalize and load the replica API into ``raw`` (options: base_url,
    token, entities and any argument of ``replica_source``). Raises ReplicaError
    subclasses with a clear message for auth and reachability problems."""
    with run_lock("load"):
        return _cycle(_source_kwargs(**options), progress)


def _cycle(kwargs: dict[str, Any], progress: str | None = None) -> LoadResult:
    """A load recorded as a cycle: classified, kept in the health history, incidents
    opened or closed and notified (see :mod:`loaders.health`)."""
    started = health.utcnow()
    pipeline = None
    try:
        pipeline = make_pipeline(progress)
        result = _load(kwargs, pipeline)
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
        load_id=(result.load_ids or [None])[-1] if result else None,
    )
    upcoming = [
        {k: a.get(k) for k in ("change_id", "title", "effective_at", "breaking")}
        for a in (result.tracked.announcements if result and result.tracked else [])
        if a.get("status") != "applied"
    ]
    extra: dict[str, Any] = {"entities": list(kwargs.get("entities") or replica_settings.ENDPOINTS)}
    if result is not None:
        extra["upcoming_announcements"] = upcoming
    try:
        tracker = health.Health(pipelines_dir(), notifier())
    except ValueError as config_problem:  # a misconfigured channel: record, tell no one
        log.error("notifications are misconfigured: %s", config_problem)
        tracker = health.Health(pipelines_dir(), None)
    recorded = False
    try:
        with (pipeline or make_pipeline()).sql_client() as sql:
            tracker.record(cycle, sql, extra)
            recorded = True
    except Exception as warehouse_problem:  # the warehouse is unusable: keep the state file
        log.error("health history not written to the warehouse: %s", warehouse_problem)
        if not recorded:
            tracker.record(cycle, None, extra)
    if outcome not in health.SUCCESS:
        log.warning("cycle %s: %s", outcome, message)
    return outcome


def _connection(kwargs: dict[str, Any]) -> tuple[str, str]:
    """The API's base URL and token: given, or from dlt's config and secrets."""
    base_url = kwargs.get("base_url") or dlt.config.get("sources.replica.base_url")
    token = kwargs.get("token") or dlt.secrets.get("sources.replica.token")
    if not base_url:
        raise ReplicaError("no replica API configured: set sources.replica.base_url")
    if not token:
        raise ReplicaError(
            "no replica API token: set SOURCES__REPLICA__TOKEN or sources.replica.token in"
            " .dlt/secrets.toml"
        )
    return str(base_url), str(token)


def endpoints(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The endpoints declared: given, else configured, else the defaults."""
    return dict(
        kwargs.get("endpoints")
        or dlt.config.get("sources.replica.endpoints")
        or replica_settings.ENDPOINTS
    )


def contracts(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Each entity's schema contract: the defaults, then configuration, then arguments."""
    configured = dlt.config.get("sources.replica.schema_contracts") or {}
    return {
        **replica_settings.SCHEMA_CONTRACTS,
        **dict(configured),
        **(kwargs.get("schema_contracts") or {}),
    }


def notifier() -> notify.Notifier:
    return notify.from_config(pipelines_dir())


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


def _load(kwargs: dict[str, Any], pipeline: dlt.Pipeline) -> LoadResult:
    started = time.perf_counter()
    try:
        finish_normalize_commits(pipeline)
        if pipeline.has_pending_data:
            # dlt's run() would only finish these and extract nothing new: finish them
            # first, then extract as usual
            log.warning("completing load packages left by an interrupted run")
            pipeline.run()
        # a first load the last run appended but did not live to repair
        first_loads.repair_pending(pipeline, pipelines_dir())
        base_url, token = _connection(kwargs)
        before = known_types(pipeline)
        positions = cursor_positions(pipeline)
        described = fetch_api_schema(base_url, token)
        announcements = fetch_announcements(base_url, token)
        entity_contracts = contracts(kwargs)
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
        declared = endpoints(kwargs)
        appended = (
            first_loads.plan(declared, kwargs.get("entities"), before)
            if first_loads.supported(pipeline) else []
        )
        # the source and the repairs read the same endpoint declarations
        source = replica_source(
            **{**kwargs, "schema_contracts": entity_contracts, "endpoints": declared},
            known_types=before,
            described=described,
            append=[r.table for r in appended],
        )
        first_loads.mark(pipelines_dir(), appended)
        info = pipeline.run(source, loader_file_format=warehouse.loader_file_format())
        first_loads.repair_pending(pipeline, pipelines_dir())
    except PipelineStepFailed as exc:
        cause = root_cause(exc)
        if isinstance(cause, ReplicaError):
            raise cause from None
        raise
    tracked = tracking.after_load(
        pipeline, info, before, described, frozen, announcements, notifier()
    )
    rows: dict[str, int] = {}
    trace = pipeline.last_trace
    if trace is not None and trace.last_normalize_info is not None:
        for table, n in trace.last_normalize_info.row_counts.items():
            if not table.startswith("_dlt"):
                rows[table] = rows.get(table, 0) + n
    now = cursor_positions(pipeline)
    return LoadResult(
        rows=rows,
        quarantined=rows.get(replica_settings.QUARANTINE_TABLE, 0),
        load_ids=list(info.loads_ids),
        seconds=time.perf_counter() - started,
        tracked=tracked,
        advanced=sorted(
            {k for k, v in now.items() if v != positions.get(k)}
            | {k for k, n in rows.items() if n and k in replica_settings.ENDPOINTS}
        ),
    )


def raw_counts(entities: Sequence[str] | None = None) -> dict[str, int]:
    """Rows per raw table now in the warehouse (a DuckDB file is opened read-only)."""
    names = list(entities or replica_settings.ENDPOINTS) + [replica_settings.QUARANTINE_TABLE]
    out: dict[str, int] = {}
    with make_pipeline(read_only=True).sql_client() as sql:
        if not sql.has_dataset():
            return out
        existing = {
            r[0]
            for r in sql.execute_sql(
                "select table_name from information_schema.tables where table_schema = %s",
                sql.dataset_name,
            )
            or []
        }
        for name in names:
            if name in existing:
                [(out[name],)] = sql.execute_sql(
                    f"select count(*) from {sql.make_qualified_table_name(name)}"
                )
    return out


def run_cycle(select: Sequence[str] | None = None, **load_options: Any) -> tuple[LoadResult, bool]:
    """One cycle under one lock: load, then ``dbt build``. A failed build is notified
    with the impact of the schema changes logged lately, the likely cause."""
    progress = load_options.pop("progress", None)
    with run_lock("run"):
        result = _cycle(_source_kwargs(**load_options), progress)
        ok = _dbt_build(select)
        if not ok:
            notifier().notify(tracking.build_failed_event(result, recent_changes(limit=20)))
        return result, ok


def recent_changes(limit: int = 200) -> list[dict[str, Any]]:
    """The schema changelog, newest first ([] before the first load)."""
    from loaders import schema_changes

    pipeline = make_pipeline()
    with pipeline.sql_client() as sql:
        if not sql.has_dataset():
            return []
        qualified = sql.fully_qualified_dataset_name()
        try:
            return schema_changes.read_changelog(sql, qualified, limit)
        except Exception as exc:  # no changelog table yet
            if "schema_changelog" in str(exc):
                return []
            raise


def dbt_build(select: Sequence[str] | None = None) -> bool:
    with run_lock("dbt build"):
        return _dbt_build(select)


def _dbt(*args: str) -> bool:
    """A dbt command on this project through dbt's programmatic runner, in this process
    (no start-up cost per call). Raises what dbt raised; returns whether it succeeded."""
    from dbt.cli.main import dbtRunner

    warehouse.prepare_dbt()
    try:
        result = dbtRunner().invoke(
            [*args, "--project-dir", str(PROJECT_ROOT), "--profiles-dir", str(PROJECT_ROOT)]
        )
    finally:
        release_dbt_warehouse()
    if result.exception is not None:
        raise result.exception
    return bool(result.success)


def release_dbt_warehouse() -> None:
    """Close the DuckDB database dbt-duckdb keeps open in this process after a command.

    Between cycles the warehouse file must be free: for analysts' and tools' processes,
    and for this process's own readers, which DuckDB refuses while an instance with
    another configuration holds the file. (dbt-duckdb exposes no public call for this;
    its connection manager keeps one environment per process.)"""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # another adapter: nothing held between commands
        return
    with DuckDBConnectionManager._LOCK:
        if DuckDBConnectionManager._ENV is not None:
            DuckDBConnectionManager._ENV.close()
            DuckDBConnectionManager._ENV = None


def _dbt_build(select: Sequence[str] | None = None) -> bool:
    # unit tests check the models' logic on fixed inputs: they belong to `make test`, not
    # to every cycle (and those of incremental marts need the built model to exist)
    args = ["build", "--exclude-resource-type", "unit_test"]
    if select:
        args += ["--select", *select]
    return _dbt(*args)


def dbt_docs() -> Path:
    """Generate the static docs site; returns the page to open."""
    with run_lock("dbt docs generate"):
        ok = _dbt("docs", "generate", "--static")
    if not ok:
        raise RuntimeError("dbt docs generate failed: see the output above")
    return warehouse.dbt_target(PROJECT_ROOT) / "static_index.html"


def describe_load(result: LoadResult) -> str:
    """A load's rows per table beside what raw now holds, for people."""
    counts = raw_counts()
    rate = result.total / max(result.seconds, 1e-9)
    lines = [
        f"loaded {result.total:,} rows in {result.seconds:.1f} s ({rate:,.0f} rows/s)"
        f" into {warehouse.describe()}",
        f"  {'table':<14}{'this load':>12}{'in raw':>12}",
    ]
    for table in sorted(set(counts) | set(result.rows)):
        lines.append(f"  {table:<14}{result.rows.get(table, 0):>12,}{counts.get(table, 0):>12,}")
    if result.quarantined:
        lines.append(
            f"  {result.quarantined} record(s) quarantined: see raw.quarantine (column reason)"
        )
    if result.tracked and result.tracked.changes:
        lines.append(f"  {len(result.tracked.changes)} schema change(s) logged:")
        lines += [f"    {c.describe()}" for c in result.tracked.changes[:20]]
        lines.append("  see `salesflow schema` and `salesflow schema impact`")
    if result.tracked and result.tracked.notices:
        lines.append(f"  {len(result.tracked.notices)} notification(s) raised")
    return "\n".join(lines)
