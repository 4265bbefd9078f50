"""A failing build publishes what is good: only the marts a failure reaches are held
back, analysts' file and `salesflow status` say which, and a failing build is one
incident (one notice, one recovery)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from loaders import config
from loaders.monitoring import marts, status
from loaders.runners import publish
from loaders.runners.watch import watch
from tests.support import TOKEN
from tests.support.simulator import clear_drifts, drift, start_simulator
from tests.support.sinks import logged

# the marts downstream of stg_replica__events (and so of its tests), and the exposure
EVENTS_MARTS = ["fct_sessions", "funnel_daily"]
# where tolerated dirt fails the build (dbt_project.yml, var dirt_error_rows)
DIRT_ERROR_ROWS = 1000


@pytest.fixture
def published(tmp_path: Path, warehouse: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "published" / "analytics.duckdb"
    monkeypatch.setenv("SALESFLOW_PUBLISHED_PATH", str(path))
    return path


def marts_warehouse(path: Path, version: int, tables: tuple[str, ...] = ("a", "b")) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("create schema if not exists marts")
        for t in tables:
            con.execute(f"create or replace table marts.{t} as select {version} as v")


def versions(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [r[0] for r in con.execute(
            "select table_name from duckdb_tables() where schema_name = 'marts'"
            " and table_name != '_published'").fetchall()]
        return {t: con.execute(f"select v from marts.{t}").fetchone()[0] for t in tables}


def test_held_marts_keep_the_published_version_also_from_the_spare(tmp_path):
    wh, target = tmp_path / "wh.duckdb", tmp_path / "pub" / "analytics.duckdb"
    marts_warehouse(wh, 1)
    publish.publish(wh, target)  # version 1 of both
    marts_warehouse(wh, 2)
    publish.publish(wh, target, changed=["a", "b"])  # version 2; the spare holds 1
    marts_warehouse(wh, 3, ("a", "b", "c"))
    # b and the never-published c held: b stays at 2 (not the spare's 1), c absent
    pub = publish.publish(wh, target, changed=["a", "b", "c"], hold=["b", "c"])
    assert versions(target) == {"a": 3, "b": 2} and not pub.in_place
    assert pub.held == ("b", "c")
    # a full publication holds back too
    marts_warehouse(wh, 4, ("a", "b", "c"))
    publish.publish(wh, target, hold=["b"])
    assert versions(target) == {"a": 4, "b": 2, "c": 4}
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.execute("select held_back_tables from marts._published").fetchone()[0] == ["b"]


def published_state(path: Path) -> dict:
    with duckdb.connect(str(path), read_only=True) as con:
        refreshed, held = con.execute(
            "select refreshed_tables, held_back_tables from marts._published").fetchone()
        health = con.execute(
            "select distinct held_back_marts, marts_held_back, health_status"
            " from marts.pipeline_health").fetchall()
        statuses = dict(con.execute(
            "select mart_name, mart_status from marts.mart_status").fetchall())
        loads = dict(con.execute(
            "select 'fct_sessions', max(last_load_id) from marts.fct_sessions union all"
            " select 'fct_orders', max(last_load_id) from marts.fct_orders").fetchall())
    return {"refreshed": refreshed, "held": held, "health": health, "status": statuses,
            "loads": loads}


def test_a_failing_test_holds_back_only_its_marts_and_is_one_incident(
    platform_dir, warehouse, published
):
    sim = start_simulator(platform_dir, "--rate", "30")
    seen: list[dict] = []
    reports: list[dict] = []

    def on_cycle(stats) -> None:
        seen.append({**published_state(published), "last": dict(stats.last)})
        if stats.cycles == 1:
            # the platform starts sending a value events' staging does not accept, on
            # every event record, and a new field (a change of shape: the next build
            # runs the data tests); and the records already loaded carry it too: past
            # dirt_error_rows rows, tolerated dirt is a broken feed and fails the build
            drift(sim, "new_value", "events", "platform", value="smart_tv", share=1.0)
            drift(sim, "add", "events", "screen_size", value="1080p")
            with duckdb.connect(str(warehouse)) as con:
                con.execute("update raw.events set platform = 'smart_tv'")
                flood = con.execute("select count(*) from raw.events").fetchone()[0]
            assert flood > DIRT_ERROR_ROWS
        if stats.cycles == 3:
            reports.append(status.collect(config.pipelines_dir()))
            # fixed upstream, and the records already loaded repaired
            clear_drifts(sim)
            with duckdb.connect(str(warehouse)) as con:
                con.execute("update raw.events set platform = 'web'"
                            " where platform = 'smart_tv'")

    try:
        stats = watch(interval=0.5, max_cycles=4, on_cycle=on_cycle, base_url=sim.url,
                      token=TOKEN)
    finally:
        sim.stop()
    assert stats.failures == 0 and stats.published == 4, [s["last"] for s in seen]
    first, failing, fixed = seen[0], seen[1:3], seen[3]
    assert first["held"] == [] and set(first["status"].values()) == {"current"}
    for s in failing:
        assert s["last"].get("held_back") == EVENTS_MARTS, [x["last"] for x in seen]
        assert s["held"] == EVENTS_MARTS
        assert not set(EVENTS_MARTS) & set(s["refreshed"])
        assert {"fct_orders", "product_sales_hourly"} <= set(s["refreshed"])
        # analysts keep the last good version of the held marts, fresh others
        assert s["loads"]["fct_sessions"] == first["loads"]["fct_sessions"]
        assert s["health"] == [("fct_sessions, funnel_daily", 2, "red")]
        assert {m for m, v in s["status"].items() if v == "held_back"} == set(EVENTS_MARTS)
    assert failing[0]["loads"]["fct_orders"] < failing[1]["loads"]["fct_orders"]
    assert fixed["held"] == [] and set(EVENTS_MARTS) <= set(fixed["refreshed"])
    assert fixed["loads"]["fct_sessions"] > first["loads"]["fct_sessions"]
    assert fixed["health"][0][:2] == (None, 0)

    [report] = reports
    assert [m["mart"] for m in report["held_back_marts"]] == EVENTS_MARTS
    assert "stg_replica__events_platform" in report["held_back_marts"][0]["held_back_by"]
    assert report["status"] != status.GREEN
    rendered = status.render(report)
    assert "2 HELD BACK" in rendered and "fct_sessions" in rendered

    notices = logged(warehouse.parent / "dlt")
    failed = [n for n in notices if n["kind"] == "build_failed"]
    recovered = [n for n in notices if n["kind"] == "recovery"
                 and n["details"].get("kind") == "build_failed"]
    assert len(failed) == 1 and len(recovered) == 1, [n["title"] for n in notices]
    assert "fct_sessions, funnel_daily" in failed[0]["text"]
    assert "funnel_and_acquisition_review" in failed[0]["text"]
    assert "published again: fct_sessions, funnel_daily" in recovered[0]["text"]


def test_a_hold_is_released_only_by_a_run_that_can_tell():
    by_test = marts.Hold("test.salesflow.accepted_values_x", "accepted_values_x (fail): 3")
    by_model = marts.Hold("model.salesflow.stg_y", "stg_y (error): boom")

    def run(kind, tests, held=None, scope=("m1", "m2", "m3")):
        return marts.Verdict(kind, held or {}, set(scope), tests)

    status, _ = marts.judge({}, ["m1", "m2", "m3"],
                            run(marts.BUILD, True, {"m1": by_test, "m2": by_model}),
                            "t1", published=True)
    assert sorted(marts.held_back(status)) == ["m1", "m2"]
    assert status["m3"]["last_published_at"] == "t1" and status["m1"]["last_published_at"] is None
    # models only: the model's hold is judged, the test's is not
    status, released = marts.judge(status, ["m1", "m2", "m3"], run(marts.BUILD, False),
                                   "t2", published=True)
    assert released == ["m2"] and status["m1"]["since"] == "t1"
    # a test run out of the mart's reach judges nothing of it; one within releases it
    status, released = marts.judge(status, ["m1", "m2", "m3"],
                                   run(marts.TESTS, True, scope=("m3",)), "t3", False)
    assert released == [] and marts.still_failing(status, marts.BUILD) == ["m1"]
    status, released = marts.judge(status, ["m1", "m2", "m3"], run(marts.TESTS, True),
                                   "t4", published=False)
    assert released == ["m1"] and status["m1"]["last_published_at"] is None
    assert marts.held_back(status) == {}


def test_a_slice_releases_a_mart_only_by_running_the_test_that_holds_it():
    failing = "test.salesflow.non_negative_m1_units"
    other = "test.salesflow.not_null_stg_x_id"  # upstream of m1: covers it too
    held = {"m1": marts.Hold(failing, "non_negative_m1_units (fail): 1")}
    status, _ = marts.judge({}, ["m1", "m2"],
                            marts.Verdict(marts.TESTS, held, {"m1"}, True,
                                          ran=frozenset({failing})), "t1", False)
    assert sorted(marts.held_back(status)) == ["m1"]
    # another slice covers m1 and passes: it cannot tell about the failing test
    status, released = marts.judge(status, ["m1", "m2"],
                                   marts.Verdict(marts.TESTS, {}, {"m1", "m2"}, True,
                                                 ran=frozenset({other})), "t2", False)
    assert released == [] and sorted(marts.held_back(status)) == ["m1"]
    # the slice holding the failing test passes: released
    status, released = marts.judge(status, ["m1", "m2"],
                                   marts.Verdict(marts.TESTS, {}, {"m1"}, True,
                                                 ran=frozenset({failing})), "t3", False)
    assert released == ["m1"] and marts.held_back(status) == {}
