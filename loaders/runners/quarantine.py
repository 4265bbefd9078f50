"""The quarantine after each cycle: the records it newly holds, per entity.

``raw.quarantine`` is one table for every entity, merged on a hash of the entity and the
record, so a bad record the lookback window reads again is held once. The records a cycle
newly held are what the table holds after the load beyond what it held before, per
entity: one ``group by`` each side of the load, on a table that is empty when all is well.
A record read again is not counted again, just as a row read again unchanged is not
loaded again: the counts are new records, comparable with the rows loaded.

May import: every service and the foundations (see :mod:`loaders.runners`); not the
pipeline runner, which imports this.
"""

from __future__ import annotations

from typing import Any

import dlt

from loaders import warehouse
from loaders.replica import settings as replica_settings

QUARANTINE = replica_settings.QUARANTINE_TABLE


def held_counts(pipeline: dlt.Pipeline) -> dict[str, int]:
    """Records held in ``raw.quarantine`` now, per entity."""
    with pipeline.sql_client() as sql:
        return _held_counts(sql)


def _held_counts(sql: Any) -> dict[str, int]:
    if QUARANTINE not in warehouse.raw_tables(sql):
        return {}
    rows = sql.execute_sql(
        f"select entity, count(*) from {sql.make_qualified_table_name(QUARANTINE)}"
        " group by entity"
    )
    return {str(entity): int(n) for entity, n in rows or []}


def newly_held(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Records held after a load beyond those held before it, per entity (only those
    with some)."""
    grown = {e: n - before.get(e, 0) for e, n in after.items()}
    return {e: n for e, n in sorted(grown.items()) if n > 0}
