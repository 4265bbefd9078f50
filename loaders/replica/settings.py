"""Declarations of the replica API's endpoints.

A new endpoint is one more entry here (or under ``[sources.replica.endpoints]`` in
``.dlt/config.toml``, which replaces these defaults): its path, primary key, incremental
cursor and whether the API serves tombstones for deleted records.
"""

from __future__ import annotations

from typing import TypedDict


class Endpoint(TypedDict, total=False):
    path: str  # relative to base_url
    primary_key: str
    cursor: str  # incremental cursor field (a timestamp), sent as `updated_since`
    # field that marks a tombstone: a record with a value there was deleted upstream
    deleted_marker: str


ENDPOINTS: dict[str, Endpoint] = {
    "regions": {"path": "v1/regions", "primary_key": "region_id", "cursor": "updated_at"},
    "customers": {
        "path": "v1/customers",
        "primary_key": "customer_id",
        "cursor": "updated_at",
        "deleted_marker": "deleted_at",
    },
    "products": {"path": "v1/products", "primary_key": "product_id", "cursor": "updated_at"},
    "orders": {
        "path": "v1/orders",
        "primary_key": "order_id",
        "cursor": "updated_at",
        "deleted_marker": "deleted_at",
    },
    "order_items": {
        "path": "v1/order_items",
        "primary_key": "order_item_id",
        "cursor": "updated_at",
        "deleted_marker": "deleted_at",
    },
    "events": {"path": "v1/events", "primary_key": "event_id", "cursor": "updated_at"},
}

# the API's schema endpoint (field names and types per entity); None if the API has none
SCHEMA_PATH = "v1/schema"
# query parameters of the incremental listing
PARAM_SINCE = "updated_since"
PARAM_CURSOR = "cursor"
PARAM_LIMIT = "limit"
NEXT_CURSOR_HEADER = "X-Next-Cursor"

QUARANTINE_TABLE = "quarantine"
PIPELINE_NAME = "salesflow_replica"
SOURCE_NAME = "replica"  # the dlt source, and so the name of its schema
DATASET_NAME = "raw"
