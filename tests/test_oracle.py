"""The reliability oracle compares raw's content, not only keys and versions."""

from __future__ import annotations

from pathlib import Path

import duckdb

from benchmarks import oracle
from loaders.runners import pipeline
from tests.support import TOKEN


def test_raw_content_is_compared_column_by_column(simulator, platform_dir: Path,
                                                  warehouse: Path) -> None:
    pipeline.load(base_url=simulator.url, token=TOKEN)
    found = oracle.content(platform_dir, warehouse)
    assert all(r["mismatches"] == 0 and not r["columns_missing"] for r in found.values()), found
    assert sum(r["columns_compared"] for r in found.values()) > 30
    with duckdb.connect(str(warehouse)) as con:
        [(order_id, channel)] = con.execute(
            "select order_id, channel from raw.orders order by order_id limit 1"
        ).fetchall()
        con.execute("update raw.orders set channel = channel || '?' where order_id = ?",
                    [order_id])
        con.execute("update raw.events set occurred_at = occurred_at + interval 1"
                    " microsecond where event_id = (select min(event_id) from raw.events)")
    found = oracle.content(platform_dir, warehouse)
    assert found["orders"]["mismatches"] == 1
    assert found["orders"]["examples"] == [{
        "entity": "orders", "key": order_id, "column": "channel", "served": channel,
        "raw": channel + "?",
    }]
    assert found["events"]["mismatches"] == 1
    assert found["events"]["examples"][0]["column"] == "occurred_at"
