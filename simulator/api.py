"""The replica API: HTTP access to the platform's read replica.

Versioned under ``/v1``; the OpenAPI spec is at ``/openapi.json``.

* Bearer-token auth on every ``/v1`` route (401 without a valid token, and no data).
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

A page is a range of the replica's feed, records stored as served (see
:mod:`simulator.store`), joined by SQLite (``group_concat``): serving renders nothing and
builds no Python object per row. Drifts (:mod:`simulator.drift`) rewrite the page's
records in the same SQL, and may add, remove or stall a listing, describe themselves in
``/v1/schema`` and be announced.

May import ``store``, ``faults``, ``drift`` and ``model``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from simulator import drift, store
from simulator.drift import DriftWatcher, Plan
from simulator.faults import FaultWatcher
from simulator.model import ENTITIES, EVOLUTIONS

DEFAULT_LIMIT = 1000
MAX_LIMIT = 50_000
NDJSON = "application/x-ndjson"
# scope key: the endpoint a request named, when it is served by another entity's listing
ENDPOINT = "salesflow.endpoint"
BEARER = HTTPBearer(auto_error=False)

EntityName = Enum("EntityName", {name: name for name in ENTITIES}, type=str)  # type: ignore[misc]


CHANGE_SEQ = "change_seq"


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
) -> FastAPI:
    """``change_seq``: records carry their commit sequence and listings take
    ``since_seq``; ``counts``: the count endpoint is served (else 404)."""
    if not token:
        raise ValueError("the replica API needs a bearer token")
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

    def authorize(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> str:
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        wait = bucket.take(creds.credentials)
        if wait:
            raise HTTPException(
                429, "rate limit exceeded", headers={"Retry-After": str(math.ceil(wait))}
            )
        return creds.credentials

    auth = [Depends(authorize)]

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
        applied = replica.applied()
        now = store.iso(store.utcnow())
        told = drift.described(drifts.get(), now)
        return {
            "schema_version": schema_version(applied, now),
            "applied_evolutions": applied,
            "entities": {
                name: _entity_schema(name, entity, applied, told, change_seq)
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
        updated_before: Annotated[str, Query(description="ISO-8601 time (exclusive)")],
    ) -> dict:
        if not counts:
            raise HTTPException(404, f"no count endpoint /v1/{entity.value}/count")
        plan = drift.plan(drifts.get(), entity.value, store.iso(store.utcnow()))
        if plan is None or plan.removed:
            raise HTTPException(404, f"no listing /v1/{entity.value}")
        try:
            before = store.iso(store.parse_iso(updated_before))
        except ValueError as exc:
            raise HTTPException(400, f"updated_before is not an ISO-8601 time: {exc}") from exc
        # a covering range of the entity's (updated_at, key) index; a stalled listing
        # counts only what it lists
        sql = f"SELECT count(*) FROM {entity.value} WHERE updated_at < ?"
        args: list[object] = [before]
        if plan.until:
            sql += " AND updated_at <= ?"
            args.append(plan.until)
        [(n,)] = replica.con().execute(sql, args).fetchall()
        return {"entity": entity.value, "live": n, "updated_before": before}

    @app.get("/v1/{entity}", summary="Incremental listing of an entity", dependencies=auth)
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

    return app


def _entity_schema(
    name: str, entity: str, applied: list[str], told: list[drift.Drift], change_seq: bool = False
) -> dict:
    """An endpoint's entry in ``/v1/schema``: the entity's fields once the evolutions
    ``applied`` and the drifts ``told`` (those described) reshaped them, and with
    ``change_seq`` the commit sequence and the parameter that lists by it."""
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


def _with_seq(record: str) -> str:
    """The SQL expression of a feed row's record with its ``change_seq`` appended (text
    spliced before the closing brace: no JSON parsed per row)."""
    return f"substr({record}, 1, length({record}) - 1) || ',\"{CHANGE_SEQ}\":' || seq || '}}'"


def _page(
    replica: Replica,
    plan: Plan,
    updated_since: str | None,
    after: tuple | None,
    limit: int,
    change_seq: bool = False,
) -> Page:
    """Up to ``limit`` records (rows and tombstones) in keyset order, and whether more
    follow.

    One range scan of the entity's feed (its records as served, clustered on
    ``(updated_at, key)``; see :mod:`simulator.store`) from the later of
    ``updated_since`` and the cursor, the records joined into one string by SQLite: no
    rendering and no Python object per row, however deep into the listing. It asks for
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
    record = _with_seq("record") + " AS record" if change_seq else "record"
    columns = f"updated_at, k, dead, {record}" if plan.layers else record
    listing = (
        f"SELECT {columns} FROM {store.feed_table(plan.entity)}"
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
    replica: Replica, plan: Plan, since_seq: int, after: tuple | None, limit: int
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
    listing = (
        f"SELECT seq, k, dead, {_with_seq('record')} AS record"
        f" FROM {store.feed_table(plan.entity)} WHERE {' AND '.join(where)}"
        " ORDER BY seq, k, dead LIMIT ?"
    )
    # the last position comes from the feed's columns, drifts or not
    return _drifted_page(replica, plan.layers, listing, args, limit, by_seq=True)


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
