"""The replica API: auth, limits, formats, paging, tombstones, schema and rate limiting.

Most checks run in-process on the FastAPI app; a few go over real HTTP to a served
simulator."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from simulator import store
from simulator.api import MAX_LIMIT, create_app
from simulator.model import ENTITIES
from simulator.platform import Platform
from tests.support import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DELETABLE = [name for name, e in ENTITIES.items() if e.deletable]


@pytest.fixture
def client(platform_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(platform_dir, TOKEN), headers=AUTH) as c:
        yield c


def cursor_of(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def page_all(get, entity: str, limit: int, **params) -> list[dict]:
    """Every record of a listing, following next_cursor to the end."""
    records, cursor = [], None
    for _ in range(10_000):
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        r = get(f"/v1/{entity}", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        records += body["data"]
        assert body["has_more"] == (body["next_cursor"] is not None)
        if not body["has_more"]:
            return records
        cursor = body["next_cursor"]
    raise AssertionError("paging did not end")


# --- auth ----------------------------------------------------------------------------------


def test_health_is_open(client: TestClient) -> None:
    r = client.get("/health", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok", "replica_seq": 1, "production_seq": 1, "replication_lag_seconds": 0,
        "schema_version": 1, "drifts": [],
    }


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": "Bearer "}, {"Authorization": TOKEN}],
    ids=["missing", "wrong", "basic-scheme", "empty", "no-scheme"],
)
@pytest.mark.parametrize("path", ["/v1/customers", "/v1/schema", "/v1/announcements"])
def test_without_a_valid_token_there_is_401_and_no_data(
    platform_dir: Path, headers: dict, path: str
) -> None:
    with TestClient(create_app(platform_dir, TOKEN)) as c:
        r = c.get(path, headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert "data" not in r.json()
    assert "@example.com" not in r.text and "customer_id" not in r.text


def test_an_app_needs_a_token(platform_dir: Path) -> None:
    with pytest.raises(ValueError):
        create_app(platform_dir, "")


# --- parameters -------------------------------------------------------------------------


def test_limit_is_capped(client: TestClient) -> None:
    assert client.get("/v1/orders", params={"limit": MAX_LIMIT + 1}).status_code == 422
    assert client.get("/v1/orders", params={"limit": 0}).status_code == 422
    r = client.get("/v1/orders", params={"limit": MAX_LIMIT})
    assert r.status_code == 200 and r.json()["has_more"] is False
    assert len(client.get("/v1/orders", params={"limit": 7}).json()["data"]) == 7
    # the default page is 1000 rows
    assert len(client.get("/v1/events").json()["data"]) == 1000


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "!!!",
        "é",
        cursor_of("just a string"),
        cursor_of(["not a time", 1]),
        cursor_of(["2026-10-01T00:00:00Z", 1, 2]),
        cursor_of([5, 1]),
        cursor_of([None, 1]),
        cursor_of(["2026-10-01T00:00:00Z", [1]]),
        cursor_of(["2026-10-01T00:00:00Z", {"order_id": 1}]),
    ],
)
def test_invalid_cursor_is_400(client: TestClient, cursor: str) -> None:
    r = client.get("/v1/orders", params={"cursor": cursor})
    assert r.status_code == 400
    assert "invalid cursor" in r.json()["detail"]


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01", "", "2026-10-01T25:00:00Z"])
def test_invalid_updated_since_is_400(client: TestClient, since: str) -> None:
    r = client.get("/v1/orders", params={"updated_since": since})
    assert r.status_code == 400
    assert "updated_since" in r.json()["detail"]


def test_unknown_entity_and_format_are_rejected(client: TestClient) -> None:
    assert client.get("/v1/invoices").status_code == 422
    assert client.get("/v1/orders", params={"format": "xml"}).status_code == 422


def test_updated_since_is_inclusive(client: TestClient, platform_dir: Path) -> None:
    [(since, n_at_or_after)] = store.query(
        platform_dir,
        "SELECT o.updated_at, (SELECT count(*) FROM orders WHERE updated_at >= o.updated_at)"
        " FROM orders o ORDER BY updated_at LIMIT 1 OFFSET 150",
    )
    records = page_all(client.get, "orders", 40, updated_since=since)
    live = [r for r in records if "deleted_at" not in r]
    assert live[0]["updated_at"] == since
    assert len(live) == n_at_or_after
    assert all(r["updated_at"] >= since for r in records)
    # an offset is understood too: the same instant, written in another zone
    shifted = since[:10] + "T" + since[11:26] + "+00:00"
    assert page_all(client.get, "orders", 40, updated_since=shifted) == records


# --- formats ------------------------------------------------------------------------------


def test_json_envelope(client: TestClient) -> None:
    r = client.get("/v1/orders", params={"limit": 5})
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"data", "next_cursor", "has_more"}
    assert len(body["data"]) == 5 and body["has_more"] is True
    assert isinstance(body["next_cursor"], str)
    assert "X-Next-Cursor" not in r.headers


@pytest.mark.parametrize(
    "how",
    [{"headers": {"Accept": "application/x-ndjson"}}, {"params": {"format": "ndjson"}}],
    ids=["accept-header", "format-param"],
)
def test_ndjson_pages_carry_the_cursor_in_a_header(client: TestClient, how: dict) -> None:
    envelope = page_all(client.get, "customers", 30)
    records, cursor, pages = [], None, 0
    while True:
        params = {"limit": 30, **how.get("params", {}), **({"cursor": cursor} if cursor else {})}
        r = client.get("/v1/customers", params=params, headers=how.get("headers", {}))
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = r.text.splitlines()
        records += [json.loads(line) for line in lines]
        pages += 1
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            assert r.headers["X-Has-More"] == "false"
            break
        assert r.headers["X-Has-More"] == "true" and len(lines) == 30
    assert pages > 1
    assert records == envelope


def test_format_param_wins_over_accept(client: TestClient) -> None:
    r = client.get(
        "/v1/regions", params={"format": "json"}, headers={"Accept": "application/x-ndjson"}
    )
    assert r.headers["content-type"] == "application/json"
    assert len(r.json()["data"]) == 5


# --- paging and tombstones ------------------------------------------------------------------


@pytest.mark.parametrize("entity", list(ENTITIES))
def test_paging_returns_every_replica_row_once_in_keyset_order(
    client: TestClient, platform_dir: Path, entity: str
) -> None:
    pk = ENTITIES[entity].primary_key
    records = page_all(client.get, entity, 97)

    live = [r[pk] for r in records if "deleted_at" not in r]
    assert len(live) == len(set(live))
    assert set(live) == {r[0] for r in store.query(platform_dir, f"SELECT {pk} FROM {entity}")}
    keys = [(r["updated_at"], r[pk]) for r in records]
    assert keys == sorted(keys)
    # every record has exactly the entity's fields
    fields = [f.name for f in ENTITIES[entity].fields]
    assert all(list(r) == fields for r in records if "deleted_at" not in r)


@pytest.fixture
def with_deletions(platform_dir: Path) -> Path:
    """The platform deletes two orders (with their lines) and a customer, and replicates."""
    with Platform(platform_dir) as platform:
        assert platform.delete_records("orders", [10, 250]) == 2
        assert platform.delete_records("customers", [3]) == 1
    store.replicate(platform_dir)
    return platform_dir


@pytest.mark.parametrize("entity", DELETABLE)
def test_deleted_records_are_served_as_tombstones(
    client: TestClient, with_deletions: Path, entity: str
) -> None:
    platform_dir = with_deletions
    pk = ENTITIES[entity].primary_key
    deletions = dict(
        store.query(
            platform_dir,
            "SELECT CAST(record_id AS INTEGER), deleted_at FROM deletions WHERE entity = ?",
            entity,
        )
    )
    assert deletions, f"the test platform should have deleted {entity}"
    records = page_all(client.get, entity, 50)
    tombstones = [r for r in records if "deleted_at" in r]

    assert {t[pk]: t["deleted_at"] for t in tombstones} == deletions
    assert not {r[pk] for r in records if "deleted_at" not in r} & set(deletions)
    for t in tombstones:
        assert set(t) == {pk, "updated_at", "deleted_at"}
        assert t["updated_at"] == t["deleted_at"]


def test_entities_that_cannot_be_deleted_have_no_tombstones(client: TestClient) -> None:
    for entity in ("regions", "products", "events"):
        assert not any("deleted_at" in r for r in page_all(client.get, entity, 5000))


def test_values_have_their_logical_types(client: TestClient) -> None:
    customer = client.get("/v1/customers", params={"limit": 1}).json()["data"][0]
    assert isinstance(customer["is_marketing_opt_in"], bool)
    assert isinstance(customer["customer_id"], int)
    product = client.get("/v1/products", params={"limit": 1}).json()["data"][0]
    assert isinstance(product["price"], int) and isinstance(product["is_active"], bool)
    order = client.get("/v1/orders", params={"limit": 1}).json()["data"][0]
    assert order["updated_at"].endswith("Z")
    assert store.parse_iso(order["updated_at"]) >= store.parse_iso(order["ordered_at"])


# --- schema and spec ---------------------------------------------------------------------


def test_schema_lists_the_model(client: TestClient) -> None:
    body = client.get("/v1/schema").json()
    assert body["schema_version"] == 1 and body["applied_evolutions"] == []
    assert set(body["entities"]) == set(ENTITIES)
    for name, e in ENTITIES.items():
        served = body["entities"][name]
        assert served["primary_key"] == e.primary_key
        assert served["deletable"] == e.deletable
        assert [(f["name"], f["type"], f["required"]) for f in served["fields"]] == [
            (f.name, f.type, f.required) for f in e.fields
        ]


def test_no_announcements_yet(client: TestClient) -> None:
    assert client.get("/v1/announcements").json() == {"announcements": []}


def test_openapi_spec_is_served(client: TestClient) -> None:
    spec = client.get("/openapi.json", headers={"Authorization": ""}).json()
    assert spec["info"]["title"] == "Sales platform replica API"
    assert {"/health", "/v1/schema", "/v1/announcements", "/v1/{entity}"} <= set(spec["paths"])
    listing = spec["paths"]["/v1/{entity}"]["get"]
    assert {"updated_since", "cursor", "limit", "format"} <= {
        p["name"] for p in listing["parameters"]
    }
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


# --- rate limit ----------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(platform_dir: Path) -> None:
    with TestClient(create_app(platform_dir, TOKEN, rate_limit=1, burst=2), headers=AUTH) as c:
        codes = [c.get("/v1/regions") for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        retry_after = int(codes[-1].headers["Retry-After"])
        assert 1 <= retry_after <= 2
        # requests without a valid token do not spend the budget, /health is not limited
        assert c.get("/v1/regions", headers={"Authorization": "Bearer x"}).status_code == 401
        assert c.get("/health").status_code == 200
        time.sleep(retry_after)
        assert c.get("/v1/regions").status_code == 200


# --- over HTTP -------------------------------------------------------------------------------


def test_served_api_over_http(simulator) -> None:
    assert requests.get(simulator.url + "/health", timeout=5).status_code == 200
    assert requests.get(simulator.url + "/v1/orders", timeout=5).status_code == 401
    r = simulator.get("/v1/orders", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "data" not in r.json()

    # NDJSON paging over the wire returns the replica's rows once each
    ids, cursor = [], None
    while True:
        params = {"limit": 64, **({"cursor": cursor} if cursor else {})}
        r = simulator.get("/v1/orders", params=params, headers={"Accept": "application/x-ndjson"})
        assert r.status_code == 200
        ids += [json.loads(line)["order_id"] for line in r.text.splitlines()]
        cursor = r.headers.get("X-Next-Cursor")
        if not cursor:
            break
    expected = store.query(simulator.dir, "SELECT order_id FROM orders")
    deleted = store.query(
        simulator.dir,
        "SELECT CAST(record_id AS INTEGER) FROM deletions WHERE entity = 'orders'",
    )
    assert sorted(ids) == sorted(r[0] for r in expected + deleted)
    assert simulator.get("/v1/orders", params={"limit": 50_001}).status_code == 422
    assert simulator.get("/openapi.json").json()["openapi"].startswith("3.")
