"""Schema evolutions: announced ahead, applied when due, replayed on the replica, and
visible in the API's records and schema."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from simulator import store
from simulator.api import create_app
from simulator.model import EVOLUTIONS
from simulator.platform import Platform
from tests.support import ROOT, TOKEN
from tests.support.simulator import start_simulator

AUTH = {"Authorization": f"Bearer {TOKEN}"}

@pytest.fixture
def platform(platform_dir: Path) -> Iterator[Platform]:
    p = Platform(platform_dir)
    yield p
    p.close()


@pytest.fixture
def client(platform_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(platform_dir, TOKEN), headers=AUTH) as c:
        yield c


def evolve(platform: Platform, *names: str) -> None:
    """Announce the evolutions as effective now, apply them and replicate."""
    for name in names:
        platform.schedule(name, store.utcnow())
    assert platform.apply_due() == list(names)
    store.replicate(platform.dir)


def records(client: TestClient, entity: str, **params) -> list[dict]:
    out, cursor = [], None
    while True:
        query = {"limit": 5000, **params, **({"cursor": cursor} if cursor else {})}
        body = client.get(f"/v1/{entity}", params=query).json()
        out += [r for r in body["data"] if "deleted_at" not in r]
        cursor = body["next_cursor"]
        if cursor is None:
            return out


def schema_fields(client: TestClient, entity: str) -> dict[str, str]:
    body = client.get("/v1/schema").json()
    return {f["name"]: f["type"] for f in body["entities"][entity]["fields"]}


def columns(db: Path, table: str) -> list[str]:
    with closing(store.connect(db, readonly=True)) as con:
        return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def same_content(directory: Path) -> bool:
    """Replica and production hold the same rows in every replicated table."""

    def digest(db: str, table: str) -> str:
        with closing(store.connect(directory / db, readonly=True)) as con:
            rows = con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        return hashlib.sha256(repr(rows).encode()).hexdigest()

    return all(
        digest(store.PRODUCTION, t) == digest(store.REPLICA, t) for t in store.REPLICATED
    )


# --- announcement and application -----------------------------------------------------------


@pytest.mark.parametrize("name", list(EVOLUTIONS))
def test_evolution_is_announced_as_upcoming_then_applied_when_due(
    platform: Platform, client: TestClient, name: str
) -> None:
    effective = store.utcnow() + timedelta(seconds=0.6)
    platform.schedule(name, effective)
    store.replicate(platform.dir)

    [upcoming] = client.get("/v1/announcements").json()["announcements"]
    assert upcoming["change_id"] == name
    assert upcoming["status"] == "upcoming" and upcoming["applied_at"] is None
    assert upcoming["effective_at"] == store.iso(effective)
    assert upcoming["breaking"] == EVOLUTIONS[name].breaking
    assert {(c["entity"], c["field"], c["change"]) for c in upcoming["changes"]} == {
        (c.entity, c.field, c.change) for c in EVOLUTIONS[name].changes
    }
    assert platform.apply_due() == []  # not yet
    assert client.get("/health").json()["schema_version"] == 1

    time.sleep(max(0.0, (effective - store.utcnow()).total_seconds()) + 0.05)
    assert platform.apply_due() == [name]
    store.replicate(platform.dir)

    [applied] = client.get("/v1/announcements").json()["announcements"]
    assert applied["status"] == "applied"
    assert applied["applied_at"] >= applied["effective_at"] == store.iso(effective)
    assert client.get("/health").json()["schema_version"] == 2
    assert client.get("/v1/schema").json()["applied_evolutions"] == [name]
    assert same_content(platform.dir)


def test_applying_twice_is_refused(platform: Platform) -> None:
    evolve(platform, "additive")
    with pytest.raises(ValueError, match="already applied"):
        platform.apply("additive")
    with pytest.raises(ValueError, match="already applied"):
        platform.schedule("additive", store.utcnow())
    with pytest.raises(KeyError):
        platform.schedule("rename-everything", store.utcnow())


# --- the three evolutions ----------------------------------------------------------------------


def test_additive_adds_device_referrer_and_coupon(platform: Platform, client: TestClient) -> None:
    seq_before = store.replicate(platform.dir)
    evolve(platform, "additive")

    assert {"device_type", "referrer"} <= set(schema_fields(client, "events"))
    assert schema_fields(client, "orders")["coupon_code"] == "string"
    history = records(client, "events")
    assert all({"device_type", "referrer"} <= set(e) for e in history)
    assert all(e["device_type"] is None for e in history)  # not recorded back then

    for _ in range(3):
        platform.tick(15)
    store.replicate(platform.dir)
    since = store.iso(store.utcnow() - timedelta(minutes=1))
    new_events = records(client, "events", updated_since=since)
    new_orders = records(client, "orders", updated_since=since)
    assert len(new_orders) == 45 and len(new_events) > 4 * 45
    assert {e["device_type"] for e in new_events} == {"desktop", "mobile", "tablet"}
    assert any(e["referrer"] for e in new_events)
    assert any(o["discount_cents"] > 0 for o in new_orders)
    for o in new_orders:  # a coupon exactly when there is a discount
        assert (o["coupon_code"] is not None) == (o["discount_cents"] > 0)
    assert client.get("/health").json()["replica_seq"] > seq_before


def test_expansion_adds_a_region_and_a_product_line(
    platform: Platform, client: TestClient
) -> None:
    evolve(platform, "expansion")

    regions = {r["region_id"]: r for r in records(client, "regions")}
    assert regions["apac"]["currency"] == "AUD"
    assert regions["apac"]["region_name"] == "Asia Pacific"
    outdoor = [p for p in records(client, "products") if p["category"] == "Outdoor"]
    assert len(outdoor) == 24
    assert {p["subcategory"] for p in outdoor} == {"Camping", "Climbing"}
    assert all(isinstance(p["price"], int) for p in outdoor)

    for _ in range(4):
        platform.tick(20)
    store.replicate(platform.dir)
    apac = [o for o in records(client, "orders") if o["region_id"] == "apac"]
    assert apac and all(o["currency"] == "AUD" for o in apac)


def test_restructure_combines_names_and_makes_prices_decimal(
    platform: Platform, client: TestClient
) -> None:
    customers = {c["customer_id"]: c for c in records(client, "customers")}
    products = {p["product_id"]: p for p in records(client, "products")}
    evolve(platform, "restructure")

    after = {c["customer_id"]: c for c in records(client, "customers")}
    assert after.keys() == customers.keys()
    for cid, c in after.items():
        assert "first_name" not in c and "last_name" not in c
        before = customers[cid]
        assert c["full_name"] == f"{before['first_name']} {before['last_name']}"

    for p in records(client, "products"):
        before = products[p["product_id"]]
        assert "category" not in p and "subcategory" not in p
        assert p["product_line"] == f"{before['category']} / {before['subcategory']}"
        assert re.fullmatch(r"\d+\.\d\d", p["price"])
        assert p["price"] == f"{before['price'] / 100:.2f}"

    fields = schema_fields(client, "products")
    assert fields["price"] == "decimal" and fields["product_line"] == "string"
    assert "category" not in fields
    customer_fields = schema_fields(client, "customers")
    assert "full_name" in customer_fields and "first_name" not in customer_fields

    # the live platform keeps selling with decimal prices and combined names
    for _ in range(3):
        platform.tick(20)
    store.replicate(platform.dir)
    since = store.iso(store.utcnow() - timedelta(minutes=1))
    new_customers = records(client, "customers", updated_since=since)
    assert new_customers and all(c["full_name"] for c in new_customers)
    items = records(client, "order_items", updated_since=since)
    assert items and all(isinstance(i["unit_price_cents"], int) for i in items)
    assert same_content(platform.dir)


def test_all_evolutions_together(platform: Platform, client: TestClient) -> None:
    platform.tick(5)
    evolve(platform, "additive", "expansion", "restructure")
    body = client.get("/v1/schema").json()
    assert body["schema_version"] == 4
    assert body["applied_evolutions"] == ["additive", "expansion", "restructure"]
    outdoor = [p for p in records(client, "products") if p["product_line"].startswith("Outdoor")]
    assert len(outdoor) == 24 and all(isinstance(p["price"], str) for p in outdoor)
    assert same_content(platform.dir)


# --- replication across a schema change ----------------------------------------------------


def test_replica_replays_a_change_together_with_earlier_writes(platform: Platform) -> None:
    """Writes before the change and the change itself, replicated in one go."""
    platform.tick(5)
    platform.schedule("additive", store.utcnow())
    platform.apply_due()
    platform.tick(5)
    store.replicate(platform.dir)

    assert "device_type" in columns(platform.dir / store.REPLICA, "events")
    assert same_content(platform.dir)


def test_lagging_replica_waits_for_a_change_to_be_due(platform: Platform) -> None:
    lag = 0.5
    platform.tick(5)
    time.sleep(lag + 0.1)  # the writes are due, the change is not
    platform.schedule("restructure", store.utcnow())
    platform.apply_due()
    platform.tick(5)
    before = store.replicate(platform.dir)  # nothing pending: catches up to here
    platform.tick(3)
    time.sleep(lag + 0.1)
    platform.tick(3)

    assert store.replicate(platform.dir, lag=lag) > before
    assert "full_name" in columns(platform.dir / store.REPLICA, "customers")
    store.replicate(platform.dir)
    assert same_content(platform.dir)

    # writes due but a change committed after them not yet due: the replica holds back
    platform.tick(3)
    time.sleep(lag + 0.1)
    last = store.replicate(platform.dir, lag=lag)
    platform.schedule("additive", store.utcnow())
    platform.apply_due()
    platform.tick(3)
    assert store.replicate(platform.dir, lag=lag) == last
    assert "device_type" not in columns(platform.dir / store.REPLICA, "events")
    time.sleep(lag + 0.1)
    store.replicate(platform.dir, lag=lag)
    assert "device_type" in columns(platform.dir / store.REPLICA, "events")
    store.replicate(platform.dir)
    assert same_content(platform.dir)


# --- from the command line and a serving simulator ------------------------------------------


def test_cli_applies_an_evolution_right_away_when_nothing_serves(platform_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loaders.cli", "sim", "evolve", "additive", "--dir",
         str(platform_dir)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert f"applied additive to {platform_dir}" in out.stdout
    for db in (store.PRODUCTION, store.REPLICA):
        assert {"device_type", "referrer"} <= set(columns(platform_dir / db, "events"))
        assert "coupon_code" in columns(platform_dir / db, "orders")

    again = subprocess.run(
        [sys.executable, "-m", "loaders.cli", "sim", "evolve", "additive", "--dir",
         str(platform_dir)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert again.returncode != 0 and "already applied" in again.stderr


def test_serving_simulator_applies_a_scheduled_evolution_by_itself(platform_dir: Path) -> None:
    sim = start_simulator(platform_dir, "--rate", "0")
    try:
        platform = Platform(platform_dir)
        try:
            platform.schedule("restructure", store.utcnow() + timedelta(seconds=1.5))
        finally:
            platform.close()

        def announced() -> list[dict]:
            return sim.get("/v1/announcements").json()["announcements"]

        deadline = time.monotonic() + 5
        while not announced() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [a["status"] for a in announced()] == ["upcoming"]

        deadline = time.monotonic() + 8
        while True:
            fields = {
                f["name"]: f["type"]
                for f in sim.get("/v1/schema").json()["entities"]["products"]["fields"]
            }
            if "product_line" in fields or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert fields["price"] == "decimal"
        assert [a["status"] for a in announced()] == ["applied"]
        product = sim.get("/v1/products", params={"limit": 1}).json()["data"][0]
        assert "product_line" in product and isinstance(product["price"], str)
        assert "full_name" in columns(platform_dir / store.REPLICA, "customers")
    finally:
        sim.stop()
    assert sim.proc.returncode == 0
    assert same_content(platform_dir)
