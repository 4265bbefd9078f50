"""A tiny replica API on 127.0.0.1 that serves one entity's records in any of the
protocol styles the loader is configured for (body, paging, auth, since format,
deletions), and the loader configuration that reads each style."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SECRET = "fake-secret-71c2"
ACCESS_TOKEN = "issued-access-9d4e"

# style -> the [sources.replica] settings that read it
STYLES: dict[str, dict[str, Any]] = {
    "native": {},
    "cursor": {
        "format": "json", "records_path": "data",
        "paginator": {"type": "cursor", "cursor_path": "next_cursor", "cursor_param": "cursor"},
        "since_param": "modified_since",
        "auth": {"type": "api_key", "name": "X-API-Key", "location": "header"},
    },
    "json_link": {
        "format": "json", "records_path": "results",
        "paginator": {"type": "json_link", "next_url_path": "links.next"},
        "since_format": "epoch",
        "auth": {"type": "oauth2_client_credentials", "token_url": "oauth/token",
                 "client_id": "salesflow", "scopes": "read"},
    },
    "header_link": {
        "format": "json", "records_path": "",
        "paginator": {"type": "header_link"},
        "since_param": "since", "since_format": "epoch_ms",
        "auth": {"type": "http_basic", "username": "salesflow"},
    },
    "offset": {
        "format": "json", "records_path": "items",
        "paginator": {"type": "offset", "limit_param": "limit", "offset_param": "offset",
                      "total_path": "total"},
        "since_param": "updated_after", "since_format": "%Y-%m-%d %H:%M:%S",
        "auth": {"type": "api_key", "name": "api_key", "location": "query"},
    },
    "page_number": {
        "format": "json", "records_path": "result.items",
        "paginator": {"type": "page_number", "page_param": "page", "base_page": 1,
                      "total_path": "result.total_pages"},
        "limit_param": "per_page",
    },
}


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class FakeApi:
    """Records of one entity (``path``), and deletions ({key, deleted_at}) served at
    ``path + "/deletions"``; ``requests`` logs each request's path and query."""

    style: str
    records: list[dict[str, Any]] = field(default_factory=list)
    deletions: list[dict[str, Any]] = field(default_factory=list)
    path: str = "/v1/orders"
    url: str = ""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settings(self) -> dict[str, Any]:
        return STYLES[self.style]

    def since(self, query: dict[str, str]) -> datetime:
        config = self.settings
        value = query.get(config.get("since_param", "updated_since"))
        if value is None:
            return datetime.min.replace(tzinfo=timezone.utc)
        kind = config.get("since_format", "iso")
        if kind == "epoch":
            return datetime.fromtimestamp(int(value), timezone.utc)
        if kind == "epoch_ms":
            return datetime.fromtimestamp(int(value) / 1000, timezone.utc)
        if kind == "iso":
            return _parse_time(value)
        return datetime.strptime(value, kind).replace(tzinfo=timezone.utc)

    def authorized(self, headers: Any, query: dict[str, str]) -> bool:
        kind = self.settings.get("auth", {}).get("type", "bearer")
        if kind == "api_key":
            name = self.settings["auth"]["name"]
            given = headers.get(name) if self.settings["auth"]["location"] == "header" \
                else query.get(name)
            return given == SECRET
        if kind == "http_basic":
            expected = base64.b64encode(f"salesflow:{SECRET}".encode()).decode()
            return headers.get("Authorization") == f"Basic {expected}"
        token = ACCESS_TOKEN if kind == "oauth2_client_credentials" else SECRET
        return headers.get("Authorization") == f"Bearer {token}"

    def listing(self, path: str, query: dict[str, str]) -> tuple[dict[str, str], bytes]:
        """The page asked for: headers and body."""
        deletions = path.endswith("/deletions")
        rows = self.deletions if deletions else self.records
        stamp = "deleted_at" if deletions else "updated_at"
        since = self.since(query)
        with self.lock:
            chosen = sorted((r for r in rows if _parse_time(r[stamp]) >= since),
                            key=lambda r: (r[stamp], r["order_id"]))
        style, config = self.style, self.settings
        limit = int(query.get(config.get("limit_param", "limit"), 0) or 0) or len(chosen) or 1
        base = self.url + path
        headers: dict[str, str] = {}
        if style == "offset":
            start = int(query.get("offset", 0))
            page = chosen[start:start + limit]
            return headers, json.dumps({"items": page, "total": len(chosen)}).encode()
        if style == "page_number":
            number = int(query.get("page", 1))
            page = chosen[(number - 1) * limit:number * limit]
            pages = max(1, -(-len(chosen) // limit))
            return headers, json.dumps(
                {"result": {"items": page, "total_pages": pages}, "page": number}
            ).encode()
        start = int(query.get("cursor") or query.get("at") or 0)
        page = chosen[start:start + limit]
        more = start + limit < len(chosen)
        rest = "&".join(f"{k}={v}" for k, v in query.items() if k not in ("cursor", "at"))
        if style == "native":
            if more:
                headers["X-Next-Cursor"] = str(start + limit)
            body = b"".join(json.dumps(r).encode() + b"\n" for r in page)
            return {**headers, "Content-Type": "application/x-ndjson"}, body
        if style == "cursor":
            return headers, json.dumps(
                {"data": page, "next_cursor": str(start + limit) if more else None,
                 "has_more": more}).encode()
        if style == "json_link":
            following = f"{base}?{rest}&at={start + limit}" if more else None
            return headers, json.dumps({"results": page, "links": {"next": following}}).encode()
        if more:  # header_link
            headers["Link"] = f'<{base}?{rest}&at={start + limit}>; rel="next"'
        return headers, json.dumps(page).encode()


@contextmanager
def serve(api: FakeApi) -> Iterator[FakeApi]:
    """``api`` served on an ephemeral port of 127.0.0.1 until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            api.requests.append((split.path, query))
            if not api.authorized(self.headers, query):
                return self._send(401, {}, b'{"detail": "unauthorized"}')
            if split.path == "/v1/schema":
                return self._send(404, {}, b'{"detail": "no schema"}')
            if split.path not in (api.path, api.path + "/deletions"):
                return self._send(404, {}, b'{"detail": "not found"}')
            headers, body = api.listing(split.path, query)
            self._send(200, headers, body)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            api.requests.append((self.path, form))
            if (self.path == "/oauth/token" and form.get("client_secret") == SECRET
                    and form.get("client_id") == "salesflow"
                    and form.get("grant_type") == "client_credentials"):
                return self._send(200, {}, json.dumps(
                    {"access_token": ACCESS_TOKEN, "expires_in": 3600}).encode())
            self._send(401, {}, b'{"error": "invalid_client"}')

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            headers = {"Content-Type": "application/json", **headers}
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
