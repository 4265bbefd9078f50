"""Generating the platform's history: deterministic, plausible, and replicated."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from simulator import store
from simulator.generate import generate
from simulator.model import ENTITIES, EVENT_TYPES, FUNNEL, ORDER_STATUSES, PLATFORMS, REGIONS
from tests.support import AS_OF

TABLES = (*ENTITIES, "deletions")
KEYS = {**{name: e.primary_key for name, e in ENTITIES.items()}, "deletions": "deletion_id"}


def digest(db: Path, table: str) -> str:
    """A checksum of a table's full content in primary-key order."""
    h = hashlib.sha256()
    with closing(store.connect(db, readonly=True)) as con:
        for row in con.execute(f"SELECT * FROM {table} ORDER BY {KEYS[table]}"):
            h.update(repr(row).encode())
    return h.hexdigest()


def digests(directory: Path, db: str = store.PRODUCTION) -> dict[str, str]:
    return {table: digest(directory / db, table) for table in TABLES}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough history for the behaviour to show in the numbers: 3000 orders over 60 days."""
    d = tmp_path_factory.mktemp("history") / "sim"
    generate(d, orders=3000, seed=11, as_of=AS_OF, days=60)
    return d


@pytest.fixture
def db(history: Path) -> Iterator[sqlite3.Connection]:
    with closing(store.connect(history / store.PRODUCTION, readonly=True)) as con:
        yield con


def scalar(con: sqlite3.Connection, sql: str, *args: object) -> object:
    return con.execute(sql, args).fetchone()[0]


# --- determinism -----------------------------------------------------------------------


def test_same_seed_and_as_of_generate_identical_rows(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", orders=500, seed=3, as_of=AS_OF, days=20)
    b = generate(tmp_path / "b", orders=500, seed=3, as_of=AS_OF, days=20)

    assert a.rows == b.rows
    assert all(a.rows[t] > 0 for t in TABLES)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")


def test_another_seed_generates_other_rows(tmp_path: Path) -> None:
    generate(tmp_path / "a", orders=500, seed=3, as_of=AS_OF, days=20)
    generate(tmp_path / "b", orders=500, seed=4, as_of=AS_OF, days=20)

    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a["regions"] == b["regions"]  # reference data
    for table in ("customers", "products", "orders", "order_items", "events"):
        assert a[table] != b[table], table


def test_another_as_of_generates_other_rows(tmp_path: Path) -> None:
    generate(tmp_path / "a", orders=500, seed=3, as_of=AS_OF, days=20)
    generate(tmp_path / "b", orders=500, seed=3, as_of=AS_OF + timedelta(days=1), days=20)

    assert digest(tmp_path / "a" / store.PRODUCTION, "orders") != digest(
        tmp_path / "b" / store.PRODUCTION, "orders"
    )


def test_generation_refuses_bad_arguments_and_an_existing_platform(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path / "x", orders=0, as_of=AS_OF)
    with pytest.raises(ValueError):
        generate(tmp_path / "x", orders=10, days=0, as_of=AS_OF)
    generate(tmp_path / "y", orders=10, as_of=AS_OF)
    with pytest.raises(FileExistsError):
        generate(tmp_path / "y", orders=10, as_of=AS_OF)


# --- plausible behaviour -------------------------------------------------------------------


def test_funnel_narrows_from_views_to_purchases(db: sqlite3.Connection) -> None:
    n = dict(db.execute("SELECT event_type, count(*) FROM events GROUP BY event_type"))

    assert set(n) == set(EVENT_TYPES)
    assert n["product_view"] > n["add_to_cart"] > n["checkout"] > n["purchase"]
    # the step rates follow the model's funnel
    assert n["add_to_cart"] / n["product_view"] == pytest.approx(FUNNEL["add_to_cart"], abs=0.04)
    assert n["checkout"] / n["add_to_cart"] == pytest.approx(FUNNEL["checkout"], abs=0.04)
    assert n["purchase"] / n["checkout"] == pytest.approx(FUNNEL["purchase"], abs=0.04)
    # a purchase is an order: all 3000 orders were bought (a few purchases arrive after as_of)
    assert 0.98 * 3000 <= n["purchase"] <= 3000


def test_purchase_events_point_at_orders(db: sqlite3.Connection) -> None:
    purchases = db.execute(
        "SELECT order_id, product_id FROM events WHERE event_type = 'purchase'"
    ).fetchall()
    assert all(oid is not None and pid is None for oid, pid in purchases)
    orders = {r[0] for r in db.execute("SELECT order_id FROM orders")}
    deleted = {
        int(r[0]) for r in db.execute("SELECT record_id FROM deletions WHERE entity = 'orders'")
    }
    assert {oid for oid, _ in purchases} <= orders | deleted
    # other steps are about a product
    assert scalar(
        db, "SELECT count(*) FROM events WHERE event_type != 'purchase' AND product_id IS NULL"
    ) == 0


def test_order_totals_add_up(db: sqlite3.Connection) -> None:
    assert scalar(db, "SELECT count(*) FROM orders") > 2900
    assert scalar(
        db,
        "SELECT count(*) FROM orders"
        " WHERE total_cents != subtotal_cents - discount_cents + shipping_cents",
    ) == 0
    mismatched = db.execute(
        "SELECT o.order_id FROM orders o JOIN ("
        "  SELECT order_id, sum(quantity * unit_price_cents) AS lines,"
        "         sum(discount_cents) AS discounts, count(*) AS n"
        "  FROM order_items GROUP BY order_id) i USING (order_id)"
        " WHERE i.lines != o.subtotal_cents OR i.discounts != o.discount_cents"
    ).fetchall()
    assert mismatched == []
    # every order has lines, and some orders have a discount
    assert scalar(
        db,
        "SELECT count(*) FROM orders WHERE order_id NOT IN (SELECT order_id FROM order_items)",
    ) == 0
    assert scalar(db, "SELECT count(*) FROM orders WHERE discount_cents > 0") > 100


def test_customers_exist_before_their_orders(db: sqlite3.Connection) -> None:
    assert scalar(
        db,
        "SELECT count(*) FROM orders o JOIN customers c USING (customer_id)"
        " WHERE c.created_at > o.ordered_at",
    ) == 0
    # an order without its customer is one whose customer was erased
    orphans = {
        r[0]
        for r in db.execute(
            "SELECT DISTINCT customer_id FROM orders"
            " WHERE customer_id NOT IN (SELECT customer_id FROM customers)"
        )
    }
    erased = {
        int(r[0]) for r in db.execute("SELECT record_id FROM deletions WHERE entity = 'customers'")
    }
    assert orphans <= erased


def test_values_come_from_the_model(db: sqlite3.Connection) -> None:
    def distinct(sql: str) -> set:
        return {r[0] for r in db.execute(sql)}

    assert distinct("SELECT status FROM orders") <= set(ORDER_STATUSES)
    assert distinct("SELECT event_type FROM events") <= set(EVENT_TYPES)
    assert distinct("SELECT platform FROM events") <= set(PLATFORMS)
    assert distinct("SELECT region_id FROM orders") <= set(REGIONS)
    # an order is priced in its region's currency
    pairs = db.execute("SELECT DISTINCT region_id, currency FROM orders").fetchall()
    assert all(REGIONS[region][2] == currency for region, currency in pairs)


def test_timestamps_are_consistent_and_status_follows_age(db: sqlite3.Connection) -> None:
    as_of = store.iso(AS_OF)
    assert scalar(db, "SELECT max(updated_at) FROM orders") <= as_of
    assert scalar(db, "SELECT max(updated_at) FROM events") <= as_of
    assert scalar(db, "SELECT count(*) FROM orders WHERE updated_at < ordered_at") == 0
    assert scalar(db, "SELECT count(*) FROM events WHERE updated_at < occurred_at") == 0
    # orders are paid within half an hour, so day-old orders have moved on
    day_before = store.iso(AS_OF - timedelta(days=1))
    old = dict(
        db.execute(
            "SELECT status, count(*) FROM orders WHERE ordered_at < ? GROUP BY status",
            (day_before,),
        )
    )
    assert "placed" not in old
    assert max(old, key=old.get) == "delivered"
    assert {"cancelled", "returned"} <= set(old)


def test_replica_starts_equal_to_production(history: Path) -> None:
    assert digests(history, store.REPLICA) == digests(history, store.PRODUCTION)
    assert store.query(history, "SELECT last_seq FROM replication_state") == [(1,)]


def test_deleted_records_are_recorded_and_gone(db: sqlite3.Connection) -> None:
    deletions = db.execute("SELECT entity, record_id, deleted_at FROM deletions").fetchall()
    by_entity: dict[str, set[int]] = {}
    for entity, record_id, deleted_at in deletions:
        assert ENTITIES[entity].deletable
        assert deleted_at <= store.iso(AS_OF)
        by_entity.setdefault(entity, set()).add(int(record_id))
    assert {"customers", "orders", "order_items"} <= set(by_entity)

    next_ids = json.loads(scalar(db, "SELECT value FROM meta WHERE key = 'next_ids'"))
    for entity in ("customers", "orders", "order_items"):
        pk = ENTITIES[entity].primary_key
        present = {r[0] for r in db.execute(f"SELECT {pk} FROM {entity}")}
        assert not present & by_entity[entity], f"deleted {entity} still present"
        # ids are dense: every id handed out is either present or recorded as deleted
        assert present | by_entity[entity] == set(range(1, next_ids[entity])), entity
    # a deleted order takes its lines along
    assert scalar(
        db,
        "SELECT count(*) FROM order_items WHERE order_id IN"
        " (SELECT CAST(record_id AS INTEGER) FROM deletions WHERE entity = 'orders')",
    ) == 0


def test_erased_customers_are_not_active_after_erasure(db: sqlite3.Connection) -> None:
    erased = db.execute(
        "SELECT CAST(record_id AS INTEGER), deleted_at FROM deletions WHERE entity = 'customers'"
    ).fetchall()
    assert erased, "the history erases some customers"
    for table, at in (("orders", "ordered_at"), ("events", "occurred_at")):
        after = db.execute(
            f"SELECT count(*) FROM {table} t JOIN deletions d ON d.entity = 'customers'"
            f" AND CAST(d.record_id AS INTEGER) = t.customer_id WHERE t.{at} > d.deleted_at"
        ).fetchone()[0]
        assert after == 0, f"{after} {table} by customers after their erasure"


def test_generation_speed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted: 20k orders with their customers, lines and events."""
    started = time.perf_counter()
    summary = generate(tmp_path / "speed", orders=20_000, seed=5, as_of=AS_OF)
    seconds = time.perf_counter() - started
    rows = sum(summary.rows.values())
    with capsys.disabled():
        print(
            f"\ngenerated 20,000 orders ({rows:,} rows) in {seconds:.2f} s"
            f" = {rows / seconds:,.0f} rows/s"
        )
    assert summary.rows["orders"] > 19_900
