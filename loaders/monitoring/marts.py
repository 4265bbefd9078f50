"""Which marts are current: published as usual, or held back by a failing build or test.

After every build and every periodic test run, each public mart is **current** or
**held back**: held back while it failed to build, failed one of its gating (error
severity) data tests, or depends on a node that did — analysts keep its last good
version (on a server warehouse, dbt did not rebuild it, or, when its own test failed
after it was rebuilt, it is visible as rebuilt: the status says so). Every other mart
is published as usual.

A hold is released by the first later run that judges the mart and finds nothing wrong:
a hold for a failing test needs its tests to run again (a build with tests, or the
periodic test run); a hold for a model that errored needs a build. A test run judges
a mart held by a test only if that very test ran: the periodic tests run in slices, and
a slice whose tests of the mart pass says nothing of the failing one in another slice.
The marts' status is kept in the health state file (``marts``) and, for
``pipeline_health``, the ``mart_status`` mart and analysts' file, in
``raw.mart_status`` (one row per mart, rewritten whole).

Pure but for :func:`ensure_table` and :func:`write`. May import: nothing of the project.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TABLE = "mart_status"
CURRENT, HELD_BACK = "current", "held_back"
# the kinds of run that judge marts, and of the alarm each opens
BUILD, TESTS = "build_failed", "tests_failed"


@dataclass(frozen=True)
class Hold:
    """Why one mart is held back: the failing node (a dbt unique id) and its message."""

    node: str
    message: str

    @property
    def by_test(self) -> bool:
        return self.node.startswith("test.")


@dataclass
class Verdict:
    """What one build (``kind`` BUILD) or test run (TESTS) says about the marts."""

    kind: str
    held: dict[str, Hold]  # marts this run holds back
    scope: set[str]  # marts it could judge (those among the nodes it covered)
    tests: bool  # their data tests ran
    failures: list[str] = field(default_factory=list)  # failing nodes, described
    exposures: list[str] = field(default_factory=list)  # reading a held mart
    # a test run's tests (dbt unique ids): only the test holding a mart can release it
    ran: frozenset[str] | None = None

    def releases(self, hold: Mapping[str, Any]) -> bool:
        """Whether this run can tell that a mart held for ``hold`` is good again."""
        node = str(hold.get("node", ""))
        if not node.startswith("test."):
            return self.kind == BUILD
        return self.tests and (self.ran is None or node in self.ran)


def judge(
    previous: Mapping[str, Mapping[str, Any]], marts: Iterable[str], verdict: Verdict,
    now: str, published: bool,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The marts' new status from their ``previous`` one and a run's ``verdict`` (at
    ``now``, ISO); ``published``: the current marts are being made readable to analysts
    now. Returns the status and the marts it released."""
    status: dict[str, dict[str, Any]] = {}
    released: list[str] = []
    for mart in sorted(marts):
        before = dict(previous.get(mart) or {})
        was_held = before.get("status") == HELD_BACK
        hold = verdict.held.get(mart)
        if hold is not None:
            since = before["since"] if was_held else now
            entry = {"status": HELD_BACK, "since": since, "node": hold.node,
                     "reason": hold.message, "kind": before.get("kind", verdict.kind)
                     if was_held else verdict.kind}
        elif was_held and not (mart in verdict.scope and verdict.releases(before)):
            entry = {k: before.get(k) for k in ("status", "since", "node", "reason", "kind")}
        else:
            if was_held:
                released.append(mart)
            entry = {"status": CURRENT, "since": now if was_held or not before
                     else before.get("since", now), "node": None, "reason": None,
                     "kind": None}
        last = before.get("last_published_at")
        entry["last_published_at"] = now if published and entry["status"] == CURRENT else last
        status[mart] = entry
    return status, released


def held_back(status: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The marts held back, by name."""
    return {m: s for m, s in status.items() if s.get("status") == HELD_BACK}


def still_failing(status: Mapping[str, Mapping[str, Any]], kind: str) -> list[str]:
    """The marts held back by a run of ``kind``."""
    return sorted(m for m, s in held_back(status).items() if s.get("kind") == kind)


def ensure_table(sql: Any, dataset: str) -> None:
    sql.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {dataset}.{TABLE} (mart VARCHAR PRIMARY KEY,"
        " status VARCHAR, status_since TIMESTAMP WITH TIME ZONE, held_back_by VARCHAR,"
        " reason VARCHAR, last_published_at TIMESTAMP WITH TIME ZONE,"
        " updated_at TIMESTAMP WITH TIME ZONE)"
    )


def write(sql: Any, dataset: str, status: Mapping[str, Mapping[str, Any]], now: str) -> None:
    """Replace ``raw.mart_status`` with ``status`` (one row per mart)."""
    ensure_table(sql, dataset)
    sql.execute_sql(f"DELETE FROM {dataset}.{TABLE}")
    for mart, s in sorted(status.items()):
        sql.execute_sql(
            f"INSERT INTO {dataset}.{TABLE} (mart, status, status_since, held_back_by,"
            " reason, last_published_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            mart, s["status"], s["since"], s.get("node"), s.get("reason"),
            s.get("last_published_at"), now,
        )
