"""Talking to the replica API beyond its listings: a prefetching iterator, and the
API's schema, announcements, health and count endpoints, each read through the
configured :class:`~loaders.replica.protocol.Api` (its paths and auth).

May import: dlt, requests, and this package's ``settings``, ``errors`` and ``protocol``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypedDict, TypeVar

import requests
from dlt.sources.helpers.rest_client import RESTClient
from requests import Response
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import RetryError, Timeout

from loaders.replica import settings
from loaders.replica.errors import ReplicaAuthError, ReplicaError, ReplicaUnavailable
from loaders.replica.protocol import Api

log = logging.getLogger(__name__)
T = TypeVar("T")


class FieldChange(TypedDict, total=False):
    """One field change an announcement lists (``change``: added, removed, combined,
    renamed, type_changed or new_value; ``into``: the field a combined one becomes;
    ``note``: for new_value, the new value)."""

    entity: str
    field: str
    change: str
    into: str
    new_type: str
    old_type: str
    note: str


class Announcement(TypedDict, total=False):
    """A schema change the platform announces: on its announcements endpoint (``source``
    "api"), or by e-mail or in a meeting and declared in the repository ("repository")."""

    change_id: str
    title: str
    description: str
    breaking: bool
    announced_at: str
    effective_at: str
    applied_at: str | None
    status: str  # upcoming | applied
    changes: list[FieldChange]
    source: str  # api | repository

_DONE = object()


def prefetch(pages: Iterable[Any], depth: int = 2) -> Generator[Any]:
    """Iterate ``pages`` in a background thread, ``depth`` items ahead, so the next one is
    being made (a request in flight, a page parsed: both release the GIL) while the
    consumer works on the current one. Errors surface in the consumer; closing the
    consumer stops the producer, which closes ``pages`` (a prefetch fed by another
    stops that one's producer in turn)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for page in pages:
                if not put((page, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed over to the consumer, never swallowed
            put((_DONE, exc))
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="salesflow-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            page, exc = q.get()
            if page is _DONE:
                if exc is not None:
                    raise exc
                return
            yield page
    finally:
        stop.set()
        worker.join(timeout=5)


def api_schema(client: RESTClient, path: str | None) -> dict[str, dict[str, Any]]:
    """Fields and types per entity from the API's schema endpoint ({} without one)."""
    if not path:
        return {}
    response = client.get(path)
    if response.status_code == 404:
        log.warning("the API has no schema endpoint at %s: column types are inferred", path)
        return {}
    raise_for_api_status(response, client.base_url)
    return response.json().get("entities", {})


def raise_for_api_status(response: Response, base_url: str | None) -> None:
    error = api_error(response, base_url)
    if error is not None:
        raise error


def api_error(response: Response, base_url: str | None) -> ReplicaError | None:
    """What an answer's error status means for the person running the load (None:
    not an error)."""
    status = response.status_code
    if status in (401, 403):
        return ReplicaAuthError(
            f"the replica API at {base_url} refused the token ({status}):"
            " check SOURCES__REPLICA__TOKEN or .dlt/secrets.toml"
        )
    if status < 400:
        return None
    what = (
        f"the replica API at {base_url} answered {status} for"
        f" {response.request.path_url.split('?')[0]}: {response.text[:200]}"
    )
    retry_after = response.headers.get("Retry-After")
    if status == 429:
        return ReplicaUnavailable(what, "rate_limited", retry_after)
    if status == 503 and retry_after:
        return ReplicaUnavailable(what, "maintenance", retry_after)
    if status >= 500:
        return ReplicaUnavailable(what, "unavailable", retry_after)
    return ReplicaError(what + " (check the endpoint declarations and base_url)")


def _reach(api: Api, what: Callable[[], T]) -> T:
    try:
        return what()
    except (RequestsConnectionError, Timeout, RetryError) as exc:
        raise ReplicaUnavailable(
            f"cannot reach the replica API at {api.base_url}: {type(exc).__name__}: {exc}"
        ) from None


def fetch_api_schema(api: Api) -> dict[str, dict[str, Any]]:
    """The API's fields and types per entity ({} if it has no schema endpoint: its
    ``schema_path`` is "", or it answers 404 there)."""
    if not api.schema_path:
        return {}
    client = api.client()
    return _reach(api, lambda: api_schema(client, api.schema_path))


def fetch_announcements(api: Api) -> list[Announcement]:
    """The API's announced schema changes, upcoming and applied ([] without any)."""
    if not api.announcements_path:
        return []
    client = api.client()
    response = _reach(api, lambda: client.get(api.announcements_path))
    if response.status_code == 404:
        return []
    raise_for_api_status(response, client.base_url)
    announced: list[Announcement] = response.json().get("announcements", [])
    return [{**a, "source": "api"} for a in announced]


# one quick read, no retries: the lag is a hint, never a reason to hold up a cycle
LAG_TIMEOUT = 5.0


def fetch_replication_lag(
    api: Api, path: str, lag_field: str, timeout: float = LAG_TIMEOUT
) -> float | None:
    """The replication lag in seconds the API reports in field ``lag_field`` of its JSON
    answer at ``path`` (relative to ``base_url``); None when the field is null. One GET
    without retries; anything else is a :class:`ReplicaError` saying what to change."""
    url = api.url(path.lstrip("/"))
    off = (
        "set sources.replica.health_path and replication_lag_field to where the API"
        " reports its lag, or health_path = \"\" to read none"
    )
    try:
        response = requests.get(url, auth=api.requests_auth(), timeout=timeout)
    except requests.RequestException as exc:
        raise ReplicaError(f"cannot read the replication lag at {url}:"
                           f" {type(exc).__name__}") from None
    if response.status_code != 200:
        raise ReplicaError(f"{url} answered {response.status_code} for the replication"
                           f" lag: {off}")
    try:
        body = response.json()
    except ValueError:
        raise ReplicaError(f"{url} did not answer JSON for the replication lag: {off}") from None
    if not isinstance(body, dict) or lag_field not in body:
        raise ReplicaError(f"{url} has no field {lag_field!r} for the replication lag: {off}")
    value = body[lag_field]
    if value is None:
        return None
    try:
        lag = float(value)
    except (TypeError, ValueError):
        raise ReplicaError(f"{url} reported {lag_field} = {value!r}, not a number of"
                           f" seconds: {off}") from None
    if not math.isfinite(lag):
        raise ReplicaError(f"{url} reported {lag_field} = {value!r}, not a number of"
                           f" seconds: {off}")
    return lag


def fetch_live_count(
    api: Api, path: str, updated_before: Any, timeout: float = LAG_TIMEOUT
) -> int | None:
    """How many live records (tombstones not counted) the listing at ``path`` holds with
    an updated_at before ``updated_before`` (a datetime), from its count endpoint (the
    API's ``count_path``, ``?updated_before=`` in ISO); None when the API has none ("",
    or 404). One GET without retries; anything else is a :class:`ReplicaError` saying
    what went wrong."""
    url = api.count_url(path)
    if url is None:
        return None
    before = updated_before.isoformat().replace("+00:00", "Z")
    try:
        response = requests.get(
            url, params={settings.PARAM_UPDATED_BEFORE: before},
            auth=api.requests_auth(), timeout=timeout,
        )
    except requests.RequestException as exc:
        raise ReplicaError(f"cannot read the record count at {url}: {type(exc).__name__}") from None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise ReplicaError(f"{url} answered {response.status_code} for the record count")
    try:
        live = response.json()["live"]
    except (ValueError, KeyError, TypeError):
        raise ReplicaError(f"{url} did not answer a JSON object with a `live` count") from None
    if not isinstance(live, int) or isinstance(live, bool) or live < 0:
        raise ReplicaError(f"{url} answered a `live` count that is not one: {live!r}")
    return live
