"""Keyset paging under concurrent writes, as a property: whatever the page sizes and
whatever the platform writes between pages, a client that pages to the end misses no row
and sees no row version twice."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator import store
from simulator.api import create_app
from simulator.generate import generate
from simulator.model import ENTITIES
from simulator.platform import Platform
from tests.support import AS_OF, TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}

# what the platform may do between two pages
writes = st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 3)),  # new orders, transitions, edits
    st.tuples(st.just("touch"), st.lists(st.integers(0, 10_000), min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.lists(st.integers(0, 10_000), min_size=1, max_size=2)),
)
steps = st.lists(
    st.tuples(st.integers(1, 40), st.lists(writes, max_size=3)), min_size=1, max_size=12
)


def state(directory: Path, entity: str) -> tuple[dict, dict]:
    """The replica's rows {id: updated_at} and tombstones {id: deleted_at} of an entity."""
    pk = ENTITIES[entity].primary_key
    rows = dict(store.query(directory, f"SELECT {pk}, updated_at FROM {entity}"))
    tombs = dict(
        store.query(
            directory,
            "SELECT CAST(record_id AS INTEGER), deleted_at FROM deletions WHERE entity = ?",
            entity,
        )
    )
    return rows, tombs


def write(platform: Platform, entity: str, op: tuple) -> None:
    kind, arg = op
    if kind == "tick":
        platform.tick(arg)
        return
    pk = ENTITIES[entity].primary_key
    listed = f"SELECT {pk} FROM {entity} ORDER BY {pk}"
    ids = [r[0] for r in store.query(platform.dir, listed, db=store.PRODUCTION)]
    if not ids:
        return
    chosen = list({ids[i % len(ids)] for i in arg})
    if kind == "touch":
        platform.touch(entity, chosen)
    else:
        platform.delete_records(entity, chosen)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("paging")


counter = itertools.count()
WRITING_PAGES = 40


@settings(
    max_examples=25,
    deadline=None,
    # the same examples on every run and machine: CI checks what was checked here
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    entity=st.sampled_from(["orders", "customers"]),
    plan=steps,
    from_middle=st.booleans(),
)
def test_paging_under_concurrent_writes_misses_nothing(
    workspace: Path, entity: str, plan: list, from_middle: bool
) -> None:
    d = workspace / f"p{next(counter)}"
    generate(d, orders=80, seed=1, as_of=AS_OF, days=5)
    platform = Platform(d)
    pk = ENTITIES[entity].primary_key
    try:
        before, _ = state(d, entity)
        since = sorted(before.values())[len(before) // 2] if from_middle else None
        params = {"updated_since": since} if since else {}

        seen: list[tuple[object, str, bool]] = []  # (id, updated_at, tombstone)
        with TestClient(create_app(d, TOKEN, rate_limit=0), headers=AUTH) as client:
            cursor = None
            for page, (limit, ops) in enumerate(itertools.cycle(plan)):
                assert page < 2000, "paging does not end"
                query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
                body = client.get(f"/v1/{entity}", params=query).json()
                seen += [(r[pk], r["updated_at"], "deleted_at" in r) for r in body["data"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
                # writes go on for the first pages only: a reader slower than the writer
                # never reaches the end (rightly), so the end is checked once writes stop
                if page < WRITING_PAGES:
                    for op in ops:
                        write(platform, entity, op)
                    store.replicate(d)
        after, tombs = state(d, entity)
    finally:
        platform.close()

    # no row version comes twice
    assert len(seen) == len(set(seen))
    # versions of a row come in the order they were written
    last: dict[object, str] = {}
    for key, updated_at, _ in seen:
        assert updated_at > last.get(key, ""), f"{entity} {key} went back in time"
        last[key] = updated_at
    # a row nobody touched while we paged is there, as it was
    untouched = {k: v for k, v in before.items() if after.get(k) == v}
    assert {(k, v, False) for k, v in untouched.items() if not since or v >= since} <= set(seen)
    # every row and tombstone there at the end (nothing is written after the last page) is
    # seen in its final version
    final = {(k, v, False) for k, v in after.items()} | {(k, v, True) for k, v in tombs.items()}
    expected = {x for x in final if not since or x[1] >= since}
    assert expected <= set(seen)
    # and the last version seen of a row is its final one: no phantoms
    assert {x for x in seen if x[1] == last[x[0]]} <= final


# --- ties ---------------------------------------------------------------------------------


def test_many_rows_sharing_one_updated_at_page_correctly(platform_dir: Path) -> None:
    """Rows, tombstones and string keys with one identical updated_at, paged 3 at a time."""
    [(stamp,)] = store.query(
        platform_dir,
        "SELECT updated_at FROM orders ORDER BY updated_at LIMIT 1 OFFSET 100",
        db=store.PRODUCTION,
    )
    [template] = store.query(
        platform_dir,
        "SELECT * FROM orders WHERE updated_at = ? LIMIT 1",
        stamp,
        db=store.PRODUCTION,
    )
    with Platform(platform_dir) as platform:
        columns = platform.prod.columns("orders")
        # 20 new orders written at exactly the same time as an existing one
        platform.insert(
            "orders",
            [
                {**dict(zip(columns, template, strict=True)), "order_id": oid, "updated_at": stamp}
                for oid in range(5001, 5021)
            ],
        )
        # two deleted at that very time, tombstones interleaving with the rows
        platform.delete_records("orders", [5003, 5010], deleted_at=store.parse_iso(stamp))
        # and regions (string keys) sharing one time too
        platform.insert(
            "regions",
            [
                {"region_id": f"test-{i}", "region_name": "Test", "country_code": "XX",
                 "currency": "USD", "created_at": stamp, "updated_at": stamp}
                for i in range(8)
            ],
        )
    store.replicate(platform_dir)

    with TestClient(create_app(platform_dir, TOKEN), headers=AUTH) as client:
        for entity, pk in (("orders", "order_id"), ("regions", "region_id")):
            records, cursor, pages = [], None, 0
            while True:
                query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
                body = client.get(f"/v1/{entity}", params=query).json()
                assert len(body["data"]) == 3 or not body["has_more"]
                records += body["data"]
                pages += 1
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            rows, tombs = state(platform_dir, entity)
            live = [r[pk] for r in records if "deleted_at" not in r]
            dead = [r[pk] for r in records if "deleted_at" in r]
            assert sorted(live) == sorted(rows) and len(live) == len(set(live))
            assert sorted(dead) == sorted(tombs)
            at_stamp = [r[pk] for r in records if r["updated_at"] == stamp]
            assert at_stamp == sorted(at_stamp)  # ties broken by key
            assert pages >= len(records) // 3

            if entity == "orders":
                assert {5003, 5010} <= set(dead)
                assert set(range(5001, 5021)) - {5003, 5010} <= set(at_stamp)
            else:
                assert len(at_stamp) == 8

    # a cursor from just before the tie resumes inside it
    with TestClient(create_app(platform_dir, TOKEN), headers=AUTH) as client:
        since = store.iso(store.parse_iso(stamp) - timedelta(microseconds=1))
        first = client.get(
            "/v1/regions", params={"updated_since": since, "limit": 3}
        ).json()
        rest = client.get(
            "/v1/regions", params={"updated_since": since, "cursor": first["next_cursor"]}
        ).json()
        ids = [r["region_id"] for r in first["data"] + rest["data"]]
        assert ids == [f"test-{i}" for i in range(8)]
