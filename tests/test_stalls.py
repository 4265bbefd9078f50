"""Stall alarms: an entity, or the whole platform, whose data stopped while every cycle
succeeds — judged from constructed histories, then through real cycles."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from loaders import cli, config, dbt_project
from loaders.config import StallSettings
from loaders.monitoring import alarms, health, rhythm, status
from loaders.monitoring.alarms import AlarmCheck
from loaders.runners import pipeline
from loaders.runners.pipeline import LoadResult
from simulator import faults
from simulator.faults import Faults
from tests.support import TOKEN
from tests.support.simulator import Simulator, clear_drifts, drift, start_simulator
from tests.support.sinks import logged
from tests.support.warehouse import dbt_invoke

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
SETTINGS = StallSettings(min_seconds=60, gap_factor=5, min_arrivals=5, history_hours=24,
                         lag_max_seconds=120)
FLOWING = ("orders", "order_items", "events")
EVERY = 10  # seconds between cycles


def cycles(minutes: float, arriving: dict[str, float | None], every: float = EVERY,
           start: datetime = T0) -> list[tuple[str, datetime, int]]:
    """``raw.pipeline_loads`` rows: a cycle every ``every`` seconds for ``minutes``; each
    entity in ``arriving`` brings new rows until that minute (None: throughout)."""
    rows = []
    for i in range(int(minutes * 60 / every) + 1):
        at = start + timedelta(seconds=i * every)
        for entity, until in arriving.items():
            new = until is None or at <= start + timedelta(minutes=until)
            rows.append((entity, at, 12 if new else 0))
    return rows


def judged(rows: Iterable[tuple[str, datetime, int]], settings: StallSettings = SETTINGS,
           lag: float | None = None, remembered=None) -> dict[str, list[alarms.Condition]]:
    """Judge the history as a cycle would: its last row's time is now."""
    rows = list(rows)
    now = max(r[1] for r in rows)
    earlier = [r for r in rows if r[1] < now]
    new_rows = {e: n for e, at, n in rows if at == now}
    seen = rhythm.with_cycle(rhythm.history(earlier), now, new_rows, new_rows)
    return rhythm.judge(seen, settings, lag, remembered)


def found(result: dict[str, list[alarms.Condition]]) -> list[tuple[str, str | None]]:
    return [(c.kind, c.entity) for conditions in result.values() for c in conditions]


def test_an_entity_that_stops_while_others_flow_is_one_entity_stalled_alarm():
    history = cycles(30, {"orders": 20, "order_items": None, "events": None})
    result = judged(history)
    assert found(result) == [("entity_stalled", "orders")]
    [c] = result["entity_stalled"]
    assert c.title.startswith("orders stalled") and "events, order_items" in c.title
    assert "No new orders since 2026-11-23T10:20:00+00:00 (10 min)" in c.text
    assert "usually every 10 s" in c.text and "after 60 s of silence" in c.text
    assert "order_items (last 2026-11-23T10:30:00+00:00)" in c.text
    assert "`salesflow quarantine`" in c.text and "`salesflow status`" in c.text
    assert c.details["kept_flowing"] == {"events": "2026-11-23T10:30:00+00:00",
                                         "order_items": "2026-11-23T10:30:00+00:00"}
    assert len(c.text) < 1000 and len(c.text.splitlines()) <= 6  # all of it in status


def test_a_silence_shorter_than_the_threshold_is_no_alarm():
    # orders' threshold: max(60 s, 5 x 10 s); silent for 50 s
    history = cycles(21, {"orders": 20 + 10 / 60, "order_items": None, "events": None})
    assert found(judged(history)) == []


def test_all_entities_stopping_is_one_platform_alarm_not_one_per_entity():
    # stops a few cycles apart, within each other's thresholds: one cause
    history = cycles(30, {"orders": 20, "order_items": 20.25, "events": 20.5, "regions": 0})
    result = judged(history)
    assert found(result) == [("platform_stalled", None)]
    [c] = result["platform_stalled"]
    assert "no new data for 10 min from events, order_items, orders" in c.title
    assert "Nothing new from any entity since 2026-11-23T10:20:30+00:00" in c.text
    assert "orders 2026-11-23T10:20:00+00:00 (usually every 10 s" in c.text
    assert "Marts are stale although every load succeeds" in c.text
    assert "regions" not in c.text  # reference data has no rhythm: no evidence either
    assert set(c.details["entities"]) == set(FLOWING)


def test_an_entity_stalled_before_the_platform_stopped_keeps_its_own_alarm():
    history = cycles(40, {"orders": 10, "order_items": 30, "events": 30})
    assert found(judged(history)) == [("entity_stalled", "orders"), ("platform_stalled", None)]


def test_entities_coming_back_cycles_apart_after_a_platform_stall_are_no_entity_alarm():
    entities = (*FLOWING, "customers")
    stalled = cycles(30, {e: 20 for e in entities})
    back = T0 + timedelta(minutes=30)
    comeback = [(e, back + timedelta(seconds=s), 0 if e == "customers" else 7)
                for s in (EVERY, 2 * EVERY) for e in entities]
    assert found(judged(stalled)) == [("platform_stalled", None)]
    assert found(judged(stalled + comeback)) == []  # customers' next rows come later


def test_a_quiet_or_static_platform_never_alarms():
    static = cycles(60, {e: 0 for e in (*FLOWING, "regions", "products")})  # backfill only
    assert found(judged(static)) == []
    assert found(judged(static, StallSettings())) == []  # nor with the defaults
    nothing_yet = cycles(60, {e: -1 for e in FLOWING})  # never a row
    assert found(judged(nothing_yet)) == []
    # reference data changing now and then, or in a burst, beside a flowing platform
    rare = every_minutes(cycles(60, {"regions": 30}), 15)  # 3 arrivals, silent 30 min
    burst = cycles(60, {"products": 40 / 60})  # 5 cycles in a row, silent an hour
    flowing = cycles(60, {"orders": None})
    assert found(judged([*rare, *burst, *flowing])) == []


def every_minutes(rows: list[tuple[str, datetime, int]], minutes: int) -> list:
    """``rows`` with new rows only every ``minutes`` minutes."""
    return [(e, at, n if (at - T0).total_seconds() % (minutes * 60) == 0 else 0)
            for e, at, n in rows]


def test_an_entity_with_a_slow_rhythm_is_judged_by_its_own_gap():
    # customers every 5 min (threshold 25 min), orders every cycle
    def history(silent_minutes: int) -> list:
        end = 120 + silent_minutes
        return [*every_minutes(cycles(end, {"customers": 120}), 5),
                *cycles(end, {"orders": None})]

    assert found(judged(history(20))) == []
    result = judged(history(30))
    assert found(result) == [("entity_stalled", "customers")]
    assert "usually every 5 min" in result["entity_stalled"][0].text
    assert "after 25 min of silence" in result["entity_stalled"][0].text


def test_new_rows_clear_the_alarm_with_one_recovery():
    stalled = cycles(30, {"orders": 20, "order_items": None, "events": None})
    back = stalled + [(e, T0 + timedelta(minutes=30, seconds=EVERY), 12) for e in FLOWING]
    open_alarms: dict = {}
    changes = []
    for i, history in enumerate((stalled, stalled, back)):
        check = AlarmCheck()
        for kind, conditions in judged(history).items():
            check.add(kind, conditions)
        changes.append(alarms.update(open_alarms, check, T0 + timedelta(minutes=i), str(i)))
    assert [(len(c.opened), len(c.updated), len(c.closed)) for c in changes] == [
        (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    assert not open_alarms


def test_a_replication_lag_over_the_threshold_is_a_platform_stall():
    flowing = cycles(30, {e: None for e in FLOWING})
    assert found(judged(flowing, lag=30)) == []
    result = judged(flowing, lag=600)
    assert found(result) == [("platform_stalled", None)]
    [c] = result["platform_stalled"]
    assert "the replica is 10 min behind production" in c.title
    assert "replication lag of 10 min (alarm over 2 min)" in c.text
    assert c.details["replication_lag_seconds"] == 600


def test_a_stall_without_lag_reported_says_production_may_have_stopped():
    stopped = cycles(30, {e: 20 for e in FLOWING})
    [c] = judged(stopped, lag=0.5)["platform_stalled"]
    assert "production itself may have stopped writing" in c.text
    [c] = judged(stopped, lag=None)["platform_stalled"]
    assert "reports no replication lag" in c.text


def test_a_stall_longer_than_the_history_stays_open_until_its_data_comes_back():
    stalled = cycles(30, {"orders": 20, "order_items": None, "events": None})
    [c] = judged(stalled)["entity_stalled"]
    state = {"entity_stalled:orders": {"kind": c.kind, "entity": c.entity,
                                       "details": c.details}}
    later = T0 + timedelta(hours=30)  # orders' arrivals are past the history read
    forgotten = cycles(30, {"orders": -1, "order_items": None, "events": None}, start=later)
    assert found(judged(forgotten)) == []  # without memory: a false recovery
    result = judged(forgotten, remembered=rhythm.remembered(state))
    assert found(result) == [("entity_stalled", "orders")]
    assert "No new orders since 2026-11-23T10:20:00+00:00 (30.2 h)" in (
        result["entity_stalled"][0].text)
    back = forgotten + [("orders", later + timedelta(minutes=31), 3)]
    assert found(judged(back, remembered=rhythm.remembered(state))) == []


def test_an_entity_not_loaded_this_cycle_is_judged_by_its_last_load():
    # orders loaded until minute 20 with new rows, then left out of the cycles
    history = [r for r in cycles(30, {"orders": None, "order_items": None, "events": None})
               if r[0] != "orders" or r[1] <= T0 + timedelta(minutes=20)]
    assert found(judged(history)) == []


def test_stall_settings_come_from_the_environment_and_bad_ones_say_which(monkeypatch):
    monkeypatch.setenv("MONITORING__STALL_MIN_SECONDS", "2")
    monkeypatch.setenv("MONITORING__REPLICATION_LAG_MAX_SECONDS", "3.5")
    monkeypatch.setenv("SOURCES__REPLICA__HEALTH_PATH", "")
    s = config.stall_settings()
    assert (s.min_seconds, s.gap_factor, s.lag_max_seconds) == (2, 5, 3.5)
    assert not config.lag_source().enabled
    monkeypatch.setenv("MONITORING__STALL_GAP_FACTOR", "0.5")
    with pytest.raises(ValueError, match="stall_gap_factor must be at least 1.*"
                                         "MONITORING__STALL_GAP_FACTOR"):
        config.stall_settings()


# -- through real cycles ----------------------------------------------------------------


@pytest.fixture
def quick_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stalls judged in seconds: cycles here follow each other about every second, and
    orders, order_items, events and customers arrive in each. Products change every few
    seconds at random: with 8 arrivals needed, not within a test's seconds."""
    monkeypatch.setenv("MONITORING__STALL_MIN_SECONDS", "2")
    monkeypatch.setenv("MONITORING__STALL_GAP_FACTOR", "3")
    monkeypatch.setenv("MONITORING__STALL_MIN_ARRIVALS", "8")


def stalls(result: LoadResult) -> list[tuple[str, str | None]]:
    return [(c.kind, c.entity) for c in result.alarms.conditions]


def load(sim: Simulator) -> LoadResult:
    return pipeline.load(base_url=sim.url, token=TOKEN)


# stalls are judged in seconds: cycles start at most this often, as watch's interval
# paces them, however quick a cycle with nothing new is
CYCLE_EVERY_S = 1.0


def load_until(sim: Simulator, done: Callable[[LoadResult], bool], most: int) -> list[LoadResult]:
    """Cycles about a second apart until one is ``done``; fails after ``most``."""
    results: list[LoadResult] = []
    while len(results) < most:
        started = time.monotonic()
        results.append(load(sim))
        if done(results[-1]):
            return results
        time.sleep(max(0.0, CYCLE_EVERY_S - (time.monotonic() - started)))
    raise AssertionError(f"not done after {most} cycles: {[stalls(r) for r in results]}")


def warm_up(sim: Simulator) -> None:
    """Enough cycles with new rows for the flowing entities to have a rhythm."""
    assert [stalls(load(sim)) for _ in range(8)] == [[]] * 8


def alarm_notices(state_dir: Path) -> list[dict]:
    return [n for n in logged(state_dir) if n["kind"] in rhythm.KINDS
            or n["kind"] == "recovery" and n["details"]["kind"] in rhythm.KINDS]


def kinds(state_dir: Path) -> list[tuple[str, str | None]]:
    return [(n["kind"], n["details"].get("entity")) for n in alarm_notices(state_dir)]


def health_alarms(tmp_path: Path, warehouse: Path) -> set[str | None]:
    """``open_alarm_kinds`` in ``marts.pipeline_health`` (built once: it is a view)."""
    if not (tmp_path / "target").exists():
        dbt_invoke(tmp_path, "build", "--select", "pipeline_health")
        dbt_project.release_warehouse()
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("select open_alarm_kinds from marts.pipeline_health").fetchall()
    return {r[0] for r in rows}


def test_a_replication_pause_is_one_alarm_red_meanwhile_then_one_recovery(
    platform_dir, warehouse, monkeypatch, capsys, tmp_path
):
    # the lag the API reports alone: the data's rhythm would take a minute here
    monkeypatch.setenv("MONITORING__STALL_MIN_SECONDS", "60")
    monkeypatch.setenv("MONITORING__REPLICATION_LAG_MAX_SECONDS", "1")
    state = config.pipelines_dir()
    sim = start_simulator(platform_dir, "--rate", "40")
    try:
        assert stalls(load(sim)) == []
        faults.save(platform_dir, Faults(replication_paused_until=faults.window(600)))
        paused = load_until(sim, lambda r: bool(stalls(r)), most=8)
        assert stalls(paused[-1]) == [("platform_stalled", None)]
        assert cli.main(["status"]) == 1
        out = capsys.readouterr().out
        assert "ALARM: Platform stalled: the replica is" in out
        assert "behind production although loads succeed" in out
        assert "ALARM: platform_stalled" in next(
            line for line in out.splitlines() if "orders " in line)
        assert health_alarms(tmp_path, warehouse) == {"platform_stalled"}
        assert stalls(load(sim)) == [("platform_stalled", None)]  # still open: no notice
        faults.save(platform_dir, Faults())  # replication resumes and catches up
        load_until(sim, lambda r: r.total_new > 0 and not stalls(r), most=8)
    finally:
        sim.stop()
    assert kinds(state) == [("platform_stalled", None), ("recovery", None)]
    opened = alarm_notices(state)[0]
    assert opened["details"]["evidence"]["replication_lag_seconds"] > 1
    assert "The API reports a replication lag of" in opened["text"]
    assert cli.main(["status"]) == 0
    assert health_alarms(tmp_path, warehouse) == {None}


def test_a_platform_that_stops_writing_is_one_alarm_then_one_recovery(
    platform_dir, warehouse, quick_stalls
):
    state = config.pipelines_dir()
    live = start_simulator(platform_dir, "--rate", "40")
    try:
        warm_up(live)
    finally:
        live.stop()
    quiet = start_simulator(platform_dir)  # the API answers, nothing new is written
    try:
        stalled = load_until(quiet, lambda r: bool(stalls(r)), most=10)
        assert stalls(stalled[-1]) == [("platform_stalled", None)]  # not one per entity
        assert all(r.outcome == "success_no_data" for r in stalled[1:])
        assert stalls(load(quiet)) == [("platform_stalled", None)]
    finally:
        quiet.stop()
    assert kinds(state) == [("platform_stalled", None)]  # once, while it lasts
    [opened] = alarm_notices(state)
    assert "production itself may have stopped writing" in opened["text"]  # no lag
    live = start_simulator(platform_dir, "--rate", "40")
    try:
        load_until(live, lambda r: r.total_new > 0, most=10)
    finally:
        live.stop()
    assert kinds(state) == [("platform_stalled", None), ("recovery", None)]


def test_an_entity_stalled_while_the_others_flow_is_one_alarm_then_one_recovery(
    platform_dir, warehouse, quick_stalls, capsys
):
    state = config.pipelines_dir()
    sim = start_simulator(platform_dir, "--rate", "40")
    try:
        warm_up(sim)
        drift(sim, "stall", "orders")  # the API serves no order changed from now on
        stalled = load_until(sim, lambda r: bool(stalls(r)), most=10)
        assert stalls(stalled[-1]) == [("entity_stalled", "orders")]
        assert cli.main(["status"]) == 1
        assert "ALARM: orders stalled: nothing new for" in capsys.readouterr().out
        clear_drifts(sim)
        load_until(sim, lambda r: "orders" in r.new_rows, most=10)
    finally:
        sim.stop()
    assert kinds(state) == [("entity_stalled", "orders"), ("recovery", "orders")]
    text = alarm_notices(state)[0]["text"]
    assert "No new orders since" in text and "`salesflow quarantine`" in text
    assert "Still arriving meanwhile: customers" in text and "order_items (last" in text


def test_an_unreadable_replication_lag_never_fails_the_cycle(
    simulator, warehouse, monkeypatch, caplog
):
    monkeypatch.setenv("SOURCES__REPLICA__HEALTH_PATH", "no/such/health")
    with caplog.at_level(logging.WARNING, logger="loaders.runners.pipeline"):
        first = pipeline.load(base_url=simulator.url, token=TOKEN)
        second = pipeline.load(base_url=simulator.url, token=TOKEN)
    assert (first.outcome, second.outcome) == ("success_new_data", "success_no_data")
    assert set(rhythm.KINDS) <= second.alarms.checked and not second.alarms.conditions
    assert "/no/such/health answered 404 for the replication lag" in caplog.text
    assert "judged by the data's rhythm alone" in caplog.text


def test_status_shows_each_entitys_last_new_data_and_how_old_its_newest_record_is(
    simulator, warehouse, capsys
):
    def ended() -> str:
        pipeline.load(base_url=simulator.url, token=TOKEN)
        return health.Health(config.pipelines_dir()).state()["last_cycle"]["ended_at"]

    first, last = ended(), ended()  # the second brings nothing new
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    report = status.collect(config.pipelines_dir())
    orders = next(e for e in report["entities"] if e["entity"] == "orders")
    assert (orders["last_new_data_at"], orders["last_success_at"]) == (first, last)
    age = datetime.now(timezone.utc) - orders["newest_record_at"]
    assert orders["newest_record_age_minutes"] == pytest.approx(age.total_seconds() / 60,
                                                                abs=1)
    assert "last new data" in out and "newest record (age)" in out
    assert f"{first:<26}" in next(line for line in out.splitlines() if "orders" in line)
    assert f"({age.days} d)" in out or f"({age.days + 1} d)" in out
