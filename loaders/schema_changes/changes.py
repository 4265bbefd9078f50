"""A detected change of the replica's shape or business values, as it is logged.

May import: nothing of the project.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

# kinds of change, and whether each is additive by nature; ``schema_disagrees``: the
# API's self-description says otherwise than its records
ADDITIVE = {"new_table", "new_column", "new_value"}
BREAKING = {"column_removed", "type_change"}


@dataclass
class Change:
    entity: str
    column: str | None
    kind: str  # new_table | new_column | type_change | column_removed | new_value |
    # schema_disagrees
    old_type: str | None = None
    new_type: str | None = None
    value: str | None = None  # new_value: the value seen
    detail: str = ""
    category: str = "schema"  # schema | business
    load_id: str | None = None
    schema_version: int | None = None
    # evidence of a change seen in the records: how many, one value, and whether the
    # API's /v1/schema says the same (None: it was not asked, or has no schema)
    observed_in: str = "schema"  # schema | records
    rows: int | None = None
    sample: str | None = None
    schema_agrees: bool | None = None
    related: str | None = None  # the other field of a likely rename or nesting
    announced: bool = False  # an announcement foretold it
    detected_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def change_id(self) -> str:
        ident = [self.category, self.entity, self.column, self.kind, self.new_type, self.value]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def describe(self, detail: bool = True) -> str:
        where = f"{self.entity}.{self.column}" if self.column else self.entity
        what = {
            "new_table": f"new table {self.entity}",
            "new_column": f"new column {where} ({self.new_type})",
            "type_change": f"type of {where} changed: {self.old_type} -> {self.new_type}",
            "column_removed": f"column {where} stopped arriving",
            "new_value": f"new {self.column} value {self.value!r} in {self.entity}",
            "schema_disagrees": f"/v1/schema disagrees with the records of {self.entity}"
            f" on {self.value}",
        }.get(self.kind, f"{self.kind} on {where}")
        return what + (f" ({self.detail})" if self.detail and detail else "")

    def as_dict(self) -> dict[str, Any]:
        return {"change_id": self.change_id, **asdict(self)}
