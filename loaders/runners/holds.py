"""After a build or a periodic test run: the marts held back, and one incident.

dbt's outcome (:class:`loaders.dbt_project.Outcome`) says which nodes errored or failed;
the manifest's child map which marts and exposures they reach. Those marts are held
back (:mod:`loaders.monitoring.marts`): the publication leaves them at their last good
version, every other mart is published as usual. The marts' status goes to the health
state file and ``raw.mart_status``; a failing build (``build_failed``) or periodic test
run (``tests_failed``) is an alarm (:mod:`loaders.monitoring.alarms`): one notice when
it starts failing — what failed, the marts and exposures held back, the impact of
recent schema changes (the failed-build notice's text) — nothing while it goes on, one
recovery notice with its duration and the marts published again. ``salesflow watch``
and ``salesflow run`` both record their builds here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from loaders import config, dbt_project, warehouse
from loaders.monitoring import health, marts
from loaders.monitoring.alarms import BUILD_FAMILY, AlarmCheck, Condition
from loaders.monitoring.notify import Notifier
from loaders.schema_changes.changelog import recent_changes
from loaders.schema_changes.track import build_failed_event

log = logging.getLogger(__name__)


@dataclass
class Judged:
    """The marts after one build or test run."""

    status: dict[str, dict[str, Any]]  # every mart's (see loaders.monitoring.marts)
    held: list[str] = field(default_factory=list)  # held back now
    released: list[str] = field(default_factory=list)  # good again with this run
    notices: list[str] = field(default_factory=list)  # keys of the notices raised


def verdict(manifest: Any, result: dbt_project.Outcome, kind: str) -> marts.Verdict:
    """What ``result`` (a build: kind BUILD, a test run: TESTS) says about the marts."""
    held = dbt_project.held_back(manifest, result.failures)
    return marts.Verdict(
        kind=kind,
        held={m: marts.Hold(f.unique_id, f.describe()) for m, f in held.items()},
        scope=dbt_project.in_scope(manifest, result),
        tests=result.tests,
        failures=[f.describe() for f in result.failures],
        exposures=dbt_project.exposures_reached(manifest, result.failures),
        # a test run (the periodic one runs in slices) releases a mart held by a test
        # only if that test ran; a build with tests judges what it built, as before
        ran=frozenset(result.judged) if kind == marts.TESTS else None,
    )


def record(
    manifest: Any, result: dbt_project.Outcome, kind: str, load_id: str | None,
    published: bool, notifier: Notifier | None,
) -> Judged:
    """Judge the marts after ``result``, record their status and the build's alarms,
    notify (``published``: the current marts are made readable to analysts now)."""
    tracker = health.Health(config.pipelines_dir(), notifier)
    now = health.utcnow()
    v = verdict(manifest, result, kind)
    status, released = marts.judge(
        tracker.mart_status(), dbt_project.marts(manifest), v, health.iso(now), published
    )
    held = sorted(marts.held_back(status))
    open_alarms = tracker.state().get("open_alarms") or {}
    check = AlarmCheck()
    # a test run cannot tell whether models build; a run without tests, whether they pass
    for judged in [k for k, ran in ((marts.BUILD, kind == marts.BUILD),
                                    (marts.TESTS, result.tests)) if ran]:
        still = marts.still_failing(status, judged)
        # a failure already holding marts for the other kind is that incident's
        others = {s.get("node") for s in marts.held_back(status).values()
                  if s.get("kind") != judged}
        failing = judged == kind and any(f.unique_id not in others for f in result.failures)
        if not (still or failing):
            check.add(judged, [])
            continue
        check.add(judged, [_condition(judged, v, still, load_id,
                                      f"{judged}:*" not in open_alarms)])
    what = "published again" if warehouse.is_duckdb() else "current again"
    resolution = (f"Marts {what}: {', '.join(released)}." if released
                  else "No mart was held back.")
    try:
        with warehouse.sql_client() as sql:
            notices = tracker.record_build(status, check, now, health.cycle_id_at(now),
                                           sql, resolution)
    except Exception as exc:  # the warehouse is unusable: keep the state file
        log.error("marts' status not written to the warehouse: %s", exc)
        notices = tracker.record_build(status, check, now, health.cycle_id_at(now), None,
                                       resolution)
    if held:
        log.warning("marts held back: %s", ", ".join(held))
    return Judged(status, held, released, notices)


def _condition(
    kind: str, v: marts.Verdict, held: list[str], load_id: str | None, opening: bool
) -> Condition:
    """The alarm's finding; the whole notice (with the impact of recent schema changes,
    which may need the project's lineage) only when it opens."""
    details = {"failures": v.failures[:20], "held_back": held, "exposures": v.exposures}
    if opening:
        event = build_failed_event(load_id, recent_changes(20), published=kind == marts.TESTS,
                                   failures=v.failures, held=held, exposures=v.exposures)
        title, text = event.title, event.text
    else:
        title = "data tests failed on published marts" if kind == marts.TESTS else (
            "dbt build failed: marts held back")
        text = "; ".join(v.failures[:5]) or "still held back: " + ", ".join(held)
    return Condition(kind, None, title, text, details, family=BUILD_FAMILY)
