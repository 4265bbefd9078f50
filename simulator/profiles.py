"""Protocol profiles: the same platform served the way other replica APIs serve theirs.

``sim serve --profile NAME`` serves the same data (same database, drifts, faults and late
commits) with another body shape, paginator, auth, deletion style, incremental parameter
and schema endpoint (:data:`SPECS`; ``native`` is the simulator's own protocol). Each
profile comes with the loader configuration that reads it: :func:`loader_settings` (the
``[sources.replica]`` table), as TOML for the docs (:func:`loader_toml`) and as the
``SOURCES__REPLICA__*`` environment of a test (:func:`loader_env`).

The loader's default endpoint declarations are copied here (:data:`DEFAULT_ENDPOINTS`),
not imported: nothing in ``simulator`` imports ``loaders``; a test keeps the two equal.

Imports nothing from the project.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# the secrets' other halves: the simulator's token is the bearer token, the API key, the
# basic-auth password and the OAuth2 client secret
API_KEY_HEADER = "X-API-Key"
API_KEY_PARAM = "api_key"
BASIC_USER = "salesflow"
OAUTH_CLIENT_ID = "salesflow"
TOKEN_PATH = "oauth/token"
DEFAULT_TOKEN_TTL = 300.0  # seconds an OAuth2 access token is accepted
SOFT_DELETE_FIELD = "is_deleted"
DELETED_MARKER = "deleted_at"
PAGE_SIZE = 20000  # the loader's default page size (.dlt/config.toml)


@dataclass(frozen=True)
class Profile:
    """How a profile serves a listing."""

    name: str
    description: str
    records_path: str | None  # None: NDJSON; "": a JSON array; else the envelope's key
    paging: str  # header_cursor | cursor | json_link | header_link | offset | page_number
    auth: str  # bearer | api_key_header | api_key_query | http_basic | oauth2
    deletions: str  # tombstones | soft_delete | endpoint
    since_param: str = "updated_since"
    since_format: str = "iso"  # iso | epoch | epoch_ms
    limit_param: str = "limit"
    schema: bool = True  # GET /v1/schema is served (else 404)

    @property
    def json(self) -> bool:
        return self.records_path is not None

    @property
    def positional(self) -> bool:
        """Paged by position (offset or page number) rather than by a cursor."""
        return self.paging in ("offset", "page_number")


SPECS: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "native", "NDJSON, X-Next-Cursor header, bearer token, tombstones, updated_since"
            " ISO, /v1/schema (the simulator's own protocol)",
            records_path=None, paging="header_cursor", auth="bearer", deletions="tombstones",
        ),
        Profile(
            "envelope", 'JSON {"data", "next_cursor", "has_more"}, body cursor, API key in'
            " X-API-Key, soft deletes (is_deleted), modified_since ISO, /v1/schema",
            records_path="data", paging="cursor", auth="api_key_header",
            deletions="soft_delete", since_param="modified_since",
        ),
        Profile(
            "links", 'JSON {"results", "links": {"next"}}, next link in the body, OAuth2'
            " client credentials (POST /oauth/token), a deletions endpoint per entity,"
            " updated_since ISO, no schema endpoint",
            records_path="results", paging="json_link", auth="oauth2", deletions="endpoint",
            schema=False,
        ),
        Profile(
            "link-header", 'JSON array, Link: <...>; rel="next" header, HTTP basic (user'
            " salesflow), tombstones, since in epoch seconds, no schema endpoint",
            records_path="", paging="header_link", auth="http_basic", deletions="tombstones",
            since_param="since", since_format="epoch", schema=False,
        ),
        Profile(
            "offset", 'JSON {"items", "total"}, offset/limit paging, API key in the query'
            " (api_key), a deletions endpoint per entity, updated_after in epoch"
            " milliseconds, /v1/schema",
            records_path="items", paging="offset", auth="api_key_query", deletions="endpoint",
            since_param="updated_after", since_format="epoch_ms",
        ),
        Profile(
            "pages", 'JSON {"data", "page", "total_pages"}, page/per_page paging (first page'
            " 1), bearer token, soft deletes (is_deleted), updated_since ISO, /v1/schema",
            records_path="data", paging="page_number", auth="bearer",
            deletions="soft_delete", limit_param="per_page",
        ),
    )
}
PROFILES: dict[str, str] = {name: p.description for name, p in SPECS.items()}

# loaders/replica/settings.ENDPOINTS, copied (see the module docstring)
DEFAULT_ENDPOINTS: dict[str, dict[str, str]] = {
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


def get(name: str) -> Profile:
    """The profile called ``name``; a ValueError naming the profiles otherwise."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(
            f"no protocol profile {name!r}: choose one of {', '.join(SPECS)}"
        ) from None


def deletions_path(entity: str) -> str:
    return f"v1/{entity}/deletions"


def _paginator(p: Profile, page_size: int) -> dict[str, Any]:
    if p.paging == "header_cursor":
        return {"type": "header_cursor", "cursor_key": "X-Next-Cursor", "cursor_param": "cursor"}
    if p.paging == "cursor":
        return {"type": "cursor", "cursor_path": "next_cursor", "cursor_param": "cursor"}
    if p.paging == "json_link":
        return {"type": "json_link", "next_url_path": "links.next"}
    if p.paging == "header_link":
        return {"type": "header_link"}
    # a page may come empty while more follow (its records were replaced since, see
    # simulator.api): the total says when the listing ends, not an empty page
    if p.paging == "offset":
        return {"type": "offset", "limit": page_size, "limit_param": "limit",
                "offset_param": "offset", "total_path": "total",
                "stop_after_empty_page": False}
    return {"type": "page_number", "page_param": "page", "base_page": 1,
            "total_path": "total_pages", "stop_after_empty_page": False}


def _auth(p: Profile) -> dict[str, str]:
    if p.auth == "api_key_header":
        return {"type": "api_key", "name": API_KEY_HEADER, "location": "header"}
    if p.auth == "api_key_query":
        return {"type": "api_key", "name": API_KEY_PARAM, "location": "query"}
    if p.auth == "http_basic":
        return {"type": "http_basic", "username": BASIC_USER}
    if p.auth == "oauth2":
        return {"type": "oauth2_client_credentials", "token_url": TOKEN_PATH,
                "client_id": OAUTH_CLIENT_ID}
    return {"type": "bearer"}


def _endpoints(p: Profile) -> dict[str, dict[str, str]] | None:
    """The endpoint declarations reading ``p``; None when they are the defaults."""
    if p.deletions == "tombstones":
        return None
    out = {}
    for entity, spec in DEFAULT_ENDPOINTS.items():
        spec = dict(spec)
        if "deleted_marker" in spec:
            if p.deletions == "soft_delete":
                spec["soft_delete_field"] = SOFT_DELETE_FIELD
            else:
                spec["deletions_path"] = deletions_path(entity)
        out[entity] = spec
    return out


def loader_settings(profile: str, page_size: int = PAGE_SIZE) -> dict[str, Any]:
    """The ``[sources.replica]`` keys (but ``base_url`` and the secret) that read
    ``profile``; ``endpoints`` only where they differ from the loader's defaults."""
    p = get(profile)
    out: dict[str, Any] = {
        "format": "json" if p.json else "ndjson",
        "records_path": p.records_path if p.json else "data",
        "paginator": _paginator(p, page_size),
        "since_param": p.since_param,
        "since_format": p.since_format,
        # offset paging sends its own limit
        "limit_param": "" if p.paging == "offset" else p.limit_param,
        "schema_path": "v1/schema" if p.schema else "",
        "announcements_path": "v1/announcements",
        "count_path": "{path}/count",
        "auth": _auth(p),
    }
    endpoints = _endpoints(p)
    if endpoints is not None:
        out["endpoints"] = endpoints
    return out


def loader_env(
    profile: str, base_url: str, token: str, page_size: int | None = None
) -> dict[str, str]:
    """``SOURCES__REPLICA__*`` environment variables configuring the loader for the
    simulator serving ``profile`` at ``base_url`` with ``token`` (tables as JSON)."""
    settings = loader_settings(profile, page_size or PAGE_SIZE)
    env = {"SOURCES__REPLICA__BASE_URL": base_url, "SOURCES__REPLICA__TOKEN": token}
    if page_size is not None:
        env["SOURCES__REPLICA__PAGE_SIZE"] = str(page_size)
    for key, value in settings.items():
        env[f"SOURCES__REPLICA__{key.upper()}"] = (
            json.dumps(value) if isinstance(value, dict) else str(value)
        )
    return env


_COMMENTS = {
    "format": "how a listing is served: ndjson | json",
    "records_path": 'json: where the records are ("" = the document is the array)',
    "paginator": "dlt rest_api paginator",
    "since_param": "the incremental parameter",
    "since_format": "iso | epoch (seconds) | epoch_ms | a strftime pattern",
    "limit_param": 'page-size parameter ("" = none; offset paging sends its own limit)',
    "schema_path": '"" = none: types from the committed data contract',
    "announcements_path": "announced schema changes",
    "count_path": "reconciliation counts; {path} = the endpoint's path",
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # a TOML basic string is a JSON string


def loader_toml(profile: str) -> str:
    """The ``.dlt/config.toml`` section reading ``profile``, commented (no secrets: the
    token goes in ``secrets.toml`` or ``SOURCES__REPLICA__TOKEN``)."""
    p = get(profile)
    settings = loader_settings(profile)
    lines = [
        f"# the replica API served as profile {profile!r}: {p.description}",
        "[sources.replica]",
        'base_url = "http://127.0.0.1:8765"',
    ]
    for key, value in settings.items():
        if key in ("auth", "endpoints"):
            continue
        lines.append(f"{key} = {_toml(value)}  # {_COMMENTS[key]}")
    lines += [
        "",
        "# the secret is sources.replica.token (the bearer token, API key, basic-auth",
        "# password or OAuth2 client secret), in secrets.toml, never here",
        "[sources.replica.auth]",
        *(f"{k} = {_toml(v)}" for k, v in settings["auth"].items()),
    ]
    endpoints = settings.get("endpoints")
    if endpoints:
        style = ("soft-delete flag: a record whose flag is true is deleted"
                 if p.deletions == "soft_delete"
                 else "deletions endpoint: {<pk>, deleted_at} of records deleted since a time")
        lines += ["", "# every endpoint declared (these replace the defaults); deletions by a",
                  f"# {style}"]
        for entity, spec in endpoints.items():
            lines += ["", f"[sources.replica.endpoints.{entity}]",
                      *(f"{k} = {_toml(v)}" for k, v in spec.items())]
    return "\n".join(lines) + "\n"
