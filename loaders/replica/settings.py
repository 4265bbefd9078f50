"""Declarations of the replica API's endpoints.

A new endpoint is one more entry here (or under ``[sources.replica.endpoints]`` in
``.dlt/config.toml``, which replaces these defaults): its path, primary key, incremental
cursor and whether the API serves tombstones for deleted records.

An endpoint whose API offers a commit-ordered sequence (a field that grows in commit
order, and a parameter listing the records after a value of it) names both:
``sequence = "change_seq"``, ``sequence_param = "since_seq"``. The loader's incremental
cursor is then that sequence: nothing committed later can carry a smaller one, so no row
is missed however late its transaction commits, and no lookback is needed. ``cursor``
stays the record's version (which of two copies of a key is newer).

May import: nothing.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Endpoint(TypedDict, total=False):
    path: str  # relative to base_url
    primary_key: str
    cursor: str  # incremental cursor field (a timestamp), sent as `updated_since`
    # field that marks a tombstone: a record with a value there was deleted upstream
    deleted_marker: str
    # a commit-ordered sequence the API offers (field, and the listing's parameter that
    # asks for records after a value of it): the incremental cursor when declared
    sequence: str
    sequence_param: str
    # how the listing is served, over the API's (see loaders.replica.protocol)
    format: str
    records_path: str
    paginator: dict[str, Any]
    since_param: str
    since_format: str
    limit_param: str
    # deletions other than tombstones in the listing (deleted_marker then defaults to
    # DELETED_MARKER): a soft-delete flag in the records, or a deletions endpoint
    soft_delete_field: str
    deletions_path: str


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


def cursor_of(endpoint: Endpoint) -> str:
    """An endpoint's incremental cursor field: as declared, else ``updated_at``."""
    return endpoint.get("cursor", "updated_at")

def sequence_of(endpoint: Endpoint) -> tuple[str, str] | None:
    """An endpoint's commit sequence (field, request parameter), if it declares one; the
    parameter defaults to :data:`PARAM_SINCE_SEQ`."""
    field = endpoint.get("sequence")
    return (field, endpoint.get("sequence_param") or PARAM_SINCE_SEQ) if field else None


def deleted_marker_of(endpoint: Endpoint) -> str | None:
    """The raw column that marks a deleted record: as declared, else
    :data:`DELETED_MARKER` where deletions come as a soft-delete flag or from a deletions
    endpoint, else none (the endpoint's records are never deleted)."""
    declared = endpoint.get("deleted_marker")
    if declared:
        return declared
    if endpoint.get("soft_delete_field") or endpoint.get("deletions_path"):
        return DELETED_MARKER
    return None


# The protocol's defaults (today's API; each is a [sources.replica] setting, see
# loaders.replica.protocol): the schema endpoint ("" if the API has none) ...
SCHEMA_PATH = "v1/schema"
# ... announced schema changes ("" if the API publishes none) ...
ANNOUNCEMENTS_PATH = "v1/announcements"
# ... the incremental listing's parameters and its next-page cursor ...
PARAM_SINCE = "updated_since"
PARAM_CURSOR = "cursor"
PARAM_LIMIT = "limit"
NEXT_CURSOR_HEADER = "X-Next-Cursor"
# ... and live records updated before a time, for reconciliation:
# GET <count_path with the endpoint's path>?updated_before=
COUNT_PATH = "{path}/count"
PARAM_UPDATED_BEFORE = "updated_before"
PARAM_SINCE_SEQ = "since_seq"  # the usual name of a sequence's parameter
DELETED_MARKER = "deleted_at"

QUARANTINE_TABLE = "quarantine"
PIPELINE_NAME = "salesflow_replica"
SOURCE_NAME = "replica"  # the dlt source, and so the name of its schema
DATASET_NAME = "raw"

# Schema contracts, per entity (dlt's schema_contract settings: tables / columns /
# data_type, each evolve | freeze | discard_row | discard_value). Override any entry under
# [sources.replica.schema_contracts] in .dlt/config.toml. The defaults:
# * events and reference data evolve freely: a new field is a new column, a type change a
#   variant column (<field>__v_<type>) beside the old one; nothing is lost.
# * orders and order_items carry the money: their data types are frozen, so a field whose
#   type changes upstream sends its rows to quarantine and raises a schema-change alert
#   instead of splitting revenue across two columns.
FREE: dict[str, str] = {"tables": "evolve", "columns": "evolve", "data_type": "evolve"}
TYPES_FROZEN: dict[str, str] = {"tables": "evolve", "columns": "evolve", "data_type": "freeze"}
SCHEMA_CONTRACTS: dict[str, dict[str, str]] = {
    "regions": FREE,
    "customers": FREE,
    "products": FREE,
    "orders": TYPES_FROZEN,
    "order_items": TYPES_FROZEN,
    "events": FREE,
}

# categorical columns whose new values are business changes worth telling marketing about
CATEGORICAL: dict[str, tuple[str, ...]] = {
    "regions": ("region_id",),
    "products": ("category", "product_line"),
    "orders": ("channel", "currency"),
    "events": ("channel",),
}
