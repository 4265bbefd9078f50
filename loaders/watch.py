"""``salesflow watch``: cycles back to back — load what is new, rebuild what it affects,
publish for analysts.

* **One process, dbt warm.** dbt runs through its programmatic runner with the project
  parsed once at start (``dbtRunner(manifest=...)``), so a cycle pays for compiling and
  running the selected models only, not for start-up and parsing.
* **Only what changed.** The loader says which entities' cursors moved; the build selects
  ``source:replica.<entity>+`` for those, views left out unless the source's shape
  changed. Incremental marts rebuild only the rows loaded since their last build (by
  dlt load id), and the lookback window's unchanged rows are not loaded again, so a
  cycle's work follows what changed, not the size of the history. A cycle with nothing
  new builds nothing and publishes nothing. The first cycle builds everything.
* **Tests at a rhythm.** Data tests gate the first build and any build after the source's
  shape changed (nothing is published unless they pass). Otherwise builds run the models
  only (``dbt run``) and the data tests run at most every ``test_interval`` seconds
  (default 300), after that cycle's publication, so a sale's way to the marts never
  waits for a full-table test; a failure is notified like a failed build. Contracts are
  enforced by every build. Unit tests belong to ``make test``.
* **Published atomically** (:mod:`loaders.publish`) after every successful build:
  analysts read ``data/published/analytics.duckdb`` and are never blocked or shown a
  half-built mart. A failed build publishes nothing (analysts keep the last good
  version) and is notified with the impact of recent schema changes. On a server
  warehouse (``SALESFLOW_TARGET=postgres``) nothing is published: analysts query its
  ``marts`` schema directly with their own role, and dbt swaps each rebuilt mart in one
  transaction, so they never see a half-built one either.
* **Outages**: a failed cycle is classified and recorded (:mod:`loaders.health`: one
  alert per incident, one recovery notice); watch backs off (interval doubled per
  failure, at most ``max_backoff``) and resumes; the incremental cursor did not move, so
  the next good cycle catches up.
* **Stopping**: SIGINT or SIGTERM lets the cycle in progress finish and then exits; a
  second signal abandons it at once — safe, since dlt completes a half-loaded package on
  the next start and the published file is only ever replaced whole.
* The run lock is held for the whole watch: a second watch or `salesflow run` is refused.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loaders import pipeline, publish, tracking, warehouse

log = logging.getLogger(__name__)


@dataclass
class WatchStats:
    cycles: int = 0
    builds: int = 0
    failures: int = 0
    published: int = 0
    last: dict[str, Any] = field(default_factory=dict)


class DbtSession:
    """dbt with the project parsed once (the manifest is reused by every command)."""

    def __init__(self) -> None:
        from dbt.cli.main import dbtRunner

        warehouse.prepare_dbt()
        parsed = self._invoke(dbtRunner(), "parse")
        if not parsed.success or parsed.result is None:
            raise RuntimeError(f"dbt parse failed: {parsed.exception}")
        self.runner = dbtRunner(manifest=parsed.result)
        self.target = warehouse.dbt_target(pipeline.PROJECT_ROOT)
        self.by_load_id = published_by_load_id(parsed.result)

    @staticmethod
    def _invoke(runner: Any, *args: str) -> Any:
        root = str(pipeline.PROJECT_ROOT)
        try:
            return runner.invoke([*args, "--project-dir", root, "--profiles-dir", root])
        finally:
            pipeline.release_dbt_warehouse()

    def build(
        self, select: list[str] | None, tests: bool = True, views: bool = True
    ) -> tuple[bool, list[str]]:
        """Build (models, seeds, snapshots, and with ``tests`` their data tests; never
        unit tests); returns success and the marts rebuilt. Without ``views`` (and
        tests), the selected views are left as they are."""
        args = (
            ["build", "--exclude-resource-type", "unit_test"] if tests
            # a cycle's run leaves the manifest as parsed (rewriting its megabytes of
            # JSON each cycle cost about 0.2 s); its run_results.json is written below
            else ["run", "--no-write-json"]
        )
        if select:
            args += ["--select", *select]
            if not tests and not views:
                # a view's definition changes with the project or the source's shape,
                # not with new rows: recreating them each cycle is wasted work
                args += ["--exclude", "config.materialized:view"]
        result = self._invoke(self.runner, *args)
        if result.exception is not None:
            raise result.exception
        if not tests and result.result is not None:
            # what failed stays where dbt users (and salesflow's notices) look for it
            result.result.write(str(self.target / "run_results.json"))
        return bool(result.success), self._marts(result)

    def test(self, select: list[str] | None) -> bool:
        """The data tests of the selection (never unit tests); True when all pass."""
        args = ["test", "--exclude-resource-type", "unit_test"]
        if select:
            args += ["--select", *select]
        result = self._invoke(self.runner, *args)
        if result.exception is not None:
            raise result.exception
        return bool(result.success)

    @staticmethod
    def _marts(result: Any) -> list[str]:
        return [
            r.node.name
            for r in getattr(result.result, "results", None) or []
            if r.node.resource_type == "model" and r.node.schema == publish.SCHEMA
            and str(r.status) == "success"
        ]


def published_by_load_id(manifest: Any) -> dict[str, str]:
    """The marts analysts' copy may refresh row by row (``meta: {publish: by_load_id}``,
    see :mod:`loaders.publish`), with their unique key."""
    return {
        node.name: node.config.unique_key
        for node in manifest.nodes.values()
        if node.resource_type == "model" and node.schema == publish.SCHEMA
        and (node.config.meta or {}).get("publish") == "by_load_id"
        and isinstance(node.config.unique_key, str)
    }


def watch(
    interval: float = 2.0,
    max_cycles: int | None = None,
    max_backoff: float = 60.0,
    test_interval: float = 300.0,
    stop: threading.Event | None = None,
    on_cycle: Callable[[WatchStats], None] | None = None,
    **load_options: Any,
) -> WatchStats:
    """Run cycles until stopped (signal, ``stop`` set, or ``max_cycles`` done)."""
    stop = stop or threading.Event()
    progress = load_options.pop("progress", None)  # dlt's display, not a source option
    stats = WatchStats()
    restore = _install_signals(stop)
    try:
        with pipeline.run_lock("watch"):
            dbt = DbtSession()
            # a DuckDB file is copied for analysts; a server warehouse is queried directly
            publishes = warehouse.is_duckdb()
            built_once = False
            failures = 0
            tested_at = time.monotonic()
            while not stop.is_set() and (max_cycles is None or stats.cycles < max_cycles):
                started = time.monotonic()
                stats.cycles += 1
                try:
                    result = pipeline._cycle(pipeline._source_kwargs(**load_options), progress)
                except Exception as exc:  # recorded and notified by the cycle itself
                    failures += 1
                    stats.failures += 1
                    stats.last = {"outcome": "failed", "error": str(exc)}
                    wait = min(interval * 2**failures, max_backoff)
                    log.warning("cycle failed (%s); next attempt in %.0f s", exc, wait)
                    if on_cycle:
                        on_cycle(stats)
                    stop.wait(wait)
                    continue
                failures = 0
                stats.last = {"outcome": result.outcome, "rows": result.total_new,
                              "load_s": round(result.seconds, 2)}
                if result.advanced or not built_once:
                    select = (
                        None if not built_once
                        else [f"source:{pipeline.replica_settings.SOURCE_NAME}.{e}+"
                              for e in result.advanced]
                    )
                    t = time.monotonic()
                    # data tests gate the first build and a build after a shape change
                    # (nothing is published unless they pass); otherwise they run at
                    # most every test_interval seconds, after publication, so the
                    # freshness of the marts does not wait for them
                    shape_changed = bool(result.tracked and result.tracked.changes)
                    gate = not built_once or shape_changed
                    ok, marts = dbt.build(select, tests=gate, views=shape_changed)
                    stats.builds += 1
                    stats.last["tests"] = gate
                    stats.last["build_s"] = round(time.monotonic() - t, 2)
                    if ok:
                        built_once = True
                        if publishes:
                            pub = publish.publish(
                                pipeline.warehouse_path(),
                                changed=None if select is None else marts,
                                cycle_id=result.load_ids[-1] if result.load_ids else None,
                                by_load_id=dbt.by_load_id,
                            )
                            stats.published += 1
                            stats.last["publish_s"] = round(pub.seconds, 2)
                        if gate:
                            tested_at = time.monotonic()
                        elif time.monotonic() - tested_at >= test_interval:
                            t = time.monotonic()
                            # tests read whole tables: one run covers every cycle since
                            passed = dbt.test(None)
                            tested_at = time.monotonic()
                            stats.last["tests"] = True
                            stats.last["test_s"] = round(tested_at - t, 2)
                            if not passed:
                                stats.last["tests_failed"] = True
                                pipeline.notifier().notify(tracking.build_failed_event(
                                    result, pipeline.recent_changes(20), published=True))
                    else:
                        pipeline.notifier().notify(
                            tracking.build_failed_event(result, pipeline.recent_changes(20))
                        )
                        stats.last["build"] = "failed"
                stats.last["cycle_s"] = round(time.monotonic() - started, 2)
                log.info("cycle %d: %s", stats.cycles, stats.last)
                if on_cycle:
                    on_cycle(stats)
                stop.wait(max(0.0, interval - (time.monotonic() - started)))
    finally:
        restore()
    return stats


def _install_signals(stop: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # second signal: abandon the cycle in progress
            raise KeyboardInterrupt
        log.warning("stopping after the cycle in progress (signal again to abandon it)")
        stop.set()

    for s in previous:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore
