"""The loader's page parser: fast path, slow path and every quarantine reason."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from loaders.replica.client import prefetch
from loaders.replica.errors import ReplicaError
from loaders.replica.pages import EntitySpec, parse_page

SPEC = EntitySpec(
    name="orders",
    path="v1/orders",
    primary_key="order_id",
    cursor="updated_at",
    deleted_marker="deleted_at",
    fields={
        "order_id": "integer",
        "status": "string",
        "total_cents": "integer",
        "is_gift": "boolean",
        "price": "decimal",
        "updated_at": "timestamp",
    },
    required=("order_id", "status", "total_cents", "updated_at"),
)
TS = "2026-11-01T10:00:00.123456Z"
LATER = "2026-11-01T10:00:02Z"


def page(*records: dict | str) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode()


def order(i: int, **kw) -> dict:
    return {"order_id": i, "status": "paid", "total_cents": 100 * (i or 0), "is_gift": False,
            "price": "1.50", "updated_at": TS, **kw}


def test_clean_page_parses_to_typed_arrow():
    parsed = parse_page(SPEC, page(order(1), order(2)))
    assert parsed.quarantined == []
    t = parsed.table
    assert t.num_rows == 2
    assert t.schema.field("order_id").type == pa.int64()
    assert t.schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    assert t.schema.field("price").type == pa.string()  # decimals stay exact strings
    assert "deleted_at" in t.column_names


def test_new_fields_are_kept_with_inferred_types():
    parsed = parse_page(SPEC, page(order(1, coupon_code="VIP15")))
    assert parsed.table.column("coupon_code").to_pylist() == ["VIP15"]


def test_wrong_type_goes_to_quarantine_and_the_rest_loads():
    parsed = parse_page(SPEC, page(order(1), order(2, total_cents="not-a-number"), order(3)))
    assert parsed.table.column("order_id").to_pylist() == [1, 3]
    [bad] = parsed.quarantined
    assert bad["reason"].startswith("wrong type: total_cents: expected integer")
    assert json.loads(bad["record"])["order_id"] == 2


def test_broken_json_line_is_quarantined_verbatim():
    parsed = parse_page(SPEC, page(order(1), '{"order_id": 2, "status": '))
    assert parsed.table.num_rows == 1
    [bad] = parsed.quarantined
    assert bad["reason"].startswith("malformed JSON")
    assert bad["record"] == '{"order_id": 2, "status": '


def test_null_in_required_field_or_key_is_quarantined():
    parsed = parse_page(SPEC, page(order(1, status=None), order(None), order(3)))
    assert parsed.table.column("order_id").to_pylist() == [3]
    assert sorted((q["rule"], q["field"], q["reason"]) for q in parsed.quarantined) == [
        ("required_null", "order_id", "null in a required field: order_id (null or missing)"),
        ("required_null", "status", "null in a required field: status (null or missing)"),
    ]


def test_tombstones_are_not_required_to_have_fields():
    tomb = {"order_id": 9, "updated_at": TS, "deleted_at": TS}
    parsed = parse_page(SPEC, page(order(1), tomb))
    assert parsed.quarantined == []
    assert parsed.table.column("order_id").to_pylist() == [1, 9]


def test_duplicate_key_in_one_page_keeps_the_first():
    parsed = parse_page(SPEC, page(order(1), order(2), order(1, status="shipped")))
    assert parsed.table.column("order_id").to_pylist() == [1, 2]
    [dup] = parsed.quarantined
    assert dup["reason"] == "duplicate order_id in the same page"
    assert json.loads(dup["record"])["status"] == "shipped"


def test_bad_timestamp_and_boolean_are_type_errors():
    parsed = parse_page(SPEC, page(order(1, updated_at="yesterday"), order(2, is_gift="yes")))
    assert parsed.table is None
    reasons = sorted(q["reason"] for q in parsed.quarantined)
    assert reasons[0].startswith("wrong type: is_gift: expected boolean")
    assert reasons[1].startswith("wrong type: updated_at: expected timestamp")


def test_empty_page():
    assert parse_page(SPEC, b"").table is None


def test_missing_key_field_is_a_configuration_error():
    with pytest.raises(ReplicaError, match="no 'order_id' field"):
        parse_page(EntitySpec("orders", "v1/orders", "order_id", "updated_at"),
                   page({"id": 1, "updated_at": TS}))


def test_hostile_field_names_are_data_not_sql():
    rec = order(1, **{"x'; drop table raw.orders; --": 1, "ünï \"quoted\"": "v"})
    parsed = parse_page(SPEC, page(rec))
    assert parsed.quarantined == []
    assert "x'; drop table raw.orders; --" in parsed.table.column_names


def test_the_newest_version_of_a_key_in_one_page_wins():
    older, newer = order(1, status="paid"), order(1, status="shipped", updated_at=LATER)
    parsed = parse_page(SPEC, page(newer, order(2), older))
    assert parsed.table.column("status").to_pylist() == ["shipped", "paid"]
    [dup] = parsed.quarantined
    assert json.loads(dup["record"])["status"] == "paid"


def test_rows_before_the_requested_start_are_quarantined():
    since = datetime(2026, 11, 1, 10, 0, 1, tzinfo=timezone.utc)
    parsed = parse_page(SPEC, page(order(1), order(2, updated_at=LATER)), since=since)
    assert parsed.table.column("order_id").to_pylist() == [2]
    [behind] = parsed.quarantined
    assert behind["reason"].startswith("updated_at before the requested updated_since")


def test_values_arrow_cannot_hold_are_quarantined_not_raised():
    parsed = parse_page(SPEC, page(
        order(1), order(2, price=12.5), order(3, total_cents=2**64),
        order(4, updated_at="2026-11-01T10:00:00.123456789Z"),
        order(5, extra=1), order(6, extra="x"),
    ))
    assert parsed.table.column("order_id").to_pylist() == [1, 5]
    reasons = sorted(q["reason"].split(":")[1].strip() for q in parsed.quarantined)
    assert reasons == ["extra", "price", "total_cents", "updated_at"]


def test_without_a_typed_cursor_rows_are_not_compared_with_the_start():
    """No schema endpoint: a cursor Arrow did not read as a timestamp is left as sent."""
    untyped = EntitySpec("orders", "v1/orders", "order_id", "updated_at")
    since = datetime(2026, 11, 1, tzinfo=timezone.utc)
    parsed = parse_page(untyped, page({"order_id": 1, "updated_at": "a while ago"}), since)
    assert parsed.quarantined == [] and parsed.table.num_rows == 1


# --- prefetching (pages fetched, then parsed, each in a thread of its own) ----------------


def test_prefetched_pages_come_in_order_and_an_error_reaches_the_consumer() -> None:
    def pages():
        yield from range(5)
        raise ReplicaError("the API went away mid-listing")

    got = []
    with pytest.raises(ReplicaError, match="mid-listing"):
        for page in prefetch(prefetch(pages())):
            got.append(page)
    assert got == [0, 1, 2, 3, 4]


def test_closing_the_consumer_stops_every_prefetch_behind_it() -> None:
    closed = threading.Event()

    def pages():
        try:
            yield from itertools.count()
        finally:
            closed.set()

    listing = prefetch(pages())  # held here too: stopped by being closed, not collected
    consumer = prefetch(listing)
    assert next(consumer) == 0
    consumer.close()  # a load that stops early (an error further on, a kill of the cycle)
    assert closed.wait(10), "the listing was left running"

