"""What a source field reaches in the dbt project: the one answer, from column lineage.

:class:`ProjectLineage` follows column lineage through the compiled models
(:mod:`.lineage`). :meth:`ProjectLineage.reach` says which staging models read a field,
which models, mart columns (or mart rows: a filter, join or group key on the way),
exposures, owners and tests it flows into, and whether every staging model reads it
tolerantly (through ``column_or_null``, so they build with or without it). The data
contract, impact reports and notifications all ask it, so they cannot disagree.

May import: :mod:`.lineage`, :mod:`.compile` and :mod:`loaders.dbt_project`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from loaders.config import PROJECT_ROOT
from loaders.contract import lineage
from loaders.contract.compile import compiled_manifest, fingerprint
from loaders.dbt_project import manifest_project


@dataclass(frozen=True)
class MartUse:
    """How a field reaches one mart: the columns it flows into, and whether it decides
    which rows the mart has."""

    columns: tuple[str, ...] = ()
    rows: bool = False


@dataclass(frozen=True)
class FieldReach:
    """Everything one source field (or, with ``field`` None, a whole entity) reaches."""

    source_id: str
    entity: str
    field: str | None
    staging: tuple[str, ...] = ()  # unique ids of the models reading it from the source
    models: tuple[str, ...] = ()  # unique ids of every model it flows into, staging too
    marts: dict[str, MartUse] = dataclass_field(default_factory=dict)  # by mart name
    exposures: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()  # data tests on a column it reaches
    tolerant: bool = False  # every staging model reads it through column_or_null

    @property
    def used(self) -> bool:
        """Whether anything analysts see depends on it (a mart or an exposure)."""
        return bool(self.marts or self.exposures)


def project_lineage(
    manifest: dict[str, Any], project_root: Path = PROJECT_ROOT
) -> dict[str, lineage.ModelLineage]:
    """Column lineage of every compiled model, in dependency order."""
    project = lineage.Project()
    for uid, source in manifest["sources"].items():
        project.add(uid, source["relation_name"], source["columns"])
    for uid, node in manifest["nodes"].items():
        if node["resource_type"] == "seed":
            with open(project_root / node["original_file_path"], newline="") as fh:
                project.add(uid, node["relation_name"], next(csv.reader(fh), []))
    models = {
        uid: n for uid, n in manifest["nodes"].items()
        if n["resource_type"] == "model" and n.get("compiled_code")
    }
    order: list[str] = []
    seen: set[str] = set()

    def visit(uid: str) -> None:
        if uid in seen or uid not in models:
            return
        seen.add(uid)
        for parent in sorted(models[uid]["depends_on"]["nodes"]):
            visit(parent)
        order.append(uid)

    for uid in sorted(models):
        visit(uid)
    result = {}
    for uid in order:
        result[uid] = lineage.analyse(uid, models[uid]["compiled_code"], project)
        project.add(uid, models[uid]["relation_name"], result[uid].columns)
    return result


def owner_name(owner: dict[str, Any] | None) -> str | None:
    """``Name <email>``, or whichever of the two is given."""
    owner = owner or {}
    name, email = owner.get("name"), owner.get("email")
    if name and email:
        return f"{name} <{email}>"
    return name or email


def is_mart(node: dict[str, Any]) -> bool:
    return node.get("resource_type") == "model" and "marts" in node.get("fqn", [])[1:-1]


def reads_tolerantly(model: dict[str, Any], field_name: str) -> bool:
    """Whether a model reads a source field through ``column_or_null``."""
    pattern = rf"column_or_null\([^)]*['\"]{re.escape(field_name)}['\"]"
    return bool(re.search(pattern, model.get("raw_code", "")))


def tested_node(test: dict[str, Any]) -> str | None:
    """The node a data test tests: the one it is attached to, else its only parent."""
    parents = test.get("depends_on", {}).get("nodes", [])
    return test.get("attached_node") or (parents[0] if len(parents) == 1 else None)


def _tests_by_column(manifest: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """Data tests by the (node, lower-case column) they test."""
    out: dict[tuple[str, str], list[str]] = {}
    for node in manifest["nodes"].values():
        if node["resource_type"] != "test" or not node.get("column_name"):
            continue
        if attached := tested_node(node):
            out.setdefault((attached, node["column_name"].lower()), []).append(node["name"])
    return out


@dataclass(frozen=True)
class ProjectLineage:
    """The compiled manifest with every model's column lineage: what a field reaches."""

    manifest: dict[str, Any]
    models: dict[str, lineage.ModelLineage]
    graph: dict[lineage.Ref, set[lineage.Ref]]
    tests: dict[tuple[str, str], list[str]]

    @classmethod
    def of(cls, manifest: dict[str, Any], project_root: Path = PROJECT_ROOT) -> ProjectLineage:
        models = project_lineage(manifest, project_root)
        return cls(manifest, models, lineage.edges(models), _tests_by_column(manifest))

    @property
    def nodes(self) -> dict[str, Any]:
        return self.manifest["nodes"]

    def group_owner(self, package: str, group: str) -> str | None:
        groups = self.manifest.get("groups", {})
        return owner_name((groups.get(f"group.{package}.{group}") or {}).get("owner"))

    def project_owner(self, group: str) -> str | None:
        return self.group_owner(manifest_project(self.manifest), group)

    def source_id(self, source_name: str, entity: str) -> str | None:
        """The unique id of a declared source table, or None."""
        return next(
            (sid for sid, s in self.manifest["sources"].items()
             if s.get("source_name") == source_name and s.get("name") == entity),
            None,
        )

    def reach(self, source_id: str, field_name: str | None) -> FieldReach:
        """What a source field reaches (``field_name`` None: any field of the table)."""
        source = self.manifest["sources"][source_id]
        names: Iterable[str] = [field_name] if field_name else source.get("columns", {})
        starts = {(source_id, n) for n in names}
        reached: set[lineage.Ref] = set()
        for start in starts:
            reached |= lineage.reach(self.graph, start)
        touched = {uid for uid, _ in reached}
        staging = sorted(
            uid for uid, m in self.models.items()
            if starts & m.rows or any(starts & refs for refs in m.columns.values())
        )
        touched |= set(staging)
        marts: dict[str, dict[str, Any]] = {}
        owners: set[str | None] = set()
        for uid, column in sorted(reached):
            node = self.nodes.get(uid, {})
            if not is_mart(node):
                continue
            entry = marts.setdefault(node["name"], {"columns": [], "rows": False})
            if column == lineage.ROWS:
                entry["rows"] = True
            elif column not in entry["columns"]:
                entry["columns"].append(column)
            if node.get("group"):
                owners.add(self.group_owner(node["package_name"], node["group"]))
        exposures = [
            e for e in self.manifest.get("exposures", {}).values()
            if touched & set(e.get("depends_on", {}).get("nodes", []))
        ]
        owners |= {owner_name(e.get("owner")) for e in exposures}
        columns = reached | starts
        tests = {
            name for (uid, column) in columns
            for name in self.tests.get((uid, column.lower()), [])
        }
        tolerant = bool(field_name) and bool(staging) and all(
            reads_tolerantly(self.nodes[uid], field_name or "") for uid in staging
        )
        return FieldReach(
            source_id=source_id,
            entity=source["name"],
            field=field_name,
            staging=tuple(staging),
            models=tuple(sorted(touched & set(self.models))),
            marts={k: MartUse(tuple(sorted(v["columns"])), v["rows"])
                   for k, v in sorted(marts.items())},
            exposures=tuple(sorted(e["name"] for e in exposures)),
            owners=tuple(sorted(o for o in owners if o)),
            tests=tuple(sorted(tests)),
            tolerant=tolerant,
        )


_CACHE: dict[tuple[str, str], ProjectLineage] = {}


def current(project_root: Path = PROJECT_ROOT, work_dir: Path | None = None) -> ProjectLineage:
    """The lineage of the project as its files are now: compiled when they changed
    (:func:`.compile.compiled_manifest`), analysed once per process and version."""
    key = (str(project_root), fingerprint(project_root))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = ProjectLineage.of(compiled_manifest(project_root, work_dir), project_root)
    return _CACHE[key]
