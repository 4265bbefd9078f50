"""One notifier for the whole project: schema changes, announcements, failures, outages.

Channels (any subset, from ``[notify]`` in ``.dlt/config.toml`` / ``.dlt/secrets.toml``
or the matching ``NOTIFY__*`` environment variables):

* ``jsonl_path`` — a local JSON-lines log (on by default: ``data/notifications.jsonl``);
* ``slack_webhook_url`` — a Slack-compatible incoming webhook (``{"text": ...}``);
* ``webhook_url`` + ``webhook_secret`` — a generic JSON webhook; the body is signed with
  HMAC-SHA256 over ``<timestamp>.<body>`` (headers ``X-Salesflow-Timestamp`` and
  ``X-Salesflow-Signature: sha256=<hex>``);
* ``smtp_host`` (+ ``smtp_port``, ``smtp_from``, ``smtp_to``, ``smtp_username``,
  ``smtp_password``, ``smtp_starttls``) — email.

Every event has a key. A ledger (SQLite, next to dlt's working directory) records what
each channel has delivered, so the same event reaches each channel once, across
restarts. A channel that fails never breaks the pipeline: the failure is logged and the
message waits in the ledger for the next attempt. Messages say what happened, what it
affects and what to do; they never carry secrets or row-level data.

A webhook's URL is its secret, and the exceptions of HTTP libraries quote it: a failed
delivery is described from the status and the host alone (:func:`failure`), never from
the exception's text, and what is logged or kept passes through
:func:`~loaders.monitoring.redact.redact` all the same.

May import: :mod:`loaders.config`, :mod:`.redact`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

from loaders.config import notify_setting
from loaders.monitoring.redact import redact

log = logging.getLogger(__name__)

HTTP_TIMEOUT = 10.0
# a failed delivery is retried on later cycles, this many times at most
MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class Event:
    key: str  # the same key is delivered once per channel, ever
    kind: str  # schema_change | business_change | announcement | build_failed | ...
    title: str
    text: str  # what happened, what it affects, what to do
    severity: str = "info"  # info | warning | error
    details: dict[str, Any] = field(default_factory=dict)  # JSON: no secrets, no rows
    at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    def payload(self) -> dict[str, Any]:
        return {"source": "salesflow", **asdict(self)}

    def plain(self) -> str:
        return f"[salesflow] {self.title}\n\n{self.text}"


class Channel(Protocol):
    name: str

    @property
    def where(self) -> str:
        """The channel for people, without its secrets (a URL's host, not the URL)."""
        ...

    def send(self, event: Event) -> None: ...


def _host(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


@dataclass
class JsonLinesChannel:
    path: Path
    name: str = "jsonl"

    @property
    def where(self) -> str:
        return f"the notification log {self.path}"

    def send(self, event: Event) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event.payload(), sort_keys=True, default=str) + "\n")


@dataclass
class SlackChannel:
    url: str = field(repr=False)  # the URL is the secret
    name: str = "slack"

    @property
    def where(self) -> str:
        return f"the Slack webhook (host {_host(self.url)})"

    def send(self, event: Event) -> None:
        icon = {"error": ":red_circle:", "warning": ":warning:"}.get(event.severity, ":bell:")
        body = {"text": f"{icon} *{event.title}*\n{event.text}"}
        requests.post(self.url, json=body, timeout=HTTP_TIMEOUT).raise_for_status()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature a JSON-webhook receiver recomputes to trust a message."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass
class WebhookChannel:
    url: str = field(repr=False)
    secret: str = field(repr=False)
    name: str = "webhook"

    @property
    def where(self) -> str:
        return f"the JSON webhook (host {_host(self.url)})"

    def send(self, event: Event) -> None:
        body = json.dumps(event.payload(), sort_keys=True, default=str).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Salesflow-Timestamp": ts,
            "X-Salesflow-Signature": sign(self.secret, ts, body),
        }
        requests.post(self.url, data=body, headers=headers, timeout=HTTP_TIMEOUT).raise_for_status()


@dataclass
class EmailChannel:
    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    name: str = "email"

    @property
    def where(self) -> str:
        return f"the SMTP server {self.host}:{self.port}"

    def send(self, event: Event) -> None:
        msg = EmailMessage()
        msg["Subject"] = f"[salesflow] {event.title}"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg.set_content(
            event.text + "\n\n" + json.dumps(event.details, indent=2, sort_keys=True, default=str)
        )
        with smtplib.SMTP(self.host, self.port, timeout=HTTP_TIMEOUT) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(msg)


class Ledger:
    """What was delivered where, and what waits for another attempt (SQLite)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._con()) as con, con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS delivered (key TEXT, channel TEXT,"
                " delivered_at TEXT, PRIMARY KEY (key, channel))"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS pending (key TEXT, channel TEXT, event TEXT,"
                " attempts INTEGER, last_error TEXT, PRIMARY KEY (key, channel))"
            )
            # every event key ever raised (sent, pending or deliberately skipped)
            con.execute(
                "CREATE TABLE IF NOT EXISTS raised (key TEXT PRIMARY KEY, at TEXT, title TEXT)"
            )
            if "title" not in {r[1] for r in con.execute("PRAGMA table_info(raised)")}:
                con.execute("ALTER TABLE raised ADD COLUMN title TEXT")  # older ledgers

    def raise_once(self, key: str, title: str | None = None) -> bool:
        """Record ``key``; False if it was raised before."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with closing(self._con()) as con, con:
            cur = con.execute("INSERT OR IGNORE INTO raised VALUES (?, ?, ?)", (key, now, title))
            return cur.rowcount == 1

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last events raised (skipped milestones excluded), newest first, with the
        channels that have them."""
        with closing(self._con()) as con:
            rows = con.execute(
                "SELECT r.key, r.at, r.title, group_concat(d.channel, ','),"
                " (SELECT group_concat(channel, ',') FROM pending p WHERE p.key = r.key)"
                " FROM raised r LEFT JOIN delivered d ON d.key = r.key"
                " WHERE r.title IS NOT NULL GROUP BY r.key ORDER BY r.at DESC, r.rowid DESC"
                " LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            {"key": k, "at": at, "title": title,
             "delivered": sorted(filter(None, (d or "").split(","))),
             "pending": sorted(filter(None, (p or "").split(",")))}
            for k, at, title, d, p in rows
        ]

    def raised(self, key: str) -> bool:
        with closing(self._con()) as con:
            return con.execute("SELECT 1 FROM raised WHERE key = ?", (key,)).fetchone() is not None

    def _con(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def delivered(self, key: str, channel: str) -> bool:
        with closing(self._con()) as con:
            row = con.execute(
                "SELECT 1 FROM delivered WHERE key = ? AND channel = ?", (key, channel)
            ).fetchone()
        return row is not None

    def mark_delivered(self, key: str, channel: str) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with closing(self._con()) as con, con:
            con.execute("INSERT OR IGNORE INTO delivered VALUES (?, ?, ?)", (key, channel, now))
            con.execute("DELETE FROM pending WHERE key = ? AND channel = ?", (key, channel))

    def mark_failed(self, event: Event, channel: str, error: str) -> int:
        with closing(self._con()) as con, con:
            con.execute(
                "INSERT INTO pending VALUES (?, ?, ?, 1, ?) ON CONFLICT (key, channel)"
                " DO UPDATE SET attempts = attempts + 1, last_error = excluded.last_error",
                (event.key, channel, json.dumps(asdict(event), default=str),
                 redact(error)[:500]),
            )
            return con.execute(
                "SELECT attempts FROM pending WHERE key = ? AND channel = ?",
                (event.key, channel),
            ).fetchone()[0]

    def pending(self) -> list[tuple[Event, str, int]]:
        with closing(self._con()) as con:
            rows = con.execute(
                "SELECT event, channel, attempts FROM pending WHERE attempts < ?"
                " ORDER BY rowid",
                (MAX_ATTEMPTS,),
            ).fetchall()
        return [(Event(**json.loads(e)), ch, n) for e, ch, n in rows]


class Notifier:
    def __init__(self, channels: Iterable[Channel], ledger: Ledger) -> None:
        self.channels = {c.name: c for c in channels}
        self.ledger = ledger

    def notify(self, event: Event) -> dict[str, str]:
        """Deliver ``event`` on every channel that has not had it yet. Returns what
        happened per channel: delivered, already delivered, or the error."""
        self.ledger.raise_once(event.key, event.title)
        out = {}
        for channel in self.channels.values():
            if self.ledger.delivered(event.key, channel.name):
                out[channel.name] = "already delivered"
                continue
            out[channel.name] = self._deliver(channel, event)
        return out

    def known(self, key: str) -> bool:
        """Whether an event with this key was raised before (on any channel, or skipped)."""
        return self.ledger.raised(key)

    def skip(self, key: str) -> None:
        """Mark ``key`` as raised without sending it (a notice made moot by another)."""
        self.ledger.raise_once(key)

    def retry_pending(self) -> int:
        """Try again what failed before; returns how many went through."""
        done = 0
        for event, name, _ in self.ledger.pending():
            channel = self.channels.get(name)
            if channel is None or self.ledger.delivered(event.key, name):
                continue
            done += self._deliver(channel, event) == "delivered"
        return done

    def _deliver(self, channel: Channel, event: Event) -> str:
        try:
            channel.send(event)
        except Exception as exc:  # a channel never breaks the pipeline
            error = failure(channel, exc)
            attempts = self.ledger.mark_failed(event, channel.name, error)
            log.warning(
                "notification %r on %s failed (attempt %d, kept for retry): %s",
                event.key, channel.name, attempts, error,
            )
            return f"failed: {error}"
        self.ledger.mark_delivered(event.key, channel.name)
        return "delivered"


def failure(channel: Channel, exc: Exception) -> str:
    """Why a delivery failed, from the status and the host: never the exception's text
    where it may quote the URL (``requests`` puts it in every message)."""
    where = channel.where
    kind = type(exc).__name__
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} from {where}"
    if isinstance(exc, requests.Timeout):
        return f"{kind}: no answer from {where} within {HTTP_TIMEOUT:g} s"
    if isinstance(exc, requests.ConnectionError):
        return f"{kind}: cannot connect to {where}"
    if isinstance(exc, requests.RequestException):  # a malformed URL, a bad redirect, ...
        return f"{kind}: the request to {where} could not be made; check its URL"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        user = getattr(channel, "username", None)
        return (f"SMTP {exc.smtp_code}: {where} refused the login of {user!r}; check"
                " notify.smtp_username and notify.smtp_password")
    if isinstance(exc, smtplib.SMTPResponseException):
        answer = exc.smtp_error.decode(errors="replace") if isinstance(
            exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"SMTP {exc.smtp_code} from {where}: {redact(answer)}"
    return f"{kind} on {where}: {redact(str(exc))}"


def from_config(data_dir: Path) -> Notifier:
    """The notifier configured under ``[notify]`` (config, secrets or environment)."""
    channels: list[Channel] = []
    jsonl = notify_setting("jsonl_path")
    if jsonl != "":  # an empty string switches the local log off
        channels.append(JsonLinesChannel(Path(jsonl or data_dir / "notifications.jsonl")))
    if url := notify_setting("slack_webhook_url", secret=True):
        channels.append(SlackChannel(url))
    if url := notify_setting("webhook_url", secret=True):
        secret = notify_setting("webhook_secret", secret=True)
        if not secret:
            raise ValueError("notify.webhook_url is set but notify.webhook_secret is not")
        channels.append(WebhookChannel(url, secret))
    if host := notify_setting("smtp_host"):
        to = notify_setting("smtp_to") or []
        recipients = [a.strip() for a in to.split(",")] if isinstance(to, str) else list(to)
        if not recipients:
            raise ValueError("notify.smtp_host is set but notify.smtp_to is not")
        channels.append(
            EmailChannel(
                host=host,
                port=int(notify_setting("smtp_port") or 25),
                sender=notify_setting("smtp_from") or "salesflow@localhost",
                recipients=recipients,
                username=notify_setting("smtp_username"),
                password=notify_setting("smtp_password", secret=True),
                starttls=str(notify_setting("smtp_starttls") or "").lower() in ("1", "true", "yes"),
            )
        )
    return Notifier(channels, Ledger(data_dir / "notifications.sqlite3"))
