"""What a change reaches in the dbt project, and how badly.

The answer comes from the project's column lineage (:mod:`loaders.contract.reach`), the
same one the data contract is built from, so an impact report and the contract never
disagree. A change is **additive** (new tables, columns and values; or nothing reads the
field), **absorbed** (every staging model reading the field does so through
``column_or_null``, so it builds with or without it) or **breaking** (a staging model
reads it directly: the marts and exposures listed depend on it); **unknown** when the
lineage could not be worked out (impact is advice: that never stops a load).

May import: :mod:`.changes`, :mod:`loaders.contract` and the replica source (settings,
field mappings).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, overload

from loaders.contract import reach
from loaders.replica import settings
from loaders.replica.mapping import FieldMap, targets_of
from loaders.schema_changes.changes import ADDITIVE, BREAKING

log = logging.getLogger(__name__)

Lineage = reach.ProjectLineage
# the project's lineage, or a way to get it when first needed (None: not available)
LineageSource = Lineage | Callable[[], Lineage | None] | None

ADVICE = {
    "additive": "nothing breaks; document the column in the source and use it when needed",
    "absorbed": "staging reads both shapes (column_or_null); check the values downstream",
    "breaking": "update the staging models listed before the change lands; the marts"
    " and exposures listed depend on them",
    "mapped": "absorbed by the field mapping {mapping}: the raw column keeps its name and"
    " type; replay records held before it with `salesflow quarantine replay`",
}
NEW_VALUE_ADVICE = (
    "a new category: check accepted_values tests and reference seeds"
    " (e.g. region_reference, currency_rates) so it is mapped, not dropped"
)


@dataclass(frozen=True)
class Impact:
    """What one change to ``source``.``column`` reaches, and what to do about it."""

    source: str  # <source name>.<entity>
    column: str | None
    kind: str  # a change kind of :mod:`.changes`
    classification: str  # additive | absorbed | breaking | unknown
    advice: str
    documented_column: bool = False
    staging_models: list[str] = field(default_factory=list)
    downstream_models: list[str] = field(default_factory=list)
    exposures: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """As notices and ``salesflow schema impact --json`` carry it."""
        return asdict(self)


def current_lineage() -> Lineage | None:
    """The project's lineage now, or None (logged) when it cannot be worked out."""
    try:
        return reach.current()
    except Exception as exc:  # impact is advice: a project that does not compile never
        log.warning("dbt lineage unavailable, impact not computed: %s", exc)  # stops a load
        return None


def resolve(source: LineageSource) -> Lineage | None:
    """The lineage ``source`` stands for, asking for it if it is a way to get it."""
    return source() if callable(source) else source


@overload
def once(source: Callable[[], Lineage | None]) -> Callable[[], Lineage | None]: ...
@overload
def once(source: LineageSource) -> LineageSource: ...
def once(source: LineageSource) -> LineageSource:
    """``source``, asked at most once: compiling the project's lineage takes seconds, and
    a cycle may need it for many notices, or for none."""
    if not callable(source):
        return source
    answer: list[Lineage | None] = []

    def get() -> Lineage | None:
        if not answer:
            answer.append(source())
        return answer[0]

    return get


def impact(
    lineage: Lineage | None,
    entity: str,
    column: str | None,
    kind: str,
    source_name: str = settings.SOURCE_NAME,
    maps: tuple[FieldMap, ...] = (),
) -> Impact:
    """What a change of ``kind`` to ``entity.column`` (None: the whole entity) reaches.
    ``maps``: the entity's field mappings: a raw column a mapping fills is absorbed; an
    API field a mapping reads reaches what its raw column reaches."""
    where = f"{source_name}.{entity}"
    mapped = next((m for m in maps if m.target == column), None)
    feeds = targets_of(maps).get(column or "")
    if feeds is not None:
        column = feeds.target
    if lineage is None:
        return Impact(where, column, kind, "unknown", "dbt lineage not available")
    source_id = lineage.source_id(source_name, entity)
    if source_id is None:
        return Impact(
            where, column, kind, "additive" if kind in ADDITIVE else "unknown",
            f"no dbt source reads {entity} yet: declare it in models/staging/ to use it",
        )
    declared = lineage.manifest["sources"][source_id].get("columns", {})
    found = lineage.reach(source_id, column)
    staging = set(found.staging)
    if kind in ADDITIVE or not staging:
        classification = "additive"  # nothing reads it: nothing breaks
    elif (mapped is not None and kind in BREAKING) or found.tolerant:
        classification = "absorbed"
    else:
        classification = "breaking"
    nodes = lineage.nodes
    return Impact(
        source=where,
        column=column,
        kind=kind,
        classification=classification,
        advice=(
            NEW_VALUE_ADVICE if kind == "new_value"
            else ADVICE["mapped"].format(mapping=mapped.describe())
            if mapped is not None and classification == "absorbed"
            else ADVICE[classification]
        ),
        documented_column=bool(column and column in declared),
        staging_models=sorted(nodes[uid]["name"] for uid in staging),
        downstream_models=sorted(
            {nodes[uid]["name"] for uid in found.models if uid not in staging}
        ),
        exposures=list(found.exposures),
        owners=list(found.owners),
        tests=list(found.tests),
    )


def format_impact(change: str, report: Impact) -> str:
    """An impact for people: the change, the verdict and advice, then what it reaches."""
    lines = [change, f"  impact: {report.classification.upper()} — {report.advice}"]
    for label, names in (
        ("staging models", report.staging_models),
        ("downstream models", report.downstream_models),
        ("exposures", report.exposures),
        ("owners", report.owners),
        ("tests", report.tests),
    ):
        if names:
            lines.append(f"  {label}: {', '.join(names)}")
    return "\n".join(lines)
