"""The replica's feed: the records the API serves, kept by replication. Whatever the
platform writes (new rows, updates, deletions, schema changes), the feed kept
transaction by transaction must equal one rendered afresh from the replica's tables."""

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
