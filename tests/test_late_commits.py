"""Late commits: long transactions whose rows carry their start time but become visible
only at their commit. The simulator keeps its invariants with them on, exposes the commit
sequence on request, and the loader loses no row through either of its two defences: a
commit-ordered cursor, or wide re-reads with count reconciliation."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from loaders.replica.errors import ReplicaError
from loaders.replica.settings import ENDPOINTS
from loaders.runners import pipeline
from simulator import store
from simulator.platform import Platform
from tests.support import TOKEN
from tests.support.simulator import start_simulator
from tests.support.warehouse import catch_up_and_reconcile

# every entity with its own timestamps, which may never come after updated_at
OWN_TIMES = {
    "customers": "created_at",
    "orders": "ordered_at",
    "order_items": "created_at",
    "events": "occurred_at",
}


def _violations(directory: Path) -> list[str]:
    """What in the replica breaks the platform's invariants right now: a row of a
    transaction the replica has not applied or production has not committed, a row
    stamped after its commit, or its own times after its updated_at."""
    con = store.connect(directory / store.REPLICA, readonly=True)
    try:
        con.execute(f"ATTACH DATABASE 'file:{directory / store.PRODUCTION}?mode=ro' AS p")
        con.execute("BEGIN")  # one snapshot of the replica
        now = store.iso(store.utcnow())
        [(last,)] = con.execute("SELECT last_seq FROM replication_state").fetchall()
        found = []
        for entity, own in OWN_TIMES.items():
            rows = con.execute(
                f"SELECT count(*) FILTER (WHERE x.seq IS NULL OR e._seq > ?"
                "   OR x.committed_at > ?),"
                " count(*) FILTER (WHERE e.updated_at > x.committed_at),"
                f" count(*) FILTER (WHERE e.{own} > e.updated_at)"
                f" FROM {entity} e LEFT JOIN p.txlog x ON x.seq = e._seq",
                (last, now),
            ).fetchone()
            for n, what in zip(rows, ("uncommitted", "stamped after commit", f"{own} late"),
                               strict=True):
                if n:
                    found.append(f"{entity}: {n} rows {what}")
        con.execute("ROLLBACK")
        return found
    finally:
        con.close()


def test_late_commits_keep_the_platforms_invariants(platform_dir: Path) -> None:
    platform = Platform(platform_dir, seed=3, late_commits=2.0)
    [(started,)] = store.query(platform_dir, "SELECT coalesce(max(seq), 0) FROM txlog",
                               db=store.PRODUCTION)
    stop = threading.Event()
    runner = threading.Thread(target=platform.run, args=(8.0,),
                              kwargs={"stop": stop, "duration": 5.0})
    runner.start()
    found: list[str] = []
    try:
        while runner.is_alive():
            found += _violations(platform_dir)
            time.sleep(0.3)
    finally:
        stop.set()
        runner.join()
        platform.close()
    found += _violations(platform_dir)
    assert not found, found
    assert store.query(platform_dir, "SELECT count(*) FROM pending_commits",
                       db=store.PRODUCTION) == [(0,)]
    # commits are in sequence order, and some rows did commit well after their stamp:
    # rows committed later carry an updated_at older than rows committed before them
    log = store.query(platform_dir, "SELECT seq, committed_at FROM txlog WHERE seq > ?"
                      " ORDER BY seq", started, db=store.PRODUCTION)
    assert [t for _, t in log] == sorted(t for _, t in log)
    stamps = store.query(
        platform_dir,
        "SELECT o._seq, max(o.updated_at), min(o.updated_at) FROM orders o"
        " WHERE o._seq > ? GROUP BY o._seq ORDER BY o._seq",
        started,
    )
    newest_before = ""
    overtaken = 0
    for _, newest, oldest in stamps:
        overtaken += oldest < newest_before
        newest_before = max(newest_before, newest)
    assert overtaken, "no transaction committed after a later one"


def test_change_seq_lists_every_record_once_in_commit_order(platform_dir: Path) -> None:
    with Platform(platform_dir, seed=5, late_commits=1.0) as platform:
        for _ in range(30):
            platform.tick(2)
        platform.delete_records("orders", [1, 2])
    store.replicate(platform_dir)
    sim = start_simulator(platform_dir, "--change-seq")
    try:
        described = sim.get("/v1/schema").json()["entities"]["orders"]
        assert described["sequence"] == "change_seq"
        assert {"name": "change_seq", "type": "integer"}.items() <= next(
            f for f in described["fields"] if f["name"] == "change_seq"
        ).items()
        records, cursor = [], None
        while True:
            params = {"since_seq": 3, "limit": 37, "format": "ndjson"}
            if cursor:
                params["cursor"] = cursor
            page = sim.get("/v1/orders", params=params)
            page.raise_for_status()
            records += [json.loads(line) for line in page.text.splitlines()]
            cursor = page.headers.get("X-Next-Cursor")
            if not cursor:
                break
        seqs = [r["change_seq"] for r in records]
        assert seqs == sorted(seqs) and min(seqs) > 3
        expected = store.query(
            platform_dir,
            "SELECT count(*) FROM feed_orders WHERE seq > 3",
        )[0][0]
        assert len(records) == expected == len({(r["order_id"], "deleted_at" in r)
                                                for r in records})
        assert {r["order_id"] for r in records if "deleted_at" in r} >= {1, 2}
        # the listing by updated_at carries it too
        first = sim.get("/v1/orders", params={"limit": 1}).json()["data"][0]
        assert isinstance(first["change_seq"], int)
        before = "2026-10-15T00:00:00Z"
        counted = sim.get("/v1/orders/count", params={"updated_before": before}).json()
        [(live,)] = store.query(platform_dir, "SELECT count(*) FROM orders"
                                " WHERE updated_at < '2026-10-15T00:00:00.000000Z'")
        assert counted == {"entity": "orders", "live": live,
                           "updated_before": "2026-10-15T00:00:00.000000Z"}
    finally:
        sim.stop()


def test_without_change_seq_the_listing_refuses_since_seq(simulator) -> None:
    assert simulator.get("/v1/orders", params={"since_seq": 0}).status_code == 400
    record = simulator.get("/v1/orders", params={"limit": 1}).json()["data"][0]
    assert "change_seq" not in record


# -- the loader ---------------------------------------------------------------------------

LOOKBACK = 2.0  # seconds: much shorter than the late commits below
LATE = "8"  # seconds a long transaction may commit after its rows' updated_at


def _by_sequence() -> dict[str, dict]:
    return {
        name: {**ep, "sequence": "change_seq", "sequence_param": "since_seq"}
        for name, ep in ENDPOINTS.items()
    }


def _load_while_serving(sim, seconds: float, **options) -> list:
    """Load in cycles for ``seconds`` while the platform writes, then stop it."""
    results = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            results.append(pipeline.load(base_url=sim.url, token=TOKEN, **options))
            time.sleep(0.5)
    finally:
        sim.stop()
    return results


def test_a_sequence_cursor_loses_no_late_commit(platform_dir: Path, warehouse: Path) -> None:
    serve = ("--change-seq", "--late-commits", LATE)
    options = {"lookback_seconds": LOOKBACK, "endpoints": _by_sequence()}
    sim = start_simulator(platform_dir, "--rate", "4", *serve)
    _load_while_serving(sim, 12.0, **options)
    late = store.query(
        platform_dir,
        "SELECT count(*) FROM orders o JOIN txlog x ON x.seq = o._seq"
        " WHERE julianday(x.committed_at) - julianday(o.updated_at) > ? / 86400.0",
        LOOKBACK + 1, db=store.PRODUCTION,
    )[0][0]
    assert late, "no order committed later than the lookback: the test proves nothing"
    catch_up_and_reconcile(platform_dir, warehouse, *serve, **options)


def test_a_sequence_the_api_does_not_describe_is_a_clear_error(simulator, warehouse) -> None:
    with pytest.raises(ReplicaError, match="declares the sequence 'change_seq'.*no such field"):
        pipeline.load(base_url=simulator.url, token=TOKEN, endpoints=_by_sequence())
