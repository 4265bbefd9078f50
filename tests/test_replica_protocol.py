"""The replica API's protocol by configuration: settings checked, each paginator and auth
of dlt's against a local API, JSON envelopes reaching Arrow, and the deletion styles
(soft-delete flag, deletions endpoint) ending with raw equal to the source."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import dlt
import pytest
from requests.exceptions import HTTPError

from loaders.replica import ReplicaError, replica_source
from loaders.replica.errors import PageError
from loaders.replica.pages import EntitySpec, check_page_type, parse_deletions, parse_page
from loaders.replica.protocol import Api, Listing, api_from_settings, read_pages
from loaders.warehouse import dlt_pipeline
from tests.support.fake_api import SECRET, STYLES, FakeApi, serve

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
FIELDS = [
    {"name": "order_id", "type": "integer", "required": True},
    {"name": "status", "type": "string"},
    {"name": "updated_at", "type": "timestamp", "required": True},
]


def stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def orders(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"order_id": i, "status": "paid", "updated_at": stamp(i), **extra}
            for i in range(1, n + 1)]


SPEC = EntitySpec(name="orders", path="v1/orders", primary_key="order_id",
                  cursor="updated_at", fields={f["name"]: f["type"] for f in FIELDS})


# --- settings ---------------------------------------------------------------------------

def test_no_settings_is_todays_protocol() -> None:
    api = api_from_settings("http://127.0.0.1:1", SECRET, {})
    assert api.listing == Listing()
    assert dict(api.listing.paginator) == {
        "type": "header_cursor", "cursor_key": "X-Next-Cursor", "cursor_param": "cursor"}
    assert (api.listing.format, api.listing.since_param, api.listing.limit_param) == (
        "ndjson", "updated_since", "limit")
    assert dict(api.auth) == {"type": "bearer"}
    assert (api.schema_path, api.announcements_path, api.count_path) == (
        "v1/schema", "v1/announcements", "{path}/count")
    assert SECRET not in repr(api)


@pytest.mark.parametrize(("settings", "named"), [
    ({"format": "xml"}, "sources.replica.format"),
    ({"since_format": "weekday"}, "sources.replica.since_format"),
    ({"since_param": ""}, "sources.replica.since_param"),
    ({"records_path": 3}, "sources.replica.records_path"),
    ({"paginator": {"type": "carrier_pigeon"}}, "sources.replica.paginator.type"),
    ({"paginator": {"type": "cursor", "cursor_pth": "next"}}, "sources.replica.paginator"),
    ({"paginator": "{not json"}, "sources.replica.paginator"),
    ({"auth": {"type": "kerberos"}}, "sources.replica.auth.type"),
    ({"auth": {"type": "api_key", "location": "cookie"}}, "sources.replica.auth.location"),
    ({"auth": {"type": "http_basic", "token": "x"}}, "sources.replica.token"),
    ({"auth": {"type": "bearer", "username": "x"}}, "sources.replica.auth"),
    ({"count_path": "counts"}, "sources.replica.count_path"),
    ({"endpoints": {"orders": {"path": "v1/orders", "format": "csv"}}},
     "sources.replica.endpoints.orders.format"),
])
def test_a_bad_setting_is_refused_naming_its_key(settings: dict, named: str) -> None:
    with pytest.raises(ReplicaError, match=named.replace(".", r"\.")):
        api_from_settings("http://127.0.0.1:1", SECRET, settings)


def test_settings_from_environment_variables_are_json() -> None:
    api = api_from_settings("http://127.0.0.1:1", SECRET, {
        "paginator": '{"type": "json_link", "next_url_path": "links.next"}',
        "auth": {"type": "api_key"},
    })
    assert dict(api.listing.paginator) == {"type": "json_link", "next_url_path": "links.next"}
    assert dict(api.auth) == {"type": "api_key", "name": "X-API-Key", "location": "header"}


def test_an_endpoint_overrides_the_listing_keys() -> None:
    api = api_from_settings("http://127.0.0.1:1", SECRET, {"format": "json"})
    listing = api.listing_for({"path": "v1/x", "records_path": "items",
                               "since_format": "epoch"})
    assert (listing.format, listing.records_path, listing.since_format) == (
        "json", "items", "epoch")
    assert api.listing_for({"path": "v1/y"}) is api.listing


@pytest.mark.parametrize(("kind", "value", "back"), [
    ("iso", "2026-11-01T12:00:05.250000Z", T0 + timedelta(seconds=5.25)),
    ("epoch", 1793534405, T0 + timedelta(seconds=5)),
    ("epoch_ms", 1793534405250, T0 + timedelta(seconds=5.25)),
    ("%Y-%m-%d %H:%M:%S", "2026-11-01 12:00:05", T0 + timedelta(seconds=5)),
    ("%Y-%m-%d", "2026-11-01", T0 - timedelta(hours=12)),
])
def test_since_formats_and_the_time_they_ask_from(kind: str, value: Any, back: datetime) -> None:
    listing = Listing(since_format=kind)
    when = T0 + timedelta(seconds=5.25)
    assert listing.since_value(when) == value
    # rows from the time actually asked are not set aside as out of order
    assert listing.since_requested(when) == back


# --- paging and auth --------------------------------------------------------------------

@pytest.mark.parametrize("style", sorted(STYLES))
def test_each_paginator_and_auth_reads_every_record_since_the_start(style: str) -> None:
    with serve(FakeApi(style, orders(23))) as fake:
        api = api_from_settings(fake.url, SECRET, fake.settings)
        listing = api.listing
        params = {listing.since_param: listing.since_value(T0 + timedelta(seconds=3)),
                  **listing.page_params(5)}
        pages = list(read_pages(api, listing, "v1/orders", params, page_size=5))
        tables = [parse_page(SPEC, p.records).table for p in pages if p.records]
    ids = [i for t in tables for i in t["order_id"].to_pylist()]
    assert ids == list(range(3, 24))  # every record from the start asked, once
    assert max(t.num_rows for t in tables) == 5  # in pages of the size asked
    listings = [q for path, q in fake.requests if path == "/v1/orders"]
    assert len(listings) >= 5


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_wrong_secret_is_refused(style: str) -> None:
    with serve(FakeApi(style, orders(3))) as fake:
        api = api_from_settings(fake.url, "wrong", fake.settings)
        with pytest.raises(HTTPError) as caught:
            list(read_pages(api, api.listing, "v1/orders", {}))
    assert caught.value.response.status_code == 401


def test_requests_auth_signs_one_off_requests_as_configured() -> None:
    import requests

    with serve(FakeApi("offset", orders(2))) as fake:
        api = api_from_settings(fake.url, SECRET, fake.settings)
        answer = requests.get(fake.url + "/v1/orders", auth=api.requests_auth(), timeout=5)
    assert answer.status_code == 200 and answer.json()["total"] == 2


def test_an_empty_page_stops_paginators_that_stop_on_one() -> None:
    """Offset paging without a total: the page with no records is the last."""
    with serve(FakeApi("offset", orders(10))) as fake:
        settings = {**fake.settings, "paginator": {"type": "offset", "total_path": None}}
        api = api_from_settings(fake.url, SECRET, settings)
        pages = list(read_pages(api, api.listing, "v1/orders", {}, page_size=4))
    assert [len(p.records.splitlines()) for p in pages] == [4, 4, 2, 0]
    assert pages[-1].records == b"" and len(fake.requests) == 4


def test_the_paginator_reads_the_envelope_without_the_records() -> None:
    with serve(FakeApi("cursor", orders(7))) as fake:
        api = api_from_settings(fake.url, SECRET, fake.settings)
        pages = list(read_pages(api, api.listing, "v1/orders", {"limit": 3}))
    assert [p.response.json()["data"] for p in pages] == [[], [], []]
    assert [p.response.json()["next_cursor"] for p in pages] == ["3", "6", None]
    # the records reach Arrow from the NDJSON split, typed by the spec
    table = parse_page(SPEC, pages[0].records).table
    assert table.schema.field("updated_at").type.tz == "UTC"
    assert table["order_id"].to_pylist() == [1, 2, 3]


def test_a_json_listing_takes_json_pages_and_refuses_html() -> None:
    with serve(FakeApi("cursor", orders(2))) as fake:
        api = api_from_settings(fake.url, SECRET, fake.settings)
        [page] = list(read_pages(api, api.listing, "v1/orders", {}))
    check_page_type(SPEC, 1, page.response, api.listing)  # application/json: records
    page.response.headers["Content-Type"] = "text/html; charset=utf-8"
    with pytest.raises(PageError, match="text/html"):
        check_page_type(SPEC, 1, page.response, api.listing)
    with pytest.raises(PageError, match="not NDJSON"):
        page.response.headers["Content-Type"] = "application/json"
        check_page_type(SPEC, 1, page.response)  # the default listing is NDJSON


# --- deletions --------------------------------------------------------------------------

def _load(fake: FakeApi, endpoint: dict[str, Any], fields: list[dict], append: bool = False
          ) -> dlt.Pipeline:
    api = api_from_settings(fake.url, SECRET, fake.settings)
    source = replica_source(
        base_url=fake.url, token=SECRET, api=api, lookback_seconds=5,
        endpoints={"orders": {"path": "v1/orders", "primary_key": "order_id",
                              "cursor": "updated_at", **endpoint}},
        described={"orders": {"fields": fields}}, append=["orders"] if append else [],
    )
    pipe = dlt_pipeline()
    pipe.run(source)
    return pipe


def _raw(pipe: dlt.Pipeline, table: str = "orders") -> dict[int, str]:
    with pipe.sql_client() as sql:
        rows = sql.execute_sql(f"select order_id, status from {table} order by 1")
    return {key: status for key, status in rows}


def _live(records: list[dict[str, Any]]) -> dict[int, str]:
    return {r["order_id"]: r["status"] for r in records if not r.get("is_deleted")}


def test_soft_deleted_records_are_deleted_from_raw(warehouse) -> None:
    records = orders(6, is_deleted=False)
    records[1]["is_deleted"] = True  # deleted before the first load
    fields = [*FIELDS, {"name": "is_deleted", "type": "boolean"}]
    with serve(FakeApi("cursor", records)) as fake:
        pipe = _load(fake, {"soft_delete_field": "is_deleted"}, fields)
        assert _raw(pipe) == _live(records)
        records[3].update(is_deleted=True, updated_at=stamp(100))
        records[4].update(status="shipped", updated_at=stamp(101))
        pipe = _load(fake, {"soft_delete_field": "is_deleted"}, fields)
        assert _raw(pipe) == _live(records)
        assert 4 not in _raw(pipe)


def test_a_first_load_sets_soft_deleted_records_aside_as_tombstones(warehouse) -> None:
    records = orders(4, is_deleted=False)
    records[2]["is_deleted"] = True
    fields = [*FIELDS, {"name": "is_deleted", "type": "boolean"}]
    with serve(FakeApi("cursor", records)) as fake:
        pipe = _load(fake, {"soft_delete_field": "is_deleted"}, fields, append=True)
    assert _raw(pipe) == _live(records)
    with pipe.sql_client() as sql:
        [(key, when)] = sql.execute_sql(
            "select order_id, updated_at from orders__first_load_tombstones")
    assert key == 3 and when == T0 + timedelta(seconds=3)


def test_a_deletions_endpoint_deletes_from_raw(warehouse) -> None:
    records = orders(8)
    endpoint = {"deletions_path": "v1/orders/deletions"}
    with serve(FakeApi("json_link", records)) as fake:
        pipe = _load(fake, endpoint, FIELDS)
        assert _raw(pipe) == _live(records)
        # two records deleted upstream, one updated
        for gone in (records.pop(2), records.pop(4)):
            fake.deletions.append({"order_id": gone["order_id"], "deleted_at": stamp(50)})
        records[0].update(status="refunded", updated_at=stamp(51))
        pipe = _load(fake, endpoint, FIELDS)
        assert _raw(pipe) == _live(records)
        # the deletions' own position was saved: the next read asks from it (less the
        # lookback), and nothing changes
        pipe = _load(fake, endpoint, FIELDS)
        assert _raw(pipe) == _live(records)
    asked = [q for path, q in fake.requests if path == "/v1/orders/deletions"]
    since = datetime.fromtimestamp(int(asked[-1]["updated_since"]), timezone.utc)
    assert since == T0 + timedelta(seconds=45)


def test_deletions_read_as_keys_and_markers_only() -> None:
    spec = EntitySpec(**{**SPEC.__dict__, "deleted_marker": "deleted_at",
                         "deletions_path": "v1/orders/deletions"})
    table = parse_deletions(spec, b'{"order_id": 4, "deleted_at": "2026-11-01T12:00:00Z",'
                                  b' "reason": "gdpr"}\n{"order_id": null, "deleted_at":'
                                  b' "2026-11-01T12:00:00Z"}\n')
    assert table.column_names == ["order_id", "deleted_at"]
    assert table["order_id"].to_pylist() == [4]
    # typed as dlt's schema types the key: no hints to reconcile on every page
    assert not table.schema.field("order_id").nullable
    with pytest.raises(PageError, match="no 'order_id' field"):
        parse_deletions(spec, b'{"id": 4, "deleted_at": "2026-11-01T12:00:00Z"}\n')


def test_a_tombstone_is_never_older_than_the_record_it_deletes(warehouse) -> None:
    """A record updated after the clock that stamped its deletion (skew): the tombstone
    takes the newest version known, so the merge still deletes it."""
    records = orders(3)
    endpoint = {"deletions_path": "v1/orders/deletions"}
    with serve(FakeApi("json_link", records)) as fake:
        records[2].update(status="late", updated_at=stamp(200))
        pipe = _load(fake, endpoint, FIELDS)
        assert _raw(pipe) == _live(records)
        records.pop(2)
        fake.deletions.append({"order_id": 3, "deleted_at": stamp(150)})
        pipe = _load(fake, endpoint, FIELDS)
    assert _raw(pipe) == _live(records)


def test_the_page_size_goes_where_the_paginator_takes_it() -> None:
    api = Api("http://127.0.0.1:1", SECRET)
    assert api.listing.page_params(7) == {"limit": 7}
    offset = Listing(paginator={"type": "offset", "limit_param": "size"})
    assert offset.page_params(7) == {}  # offset paging sends its own limit
    assert offset.make_paginator(7).limit == 7
