"""One place for each setting salesflow reads, and how it is resolved.

Settings come from dlt's configuration (``.dlt/config.toml``, ``.dlt/secrets.toml`` and
environment variables such as ``SOURCES__REPLICA__TOKEN``) or from salesflow's own
environment variables (``SALESFLOW_*``). The warehouse's settings are resolved in
:mod:`loaders.warehouse`, the dbt project's in :mod:`loaders.dbt_project`.

May import: dlt, and the replica source's declarations and errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt

from loaders.replica import settings as replica_settings
from loaders.replica.errors import ReplicaError

# the project checkout: dbt project, profiles.yml, .dlt/, contracts/
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def pipelines_dir() -> Path:
    """dlt's working directory, and beside it salesflow's state (health, notices, lock)."""
    return Path(os.environ.get("SALESFLOW_PIPELINES_DIR", "data/dlt"))


@dataclass(frozen=True)
class ApiConnection:
    """Where the replica API is and the token it takes (never printed)."""

    base_url: str
    token: str = field(repr=False)


def api_base_url(given: str | None = None) -> str | None:
    """The replica API's base URL: given, else ``sources.replica.base_url``."""
    return given or dlt.config.get("sources.replica.base_url")


def api_token(given: str | None = None) -> str | None:
    """The replica API's token: given, else ``sources.replica.token`` (a secret)."""
    return given or dlt.secrets.get("sources.replica.token")


def api_connection(base_url: str | None = None, token: str | None = None) -> ApiConnection:
    """The API to load from; a missing setting is a :class:`ReplicaError` saying which."""
    url, secret = api_base_url(base_url), api_token(token)
    if not url:
        raise ReplicaError("no replica API configured: set sources.replica.base_url")
    if not secret:
        raise ReplicaError(
            "no replica API token: set SOURCES__REPLICA__TOKEN or sources.replica.token in"
            " .dlt/secrets.toml"
        )
    return ApiConnection(str(url), str(secret))


def endpoints(given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The endpoints declared: given, else configured, else the defaults."""
    return dict(
        given or dlt.config.get("sources.replica.endpoints") or replica_settings.ENDPOINTS
    )


def schema_contracts(given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each entity's schema contract: the defaults, then configuration, then ``given``."""
    configured: dict[str, Any] = dlt.config.get("sources.replica.schema_contracts") or {}
    return {**replica_settings.SCHEMA_CONTRACTS, **dict(configured), **(given or {})}


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


def notify_setting(name: str, secret: bool = False) -> Any:
    """A setting of ``[notify]``: secrets only from secrets; others from either."""
    provider = dlt.secrets if secret else dlt.config
    value: Any = provider.get(f"notify.{name}")
    if value is None and not secret:
        value = dlt.secrets.get(f"notify.{name}")
    return value
