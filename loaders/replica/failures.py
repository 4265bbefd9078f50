"""Endpoints whose listing failed in one load, while the others went on.

One endpoint of the API can fail on its own: removed (404), broken behind a healthy API
(a 5xx that outlasts the retries), or serving a page that is not records (an HTML error
page from a proxy, records without their key). Such a failure is **isolated**: the
entity's resource records it here and stops, and the other entities load as usual.
What says the API itself is in trouble is never isolated, and fails the load as a
whole: a refused token (401/403), a rate limit (429, the token's, not the endpoint's),
planned maintenance (503 with Retry-After), the API unreachable (refused, timed out).
When every entity of a load fails, the last one to fail raises the first failure, so
the load fails, and commits nothing, just as it did before isolation.

May import: this package's ``errors``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from loaders.replica.errors import (
    PageError,
    ReplicaAuthError,
    ReplicaError,
    ReplicaUnavailable,
)

# an excerpt of what an endpoint answered, for notices: enough to recognise the page
EXCERPT = 160
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"'<>,;]+")


def mask(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with ``secrets`` and anything sent as a bearer token masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", text)


def excerpt(text: str, secrets: tuple[str, ...] = ()) -> str:
    """The start of an answer on one line, secrets masked."""
    text = " ".join(mask(text, secrets).split())
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def isolable(error: ReplicaError) -> bool:
    """Whether ``error`` is one endpoint's failure rather than the API's (see the
    module's docstring)."""
    if isinstance(error, ReplicaAuthError):
        return False
    if isinstance(error, ReplicaUnavailable):
        return error.kind == "unavailable"
    return True


@dataclass(frozen=True)
class EndpointFailure:
    """One entity's listing that failed."""

    entity: str
    path: str  # the endpoint, relative to the API's base URL
    status: int | None  # the HTTP status it answered (None: not an HTTP error)
    answered: str  # what it answered: a short excerpt, secrets masked
    message: str  # the error, as the load would have failed with it
    error: ReplicaError = field(repr=False, compare=False)


def page_failure(
    entity: str, path: str, error: PageError, secrets: tuple[str, ...] = ()
) -> EndpointFailure:
    """The failure of a listing that served a page that is not records."""
    return EndpointFailure(entity, path, error.status, excerpt(error.answered, secrets),
                           mask(str(error), secrets), error)


def http_failure(
    entity: str, path: str, status: int, body: str, error: ReplicaError,
    secrets: tuple[str, ...] = (),
) -> EndpointFailure:
    """The failure of a listing answered with an error status after the retries."""
    return EndpointFailure(entity, path, status, excerpt(body, secrets),
                           mask(str(error), secrets), error)


class EndpointFailures:
    """The endpoints that failed in one load, in the order they failed. Resources are
    extracted in parallel threads, so adding is locked."""

    def __init__(self) -> None:
        self.failed: dict[str, EndpointFailure] = {}
        self.expected = 0  # the entities the load lists
        self._lock = threading.Lock()

    def expect(self, entities: int) -> None:
        with self._lock:
            self.expected = entities

    def add(self, failure: EndpointFailure) -> EndpointFailure | None:
        """Record ``failure``; returns the first failure of the load when every entity
        it lists has now failed (the load must then fail with it), else None."""
        with self._lock:
            self.failed.setdefault(failure.entity, failure)
            if self.expected and len(self.failed) >= self.expected:
                return next(iter(self.failed.values()))
            return None

    def __bool__(self) -> bool:
        return bool(self.failed)
