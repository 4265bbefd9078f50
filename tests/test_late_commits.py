"""Late commits: long transactions whose rows carry their start time but become visible
only at their commit. The simulator keeps its invariants with them on, exposes the commit
sequence on request, and the loader loses no row through either of its two defences: a
commit-ordered cursor, or wide re-reads with count reconciliation."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from benchmarks.oracle import assert_reconciled
from loaders import config
from loaders.replica import Reread, _walk
from loaders.replica.errors import ReplicaError
from loaders.replica.lookback import no_versions
from loaders.replica.protocol import Listing
from loaders.replica.settings import ENDPOINTS
from loaders.runners import late_rows, pipeline
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


def _late_row_settings(monkeypatch, reread: float, window: float, reconcile: float) -> None:
    for name, value in (("REREAD_INTERVAL", reread), ("REREAD_WINDOW", window),
                        ("RECONCILE_INTERVAL", reconcile)):
        monkeypatch.setenv(f"SOURCES__REPLICA__{name}_SECONDS", str(value))


def test_wide_rereads_and_reconciliation_lose_no_late_commit(
    platform_dir: Path, warehouse: Path, monkeypatch
) -> None:
    _late_row_settings(monkeypatch, reread=3, window=30, reconcile=3)
    options = {"lookback_seconds": LOOKBACK}
    sim = start_simulator(platform_dir, "--rate", "4", "--late-commits", LATE)
    _load_while_serving(sim, 12.0, **options)
    time.sleep(3)  # the catch-up cycle re-reads: a commit is caught within the interval
    catch_up_and_reconcile(platform_dir, warehouse, **options)


def _notices(warehouse: Path, kind: str) -> list[dict]:
    path = warehouse.parent / "dlt" / "notifications.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [n for n in map(json.loads, lines) if n["key"].startswith("alarm:") and kind in n["key"]]


def _insert_late_orders(platform_dir: Path, keys: range, minutes: float) -> None:
    """New orders committed now with an updated_at ``minutes`` ago: far behind any
    lookback."""
    [(newest,)] = store.query(platform_dir, "SELECT max(updated_at) FROM orders")
    stamp = store.iso(store.parse_iso(newest) - timedelta(minutes=minutes))
    [template] = store.query(platform_dir, "SELECT * FROM orders LIMIT 1", db=store.PRODUCTION)
    with Platform(platform_dir) as platform:
        columns = platform.prod.columns("orders")
        platform.insert("orders", [
            {**dict(zip(columns, template, strict=True)), "order_id": k, "updated_at": stamp}
            for k in keys
        ])


def test_a_count_gap_is_notified_once_then_repaired(
    platform_dir: Path, warehouse: Path, monkeypatch
) -> None:
    _late_row_settings(monkeypatch, reread=0, window=30, reconcile=0.01)
    sim = start_simulator(platform_dir)
    try:
        def load() -> pipeline.LoadResult:
            result = pipeline.load(base_url=sim.url, token=TOKEN, lookback_seconds=LOOKBACK)
            time.sleep(0.05)  # the reconciliation is due again
            return result

        load()
        assert _notices(warehouse, "count_gap") == []
        _insert_late_orders(platform_dir, range(9001, 9004), minutes=10)
        store.wait_for_replica(platform_dir)
        load()  # behind the lookback: not loaded, but counted
        [opened] = _notices(warehouse, "count_gap")
        assert opened["title"] == "orders: 3 record(s) upstream missing from raw"
        repair = load()  # orders re-read from the start date: the 3 load, nothing else
        assert repair.rows.get("orders") == 3
        assert load().rows.get("orders", 0) == 0
        kinds = [n["kind"] for n in _notices(warehouse, "count_gap")]
        assert kinds == ["count_gap", "recovery"]
    finally:
        sim.stop()
    assert_reconciled(platform_dir, warehouse)


def test_without_a_count_endpoint_reconciliation_is_skipped_saying_so_once(
    platform_dir: Path, warehouse: Path, monkeypatch, caplog
) -> None:
    _late_row_settings(monkeypatch, reread=0, window=30, reconcile=0.01)
    sim = start_simulator(platform_dir, "--no-counts")
    try:
        with caplog.at_level(logging.WARNING, logger="loaders.runners.late_rows"):
            for _ in range(2):
                pipeline.load(base_url=sim.url, token=TOKEN, lookback_seconds=LOOKBACK)
                time.sleep(0.05)
    finally:
        sim.stop()
    said = [r.getMessage() for r in caplog.records if "serves no record counts" in r.getMessage()]
    assert len(said) == 1 and "/count answers 404" in said[0]
    assert _notices(warehouse, "count_gap") == []


def test_a_sequence_the_api_does_not_describe_is_a_clear_error(simulator, warehouse) -> None:
    with pytest.raises(ReplicaError, match="declares the sequence 'change_seq'.*no such field"):
        pipeline.load(base_url=simulator.url, token=TOKEN, endpoints=_by_sequence())


def test_the_first_loads_start_the_clocks_of_rereads_and_reconciliation(
    platform_dir, warehouse, monkeypatch
):
    # a backfill just read everything: re-reading or counting it again would only cost
    _late_row_settings(monkeypatch, reread=3600, window=30, reconcile=3600)
    counts: list[str] = []
    count = late_rows.fetch_live_count
    monkeypatch.setattr(late_rows, "fetch_live_count",
                        lambda *a, **k: counts.append(a[1]) or count(*a, **k))
    sim = start_simulator(platform_dir)
    try:
        pipeline.load(base_url=sim.url, token=TOKEN)
        state = json.loads((warehouse.parent / "dlt" / late_rows.STATE_FILE).read_text())
    finally:
        sim.stop()
    assert counts == []
    assert state["reconciled_at"] and state["reread_at"]
    assert_reconciled(platform_dir, warehouse)


def test_a_deferred_reconciliation_runs_after_the_cycle_and_its_gap_is_raised_next(
    platform_dir: Path, warehouse: Path, monkeypatch
) -> None:
    """watch's way: the cycle leaves the counts to after its publication; what they find
    is raised, and repaired, by the next cycle."""
    _late_row_settings(monkeypatch, reread=0, window=30, reconcile=0.01)
    sim = start_simulator(platform_dir)
    options = {"base_url": sim.url, "token": TOKEN, "lookback_seconds": LOOKBACK}
    try:
        def cycle() -> pipeline.LoadResult:
            result = pipeline.cycle(defer_counts=True, **options)
            time.sleep(0.05)  # the reconciliation is due again
            return result

        def reconcile() -> list[str]:
            started = pipeline.start_reconciliation(**options)
            assert started is not None
            return pipeline.finish_reconciliation(started)

        cycle()
        _insert_late_orders(platform_dir, range(9001, 9004), minutes=10)
        store.wait_for_replica(platform_dir)
        cycle()  # behind the lookback: not loaded, the counts left for later
        assert _notices(warehouse, "count_gap") == []
        assert "orders" in reconcile()
        assert _notices(warehouse, "count_gap") == []
        assert pipeline.start_reconciliation(**options) is None  # nothing pending
        repair = cycle()  # raises the gap, and re-reads orders from the start date
        [opened] = _notices(warehouse, "count_gap")
        assert opened["title"] == "orders: 3 record(s) upstream missing from raw"
        assert repair.rows.get("orders") == 3
        assert "orders" in reconcile()  # the repair checked
        cycle()
        kinds = [n["kind"] for n in _notices(warehouse, "count_gap")]
        assert kinds == ["count_gap", "recovery"]
    finally:
        sim.stop()
    assert_reconciled(platform_dir, warehouse)


# a wide re-read due at once, its window the whole (small) history, two pages of 100 a cycle
WALK_OPTIONS = {"lookback_seconds": LOOKBACK, "page_size": 100}


def _walk_settings(monkeypatch) -> None:
    _late_row_settings(monkeypatch, reread=0.01, window=60 * 86400, reconcile=0)
    monkeypatch.setenv("SOURCES__REPLICA__REREAD_PAGES_PER_CYCLE", "2")


def _walk_cycles(url: str, warehouse: Path) -> list[tuple[int, dict]]:
    """watch's cycles (run lock held, re-reads spread) until a wide re-read's walk is
    over: per cycle, the orders it loaded and where each walk got to."""
    state_file = warehouse.parent / "dlt" / late_rows.STATE_FILE
    out: list[tuple[int, dict]] = []
    with pipeline.run_lock("watch"):
        for _ in range(60):
            result = pipeline.cycle(defer_counts=True, base_url=url, token=TOKEN,
                                    **WALK_OPTIONS)
            walking = json.loads(state_file.read_text()).get(late_rows.WALK) or {}
            out.append((result.rows.get("orders", 0), walking))
            if not walking:
                return out
    raise AssertionError(f"the walk did not end in 60 cycles: {out}")


def test_a_cycling_runner_walks_a_wide_reread_in_steps_and_loses_no_late_commit(
    platform_dir: Path, warehouse: Path, monkeypatch
) -> None:
    """In a runner that cycles, a wide re-read reads its window a few pages a cycle,
    from where it got to: no cycle reads the whole window, nothing read again unchanged
    loads, and a commit late by less than the window loads once the walk reaches it."""
    _walk_settings(monkeypatch)
    sim = start_simulator(platform_dir)
    try:
        pipeline.load(base_url=sim.url, token=TOKEN, **WALK_OPTIONS)  # starts the clock
        _insert_late_orders(platform_dir, range(9001, 9004), minutes=10)
        store.wait_for_replica(platform_dir)
        time.sleep(0.05)  # a re-read is due
        cycles = _walk_cycles(sim.url, warehouse)
    finally:
        sim.stop()
    loaded = [n for n, _ in cycles]
    walked = [w for _, w in cycles if w]
    assert len(walked) >= 3, walked  # steps, not one cycle
    events = [w["events"] for w in walked if w.get("events")]
    assert events == sorted(events) and len(set(events)) == len(events), walked
    # the late orders, 10 minutes behind the newest, load when the walk gets there
    assert sum(loaded) == 3 and loaded[0] == 0, loaded
    assert_reconciled(platform_dir, warehouse)


def test_a_walk_past_a_deletion_newer_than_raw_still_loads_what_it_reads(
    platform_dir: Path, warehouse: Path, monkeypatch
) -> None:
    """dlt's last cursor can be a deletion's, newer than any row raw holds (its row is
    gone): the walk's rows are still let through from its start, and a commit late by
    weeks, inside the window, loads."""
    _walk_settings(monkeypatch)
    sim = start_simulator(platform_dir)
    try:
        pipeline.load(base_url=sim.url, token=TOKEN, **WALK_OPTIONS)
        # deleted now, weeks after the generated history's newest row
        [(key,)] = store.query(platform_dir, "SELECT min(order_id) FROM orders")
        with Platform(platform_dir) as platform:
            platform.delete_records("orders", [key])
        store.wait_for_replica(platform_dir)
        pipeline.load(base_url=sim.url, token=TOKEN, **WALK_OPTIONS)
        _insert_late_orders(platform_dir, range(9001, 9004), minutes=40 * 1440)
        store.wait_for_replica(platform_dir)
        time.sleep(0.05)  # a re-read is due
        cycles = _walk_cycles(sim.url, warehouse)
    finally:
        sim.stop()
    assert sum(n for n, _ in cycles) == 3, cycles
    assert_reconciled(platform_dir, warehouse)


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _walked(pages: list[list[int]], limit: int, lookback_start: int) -> tuple[Reread, int]:
    """A walk over parsed pages whose cursors are ``pages`` (minutes after T0): the walk,
    and how many pages it read."""
    def page(minutes: list[int]) -> SimpleNamespace:
        stamps = [T0 + timedelta(minutes=m) for m in minutes]
        return SimpleNamespace(table=pa.table(
            {"updated_at": pa.array(stamps, pa.timestamp("us", tz="UTC"))}))

    def listed(params, since):
        yield from (page(p) for p in pages)

    walk = Reread(1.0, no_versions(), since=T0, pages=limit)
    read = list(_walk(walk, listed, lambda parsed: [parsed], "updated_at",
                      T0 + timedelta(minutes=lookback_start), Listing(), 100))
    return walk, len(read)


def test_a_walk_stops_after_its_pages_in_cursor_order_and_reads_on_otherwise():
    in_order = [[0, 1], [2, 3], [4, 5], [6, 7]]
    walk, read = _walked(in_order, limit=2, lookback_start=60)
    assert read == 2 and not walk.finished and walk.reached == T0 + timedelta(minutes=3)
    # a page from the lookback's start on: the usual listing reads the rest
    walk, read = _walked(in_order, limit=0, lookback_start=4)
    assert read == 3 and walk.finished
    walk, read = _walked(in_order, limit=0, lookback_start=60)
    assert read == 4 and walk.finished and walk.reached == T0 + timedelta(minutes=7)
    # pages out of cursor order: where it got to says nothing of what it has not read
    walk, read = _walked([[0, 5], [2, 3], [6, 7], [8, 9]], limit=2, lookback_start=60)
    assert read == 4 and walk.finished


@pytest.mark.parametrize("value", ["-1", "2.5", "many"])
def test_a_bad_reread_page_count_is_an_error_naming_it(monkeypatch, value) -> None:
    monkeypatch.setenv("SOURCES__REPLICA__REREAD_PAGES_PER_CYCLE", value)
    with pytest.raises(ValueError, match="reread_pages_per_cycle"):
        config.late_row_settings()
