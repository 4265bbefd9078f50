"""Build the data contract document from the project's column lineage.

A source field is contracted only if it flows into a mart column, decides a mart's rows
(a filter, join or group key on the way) or reaches an exposure (:mod:`.reach`), or if
the loader needs it (primary key, incremental cursor, tombstone marker). Each
contracted field is described: the API type declared as ``data_type`` in the source yml,
nullability from ``not_null`` tests on the source or on staging columns that pass the
field through strictly, allowed values from ``accepted_values`` tests, and what depends
on it. The result is one JSON Schema (draft 2020-12) document, an object schema per
entity under ``$defs`` with per-field ``x-salesflow`` metadata, versioned by the project
version and a hash of its content.

May import: :mod:`.reach`, :mod:`.document`, :mod:`loaders.dbt_project` and the replica
source's settings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from loaders.config import PROJECT_ROOT
from loaders.contract import lineage
from loaders.contract.document import API_TYPES, HEADER, SOURCES_YML, ContractError
from loaders.contract.reach import ProjectLineage, tested_node
from loaders.contract.render import canonical
from loaders.dbt_project import manifest_project, project_version
from loaders.replica import settings

LOADER_GROUP = "data_platform"  # who runs the loader: owner of the fields it needs


def _constraint_tests(manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """not_null and accepted_values tests, by the node they test."""
    out: dict[str, list[dict[str, Any]]] = {}
    for node in manifest["nodes"].values():
        meta = node.get("test_metadata") or {}
        if node["resource_type"] != "test" or meta.get("name") not in (
            "not_null", "accepted_values"
        ):
            continue
        attached = tested_node(node)
        if attached and node.get("column_name"):
            out.setdefault(attached, []).append(node)
    return out


def _constraints(
    source_id: str, name: str, manifest: dict, tests: dict[str, list[dict]],
    models: dict[str, lineage.ModelLineage],
) -> tuple[list[str], dict[str, Any] | None]:
    """Evidence that a field is never null, and its allowed values, from the tests on the
    source column and on staging columns that pass it through."""
    not_null, accepted = [], []
    nodes = manifest["nodes"]
    candidates = [(source_id, name, None)] + [
        (uid, column, m) for uid, m in models.items() if source_id in m.reads
        for column in m.columns
    ]
    for uid, column, model in candidates:
        for test in tests.get(uid, []):
            if test["column_name"].lower() != column.lower():
                continue
            kind = test["test_metadata"]["name"]
            traced = None if model is None else (
                model.not_null_from if kind == "not_null" else model.values_from
            ).get(column, set())
            if traced is not None and (source_id, name) not in traced:
                continue
            where = f"{nodes[uid]['name'] if uid in nodes else 'source'}.{column}"
            severity = str(test["config"].get("severity", "error")).lower()
            if kind == "not_null" and severity == "error":
                not_null.append(f"not_null on {where}")
            elif kind == "accepted_values":
                values = test["test_metadata"]["kwargs"].get("values") or []
                accepted.append((where, severity, [str(v) for v in values]))
    if not accepted:
        return sorted(set(not_null)), None
    values = set(accepted[0][2])
    for _, _, more in accepted[1:]:
        values &= set(more)
    severity = "error" if any(s == "error" for _, s, _ in accepted) else "warn"
    return sorted(set(not_null)), {
        "values": sorted(values),
        "severity": severity,
        "tests": sorted({f"accepted_values on {w} ({s})" for w, s, _ in accepted}),
    }


def _loader_roles(entity: str) -> dict[str, list[str]]:
    ep = settings.ENDPOINTS[entity]
    roles: dict[str, list[str]] = {}
    roles.setdefault(ep["primary_key"], []).append("primary key")
    roles.setdefault(settings.cursor_of(ep), []).append("incremental cursor")
    if ep.get("deleted_marker"):
        roles.setdefault(ep["deleted_marker"], []).append("tombstone marker")
    return roles


def _api_type(entity: str, name: str, column: dict) -> str:
    api_type = (column.get("data_type") or "").lower()
    if api_type not in API_TYPES:
        raise ContractError(
            f"{entity}.{name} is used downstream but its data_type is"
            f" {column.get('data_type')!r}: declare one of {sorted(API_TYPES)} (the API's"
            f" type) in {SOURCES_YML}"
        )
    return api_type


def _field(
    p: ProjectLineage, tests: dict[str, list[dict[str, Any]]], source_id: str,
    source: dict[str, Any], name: str,
) -> dict[str, Any] | None:
    """The contract of one source field, or None when nothing downstream uses it."""
    entity, column = source["name"], source["columns"][name]
    roles = _loader_roles(entity).get(name, [])
    used = p.reach(source_id, name)
    if not used.used and not roles:
        return None
    api_type = _api_type(entity, name, column)
    not_null, accepted = _constraints(source_id, name, p.manifest, tests, p.models)
    not_null += [f"loader: {r}" for r in roles if r != "tombstone marker"]
    meta = column.get("meta") or (column.get("config") or {}).get("meta") or {}
    presence = (
        "tombstone" if "tombstone marker" in roles
        else "optional" if meta.get("contract") == "optional" else "required"
    )
    owners: set[str | None] = set(used.owners)
    if roles:
        owners.add(p.project_owner(LOADER_GROUP))
    schema: dict[str, Any] = dict(API_TYPES[api_type])
    nullable = not not_null
    if nullable:
        schema["type"] = [schema["type"], "null"]
    if accepted and accepted["severity"] == "error":
        schema["enum"] = accepted["values"] + ([None] if nullable else [])
    if column.get("description"):
        schema["description"] = " ".join(column["description"].split())
    schema["x-salesflow"] = {
        "api_type": api_type,
        "presence": presence,
        "nullable": nullable,
        "not_null_evidence": sorted(not_null),
        "read": "tolerant" if used.tolerant else "direct",
        "staging_models": sorted(p.nodes[uid]["name"] for uid in used.staging),
        "marts": {m: {"columns": list(u.columns), "rows": u.rows} for m, u in used.marts.items()},
        "exposures": list(used.exposures),
        "owners": sorted(o for o in owners if o),
        "loader": sorted(roles),
        **({"accepted_values": accepted} if accepted else {}),
    }
    return schema


def _entity(source_id: str, source: dict, fields: dict[str, dict]) -> dict[str, Any]:
    entity = source["name"]
    ep = settings.ENDPOINTS[entity]
    required = sorted(n for n, f in fields.items() if f["x-salesflow"]["presence"] == "required")
    marker = ep.get("deleted_marker")

    def union(key: str) -> list[str]:
        return sorted({v for f in fields.values() for v in f["x-salesflow"][key]})

    schema: dict[str, Any] = {
        "type": "object",
        "title": entity,
        "description": " ".join((source.get("description") or entity).split()),
        "properties": fields,
        "additionalProperties": True,
        "x-salesflow": {
            "endpoint": ep["path"],
            "primary_key": ep["primary_key"],
            "cursor": settings.cursor_of(ep),
            "change_sequence": _change_sequence(ep),
            "tombstone_marker": marker,
            "marts": sorted({m for f in fields.values() for m in f["x-salesflow"]["marts"]}),
            "exposures": union("exposures"),
            "owners": union("owners"),
        },
    }
    if marker:
        # a tombstone carries only its key, cursor and marker; live records the rest
        tombstone = sorted({ep["primary_key"], settings.cursor_of(ep), marker})
        schema["if"] = {"properties": {marker: {"type": "string"}}, "required": [marker]}
        schema["then"] = {"required": tombstone}
        schema["else"] = {"required": required}
    else:
        schema["required"] = required
    return schema


def _change_sequence(ep: settings.Endpoint) -> dict[str, Any]:
    """What the contract asks of the listing's commit sequence: recommended, and used by
    the loader once the endpoint declares it."""
    field, param = settings.sequence_of(ep) or ("change_seq", settings.PARAM_SINCE_SEQ)
    return {
        "presence": "recommended",
        "field": field,
        "parameter": param,
        "used": bool(settings.sequence_of(ep)),
        "why": RECOMMENDED_SEQUENCE,
    }


RECOMMENDED_SEQUENCE = (
    "every record, tombstones too, carries an integer that grows in commit order (the"
    " sequence number of the commit that wrote it), and the listing takes a parameter"
    " returning the records after a value of it, in that order: a loader reading by it"
    " never misses a record committed late; reading by updated_at, it tolerates only the"
    " lateness its look-back and re-reads cover"
)


def build(manifest: dict, project_root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The contract document (see the module's docstring)."""
    project = ProjectLineage.of(manifest, project_root)
    tests = _constraint_tests(manifest)
    entities: dict[str, Any] = {}
    for source_id, source in sorted(manifest["sources"].items()):
        api_entity = source["name"] in settings.ENDPOINTS
        if source["source_name"] != settings.SOURCE_NAME or not api_entity:
            continue
        fields = {}
        for name in sorted(source["columns"]):
            spec = _field(project, tests, source_id, source, name)
            if spec is not None:
                fields[name] = spec
        if fields:
            entities[source["name"]] = _entity(source_id, source, fields)
    version = project_version(project_root)
    doc: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:salesflow:contract:replica-api",
        "title": "Replica API data contract: the fields salesflow's marts depend on",
        "description": (
            "The entities and fields of the sales platform's replica API that salesflow's"
            " marts and dashboards use, derived from the dbt models' column lineage. Each"
            " entity is an object schema under $defs, validating one record of"
            " GET /v1/<entity>; the document validates {entity: [records]}. A field not"
            " listed here is not used: changing it needs no notice. x-salesflow says who"
            " depends on each field. " + HEADER
        ),
        "type": "object",
        "properties": {e: {"type": "array", "items": {"$ref": f"#/$defs/{e}"}} for e in entities},
        "$defs": entities,
        "x-salesflow": {
            "project": manifest_project(manifest),
            "project_version": version,
            "source": settings.SOURCE_NAME,
            "schema_endpoint": settings.SCHEMA_PATH,
            "breaking": (
                "an entity or a required field missing, a field's type changed, a null in a"
                " field that is not nullable, a value outside an error-level allowed set"
            ),
            "warning": "a value outside a warn-level allowed set (a new category)",
            "recommended": {"change_sequence": RECOMMENDED_SEQUENCE},
        },
    }
    digest = hashlib.sha256(canonical(doc).encode()).hexdigest()
    doc["x-salesflow"]["content_hash"] = f"sha256:{digest}"
    doc["version"] = f"{version}+{digest[:12]}"
    return doc
