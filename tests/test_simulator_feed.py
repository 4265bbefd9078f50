"""The replica's feed: the records the API serves, kept by replication. Whatever the
platform writes (new rows, updates, deletions, schema changes), the feed kept
transaction by transaction must equal one rendered afresh from the replica's tables.
The replica holds each record once, in its table: the feed renders it from there."""

from __future__ import annotations

import json
from pathlib import Path

from simulator import store
from simulator.model import ENTITIES
from simulator.platform import Platform


def delete_some(platform: Platform, entity: str, count: int) -> None:
    pk = ENTITIES[entity].primary_key
    listed = f"SELECT {pk} FROM {entity} LIMIT ?"
    ids = [r[0] for r in store.query(platform.dir, listed, count, db=store.PRODUCTION)]
    platform.delete_records(entity, ids)


def test_the_feed_kept_by_replication_equals_one_rendered_afresh(platform_dir: Path) -> None:
    with Platform(platform_dir, seed=3) as platform:
        assert store.feeds(platform_dir) == store.feeds(platform_dir, rebuild=True)  # bulk-built
        for step in range(6):
            platform.tick(25)  # new orders, their events, status moves, edits
            delete_some(platform, ("orders", "customers", "order_items")[step % 3], 2)
            if step == 2:
                platform.evolve("additive")
            if step == 4:
                platform.evolve("restructure")
            store.replicate(platform_dir)
            kept, afresh = store.feeds(platform_dir), store.feeds(platform_dir, rebuild=True)
            assert kept == afresh, f"step {step}"

    kept = store.feeds(platform_dir)
    for entity, e in ENTITIES.items():
        rows = dict(
            store.query(platform_dir, f"SELECT {e.primary_key}, updated_at FROM {entity}")
        )
        live = {k: at for at, k, dead, *_ in kept[entity] if not dead}
        assert live == rows, entity
        records = [json.loads(r) for _, _, dead, r, _ in kept[entity] if not dead]
        assert {r[e.primary_key] for r in records} == set(rows)
    # the schema changes reached the records: a combined field is gone, the new one in
    customer = json.loads(kept["customers"][-1][3])
    assert "full_name" in customer and "first_name" not in customer
    deletions = "SELECT count(*) FROM deletions WHERE entity = 'orders'"
    [(deleted,)] = store.query(platform_dir, deletions)
    assert sum(dead for _, _, dead, *_ in kept["orders"]) == deleted > 0


def test_a_replica_without_feeds_gets_them_on_its_next_replication(platform_dir: Path) -> None:
    store.drop_feeds(platform_dir)
    store.replicate(platform_dir)  # nothing new to replicate: the feeds are built anyway
    built = store.feeds(platform_dir)
    assert built == store.feeds(platform_dir, rebuild=True)
    assert all(built[entity] for entity in ("orders", "customers", "events"))


def test_the_replica_holds_each_record_once_and_the_positions_it_replaced(
    platform_dir: Path,
) -> None:
    # no stored copy of the records: the feeds are views over the tables
    kinds = dict(store.query(platform_dir, "SELECT name, type FROM sqlite_schema"))
    assert all(kinds[store.feed_table(entity)] == "view" for entity in ENTITIES)
    tables = [name for name, kind in kinds.items() if kind == "table"]
    for table in tables:
        columns = {r[0] for r in store.query(
            platform_dir, "SELECT name FROM pragma_table_info(?)", table)}
        assert "record" not in columns, table
    # an update leaves the position of the version it replaced, read before the copy
    before = store.query(
        platform_dir, "SELECT _seq, order_id, 0, updated_at FROM orders ORDER BY order_id LIMIT 3"
    )
    with Platform(platform_dir, seed=3) as platform:
        for _, order_id, _, _ in before:
            platform.update("orders", order_id, status="delivered")
        store.replicate(platform_dir)
    superseded = store.query(
        platform_dir, f"SELECT seq, k, dead, updated_at FROM {store.superseded_table('orders')}"
    )
    assert sorted(superseded) == sorted(before)


def test_a_feed_kept_as_rendered_records_is_replaced_by_the_views(platform_dir: Path) -> None:
    served = store.feeds(platform_dir)
    store.drop_feeds(platform_dir)
    store.write_replica_only(  # a replica made when feeds were tables of records
        platform_dir,
        "CREATE TABLE feed_orders (updated_at TEXT, k INTEGER, dead INTEGER, record TEXT,"
        " seq INTEGER)",
    )
    kinds = dict(store.query(platform_dir, "SELECT name, type FROM sqlite_schema"))
    assert kinds[store.feed_table("orders")] == "view"
    assert store.feeds(platform_dir) == served
