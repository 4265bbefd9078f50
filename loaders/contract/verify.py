"""Check a running replica API against the data contract (``salesflow contract verify``).

Two looks at the API, both read-only:

* its schema endpoint (``/v1/schema``): every contracted entity and required field is
  there, with the contracted type, and not declared optional where the contract needs a
  value;
* a sample of real records from each contracted entity (the first ``sample`` records of
  its listing, or of those changed since a given time; tombstones are skipped): required
  fields present, no nulls where the
  contract says never null, values of the contracted JSON type, values inside the allowed
  set of an ``accepted_values`` test.

Every violation carries its impact from the contract (marts, exposures, owners) and a
severity: ``breaking`` (exit code 1) or ``warning`` (a new value where the test only warns:
exit code 0). Record values are never reported, except the offending values of
categorical fields (those with an allowed set). Configured field mappings
(:mod:`loaders.replica.mapping`) apply first: a contracted field the API now sends under
another name, mapped back by configuration, satisfies the contract.

May import: the replica source (client, protocol, errors, settings, field mappings).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from typing import Any

from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import HTTPError, RetryError, Timeout

from loaders.replica.client import raise_for_api_status
from loaders.replica.errors import ReplicaUnavailable
from loaders.replica.mapping import FieldMap, map_described, map_record
from loaders.replica.protocol import Api, Listing, read_pages

log = logging.getLogger(__name__)

BREAKING, WARNING = "breaking", "warning"
MAX_EXAMPLES = 5
_DECIMAL = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


@dataclass
class Violation:
    entity: str
    field: str | None
    kind: str  # entity_missing | field_missing | type_changed | declared_nullable |
    #            missing_in_sample | null_in_sample | wrong_type_in_sample | value_not_allowed
    severity: str  # breaking | warning
    detail: str
    records: int = 0  # sampled records showing it (sample checks)
    examples: list[str] = dataclass_field(default_factory=list)  # offending categorical values
    read: str = "direct"  # tolerant: staging reads it with column_or_null (absorbs absence)
    marts: dict[str, list[str]] = dataclass_field(default_factory=dict)  # mart -> columns reached
    exposures: list[str] = dataclass_field(default_factory=list)
    owners: list[str] = dataclass_field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.entity}.{self.field}" if self.field else self.entity


@dataclass
class Report:
    api: str
    contract_version: str | None
    schema_version: Any = None
    sampled: dict[str, int] = dataclass_field(default_factory=dict)
    violations: list[Violation] = dataclass_field(default_factory=list)
    notes: list[str] = dataclass_field(default_factory=list)

    @property
    def breaking(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == BREAKING]

    @property
    def warnings(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == WARNING]

    @property
    def exit_code(self) -> int:
        return 1 if self.breaking else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "api": self.api,
            "contract_version": self.contract_version,
            "schema_version": self.schema_version,
            "status": "breaking" if self.breaking else "warnings" if self.violations else "ok",
            "breaking": len(self.breaking),
            "warnings": len(self.warnings),
            "sampled": self.sampled,
            "violations": [asdict(v) for v in self.violations],
            "notes": self.notes,
        }


def _impact(spec: dict[str, Any]) -> dict[str, Any]:
    """Who depends on a field (its marts with the columns it reaches, and "rows" when it
    decides which rows a mart has) or on a whole entity (its marts)."""
    info = spec.get("x-salesflow", {})
    marts = info.get("marts", {})
    if isinstance(marts, dict):
        marts = {m: u["columns"] + (["rows"] if u["rows"] else []) for m, u in marts.items()}
    else:
        marts = {m: [] for m in marts}
    return {
        "read": info.get("read", "direct"),
        "marts": marts,
        "exposures": info.get("exposures", []),
        "owners": info.get("owners", []),
    }


def _matches(value: Any, api_type: str) -> bool:
    if api_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if api_type == "boolean":
        return isinstance(value, bool)
    if api_type == "decimal":
        return isinstance(value, str) and bool(_DECIMAL.match(value))
    if api_type == "timestamp":
        if not isinstance(value, str):
            return False
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return False
        return True
    return isinstance(value, str)


def check_schema(
    doc: dict[str, Any], described: dict[str, dict[str, Any]],
    maps: dict[str, tuple[FieldMap, ...]] | None = None,
) -> tuple[list[Violation], dict[str, set[str]]]:
    """Violations in the API's declared schema (as the field mappings ``maps`` map it);
    and per entity the fields already reported (their sample checks would only repeat
    it)."""
    out: list[Violation] = []
    reported: dict[str, set[str]] = {}
    for entity, spec in sorted(doc["$defs"].items()):
        if entity not in described:
            out.append(Violation(entity, None, "entity_missing", BREAKING,
                                 f"entity {entity} is gone from the API's schema",
                                 **_impact(spec)))
            reported[entity] = set(spec["properties"])
            continue
        fields = map_described((maps or {}).get(entity, ()), described[entity].get("fields", []))
        api = {f["name"]: f for f in fields}
        done = reported.setdefault(entity, set())
        for name, fspec in sorted(spec["properties"].items()):
            info = fspec["x-salesflow"]
            if info["presence"] == "tombstone":
                continue  # only tombstones carry it; it is in no schema
            declared = api.get(name)
            if declared is None:
                if info["presence"] == "required":
                    out.append(Violation(entity, name, "field_missing", BREAKING,
                                         "field is gone from the API's schema", **_impact(fspec)))
                    done.add(name)
                continue
            if declared.get("type") not in (info["api_type"], None):
                out.append(Violation(
                    entity, name, "type_changed", BREAKING,
                    f"type changed: {info['api_type']} -> {declared.get('type')}", **_impact(fspec),
                ))
                done.add(name)
            elif declared.get("required") is False and not info["nullable"]:
                out.append(Violation(
                    entity, name, "declared_nullable", BREAKING,
                    "the API declares it optional; the marts need a value in every record",
                    **_impact(fspec),
                ))
    return out, reported


def check_records(
    entity: str, spec: dict[str, Any], records: list[dict[str, Any]], skip: set[str]
) -> list[Violation]:
    """Violations in sampled records of one entity (one per field and kind)."""
    marker = spec["x-salesflow"].get("tombstone_marker")
    found: dict[tuple[str, str], Violation] = {}

    def note(name: str, kind: str, severity: str, detail: str, example: str | None = None):
        v = found.get((name, kind))
        if v is None:
            v = found[(name, kind)] = Violation(
                entity, name, kind, severity, detail, **_impact(spec["properties"][name])
            )
        v.records += 1
        if example is not None and example not in v.examples and len(v.examples) < MAX_EXAMPLES:
            v.examples.append(example)

    for record in records:
        if marker and record.get(marker) is not None:
            continue  # a tombstone: key, cursor and marker only
        for name, fspec in spec["properties"].items():
            info = fspec["x-salesflow"]
            if name in skip or info["presence"] == "tombstone":
                continue
            if name not in record:
                if info["presence"] == "required":
                    note(name, "missing_in_sample", BREAKING, "records come without the field")
                continue
            value = record[name]
            if value is None:
                if not info["nullable"]:
                    note(name, "null_in_sample", BREAKING, "null where the marts need a value")
                continue
            if not _matches(value, info["api_type"]):
                note(name, "wrong_type_in_sample", BREAKING,
                     f"values are not of type {info['api_type']} (got {type(value).__name__})")
                continue
            allowed = info.get("accepted_values")
            if allowed and str(value) not in allowed["values"]:
                severity = BREAKING if allowed["severity"] == "error" else WARNING
                note(name, "value_not_allowed", severity,
                     f"value outside the allowed set ({allowed['severity']}-level test)",
                     str(value))
    return [found[k] for k in sorted(found)]


def _get(client: Any, path: str, **kwargs: Any) -> Any:
    try:
        return client.get(path, **kwargs)
    except (RequestsConnectionError, Timeout, RetryError) as exc:
        raise ReplicaUnavailable(
            f"cannot reach the replica API at {client.base_url}: {type(exc).__name__}:"
            f" {exc}"
        ) from None


def _sample(
    api: Api, listing: Listing, path: str, size: int, since: datetime | None = None
) -> list[dict[str, Any]] | None:
    """The first ``size`` records of an entity's listing (its first page, read as the
    loader reads it), from ``since`` if given (None: no such endpoint)."""
    params: dict[str, Any] = listing.page_params(size)
    if since:
        params[listing.since_param] = listing.since_value(since)
    pages = read_pages(api, listing, path, params, page_size=size)
    try:
        page = next(pages, None)
    except HTTPError as exc:
        if exc.response is not None and exc.response.status_code == 404:
            return None
        raise_for_api_status(exc.response, api.base_url)
        raise
    except (RequestsConnectionError, Timeout, RetryError) as exc:
        raise ReplicaUnavailable(
            f"cannot reach the replica API at {api.base_url}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        pages.close()
    records = []
    for line in (page.records if page else b"").decode().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # broken lines are the loader's quarantine's business
    return records[:size]


def verify(
    doc: dict[str, Any], api: Api, sample: int = 200, since: str | None = None,
    maps: dict[str, tuple[FieldMap, ...]] | None = None,
    listings: dict[str, Listing] | None = None,
) -> Report:
    """Check the API ``api`` against the contract ``doc``: its schema (where it has a
    schema endpoint), and ``sample`` records per entity (changed at or after ``since``,
    an ISO-8601 time, if given: e.g. the records written since a deploy), both as the
    field mappings ``maps`` map them; each entity's listing read as ``listings`` says
    (default: the API's)."""
    maps = maps or {}
    listings = listings or {}
    if sample < 0:
        raise ValueError(f"--sample must be 0 or more, got {sample}")
    start = None
    if since:
        try:
            start = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--since must be an ISO-8601 time, got {since!r}") from None
    client = api.client()
    report = Report(api=api.base_url, contract_version=doc.get("version"))
    reported: dict[str, set[str]] = {}
    response = _get(client, api.schema_path) if api.schema_path else None
    if response is None or response.status_code == 404:
        report.notes.append("the API has no schema endpoint: checked sampled records only")
    else:
        raise_for_api_status(response, api.base_url)
        body = response.json()
        report.schema_version = body.get("schema_version")
        found, reported = check_schema(doc, body.get("entities", {}), maps)
        report.violations += found
    for entity, spec in sorted(doc["$defs"].items()):
        if sample == 0 or any(v.kind == "entity_missing" and v.entity == entity
                              for v in report.violations):
            continue
        records = _sample(api, listings.get(entity, api.listing),
                          spec["x-salesflow"]["endpoint"], sample, start)
        if records is None:
            report.violations.append(Violation(
                entity, None, "entity_missing", BREAKING,
                f"{spec['x-salesflow']['endpoint']} answers 404", **_impact(spec),
            ))
            continue
        report.sampled[entity] = len(records)
        if maps.get(entity):
            records = [map_record(maps[entity], r) for r in records]
        report.violations += check_records(entity, spec, records, reported.get(entity, set()))
    for entity, entity_maps in sorted(maps.items()):
        report.notes += [f"{entity}: field mapping {m.describe()}" for m in entity_maps]
    log.info("contract %s against %s: %d breaking, %d warnings", report.contract_version,
             api.base_url, len(report.breaking), len(report.warnings))
    return report


def render(report: Report) -> str:
    """The report for people: each violation with who depends on the field."""
    sampled = ", ".join(f"{e} {n}" for e, n in sorted(report.sampled.items())) or "none"
    lines = [
        f"Data contract {report.contract_version} against {report.api}"
        f" (API schema version {report.schema_version}; records sampled: {sampled})",
        *[f"note: {n}" for n in report.notes],
    ]
    for v in sorted(report.violations, key=lambda v: (v.severity != BREAKING, v.where, v.kind)):
        detail = v.detail
        if v.records:
            detail += f" in {v.records} of {report.sampled.get(v.entity, 0)} sampled records"
        if v.examples:
            detail += ": " + ", ".join(repr(e) for e in v.examples)
        lines.append(f"{v.severity.upper()} {v.where}: {detail}")
        if v.read == "tolerant" and v.kind == "field_missing":
            lines.append("    (staging reads it with column_or_null: the marts keep building,"
                         " but lose what it carried)")
        marts = [f"{m} ({', '.join(cols)})" if cols else m for m, cols in sorted(v.marts.items())]
        for label, values in (("marts", marts), ("exposures", v.exposures),
                              ("owners", v.owners)):
            if values:
                lines.append(f"    {label}: {', '.join(values)}")
    if report.breaking:
        lines.append(
            f"{len(report.breaking)} breaking, {len(report.warnings)} warning(s): the marts"
            " listed above depend on these fields. Keep them as contracted, or agree the"
            " change with the owners before it ships."
        )
    elif report.warnings:
        lines.append(f"no breaking violation; {len(report.warnings)} warning(s) to tell the"
                     " owners about")
    else:
        lines.append("clean: every contracted entity and field is served as agreed")
    return "\n".join(lines)
