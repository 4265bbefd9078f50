"""Schema change tracking: detect, record once, and explain what each change breaks.

After every load, :func:`detect` compares what arrived with what the warehouse had:

* **shape** — new tables and new columns from dlt's per-load schema updates; type changes
  as dlt variant columns (``<column>__v_<type>``) or, on entities whose data types are
  frozen by their schema contract, as fields whose API type no longer matches the raw
  column (those rows are quarantined); columns that stopped arriving (in the raw table,
  gone from the API's schema).
* **business** — new values of the categorical columns marketing segments by
  (:data:`loaders.replica.settings.CATEGORICAL`): a region, a product line, a channel.

Each change is written once to ``raw.schema_changelog`` (keyed by a hash of what
changed, so a change seen again is not logged again), which dbt documents as the
``salesflow`` source. Known categorical values live in ``raw.schema_known_values``.

:func:`impact` reads dbt's manifest to say which source column, staging models, marts,
exposures and owners a change reaches, and whether it is additive, absorbed by the
staging models (they read the column with ``column_or_null``) or breaking.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dlt.common.schema.typing import C_DLT_LOAD_ID

from loaders import warehouse
from loaders.replica import settings

CHANGELOG = "schema_changelog"
KNOWN_VALUES = "schema_known_values"

# kinds of change, and whether each is additive by nature
ADDITIVE = {"new_table", "new_column", "new_value"}
BREAKING = {"column_removed", "type_change"}


@dataclass
class Change:
    entity: str
    column: str | None
    kind: str  # new_table | new_column | type_change | column_removed | new_value
    old_type: str | None = None
    new_type: str | None = None
    value: str | None = None  # new_value: the value seen
    detail: str = ""
    category: str = "schema"  # schema | business
    load_id: str | None = None
    schema_version: int | None = None
    detected_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def change_id(self) -> str:
        ident = [self.category, self.entity, self.column, self.kind, self.new_type, self.value]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def describe(self) -> str:
        where = f"{self.entity}.{self.column}" if self.column else self.entity
        what = {
            "new_table": f"new table {self.entity}",
            "new_column": f"new column {where} ({self.new_type})",
            "type_change": f"type of {where} changed: {self.old_type} -> {self.new_type}",
            "column_removed": f"column {where} stopped arriving",
            "new_value": f"new {self.column} value {self.value!r} in {self.entity}",
        }.get(self.kind, f"{self.kind} on {where}")
        return what + (f" ({self.detail})" if self.detail else "")

    def as_dict(self) -> dict[str, Any]:
        return {"change_id": self.change_id, **asdict(self)}


def _base_column(name: str) -> tuple[str, str | None]:
    """``price__v_text`` -> (``price``, ``text``); other names -> (name, None)."""
    m = re.fullmatch(r"(.+)__v_([a-z0-9_]+)", name)
    return (m.group(1), m.group(2)) if m else (name, None)


def shape_changes(
    schema_updates: Iterable[dict[str, Any]],
    before: dict[str, dict[str, str]],
    api_fields: dict[str, dict[str, str]],
    frozen: dict[str, dict[str, tuple[str, str]]],
    entities: Sequence[str],
) -> list[Change]:
    """Shape changes of one load.

    ``schema_updates``: dlt's per-package schema updates (table -> partial table schema);
    ``before``: raw column types before the load (table -> column -> dlt type);
    ``api_fields``: the API's fields now (entity -> field -> API type);
    ``frozen``: type changes held back by a frozen contract (entity -> field -> types);
    ``entities``: the declared entities (other tables, dlt's or quarantine, are ours)."""
    from loaders.replica.helpers import DLT_TYPES

    out: list[Change] = []
    for update in schema_updates:
        for table, tschema in update.items():
            if table not in entities:
                continue
            cols = tschema.get("columns", {})
            if table not in before:
                out.append(Change(table, None, "new_table", detail=f"{len(cols)} columns"))
                continue
            for name, col in cols.items():
                if name.startswith("_dlt") or name in before[table]:
                    continue
                base, variant = _base_column(name)
                if variant and base in before[table]:
                    out.append(
                        Change(
                            table, base, "type_change", before[table][base],
                            col.get("data_type"), detail=f"new values load into {name}",
                        )
                    )
                else:
                    out.append(Change(table, name, "new_column", new_type=col.get("data_type")))
    for entity, fields in frozen.items():
        for name, (old, new) in fields.items():
            out.append(
                Change(
                    entity, name, "type_change", old, DLT_TYPES.get(new, new),
                    detail=f"data types are frozen on {entity}: rows quarantined",
                )
            )
    for entity, fields in api_fields.items():
        had = before.get(entity)
        if not had or not fields:
            continue
        ep = settings.ENDPOINTS.get(entity, {})
        keep = {ep.get("deleted_marker")}
        for name in had:
            base, variant = _base_column(name)
            if name.startswith("_dlt") or name in keep or variant or name in fields:
                continue
            out.append(Change(entity, name, "column_removed", old_type=had[name]))
    return out


def business_changes(
    distinct: dict[tuple[str, str], set[str]], known: dict[tuple[str, str], set[str]]
) -> tuple[list[Change], list[tuple[str, str, str]]]:
    """New categorical values: (changes, values to remember). A column seen for the
    first time sets its baseline without reporting every value as new."""
    changes, remember = [], []
    for (entity, column), values in distinct.items():
        seen = known.get((entity, column))
        for v in sorted(values - (seen or set())):
            remember.append((entity, column, v))
            if seen:  # a baseline exists: this value is new
                changes.append(
                    Change(entity, column, "new_value", value=v, category="business")
                )
    return changes, remember


# ---------------------------------------------------------------------------- storage


def ensure_tables(sql: Any, dataset: str) -> None:
    """Create the changelog tables (portable SQL; ``sql`` is a dlt sql client)."""
    sql.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {dataset}.{CHANGELOG} ("
        " change_id VARCHAR PRIMARY KEY, load_id VARCHAR, detected_at TIMESTAMP WITH TIME"
        " ZONE, category VARCHAR, entity VARCHAR, column_name VARCHAR, change_kind VARCHAR,"
        " old_type VARCHAR, new_type VARCHAR, value VARCHAR, detail VARCHAR,"
        " schema_version INTEGER)"
    )
    sql.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {dataset}.{KNOWN_VALUES} (entity VARCHAR, column_name"
        " VARCHAR, value VARCHAR, first_seen_at TIMESTAMP WITH TIME ZONE,"
        " PRIMARY KEY (entity, column_name, value))"
    )


def record(sql: Any, dataset: str, changes: Sequence[Change]) -> list[Change]:
    """Insert the changes not logged before; returns those (the new ones)."""
    if not changes:
        return []
    ids = [c.change_id for c in changes]
    marks = ", ".join(["%s"] * len(ids))
    logged = {
        r[0]
        for r in sql.execute_sql(
            f"SELECT change_id FROM {dataset}.{CHANGELOG} WHERE change_id IN ({marks})", *ids
        )
        or []
    }
    new, seen = [], set(logged)
    for c in changes:
        if c.change_id in seen:
            continue
        seen.add(c.change_id)
        sql.execute_sql(
            f"INSERT INTO {dataset}.{CHANGELOG} VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            c.change_id, c.load_id, c.detected_at, c.category, c.entity, c.column, c.kind,
            c.old_type, c.new_type, c.value, c.detail, c.schema_version,
        )
        new.append(c)
    return new


def known_values(sql: Any, dataset: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for entity, column, value in sql.execute_sql(
        f"SELECT entity, column_name, value FROM {dataset}.{KNOWN_VALUES}"
    ) or []:
        out.setdefault((entity, column), set()).add(value)
    return out


def remember_values(sql: Any, dataset: str, rows: Sequence[tuple[str, str, str]]) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for entity, column, value in rows:
        sql.execute_sql(
            f"INSERT INTO {dataset}.{KNOWN_VALUES} VALUES (%s, %s, %s, %s)",
            entity, column, value, now,
        )


def distinct_values(
    sql: Any,
    dataset: str,
    columns: dict[str, Sequence[str]],
    existing: dict[str, Any],
    known: dict[tuple[str, str], set[str]] | None = None,
    since: str | None = None,
) -> dict[tuple[str, str], set[str]]:
    """Distinct non-null values of each categorical column present in raw. A column
    with a baseline in ``known`` is read only in the rows written by loads after
    ``since`` (a load id; a new value comes with a new or changed row), which keeps a
    cycle from scanning whole tables; a column without one is read whole."""
    out = {}
    for entity, names in columns.items():
        have = existing.get(entity) or {}
        for name in names:
            if name not in have:
                continue
            column = sql.escape_column_name(name)
            where, args = f"{column} IS NOT NULL", []
            # dlt stamps every raw row with the load that wrote it
            if since and (known or {}).get((entity, name)) and C_DLT_LOAD_ID in have:
                where += f" AND {sql.escape_column_name(C_DLT_LOAD_ID)} > %s"
                args = [since]
            rows = sql.execute_sql(
                f"SELECT DISTINCT CAST({column} AS VARCHAR)"
                f" FROM {dataset}.{sql.escape_column_name(entity)} WHERE {where}", *args
            )
            out[(entity, name)] = {r[0] for r in rows or []}
    return out


def read_changelog(sql: Any, dataset: str, limit: int = 200) -> list[dict[str, Any]]:
    rows = sql.execute_sql(
        f"SELECT change_id, load_id, detected_at, category, entity, column_name, change_kind,"
        f" old_type, new_type, value, detail, schema_version FROM {dataset}.{CHANGELOG}"
        f" ORDER BY detected_at DESC, entity, column_name LIMIT {int(limit)}"
    ) or []
    keys = ["change_id", "load_id", "detected_at", "category", "entity", "column", "kind",
            "old_type", "new_type", "value", "detail", "schema_version"]
    return [dict(zip(keys, r, strict=True)) for r in rows]


# ----------------------------------------------------------------------------- impact


def _reads_column(node: dict[str, Any], column: str) -> str | None:
    """How a model reads ``column``: 'tolerant' (through column_or_null, so it builds
    with or without it), 'direct', 'maybe' (its SQL is generated by Jinja and not
    compiled yet: assume it does), or None."""
    raw, compiled = node.get("raw_code", ""), node.get("compiled_code")
    if re.search(rf"column_or_null\([^)]*['\"]{re.escape(column)}['\"]", raw):
        return "tolerant"
    pattern = rf"(?<!\w){re.escape(column)}(?!\w)"
    if re.search(pattern, compiled or raw):
        return "direct"
    if compiled is None and "{%" in raw:
        return "maybe"
    return None


def impact(
    manifest: dict[str, Any],
    entity: str,
    column: str | None,
    kind: str,
    source_name: str = settings.SOURCE_NAME,
) -> dict[str, Any]:
    """What a change to ``entity.column`` reaches in the dbt project, and how badly."""
    source_id = next(
        (
            sid
            for sid, s in manifest.get("sources", {}).items()
            if s.get("source_name") == source_name and s.get("name") == entity
        ),
        None,
    )
    report: dict[str, Any] = {
        "source": f"{source_name}.{entity}",
        "column": column,
        "kind": kind,
        "documented_column": False,
        "staging_models": [],
        "downstream_models": [],
        "exposures": [],
        "owners": [],
        "tests": [],
    }
    if source_id is None:
        report["classification"] = "additive" if kind in ADDITIVE else "unknown"
        report["advice"] = (
            f"no dbt source reads {entity} yet: declare it in models/staging/ to use it"
        )
        return report
    src = manifest["sources"][source_id]
    report["documented_column"] = bool(column and column in src.get("columns", {}))
    nodes, exposures = manifest.get("nodes", {}), manifest.get("exposures", {})
    child_map = manifest.get("child_map", {})
    staging, reads = [], {}
    for child in child_map.get(source_id, []):
        node = nodes.get(child)
        if node and node.get("resource_type") == "model":
            how = _reads_column(node, column) if column else "direct"
            if how:
                staging.append(node["name"])
                reads[child] = how
    # everything downstream of the staging models that read the column
    seen, queue = set(reads), list(reads)
    downstream, exposure_names, owners, groups = [], [], set(), set()
    while queue:
        nid = queue.pop(0)
        for child in child_map.get(nid, []):
            if child in seen:
                continue
            seen.add(child)
            queue.append(child)
            if child in exposures:
                e = exposures[child]
                exposure_names.append(e["name"])
                owner = e.get("owner") or {}
                owners.add(owner.get("email") or owner.get("name") or "")
            node = nodes.get(child)
            if node and node.get("resource_type") == "model":
                downstream.append(node["name"])
                if node.get("group"):
                    groups.add(node["group"])
    for g in groups:
        owner = (manifest.get("groups", {}).get(f"group.{manifest_project(manifest)}.{g}")
                 or {}).get("owner") or {}
        owners.add(owner.get("email") or owner.get("name") or "")
    tests = [
        n["name"]
        for tid in child_map.get(source_id, []) + [c for s in reads for c in child_map.get(s, [])]
        if (n := nodes.get(tid)) and n.get("resource_type") == "test"
        and (column is None or n.get("column_name") == column
             or column in json.dumps(n.get("test_metadata", {}).get("kwargs", {})))
    ]
    if kind in ADDITIVE:
        classification = "additive"
    elif not reads:
        classification = "additive"  # nothing reads it: nothing breaks
    elif all(how == "tolerant" for how in reads.values()):
        classification = "absorbed"
    else:
        classification = "breaking"
    advice = {
        "additive": "nothing breaks; document the column in the source and use it when needed",
        "absorbed": "staging reads both shapes (column_or_null); check the values downstream",
        "breaking": "update the staging models listed before the change lands; the marts"
        " and exposures listed depend on them",
    }[classification]
    if kind == "new_value":
        advice = (
            "a new category: check accepted_values tests and reference seeds"
            " (e.g. region_reference, currency_rates) so it is mapped, not dropped"
        )
    report.update(
        staging_models=sorted(staging),
        downstream_models=sorted(set(downstream)),
        exposures=sorted(exposure_names),
        owners=sorted(o for o in owners if o),
        tests=sorted(set(tests)),
        classification=classification,
        advice=advice,
    )
    return report


def manifest_project(manifest: dict[str, Any]) -> str:
    return manifest.get("metadata", {}).get("project_name") or "salesflow"


def load_manifest(project_root: Path, target: Path | None = None) -> dict[str, Any]:
    """dbt's manifest (``target/manifest.json``, or under ``DBT_TARGET_PATH`` as dbt
    writes it), parsed first if it is not there."""
    target = target or warehouse.dbt_target(project_root)
    path = target / "manifest.json"
    if not path.exists():
        from loaders.pipeline import _dbt

        _dbt("parse")
    return json.loads(path.read_text())


def format_impact(change: str, report: dict[str, Any]) -> str:
    lines = [f"{change}", f"  impact: {report['classification'].upper()} — {report['advice']}"]
    for label, key in (
        ("staging models", "staging_models"),
        ("downstream models", "downstream_models"),
        ("exposures", "exposures"),
        ("owners", "owners"),
        ("tests", "tests"),
    ):
        if report.get(key):
            lines.append(f"  {label}: {', '.join(report[key])}")
    return "\n".join(lines)
