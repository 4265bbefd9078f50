"""One place for each setting salesflow reads, and how it is resolved.

Settings come from dlt's configuration (``.dlt/config.toml``, ``.dlt/secrets.toml`` and
environment variables such as ``SOURCES__REPLICA__TOKEN``) or from salesflow's own
environment variables (``SALESFLOW_*``). The warehouse's settings are resolved in
:mod:`loaders.warehouse`, the dbt project's in :mod:`loaders.dbt_project`.

May import: dlt, and the replica source's declarations and errors.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dlt

from loaders.replica import mapping
from loaders.replica import settings as replica_settings
from loaders.replica.errors import ReplicaError
from loaders.replica.mapping import FieldMap
from loaders.replica.protocol import Api, api_from_settings

# the project checkout: dbt project, profiles.yml, .dlt/, contracts/, announcements/
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# announced changes declared in the repository, and how long after an announced change's
# effective time it may take to show in the changelog before it is reported as not seen
ANNOUNCEMENTS_DIR = "announcements"
ANNOUNCEMENT_GRACE_MINUTES = 30.0


def pipelines_dir() -> Path:
    """dlt's working directory, and beside it salesflow's state (health, notices, lock)."""
    return Path(os.environ.get("SALESFLOW_PIPELINES_DIR", "data/dlt"))


# how the replica API is spoken: any of these under [sources.replica] (see
# loaders.replica.protocol; absent: today's protocol)
PROTOCOL_KEYS = (
    "format", "records_path", "paginator", "since_param", "since_format", "limit_param",
    "schema_path", "announcements_path", "count_path",
)
AUTH_KEYS = ("type", "name", "location", "username", "token_url", "client_id", "scopes")

def api_base_url(given: str | None = None) -> str | None:
    """The replica API's base URL: given, else ``sources.replica.base_url``."""
    return given or dlt.config.get("sources.replica.base_url")


def api_token(given: str | None = None) -> str | None:
    """The replica API's token: given (then remembered as a secret), else
    ``sources.replica.token``."""
    if given:
        remember_secret(given)
    return given or dlt.secrets.get("sources.replica.token")


def api_connection(base_url: str | None = None, token: str | None = None) -> Api:
    """The API to load from, spoken as ``[sources.replica]`` configures it; a missing or
    bad setting is a :class:`ReplicaError` saying which."""
    url, secret = api_base_url(base_url), api_token(token)
    if not url:
        raise ReplicaError("no replica API configured: set sources.replica.base_url")
    if not secret:
        raise ReplicaError(
            "no replica API token: set SOURCES__REPLICA__TOKEN or sources.replica.token in"
            " .dlt/secrets.toml"
        )
    return api_from_settings(str(url), str(secret), protocol_settings())


def protocol_settings() -> dict[str, Any]:
    """The protocol's keys of ``[sources.replica]`` that are set (each read on its own,
    so an environment variable such as ``SOURCES__REPLICA__AUTH__TYPE`` counts), with
    the endpoints declared."""
    found: dict[str, Any] = {}
    for key in PROTOCOL_KEYS:
        value: Any = dlt.config.get(f"sources.replica.{key}")
        if value is not None:
            found[key] = value
    whole: Any = dlt.config.get("sources.replica.auth")  # a table, or JSON in the env
    if isinstance(whole, str):
        try:
            whole = json.loads(whole)
        except ValueError as exc:
            raise ReplicaError(f"sources.replica.auth is not JSON: {exc}") from None
    auth: dict[str, Any] = dict(whole) if isinstance(whole, Mapping) else {}
    for key in AUTH_KEYS:
        value = dlt.config.get(f"sources.replica.auth.{key}")
        if value is not None:
            auth[key] = value
    if auth:
        found["auth"] = auth
    found["endpoints"] = endpoints()
    return found


def endpoints(given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The endpoints declared: given, else configured (a table, or JSON in
    ``SOURCES__REPLICA__ENDPOINTS``), else the defaults; each configured endpoint's
    protocol keys may also come one by one
    (``SOURCES__REPLICA__ENDPOINTS__ORDERS__SOFT_DELETE_FIELD``)."""
    if given:
        return dict(given)
    configured: Any = dlt.config.get("sources.replica.endpoints")
    if isinstance(configured, str):
        try:
            configured = json.loads(configured)
        except ValueError as exc:
            raise ReplicaError(f"sources.replica.endpoints is not JSON: {exc}") from None
    declared = {name: dict(ep) for name, ep in
                (configured or replica_settings.ENDPOINTS).items()}
    for name, ep in declared.items():
        for key in ENDPOINT_KEYS:
            if key not in ep:
                value: Any = dlt.config.get(f"sources.replica.endpoints.{name}.{key}")
                if value is not None:
                    ep[key] = value
    return declared


# what an endpoint may also say one key at a time (how it is listed, how deletions come)
ENDPOINT_KEYS = (
    "format", "records_path", "paginator", "since_param", "since_format", "limit_param",
    "deleted_marker", "soft_delete_field", "deletions_path",
)


def schema_contracts(given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each entity's schema contract: the defaults, then configuration, then ``given``."""
    configured: dict[str, Any] = dlt.config.get("sources.replica.schema_contracts") or {}
    return {**replica_settings.SCHEMA_CONTRACTS, **dict(configured), **(given or {})}


def field_mapping(given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The field mappings configured under ``[sources.replica.field_mapping.<entity>]``
    (see :mod:`loaders.replica.mapping`): given, else configured."""
    if given is not None:
        return dict(given)
    configured: Any = dlt.config.get("sources.replica.field_mapping") or {}
    if isinstance(configured, str):  # an environment variable holds it as JSON
        try:
            configured = json.loads(configured)
        except ValueError as exc:
            raise ReplicaError(f"sources.replica.field_mapping is not JSON: {exc}") from None
    if not isinstance(configured, dict):
        raise ReplicaError("sources.replica.field_mapping must map entities to tables")
    return {entity: dict(spec) for entity, spec in configured.items()}


def field_maps(given: dict[str, Any] | None = None) -> dict[str, tuple[FieldMap, ...]]:
    """The field mappings, parsed (a bad entry is a :class:`ReplicaError` naming it)."""
    return {e: mapping.parse(e, spec) for e, spec in field_mapping(given).items()}


@dataclass(frozen=True)
class QuarantineLimits:
    """When an entity's records held in quarantine become a data alarm: more than
    ``share_max`` of its new records held, over at least ``min_records`` of them."""

    share_max: float = 0.05
    min_records: int = 10


def quarantine_limits() -> QuarantineLimits:
    """``[monitoring] quarantine_share_max`` and ``quarantine_min_records`` (also
    ``MONITORING__QUARANTINE_SHARE_MAX``, ``MONITORING__QUARANTINE_MIN_RECORDS``); a value
    that is not one is a :class:`ReplicaError` saying which setting and what it takes."""
    default = QuarantineLimits()
    share = _setting("monitoring.quarantine_share_max", float, default.share_max)
    least = _setting("monitoring.quarantine_min_records", int, default.min_records)
    if not 0 <= share < 1:
        raise ReplicaError(
            f"[monitoring] quarantine_share_max must be a share of records from 0 up to"
            f" (not including) 1, e.g. 0.05 for 5%; got {share}: fix .dlt/config.toml or"
            " MONITORING__QUARANTINE_SHARE_MAX"
        )
    if least < 1:
        raise ReplicaError(
            f"[monitoring] quarantine_min_records must be a count of at least 1; got {least}:"
            " fix .dlt/config.toml or MONITORING__QUARANTINE_MIN_RECORDS"
        )
    return QuarantineLimits(share, least)


def _setting(key: str, kind: type[float] | type[int], default: float) -> Any:
    """A number from dlt's configuration, or ``default`` when it is not set."""
    value: Any = dlt.config.get(key)
    if value is None:
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        section, _, name = key.partition(".")
        raise ReplicaError(
            f"[{section}] {name} must be a number ({kind.__name__}); got {value!r}: fix"
            f" .dlt/config.toml or {key.upper().replace('.', '__')}"
        ) from None


def pii_key() -> str | None:
    """The key personal data is hashed with (a secret): ``SALESFLOW_PII_KEY``, else
    ``salesflow.pii_key`` (``[salesflow] pii_key`` in ``.dlt/secrets.toml``), else None
    (:mod:`loaders.pii` then generates one for a DuckDB warehouse)."""
    given = os.environ.get("SALESFLOW_PII_KEY") or dlt.secrets.get("salesflow.pii_key")
    return str(given) if given else None


# Every setting whose value is a secret, by its dlt key (``.dlt/secrets.toml``, or the
# environment: ``NOTIFY__SMTP_PASSWORD``, ...): a new secret is covered by the redaction
# (:mod:`loaders.monitoring.redact`) once it is declared here. A connection string
# (``destination.postgres.credentials = "postgresql://..."``) counts by its password.
SECRET_SETTINGS = (
    "sources.replica.token",
    "notify.slack_webhook_url",
    "notify.webhook_url",
    "notify.webhook_secret",
    "notify.smtp_password",
    "destination.postgres.credentials",
    "destination.postgres.credentials.password",
    "salesflow.pii_key",
)
# ... and secrets read from salesflow's own environment variables, or the tools' (libpq's
# administrator password; dbt's convention for secret environment variables)
SECRET_ENV = ("SALESFLOW_PII_KEY", "PGPASSWORD")
SECRET_ENV_PREFIXES = ("DBT_ENV_SECRET_",)

_remembered: list[str] = []  # secrets given at run time (a --token), not configured


def remember_secret(value: str) -> None:
    """Treat ``value`` as a secret from now on, like a configured one."""
    if value and value not in _remembered:
        _remembered.append(value)


def remembered_secrets() -> tuple[str, ...]:
    return tuple(_remembered)


def secret_values() -> list[str]:
    """Every secret value configured (:data:`SECRET_SETTINGS`, :data:`SECRET_ENV`) or
    remembered, as text: what must never leave the process."""
    found: list[Any] = [dlt.secrets.get(key) for key in SECRET_SETTINGS]
    found += [os.environ.get(name) for name in SECRET_ENV]
    found += [v for k, v in os.environ.items() if k.startswith(SECRET_ENV_PREFIXES)]
    values: list[str] = []
    for value in [*found, *_remembered]:
        if isinstance(value, Mapping):  # a section: its password
            value = value.get("password")
        if not value or not isinstance(value, str | int):
            continue
        text = str(value)
        if "://" in text and "@" in text:  # a connection string: its password too
            password = urlsplit(text).password
            if password:
                values.append(unquote(password))
        values.append(text)
    return list(dict.fromkeys(values))


def notify_setting(name: str, secret: bool = False) -> Any:
    """A setting of ``[notify]``: secrets only from secrets; others from either."""
    provider = dlt.secrets if secret else dlt.config
    value: Any = provider.get(f"notify.{name}")
    if value is None and not secret:
        value = dlt.secrets.get(f"notify.{name}")
    return value


def announcements_dir() -> Path:
    """The folder of announcements declared in the repository: ``SALESFLOW_ANNOUNCEMENTS_DIR``,
    else ``announcements.dir`` (``[announcements]`` in ``.dlt/config.toml``, or
    ``ANNOUNCEMENTS__DIR``), else ``announcements/``. A relative path is the project's."""
    given = os.environ.get("SALESFLOW_ANNOUNCEMENTS_DIR") or dlt.config.get("announcements.dir")
    path = Path(str(given or ANNOUNCEMENTS_DIR)).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def announcement_grace() -> timedelta:
    """How long after an announced change's effective time it may take to be logged
    before it is reported as not seen: ``SALESFLOW_ANNOUNCEMENTS_GRACE_MINUTES``, else
    ``announcements.grace_minutes``, else 30 minutes."""
    given = os.environ.get("SALESFLOW_ANNOUNCEMENTS_GRACE_MINUTES")
    if given is None:
        given = dlt.config.get("announcements.grace_minutes")
    if given is None or given == "":
        return timedelta(minutes=ANNOUNCEMENT_GRACE_MINUTES)
    try:
        minutes = float(given)
    except (TypeError, ValueError):
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes >= 0):
        raise ValueError(
            f"announcements.grace_minutes must be a number of minutes, 0 or more, not"
            f" {given!r}: fix SALESFLOW_ANNOUNCEMENTS_GRACE_MINUTES or [announcements] in"
            " .dlt/config.toml"
        )
    return timedelta(minutes=minutes)


def _number(section: str, name: str, default: float, minimum: float) -> float:
    """A number from the configuration; a value that is not one, or below ``minimum``, is
    a ValueError naming the setting."""
    value: Any = dlt.config.get(f"{section}.{name}")
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{section}.{name} must be a number, got {value!r}: fix .dlt/config.toml or"
            f" {section.upper().replace('.', '__')}__{name.upper()}"
        ) from None
    if number < minimum:
        raise ValueError(
            f"{section}.{name} must be at least {minimum:g}, got {number:g}: fix"
            f" .dlt/config.toml or {section.upper().replace('.', '__')}__{name.upper()}"
        )
    return number


@dataclass(frozen=True)
class StallSettings:
    """When a silence of the data is a stall (``[monitoring]``; see
    :mod:`loaders.monitoring.rhythm`)."""

    # an entity's silence alarms only past this long, however fast its rhythm
    min_seconds: float = 180.0
    # ... and past this many of its own typical gaps between arrivals
    gap_factor: float = 5.0
    # arrivals (cycles with new rows) in the history before an entity has a rhythm
    min_arrivals: int = 5
    # how far back the rhythm is learnt (an open stall alarm keeps the one it found)
    history_hours: float = 24.0
    # replication lag reported by the API beyond which the platform is stalled
    lag_max_seconds: float = 120.0


def stall_settings() -> StallSettings:
    """The stall thresholds: ``[monitoring]`` settings over :class:`StallSettings`'s
    defaults. A bad value is a ValueError naming the setting."""
    d = StallSettings()
    return StallSettings(
        min_seconds=_number("monitoring", "stall_min_seconds", d.min_seconds, 0),
        gap_factor=_number("monitoring", "stall_gap_factor", d.gap_factor, 1),
        min_arrivals=int(_number("monitoring", "stall_min_arrivals", d.min_arrivals, 2)),
        history_hours=_number("monitoring", "stall_history_hours", d.history_hours, 0.01),
        lag_max_seconds=_number("monitoring", "replication_lag_max_seconds",
                                d.lag_max_seconds, 0),
    )


def lookback_seconds(given: float | None = None) -> float:
    """How far before its last cursor each request starts: given, else
    ``sources.replica.lookback_seconds``, else the source's default (30 s)."""
    if given is not None:
        return float(given)
    return _number("sources.replica", "lookback_seconds", 30.0, 0)


@dataclass(frozen=True)
class LateRowSettings:
    """The defences against rows committed later than the lookback, for listings read by
    time (see :mod:`loaders.runners.late_rows`); an interval of 0 turns one off."""

    reread_interval: float = 600.0  # a wide re-read this often ...
    reread_window: float = 3600.0  # ... from this far before the cursor ...
    reread_pages: int = 2  # ... at most this many pages a watch cycle (0: in one cycle)
    reconcile_interval: float = 600.0  # counts reconciled this often


def late_row_settings() -> LateRowSettings:
    """``[sources.replica]`` ``reread_interval_seconds``, ``reread_window_seconds``,
    ``reread_pages_per_cycle`` and ``reconcile_interval_seconds`` over
    :class:`LateRowSettings`'s defaults. A bad value is a ValueError naming the setting."""
    d = LateRowSettings()
    pages = _number("sources.replica", "reread_pages_per_cycle", d.reread_pages, 0)
    if pages != int(pages):
        raise ValueError(f"sources.replica.reread_pages_per_cycle must be a whole number,"
                         f" got {pages:g}")
    return LateRowSettings(
        reread_interval=_number("sources.replica", "reread_interval_seconds",
                                d.reread_interval, 0),
        reread_window=_number("sources.replica", "reread_window_seconds", d.reread_window, 0),
        reread_pages=int(pages),
        reconcile_interval=_number("sources.replica", "reconcile_interval_seconds",
                                   d.reconcile_interval, 0),
    )


@dataclass(frozen=True)
class LagSource:
    """Where the API reports its replication lag: a path (relative to ``base_url``) and
    the field of its JSON answer; either empty: the API reports none."""

    path: str = "health"
    lag_field: str = "replication_lag_seconds"

    @property
    def enabled(self) -> bool:
        return bool(self.path and self.lag_field)


def lag_source() -> LagSource:
    """``sources.replica.health_path`` and ``replication_lag_field`` (empty: off)."""
    d = LagSource()
    path: Any = dlt.config.get("sources.replica.health_path")
    name: Any = dlt.config.get("sources.replica.replication_lag_field")
    return LagSource(
        path=d.path if path is None else str(path).strip("/"),
        lag_field=d.lag_field if name is None else str(name),
    )
