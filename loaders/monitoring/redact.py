"""Secrets never leave the process: every configured secret is masked where text leaves.

The secrets are the values of the settings :mod:`loaders.config` declares secret (the
API token, webhook URLs and signing secret, the SMTP and database passwords, the PII
hashing key, ...) and any given at run time. :func:`redact` replaces each of them, its
URL-encoded forms and, for a URL, its path and query (a Slack webhook's secret is its
path, and that is what HTTP libraries log) by ``***``.

It is the last line, not the first: messages are built so they carry no secret (a
failed delivery names the status and the host, never the URL). The command line
installs :func:`install`, which redacts every log record of every logger as it is made
(a filter on the root logger would miss the records of loggers that do not propagate,
such as dlt's), and uncaught exceptions' tracebacks; its error messages and ``salesflow
status`` pass through :func:`redact`.

Secrets shorter than :data:`MIN_LENGTH` are not masked: they would mask ordinary words.

May import: :mod:`loaders.config`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, urlsplit

from loaders import config

MASK = "***"
MIN_LENGTH = 4
# a URL's path and query are masked when at least this long (not "/" or "/hook")
MIN_URL_TAIL = 8


def forms(secret: str) -> set[str]:
    """The texts under which ``secret`` may appear: as is, URL-encoded, and for a URL
    its path and query too (and as written inside JSON)."""
    out = {secret, quote(secret, safe=""), quote_plus(secret), quote(secret),
           json.dumps(secret)[1:-1]}
    parts = urlsplit(secret)
    if parts.scheme and parts.netloc:
        tail = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(tail) >= MIN_URL_TAIL:
            out |= {tail, quote(tail, safe="")}
        if parts.password:
            out.add(parts.password)
    return {f for f in out if len(f) >= MIN_LENGTH}


class Redactor:
    """Masks the given secrets (and their forms) in a text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        texts = {f for s in secrets if s and len(s) >= MIN_LENGTH for f in forms(s)}
        # the longest first: a whole URL before its path
        ordered = sorted(texts, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(MASK, text)


_configured: list[str] | None = None
_current: tuple[tuple[str, ...], Redactor] | None = None


def refresh() -> None:
    """Read the configured secrets again (the configuration changed)."""
    global _configured, _current
    _configured, _current = None, None


def redactor() -> Redactor:
    """The redactor of every secret configured (read once) or remembered since."""
    global _configured, _current
    if _configured is None:
        _configured = config.secret_values()
    remembered = config.remembered_secrets()
    if _current is None or _current[0] != remembered:
        _current = (remembered, Redactor([*_configured, *remembered]))
    return _current[1]


def redact(text: str) -> str:
    """``text`` with every secret masked."""
    return redactor()(text)


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record: its message, arguments merged, and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        clean = redactor()
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit: the handler reports it
            return True
        masked = clean(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = clean(record.exc_text)
        if record.stack_info:
            record.stack_info = clean(record.stack_info)
        return True


def install() -> None:
    """Redact every log record made from now on, and uncaught exceptions' tracebacks,
    with the secrets configured now. Installing again only reads the secrets again."""
    refresh()
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacting", False):
        return
    masking = RedactingFilter()

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        masking.filter(record)
        return record

    make_record.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)
    sys.excepthook = _excepthook


def _excepthook(kind, exc, tb) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, exc, tb))))
