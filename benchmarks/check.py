"""Check that a benchmark result file has every figure (not that the goals are met).

    python -m benchmarks.check target/bench-smoke.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REQUIRED = {
    "load": ["rows", "rows_per_s", "duckdb_read_json_rows_per_s", "ratio",
             "baseline_dlt_dicts_rows_per_s", "speedup_vs_baseline"],
    "memory": ["peak_rss_mb"],
    "cycle": ["full_s", "delta_1pct_s", "noop_s", "delta_ratio", "noop_ratio"],
    "freshness": ["p50_s", "p95_s"],
    "machine": ["cores", "memory_mb", "python", "duckdb", "dlt", "dbt"],
}


def problems(results: dict) -> list[str]:
    out = []
    for section, keys in REQUIRED.items():
        for key in keys:
            value = (results.get(section) or {}).get(key)
            if value is None:
                out.append(f"missing {section}.{key}")
            elif section != "machine" and not (isinstance(value, int | float) and value >= 0):
                out.append(f"{section}.{key} is not a non-negative number: {value!r}")
    if not results.get("measured_at"):
        out.append("missing measured_at")
    if (results.get("load") or {}).get("rows", 0) <= 0:
        out.append("load.rows: nothing was loaded")
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "benchmarks/results.json")
    found = problems(json.loads(path.read_text()))
    for p in found:
        print(f"{path}: {p}", file=sys.stderr)
    if not found:
        print(f"{path}: every figure present")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
