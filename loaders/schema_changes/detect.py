"""Detect what changed in one load, from what arrived and what the warehouse had.

* **shape** — new tables and new columns from dlt's per-load schema updates; type changes
  as dlt variant columns (``<column>__v_<type>``) or, on entities whose data types are
  frozen by their schema contract, as fields whose API type no longer matches the raw
  column (those rows are quarantined); columns that stopped arriving (in the raw table,
  gone from the API's schema).
* **business** — new values of the categorical columns marketing segments by
  (:data:`loaders.replica.settings.CATEGORICAL`): a region, a product line, a channel.

May import: :mod:`.changes` and the replica source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from loaders.replica import settings
from loaders.replica.pages import DLT_TYPES
from loaders.schema_changes.changes import Change


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
    for entity, held in frozen.items():
        for name, (old, new) in held.items():
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
