"""The replica's feed: the records the API serves, kept by replication. Whatever the
platform writes (new rows, updates, deletions, schema changes), the feed kept
transaction by transaction must equal one rendered afresh from the replica's tables,
whether the replica stores the rendered records or renders them through views; and the
API serves the same bytes either way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from simulator import store
from simulator.api import create_app
from simulator.generate import generate
from simulator.model import ENTITIES
from simulator.platform import Platform
from tests.support import AS_OF, TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=store.FEED_STORAGES)
def platform_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The small generated platform, its replica's feeds kept each way in turn."""
    d = tmp_path / "sim"
    generate(d, orders=300, seed=7, as_of=AS_OF, days=30, feed=request.param)
    return d


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


def test_views_hold_each_record_once_and_a_stored_feed_keeps_them_rendered(
    platform_dir: Path,
) -> None:
    mode = store.query(platform_dir, f"SELECT mode FROM {store.FEED_STORAGE}")[0][0]
    kinds = dict(store.query(platform_dir, "SELECT name, type FROM sqlite_schema"))
    kept_as = "view" if mode == store.VIEWS else "table"
    assert all(kinds[store.feed_table(entity)] == kept_as for entity in ENTITIES)
    tables = [name for name, kind in kinds.items() if kind == "table"]
    with_records = {t for t in tables if "record" in {r[0] for r in store.query(
        platform_dir, "SELECT name FROM pragma_table_info(?)", t)}}
    assert with_records == (set() if mode == store.VIEWS
                            else {store.feed_table(entity) for entity in ENTITIES})
    # an update leaves the position of the version it replaced
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


def _served(d: Path) -> dict[str, list[bytes]]:
    """Every page the API serves of three entities: in keyset order, in commit order
    (``since_seq``) and by page number (the positions of superseded versions counted)."""
    served: dict[str, list[bytes]] = {}
    with TestClient(create_app(d, TOKEN, rate_limit=0, change_seq=True),
                    headers=AUTH) as native, \
            TestClient(create_app(d, TOKEN, rate_limit=0, profile="pages"),
                       headers=AUTH) as pages:
        for entity in ("orders", "customers", "order_items"):
            for name, extra in (("keyset", {}), ("since_seq", {"since_seq": 0})):
                bodies, cursor = [], None
                while True:
                    query: dict[str, Any] = {**extra, "limit": 97,
                                             **({"cursor": cursor} if cursor else {})}
                    r = native.get(f"/v1/{entity}", params=query,
                                   headers={"Accept": "application/json"})
                    assert r.status_code == 200, r.text
                    bodies.append(r.content)
                    cursor = r.json()["next_cursor"]
                    if cursor is None:
                        break
                served[f"{entity} {name}"] = bodies
            bodies, page, total = [], 1, 1
            while page <= total:
                r = pages.get(f"/v1/{entity}", params={"page": page, "per_page": 97})
                assert r.status_code == 200, r.text
                bodies.append(r.content)
                total, page = r.json()["total_pages"], page + 1
            served[f"{entity} pages"] = bodies
    return served


def _keep_feeds(d: Path, mode: str) -> None:
    con = store.connect(d / store.REPLICA)
    try:
        con.execute("BEGIN")
        store.set_feed_storage(con, mode)
        store.sync_feeds(con)
        con.execute("COMMIT")
    finally:
        con.close()


def test_the_api_serves_the_same_bytes_whichever_way_the_feed_is_kept(
    platform_dir: Path,
) -> None:
    mode = store.query(platform_dir, f"SELECT mode FROM {store.FEED_STORAGE}")[0][0]
    other = store.VIEWS if mode == store.STORED else store.STORED
    with Platform(platform_dir, seed=5) as platform:
        platform.tick(20)  # new rows, updates (superseded positions) and deletions
        delete_some(platform, "orders", 3)
        store.replicate(platform_dir)
    served = _served(platform_dir)
    assert sum(len(b) for b in served["orders pages"]) > 1000
    _keep_feeds(platform_dir, other)  # the feeds are replaced, kept the other way
    kinds = dict(store.query(platform_dir, "SELECT name, type FROM sqlite_schema"))
    assert kinds[store.feed_table("orders")] == ("view" if other == store.VIEWS else "table")
    assert _served(platform_dir) == served
    assert store.feeds(platform_dir) == store.feeds(platform_dir, rebuild=True)
    # and replication goes on in the other way
    with Platform(platform_dir, seed=6) as platform:
        platform.tick(10)
        delete_some(platform, "customers", 2)
        store.replicate(platform_dir)
    assert store.feeds(platform_dir) == store.feeds(platform_dir, rebuild=True)
    again = _served(platform_dir)
    _keep_feeds(platform_dir, mode)
    assert _served(platform_dir) == again


def test_an_unknown_feed_storage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="feed must be one of stored, views"):
        generate(tmp_path / "sim", orders=10, seed=1, as_of=AS_OF, days=2, feed="copies")
