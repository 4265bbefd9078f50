"""What can go wrong with the replica API, said for the person running the load.

May import: nothing.
"""

from __future__ import annotations


class ReplicaError(RuntimeError):
    """A problem with the replica API, explained for the person running the load."""


class ReplicaAuthError(ReplicaError):
    pass


class ReplicaUnavailable(ReplicaError):
    """The API could not serve: ``kind`` is ``maintenance`` (503 with Retry-After),
    ``rate_limited`` (429) or ``unavailable`` (refused, timed out, other 5xx), as it
    stood after the retries."""

    def __init__(
        self, message: str, kind: str = "unavailable", retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class PageError(ReplicaError):
    """A page of a listing that is not records (another content type, records without
    their key or cursor): ``status`` is the HTTP status it came with (None: not known),
    ``answered`` a short description of what came instead."""

    def __init__(self, message: str, status: int | None = None, answered: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.answered = answered
