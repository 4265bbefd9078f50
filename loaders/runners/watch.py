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
* **Published atomically** (:mod:`loaders.runners.publish`) after every successful build:
  analysts read ``data/published/analytics.duckdb`` and are never blocked or shown a
  half-built mart. A failed build publishes nothing (analysts keep the last good
  version) and is notified with the impact of recent schema changes. On a server
  warehouse (``SALESFLOW_TARGET=postgres``) nothing is published: analysts query its
  ``marts`` schema directly with their own role, and dbt swaps each rebuilt mart in one
  transaction, so they never see a half-built one either.
* **Outages**: a failed cycle is classified and recorded (:mod:`loaders.monitoring.health`: one
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

from loaders import dbt_project, warehouse
from loaders.replica import settings as replica_settings
from loaders.runners import pipeline, publish
from loaders.schema_changes.changelog import recent_changes
from loaders.schema_changes.track import build_failed_event

log = logging.getLogger(__name__)


@dataclass
class WatchStats:
    cycles: int = 0
    builds: int = 0
    failures: int = 0
    published: int = 0
    last: dict[str, Any] = field(default_factory=dict)


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
            dbt = dbt_project.Session()
            by_load_id = publish.by_load_id(dbt.manifest)
            # a DuckDB file is copied for analysts; a server warehouse is queried directly
            publishes = warehouse.is_duckdb()
            built_once = False
            failures = 0
            tested_at = time.monotonic()
            while not stop.is_set() and (max_cycles is None or stats.cycles < max_cycles):
                started = time.monotonic()
                stats.cycles += 1
                try:
                    result = pipeline.cycle(progress, **load_options)
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
                        else [f"source:{replica_settings.SOURCE_NAME}.{e}+"
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
                                warehouse.duckdb_path(),
                                changed=None if select is None else marts,
                                cycle_id=result.last_load_id,
                                by_load_id=by_load_id,
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
                                pipeline.notifier().notify(build_failed_event(
                                    result.last_load_id, recent_changes(20), published=True))
                    else:
                        pipeline.notifier().notify(
                            build_failed_event(result.last_load_id, recent_changes(20))
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
