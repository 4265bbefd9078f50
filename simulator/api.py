"""The replica API: HTTP access to the platform's read replica.

Versioned under ``/v1``; the OpenAPI spec is at ``/openapi.json``.

* Bearer-token auth on every ``/v1`` route (401 without a valid token, and no data); the
  profiles' other styles likewise.
* ``GET /v1/{entity}``: incremental listing. ``updated_since`` (inclusive) selects rows
  changed at or after a time; pages follow keyset order ``(updated_at, <primary key>)``
  and ``cursor`` (opaque, from the previous page) continues after the last row served.
  A row written while a client pages is appended after the rows it has not seen yet, so
  paging never skips nor repeats a row; a row updated meanwhile comes again, newer.
  Deletable entities interleave tombstones ``{<pk>, updated_at, deleted_at}``.
  Bodies are JSON ``{"data": [...], "next_cursor": ..., "has_more": ...}`` or, with
  ``Accept: application/x-ndjson`` (or ``format=ndjson``), one record per line with the
  cursor in the ``X-Next-Cursor`` header (absent on the last page).
* With change sequences on (``create_app(change_seq=True)``, ``sim serve --change-seq``)
  every record, tombstones too, carries ``change_seq``: the sequence number of the commit
  that wrote it, which only grows in commit order. ``since_seq=N`` lists the records with
  ``change_seq > N`` in ``(change_seq, key)`` order, keyset-paged the same way: a client
  on it never misses a record however late its transaction committed.
* ``GET /v1/{entity}/count?updated_before=T``: how many live records (tombstones not
  counted) have ``updated_at`` before ``T``, for a client to reconcile its copy with.
* ``GET /v1/schema``: each entity's fields, types and the schema version.
* ``GET /v1/announcements``: announced schema changes, upcoming and applied.
* ``GET /health``: liveness, replica and production positions, replication lag, schema
  version and the drifts the server knows (no auth).
* Rate limit per token (token bucket): 429 with ``Retry-After``.

Protocol profiles (``create_app(profile=...)``, ``sim serve --profile``; see
:mod:`simulator.profiles`) serve the same listings other ways: a JSON envelope, a bare
array or NDJSON; a body cursor, a next link (body or ``Link`` header), offset or page
number; bearer, API key (header or query), HTTP basic or OAuth2 client credentials
(``POST /oauth/token``, tokens expiring); deletions as tombstones, as an ``is_deleted``
flag or at ``GET /v1/{entity}/deletions``; the incremental parameter by another name, as
ISO or Unix time. ``native`` is the protocol above, served by the same code as before.
Envelopes are bytes around the joined records; a soft-delete flag or a deletion's shape
is one more SQL layer over the page, as drifts are. Cursor profiles page by the keyset;
offset and page-number profiles count positions in commit order over the feed and the
positions superseded since (:func:`_window`), which never move while the platform
writes. A request parameter a profile does not take is a 400 naming those it does.

A page is a range of the replica's feed (see :mod:`simulator.store`: records stored
rendered, or rows rendered by ``json_object`` as they are read), joined by SQLite
(``group_concat``): serving builds no Python object per row. Drifts
(:mod:`simulator.drift`) rewrite the page's records in the same SQL, and may add, remove
or stall a listing, describe themselves in ``/v1/schema`` and be announced.

May import ``store``, ``faults``, ``drift``, ``profiles`` and ``model``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from simulator import drift, profiles, store
from simulator.drift import DriftWatcher, Plan
from simulator.faults import FaultWatcher
from simulator.model import ENTITIES, EVOLUTIONS
from simulator.profiles import Profile

DEFAULT_LIMIT = 1000
MAX_LIMIT = 50_000
NDJSON = "application/x-ndjson"
# scope key: the endpoint a request named, when it is served by another entity's listing
ENDPOINT = "salesflow.endpoint"
BEARER = HTTPBearer(auto_error=False)

EntityName = Enum("EntityName", {name: name for name in ENTITIES}, type=str)  # type: ignore[misc]


CHANGE_SEQ = "change_seq"
# an OAuth2 access token is still accepted this long after it expired: the client counts
# its expires_in from when the answer reached it, a little after the server did
TOKEN_LEEWAY = 2.0


def encode_cursor(*position: object) -> str:
    raw = json.dumps(list(position), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, by_seq: bool = False) -> tuple:
    """A cursor's position: ``(updated_at, key)``, or with ``by_seq`` ``(seq, key, dead)``."""
    try:
        pad = "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(cursor + pad))
        if by_seq:
            seq, key, dead = position
            if type(seq) is not int or not isinstance(key, (str, int)) or dead not in (0, 1):
                raise TypeError("a since_seq cursor holds a sequence number, a key, a flag")
            return seq, key, dead
        updated_at, key = position
        if not isinstance(updated_at, str) or not isinstance(key, (str, int)):
            raise TypeError("a cursor holds an updated_at string and a key")
        store.parse_iso(updated_at)
        return updated_at, key
    except (ValueError, TypeError, binascii.Error) as exc:
        raise HTTPException(
            400, f"invalid cursor {cursor[:40]!r}: pass next_cursor as given"
        ) from exc


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed, else seconds until a request would be."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self.lock:
            tokens, last = self.tokens.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self.tokens[key] = (tokens - 1, now)
                return 0.0
            self.tokens[key] = (tokens, now)
            return (1 - tokens) / self.rate


class Replica:
    """Read access to replica.db, one connection per serving thread."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / store.REPLICA
        self.production_path = directory / store.PRODUCTION
        self.local = threading.local()

    def con(self):
        con = getattr(self.local, "con", None)
        if con is None:
            con = store.connect(self.path, readonly=True)
            self.local.con = con
        return con

    def applied(self) -> list[str]:
        return store.applied_evolutions(self.con())

    def position(self) -> dict:
        """The replica's and production's last sequence numbers, and how long the oldest
        production commit the replica lacks has been waiting (0 when caught up)."""
        last = self.con().execute("SELECT last_seq FROM replication_state").fetchone()[0]
        out = {"replica_seq": last, "production_seq": None, "replication_lag_seconds": None}
        con = getattr(self.local, "production", None)
        try:
            if con is None:
                con = self.local.production = store.connect(self.production_path, readonly=True)
            seq = con.execute("SELECT coalesce(max(seq), 0) FROM txlog").fetchone()[0]
            oldest = con.execute(
                "SELECT committed_at FROM txlog WHERE seq > ? ORDER BY seq LIMIT 1", (last,)
            ).fetchone()
        except sqlite3.Error:  # no production database here: the replica alone is served
            return out
        waited = (store.utcnow() - store.parse_iso(oldest[0])).total_seconds() if oldest else 0
        out.update(production_seq=seq, replication_lag_seconds=round(max(0.0, waited), 3))
        return out


def _malform(lines: list[str], rate: float, entity: str, rng: random.Random) -> list[str]:
    """Deliver a share of records wrong: a wrong type, a null where one is required, or
    the same record twice."""
    e = ENTITIES[entity]
    required = [f.name for f in e.fields if f.required and f.name != "updated_at"]
    numeric = [f.name for f in e.fields if f.type == "integer" and f.name != e.primary_key]
    out: list[str] = []
    for line in lines:
        if rng.random() >= rate:
            out.append(line)
            continue
        rec = json.loads(line)
        kind = rng.choice(("type", "null", "duplicate"))
        if kind == "type" and numeric:
            rec[rng.choice(numeric)] = "not-a-number"
        elif kind == "null" and required:
            rec[rng.choice(required)] = None
        else:
            out.append(line)
        out.append(json.dumps(rec))
    return out


def create_app(
    directory: Path | str,
    token: str,
    rate_limit: float = 200.0,
    burst: float = 400.0,
    seed: int | None = None,
    change_seq: bool = False,
    counts: bool = True,
    profile: str = "native",
    token_ttl: float = profiles.DEFAULT_TOKEN_TTL,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """``change_seq``: records carry their commit sequence and listings take
    ``since_seq``; ``counts``: the count endpoint is served (else 404); ``profile``: the
    protocol served (:mod:`simulator.profiles`); ``token_ttl``: seconds an OAuth2 access
    token lives, on ``clock``."""
    if not token:
        raise ValueError("the replica API needs a bearer token")
    prof = profiles.get(profile)
    if token_ttl <= 0:
        raise ValueError(f"token_ttl must be positive, got {token_ttl}")
    directory = Path(directory)
    replica = Replica(directory)
    faults = FaultWatcher(directory)
    drifts = DriftWatcher(directory)
    bucket = TokenBucket(rate_limit, burst)
    rng = random.Random(seed)

    app = FastAPI(
        title="Sales platform replica API",
        version="1",
        description="Read access to the sales platform's read replica.",
    )

    app.add_middleware(EndpointMiddleware, drifts=drifts)
    app.add_middleware(FaultMiddleware, faults=faults, rng=rng)

    issued: dict[str, float] = {}  # OAuth2 access token -> when it expires, on clock
    issued_lock = threading.Lock()

    def credential(request: Request, creds: HTTPAuthorizationCredentials | None) -> str | None:
        """The credential the request presents the profile's way, if it is valid."""
        if prof.auth in ("bearer", "oauth2"):
            given = creds.credentials if creds is not None else None
        elif prof.auth == "api_key_header":
            given = request.headers.get(profiles.API_KEY_HEADER)
        elif prof.auth == "api_key_query":
            given = request.query_params.get(profiles.API_KEY_PARAM)
        else:
            user, given = _basic_credentials(request.headers.get("authorization")) or ("", None)
            if user != profiles.BASIC_USER:
                return None
        if not given:
            return None
        if prof.auth == "oauth2":
            with issued_lock:
                expires = issued.get(given)
            return given if expires is not None and clock() < expires + TOKEN_LEEWAY else None
        return given if _same(given, token) else None

    def authorize(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> str:
        given = credential(request, creds)
        if given is None:
            detail, scheme = REFUSALS[prof.auth]
            raise HTTPException(401, detail, headers={"WWW-Authenticate": scheme})
        wait = bucket.take(given)
        if wait:
            raise HTTPException(
                429, "rate limit exceeded", headers={"Retry-After": str(math.ceil(wait))}
            )
        return given

    auth = [Depends(authorize)]

    if prof.auth == "oauth2":

        @app.post(f"/{profiles.TOKEN_PATH}", summary="OAuth2 client credentials grant")
        async def oauth_token(request: Request) -> JSONResponse:
            form = parse_qs((await request.body()).decode("utf-8", "replace"))

            def field(name: str) -> str | None:
                values = form.get(name)
                return values[0] if values else None

            client_id, secret = field("client_id"), field("client_secret")
            basic = _basic_credentials(request.headers.get("authorization"))
            if basic:
                client_id, secret = basic
            no_store = {"Cache-Control": "no-store"}
            if field("grant_type") != "client_credentials":
                return JSONResponse(
                    {"error": "unsupported_grant_type",
                     "error_description": "only grant_type=client_credentials is offered"},
                    400, headers=no_store,
                )
            if client_id != profiles.OAUTH_CLIENT_ID or not secret or not _same(secret, token):
                return JSONResponse(
                    {"error": "invalid_client",
                     "error_description": "unknown client or wrong client secret"},
                    401, headers={**no_store, "WWW-Authenticate": 'Basic realm="oauth"'},
                )
            access = secrets.token_urlsafe(32)
            now = clock()
            with issued_lock:
                for old in [t for t, until in issued.items() if until + TOKEN_LEEWAY <= now]:
                    del issued[old]
                issued[access] = now + token_ttl
            body: dict = {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": int(token_ttl) if token_ttl == int(token_ttl) else token_ttl,
            }
            if field("scope"):
                body["scope"] = field("scope")
            return JSONResponse(body, headers=no_store)

    def schema_version(applied: list[str], now: str) -> int:
        return 1 + len(applied) + len(drift.described(drifts.get(), now))

    @app.get("/health", summary="Liveness, replication and schema version")
    def health() -> dict:
        now = store.iso(store.utcnow())
        return {
            "status": "ok",
            **replica.position(),
            "schema_version": schema_version(replica.applied(), now),
            "drifts": [d.id for d in drifts.get()],
        }

    @app.get("/v1/schema", summary="Current schema of every entity", dependencies=auth)
    def schema() -> dict:
        if not prof.schema:
            raise HTTPException(404, "this API describes no schema")
        applied = replica.applied()
        now = store.iso(store.utcnow())
        told = drift.described(drifts.get(), now)
        return {
            "schema_version": schema_version(applied, now),
            "applied_evolutions": applied,
            "entities": {
                name: _entity_schema(name, entity, applied, told, change_seq, prof)
                for name, entity in drift.schema_entities(told, now).items()
            },
        }

    @app.get(
        "/v1/announcements",
        summary="Announced schema changes, upcoming and applied",
        dependencies=auth,
    )
    def announcements() -> dict:
        now = store.iso(store.utcnow())
        rows = replica.con().execute(
            "SELECT name, announced_at, effective_at, applied_at FROM evolutions"
            " WHERE announced_at <= ? ORDER BY effective_at, name",
            (now,),
        ).fetchall()
        out = []
        for name, announced_at, effective_at, applied_at in rows:
            evo = EVOLUTIONS[name]
            out.append(
                {
                    "change_id": name,
                    "title": evo.title,
                    "description": evo.description,
                    "breaking": evo.breaking,
                    "announced_at": announced_at,
                    "effective_at": effective_at,
                    "applied_at": applied_at,
                    "status": "applied" if applied_at else "upcoming",
                    "changes": [
                        {k: v for k, v in vars(ch).items() if v not in (None, "")}
                        for ch in evo.changes
                    ],
                }
            )
        out += drift.announcements(drifts.get(), replica.applied(), now)
        out.sort(key=lambda a: (a["effective_at"], a["change_id"]))
        return {"announcements": out}

    @app.get(
        "/v1/{entity}/count", summary="Live records updated before a time", dependencies=auth
    )
    def count_entity(
        entity: EntityName,
        updated_before: Annotated[
            str, Query(description="ISO-8601 time, or the profile's epoch (exclusive)")
        ],
    ) -> dict:
        if not counts:
            raise HTTPException(404, f"no count endpoint /v1/{entity.value}/count")
        plan = drift.plan(drifts.get(), entity.value, store.iso(store.utcnow()))
        if plan is None or plan.removed:
            raise HTTPException(404, f"no listing /v1/{entity.value}")
        before = _parse_time(updated_before, "updated_before", prof.since_format, iso_too=True)
        # a covering range of the entity's (updated_at, key) index; a stalled listing
        # counts only what it lists
        sql = f"SELECT count(*) FROM {entity.value} WHERE updated_at < ?"
        args: list[object] = [before]
        if plan.until:
            sql += " AND updated_at <= ?"
            args.append(plan.until)
        [(n,)] = replica.con().execute(sql, args).fetchall()
        return {"entity": entity.value, "live": n, "updated_before": before}

    if prof.deletions == "endpoint":

        @app.get(
            "/v1/{entity}/deletions", summary="Records deleted since a time", dependencies=auth
        )
        def list_deletions(request: Request, entity: EntityName) -> Response:
            if not ENTITIES[entity.value].deletable:
                raise HTTPException(404, f"{entity.value} records are never deleted")
            return serve_profiled(request, entity.value, deletions=True)

    if prof.name != "native":

        @app.get("/v1/{entity}", summary="Incremental listing of an entity", dependencies=auth)
        def list_profiled(request: Request, entity: EntityName) -> Response:
            return serve_profiled(request, request.scope.get(ENDPOINT, entity.value))

    def serve_profiled(request: Request, name: str, deletions: bool = False) -> Response:
        """A listing (or the deletions of an entity) as the profile serves it."""
        plan = drift.plan(drifts.get(), name, store.iso(store.utcnow()))
        if plan is None or plan.removed:
            raise HTTPException(404, f"no listing /v1/{name}")
        q = _profile_query(request, prof, change_seq)
        e = ENTITIES[plan.entity]
        since = (_parse_time(q[prof.since_param], prof.since_param, prof.since_format)
                 if prof.since_param in q else None)
        since_seq = _int_param(q, "since_seq", 0) if "since_seq" in q else None
        if since_seq is not None and since is not None:
            raise HTTPException(400, f"pass since_seq or {prof.since_param}, not both")
        limit = _int_param(q, prof.limit_param, 1, MAX_LIMIT, DEFAULT_LIMIT)
        # which records: tombstones only (deletions), no tombstones (a deletions
        # endpoint serves them), or both; and how they are served
        dead: int | None = None
        layers = plan.layers
        if deletions:
            dead, layers = 1, (*layers, "json_remove(record, '$.updated_at')")
        elif prof.deletions == "endpoint":
            dead = 0
        elif prof.deletions == "soft_delete" and e.deletable:
            layers = (*layers, SOFT_DELETE_LAYER)
        plan = replace(plan, layers=layers)
        total = position = 0
        if prof.positional:
            if prof.paging == "offset":
                position = _int_param(q, "offset", 0, default=0)
            else:
                position = (_int_param(q, "page", 1, default=1) - 1) * limit
            page, total = _window(replica, plan, since, since_seq, dead, position, limit,
                                  change_seq)
        else:
            after = decode_cursor(q["cursor"], by_seq=since_seq is not None) if q.get(
                "cursor") else None
            if since_seq is not None:
                page = _page_by_seq(replica, plan, since_seq, after, limit, dead)
            else:
                page = _page(replica, plan, since, after, limit, change_seq, dead)
        body = page.body
        f = faults.get()
        if f.malformed_rate and body and not deletions:
            lines = body.decode().rstrip("\n").split("\n")
            lines = _malform(lines, f.malformed_rate, plan.entity, rng)
            body = ("\n".join(lines) + "\n").encode()
        array = b"[" + body[:-1].replace(b"\n", b",") + b"]"
        next_cursor = encode_cursor(*page.last_key) if page.has_more and page.last_key else None
        headers: dict[str, str] = {}
        if prof.paging == "cursor":
            out = (b'{"data":' + array + b',"next_cursor":' + json.dumps(next_cursor).encode()
                   + b',"has_more":' + (b"true" if page.has_more else b"false") + b"}")
        elif prof.paging in ("json_link", "header_link"):
            link = (str(request.url.include_query_params(cursor=next_cursor))
                    if next_cursor else None)
            if prof.paging == "json_link":
                out = (b'{"results":' + array + b',"links":{"next":'
                       + json.dumps(link).encode() + b"}}")
            else:
                out = array
                if link:
                    headers["Link"] = f'<{link}>; rel="next"'
        elif prof.paging == "offset":
            out = b'{"items":' + array + b',"total":' + str(total).encode() + b"}"
        else:
            pages = -(-total // limit)
            out = (b'{"data":' + array + b',"page":' + str(position // limit + 1).encode()
                   + b',"total_pages":' + str(pages).encode() + b"}")
        return Response(out, media_type="application/json", headers=headers)

    def list_entity(
        request: Request,
        entity: EntityName,
        updated_since: Annotated[
            str | None, Query(description="ISO-8601 time; rows updated at or after it")
        ] = None,
        since_seq: Annotated[
            int | None,
            Query(ge=0, description="change_seq; records committed after it (--change-seq)"),
        ] = None,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        format: Annotated[str | None, Query(pattern="^(json|ndjson)$")] = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> Response:
        name = request.scope.get(ENDPOINT, entity.value)
        plan = drift.plan(drifts.get(), name, store.iso(store.utcnow()))
        if plan is None or plan.removed:
            raise HTTPException(404, f"no listing /v1/{name}")
        if updated_since is not None:
            try:
                updated_since = store.iso(store.parse_iso(updated_since))
            except ValueError as exc:
                raise HTTPException(400, f"updated_since is not an ISO-8601 time: {exc}") from exc
        if since_seq is not None and not change_seq:
            raise HTTPException(400, "since_seq is not offered: this API lists by updated_at")
        if since_seq is not None and updated_since is not None:
            raise HTTPException(400, "pass since_seq or updated_since, not both")
        after = decode_cursor(cursor, by_seq=since_seq is not None) if cursor else None
        if since_seq is not None:
            page = _page_by_seq(replica, plan, since_seq, after, limit)
        else:
            page = _page(replica, plan, updated_since, after, limit, change_seq)
        body = page.body
        f = faults.get()
        if f.malformed_rate and body:
            lines = body.decode().rstrip("\n").split("\n")
            lines = _malform(lines, f.malformed_rate, plan.entity, rng)
            body = ("\n".join(lines) + "\n").encode()
        next_cursor = encode_cursor(*page.last_key) if page.has_more and page.last_key else None
        ndjson = format == "ndjson" or (format is None and NDJSON in (accept or ""))
        if ndjson:
            headers = {"X-Has-More": "true" if page.has_more else "false"}
            if next_cursor:
                headers["X-Next-Cursor"] = next_cursor
            return Response(body, media_type=NDJSON, headers=headers)
        body = (
            b'{"data":[' + body[:-1].replace(b"\n", b",") + b'],"next_cursor":'
            + json.dumps(next_cursor).encode()
            + b',"has_more":' + (b"true" if page.has_more else b"false") + b"}"
        )
        return Response(body, media_type="application/json")

    if prof.name == "native":
        app.get(
            "/v1/{entity}", summary="Incremental listing of an entity", dependencies=auth
        )(list_entity)
    return app


# what a refusal says, and the WWW-Authenticate challenge, per auth style
REFUSALS = {
    "bearer": ("missing or invalid bearer token", "Bearer"),
    "oauth2": ("missing, invalid or expired access token: get one at /oauth/token",
               'Bearer error="invalid_token"'),
    "api_key_header": (f"missing or invalid API key (header {profiles.API_KEY_HEADER})",
                       f'ApiKey header="{profiles.API_KEY_HEADER}"'),
    "api_key_query": (f"missing or invalid API key (query parameter {profiles.API_KEY_PARAM})",
                      f'ApiKey query="{profiles.API_KEY_PARAM}"'),
    "http_basic": (f"missing or invalid credentials (HTTP basic, user {profiles.BASIC_USER})",
                   'Basic realm="replica"'),
}

# a soft-delete profile's records: tombstones as {<pk>, updated_at, is_deleted: true},
# the others with is_deleted false
SOFT_DELETE_LAYER = (
    f"CASE WHEN dead THEN json_set(json_remove(record, '$.deleted_at'),"
    f" '$.{profiles.SOFT_DELETE_FIELD}', json('true'))"
    f" ELSE json_set(record, '$.{profiles.SOFT_DELETE_FIELD}', json('false')) END"
)


def _same(given: str, secret: str) -> bool:
    return hmac.compare_digest(given.encode(), secret.encode())


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header, if it is one."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(
            ":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _parse_time(value: str, param: str, fmt: str, iso_too: bool = False) -> str:
    """The platform's ISO form of a time given as ``fmt`` (iso | epoch | epoch_ms);
    ``iso_too``: an ISO time is taken whatever ``fmt``. 400 naming ``param`` otherwise."""
    if fmt != "iso":
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number):
            seconds = number / 1000 if fmt == "epoch_ms" else number
            try:
                return store.iso(datetime.fromtimestamp(seconds, timezone.utc))
            except (OverflowError, OSError, ValueError) as exc:
                raise HTTPException(400, f"{param} is out of range: {value!r}") from exc
        if not iso_too:
            unit = "milliseconds" if fmt == "epoch_ms" else "seconds"
            raise HTTPException(400, f"{param} is not a Unix time in {unit}: {value!r}")
    try:
        return store.iso(store.parse_iso(value))
    except ValueError as exc:
        raise HTTPException(400, f"{param} is not an ISO-8601 time: {exc}") from exc


def _profile_query(request: Request, prof: Profile, change_seq: bool) -> dict[str, str]:
    """The listing's query parameters; one the profile does not take is a 400 naming
    those it does (a client configured for another protocol learns it at once)."""
    allowed = {prof.since_param, prof.limit_param}
    allowed.add({"offset": "offset", "page_number": "page"}.get(prof.paging, "cursor"))
    if prof.auth == "api_key_query":
        allowed.add(profiles.API_KEY_PARAM)
    if change_seq:
        allowed.add("since_seq")
    q: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise HTTPException(
                400, f"unknown parameter {key!r}: this API takes {', '.join(sorted(allowed))}"
            )
        if key in q:
            raise HTTPException(400, f"parameter {key!r} given twice")
        q[key] = value
    return q


def _int_param(
    q: dict[str, str], name: str, low: int, high: int | None = None, default: int | None = None
) -> int:
    if name not in q and default is not None:
        return default
    try:
        value = int(q[name])
    except ValueError:
        raise HTTPException(422, f"{name} must be an integer, got {q[name]!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise HTTPException(422, f"{name} must be {bound}, got {value}")
    return value


def _entity_schema(
    name: str, entity: str, applied: list[str], told: list[drift.Drift], change_seq: bool = False,
    prof: Profile = profiles.SPECS["native"],
) -> dict:
    """An endpoint's entry in ``/v1/schema``: the entity's fields once the evolutions
    ``applied`` and the drifts ``told`` (those described) reshaped them, with
    ``change_seq`` the commit sequence and the parameter that lists by it, and how the
    profile ``prof`` serves deletions (a soft-delete field, or a deletions endpoint)."""
    e = ENTITIES[entity]
    fields = [
        {"name": f.name, "type": f.type, "required": f.required, "description": f.description}
        for f in drift.shape_of(name, told, applied)
    ]
    out = {
        "primary_key": drift.renamed(e.primary_key, name, told),
        "cursor": drift.renamed("updated_at", name, told),
        "deletable": e.deletable,
        "description": e.description,
        "fields": fields,
    }
    if change_seq:
        fields.append(
            {"name": CHANGE_SEQ, "type": "integer", "required": True,
             "description": "Sequence number of the commit that wrote the record: grows in"
             " commit order, whatever its updated_at."}
        )
        out.update(sequence=CHANGE_SEQ, sequence_param="since_seq")
    if e.deletable and prof.deletions == "soft_delete":
        fields.append(
            {"name": profiles.SOFT_DELETE_FIELD, "type": "boolean", "required": True,
             "description": "True on a deleted record (which then carries only its key and"
             " updated_at, the time of the deletion)."}
        )
        out["soft_delete_field"] = profiles.SOFT_DELETE_FIELD
    elif e.deletable and prof.deletions == "endpoint":
        out["deletions_path"] = profiles.deletions_path(name)
    return out


@dataclass
class Page:
    # one JSON record per line (json_object escapes newlines), each line ending in a
    # newline, in keyset order, as UTF-8 bytes straight from SQLite: a page is never
    # decoded into a string and encoded back
    body: bytes
    count: int
    last_key: tuple | None  # (updated_at, key) of the last record; by seq (seq, key, dead)
    has_more: bool


def _with_seq(record: str, seq: str = "seq") -> str:
    """The SQL expression of a feed row's record with its ``change_seq`` appended (text
    spliced before the closing brace: no JSON parsed per row)."""
    return f"substr({record}, 1, length({record}) - 1) || ',\"{CHANGE_SEQ}\":' || {seq} || '}}'"


def _page(
    replica: Replica,
    plan: Plan,
    updated_since: str | None,
    after: tuple | None,
    limit: int,
    change_seq: bool = False,
    dead: int | None = None,
) -> Page:
    """Up to ``limit`` records (rows and tombstones; ``dead`` 0 or 1: rows or tombstones
    only) in keyset order, and whether more follow.

    One range scan of the entity's feed (its rows and tombstones in ``(updated_at,
    key)`` order; see :mod:`simulator.store`) from the later of ``updated_since`` and
    the cursor, the records joined into one string by SQLite: no Python object per row,
    however deep into the listing. It asks for
    one record more than ``limit``: if that one comes, more follow, and it is cut off;
    the last key is read from the last line served.

    A stalled listing (``plan.until``) stops at that time; drifts that rewrite records
    (``plan.layers``) are applied by :func:`_drifted_page`."""
    pk = ENTITIES[plan.entity].primary_key
    lower = max(filter(None, (updated_since, after[0] if after else None)), default=None)
    where: list[str] = []
    args: list[object] = []
    if lower:
        where.append("updated_at >= ?")
        args.append(lower)
    if after:
        where.append("(updated_at, k) > (?, ?)")
        args.extend(after)
    if plan.until:
        where.append("updated_at <= ?")
        args.append(plan.until)
    if dead is not None:
        where.append("dead = ?")
        args.append(dead)
    record = _with_seq("record") + " AS record" if change_seq else "record"
    # the order's columns selected too: the feed's rows and tombstones are then merged
    # from their indexes (SQLite sorts the whole range otherwise)
    listing = (
        f"SELECT updated_at, k, dead, {record} FROM {store.feed_table(plan.entity)}"
        f"{' WHERE ' + ' AND '.join(where) if where else ''}"
        " ORDER BY updated_at, k, dead LIMIT ?"
    )
    if plan.layers:
        return _drifted_page(replica, plan.layers, listing, args, limit)
    body, count = replica.con().execute(
        f"SELECT CAST(group_concat(record, char(10)) AS BLOB), count(*) FROM ({listing})",
        (*args, limit + 1),
    ).fetchone()
    if not count:
        return Page(b"", 0, None, False)
    has_more = count > limit
    # one copy either way: cut the extra record off, or add the last line's newline
    body = body[: body.rfind(b"\n") + 1] if has_more else body + b"\n"
    last = json.loads(body[body.rfind(b"\n", 0, len(body) - 1) + 1 :])
    return Page(body, min(count, limit), (last["updated_at"], last[pk]), has_more)


def _page_by_seq(
    replica: Replica, plan: Plan, since_seq: int, after: tuple | None, limit: int,
    dead: int | None = None,
) -> Page:
    """Up to ``limit`` records committed after ``since_seq`` (and after the cursor's
    ``(seq, key, dead)``), in commit order: a range of the feed's ``seq`` index, records
    joined by SQLite as in :func:`_page`. A stalled listing stops at records updated
    at its time."""
    where = ["seq > ?"]
    args: list[object] = [since_seq]
    if after:
        where.append("(seq, k, dead) > (?, ?, ?)")
        args.extend(after)
    if plan.until:
        where.append("updated_at <= ?")
        args.append(plan.until)
    if dead is not None:
        where.append("dead = ?")
        args.append(dead)
    listing = (
        f"SELECT seq, k, dead, {_with_seq('record')} AS record"
        f" FROM {store.feed_table(plan.entity)} WHERE {' AND '.join(where)}"
        " ORDER BY seq, k, dead LIMIT ?"
    )
    # the last position comes from the feed's columns, drifts or not
    return _drifted_page(replica, plan.layers, listing, args, limit, by_seq=True)


def _window(
    replica: Replica, plan: Plan, since: str | None, since_seq: int | None, dead: int | None,
    offset: int, limit: int, change_seq: bool = False,
) -> tuple[Page, int]:
    """The listing's positions ``offset`` to ``offset + limit`` (its records still
    current there) and how many positions it has, for offset and page-number paging.

    Positions run in commit order ``(seq, key, dead)`` over the feed and the positions
    of the versions superseded since (:func:`simulator.store.superseded_table`): the
    platform only ever adds positions at the end, so a position never moves while a
    client pages, and no record is skipped or served twice. A record updated or deleted
    meanwhile leaves a hole where it was (a page may hold fewer than ``limit`` records,
    or none, before the total is reached) and comes again at the end, newer, as with
    the keyset listing. ``total`` counts the holes too, so that it agrees with the
    positions. Total and window are read in one snapshot of the replica. Each page
    costs a count and a scan up to its offset: offset paging's price, kept to indexes
    (the feed's ``seq`` index covers the filter)."""
    where: list[str] = []
    args: list[object] = []
    if since is not None:
        where.append("updated_at >= ?")
        args.append(since)
    if since_seq is not None:
        where.append("seq > ?")
        args.append(since_seq)
    if plan.until:
        where.append("updated_at <= ?")
        args.append(plan.until)
    if dead is not None:
        where.append("dead = ?")
        args.append(dead)
    cond = " AND ".join(where) or "1"
    e = plan.entity
    # the live rows, the tombstones and the superseded positions, each from its own
    # index; only the records in the window are rendered
    positions = " UNION ALL ".join(
        f"SELECT seq, k, dead, updated_at, {gone} AS gone FROM {source} WHERE {cond}"
        for source, gone in (
            (store.live_view(e), 0), (store.dead_view(e), 0), (store.superseded_table(e), 1),
        )
    )
    record = "coalesce(l.record, t.record)"
    record = _with_seq(record, "w.seq") if change_seq else record
    listing = (
        f"SELECT w.seq AS seq, w.k AS k, w.dead AS dead, {record} AS record"
        f" FROM (SELECT * FROM ({positions}) ORDER BY seq, k, dead, gone LIMIT ? OFFSET ?)"
        f" AS w LEFT JOIN {store.live_view(e)} AS l ON w.dead = 0 AND l.k = w.k"
        f" LEFT JOIN {store.dead_view(e)} AS t ON w.dead = 1 AND t.updated_at = w.updated_at"
        " AND t.k = w.k"
        " WHERE w.gone = 0 ORDER BY w.seq, w.k, w.dead LIMIT ?"
    )
    con = replica.con()
    con.execute("BEGIN")
    try:
        [(total,)] = con.execute(f"SELECT count(*) FROM ({positions})", args * 3).fetchall()
        page = _drifted_page(
            replica, plan.layers, listing, [*args, *args, *args, limit, offset], limit,
            by_seq=True,
        )
    finally:
        con.execute("ROLLBACK")  # a read: the snapshot ends
    return replace(page, has_more=offset + limit < total), total


def _drifted_page(
    replica: Replica, layers: tuple[str, ...], listing: str, args: list[object], limit: int,
    by_seq: bool = False,
) -> Page:
    """The page of ``listing`` (its rows with their feed columns), each record rewritten
    by ``layers`` in turn (none: as stored): a chain of materialized CTEs over the page
    alone, so that each layer is computed once per record, however often the next one
    reads it. The last key comes from the feed's columns, not from records a drift may
    have reshaped."""
    order = "seq" if by_seq else "updated_at"
    position = "seq, k, dead" if by_seq else "updated_at, k"
    chain = [f"l0 AS MATERIALIZED ({listing})"]
    for i, layer in enumerate(layers, 1):
        chain.append(
            f"l{i} AS MATERIALIZED (SELECT {order}, k, dead, {layer} AS record"
            f" FROM l{i - 1})"
        )
    body, count, last = replica.con().execute(
        f"WITH {', '.join(chain)}"
        " SELECT CAST(group_concat(record, char(10)) AS BLOB), count(*),"
        f" (SELECT json_array({position}) FROM l0"
        "  LIMIT 1 OFFSET (SELECT min(count(*), ?) - 1 FROM l0))"
        f" FROM l{len(layers)}",
        (*args, limit + 1, limit),
    ).fetchone()
    if not count:
        return Page(b"", 0, None, False)
    has_more = count > limit
    body = body[: body.rfind(b"\n") + 1] if has_more else body + b"\n"
    return Page(body, min(count, limit), tuple(json.loads(last)), has_more)


class EndpointMiddleware:
    """Routes a listing a drift added (``add_endpoint``) to the listing of the entity
    whose records it serves, naming the endpoint asked for in the request's scope. Other
    requests pass untouched (no file is read for them)."""

    def __init__(self, app, drifts: DriftWatcher) -> None:
        self.app, self.drifts = app, drifts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            name = scope["path"][len("/v1/"):]
            if name.isidentifier() and name not in ENTITIES and name not in drift.RESERVED:
                plan = drift.plan(self.drifts.get(), name, store.iso(store.utcnow()))
                if plan is not None:
                    path = f"/v1/{plan.entity}"
                    scope = {**scope, "path": path, "raw_path": path.encode(), ENDPOINT: name}
        await self.app(scope, receive, send)


# what a proxy in front of a broken endpoint serves instead of records
GARBLED_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1>"
    b"<p>The upstream server returned an invalid response.</p></body></html>\n"
)


class FaultMiddleware:
    """Injects the faults in force (a plain ASGI middleware: response bodies pass
    through untouched, so large pages cost nothing extra)."""

    def __init__(self, app, faults: FaultWatcher, rng: random.Random) -> None:
        self.app, self.faults, self.rng = app, faults, rng

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        f = self.faults.get()
        left = f.maintenance_left()
        if left > 0:
            response = JSONResponse(
                {"error": "maintenance", "detail": "planned maintenance in progress"},
                status_code=503,
                headers={"Retry-After": str(math.ceil(left))},
            )
            await response(scope, receive, send)
            return
        if f.slow_ms:
            await asyncio.sleep(f.slow_ms / 1000)
        if not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status, garbled = f.endpoint_fault(scope["path"])
        if status:
            await JSONResponse({"error": "injected endpoint failure"}, status)(
                scope, receive, send
            )
            return
        if garbled:
            await Response(GARBLED_PAGE, 200, media_type="text/html")(scope, receive, send)
            return
        if f.error_rate and self.rng.random() < f.error_rate:
            code = self.rng.choice((500, 502, 503, 504))
            await JSONResponse({"error": "injected server error"}, code)(scope, receive, send)
            return
        if f.rate_limit_rate and self.rng.random() < f.rate_limit_rate:
            response = JSONResponse(
                {"error": "rate limited"}, status_code=429, headers={"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        if f.drop_rate and self.rng.random() < f.drop_rate:

            async def dropping_send(message) -> None:
                if message["type"] == "http.response.body":
                    body = message.get("body", b"")
                    await send(
                        {"type": "http.response.body", "body": body[: len(body) // 2],
                         "more_body": True}
                    )
                    raise ConnectionAbortedError("injected fault: connection dropped mid-body")
                await send(message)

            await self.app(scope, receive, dropping_send)
            return
        await self.app(scope, receive, send)
