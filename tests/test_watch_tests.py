"""`salesflow watch`'s periodic data tests in slices: their order, their time budget,
their rhythm, and the marts a slice holds back and releases."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from loaders import config, dbt_project
from loaders.monitoring import health, marts
from loaders.runners import pipeline
from loaders.runners.slices import DataTest, Rhythm, in_graph_order, plan
from loaders.runners.watch import watch
from tests.support import TOKEN


def ids(slices: list[list[DataTest]]) -> list[list[str]]:
    return [[t.unique_id for t in s] for s in slices]


def test_tests_of_upstream_nodes_come_first_a_nodes_tests_together():
    graph = ["source.raw", "model.stg", "model.fct", "model.daily"]
    tests = [DataTest("t.daily_a", "model.daily"), DataTest("t.stg_b", "model.stg"),
             DataTest("t.fct", "model.fct"), DataTest("t.stg_a", "model.stg"),
             DataTest("t.gone", "model.unknown"), DataTest("t.raw", "source.raw")]
    ordered = [t.unique_id for t in in_graph_order(tests, graph)]
    assert ordered == ["t.raw", "t.stg_a", "t.stg_b", "t.fct", "t.daily_a", "t.gone"]


def test_slices_keep_to_the_budget_and_a_nodes_tests_together():
    tests = [DataTest("a1", "a", 0.3), DataTest("a2", "a", 0.3),
             DataTest("b1", "b", 0.3), DataTest("b2", "b", 0.3),  # b fits a slice of its own
             DataTest("c1", "c", 0.2),
             DataTest("d1", "d", 0.5), DataTest("d2", "d", 0.5), DataTest("d3", "d", 0.5),
             DataTest("e1", "e", 3.0),  # slower than the budget: alone
             DataTest("f1", "f", 0.1)]
    assert ids(plan(tests, 1.0)) == [["a1", "a2"], ["b1", "b2", "c1"],
                                     ["d1", "d2"], ["d3"], ["e1"], ["f1"]]
    # every test once, in order, and at least one test per slice
    assert [t for s in plan(tests, 0.0) for t in s] == tests
    assert all(len(s) == 1 for s in plan(tests, 0.0))
    assert ids(plan(tests, 100.0)) == [[t.unique_id for t in tests]]
    assert plan([], 1.0) == []


def test_a_test_never_timed_counts_as_the_default():
    tests = [DataTest(f"t{i}", "m") for i in range(4)]
    assert ids(plan(tests, 1.0, unknown=0.5)) == [["t0", "t1"], ["t2", "t3"]]
    assert ids(plan([*tests[:2], DataTest("t9", "m", 0.0)], 1.0, unknown=0.5)) == [
        ["t0", "t1", "t9"]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_run_goes_slice_by_slice_and_the_next_is_due_after_its_start():
    clock = Clock()
    tests = {"t.a1": "m.a", "t.a2": "m.a", "t.b": "m.b", "t.c": "m.c"}
    rhythm = Rhythm(tests, ["m.a", "m.b", "m.c"], every=60, budget=1.0, clock=clock)
    clock.now += 59
    assert rhythm.next_slice() is None and not rhythm.running
    # a build ran its tests: it counts as a run, and says how long they took
    rhythm.tested_in_build({"t.a1": 0.4, "t.a2": 0.4, "t.b": 0.5, "t.c": 0.9,
                            "model.m.a": 5.0})
    clock.now += 59
    assert rhythm.next_slice() is None
    clock.now += 1
    assert rhythm.next_slice() == ["t.a1", "t.a2"] and rhythm.label() == "1/3"
    assert rhythm.next_slice() == ["t.a1", "t.a2"]  # until it ran
    clock.now += 10
    assert rhythm.ran({"t.a1": 0.2, "t.a2": 0.2}) is False
    assert rhythm.next_slice() == ["t.b"] and rhythm.label() == "2/3"
    assert rhythm.ran({"t.b": 0.5}) is False
    clock.now += 45
    assert rhythm.next_slice() == ["t.c"] and rhythm.label() == "3/3"
    assert rhythm.ran({"t.c": 0.4}) is True and not rhythm.running
    assert rhythm.next_slice() is None
    clock.now += 5  # 60 s after the run started
    # planned with the durations of the last run
    assert rhythm.next_slice() == ["t.a1", "t.a2", "t.b"] and rhythm.label() == "1/2"
    # a build with tests in the middle of a run: the run goes on
    rhythm.tested_in_build({})
    assert rhythm.ran({}) is False and rhythm.next_slice() == ["t.c"]


def test_a_run_reads_the_loads_after_the_last_that_passed_and_is_whole_now_and_then():
    clock = Clock()
    rhythm = Rhythm({"t.a": "m.a", "t.b": "m.b"}, ["m.a", "m.b"], every=60, budget=10.0,
                    whole=1000, clock=clock)
    # nothing is known to have passed yet: the first run is whole
    clock.now += 60
    assert rhythm.next_slice("100.1") == ["t.a", "t.b"] and rhythm.since is None
    assert rhythm.ran({}) is True
    clock.now += 60
    assert rhythm.next_slice("100.5") and rhythm.since == "100.1"
    # a slice that failed: what it covered is unknown, the next run is whole
    assert rhythm.ran({}, passed=False) is True
    clock.now += 60
    assert rhythm.next_slice("100.9") and rhythm.since is None
    assert rhythm.ran({}) is True
    clock.now += 60
    assert rhythm.next_slice("101.0") and rhythm.since == "100.9"
    assert rhythm.ran({}) is True
    # a day after the last whole run (here 1000 s), the next is whole again
    clock.now += 1000
    assert rhythm.next_slice("102.0") and rhythm.since is None
    assert rhythm.ran({}) is True
    # a build of some nodes whose tests passed counts as a run, covers nothing new;
    # a whole build that passed covers every row it read
    rhythm.tested_in_build({}, "103.0", passed=False)
    clock.now += 60
    assert rhythm.next_slice("103.5") and rhythm.since == "102.0"
    assert rhythm.ran({}) is True
    rhythm.tested_in_build({}, "104.0", passed=True)
    clock.now += 60
    assert rhythm.next_slice("105.0") and rhythm.since == "104.0"


def test_tests_since_a_load_read_the_rows_loaded_after_it(simulator, warehouse, tmp_path,
                                                          monkeypatch):
    """With ``since``, a row test reads only rows loaded after that load and ``unique``
    every row of a key a newer row holds, on raw and staging (``meta.load_column``) and
    on an incremental mart (its ``last_load_id``); a singular test reads what it says;
    a test of a node without a load column, and a run without ``since``, read
    everything."""
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    pipeline.load(base_url=simulator.url, token=TOKEN)
    session = dbt_project.Session()
    assert session.build(None, tests=True).success
    tests = dbt_project.data_tests(session.manifest)

    def test_of(name: str) -> str:
        [uid] = [u for u in tests if session.manifest.nodes[u].name == name]
        return uid

    not_null = test_of("not_null_stg_replica__order_items_order_id")
    unique = test_of("unique_stg_replica__order_items_order_item_id")
    raw_unique = test_of("source_unique_replica_order_items_order_item_id")
    lines_add_up = test_of("stg_replica__order_items__lines_add_up_to_orders")
    with duckdb.connect(str(warehouse)) as con:
        [(old, newest)] = con.execute(
            "select min(_dlt_load_id), max(_dlt_load_id) from raw.order_items").fetchall()
        # an old row broken in place keeps its load
        con.execute("update raw.order_items set order_id = null where order_item_id ="
                    " (select min(order_item_id) from raw.order_items)")
    assert session.test_nodes([not_null], since=newest).success
    assert not session.test_nodes([not_null], since=None).success
    assert not session.test_nodes([not_null], since=str(float(old) - 1)).success
    with duckdb.connect(str(warehouse)) as con:
        con.execute("update raw.order_items set order_id = 1 where order_id is null")
        # a newer row with an old row's key: a duplicate the new rows bring
        con.execute("insert into raw.order_items select * replace"
                    " ('9999999999.0' as _dlt_load_id) from raw.order_items"
                    " where order_item_id = (select max(order_item_id) from raw.order_items)")
    assert not session.test_nodes([unique], since=newest).success
    assert not session.test_nodes([raw_unique], since=newest).success
    assert session.test_nodes([not_null], since=newest).success
    with duckdb.connect(str(warehouse)) as con:
        con.execute("update raw.order_items set _dlt_load_id = ? where _dlt_load_id ="
                    " '9999999999.0'", [old])
    # the duplicate is old now: only a whole run finds it
    assert session.test_nodes([unique, raw_unique], since=newest).success
    assert not session.test_nodes([unique], since=None).success
    assert not session.test_nodes([raw_unique], since=None).success

    # a singular test reads the orders whose order or a line of it loaded since
    with duckdb.connect(str(warehouse)) as con:
        # the duplicate goes (the last row written)
        con.execute("delete from raw.order_items where rowid ="
                    " (select max(rowid) from raw.order_items)")
        con.execute("update raw.orders set subtotal_cents = subtotal_cents + 1 where"
                    " order_id = (select min(order_id) from raw.order_items)")
    assert session.test_nodes([lines_add_up], since=newest).success
    assert not session.test_nodes([lines_add_up], since=None).success
    with duckdb.connect(str(warehouse)) as con:
        con.execute("update raw.order_items set _dlt_load_id = '9999999999.0' where"
                    " order_item_id = (select min(order_item_id) from raw.order_items where"
                    " order_id = (select min(order_id) from raw.order_items))")
    assert not session.test_nodes([lines_add_up], since=newest).success

    # an incremental mart built by load reads by its last_load_id, a table mart whole
    customers = test_of("unique_dim_customers_customer_id")
    cohorts = test_of("unique_customer_cohorts_monthly_customer_cohort_monthly_id")
    with duckdb.connect(str(warehouse)) as con:
        for mart in ("dim_customers", "customer_cohorts_monthly"):
            # an old row again, as an old row: one key twice
            con.execute(f"insert into marts.{mart} select * from marts.{mart} limit 1")
    assert session.test_nodes([customers], since=newest).success
    assert not session.test_nodes([customers], since=None).success
    assert not session.test_nodes([cohorts], since=newest).success
    with duckdb.connect(str(warehouse)) as con:
        con.execute("insert into marts.dim_customers select * replace"
                    " ('9999999999.0' as last_load_id) from marts.dim_customers limit 1")
    assert not session.test_nodes([customers], since=newest).success


def test_a_project_without_data_tests_never_runs_any():
    clock = Clock()
    rhythm = Rhythm({}, ["m.a"], every=0, budget=1.0, clock=clock)
    assert rhythm.next_slice() is None and not rhythm.running


def test_the_graph_order_puts_parents_first():
    child_map = {"source.s.raw": ["model.p.stg"], "model.p.stg": ["model.p.b", "model.p.a"],
                 "model.p.a": ["model.p.z", "test.p.t_z"], "model.p.b": ["model.p.z"],
                 "model.p.z": [], "model.p.lone": [], "test.p.t_z": []}
    parent_map = {"model.p.stg": ["source.s.raw"], "model.p.a": ["model.p.stg"],
                  "model.p.b": ["model.p.stg"], "model.p.z": ["model.p.a", "model.p.b"],
                  "test.p.t_z": ["model.p.a"]}

    def node(kind: str, *parents: str, attached: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(resource_type=kind, attached_node=attached,
                               depends_on=SimpleNamespace(nodes=list(parents)))

    manifest = SimpleNamespace(
        child_map=child_map, parent_map=parent_map, sources={"source.s.raw": None},
        nodes={"model.p.z": node("model"), "model.p.a": node("model"),
               "model.p.b": node("model"), "model.p.stg": node("model"),
               "model.p.lone": node("model"), "test.p.t_z": node("test", "model.p.a"),
               "test.p.t_stg": node("test", "model.p.stg", attached="model.p.stg")})
    assert dbt_project.graph_order(manifest) == [
        "model.p.lone", "source.s.raw", "model.p.stg", "model.p.a", "model.p.b",
        "model.p.z", "test.p.t_stg", "test.p.t_z"]
    assert dbt_project.data_tests(manifest) == {"test.p.t_z": "model.p.a",
                                                "test.p.t_stg": "model.p.stg"}


def test_a_negative_interval_or_slice_is_refused_before_anything_runs(warehouse, monkeypatch):
    def no_cycle(*args, **kwargs):
        raise AssertionError("watch ran a cycle")

    monkeypatch.setattr(dbt_project, "Session", no_cycle)
    with pytest.raises(ValueError, match="test_slice_seconds"):
        watch(max_cycles=1, test_slice_seconds=-1)
    with pytest.raises(ValueError, match="test_interval"):
        watch(max_cycles=1, test_interval=-5)


@pytest.fixture
def published(tmp_path: Path, warehouse: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "published" / "analytics.duckdb"
    monkeypatch.setenv("SALESFLOW_PUBLISHED_PATH", str(path))
    return path


TARGET_MART = "product_sales_daily"  # no mart depends on it
# one row without its date fails one data test of the mart (not_null), in one slice;
# written as a newer load would write it (the periodic runs read the rows of newer loads)
FIRST_ROW = f"select min({TARGET_MART}_id) from marts.{TARGET_MART}"
SET_DATE = (f"update marts.{TARGET_MART} set sales_date = ?, last_load_id = '9999999999.0'"
            f" where {TARGET_MART}_id = ?")


def test_a_failing_test_in_one_slice_holds_its_mart_until_that_slice_passes(
    simulator, warehouse, published, tmp_path, monkeypatch
):
    """A platform with nothing new: after the first build, every cycle runs one slice.
    The mart's data is broken once its test has passed; the slice with that test holds
    it back, the other slices run on — those before it in the next run cover the mart
    too, pass, and leave it held — and the slice with that test, passing again after
    the repair, releases it."""
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    cycles: list[dict] = []
    broken: dict = {}
    stop = threading.Event()

    def on_cycle(stats) -> None:
        last = dict(stats.last)
        status = health.Health(config.pipelines_dir()).mart_status()
        last["held"] = sorted(marts.held_back(status))
        cycles.append(last)
        if stats.cycles == 1:
            # a first run of the tests (and its first slice) came with the build
            with duckdb.connect(str(warehouse)) as con:
                [(row,)] = con.execute(FIRST_ROW).fetchall()
                [(day,)] = con.execute(f"select sales_date from marts.{TARGET_MART}"
                                       f" where {TARGET_MART}_id = ?", [row]).fetchall()
                con.execute(SET_DATE, [None, row])
            broken.update(row=row, day=day)
        elif last.get("tests_failed") and "fixed" not in broken:
            assert TARGET_MART in last["held"], cycles
            with duckdb.connect(str(warehouse)) as con:
                con.execute(SET_DATE, [broken["day"], broken["row"]])  # repaired
            broken["fixed"] = True
        elif "fixed" in broken and TARGET_MART not in last["held"]:
            stop.set()

    stats = watch(interval=0, max_cycles=60, test_interval=0, test_slice_seconds=0.3,
                  stop=stop, on_cycle=on_cycle, base_url=simulator.url, token=TOKEN)
    assert stats.failures == 0 and stats.builds == 1, cycles
    slices = [c for c in cycles if "tests_slice" in c]
    assert all(c.get("test_s") is not None for c in slices)
    total = int(slices[0]["tests_slice"].split("/")[1])
    assert total >= 3, cycles
    [failed] = [i for i, c in enumerate(cycles) if c.get("tests_failed")]
    [released] = [i for i, c in enumerate(cycles)
                  if i > failed and TARGET_MART not in c["held"]]
    between = cycles[failed + 1:released]
    # the mart stays held while the other slices run and pass: the rest of that run,
    # then the next run's slices up to the one with the failing test, which covered
    # the mart too (tests of the models it is built from)
    assert all(c["held"] == cycles[failed]["held"] and "tests_slice" in c
               and not c.get("tests_failed") for c in between), cycles
    [done] = [i for i, c in enumerate(between) if c.get("tests_done")]
    number, of = between[done]["tests_slice"].split("/")
    assert number == of and len(between[:done]) == int(of) - int(
        cycles[failed]["tests_slice"].split("/")[0]) - 1, cycles
    next_run = between[done + 1:]
    assert next_run and next_run[0]["tests_slice"].startswith("1/"), cycles
    assert not cycles[released].get("tests_failed"), cycles
