"""The replica's feed: the records the API serves, kept by replication. Whatever the
platform writes (new rows, updates, deletions, schema changes), the feed kept
transaction by transaction must equal one rendered afresh from the replica's tables."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from simulator import store
from simulator.model import ENTITIES
from simulator.platform import Activity, Platform


def feeds(directory: Path, rebuild: bool = False) -> dict[str, list[tuple]]:
    """Every entity's feed, in listing order; with ``rebuild``, as rendered afresh from
    the tables (in a transaction rolled back: the replica is left as it was)."""
    with closing(sqlite3.connect(directory / store.REPLICA, isolation_level=None)) as con:
        con.execute("BEGIN")
        try:
            if rebuild:
                store.sync_feeds(con, rebuild=True)
            return {
                entity: con.execute(
                    f"SELECT updated_at, k, dead, record FROM {store.feed_table(entity)}"
                    " ORDER BY updated_at, k, dead"
                ).fetchall()
                for entity in ENTITIES
            }
        finally:
            con.execute("ROLLBACK")


def delete_some(platform: Platform, entity: str, count: int) -> None:
    pk = ENTITIES[entity].primary_key
    with platform.prod.tx() as (con, seq):
        ids = [r[0] for r in con.execute(f"SELECT {pk} FROM {entity} LIMIT ?", (count,))]
        for record_id in ids:
            platform.delete(con, seq, store.utcnow(), entity, record_id, Activity())


def test_the_feed_kept_by_replication_equals_one_rendered_afresh(platform_dir: Path) -> None:
    platform = Platform(platform_dir, seed=3)
    try:
        assert feeds(platform_dir) == feeds(platform_dir, rebuild=True)  # bulk-built
        for step in range(6):
            platform.tick(25)  # new orders, their events, status moves, edits
            delete_some(platform, ("orders", "customers", "order_items")[step % 3], 2)
            if step == 2:
                platform.schedule("additive", store.utcnow())
                platform.apply_due()
            if step == 4:
                platform.schedule("restructure", store.utcnow())
                platform.apply_due()
            store.replicate(platform_dir)
            assert feeds(platform_dir) == feeds(platform_dir, rebuild=True), f"step {step}"
    finally:
        platform.close()

    kept = feeds(platform_dir)
    with closing(sqlite3.connect(platform_dir / store.REPLICA)) as con:
        for entity, e in ENTITIES.items():
            rows = dict(con.execute(f"SELECT {e.primary_key}, updated_at FROM {entity}"))
            live = {k: at for at, k, dead, _ in kept[entity] if not dead}
            assert live == rows, entity
            records = [json.loads(r) for _, _, dead, r in kept[entity] if not dead]
            assert {r[e.primary_key] for r in records} == set(rows)
        # the schema changes reached the records: a combined field is gone, the new one in
        customer = json.loads(kept["customers"][-1][3])
        assert "full_name" in customer and "first_name" not in customer
        deleted = con.execute(
            "SELECT count(*) FROM deletions WHERE entity = 'orders'"
        ).fetchone()[0]
    assert sum(dead for _, _, dead, _ in kept["orders"]) == deleted > 0


def test_a_replica_without_feeds_gets_them_on_its_next_replication(platform_dir: Path) -> None:
    with closing(sqlite3.connect(platform_dir / store.REPLICA)) as con:
        for entity in ENTITIES:
            con.execute(f"DROP TABLE {store.feed_table(entity)}")
        con.execute(f"DROP TABLE {store.FEED_SHAPES}")
        con.commit()
    store.replicate(platform_dir)  # nothing new to replicate: the feeds are built anyway
    built = feeds(platform_dir)
    assert built == feeds(platform_dir, rebuild=True)
    assert all(built[entity] for entity in ("orders", "customers", "events"))
