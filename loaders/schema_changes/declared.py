"""Announced changes from both places a platform announces them: the replica API's
announcements endpoint, and the repository's ``announcements/`` folder, where changes a
platform announces by e-mail or in a meeting are declared (one YAML file per change;
``announcements/README.md`` explains the format).

:func:`all_announcements` is the one call for every user of announcements (the cycle,
``salesflow schema``, ``schema impact``): the API's announcements, then the declared
ones; an API announcement wins over a declared one with the same ``change_id``.

A declared file has the shape of an API announcement: ``change_id`` (default: the file's
name without ``.yaml``), ``title``, ``description``, ``breaking`` (default false),
``announced_at`` (required: when the platform said it, e.g. the e-mail's date; a file's
commit or modification time says when someone wrote it down, not when it was announced),
``effective_at`` (required) and ``changes``. Times carry their time zone. Its ``status``
is ``upcoming`` until ``effective_at``, then ``applied``: the platform said it would be
(whether it was is :mod:`.observed`'s question). Files whose names start with ``_`` or
``.`` are not read: keep drafts and examples there.

May import: the replica source (client, errors, types), :mod:`loaders.config`, PyYAML and
the notifier.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from loaders import config
from loaders.monitoring.notify import Event, Notifier
from loaders.replica.client import Announcement, FieldChange, fetch_announcements
from loaders.replica.errors import ReplicaError
from loaders.replica.pages import DLT_TYPES

log = logging.getLogger(__name__)

SOURCE = "repository"
SUFFIXES = (".yaml", ".yml")
# the field changes a declared announcement may list (those the API's may list)
KINDS = ("added", "removed", "combined", "renamed", "type_changed", "new_value")
# the API's field types, which new_type and old_type name
TYPES = tuple(DLT_TYPES)
KEYS = ("change_id", "title", "description", "breaking", "announced_at", "effective_at",
        "changes")
REQUIRED = ("title", "announced_at", "effective_at", "changes")
FIELD_KEYS = ("entity", "field", "change", "new_type", "old_type", "into", "note")
TIME_EXAMPLE = "2026-12-01T06:00:00Z"


class DeclaredAnnouncementError(ValueError):
    """A declared announcement file that cannot be used: which file, and what is wrong."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"declared announcement {_shown(path)}: {problem}")


def _shown(path: Path) -> str:
    """``path`` as people find it: relative to the project when inside it."""
    try:
        return str(path.resolve().relative_to(config.PROJECT_ROOT))
    except ValueError:
        return str(path)


def declared_files(directory: Path) -> list[Path]:
    """The declared announcement files in ``directory`` (``*.yaml``, ``*.yml``; not
    those starting with ``_`` or ``.``), by name; none without the folder."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir()
        if p.suffix in SUFFIXES and p.is_file() and not p.name.startswith(("_", "."))
    )


def _parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeclaredAnnouncementError(path, f"cannot be read: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = " ".join(str(exc).split())
        raise DeclaredAnnouncementError(path, f"is not valid YAML: {where}") from None
    if not isinstance(doc, dict):
        raise DeclaredAnnouncementError(
            path, "must be a mapping with title, announced_at, effective_at and changes"
            " (see announcements/README.md)"
        )
    return doc


def _unknown(path: Path, doc: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in known)
    if unknown:
        raise DeclaredAnnouncementError(
            path, f"{where}unknown key(s) {', '.join(map(repr, unknown))}: the keys are"
            f" {', '.join(known)}"
        )


def _time(path: Path, key: str, value: Any) -> str:
    """An ISO-8601 time with its zone (YAML may have read it as a datetime), in UTC."""
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        with contextlib.suppress(ValueError):
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise DeclaredAnnouncementError(
                path, f"{key} {value.isoformat()} has no time zone: add it, e.g."
                f" {TIME_EXAMPLE} (UTC) or 2026-12-01T07:00:00+01:00"
            )
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, date):
        raise DeclaredAnnouncementError(
            path, f"{key} {value.isoformat()} is a date without a time: give the time and"
            f" its zone, e.g. {TIME_EXAMPLE}"
        )
    raise DeclaredAnnouncementError(
        path, f"{key} {value!r} is not a time: write an ISO-8601 time with its zone, e.g."
        f" {TIME_EXAMPLE}"
    )


def _text(path: Path, where: str, key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value):
        raise DeclaredAnnouncementError(path, f"{where}{key} must be a non-empty text")
    return str(value).strip()


def _type(path: Path, where: str, key: str, value: Any) -> str:
    if value not in TYPES:
        raise DeclaredAnnouncementError(
            path, f"{where}unknown {key} {value!r}: use one of the API's types {', '.join(TYPES)}"
        )
    return str(value)


def _field_change(
    path: Path, n: int, item: Any, entities: Sequence[str]
) -> FieldChange:
    """The ``n``-th field change of a file, checked."""
    where = f"changes[{n}]: "
    if not isinstance(item, dict):
        raise DeclaredAnnouncementError(
            path, f"{where}must be a mapping with entity, field and change"
        )
    _unknown(path, item, FIELD_KEYS, where)
    for key in ("entity", "field", "change"):
        if item.get(key) in (None, ""):
            raise DeclaredAnnouncementError(path, f"{where}{key} is missing")
    fc: FieldChange = {
        "entity": _text(path, where, "entity", item["entity"]),
        "field": _text(path, where, "field", item["field"]),
        "change": _text(path, where, "change", item["change"]),
    }
    where = f"changes[{n}] ({fc['entity']}.{fc['field']}): "
    if fc["entity"] not in entities:
        raise DeclaredAnnouncementError(
            path, f"{where}unknown entity {fc['entity']!r}: the entities loaded are"
            f" {', '.join(sorted(entities))} (sources.replica.endpoints)"
        )
    if fc["change"] not in KINDS:
        raise DeclaredAnnouncementError(
            path, f"{where}unknown change {fc['change']!r}: use one of {', '.join(KINDS)}"
        )
    if item.get("into") not in (None, ""):
        fc["into"] = _text(path, where, "into", item["into"])
    if item.get("note") not in (None, ""):
        fc["note"] = _text(path, where, "note", item["note"])
    if item.get("new_type") not in (None, ""):
        fc["new_type"] = _type(path, where, "new_type", item["new_type"])
    if item.get("old_type") not in (None, ""):
        fc["old_type"] = _type(path, where, "old_type", item["old_type"])
    if fc["change"] in ("combined", "renamed") and not fc.get("into"):
        raise DeclaredAnnouncementError(
            path, f"{where}a {fc['change']} field needs into: the field it becomes"
        )
    if fc["change"] == "type_changed" and not fc.get("new_type"):
        raise DeclaredAnnouncementError(
            path, f"{where}a type_changed field needs new_type: one of {', '.join(TYPES)}"
        )
    return fc


def load_declared_file(
    path: Path, entities: Sequence[str], now: datetime | None = None
) -> Announcement:
    """One declared announcement, checked; a :class:`DeclaredAnnouncementError` names
    the file and what is wrong. ``entities``: those the loader loads."""
    doc = _parse(path)
    _unknown(path, doc, KEYS, "")
    for key in REQUIRED:
        if doc.get(key) in (None, ""):
            raise DeclaredAnnouncementError(
                path, f"{key} is missing" + (
                    f": give the time and its zone, e.g. {key}: {TIME_EXAMPLE}"
                    if key.endswith("_at") else "")
            )
    if not isinstance(doc["changes"], list) or not doc["changes"]:
        raise DeclaredAnnouncementError(
            path, "changes must be a list of one or more field changes (entity, field,"
            " change)"
        )
    breaking = doc.get("breaking", False)
    if not isinstance(breaking, bool):
        raise DeclaredAnnouncementError(path, f"breaking must be true or false, not {breaking!r}")
    effective = _time(path, "effective_at", doc["effective_at"])
    now = now or datetime.now(timezone.utc)
    return {
        "change_id": _text(path, "", "change_id", doc.get("change_id", path.stem)),
        "title": _text(path, "", "title", doc["title"]),
        "description": str(doc.get("description") or "").strip(),
        "breaking": breaking,
        "announced_at": _time(path, "announced_at", doc["announced_at"]),
        "effective_at": effective,
        "applied_at": None,
        "status": "applied" if datetime.fromisoformat(effective) <= now else "upcoming",
        "changes": [
            _field_change(path, n, item, entities) for n, item in enumerate(doc["changes"], 1)
        ],
        "source": SOURCE,
    }


@dataclass
class Declared:
    """The announcements declared in the repository, and the files that cannot be used."""

    announcements: list[Announcement] = field(default_factory=list)
    errors: list[DeclaredAnnouncementError] = field(default_factory=list)


def read_declared(
    directory: Path, entities: Sequence[str], now: datetime | None = None
) -> Declared:
    """Every declared announcement in ``directory``; a bad file is an error of its own,
    never a reason to drop the good ones."""
    out = Declared()
    where: dict[str, Path] = {}
    for path in declared_files(directory):
        try:
            a = load_declared_file(path, entities, now)
        except DeclaredAnnouncementError as exc:
            out.errors.append(exc)
            continue
        cid = a["change_id"]
        if cid in where:
            out.errors.append(DeclaredAnnouncementError(
                path, f"change_id {cid!r} is declared in {_shown(where[cid])} too: give each"
                " change its own change_id"
            ))
            continue
        where[cid] = path
        out.announcements.append(a)
    return out


_warned: set[str] = set()


def merge_announcements(
    api: Sequence[Announcement], declared: Sequence[Announcement]
) -> list[Announcement]:
    """The API's announcements, then the declared ones it does not announce itself (a
    declared one with an API one's ``change_id`` is dropped, with a warning once)."""
    ids = {a.get("change_id") for a in api}
    kept = []
    for a in declared:
        cid = str(a.get("change_id"))
        if cid not in ids:
            kept.append(a)
            continue
        if cid not in _warned:
            _warned.add(cid)
            log.warning(
                "announcement %r is both declared in the repository and announced by the"
                " API: the API's is used; remove the declared file or give it another"
                " change_id", cid,
            )
    return [*api, *kept]


@dataclass
class Announced:
    """Every announcement (the API's and the repository's), and what could not be read."""

    announcements: list[Announcement] = field(default_factory=list)
    api_error: ReplicaError | None = None  # the API's announcements are missing
    declared_errors: list[DeclaredAnnouncementError] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Each problem, as a sentence for people."""
        return [str(e) for e in (self.api_error, *self.declared_errors) if e is not None]


def all_announcements(
    base_url: str | None = None,
    token: str | None = None,
    directory: Path | None = None,
    entities: Sequence[str] | None = None,
    now: datetime | None = None,
) -> Announced:
    """The API's announcements (at ``base_url``, default the configured API) and those
    declared in ``directory`` (default :func:`loaders.config.announcements_dir`), for
    the ``entities`` loaded (default: the configured endpoints). An unreachable API or a
    bad file is reported in the answer, never raised."""
    api: list[Announcement] = []
    api_error = None
    try:
        api = fetch_announcements(config.api_connection(base_url, token))
    except ReplicaError as exc:
        api_error = exc
    declared = read_declared(
        directory or config.announcements_dir(),
        list(entities) if entities is not None else list(config.endpoints()),
        now,
    )
    return Announced(merge_announcements(api, declared.announcements), api_error,
                     declared.errors)


def invalid_event(error: DeclaredAnnouncementError) -> Event:
    """The notice of a declared announcement file that cannot be used."""
    digest = hashlib.sha256(str(error).encode()).hexdigest()[:16]
    return Event(
        key=f"declared_announcement_invalid:{digest}",
        kind="declared_announcement_invalid",
        title=f"Declared announcement {_shown(error.path)} is invalid: not used",
        text=f"{error}.\nFix the file (see announcements/README.md) and commit it: until"
        " then this announced change is not followed, checked against the data contract"
        " or compared with what is observed. The other announcements are used.",
        severity="error",
        details={"file": _shown(error.path), "problem": error.problem},
    )


def report_invalid(errors: Sequence[DeclaredAnnouncementError], notifier: Notifier) -> list[str]:
    """Log each unusable declared file, and notify it once; returns the keys raised."""
    raised = []
    for error in errors:
        log.error("%s", error)
        event = invalid_event(error)
        if notifier.known(event.key):
            continue
        notifier.notify(event)
        raised.append(event.key)
    return raised
