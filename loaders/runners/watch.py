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
* **Marts at their own rhythm.** A mart whose dbt config says how often at most to
  build it (``freshness: build_after``, dbt's setting; the monthly cohorts and the daily
  funnel, rebuilt whole) is left out of the cycles until that long has passed since its
  last build, then built with the data that waited (:class:`loaders.dbt_project.BuildAfter`):
  its cost leaves the cycles that carry sales to the marts.
* **Tests at a rhythm.** Data tests gate the first build, any build after the source's
  shape changed and builds while a mart is held back by a failing test (a mart they
  fail is not published). Otherwise builds run the models only (``dbt run``) and the
  data tests run at most every ``test_interval`` seconds (default 300) from the start
  of the last run (a gated build counts as one), **in slices**
  (:mod:`loaders.runners.slices`): once a run is due, each cycle, after its
  publication (or with nothing new, on its own), runs the next slice of about
  ``test_slice_seconds`` (default 1) of tests, in the graph's order, until every test
  has run once, so a sale's way to the marts never waits for more than a slice. A run
  reads only the rows loaded since the last run that passed, a whole run every
  ``test_whole_interval`` seconds (default a day) and after a failure. The
  marts a failing test reaches are held back from later publications until a run of
  that test passes. Contracts are enforced by every build. Unit tests belong to
  ``make test``. The cycle's log says ``test_s`` and ``tests_slice`` (``3/9``) for a
  slice, ``tests_since`` (the load after which it read), ``tests_done`` when it
  completed a run.
* **Counts beside the cycles.** A count reconciliation due
  (:mod:`loaders.runners.late_rows`) starts after the cycle's publication and slice,
  not inside its load: raw is counted then (``reconcile_s`` in the cycle's log), the
  API's counts are asked in a thread while the cycles go on, and the first cycle after
  they answered (``reconciled``: the entities judged) raises a gap and repairs it.
* **The warehouse kept open.** While cycles follow one another, the DuckDB file stays
  open (:func:`loaders.warehouse.kept_open`): the load, dbt and the publication share
  one database instead of each opening the file and checkpointing it on closing. Once
  its log has grown it is checkpointed in a thread once the marts are published, on
  past the cycle's end (a checkpoint compresses on one core: off the sales' path, it
  runs beside the data tests' slice and the next cycle's reading of the API, whose first
  write to the warehouse waits for it; ``checkpoint_s`` in the log of the first cycle
  to end after it, ``checkpointing`` in one it runs on past), and closed before a wait of
  ``RELEASE_WAIT_S`` or more (an idle watch, a back-off) and after a failed cycle, so
  other processes can read it then.
* **Published atomically** (:mod:`loaders.runners.publish`) after every build:
  analysts read ``data/published/analytics.duckdb`` and are never blocked or shown a
  half-built mart. **What is good is published**: the marts a failing node reaches
  (the node itself, a gating test's model, and what depends on them) are held back at
  their last good version, every other mart is refreshed as usual; ``mart_status`` and
  ``pipeline_health`` say which marts are held back and why
  (:mod:`loaders.runners.holds`). A failing build is one incident: one notice when
  builds start failing (what failed, the marts and exposures held back, the impact of
  recent schema changes), one when they pass again. On a server
  warehouse (``SALESFLOW_TARGET=postgres``) nothing is published: analysts query its
  ``marts`` schema directly with their own role, and dbt swaps each rebuilt mart in one
  transaction, so they never see a half-built one either.
* **Outages**: a failed cycle is classified and recorded (:mod:`loaders.monitoring.health`: one
  alert per incident, one recovery notice); watch backs off (interval doubled per
  failure, at most ``max_backoff``) and resumes; the incremental cursor did not move, so
  the next good cycle catches up.
* **Stopping**: SIGINT or SIGTERM lets the cycle in progress finish and then exits; a
  second signal abandons it at once — safe, since dlt completes a half-loaded package on
  the next start and the published file is only ever replaced whole. dlt's own signal
  interception (``[runtime] intercept_signals``) is off while watch runs: it would take
  the first signal for itself, fail the step in progress and leave watch running.
* The run lock is held for the whole watch: a second watch or `salesflow run` is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loaders import config, dbt_project, warehouse
from loaders.monitoring import health, marts
from loaders.replica import settings as replica_settings
from loaders.runners import holds, late_rows, pipeline, publish, slices

log = logging.getLogger(__name__)


# watch lets go of the warehouse file (closed: checkpointed, readable by other processes)
# before a wait between cycles at least this long; cycles that follow one another at once
# keep it open
RELEASE_WAIT_S = 1.0


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
    test_slice_seconds: float = 1.0,
    test_whole_interval: float = 86400.0,
    stop: threading.Event | None = None,
    on_cycle: Callable[[WatchStats], None] | None = None,
    **load_options: Any,
) -> WatchStats:
    """Run cycles until stopped (signal, ``stop`` set, or ``max_cycles`` done)."""
    if min(test_slice_seconds, test_interval, test_whole_interval) < 0:
        raise ValueError(f"test_interval ({test_interval:g}), test_slice_seconds"
                         f" ({test_slice_seconds:g}) and test_whole_interval"
                         f" ({test_whole_interval:g}) must be 0 or more seconds")
    stop = stop or threading.Event()
    progress = load_options.pop("progress", None)  # dlt's display, not a source option
    stats = WatchStats()
    restore = _install_signals(stop)
    holding = contextlib.ExitStack()
    try:
        with pipeline.run_lock("watch"), holding:
            dbt = dbt_project.Session()
            # marts whose dbt config says how often at most to build them
            rhythm = dbt_project.BuildAfter(dbt.manifest)
            by_load_id = publish.by_load_id(dbt.manifest)
            # a DuckDB file is copied for analysts; a server warehouse is queried directly
            publishes = warehouse.is_duckdb()
            built_once = False
            released: set[str] = set()  # marts a test run let go, to publish next
            failures = 0
            periodic = slices.Rhythm(
                dbt_project.data_tests(dbt.manifest), dbt_project.graph_order(dbt.manifest),
                every=test_interval, budget=test_slice_seconds, whole=test_whole_interval)
            newest: str | None = None  # the newest load this watch made
            reconciling: late_rows.Reconciliation | None = None  # the API's counts asked
            checkpointing = warehouse.Checkpointing()  # the last checkpoint started
            while not stop.is_set() and (max_cycles is None or stats.cycles < max_cycles):
                started = time.monotonic()
                stats.cycles += 1
                if warehouse.held() is None:  # let go before the last wait
                    holding.enter_context(warehouse.kept_open())
                try:
                    result = pipeline.cycle(progress, defer_counts=True, **load_options)
                except Exception as exc:  # recorded and notified by the cycle itself
                    failures += 1
                    stats.failures += 1
                    stats.last = {"outcome": "failed", "error": str(exc)}
                    wait = min(interval * 2**failures, max_backoff)
                    log.warning("cycle failed (%s); next attempt in %.0f s", exc, wait)
                    holding.close()  # the next attempt opens the warehouse afresh
                    if on_cycle:
                        on_cycle(stats)
                    stop.wait(wait)
                    continue
                failures = 0
                newest = result.last_load_id or newest
                stats.last = {"outcome": result.outcome, "rows": result.total_new,
                              "load_s": round(result.seconds, 2)}
                if result.advanced or not built_once:
                    select = (
                        None if not built_once
                        else [f"source:{replica_settings.SOURCE_NAME}.{e}+"
                              for e in result.advanced]
                    )
                    t = time.monotonic()
                    # data tests gate the first build, a build after a shape change and
                    # builds while a mart is held back by a failing test (its tests must
                    # pass to publish it again); otherwise they run in slices after
                    # publication, so the freshness of the marts does not wait for them
                    shape_changed = bool(result.tracked and result.tracked.changes)
                    gate = not built_once or shape_changed or _held_by_test()
                    exclude: list[str] = []
                    if select is not None and not gate:
                        select, exclude = rhythm.plan(
                            select, replica_settings.SOURCE_NAME, result.advanced)
                    built = dbt.build(select, tests=gate, views=shape_changed,
                                      exclude=exclude)
                    rhythm.built(built)
                    if exclude:
                        stats.last["waiting"] = exclude
                    stats.builds += 1
                    stats.last["tests"] = gate
                    stats.last["build_s"] = round(time.monotonic() - t, 2)
                    judged = holds.record(dbt.manifest, built, marts.BUILD,
                                          result.last_load_id, True, pipeline.notifier())
                    # once marts are built, later builds follow what changed; a build
                    # that built nothing is run whole again
                    built_once = built_once or built.success or bool(built.rebuilt)
                    if not built.success:
                        stats.last["build"] = "failed"
                    if judged.held:
                        stats.last["held_back"] = judged.held
                    if publishes:
                        pub = publish.publish(
                            warehouse.duckdb_path(),
                            changed=None if select is None
                            else {*built.rebuilt, *judged.released, *released},
                            cycle_id=result.last_load_id,
                            by_load_id=by_load_id,
                            hold=judged.held,
                            through=warehouse.held(),
                        )
                        released.clear()
                        stats.published += 1
                        stats.last["publish_s"] = round(pub.seconds, 2)
                        stats.last["published_from"] = pub.route
                        if pub.swept:
                            stats.last["published_swept"] = list(pub.swept)
                    # the cycle's writes to the warehouse are done and its marts out:
                    # its log is checkpointed on one core, past the cycle's end
                    checkpointing = _checkpoint(checkpointing, stats)
                    if gate:  # counts as a test run: the next is due later
                        periodic.tested_in_build(built.seconds, newest,
                                                 select is None and built.success)
                if built_once:  # the periodic data tests: one slice per cycle, when due
                    _test_slice(dbt, periodic, stats, newest, released)
                # a count reconciliation due, once the cycle's rows are published: raw
                # counted here, the API asked in a thread, judged once it answered
                if reconciling is not None and reconciling.done():
                    stats.last["reconciled"] = pipeline.finish_reconciliation(reconciling)
                    reconciling = None
                if reconciling is None:
                    t = time.monotonic()
                    reconciling = pipeline.start_reconciliation(**load_options)
                    if reconciling is not None:
                        stats.last["reconcile_s"] = round(time.monotonic() - t, 2)
                # a log grown since (or nothing built): checkpointed past the cycle's
                # end, beside the next one's reading of the API
                checkpointing = _checkpoint(checkpointing, stats)
                if checkpointing.running:
                    stats.last["checkpointing"] = True
                stats.last["cycle_s"] = round(time.monotonic() - started, 2)
                log.info("cycle %d: %s", stats.cycles, stats.last)
                if on_cycle:
                    on_cycle(stats)
                wait = max(0.0, interval - (time.monotonic() - started))
                if wait >= RELEASE_WAIT_S:
                    holding.close()
                stop.wait(wait)
    finally:
        restore()
    return stats


def _checkpoint(last: warehouse.Checkpointing,
                stats: WatchStats) -> warehouse.Checkpointing:
    """A checkpoint of the warehouse's log started when due and none runs
    (:func:`loaders.warehouse.checkpoint_behind`); the one before, once done, reported
    (``checkpoint_s``) in the first cycle to end after it."""
    if last.running:
        return last
    if last.seconds is not None:
        stats.last["checkpoint_s"] = round(last.seconds, 2)
    return warehouse.checkpoint_behind()


def _test_slice(dbt: dbt_project.Session, periodic: slices.Rhythm, stats: WatchStats,
                load_id: str | None, released: set[str]) -> None:
    """The next slice of the periodic data tests, when a run is due or in progress, and
    the marts' status after it (``released``: marts it let go, for the next
    publication)."""
    due = periodic.next_slice(load_id)
    if due is None:
        return
    which = periodic.label()
    t = time.monotonic()
    tested = dbt.test_nodes(due, since=periodic.since)
    complete = periodic.ran(tested.seconds, tested.success)
    stats.last["tests"] = True
    stats.last["test_s"] = round(time.monotonic() - t, 2)
    stats.last["tests_slice"] = which
    if periodic.since:
        stats.last["tests_since"] = periodic.since
    if complete:
        stats.last["tests_done"] = True
    after = holds.record(dbt.manifest, tested, marts.TESTS, load_id, False,
                         pipeline.notifier())
    # good again without a rebuild: refreshed by the next publication
    released.update(after.released)
    if after.held:
        stats.last["held_back"] = after.held
    if not tested.success:
        stats.last["tests_failed"] = True


def _held_by_test() -> bool:
    """Whether a mart is held back by a failing data test (see loaders.monitoring.marts)."""
    status = health.Health(config.pipelines_dir()).mart_status()
    return any(marts.Hold(s.get("node") or "", "").by_test
               for s in marts.held_back(status).values())


DLT_INTERCEPTS_SIGNALS = "RUNTIME__INTERCEPT_SIGNALS"


def _install_signals(stop: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # dlt would otherwise install its own handlers for its normalize and load steps
    # (read when each cycle's pipeline is made) and keep a signal from reaching watch's
    intercepting = os.environ.get(DLT_INTERCEPTS_SIGNALS)
    os.environ[DLT_INTERCEPTS_SIGNALS] = "false"

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
        if intercepting is None:
            os.environ.pop(DLT_INTERCEPTS_SIGNALS, None)
        else:
            os.environ[DLT_INTERCEPTS_SIGNALS] = intercepting

    return restore
