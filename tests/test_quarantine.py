"""The quarantine as a dead-letter queue, through real cycles against the served
simulator: what each cycle newly held per entity, the alarm when an entity's records are
mostly held, ``salesflow quarantine`` and replaying held records exactly once."""

from __future__ import annotations

from pathlib import Path

import duckdb

from loaders.replica.settings import ENDPOINTS
from loaders.runners import pipeline
from simulator import faults
from simulator.faults import Faults
from tests.support import TOKEN


def query(path: Path, sql: str, *params: object) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_a_cycle_counts_the_records_it_newly_held_per_entity(simulator, warehouse):
    faults.save(simulator.dir, Faults(malformed_rate=0.05))
    first = pipeline.load(base_url=simulator.url, token=TOKEN)
    held = dict(query(warehouse, "select entity, count(*) from raw.quarantine group by 1"))
    assert len(held) >= 3 and first.quarantined_per_entity == held
    assert first.quarantined == sum(held.values())
    recorded = {e: q for e, q in query(
        warehouse, "select entity, rows_quarantined from raw.pipeline_loads"
    )}
    assert set(recorded) == set(ENDPOINTS)
    assert {e: q for e, q in recorded.items() if q} == held
    assert f"{first.quarantined:,} record(s) newly held" in pipeline.describe_load(first)

    faults.save(simulator.dir, Faults())
    again = pipeline.load(base_url=simulator.url, token=TOKEN)
    assert again.quarantined == 0 and again.quarantined_per_entity == {}
    [(cycles, zero)] = query(
        warehouse, "select count(distinct cycle_id), bool_and(rows_quarantined = 0)"
        " from raw.pipeline_loads where cycle_id = (select max(cycle_id) from"
        " raw.pipeline_loads)"
    )
    assert (cycles, zero) == (1, True)
