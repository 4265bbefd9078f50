"""Fault injection for the replica API, switchable at runtime.

The faults in force live in ``faults.json`` in the simulator's directory, replaced
atomically by :func:`save` (``salesflow sim fault ...`` or tests). The serving process
(and the platform, for a replication pause) re-reads the file when it changes, so faults
switch on and off without a restart.

Imports no other project module.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

FAULTS_FILE = "faults.json"


@dataclass
class Faults:
    # planned maintenance: 503 with Retry-After on every request until then (ISO time)
    maintenance_until: str | None = None
    # hard outage: the server stops listening (connection refused) until then (ISO time)
    outage_until: str | None = None
    # replication stall: production goes on, the replica stops following it until then
    # (ISO time); the API still answers 200, with what the replica had
    replication_paused_until: str | None = None
    error_rate: float = 0.0  # share of requests answered 500/502/503/504
    rate_limit_rate: float = 0.0  # share of requests answered 429 + Retry-After
    drop_rate: float = 0.0  # share of responses cut off mid-body (connection dropped)
    slow_ms: int = 0  # added latency per request
    malformed_rate: float = 0.0  # share of records delivered wrong (type, null, duplicate)
    # one endpoint broken behind a healthy API (by the name requested, e.g. "orders"):
    # the error status it answers every request with
    endpoint_status: dict[str, int] = field(default_factory=dict)
    # endpoints answering 200 with a proxy's HTML error page instead of records
    endpoint_garbled: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("error_rate", "rate_limit_rate", "drop_rate", "malformed_rate"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.slow_ms < 0:
            raise ValueError("slow_ms must not be negative")
        for endpoint, status in self.endpoint_status.items():
            if not 400 <= int(status) <= 599:
                raise ValueError(f"endpoint_status {endpoint}: an error status (400-599)"
                                 f" is needed, got {status}")

    def endpoint_fault(self, path: str) -> tuple[int, bool]:
        """The fault in force for a request to ``path`` (``/v1/<endpoint>``): the error
        status it answers (0: none), and whether it serves an HTML page instead."""
        if not (self.endpoint_status or self.endpoint_garbled):
            return 0, False
        name = path.removeprefix("/v1/").split("/", 1)[0]
        return int(self.endpoint_status.get(name, 0)), name in self.endpoint_garbled

    @staticmethod
    def _until(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

    def maintenance_left(self, now: datetime | None = None) -> float:
        until = self._until(self.maintenance_until)
        now = now or datetime.now(timezone.utc)
        return max(0.0, (until - now).total_seconds()) if until else 0.0

    def outage_left(self, now: datetime | None = None) -> float:
        until = self._until(self.outage_until)
        now = now or datetime.now(timezone.utc)
        return max(0.0, (until - now).total_seconds()) if until else 0.0

    def replication_paused_left(self, now: datetime | None = None) -> float:
        until = self._until(self.replication_paused_until)
        now = now or datetime.now(timezone.utc)
        return max(0.0, (until - now).total_seconds()) if until else 0.0

    def describe(self) -> str:
        active = {k: v for k, v in asdict(self).items() if v}
        return ", ".join(f"{k}={v}" for k, v in active.items()) or "none"


def window(seconds: float) -> str:
    """An ISO end time ``seconds`` from now, for maintenance, outage and pause windows."""
    end = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return end.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def load(directory: Path | str) -> Faults:
    path = Path(directory) / FAULTS_FILE
    if not path.exists():
        return Faults()
    data = json.loads(path.read_text())
    known = {f.name for f in fields(Faults)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown fault settings {sorted(unknown)}")
    return Faults(**data)


def save(directory: Path | str, faults: Faults) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".faults-")
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(faults), fh)
    os.replace(tmp, d / FAULTS_FILE)


class FaultWatcher:
    """The faults in force, re-read only when the control file changes."""

    def __init__(self, directory: Path | str) -> None:
        self.path = Path(directory) / FAULTS_FILE
        self._stamp: tuple[int, int] | None = None
        self.current = Faults()

    def get(self) -> Faults:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self.current = load(self.path.parent) if stamp else Faults()
            self._stamp = stamp
        return self.current
