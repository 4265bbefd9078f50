"""How the replica API is spoken: one configured :class:`Api`, and the pages of a listing.

Everything about the wire is configuration (``[sources.replica]``, overridable per
endpoint for the listing keys), with today's protocol as the defaults: NDJSON pages,
``updated_since`` in ISO and ``limit``, the next cursor in the ``X-Next-Cursor`` header,
bearer auth, a schema endpoint. Paginators and auth are dlt's own classes, built by dlt's
own factories (``dlt.sources.rest_api.config_setup``) from the same dictionaries dlt's
``rest_api`` source takes, so any API dlt can page through needs no code here. The one
secret is always ``sources.replica.token``: the bearer token, the API key, the basic-auth
password or the OAuth2 client secret.

A page stays bytes: an NDJSON body is handed on as is (the hot path is unchanged); a JSON
document is split (:func:`~loaders.replica.jsondoc.split_document`) into its records as
NDJSON and the envelope around them, which the paginator reads through
``response.json()``, so no record is ever parsed into a dict. A page with no records is
one paginators see as empty (those that stop on an empty page do).

May import: dlt, requests, and this package's ``settings``, ``errors`` and ``jsondoc``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any
from urllib.parse import urljoin

import requests
from dlt.common.exceptions import ValueErrorWithKnownValues
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.auth import AuthConfigBase
from dlt.sources.helpers.rest_client.paginators import BasePaginator
from dlt.sources.rest_api.config_setup import create_auth, create_paginator
from requests import Response

from loaders.replica import settings
from loaders.replica.errors import PageError, ReplicaError
from loaders.replica.jsondoc import split_document

NDJSON = "application/x-ndjson"
JSON = "application/json"
# content types a page of records may come in, per format (an error page in HTML is not
# records, nor is a JSON document when NDJSON was asked for)
NDJSON_TYPES = frozenset(
    {NDJSON, "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
JSON_TYPES = frozenset({JSON, "text/json", "application/vnd.api+json", "application/hal+json"})

FORMATS = ("ndjson", "json")
SINCE_FORMATS = ("iso", "epoch", "epoch_ms")  # or a strftime pattern
AUTH_TYPES = ("bearer", "api_key", "http_basic", "oauth2_client_credentials")
# the listing keys an endpoint may override under [sources.replica.endpoints.<entity>]
LISTING_KEYS = (
    "format", "records_path", "paginator", "since_param", "since_format", "limit_param"
)
# the keys each auth type takes besides its secret (sources.replica.token)
AUTH_KEYS: dict[str, tuple[str, ...]] = {
    "bearer": (),
    "api_key": ("name", "location"),
    "http_basic": ("username",),
    "oauth2_client_credentials": ("token_url", "client_id", "scopes"),
}
AUTH_DEFAULTS: dict[str, Any] = {
    "name": "X-API-Key", "location": "header", "username": "salesflow",
    "token_url": "oauth/token", "client_id": "salesflow", "scopes": "",
}
DEFAULT_PAGINATOR: Mapping[str, Any] = MappingProxyType({
    "type": "header_cursor",
    "cursor_key": settings.NEXT_CURSOR_HEADER,
    "cursor_param": settings.PARAM_CURSOR,
})
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def from_microseconds(us: int) -> datetime:
    """A cursor kept as microseconds since the epoch, as a UTC time."""
    return _EPOCH + timedelta(microseconds=us)


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Listing:
    """How one listing is served: its body's format, where its records are, how it is
    paged, and its incremental and page-size parameters."""

    format: str = "ndjson"
    records_path: str = "data"
    paginator: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_PAGINATOR)
    since_param: str = settings.PARAM_SINCE
    since_format: str = "iso"
    limit_param: str = settings.PARAM_LIMIT

    def since_value(self, when: datetime) -> str | int:
        """``when`` as the incremental parameter takes it."""
        when = _utc(when)
        if self.since_format == "iso":
            return when.isoformat().replace("+00:00", "Z")
        if self.since_format == "epoch":
            return (when - _EPOCH) // timedelta(seconds=1)
        if self.since_format == "epoch_ms":
            return (when - _EPOCH) // timedelta(milliseconds=1)
        return when.strftime(self.since_format)

    def since_requested(self, when: datetime) -> datetime | None:
        """The time the API is asked from when asked from ``when``: earlier where the
        format is coarser (seconds, a pattern without them); None when a pattern cannot
        be read back."""
        value = self.since_value(when)
        if isinstance(value, int):
            unit = timedelta(seconds=1 if self.since_format == "epoch" else 0.001)
            return _EPOCH + value * unit
        if self.since_format == "iso":
            return _utc(when)
        try:
            return _utc(datetime.strptime(value, self.since_format))
        except ValueError:
            return None

    @property
    def accept(self) -> str:
        return NDJSON if self.format == "ndjson" else JSON

    @property
    def content_types(self) -> frozenset[str]:
        return NDJSON_TYPES if self.format == "ndjson" else JSON_TYPES

    def make_paginator(self, page_size: int) -> BasePaginator:
        """A fresh paginator (they keep the listing's position) from dlt's factory; offset
        paging takes ``page_size`` as its limit unless the configuration sets one."""
        config = dict(self.paginator)
        if config.get("type") == "offset":
            config.setdefault("limit", page_size)
        paginator = create_paginator(config)  # type: ignore[arg-type]
        if paginator is None:
            raise ReplicaError(f"paginator {dict(self.paginator)!r} builds no paginator")
        return paginator

    def page_params(self, page_size: int) -> dict[str, Any]:
        """The page-size parameter (none where offset paging sends its own)."""
        if not self.limit_param or self.paginator.get("type") == "offset":
            return {}
        return {self.limit_param: page_size}


@dataclass(frozen=True)
class Page:
    """One page of a listing: its records as NDJSON bytes, and the response."""

    records: bytes
    response: Response


@dataclass(frozen=True)
class Api:
    """One configured replica API (the token is never printed)."""

    base_url: str
    token: str = field(repr=False)
    auth: Mapping[str, Any] = field(default_factory=lambda: _frozen({"type": "bearer"}))
    listing: Listing = field(default_factory=Listing)
    schema_path: str = settings.SCHEMA_PATH
    announcements_path: str = settings.ANNOUNCEMENTS_PATH
    count_path: str = settings.COUNT_PATH

    def listing_for(self, endpoint: Mapping[str, Any]) -> Listing:
        """The listing of ``endpoint``: its own keys over the API's."""
        given = {k: endpoint[k] for k in LISTING_KEYS if endpoint.get(k) is not None}
        if not given:
            return self.listing
        where = f"sources.replica.endpoints.<{endpoint.get('path', '?')}>"
        return _listing(given, self.listing, where)

    def url(self, path: str) -> str:
        """``path`` relative to the base URL (an absolute URL as is)."""
        return urljoin(self.base_url.rstrip("/") + "/", path)

    def client(self, user: str = "") -> RESTClient:
        """dlt's REST client for this API, auth applied. One per (API, ``user``) for the
        life of the process: a continuous run does not pay dlt's configuration resolution
        each cycle; ``user`` keeps resources apart (each extracted in a thread of its
        own)."""
        key = (self._key(), user)
        with _LOCK:
            found = _CLIENTS.get(key)
            if found is None:
                found = _CLIENTS[key] = _PageClient(
                    base_url=self.base_url.rstrip("/") + "/", auth=self._make_auth()
                )
        return found

    def requests_auth(self) -> requests.auth.AuthBase:
        """The auth for one-off requests (health, counts), shared by them."""
        key = (self._key(), "\0requests")
        with _LOCK:
            found = _AUTHS.get(key)
            if found is None:
                found = _AUTHS[key] = self._make_auth()
        return found

    def count_url(self, path: str) -> str | None:
        """Where the count of an endpoint at ``path`` is read (None: the API has none)."""
        if not self.count_path:
            return None
        return self.url(self.count_path.replace("{path}", path.strip("/")))

    def _key(self) -> str:
        return json.dumps([self.base_url, self.token, dict(self.auth)], sort_keys=True)

    def _make_auth(self) -> AuthConfigBase:
        auth = dict(self.auth)
        kind = auth.pop("type", "bearer")
        if kind == "bearer":
            config: dict[str, Any] = {"token": self.token}
        elif kind == "api_key":
            config = {"name": auth["name"], "location": auth["location"], "api_key": self.token}
        elif kind == "http_basic":
            config = {"username": auth["username"], "password": self.token}
        else:
            config = {
                "access_token_url": self.url(auth["token_url"]),
                "client_id": auth["client_id"],
                "client_secret": self.token,
            }
            if auth.get("scopes"):
                config["access_token_request_data"] = {"scope": auth["scopes"]}
        made = create_auth({"type": kind, **config})  # type: ignore[arg-type, typeddict-item]
        assert made is not None
        return made


_LOCK = threading.Lock()
_CLIENTS: dict[tuple[str, str], RESTClient] = {}
_AUTHS: dict[tuple[str, str], AuthConfigBase] = {}


def api_from_settings(base_url: str, token: str, config: Mapping[str, Any]) -> Api:
    """The API ``config`` (the ``[sources.replica]`` table; absent keys take today's
    protocol) describes. A bad setting is a :class:`ReplicaError` naming the key."""
    if not str(base_url).startswith(("http://", "https://")):
        raise ReplicaError(
            f"sources.replica.base_url must be an http(s) URL, got {base_url!r}"
        )
    listing = _listing(config, Listing(), "sources.replica")
    paths = {}
    for key, default in (("schema_path", settings.SCHEMA_PATH),
                         ("announcements_path", settings.ANNOUNCEMENTS_PATH),
                         ("count_path", settings.COUNT_PATH)):
        value = config.get(key)
        paths[key] = default if value is None else _text(f"sources.replica.{key}", value)
    if paths["count_path"] and "{path}" not in paths["count_path"]:
        raise ReplicaError(
            "sources.replica.count_path must hold {path} (the endpoint's path), e.g."
            f" \"{{path}}/count\", or be \"\" for none; got {paths['count_path']!r}"
        )
    api = Api(str(base_url), str(token), _auth(config.get("auth")), listing, **paths)
    endpoints = _table("sources.replica.endpoints", config.get("endpoints") or {})
    for name, endpoint in endpoints.items():
        where = f"sources.replica.endpoints.{name}"
        endpoint = _table(where, endpoint)
        given = {k: endpoint[k] for k in LISTING_KEYS if endpoint.get(k) is not None}
        if given:
            _listing(given, listing, where)
    return api


def _listing(config: Mapping[str, Any], base: Listing, where: str) -> Listing:
    """``base`` with the listing keys of ``config`` (at ``where``), each checked."""
    values: dict[str, Any] = {}
    for key in ("format", "records_path", "since_param", "since_format", "limit_param"):
        if config.get(key) is not None:
            values[key] = _text(f"{where}.{key}", config[key])
    fmt = values.get("format", base.format)
    if fmt not in FORMATS:
        raise ReplicaError(f"{where}.format must be one of {list(FORMATS)}, got {fmt!r}")
    if "since_param" in values and not values["since_param"]:
        raise ReplicaError(f"{where}.since_param must name the incremental parameter")
    since_format = values.get("since_format", base.since_format)
    if since_format not in SINCE_FORMATS and "%" not in since_format:
        raise ReplicaError(
            f"{where}.since_format must be iso, epoch, epoch_ms or a strftime pattern"
            f" (e.g. \"%Y-%m-%d %H:%M:%S\"), got {since_format!r}"
        )
    if config.get("paginator") is not None:
        values["paginator"] = _paginator(f"{where}.paginator", config["paginator"])
    listing = replace(base, **values)
    try:
        listing.since_value(datetime(2000, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    except ValueError as exc:
        raise ReplicaError(f"{where}.since_format {since_format!r}: {exc}") from None
    return listing


def _paginator(where: str, value: Any) -> Mapping[str, Any]:
    if isinstance(value, str):
        value = _json(where, value) if value.lstrip().startswith("{") else {"type": value}
    config = dict(_table(where, value))
    config.setdefault("type", "header_cursor")
    trial = dict(config)
    if trial.get("type") == "offset":
        trial.setdefault("limit", 1)
    try:
        made = create_paginator(trial)  # type: ignore[arg-type]
    except ValueErrorWithKnownValues as exc:
        raise ReplicaError(
            f"{where}.type must be one of dlt's paginators {list(exc.valid_values)}, got"
            f" {config.get('type')!r}"
        ) from None
    except (TypeError, ValueError) as exc:
        raise ReplicaError(f"{where} = {config!r} is not a paginator dlt can build: {exc}") \
            from None
    if made is None:
        raise ReplicaError(f"{where} must name a paginator (type \"auto\" is not one)")
    return _frozen(config)


def _auth(value: Any) -> Mapping[str, Any]:
    where = "sources.replica.auth"
    if value is None:
        return _frozen({"type": "bearer"})
    if isinstance(value, str):
        value = _json(where, value) if value.lstrip().startswith("{") else {"type": value}
    given = dict(_table(where, value))
    kind = given.get("type", "bearer")
    if kind not in AUTH_TYPES:
        raise ReplicaError(f"{where}.type must be one of {list(AUTH_TYPES)}, got {kind!r}")
    unknown = set(given) - {"type", *AUTH_KEYS[kind]} - {"token"}
    if "token" in given:
        raise ReplicaError(
            f"{where} must not hold the secret: it is always sources.replica.token"
            " (SOURCES__REPLICA__TOKEN or .dlt/secrets.toml)"
        )
    if unknown:
        raise ReplicaError(
            f"{where} of type {kind} takes {list(AUTH_KEYS[kind]) or 'no other keys'},"
            f" not {sorted(unknown)}"
        )
    auth: dict[str, Any] = {"type": kind}
    for key in AUTH_KEYS[kind]:
        auth[key] = _text(f"{where}.{key}", given.get(key, AUTH_DEFAULTS[key]))
        if not auth[key] and key != "scopes":
            raise ReplicaError(f"{where}.{key} must not be empty")
    if kind == "api_key" and auth["location"] not in ("header", "query"):
        raise ReplicaError(
            f"{where}.location must be header or query, got {auth['location']!r}"
        )
    return _frozen(auth)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ReplicaError(f"{key} must be text, got {value!r}")
    return value


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if isinstance(value, str):
        value = _json(key, value)
    if not isinstance(value, Mapping):
        raise ReplicaError(f"{key} must be a table (TOML) or a JSON object, got {value!r}")
    return value


def _json(key: str, value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ReplicaError(f"{key} is not JSON: {exc}") from None


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


# --- pages ----------------------------------------------------------------------------

BODY_READ_SIZE = 1 << 20


def _read_body(response: Response, *args: Any, **kwargs: Any) -> Response:
    """Read the whole body in large reads (requests' default reads 10 KiB at a time, a
    cost per byte on multi-megabyte pages). A response hook, so it runs inside dlt's
    retried ``send``: a connection dropped mid-body is retried like any other."""
    if response._content is False:  # not read yet
        response._content = b"".join(response.iter_content(BODY_READ_SIZE))
        response._content_consumed = True
    return response


@dataclass
class _Selector:
    """What :class:`_PageClient` takes a page's records by: the listing, and a check of
    each page's response before it is read (page numbers from 1)."""

    listing: Listing
    check: Callable[[int, Response], None] | None = None
    number: int = 0


class _PageClient(RESTClient):
    """dlt's REST client (session, auth, retries, paginators) whose pages stay bytes:
    a page's data is its records as NDJSON (no records: no data)."""

    def _send_request(self, request: Any, **kwargs: Any) -> Response:
        hooks = request.hooks.setdefault("response", [])
        if _read_body not in hooks:
            hooks.insert(0, _read_body)
        return super()._send_request(request, stream=True, **kwargs)

    def detect_data_selector(self, response: Response) -> str:
        return "$"

    def extract_response(self, response: Response, data_selector: Any) -> list[Any]:
        if not isinstance(data_selector, _Selector):
            return [response.content]
        data_selector.number += 1
        if data_selector.check is not None:
            data_selector.check(data_selector.number, response)
        listing = data_selector.listing
        if listing.format == "ndjson":
            body = response.content
        else:
            body, envelope = split_document(response.content, listing.records_path)
            # the paginator reads the envelope, never the records as dicts
            response.__dict__["json"] = lambda *args, **kwargs: envelope
        return [body] if body and not body.isspace() else []


def check_content_type(listing: Listing, response: Response) -> str | None:
    """The media type of ``response`` when it is not one the listing's pages come in
    (None: it is, or none is declared)."""
    declared = response.headers.get("Content-Type", "")
    media = declared.split(";")[0].strip().lower()
    if not media or media in listing.content_types:
        return None
    if listing.format == "json" and media.endswith("+json"):
        return None
    return media


def read_pages(
    api: Api, listing: Listing, path: str, params: dict[str, Any],
    check: Callable[[int, Response], None] | None = None, user: str = "",
    page_size: int = 20000,
) -> Generator[Page, None, None]:
    """The pages of the listing at ``path`` (``params``: its first request's), paged by
    the listing's paginator; ``check`` sees each response before its body is read
    (e.g. refusing a page that is not records), ``user`` picks the client (see
    :meth:`Api.client`), ``page_size`` is offset paging's limit. An error status
    raises requests' ``HTTPError``; a JSON body that is not such a document raises
    :class:`PageError`."""
    client = api.client(user)
    try:
        responses = client.paginate(
            path, params=dict(params), paginator=listing.make_paginator(page_size),
            headers={"Accept": listing.accept}, data_selector=_Selector(listing, check),  # type: ignore[arg-type]
        )
        for page in responses:
            yield Page(page[0] if page else b"", page.response)
    except ValueError as exc:
        if isinstance(exc, (PageError, requests.RequestException)):
            raise
        # dlt's paginators say so when the document lacks what they page by
        raise PageError(
            f"{path}: the answer cannot be paged as configured"
            f" ({dict(listing.paginator)!r}): {exc}",
            answered=f"a page the paginator cannot read: {exc}"[:200],
        ) from None
