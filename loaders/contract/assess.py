"""An announced schema change checked against the contract: breaking, warning or safe.

May import: the replica client's documents (it reads a contract document it is given).
"""

from __future__ import annotations

from typing import Any, TypedDict

from loaders.replica.client import Announcement, FieldChange

# announced field changes that break a contracted field, and those that cannot
BREAKING_CHANGES = {"removed", "combined", "renamed", "type_changed"}


class Finding(TypedDict):
    """A contracted field an announcement breaks or warns about, and who depends on it."""

    entity: str
    field: str
    change: str
    verdict: str  # breaking | warning
    marts: list[str]
    exposures: list[str]
    owners: list[str]


class Assessment(TypedDict):
    """An announcement against the contract: ``verdict`` is breaking, warning or safe."""

    verdict: str
    contract_version: str | None
    fields: list[Finding]
    contracted_fields_touched: list[str]


def _announced_verdict(fc: FieldChange, info: dict[str, Any]) -> str | None:
    """'breaking', 'warning' or None (harmless) for one announced change of a field."""
    change = fc.get("change")
    if change in BREAKING_CHANGES:
        if change == "type_changed" and fc.get("new_type") == info["api_type"]:
            return None
        return None if info["presence"] == "optional" else "breaking"
    allowed = info.get("accepted_values")
    if change == "new_value" and allowed and fc.get("note") not in allowed["values"]:
        return "breaking" if allowed["severity"] == "error" else "warning"
    return None


def assess_announcement(announcement: Announcement, doc: dict[str, Any]) -> Assessment:
    """Whether an announced change breaks the contract: removing, combining, renaming or
    retyping a contracted field is breaking (from the day it is announced); a new value
    outside a field's allowed set is breaking or a warning by the test's severity; changes
    to fields the contract does not list are safe for the marts."""
    entities = doc.get("$defs", {})
    findings: list[Finding] = []
    for fc in announcement.get("changes", []):
        entity, name, change = fc.get("entity", ""), fc.get("field", ""), fc.get("change")
        field = entities.get(entity, {}).get("properties", {}).get(name)
        if field is None:
            continue
        info = field["x-salesflow"]
        verdict = _announced_verdict(fc, info)
        if verdict:
            what = str(change) + (f" into {fc['into']}" if fc.get("into") else "")
            if change == "type_changed":
                what += f" {info['api_type']} -> {fc.get('new_type')}"
            if change == "new_value":
                what += f" {fc.get('note')!r}"
            findings.append({
                "entity": entity, "field": name, "change": what, "verdict": verdict,
                "marts": sorted(info["marts"]), "exposures": info["exposures"],
                "owners": info["owners"],
            })
    verdict = (
        "breaking" if any(f["verdict"] == "breaking" for f in findings)
        else "warning" if findings else "safe"
    )
    touched = sorted({
        f"{fc.get('entity')}.{fc.get('field')}" for fc in announcement.get("changes", [])
        if fc.get("field") in entities.get(fc.get("entity"), {}).get("properties", {})
    })
    return {"verdict": verdict, "contract_version": doc.get("version"), "fields": findings,
            "contracted_fields_touched": touched}


def format_assessment(assessment: Assessment) -> str:
    version = assessment.get("contract_version")
    if assessment["verdict"] == "safe":
        touched = assessment.get("contracted_fields_touched") or []
        if not touched:
            return f"contract {version}: safe for the marts (it touches no contracted field)"
        return (f"contract {version}: safe for the marts (contracted fields"
                f" {', '.join(touched)} are only added or keep their shape)")
    head = {
        "breaking": "BREAKING for the data contract",
        "warning": "WARNING for the data contract",
    }[assessment["verdict"]]
    lines = [f"contract {version}: {head}:"]
    for f in assessment["fields"]:
        lines.append(f"  {f['entity']}.{f['field']} {f['change']} [{f['verdict']}]")
        if f["marts"]:
            lines.append(f"    marts: {', '.join(f['marts'])}")
        if f["exposures"]:
            lines.append(f"    exposures: {', '.join(f['exposures'])}")
        if f["owners"]:
            lines.append(f"    owners: {', '.join(f['owners'])}")
    return "\n".join(lines)
