"""A live simulator: traffic reaches production, orders move on, the replica trails by its
lag, and SIGTERM stops everything cleanly."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from simulator import store
from simulator.generate import generate
from simulator.platform import Platform
from simulator.server import SERVER_FILE
from tests.support import AS_OF
from tests.support.simulator import Simulator, start_simulator

RATE, LAG = 50, 1.0
GENERATED_ORDERS = 300


def query(db: Path, sql: str, *args: object) -> list[tuple]:
    with closing(store.connect(db, readonly=True)) as con:
        return con.execute(sql, args).fetchall()


def production_seq(d: Path) -> int:
    return query(d / store.PRODUCTION, "SELECT max(seq) FROM txlog")[0][0]


def replica_seq(d: Path) -> int:
    return query(d / store.REPLICA, "SELECT last_seq FROM replication_state")[0][0]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    d = tmp_path_factory.mktemp("live") / "sim"
    generate(d, orders=GENERATED_ORDERS, seed=7, as_of=AS_OF, days=30)
    sim = start_simulator(d, "--rate", str(RATE), "--lag", str(LAG))
    sim.started_at = store.utcnow()  # type: ignore[attr-defined]
    yield sim
    sim.stop()


def test_live_traffic_writes_new_orders_to_production(live: Simulator) -> None:
    time.sleep(max(0.0, 3 - (store.utcnow() - live.started_at).total_seconds()))
    since = store.iso(live.started_at)
    [(n, first_id)] = query(
        live.dir / store.PRODUCTION,
        "SELECT count(*), min(order_id) FROM orders WHERE ordered_at >= ?",
        since,
    )
    assert n >= RATE  # about 50 a second, for 3 s; leave room for a slow start
    assert first_id > GENERATED_ORDERS  # ids carry on from the history
    # each new order has its lines and its purchase event
    [(without_lines,)] = query(
        live.dir / store.PRODUCTION,
        "SELECT count(*) FROM orders WHERE ordered_at >= ?"
        " AND order_id NOT IN (SELECT order_id FROM order_items)",
        since,
    )
    assert without_lines == 0
    [(purchases,)] = query(
        live.dir / store.PRODUCTION,
        "SELECT count(DISTINCT order_id) FROM events WHERE event_type = 'purchase'"
        " AND updated_at >= ?",
        since,
    )
    assert purchases >= n


def test_orders_progress_from_placed_to_paid(live: Simulator) -> None:
    time.sleep(max(0.0, 3.5 - (store.utcnow() - live.started_at).total_seconds()))
    since = store.iso(live.started_at)
    rows = query(
        live.dir / store.PRODUCTION,
        "SELECT status, ordered_at, updated_at FROM orders WHERE ordered_at >= ?",
        since,
    )
    statuses = {status for status, _, _ in rows}
    assert {"placed", "paid"} <= statuses
    paid = [(o, u) for s, o, u in rows if s in ("paid", "cancelled")]
    assert paid
    for ordered_at, updated_at in paid:
        waited = store.parse_iso(updated_at) - store.parse_iso(ordered_at)
        assert timedelta(seconds=1.9) <= waited < timedelta(seconds=10)
    # the newest orders are still placed
    newest = max(rows, key=lambda r: r[1])
    assert newest[0] == "placed"


def test_replica_trails_production_by_the_lag(live: Simulator) -> None:
    target = production_seq(live.dir)
    committed = store.parse_iso(
        query(live.dir / store.PRODUCTION, "SELECT committed_at FROM txlog WHERE seq = ?",
              target)[0][0]
    )
    assert replica_seq(live.dir) < target  # the newest write is not on the replica yet

    started = time.monotonic()
    store.wait_for_replica(live.dir, timeout=LAG + 1)
    waited = time.monotonic() - started
    assert replica_seq(live.dir) >= target
    # it took about the lag, counted from the commit
    assert (store.utcnow() - committed).total_seconds() >= LAG
    assert waited > LAG - 0.4

    # what the replica holds was committed at least LAG seconds before it got there
    last = replica_seq(live.dir)
    [(last_committed,)] = query(
        live.dir / store.PRODUCTION, "SELECT committed_at FROM txlog WHERE seq = ?", last
    )
    assert store.parse_iso(last_committed) <= store.utcnow() - timedelta(seconds=LAG - 0.05)
    # and the API serves the replica's position
    assert live.get("/health").json()["replica_seq"] >= last - 1


def test_api_serves_new_orders_after_the_lag(live: Simulator) -> None:
    [(newest,)] = query(live.dir / store.PRODUCTION, "SELECT max(order_id) FROM orders")

    def served_ids() -> set[int]:
        params = {"updated_since": store.iso(store.utcnow() - timedelta(seconds=30)),
                  "limit": 50_000}
        return {r["order_id"] for r in live.get("/v1/orders", params=params).json()["data"]}

    assert newest not in served_ids()
    deadline = time.monotonic() + LAG + 2
    while newest not in served_ids():
        assert time.monotonic() < deadline, f"order {newest} never reached the API"
        time.sleep(0.1)


def test_sigterm_stops_cleanly(platform_dir: Path) -> None:
    sim = start_simulator(platform_dir, "--rate", str(RATE), "--lag", str(LAG))
    info = json.loads((platform_dir / SERVER_FILE).read_text())
    time.sleep(1.5)
    sim.proc.terminate()  # SIGTERM
    assert sim.proc.wait(timeout=15) == 0

    assert not (platform_dir / SERVER_FILE).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(info["platform_pid"], 0)  # the platform process is gone too
    assert "simulator stopped" in (platform_dir / "serve.log").read_text()
    # on the way out the replica caught up with everything production committed
    assert production_seq(platform_dir) > 1
    assert replica_seq(platform_dir) == production_seq(platform_dir)


def test_a_busy_replica_delays_replication_and_the_platform_goes_on(
    platform_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # another writer holds the replica past the busy timeout for a few ticks: the platform
    # keeps writing and the replica catches up once it is free
    busy = {"ticks": 3}
    replicate = store.replicate

    def held(directory: Path, lag: float = 0.0, con: object = None) -> int:
        if busy["ticks"]:
            busy["ticks"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return replicate(directory, lag, con=con)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "replicate", held)
    with Platform(platform_dir, seed=2) as platform:
        platform.run(rate=50, tick_seconds=0.05, duration=1.0)
    assert busy["ticks"] == 0
    assert replica_seq(platform_dir) == production_seq(platform_dir)
    # anything else replication raises still stops the platform
    monkeypatch.setattr(store, "replicate", lambda *a, **k: (_ for _ in ()).throw(
        sqlite3.OperationalError("no such table: orders")))
    with Platform(platform_dir, seed=2) as platform, \
            pytest.raises(sqlite3.OperationalError, match="no such table"):
        platform.run(rate=50, tick_seconds=0.05, duration=0.3)
