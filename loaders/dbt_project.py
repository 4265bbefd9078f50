"""Running dbt on this project: where it is, one way to invoke it, its parsed manifest.

Every dbt command salesflow runs goes through :func:`invoke` (dbt's programmatic
runner, in this process: no start-up cost per command). The current target's connection
is handed to dbt first (:func:`loaders.warehouse.prepare_dbt`), with the key personal
data is hashed with (:func:`loaders.pii.dbt_environment`), and the DuckDB database
dbt-duckdb keeps open is released after each command, so the file is free between
commands for analysts, tools and this process's own readers. :class:`Session` keeps the
project parsed for a continuous run (``salesflow watch``, ``salesflow run``); its builds
and test runs answer an :class:`Outcome` (what failed, with dbt's message, what was
skipped), from which :func:`held_back` tells the marts a failure reaches through the
manifest's child map: a mart that failed, whose gating test failed, or downstream of
either. Tests of ``warn`` severity hold nothing back.

May import: dbt, :mod:`loaders.config`, :mod:`loaders.warehouse` and :mod:`loaders.pii`.
"""

from __future__ import annotations

import heapq
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loaders import pii, warehouse
from loaders.config import PROJECT_ROOT

# the schema the public marts build into: what analysts may read, and what is published
MARTS_SCHEMA = "marts"
# the rows incremental marts removed, a table per mart (dbt macro removed_log)
REMOVED_SCHEMA = "removed"

# unit tests check the models' logic on fixed inputs: they belong to `make test`, not to
# every cycle (and those of incremental marts need the built model to exist)
NO_UNIT_TESTS = ("--exclude-resource-type", "unit_test")
# the var naming the load after which a test run reads rows (macros/tested_rows.sql)
TESTS_SINCE_VAR = "salesflow_tests_since"
# a parsed session's commands (watch's cycles) write info, not debug, to logs/dbt.log:
# the SQL of every statement of every cycle cost several percent of a cycle's dbt time
# and rotated the log away within minutes; DBT_LOG_LEVEL_FILE=debug brings it back
SESSION_FILE_LOG_LEVEL = "info"


def target_dir(project_root: Path = PROJECT_ROOT) -> Path:
    """Where dbt writes its artifacts (manifest, run results, docs site): the folder
    ``DBT_TARGET_PATH`` names, as dbt reads it, else ``target``."""
    return project_root / os.environ.get("DBT_TARGET_PATH", "target")


def project_file(project_root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """``dbt_project.yml`` as written (its ``vars`` hold salesflow's thresholds)."""
    return yaml.safe_load((project_root / "dbt_project.yml").read_text()) or {}


def project_version(project_root: Path = PROJECT_ROOT) -> str:
    return str(project_file(project_root).get("version") or "0")


def manifest_project(manifest: dict[str, Any]) -> str:
    """The project's name in its manifest (node ids are ``<type>.<project>.<name>``)."""
    return str(manifest.get("metadata", {}).get("project_name") or "salesflow")


def release_warehouse() -> None:
    """Close the DuckDB database dbt-duckdb keeps open in this process after a command.

    Between commands the warehouse file must be free: for analysts' and tools'
    processes, and for this process's own readers, which DuckDB refuses while an
    instance with another configuration holds the file. (dbt-duckdb exposes no public
    call for this; its connection manager keeps one environment per process.)"""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # another adapter: nothing held between commands
        return
    with DuckDBConnectionManager._LOCK:
        if DuckDBConnectionManager._ENV is not None:
            DuckDBConnectionManager._ENV.close()
            DuckDBConnectionManager._ENV = None


def invoke(
    args: Sequence[str], runner: Any = None, project_root: Path = PROJECT_ROOT
) -> Any:
    """One dbt command on the project (``runner``: a dbtRunner holding a parsed
    manifest; default a new one). Returns dbt's result; the warehouse is released
    whatever happens."""
    # dbt is imported when first used: commands that never run it start without it
    from dbt.cli.main import dbtRunner

    warehouse.prepare_dbt()
    root = str(project_root)
    try:
        with pii.dbt_environment():
            return (runner or dbtRunner()).invoke(
                [*args, "--project-dir", root, "--profiles-dir", root]
            )
    finally:
        release_warehouse()


def runner(parsed: Any) -> Any:
    """A dbtRunner that reuses a parsed manifest (no parsing per command)."""
    from dbt.cli.main import dbtRunner

    return dbtRunner(manifest=parsed)


def run(*args: str) -> bool:
    """A dbt command; raises what dbt raised, returns whether it succeeded."""
    result = invoke(args)
    if result.exception is not None:
        raise result.exception
    return bool(result.success)


def build(select: Sequence[str] | None = None) -> bool:
    """``dbt build`` (models, seeds, snapshots and data tests; never unit tests)."""
    return run("build", *NO_UNIT_TESTS, *(["--select", *select] if select else []))


# how long a failing node's message may be where it is kept (status, notices, tables)
MESSAGE_CHARS = 300


@dataclass(frozen=True)
class Failure:
    """A node that errored (a model, a test that could not run) or a test that failed."""

    unique_id: str
    status: str  # error | fail
    message: str

    @property
    def name(self) -> str:
        return self.unique_id.split(".", 2)[-1]

    def describe(self) -> str:
        return f"{self.name} ({self.status}): {self.message}"


@dataclass
class Outcome:
    """What one dbt build or test run did, as salesflow reads it."""

    success: bool
    rebuilt: list[str] = field(default_factory=list)  # marts built successfully
    failures: list[Failure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # nodes not run (upstream failed)
    judged: list[str] = field(default_factory=list)  # every node the command covered
    tests: bool = False  # the data tests ran
    seconds: dict[str, float] = field(default_factory=dict)  # unique id -> dbt's timing


def outcome(result: Any, tests: bool) -> Outcome:
    """An :class:`Outcome` of a dbtRunner ``result``."""
    out = Outcome(success=bool(result.success), tests=tests)
    for r in getattr(result.result, "results", None) or []:
        status, node = str(r.status), r.node
        out.judged.append(node.unique_id)
        if status != "skipped":
            out.seconds[node.unique_id] = float(getattr(r, "execution_time", 0.0) or 0.0)
        if status in ("error", "fail"):
            message = " ".join(str(r.message or status).split())[:MESSAGE_CHARS]
            out.failures.append(Failure(node.unique_id, status, message))
        elif status == "skipped":
            out.skipped.append(node.unique_id)
        elif (status == "success" and node.resource_type == "model"
              and node.schema == MARTS_SCHEMA):
            out.rebuilt.append(node.name)
    return out


def marts(manifest: Any) -> list[str]:
    """The public marts' names (the ``marts`` schema's models)."""
    return sorted(
        n.name for n in manifest.nodes.values()
        if n.resource_type == "model" and n.schema == MARTS_SCHEMA
    )


def downstream(manifest: Any, failure: Failure) -> set[str]:
    """The unique ids a failure reaches: a failed model and what depends on it; a failed
    test, the model it is attached to (its parents, when it has none) and what depends
    on them."""
    node = manifest.nodes.get(failure.unique_id)
    if node is None:
        return set()
    if node.resource_type == "test":
        attached = getattr(node, "attached_node", None)
        start = {attached} if attached else set(node.depends_on.nodes)
    else:
        start = {failure.unique_id}
    return start | descendants(manifest, start)


def descendants(manifest: Any, start: Iterable[str]) -> set[str]:
    """The unique ids that depend on any of ``start``, directly or not."""
    reached: set[str] = set()
    todo = list(start)
    while todo:
        for child in manifest.child_map.get(todo.pop(), []):
            if child not in reached:
                reached.add(child)
                todo.append(child)
    return reached


def held_back(manifest: Any, failures: Iterable[Failure]) -> dict[str, Failure]:
    """Mart name -> the (first) failure that holds it back."""
    held: dict[str, Failure] = {}
    for failure in failures:
        for uid in sorted(downstream(manifest, failure)):
            node = manifest.nodes.get(uid)
            if (node is not None and node.resource_type == "model"
                    and node.schema == MARTS_SCHEMA):
                held.setdefault(node.name, failure)
    return held


def exposures_reached(manifest: Any, failures: Iterable[Failure]) -> list[str]:
    """The exposures (dashboards, reviews) that read a mart the failures hold back."""
    reached: set[str] = set()
    for failure in failures:
        reached |= downstream(manifest, failure)
    return sorted(manifest.exposures[u].name for u in reached if u in manifest.exposures)


def graph_order(manifest: Any) -> list[str]:
    """Every node and source in the order of dbt's graph: each after its parents (among
    nodes the graph leaves unordered, by unique id)."""
    parents = {uid: set(manifest.parent_map.get(uid, ())) for uid in
               [*manifest.sources, *manifest.nodes]}
    waiting = {uid: len(p) for uid, p in parents.items() if p}
    ready = sorted(uid for uid, p in parents.items() if not p)
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        uid = heapq.heappop(ready)
        order.append(uid)
        for child in manifest.child_map.get(uid, ()):
            if child in waiting:
                waiting[child] -= 1
                if not waiting[child]:
                    del waiting[child]
                    heapq.heappush(ready, child)
    return order + sorted(waiting)  # a cycle, which dbt refuses: last, as they are


def data_tests(manifest: Any) -> dict[str, str]:
    """The data tests (unique id -> the node each tests: the model or source it is
    attached to, else its last parent in the graph's order)."""
    rank = {uid: i for i, uid in enumerate(graph_order(manifest))}
    tests = {}
    for uid, node in manifest.nodes.items():
        if node.resource_type != "test":
            continue
        attached = getattr(node, "attached_node", None)
        parents = sorted(node.depends_on.nodes, key=lambda u: rank.get(u, len(rank)))
        tests[uid] = attached or (parents[-1] if parents else uid)
    return tests


def in_scope(manifest: Any, result: Outcome) -> set[str]:
    """The marts a command judged: those among the models it covered, and those its
    tests cover (the model a test is attached to and what depends on it)."""
    names = set()
    for uid in result.judged:
        node = manifest.nodes.get(uid)
        if node is None:
            continue
        reached = (downstream(manifest, Failure(uid, "", "")) if node.resource_type == "test"
                   else {uid})
        for u in reached:
            n = manifest.nodes.get(u)
            if n is not None and n.resource_type == "model" and n.schema == MARTS_SCHEMA:
                names.add(n.name)
    return names


class Session:
    """dbt with the project parsed once (the manifest is reused by every command)."""

    def __init__(self) -> None:
        parsed = invoke(["parse"])
        if not parsed.success or parsed.result is None:
            raise RuntimeError(f"dbt parse failed: {parsed.exception}")
        self.manifest = parsed.result
        self.runner = runner(parsed.result)
        self.target = target_dir()

    def build(
        self, select: Sequence[str] | None, tests: bool = True, views: bool = True,
        exclude: Sequence[str] = (),
    ) -> Outcome:
        """Build (models, seeds, snapshots, and with ``tests`` their data tests; never
        unit tests); returns what it did (the marts rebuilt, what failed). Without
        ``views`` (and tests), the selected views are left as they are; ``exclude``:
        models left out of a selection."""
        args = (
            ["build", *NO_UNIT_TESTS] if tests
            # a cycle's run leaves the manifest as parsed (rewriting its megabytes of
            # JSON each cycle cost about 0.2 s); its run_results.json is written below.
            # Nor does it list every schema's relations up front: the few it builds are
            # looked up as needed
            else ["run", "--no-write-json", "--no-populate-cache"]
        )
        if select:
            args += ["--select", *select]
            left_out = list(exclude)
            if not tests and not views:
                # a view's definition changes with the project or the source's shape,
                # not with new rows: recreating them each cycle is wasted work
                left_out.append("config.materialized:view")
            if left_out:
                args += ["--exclude", *left_out]
        result = self._invoke(args)
        if not tests and result.result is not None:
            # what failed stays where dbt users (and salesflow's notices) look for it
            result.result.write(str(self.target / "run_results.json"))
        return outcome(result, tests)

    def test(self, select: Sequence[str] | None) -> Outcome:
        """The data tests of the selection (never unit tests); what failed."""
        args = ["test", *NO_UNIT_TESTS]
        if select:
            args += ["--select", *select]
        return outcome(self._invoke(args), True)

    def test_nodes(self, unique_ids: Sequence[str], since: str | None = None) -> Outcome:
        """These data tests (by unique id) only; what failed. ``since``: a load id, the
        tests that can read only the rows loaded after it do (macro
        ``get_where_subquery``)."""
        names = sorted({self.manifest.nodes[u].name for u in unique_ids})
        scope = ["--vars", json.dumps({TESTS_SINCE_VAR: since})] if since else []
        return outcome(
            self._invoke(["test", *NO_UNIT_TESTS, *scope, "--select", *names]), True)

    def _invoke(self, args: list[str]) -> Any:
        """One command on the parsed manifest, compiled afresh: dbt marks a node whose
        ephemeral models' CTEs it injected, and on a reused manifest it would skip the
        injection the next time it compiles that node, leaving a query that names a CTE
        it does not define (a data test of an ephemeral staging model, run again)."""
        for node in self.manifest.nodes.values():
            if getattr(node, "extra_ctes_injected", False):
                node.extra_ctes_injected = False
                node.extra_ctes = []
                node.compiled = False
                node._pre_injected_sql = None
        if "DBT_LOG_LEVEL_FILE" not in os.environ:
            args = [*args, "--log-level-file", SESSION_FILE_LOG_LEVEL]
        result = invoke(args, self.runner)
        if result.exception is not None:
            raise result.exception
        return result


PERIOD_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


class BuildAfter:
    """The models whose dbt config says how often at most to build them
    (``freshness: build_after: {count, period}``, dbt's own setting for this), for a
    runner that builds over and over. Their new data waits until that long has passed
    since their last build; the other models are built on every change. Meant for marts
    rebuilt whole that nobody reads by the second (monthly cohorts, daily funnels): their
    cost leaves the cycles that carry sales to the marts. ``updates_on`` is read as
    ``any``: new data in any parent makes a model due once its time has come."""

    def __init__(self, manifest: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.manifest = manifest
        self.clock = clock
        self.every: dict[str, float] = {}  # unique id -> seconds
        for uid, node in manifest.nodes.items():
            after = getattr(getattr(node.config, "freshness", None), "build_after", None)
            if node.resource_type == "model" and after and after.count and after.period:
                period = str(getattr(after.period, "value", after.period))
                self.every[uid] = after.count * PERIOD_SECONDS[period]
        self.built_at: dict[str, float] = {}
        self.waiting: set[str] = set()  # new data arrived, not built yet

    def plan(self, select: Sequence[str], source: str, tables: Iterable[str]) -> tuple[
            list[str], list[str]]:
        """The selection and exclusions of a build of what the ``tables`` of ``source``
        (those with new data) reach: models not due are left out (and remembered),
        models due with data waiting are added."""
        tables = set(tables)
        sources = [uid for uid, s in self.manifest.sources.items()
                   if s.source_name == source and s.name in tables]
        reached = descendants(self.manifest, sources)
        self.waiting |= reached & set(self.every)
        now = self.clock()
        due = {u for u in self.waiting
               if now - self.built_at.get(u, float("-inf")) >= self.every[u]}
        exclude = sorted(self.manifest.nodes[u].name for u in self.waiting - due)
        extra = sorted(self.manifest.nodes[u].name for u in due - reached)
        return [*select, *extra], exclude

    def built(self, outcome: Outcome) -> None:
        """Record a build: the models it built."""
        now = self.clock()
        done = {u for u in self.every if self.manifest.nodes[u].name in outcome.rebuilt}
        for uid in done:
            self.built_at[uid] = now
        self.waiting -= done
