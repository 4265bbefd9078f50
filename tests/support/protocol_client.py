"""A small client of the simulator's protocol profiles, in plain ``requests``: auth,
paging and body shape as each profile serves them (``simulator.profiles``), to check what
a profile serves without the loader."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import requests

from simulator import profiles
from simulator.profiles import Profile


def since_value(p: Profile, when: datetime) -> str | int:
    if p.since_format == "epoch":
        return int(when.timestamp())
    if p.since_format == "epoch_ms":
        return int(when.timestamp() * 1000)
    return when.isoformat().replace("+00:00", "Z")


class ProfileClient:
    """Reads a simulator serving ``profile`` at ``url`` with ``token``."""

    def __init__(self, url: str, profile: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token
        self.profile = profiles.get(profile)
        self.session = requests.Session()
        self._access_token: str | None = None

    def access_token(self) -> str:
        """A fresh OAuth2 access token (client credentials in the form)."""
        r = self.session.post(
            f"{self.url}/{profiles.TOKEN_PATH}",
            data={"grant_type": "client_credentials", "client_id": profiles.OAUTH_CLIENT_ID,
                  "client_secret": self.token},
            timeout=10,
        )
        r.raise_for_status()
        return r.json()["access_token"]

    def credentials(self) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, query parameters) presenting the token the profile's way."""
        auth = self.profile.auth
        if auth == "api_key_header":
            return {profiles.API_KEY_HEADER: self.token}, {}
        if auth == "api_key_query":
            return {}, {profiles.API_KEY_PARAM: self.token}
        if auth == "http_basic":
            pair = f"{profiles.BASIC_USER}:{self.token}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}, {}
        if auth == "oauth2":
            self._access_token = self._access_token or self.access_token()
            return {"Authorization": f"Bearer {self._access_token}"}, {}
        return {"Authorization": f"Bearer {self.token}"}, {}

    def get(self, url: str, params: dict[str, Any] | None = None) -> requests.Response:
        headers, query = self.credentials()
        if not self.profile.json:
            headers["Accept"] = "application/x-ndjson"
        return self.session.get(url, headers=headers, params={**query, **(params or {})},
                                timeout=30)

    def records(self, r: requests.Response) -> list[dict]:
        assert r.status_code == 200, r.text
        path = self.profile.records_path
        if path is None:
            return [json.loads(line) for line in r.text.splitlines()]
        body = r.json()
        return body if path == "" else body[path]

    def pages(
        self, path: str, since: datetime | None = None, page_size: int = 50
    ) -> Iterator[list[dict]]:
        """The pages of a listing (``path`` like ``v1/orders``), to its end."""
        p = self.profile
        params: dict[str, Any] = {p.limit_param: page_size}
        if since is not None:
            params[p.since_param] = since_value(p, since)
        url: str | None = f"{self.url}/{path}"
        position = 0 if p.paging == "offset" else 1
        while url is not None:
            if p.paging == "offset":
                params["offset"] = position
            elif p.paging == "page_number":
                params["page"] = position
            r = self.get(url, params)
            yield self.records(r)
            if p.paging == "header_cursor":
                cursor = r.headers.get("X-Next-Cursor")
                params["cursor"] = cursor
                url = url if cursor else None
            elif p.paging == "cursor":
                cursor = r.json()["next_cursor"]
                params["cursor"] = cursor
                url = url if cursor else None
            elif p.paging in ("json_link", "header_link"):
                # the next link carries every parameter
                url = (r.json()["links"]["next"] if p.paging == "json_link"
                       else r.links.get("next", {}).get("url"))
                params = {}
            elif p.paging == "offset":
                position += page_size
                url = url if position < r.json()["total"] else None
            else:
                position += 1
                url = url if position <= r.json()["total_pages"] else None

    def read(self, path: str, since: datetime | None = None, page_size: int = 50) -> list[dict]:
        return [record for page in self.pages(path, since, page_size) for record in page]
