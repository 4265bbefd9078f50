"""Schema change tracking: each kind of change detected within one cycle, logged once,
notified once per channel with its impact; contracts; announcements; the notifier."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from loaders import cli
from loaders.monitoring.notify import (
    Event,
    JsonLinesChannel,
    Ledger,
    Notifier,
    WebhookChannel,
    sign,
)
from loaders.replica import settings
from loaders.runners import pipeline
from loaders.schema_changes.announcements import follow_announcements
from loaders.schema_changes.track import build_failed_event
from simulator import store
from simulator.model import EVOLUTIONS
from tests.support import TOKEN
from tests.support.simulator import Simulator, evolve
from tests.support.sinks import HttpReceiver, SmtpSink

SECRET = "hmac-test-secret-9c1d"
ALL = list(settings.ENDPOINTS)


@dataclass
class Channels:
    http: HttpReceiver
    smtp: SmtpSink
    jsonl: Path

    def slack(self) -> list[dict]:
        return [json.loads(r.body) for r in self.http.on("/slack")]

    def webhook(self) -> list[dict]:
        return [json.loads(r.body) for r in self.http.on("/hook")]

    def log(self) -> list[dict]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines()]


@pytest.fixture
def channels(warehouse: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Channels]:
    http, smtp = HttpReceiver(), SmtpSink()
    monkeypatch.setenv("NOTIFY__SLACK_WEBHOOK_URL", http.url + "/slack")
    monkeypatch.setenv("NOTIFY__WEBHOOK_URL", http.url + "/hook")
    monkeypatch.setenv("NOTIFY__WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("NOTIFY__SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("NOTIFY__SMTP_PORT", str(smtp.port))
    monkeypatch.setenv("NOTIFY__SMTP_TO", "data-team@example.com")
    yield Channels(http, smtp, warehouse.parent / "dlt" / "notifications.jsonl")
    http.close()
    smtp.close()


def changelog(warehouse: Path) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            "select change_kind, entity, column_name, value, detail, change_id"
            " from raw.schema_changelog order by detected_at, entity, column_name"
        ).fetchall()


def cycle(sim: Simulator, **options) -> pipeline.LoadResult:
    result, ok = pipeline.run_cycle(base_url=sim.url, token=sim.token, **options)
    assert ok, "dbt build failed after the load"
    return result


def test_each_kind_of_change_is_logged_and_notified_once_with_impact(
    simulator, warehouse, channels
):
    # baseline: the first load logs its tables and tells nobody
    pipeline.load(base_url=simulator.url, token=TOKEN, entities=[e for e in ALL if e != "events"])
    assert {k for k, *_ in changelog(warehouse)} == {"new_table"}
    assert channels.log() == [] and channels.http.received == []

    sim = simulator
    result = cycle(sim)  # events arrive: a new table, with dbt building green
    assert [(c.kind, c.entity) for c in result.tracked.changes] == [("new_table", "events")]

    expected = {
        "additive": {("new_column", "events", "device_type"), ("new_column", "events", "referrer"),
                     ("new_column", "orders", "coupon_code")},
        "expansion": {("new_value", "regions", "region_id"), ("new_value", "products", "category"),
                      ("new_value", "orders", "currency")},
        "restructure": {("new_column", "customers", "full_name"),
                        ("new_column", "products", "product_line"),
                        ("type_change", "products", "price"),
                        ("column_removed", "customers", "first_name"),
                        ("column_removed", "customers", "last_name"),
                        ("column_removed", "products", "category"),
                        ("column_removed", "products", "subcategory")},
    }
    try:
        for name in EVOLUTIONS:
            sim = evolve(sim, name)
            result = cycle(sim)  # detected within the cycle the change lands in
            got = {(c.kind, c.entity, c.column) for c in result.tracked.changes}
            assert got == expected[name], name
        again = cycle(sim)
        assert again.tracked.changes == [] and again.tracked.notices == []
    finally:
        sim.stop()

    rows = changelog(warehouse)
    assert len({r[-1] for r in rows}) == len(rows)  # logged once
    removed = {r[2]: r[4] for r in rows if r[0] == "column_removed"}
    assert "combined into full_name" in removed["first_name"]
    assert "combined into product_line" in removed["category"]
    values = {r[3] for r in rows if r[0] == "new_value"}
    assert values == {"apac", "Outdoor", "AUD"}

    # notified once per channel, each with its impact
    notified = 1 + sum(len(v) for v in expected.values())
    hooks = channels.webhook()
    assert len(hooks) == notified
    assert len({h["key"] for h in hooks}) == notified
    assert len(channels.slack()) == notified
    assert len(channels.smtp.messages) == notified
    assert len(channels.log()) == notified
    price = next(h for h in hooks if h["details"]["change"]["column"] == "price")
    assert price["details"]["impact"]["staging_models"] == ["stg_replica__products"]
    assert "dim_products" in price["details"]["impact"]["downstream_models"]
    assert price["details"]["impact"]["owners"]
    first_name = next(h for h in hooks if h["details"]["change"]["column"] == "first_name")
    assert first_name["details"]["impact"]["classification"] == "absorbed"
    apac = next(h for h in hooks if h["details"]["change"]["value"] == "apac")
    assert "region_reference" in apac["details"]["impact"]["advice"]
    # the JSON webhook is signed; no message carries a secret
    for r in channels.http.on("/hook"):
        ts = r.headers["X-Salesflow-Timestamp"]
        assert r.headers["X-Salesflow-Signature"] == sign(SECRET, ts, r.body)
    everything = json.dumps([channels.slack(), hooks, channels.log()]) + "".join(
        m.as_string() for m in channels.smtp.messages
    )
    assert TOKEN not in everything and SECRET not in everything
    assert any("type of products.price changed" in m["Subject"] for m in channels.smtp.messages)


def test_frozen_data_types_quarantine_the_rows_and_alert(simulator, warehouse, channels):
    frozen = {"products": {"tables": "evolve", "columns": "evolve", "data_type": "freeze"}}
    pipeline.load(base_url=simulator.url, token=TOKEN, schema_contracts=frozen)
    sim = evolve(simulator, "restructure")
    try:
        result = pipeline.load(base_url=sim.url, token=TOKEN, schema_contracts=frozen)
    finally:
        sim.stop()
    assert result.quarantined > 0
    with duckdb.connect(str(warehouse), read_only=True) as con:
        columns = {r[0] for r in con.execute("describe raw.products").fetchall()}
        reasons = con.execute(
            "select distinct reason from raw.quarantine where entity = 'products'"
        ).fetchall()
        [(products,)] = con.execute("select count(*) from raw.products").fetchone(),
    assert "price__v_text" not in columns  # no variant column: the contract held
    assert products > 0
    assert len(reasons) == 1 and "frozen" in reasons[0][0] and "price" in reasons[0][0]
    [change] = [c for c in result.tracked.changes if c.kind == "type_change"]
    assert (change.entity, change.column, change.old_type) == ("products", "price", "bigint")
    assert "frozen" in change.detail
    assert any("products.price" in h["title"] for h in channels.webhook())


def test_announced_change_is_reported_before_it_takes_effect_once_across_restarts(
    simulator, warehouse, channels
):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    sim = evolve(simulator, "additive", when=store.utcnow() + timedelta(days=3))
    try:
        pipeline.load(base_url=sim.url, token=TOKEN)
        pipeline.load(base_url=sim.url, token=TOKEN)  # a new notifier, as after a restart
        [(applied,)] = [
            (a["applied_at"],)
            for a in sim.get("/v1/announcements").json()["announcements"]
        ]
    finally:
        sim.stop()
    assert applied is None  # still upcoming
    notices = [h for h in channels.webhook() if h["kind"] == "announcement"]
    assert [n["key"] for n in notices] == ["announcement:additive:seen"]
    impact = notices[0]["details"]["impact"]
    device = next(i for i in impact if i["change"].startswith("events.device_type"))
    assert device["classification"] == "additive"
    assert device["staging_models"] == ["stg_replica__events"]
    assert "in 3 days" in notices[0]["title"]


def _announcement(effective: datetime) -> dict:
    return {
        "change_id": "restructure",
        "title": "Customer names combined",
        "status": "upcoming",
        "breaking": True,
        "effective_at": effective.isoformat(),
        "changes": [{"entity": "customers", "field": "first_name", "change": "combined",
                     "into": "full_name"}],
    }


def notifier(tmp_path: Path) -> Notifier:
    return Notifier([JsonLinesChannel(tmp_path / "n.jsonl")], Ledger(tmp_path / "ledger.db"))


def sent(tmp_path: Path) -> list[str]:
    path = tmp_path / "n.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def test_announcement_milestones_are_notified_once_each(tmp_path):
    effective = datetime(2026, 12, 20, 9, tzinfo=timezone.utc)
    a = [_announcement(effective)]
    for days_before, expect in [
        (10, ["seen"]),
        (9, []),
        (6, ["d7"]),
        (5, []),
        (1, ["d1"]),
        (1, []),
        (0, ["d0"]),
        (0, []),
        (-1, []),
    ]:
        before = sent(tmp_path)
        now = effective - timedelta(days=days_before)
        # a fresh notifier on the same ledger each time: state survives restarts
        follow_announcements(a, notifier(tmp_path), None, now)
        keys = [f"announcement:restructure:{k}" for k in expect]
        assert sent(tmp_path)[len(before):] == keys, days_before


def test_an_announcement_first_seen_late_skips_the_milestones_it_passed(tmp_path):
    effective = datetime(2026, 12, 20, 9, tzinfo=timezone.utc)
    a = [_announcement(effective)]
    follow_announcements(a, notifier(tmp_path), None, effective - timedelta(days=3))
    follow_announcements(a, notifier(tmp_path), None, effective - timedelta(days=2))
    follow_announcements(a, notifier(tmp_path), None, effective - timedelta(days=1))
    assert sent(tmp_path) == ["announcement:restructure:seen", "announcement:restructure:d1"]
    applied = [{**a[0], "status": "applied"}]
    follow_announcements(applied, notifier(tmp_path), None, effective)
    assert len(sent(tmp_path)) == 2


def test_a_failing_channel_never_breaks_delivery_and_is_retried(tmp_path):
    http = HttpReceiver(status=500)
    try:
        channels = [JsonLinesChannel(tmp_path / "n.jsonl"), WebhookChannel(http.url + "/h", SECRET)]
        n = Notifier(channels, Ledger(tmp_path / "ledger.db"))
        event = Event(key="change:abc", kind="schema_change", title="t", text="x")
        outcome = n.notify(event)
        assert outcome["jsonl"] == "delivered" and outcome["webhook"].startswith("failed")
        assert n.notify(event)["jsonl"] == "already delivered"
        http.status = 200
        again = Notifier(channels, Ledger(tmp_path / "ledger.db"))  # after a restart
        assert again.retry_pending() == 1
        assert again.retry_pending() == 0
        assert len(http.on("/h")) == 1 and len(sent(tmp_path)) == 1
    finally:
        http.close()


def test_unreachable_channel_is_only_a_warning(tmp_path, caplog):
    n = Notifier([WebhookChannel("http://127.0.0.1:9/h", SECRET)], Ledger(tmp_path / "l.db"))
    assert n.notify(Event(key="k", kind="x", title="t", text="x"))["webhook"].startswith("failed")
    assert "kept for retry" in caplog.text


def test_schema_cli_lists_changes_and_explains_impact(
    simulator, warehouse, channels, capsys, monkeypatch
):
    monkeypatch.setenv("SOURCES__REPLICA__TOKEN", TOKEN)
    pipeline.load(base_url=simulator.url, token=TOKEN)
    assert cli.main(["schema", "--json", "--base-url", simulator.url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {c["kind"] for c in listed["detected"]} == {"new_table"}
    assert listed["announcements_error"] is None
    assert cli.main(["schema", "impact", "--entity", "customers", "--column", "first_name",
                     "--kind", "column_removed", "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["classification"] == "absorbed"
    assert report["staging_models"] == ["stg_replica__customers"]
    assert "dim_customers" in report["downstream_models"]
    assert cli.main(["schema", "impact", "--entity", "orders", "--column", "total_cents",
                     "--kind", "type_change"]) == 0
    out = capsys.readouterr().out
    assert "BREAKING" in out and "fct_orders" in out


def test_a_failed_build_notice_carries_the_impact_of_recent_changes():
    change = {"entity": "orders", "column": "total_cents", "kind": "type_change",
              "detected_at": "2026-11-23T10:00:00+00:00"}
    result = pipeline.LoadResult(load_ids=["1795000000.1"])
    event = build_failed_event(result.last_load_id, [change])
    assert event.key == "build_failed:1795000000.1" and event.severity == "error"
    assert "BREAKING" in event.text and "fct_orders" in event.text
    assert event.details["impact"][0]["staging_models"] == ["stg_replica__orders"]
