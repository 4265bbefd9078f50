"""``salesflow check-api``: before a first load, what works with the configured replica API
and what does not, one check a line, each failure with the setting to change.

The checks read the API exactly as the loader will, through the same configuration and
the same reading (:mod:`loaders.replica.protocol`: the authenticated client, the listing's
format, records path and paginator), so a check that passes here is the request the
first load makes. In order: the base URL is reached; the credentials are accepted; per
declared endpoint, one small page read and parsed to Arrow, its primary key and cursor
(and the soft-delete flag) present, a second page that does not repeat the first (the
paginator advances), a ``since`` after the newest record answered with nothing newer
(the incremental parameter is honoured), the deletions endpoint and the count endpoint
when declared; then the schema endpoint, or what its absence means. Pages are asked
small (:data:`SAMPLE`) so that a second page exists on any listing worth loading.

Nothing is written: no warehouse, no pipeline state. The token is never printed (it is
masked in every line, on top of the command line's redaction).

May import: the replica source (protocol, errors) and the foundations (config).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import requests

from loaders import config
from loaders.replica import settings
from loaders.replica.errors import PageError, ReplicaAuthError, ReplicaError
from loaders.replica.protocol import AUTH_KEYS, Api, Listing, read_pages

OK, WARN, FAIL = "OK", "WARN", "FAIL"
SAMPLE = 2  # records asked per page: small, so that a listing has a second page
REACH_TIMEOUT = 10.0
PREFIX = "sources.replica"


@dataclass(frozen=True)
class Check:
    """One check: its outcome, what it is about, what was found and, when it did not
    pass, the setting(s) to change."""

    status: str  # OK | WARN | FAIL
    subject: str
    detail: str
    setting: str = ""

    def line(self) -> str:
        hint = f" -> check {self.setting}" if self.setting and self.status != OK else ""
        return f"{self.status:<4} {self.subject}: {self.detail}{hint}"


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    def lines(self) -> list[str]:
        return [c.line() for c in self.checks]


def setting_name(key: str, entity: str | None = None, endpoint: Mapping[str, Any] = {}) -> str:
    """The configuration key a value comes from, and its environment variable: the
    endpoint's own when it declares one, else the API's."""
    scope = f"{PREFIX}.endpoints.{entity}" if entity and key in endpoint else PREFIX
    name = f"{scope}.{key}"
    return f"{name} ({name.upper().replace('.', '__')})"


def check_api(base_url: str | None = None, token: str | None = None,
              endpoints: dict[str, Any] | None = None) -> Report:
    """Probe the configured API (``base_url``/``token``/``endpoints`` override the
    configuration); every outcome is in the report, nothing is raised for the API's
    answers."""
    report = Report()
    try:
        api = config.api_connection(base_url, token)
        declared = config.endpoints(endpoints)
    except ReplicaError as exc:
        report.checks.append(Check(FAIL, "configuration", str(exc)))
        return report
    probe = _Probe(api, report)
    if not probe.reach():
        return report
    if not probe.auth(declared):
        return report
    for entity, endpoint in declared.items():
        probe.endpoint(entity, dict(endpoint))
    probe.schema()
    return report


class _Probe:
    def __init__(self, api: Api, report: Report) -> None:
        self.api = api
        self.report = report
        self.now = datetime.now(timezone.utc)

    def add(self, status: str, subject: str, detail: str, setting: str = "") -> None:
        secret = str(self.api.token)
        if secret:
            detail = detail.replace(secret, "***")
        self.report.checks.append(Check(status, subject, detail, setting))

    def auth_settings(self) -> str:
        kind = str(self.api.auth.get("type", "bearer"))
        keys = [f"{PREFIX}.auth.type"]
        keys += [f"{PREFIX}.auth.{k}" for k in AUTH_KEYS.get(kind, ())]
        return ", ".join([*keys, f"{PREFIX}.token (SOURCES__REPLICA__TOKEN)"])

    # -- the API as a whole ---------------------------------------------------------

    def reach(self) -> bool:
        try:
            answer = requests.get(self.api.base_url, timeout=REACH_TIMEOUT)
        except requests.RequestException as exc:
            self.add(FAIL, "base_url", f"cannot reach {self.api.base_url}:"
                     f" {type(exc).__name__}", setting_name("base_url"))
            return False
        self.add(OK, "base_url", f"{self.api.base_url} answers (HTTP {answer.status_code})")
        return True

    def auth(self, declared: Mapping[str, Any]) -> bool:
        kind = str(self.api.auth.get("type", "bearer"))
        entity, endpoint = next(iter(declared.items()))
        listing = self.api.listing_for(endpoint)
        try:
            answer = requests.get(self.api.url(endpoint["path"]),
                                  params=listing.page_params(1), auth=self.api.requests_auth(),
                                  headers={"Accept": listing.accept}, timeout=REACH_TIMEOUT)
        except requests.HTTPError as exc:  # the OAuth2 token endpoint refused
            status = exc.response.status_code if exc.response is not None else "no answer"
            self.add(FAIL, "auth", f"{kind}: credentials refused ({status}) on the way to"
                     f" {endpoint['path']}", self.auth_settings())
            return False
        except requests.RequestException as exc:
            self.add(FAIL, "auth", f"{kind}: no answer to an authenticated request to"
                     f" {endpoint['path']}: {type(exc).__name__}", self.auth_settings())
            return False
        if answer.status_code in (401, 403):
            self.add(FAIL, "auth", f"{kind}: refused ({answer.status_code}) by"
                     f" {endpoint['path']}", self.auth_settings())
            return False
        if answer.status_code >= 400:
            self.add(WARN, "auth", f"{kind}: not refused, but {endpoint['path']} answered"
                     f" {answer.status_code} (see {entity} below)")
        else:
            self.add(OK, "auth", f"{kind}: accepted")
        return True

    def schema(self) -> None:
        path = self.api.schema_path
        if not path:
            self.add(OK, "schema", "none configured: column types come from the data"
                     " contract (contracts/replica_api.contract.yaml) and Arrow's inference")
            return
        answer = self._get(path)
        if answer is None:
            return
        if answer.status_code == 404:
            self.add(FAIL, "schema", f"{path} not found (404): if the API has no schema"
                     " endpoint, set it to \"\" (types then come from the data contract)",
                     setting_name("schema_path"))
        elif answer.status_code != 200:
            self.add(FAIL, "schema", f"{path} answered {answer.status_code}",
                     setting_name("schema_path"))
        else:
            try:
                entities = answer.json().get("entities", {})
            except (ValueError, AttributeError):
                entities = None
            if not isinstance(entities, dict):
                self.add(FAIL, "schema", f"{path} is not a JSON object with `entities`",
                         setting_name("schema_path"))
            else:
                self.add(OK, "schema", f"{path}: types of {len(entities)} entities from the"
                         " API")

    def _get(self, path: str, subject: str = "schema", **params: Any) -> Any:
        try:
            return requests.get(self.api.url(path), params=params or None,
                                auth=self.api.requests_auth(), timeout=REACH_TIMEOUT)
        except requests.RequestException as exc:
            self.add(FAIL, subject, f"no answer from {path}: {type(exc).__name__}")
            return None

    # -- one endpoint ---------------------------------------------------------------

    def endpoint(self, entity: str, endpoint: dict[str, Any]) -> None:
        listing = self.api.listing_for(endpoint)
        small = listing
        if listing.paginator.get("type") == "offset":  # offset paging sends its own limit
            small = dataclasses.replace(listing, paginator={**listing.paginator, "limit": SAMPLE})
        first = self._first_pages(entity, endpoint, small)
        if first is None:
            return
        self._since(entity, endpoint, listing)
        self._deletions(entity, endpoint, listing)
        self._count(entity, endpoint)

    def _params(self, listing: Listing, since: datetime) -> dict[str, Any]:
        return {listing.since_param: listing.since_value(since), **listing.page_params(SAMPLE)}

    def _read(self, entity: str, endpoint: Mapping[str, Any], listing: Listing, path: str,
              since: datetime, subject: str, pages: int) -> list[pa.Table] | None:
        """Up to ``pages`` pages parsed to Arrow; None (and a failure said) when they
        cannot be read."""
        where = "records_path" if listing.format == "json" else "format"
        read: list[pa.Table] = []
        try:
            iterator: Iterator[Any] = read_pages(self.api, listing, path,
                                                 self._params(listing, since),
                                                 page_size=SAMPLE)
            try:
                for page in iterator:
                    read.append(_arrow(page.records))
                    if len(read) == pages:
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                self.add(FAIL, subject, f"{path} refused the credentials ({status})",
                         self.auth_settings())
            elif status == 404:
                self.add(FAIL, subject, f"{path} not found (404)",
                         setting_name("path", entity, endpoint))
            else:  # most often a parameter the API does not take
                said = exc.response.text[:160] if exc.response is not None else ""
                self.add(FAIL, subject, f"{path} answered {status}: {said}",
                         ", ".join(setting_name(k, entity, endpoint) for k in
                                   ("since_param", "since_format", "limit_param", "path")))
            return None
        except ReplicaAuthError as exc:
            self.add(FAIL, subject, str(exc), self.auth_settings())
            return None
        except PageError as exc:
            status = getattr(exc, "status", None)
            if status == 404:
                self.add(FAIL, subject, f"{path} not found (404)",
                         setting_name("path", entity, endpoint))
            else:
                self.add(FAIL, subject, f"the page is not records as configured"
                         f" (format {listing.format!r}"
                         + (f", records_path {listing.records_path!r}"
                            if listing.format == "json" else "")
                         + f"): {exc}",
                         (f"{setting_name(where, entity, endpoint)}, " if where != "format"
                          else "") + setting_name("format", entity, endpoint))
            return None
        except pa.ArrowInvalid as exc:
            self.add(FAIL, subject, f"the records do not parse to Arrow: {exc}",
                     setting_name(where, entity, endpoint))
            return None
        except ReplicaError as exc:
            self.add(FAIL, subject, str(exc), setting_name("path", entity, endpoint))
            return None
        except Exception as exc:  # a paginator that cannot follow the answers, ...
            self.add(FAIL, subject, f"reading {path} failed: {type(exc).__name__}: {exc}",
                     setting_name("paginator", entity, endpoint))
            return None
        return read

    def _first_pages(self, entity: str, endpoint: dict[str, Any],
                     listing: Listing) -> pa.Table | None:
        path = endpoint["path"]
        start = datetime(2000, 1, 1, tzinfo=timezone.utc)
        pages = self._read(entity, endpoint, listing, path, start, f"{entity} page", 2)
        if pages is None:
            return None
        if not pages:
            self.add(FAIL, f"{entity} page", f"{path} answered no page",
                     setting_name("paginator", entity, endpoint))
            return None
        first = pages[0]
        self.add(OK, f"{entity} page", f"{first.num_rows} records parsed to Arrow"
                 f" ({listing.format}" + (f", records at {listing.records_path!r}"
                                          if listing.format == "json" else "") + ")")
        if first.num_rows == 0:
            self.add(WARN, f"{entity} fields", "no records since 2000-01-01: the fields"
                     " and the paging cannot be checked")
            return first
        self._fields(entity, endpoint, first)
        self._paging(entity, endpoint, listing, pages)
        return first

    def _fields(self, entity: str, endpoint: Mapping[str, Any], page: pa.Table) -> None:
        names = set(page.column_names)
        wanted = {"primary_key": endpoint.get("primary_key"),
                  "cursor": endpoint.get("cursor") or "updated_at"}
        if endpoint.get("soft_delete_field"):
            wanted["soft_delete_field"] = endpoint["soft_delete_field"]
        missing = {k: v for k, v in wanted.items() if v not in names}
        for key, name in missing.items():
            self.add(FAIL, f"{entity} fields", f"no field {name!r} in the records (they"
                     f" have {', '.join(sorted(names)[:12])})",
                     setting_name(key, entity, endpoint) if key in endpoint
                     else f"{PREFIX}.endpoints.{entity}.{key}")
        if not missing:
            present = ", ".join(f"{k} {v!r}" for k, v in wanted.items())
            self.add(OK, f"{entity} fields", f"{present} present")

    def _paging(self, entity: str, endpoint: Mapping[str, Any], listing: Listing,
                pages: list[pa.Table]) -> None:
        kind = str(listing.paginator.get("type"))
        setting = setting_name("paginator", entity, endpoint)
        first = pages[0]
        asked = SAMPLE if listing.page_params(SAMPLE) or kind == "offset" else None
        if asked is not None and first.num_rows > asked:
            self.add(WARN, f"{entity} paging", f"asked {asked} records a page, got"
                     f" {first.num_rows}: the page-size parameter is not honoured",
                     setting_name("limit_param", entity, endpoint))
        if len(pages) < 2:
            if asked is not None and first.num_rows == asked:
                self.add(FAIL, f"{entity} paging", f"a full page ({asked} records) and no"
                         f" next page: the {kind} paginator found no way on (unless the"
                         " listing holds exactly that many records)", setting)
            else:
                self.add(OK, f"{entity} paging", f"one page holds every record ({kind}):"
                         " paging not exercised")
            return
        key = str(endpoint.get("primary_key"))
        seen = set(first.column(key).to_pylist()) if key in first.column_names else set()
        second = pages[1]
        again = (set(second.column(key).to_pylist()) & seen
                 if key in second.column_names else set())
        if again:
            self.add(FAIL, f"{entity} paging", f"the second page repeats {len(again)} record(s)"
                     f" of the first: the {kind} paginator does not advance", setting)
        else:
            self.add(OK, f"{entity} paging", f"{kind}: a second page of {second.num_rows}"
                     " records, none repeated")

    def _since(self, entity: str, endpoint: Mapping[str, Any], listing: Listing) -> None:
        """A since after the newest record (tomorrow) must answer no record."""
        after = self.now + timedelta(days=1)
        subject = f"{entity} since"
        setting = (f"{setting_name('since_param', entity, endpoint)},"
                   f" {setting_name('since_format', entity, endpoint)}")
        try:
            iterator = read_pages(self.api, listing, endpoint["path"],
                                  self._params(listing, after), page_size=SAMPLE)
            try:
                page = next(iter(iterator), None)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            table = _arrow(page.records) if page is not None else pa.table({})
        except Exception as exc:
            self.add(FAIL, subject, f"{listing.since_param}={listing.since_value(after)!r}"
                     f" failed: {type(exc).__name__}: {exc}", setting)
            return
        if table.num_rows:
            self.add(FAIL, subject, f"{listing.since_param}={listing.since_value(after)!r}"
                     f" (after the newest record) still answered {table.num_rows}"
                     " record(s): the API ignores or misreads it", setting)
        else:
            self.add(OK, subject, f"{listing.since_param} ({listing.since_format}) honoured:"
                     " nothing after the newest record")

    def _deletions(self, entity: str, endpoint: Mapping[str, Any], listing: Listing) -> None:
        subject = f"{entity} deletions"
        marker = endpoint.get("deleted_marker") or "deleted_at"
        if endpoint.get("soft_delete_field"):
            self.add(OK, subject, f"soft-delete flag {endpoint['soft_delete_field']!r}"
                     f" (raw's {marker!r} set to the cursor)")
            return
        path = endpoint.get("deletions_path")
        if not path:
            if endpoint.get("deleted_marker"):
                self.add(OK, subject, f"tombstones in the listing, marked by {marker!r}")
            else:
                self.add(OK, subject, "none declared: records deleted upstream stay in raw")
            return
        start = datetime(2000, 1, 1, tzinfo=timezone.utc)
        pages = self._read(entity, {**endpoint, "path": path}, listing, path, start, subject, 1)
        if pages is None:
            return
        table = pages[0] if pages else pa.table({})
        key = endpoint.get("primary_key")
        missing = [f for f in (key, marker) if table.num_rows and f not in table.column_names]
        if missing:
            self.add(FAIL, subject, f"{path}: no field {', '.join(map(repr, missing))} in"
                     " the deletions", setting_name("deleted_marker", entity, endpoint))
        else:
            self.add(OK, subject, f"{path}: {table.num_rows} deletion(s) on the first page,"
                     f" {key!r} and {marker!r}")

    def _count(self, entity: str, endpoint: Mapping[str, Any]) -> None:
        subject = f"{entity} count"
        url = self.api.count_url(str(endpoint["path"]))
        if url is None:
            self.add(OK, subject, "no count endpoint configured: the count reconciliation"
                     " of late rows is off")
            return
        path = url.removeprefix(self.api.base_url.rstrip("/") + "/")
        before = self.now.isoformat().replace("+00:00", "Z")
        answer = self._get(path, subject, **{settings.PARAM_UPDATED_BEFORE: before})
        if answer is None:
            return
        setting = setting_name("count_path")
        if answer.status_code == 404:
            self.add(FAIL, subject, f"{path} not found (404): if the API has no count"
                     " endpoint, set it to \"\"", setting)
            return
        try:
            live = answer.json()["live"] if answer.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            live = None
        if isinstance(live, int) and not isinstance(live, bool):
            self.add(OK, subject, f"{path}: {live} live records")
        else:
            self.add(FAIL, subject, f"{path} answered {answer.status_code} without a `live`"
                     " count", setting)


def _arrow(records: bytes) -> pa.Table:
    """NDJSON records as an Arrow table (none: an empty one)."""
    if not records.strip():
        return pa.table({})
    return pa_json.read_json(io.BytesIO(records))
