"""Outages, errors, freshness and `salesflow status`, with the simulator's faults."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest
from dbt.cli.main import dbtRunner

from loaders import cli, dbt_project
from loaders.monitoring import health, redact, status
from loaders.replica import ReplicaAuthError, ReplicaUnavailable
from loaders.runners import pipeline
from simulator import faults
from simulator.faults import Faults
from tests.support import ROOT, TOKEN
from tests.support.simulator import start_simulator
from tests.support.warehouse import catch_up_and_reconcile


@pytest.fixture
def quick_failures(monkeypatch):
    """Fail a cycle in about a second instead of minutes of backoff."""
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("RUNTIME__REQUEST_BACKOFF_FACTOR", "0.1")
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_RETRY_DELAY", "0.5")


def notices(warehouse: Path) -> list[dict]:
    path = warehouse.parent / "dlt" / "notifications.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def query(warehouse: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def failing_load(sim, exc=ReplicaUnavailable, token=TOKEN):
    with pytest.raises(exc):
        pipeline.load(base_url=sim.url, token=token)


def wait_until_serving(sim, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if sim.get("/health").ok:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the simulator did not come back")
        time.sleep(0.1)


def test_an_outage_over_several_cycles_is_one_alert_one_recovery_and_nothing_lost(
    platform_dir, warehouse, quick_failures
):
    sim = start_simulator(platform_dir, "--rate", "40")
    try:
        pipeline.load(base_url=sim.url, token=TOKEN)
        faults.save(platform_dir, Faults(outage_until=faults.window(600)))
        time.sleep(1)  # the server closes its port within its fault poll
        failing_load(sim)
        failing_load(sim)
        failing_load(sim)
        time.sleep(2)  # orders keep arriving on the platform meanwhile
        faults.save(platform_dir, Faults())  # the outage ends
        wait_until_serving(sim)
        recovered = pipeline.load(base_url=sim.url, token=TOKEN)
        assert recovered.outcome == "success_new_data"
        pipeline.load(base_url=sim.url, token=TOKEN)
    finally:
        sim.stop()
    catch_up_and_reconcile(platform_dir, warehouse)  # 0 lost, 0 duplicated

    kinds = [n["kind"] for n in notices(warehouse)]
    assert kinds.count("outage") == 1 and kinds.count("recovery") == 1, kinds
    recovery = next(n for n in notices(warehouse) if n["kind"] == "recovery")
    assert recovery["details"]["rows_caught_up"] == recovered.total_new > 0
    assert recovery["details"]["failed_cycles"] == 3
    assert recovery["details"]["duration_seconds"] > 0
    [(kind, family, ended, failed, caught)] = query(
        warehouse,
        "select kind, family, ended_at, failed_cycles, rows_caught_up"
        " from raw.pipeline_incidents",
    )
    assert (kind, family, failed) == ("source_unavailable", "outage", 3)
    assert ended is not None and caught > 0
    outcomes = [r[0] for r in query(warehouse, "select outcome from raw.pipeline_cycles"
                                               " order by started_at")]
    assert outcomes[:5] == ["success_new_data"] + ["source_unavailable"] * 3 + [
        "success_new_data"
    ]


def test_maintenance_and_hard_outage_are_told_apart(simulator, warehouse, quick_failures):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    faults.save(simulator.dir, Faults(maintenance_until=faults.window(600)))
    failing_load(simulator)
    faults.save(simulator.dir, Faults())
    pipeline.load(base_url=simulator.url, token=TOKEN)
    faults.save(simulator.dir, Faults(outage_until=faults.window(600)))
    time.sleep(1)
    failing_load(simulator)
    incidents = query(
        warehouse, "select kind, family, ended_at is null from raw.pipeline_incidents"
        " order by started_at"
    )
    assert incidents == [("maintenance", "outage", False), ("source_unavailable", "outage", True)]
    titles = [n["title"] for n in notices(warehouse) if n["kind"] == "outage"]
    assert "maintenance" in titles[0] and "unavailable" in titles[1]
    faults.save(simulator.dir, Faults())


def test_an_auth_error_is_not_reported_as_an_outage(simulator, warehouse, quick_failures):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    failing_load(simulator, ReplicaAuthError, token="wrong-token")
    failing_load(simulator, ReplicaAuthError, token="wrong-token")
    pipeline.load(base_url=simulator.url, token=TOKEN)
    kinds = [n["kind"] for n in notices(warehouse)]
    assert kinds == ["auth_error", "recovery"]
    assert "token" in notices(warehouse)[0]["text"]
    assert TOKEN not in json.dumps(notices(warehouse))
    [(kind, family, failed)] = query(
        warehouse, "select kind, family, failed_cycles from raw.pipeline_incidents"
    )
    assert (kind, family, failed) == ("auth_error", "error", 2)


def freshness(tmp_path: Path) -> dict[str, str]:
    result = dbtRunner().invoke([
        "source", "freshness", "--select", "source:replica",
        "--project-dir", str(ROOT), "--profiles-dir", str(ROOT),
        "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
    ])
    dbt_project.release_warehouse()
    # the project's on-run-start hook is among the results too
    return {r.node.name: str(r.status) for r in result.result.results
            if r.node.resource_type == "source"}


def age_loads(warehouse: Path, minutes: int) -> None:
    with duckdb.connect(str(warehouse)) as con:
        con.execute(
            f"update raw.pipeline_loads set loaded_at = now() - interval {minutes} minute"
        )


def test_freshness_turns_warn_then_error_when_loading_stops(simulator, warehouse, tmp_path):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    assert set(freshness(tmp_path).values()) == {"pass"}
    age_loads(warehouse, 45)  # past the 30-minute warning
    assert set(freshness(tmp_path).values()) == {"warn"}
    age_loads(warehouse, 180)  # past the 2-hour error
    assert set(freshness(tmp_path).values()) == {"error"}
    result = dbtRunner().invoke([
        "build", "--select", "pipeline_health",
        "--project-dir", str(ROOT), "--profiles-dir", str(ROOT),
        "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
    ])
    dbt_project.release_warehouse()
    assert result.success
    states = query(warehouse, "select distinct freshness_status, open_incident_kind"
                              " from marts.pipeline_health")
    assert states == [("error", None)]


def write_state(state_dir: Path, minutes_ago: float | None, incident: dict | None = None):
    state_dir.mkdir(parents=True, exist_ok=True)
    when = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago or 0)
    entities = {} if minutes_ago is None else {
        e: {"last_success_at": when.isoformat(timespec="seconds"), "rows_last_cycle": 0}
        for e in ("regions", "customers", "products", "orders", "order_items", "events")
    }
    (state_dir / "health.json").write_text(json.dumps(
        {"entities": entities, "open_incident": incident, "last_cycle": None}
    ))


@pytest.mark.parametrize(
    ("minutes_ago", "incident", "code", "overall"),
    [
        (1, None, 0, "green"),
        (45, None, 0, "warn"),
        (180, None, 1, "red"),
        (None, None, 1, "red"),
        (1, {"kind": "maintenance", "family": "outage", "started_at": "2026-11-23T10:00:00+00:00",
             "failed_cycles": 2, "last_error": "503"}, 1, "red"),
    ],
)
def test_status_exit_code_follows_the_worst_state(
    tmp_path, monkeypatch, capsys, minutes_ago, incident, code, overall
):
    monkeypatch.setenv("SALESFLOW_PIPELINES_DIR", str(tmp_path / "dlt"))
    monkeypatch.setenv("SALESFLOW_DUCKDB_PATH", str(tmp_path / "none.duckdb"))
    write_state(tmp_path / "dlt", minutes_ago, incident)
    assert cli.main(["status", "--json"]) == code
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == overall
    assert cli.main(["status"]) == code
    assert ("OPEN INCIDENT" in capsys.readouterr().out) == bool(incident)


def test_status_reports_a_real_pipeline(simulator, warehouse, capsys):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    report = status.collect(warehouse.parent / "dlt", ROOT)
    assert report["status"] == "green"
    assert report["last_cycle"]["outcome"] == "success_new_data"
    orders = next(e for e in report["entities"] if e["entity"] == "orders")
    assert orders["rows_in_raw"] == 300 and orders["freshness"] == "green"



def test_a_data_alarm_is_one_notice_while_it_lasts_one_recovery_and_red_meanwhile(warehouse):
    from loaders import config
    from loaders import warehouse as raw
    from loaders.monitoring import health
    from loaders.monitoring.alarms import AlarmCheck, Condition

    state = config.pipelines_dir()
    tracker = health.Health(state, pipeline.notifier())
    finding = Condition("entity_stalled", "orders", "orders stopped arriving",
                        "no new order for 9 min while order_items keep arriving")
    start = datetime.now(timezone.utc) - timedelta(minutes=10)

    def cycle(minute: int, *found: Condition) -> list[str]:
        at = start + timedelta(minutes=minute)
        check = AlarmCheck()
        check.add("entity_stalled", list(found))
        done = health.Cycle(at, at, "success_no_data", "nothing new upstream")
        with raw.dlt_pipeline().sql_client() as sql:
            return tracker.record(done, sql, {"entities": ["orders"]}, check)

    assert [k.split(":")[-1] for k in cycle(0, finding)] == ["opened"]
    assert cycle(1, finding) == []  # still open: nothing more said
    report = status.collect(state)
    assert report["status"] == status.RED
    assert report["open_alarms"][0]["entity"] == "orders"
    assert [k.split(":")[-1] for k in cycle(5)] == ["closed"]
    assert cycle(6) == []
    assert not health.Health(state).state()["open_alarms"]
    assert [n["kind"] for n in notices(warehouse)] == ["entity_stalled", "recovery"]
    [row] = query(
        warehouse, "select family, kind, entity, failed_cycles, duration_seconds"
        " from raw.pipeline_incidents"
    )
    assert row == ("data", "entity_stalled", "orders", 2, 300.0)


def test_a_failure_is_kept_and_told_without_the_secrets_it_quotes(monkeypatch):
    password = "pg-pw-7f2c9e1ab4"
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", password)
    redact.refresh()
    try:
        outcome, message = health.classify(
            RuntimeError(f"connection to postgresql://loader:{password}@db/wh failed")
        )
    finally:
        redact.refresh()
    assert outcome == "pipeline_error"
    assert message == "RuntimeError: connection to postgresql://loader:***@db/wh failed"
