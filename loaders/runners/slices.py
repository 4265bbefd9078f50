"""``salesflow watch``'s periodic data tests, run in slices between cycles.

A run of every data test reads whole tables: over millions of orders it takes many
seconds, and no sale reaches the marts while it runs. So a run is spread over cycles:
once one is due, each cycle, after its publication, runs the next slice of the data
tests, until every test has run once. The next run is due ``every`` seconds after the
last one **started** (a run longer than that is followed at once by the next; a build
that runs its tests, watch's gate, counts as a run and starts the wait again).

* **Slices by time.** A slice is bounded by a budget of seconds, estimated from each
  test's duration at its last run (dbt's ``execution_time``, from a slice or a build
  with tests — watch's first build runs them all) summed as if they ran one after
  another (dbt's threads only make a slice shorter); a test never timed counts as
  ``UNKNOWN_S``. A slice holds at least one test, so a test slower than the budget
  runs alone. The slices are planned when a run starts, from the durations known then.
* **In the graph's order.** Tests of upstream nodes first; a node's tests go into one
  slice together unless they alone exceed the budget. A failing staging test is then
  found before the tests of the marts built from it.
* **New rows only.** A run reads only the rows loaded after the load at the start of
  the last run whose every test passed (``since``: the tests of the nodes with a
  column holding that load, see the macros ``get_where_subquery`` and ``load_column``), so its
  cost follows the change, not the history. A run is whole (``since`` None) when no
  run has passed since watch started or since the last failure, and every ``whole``
  seconds (rows loaded by a package completed out of order, parents deleted under
  old rows). Watch's first build tests everything and counts as a whole run.
* **Holds per slice.** Each slice is judged on its own
  (:func:`loaders.runners.holds.record`): a failing test holds back the marts it
  reaches, and a mart held by a test is released only by a run of that test
  (:meth:`loaders.monitoring.marts.Verdict.releases`), not by another slice that
  covers the mart.

Pure but for :class:`Rhythm`'s clock. May import: nothing of the project.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

# what a test never timed is counted as (seconds): a data test on a small table
UNKNOWN_S = 0.2


@dataclass(frozen=True)
class DataTest:
    """One data test: its dbt unique id, the node it tests, its last duration."""

    unique_id: str
    node: str
    seconds: float | None = None  # at its last run; None: never timed


def in_graph_order(tests: Iterable[DataTest], graph: Sequence[str]) -> list[DataTest]:
    """The tests by their node's place in the graph (``graph``: unique ids, parents
    first), a node's tests together (by unique id); nodes not in it come last."""
    rank = {uid: i for i, uid in enumerate(graph)}
    return sorted(tests, key=lambda t: (rank.get(t.node, len(rank)), t.node, t.unique_id))


def plan(tests: Sequence[DataTest], budget: float,
         unknown: float = UNKNOWN_S) -> list[list[DataTest]]:
    """Consecutive slices of ``tests`` (in their order), each estimated to take at most
    ``budget`` seconds and holding at least one test; a node's tests in one slice
    unless they alone exceed the budget."""
    slices: list[list[DataTest]] = []
    current: list[DataTest] = []
    spent = 0.0

    def cost(test: DataTest) -> float:
        return unknown if test.seconds is None else max(0.0, test.seconds)

    for _, group in groupby(tests, key=lambda t: t.node):
        together = list(group)
        total = sum(cost(t) for t in together)
        if current and spent + total > budget and total <= budget:
            # the node's tests fit in a slice of their own, not in what is left here
            slices.append(current)
            current, spent = [], 0.0
        for test in together:
            if current and spent + cost(test) > budget:
                slices.append(current)
                current, spent = [], 0.0
            current.append(test)
            spent += cost(test)
    if current:
        slices.append(current)
    return slices


class Rhythm:
    """When the periodic data tests run, and which slice is next.

    ``tests``: every data test (unique id -> the node it tests), ``graph``: the graph's
    order (unique ids, parents first), ``every``: seconds from a run's start to the
    next's, ``budget``: seconds per slice, ``whole``: seconds from a whole run's start
    to the next whole run's."""

    def __init__(self, tests: Mapping[str, str], graph: Sequence[str], every: float,
                 budget: float, whole: float = 86400.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tests = dict(tests)
        self.graph = list(graph)
        self.every = every
        self.budget = budget
        self.whole = whole
        self.clock = clock
        self.seconds: dict[str, float] = {}  # unique id -> at its last run
        self.slices: list[list[str]] = []  # the run in progress (empty: none)
        self.done = 0  # slices of it run
        self.started_at = clock()
        self.covered: str | None = None  # every row up to this load passed (None: unknown)
        self.whole_at = clock()  # when the last whole run started
        self.since: str | None = None  # the run in progress reads loads after this
        self._upto: str | None = None  # the newest load when it started
        self._passed = True  # every slice of it so far

    @property
    def running(self) -> bool:
        return bool(self.slices)

    def timed(self, seconds: Mapping[str, float]) -> None:
        """Durations of tests that just ran (unique id -> seconds; other nodes ignored)."""
        self.seconds.update({u: s for u, s in seconds.items() if u in self.tests})

    def tested_in_build(self, seconds: Mapping[str, float], load_id: str | None = None,
                        passed: bool = False) -> None:
        """A build ran its data tests: it counts as a run (the wait starts again); a run
        in progress goes on. A build of every node whose tests ``passed`` covers every
        row up to ``load_id`` (the newest load it read) as a whole run."""
        self.timed(seconds)
        self.started_at = self.clock()
        if passed and load_id:
            self.covered, self.whole_at = load_id, self.started_at

    def next_slice(self, load_id: str | None = None) -> list[str] | None:
        """The tests of the next slice (unique ids), starting a run when one is due
        (``load_id``: the newest load then); None when none is."""
        if not self.slices:
            now = self.clock()
            if now - self.started_at < self.every:
                return None
            self.started_at = now
            whole = self.covered is None or now - self.whole_at >= self.whole
            self.since = None if whole else self.covered
            if whole:
                self.whole_at = now
            self._upto, self._passed = load_id, True
            ordered = in_graph_order(
                (DataTest(u, n, self.seconds.get(u)) for u, n in self.tests.items()),
                self.graph)
            self.slices = [[t.unique_id for t in s] for s in plan(ordered, self.budget)]
            self.done = 0
            if not self.slices:  # a project without data tests
                return None
        return self.slices[self.done]

    def label(self) -> str:
        """Which slice of how many is next, while a run is in progress."""
        return f"{self.done + 1}/{len(self.slices)}"

    def ran(self, seconds: Mapping[str, float], passed: bool = True) -> bool:
        """The next slice ran (its tests' durations, whether they all ``passed``);
        whether that completed the run. A run that passed covers the rows up to the
        newest load at its start; one that failed leaves the next run whole."""
        self.timed(seconds)
        self._passed = self._passed and passed
        self.done += 1
        if self.done < len(self.slices):
            return False
        self.slices, self.done = [], 0
        self.covered = self._upto if self._passed else None
        return True
