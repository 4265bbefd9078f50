"""The live board: its notices from the status report, then the board itself in headless
Chromium against a real pipeline (simulator with live traffic → ``salesflow watch`` in
its own process → published file → ``salesflow board``), and ``mf query`` beside it.

The browser tests share one pipeline and run in order: the figures are compared while
nothing publishes, then watch starts and the page must follow it, through an outage and
an announced change. Screenshots go to ``SALESFLOW_BOARD_SCREENSHOTS`` (default
``target/board``): the README's pictures.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from loaders.board import notices
from loaders.board.pages import PAGES
from loaders.contract.document import committed
from loaders.monitoring import health, status
from simulator import faults
from simulator.faults import Faults
from simulator.generate import default_as_of, generate
from simulator.platform import Platform
from tests.support import ROOT, TOKEN, stop_process
from tests.support.board import CHROMIUM, Board, Browser, browser, start_board
from tests.support.simulator import Simulator, start_simulator

NOW = datetime(2026, 12, 7, 10, 30, tzinfo=timezone.utc)
SCREENSHOTS = Path(os.environ.get("SALESFLOW_BOARD_SCREENSHOTS", ROOT / "target" / "board"))


# -- the notices, from a status report ---------------------------------------------

def report(**parts: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "open_incident": None, "last_recovery": None, "open_alarms": [],
        "held_back_marts": [], "upcoming_announcements": [], "recent_changes": [],
        "entities": [
            {"entity": "orders", "freshness": "green",
             "last_success_at": "2026-12-07T10:01:07+00:00"},
            {"entity": "customers", "freshness": "green",
             "last_success_at": "2026-12-07T10:01:30+00:00"},
        ],
    }
    return base | parts


def test_an_outage_says_since_when_how_far_figures_are_complete_and_that_nothing_is_lost():
    found = notices.from_status(report(open_incident={
        "family": "outage", "kind": "source_unavailable", "started_at": "2026-12-07T10:02:11+00:00",
        "failed_cycles": 3}), now=NOW)
    [n] = found
    assert n.level == notices.ERROR
    assert "unavailable since" in n.title and "10:02 UTC" in n.title
    assert "complete up to 10:01 UTC" in n.text  # the entity loaded least recently
    assert "Nothing is lost" in n.text


def test_a_recovery_shows_for_an_hour_unless_another_incident_followed():
    back = {"family": "outage", "kind": "maintenance", "started_at": "2026-12-07T10:02:00+00:00",
            "ended_at": "2026-12-07T10:09:00+00:00", "rows_caught_up": 1234}
    [n] = notices.from_status(report(last_recovery=back), now=NOW)
    assert n.level == notices.SUCCESS and "back since 10:09 UTC" in n.title
    assert "for 7 min" in n.text and "1,234 rows" in n.text and "Nothing was lost" in n.text
    assert notices.from_status(report(last_recovery=back), now=NOW + timedelta(hours=2)) == []
    assert notices.from_status(report(last_recovery=back | {"superseded_by": "auth_error"}),
                               now=NOW) == []


def test_an_announced_change_is_judged_against_the_contract_with_its_dashboards_and_owners():
    contract = committed()
    assert contract is not None
    breaking = {
        "change_id": "chg-1", "title": "Customer names combined",
        "effective_at": "2026-12-10T00:00:00Z", "breaking": False,
        "changes": [{"entity": "customers", "field": "first_name", "change": "combined",
                     "into": "full_name"}],
    }
    safe = {"change_id": "chg-2", "title": "A new field", "effective_at": "2026-12-08T00:00:00Z",
            "changes": [{"entity": "orders", "field": "gift_wrap", "change": "added"}]}
    found = notices.from_status(report(upcoming_announcements=[safe, breaking]), contract,
                                now=NOW)
    first, second = found
    # the platform's own flag said not breaking; the contract says it is
    assert first.level == notices.WARNING
    assert first.title == "Breaking change announced: chg-1 in 3 days"
    assert "customer_retention" in first.dashboards
    assert any("CRM and Lifecycle" in o for o in first.owners)
    assert "customers.first_name combined into full_name" in first.text
    assert second.level == notices.INFO and "Safe for the marts" in second.text


def test_detected_changes_held_marts_and_stale_data_are_told():
    contract = committed()
    found = notices.from_status(report(
        recent_changes=[{"entity": "orders", "column": "channel", "kind": "column_removed",
                         "detected_at": "2026-12-07T10:20:00+00:00", "announced": False,
                         "what": "orders.channel removed"}],
        held_back_marts=[{"mart": "funnel_daily", "since": "2026-12-07T10:05:00+00:00",
                          "reason": "accepted_values failed", "last_published_at": None}],
        entities=[{"entity": "orders", "freshness": "warn",
                   "last_success_at": "2026-12-07T09:40:00+00:00"}],
    ), contract, now=NOW)
    titles = [n.title for n in found]
    held = next(n for n in found if "funnel_daily" in n.title)
    assert "not published yet (accepted_values failed)" in held.text
    change = next(n for n in found if "Schema change detected" in n.title)
    assert change.level == notices.WARNING and "NOT announced" in change.title
    assert "product_sales_live_board" in change.dashboards
    assert any(t == "Stale data: orders" for t in titles)


def test_status_for_the_board_leaves_the_warehouse_alone(tmp_path, monkeypatch):
    def refuse():
        raise AssertionError("the board must not open the pipeline's warehouse")

    monkeypatch.setattr(status, "_warehouse", refuse)
    r = status.collect(tmp_path, read_warehouse=False)
    assert r["warehouse"] == "not read"


def test_a_closed_incident_is_kept_for_the_recovery_notice(tmp_path):
    h = health.Health(tmp_path)
    t0 = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
    h.record(health.Cycle(t0, t0 + timedelta(seconds=5), "source_unavailable", "down", {}))
    h.record(health.Cycle(t0 + timedelta(minutes=7), t0 + timedelta(minutes=7, seconds=2),
                          "success_new_data", "ok", {"orders": 12}), None,
             {"entities": ["orders"]})
    closed = status.collect(tmp_path, read_warehouse=False)["last_recovery"]
    assert closed["kind"] == "source_unavailable" and closed["rows_caught_up"] == 12
    assert closed["ended_at"] == health.iso(t0 + timedelta(minutes=7, seconds=2))


def test_the_exposures_point_at_the_board_pages():
    exposures = {}
    for path in (ROOT / "models").rglob("*exposures.yml"):
        exposures |= {e["name"]: e for e in yaml.safe_load(path.read_text())["exposures"]}
    assert set(exposures) == set(PAGES.values())
    for page, name in PAGES.items():
        assert exposures[name]["url"] == f"http://127.0.0.1:8501/{page}"


# -- the board in a browser, on a running pipeline ----------------------------------

browser_tests = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="no chromium: run `make chromium` (the tests always run when CI is set)",
)


@dataclass
class Live:
    dir: Path
    env: dict[str, str]
    sim: Simulator
    board: Board
    view: Browser
    published: Path
    watch: subprocess.Popen | None = None

    def start_watch(self) -> None:
        if self.watch is None:
            self.watch = subprocess.Popen(
                [sys.executable, "-m", "loaders.cli", "watch", "--interval", "0.5",
                 "--max-backoff", "2"],
                cwd=ROOT, env=self.env, stdout=open(self.dir / "watch.log", "ab"),
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.watch is not None:
            stop_process(self.watch, timeout=120)  # it ends the cycle in progress first
        self.board.stop()
        self.sim.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    d = tmp_path_factory.mktemp("board")
    generate(d / "sim", orders=800, seed=5, as_of=default_as_of(), days=10)
    sim = start_simulator(d / "sim", "--rate", "4", "--lag", "0.2")
    env = {
        **os.environ,
        "SALESFLOW_DUCKDB_PATH": str(d / "warehouse.duckdb"),
        "SALESFLOW_PIPELINES_DIR": str(d / "dlt"),
        "SALESFLOW_PUBLISHED_PATH": str(d / "published" / "analytics.duckdb"),
        "DLT_PROJECT_DIR": str(ROOT),
        "SOURCES__REPLICA__BASE_URL": sim.url,
        "SOURCES__REPLICA__TOKEN": TOKEN,
        "RUNTIME__REQUEST_MAX_ATTEMPTS": "2",
        "RUNTIME__REQUEST_BACKOFF_FACTOR": "0.1",
    }
    env.pop("SALESFLOW_TARGET", None)
    board = None
    try:
        first = subprocess.run(  # the first publication, then nothing publishes for a while
            [sys.executable, "-m", "loaders.cli", "watch", "--cycles", "1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert first.returncode == 0 and "1 publication(s)" in first.stdout, (
            first.stdout[-3000:] + first.stderr[-3000:])
        board = start_board(env, d / "board.log", refresh=1.0)
        with browser(d) as view:
            state = Live(d, env, sim, board, view, d / "published" / "analytics.duckdb")
            try:
                yield state
            finally:
                state.stop()
    finally:
        if board is not None:
            board.stop()
        sim.stop()


def wait_for(page: Any, selector: str, timeout: float = 60) -> Any:
    page.wait_for_selector(selector, timeout=timeout * 1000)
    return page.locator(selector)


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def banner(page: Any) -> str:
    return page.locator(".st-key-pipeline_notices").inner_text()


def wait_for_banner(page: Any, pattern: str, timeout: float) -> str:
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        text = banner(page)
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"the banner never said /{pattern}/; it says:\n{text}")


def cents(text: str) -> int:
    return round(float(text.replace("$", "").replace(",", "")) * 100)


@browser_tests
@pytest.mark.slow
def test_every_page_renders_without_errors(live):
    for path, title in (("", "salesflow board"), ("live", "Product sales, live"),
                        ("funnel", "Funnel and acquisition"),
                        ("retention", "Customer retention")):
        page = live.view.open(f"{live.board.url}/{path}")
        wait_for(page, f'h1:has-text("{title}")')
        if path:
            wait_for(page, '[data-testid="stVegaLiteChart"]')
            caption = wait_for(page, 'text=/^Data: published/').first.inner_text()
            assert "newest sale" in caption, caption
        time.sleep(2)  # a refresh or two
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not page.locator('text=/Could not read the marts/').count()
        assert live.view.errors == [], live.view.errors
        shot(page, path or "overview")
    # the start page links every dashboard the exposures name
    page = live.view.open(live.board.url)
    for path in PAGES:
        wait_for(page, f'a[href$="/{path}"]')


@browser_tests
@pytest.mark.slow
def test_the_live_page_shows_the_marts_figures_as_mf_query_does(live):
    page = live.view.open(f"{live.board.url}/live")
    rows = wait_for(page, '[data-testid="stTable"] tbody tr').all()
    shown = {r.locator("th").inner_text(): cents(r.locator("td").first.inner_text())
             for r in rows}
    orders = int(page.locator('[data-testid="stMetricValue"]').nth(2).inner_text()
                 .replace(",", ""))
    today = datetime.now(timezone.utc).date()
    with duckdb.connect(str(live.published), read_only=True) as con:
        # today, or the last day with sales when there is none yet today (just after 0:00)
        [(day,)] = con.execute("select max(sales_date) from marts.product_sales_daily"
                               " where sales_date <= ?", [today]).fetchall()
        daily = dict(con.execute(
            "select product_line, sum(revenue_usd) from marts.product_sales_daily"
            " where sales_date = ? group by 1", [day]).fetchall())
        [(live_orders,)] = con.execute(
            "select count(*) from marts.fct_orders where not is_cancelled and order_date = ?",
            [day]).fetchall()
    assert shown and shown == {k: round(v * 100) for k, v in daily.items()}
    assert orders == live_orders

    out = live.dir / "mf.csv"
    mf = subprocess.run(
        [str(Path(sys.executable).with_name("mf")), "query",
         "--metrics", "line_revenue,orders", "--group-by", "metric_time__day",
         "--where", f"{{{{ TimeDimension('metric_time', 'day') }}}} = '{day}'",
         "--csv", str(out)],
        cwd=ROOT, env={**live.env, "SALESFLOW_TARGET": "published"},
        capture_output=True, text=True, timeout=180,
    )
    assert mf.returncode == 0, mf.stdout[-2000:] + mf.stderr[-2000:]
    [answer] = list(csv.DictReader(out.open()))
    assert round(float(answer["line_revenue"]) * 100) == sum(shown.values())
    assert int(answer["orders"]) == orders


@browser_tests
@pytest.mark.slow
def test_mf_query_answers_while_watch_runs(live):
    live.start_watch()
    log = live.dir / "watch.log"
    deadline = time.monotonic() + 120
    while "cycle 2:" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    mf = [str(Path(sys.executable).with_name("mf")), "query", "--metrics", "revenue",
          "--group-by", "metric_time__month"]
    # on the warehouse watch holds, DuckDB refuses the lock: why the published output exists
    held = subprocess.run(mf, cwd=ROOT, env=live.env, capture_output=True, text=True,
                          timeout=180)
    assert held.returncode != 0 and "lock" in (held.stdout + held.stderr).lower()
    for _ in range(2):
        answered = subprocess.run(mf, cwd=ROOT, env={**live.env, "SALESFLOW_TARGET": "published"},
                                  capture_output=True, text=True, timeout=180)
        assert answered.returncode == 0, answered.stdout[-2000:] + answered.stderr[-2000:]
        assert re.search(r"\d{4}-\d\d-01T00:00:00\s+\d", answered.stdout), answered.stdout


@browser_tests
@pytest.mark.slow
def test_new_sales_appear_on_the_live_page_without_a_reload(live):
    live.start_watch()
    page = live.view.open(f"{live.board.url}/live")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    value = wait_for(page, '[data-testid="stMetricValue"]')
    first = value.nth(2).inner_text()
    deadline = time.monotonic() + 90
    while value.nth(2).inner_text() == first:
        assert time.monotonic() < deadline, f"orders stayed at {first}"
        time.sleep(0.5)
    assert int(value.nth(2).inner_text().replace(",", "")) > int(first.replace(",", ""))
    assert navigations == []
    assert live.view.errors == [], live.view.errors


@browser_tests
@pytest.mark.slow
def test_an_outage_shows_on_the_board_then_its_recovery(live):
    live.start_watch()
    page = live.view.open(f"{live.board.url}/live")
    wait_for(page, '[data-testid="stMetricValue"]')
    faults.save(live.sim.dir, Faults(outage_until=faults.window(8)))
    text = wait_for_banner(page, r"unavailable since", timeout=60)
    assert "complete up to" in text and "Nothing is lost" in text
    shot(page, "outage")
    text = wait_for_banner(page, r"is back since", timeout=120)
    assert "unavailable since" not in text and "Nothing was lost" in text
    shot(page, "recovery")


@browser_tests
@pytest.mark.slow
def test_an_announced_breaking_change_shows_before_it_takes_effect(live):
    live.start_watch()
    page = live.view.open(f"{live.board.url}/funnel")
    wait_for(page, '[data-testid="stVegaLiteChart"]')
    effective = datetime.now(timezone.utc) + timedelta(days=3, hours=1)
    platform = Platform(live.sim.dir)
    try:
        platform.schedule("restructure", effective)
    finally:
        platform.close()
    text = wait_for_banner(page, r"Breaking change announced: restructure in [34] days",
                           timeout=90)  # 4: when the next hour is past midnight
    assert "Dashboards:" in text and "customer_retention" in text
    assert "Owners:" in text and "CRM and Lifecycle" in text
    shot(page, "announcement")


@browser_tests
@pytest.mark.slow
def test_the_board_logged_no_error_or_deprecation(live):
    """Everything above ran without the board logging a traceback, an error or a
    warning about an API it uses (Streamlit says those only in its log)."""
    log = live.board.log.read_text()
    assert not re.search(r"Traceback|Error|Exception|WARNING|deprecat|Please replace",
                         log), log[-3000:]
