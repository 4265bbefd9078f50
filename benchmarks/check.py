"""Check that a benchmark result file has every figure (not that the goals are met),
and that a reliability result file (benchmarks/chaos.py) has every figure and shows
nothing lost, duplicated or different.

    python -m benchmarks.check target/bench-smoke.json
    python -m benchmarks.check --reliability target/chaos-smoke.json
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
    "freshness": ["p50_s", "p95_s", "p99_s", "max_s", "periodic_test_runs",
                  "reader_queries", "reader_errors", "cycle_mean_s", "cycle_p50_s"],
    "freshness_ideal": ["p50_s", "p95_s", "p99_s", "max_s"],
    "json": ["parse_rows", "parse_ndjson_rows_per_s", "parse_json_rows_per_s", "parse_ratio"],
    "machine": ["cores", "memory_mb", "python", "duckdb", "dlt", "dbt"],
}
# the realistic freshness run's conditions, and what each must be
CONDITIONS = {"replica_lag_s": lambda v: isinstance(v, int | float) and v > 0,
              "reader_held": lambda v: v is True, "seconds": lambda v: v and v > 0,
              "late_commits": lambda v: v is True, "clock_skew": lambda v: v is True}
# the figures of the history's scale (``scale_<scale>``), and the processes measured
SCALE = ["orders", "backfill_s", "first_publish_s", "freshness_p95_s"]
PROCESSES = ["loader", "watch"]
# the end-to-end JSON figures (the envelope profile's backfill)
JSON_LOAD = ["load_orders", "load_rows", "load_ndjson_rows_per_s", "load_json_rows_per_s",
             "load_ratio"]


def problems(results: dict) -> list[str]:
    out = []
    for section, keys in REQUIRED.items():
        for key in keys:
            value = (results.get(section) or {}).get(key)
            if value is None:
                out.append(f"missing {section}.{key}")
            elif section != "machine" and not (isinstance(value, int | float) and value >= 0):
                out.append(f"{section}.{key} is not a non-negative number: {value!r}")
    figures = results.get("json") or {}
    for key in JSON_LOAD:
        value = figures.get(key)
        if not (isinstance(value, int | float) and value > 0):
            out.append(f"json.{key} is missing or not a positive number: {value!r}")
    out += _realistic(results)
    if figures.get("parse_rows", 1) <= 0:
        out.append("json.parse_rows: no page was parsed")
    if not results.get("measured_at"):
        out.append("missing measured_at")
    if (results.get("load") or {}).get("rows", 0) <= 0:
        out.append("load.rows: nothing was loaded")
    return out


def _realistic(results: dict) -> list[str]:
    """The realistic freshness run's conditions and reader, the steady-state delta's
    model timings and the scale's figures."""
    out = []
    fresh = results.get("freshness") or {}
    conditions = fresh.get("conditions") or {}
    for key, ok in CONDITIONS.items():
        if not ok(conditions.get(key)):
            out.append(f"freshness.conditions.{key} is {conditions.get(key)!r}")
    if not fresh.get("reader_queries"):
        out.append("freshness.reader_queries: the analyst never queried")
    if fresh.get("reader_errors"):
        out.append(f"freshness.reader_errors: {fresh['reader_errors']} analyst queries failed")
    if not fresh.get("periodic_test_runs"):
        out.append("freshness.periodic_test_runs: no data test run in the window")
    models = (results.get("cycle") or {}).get("delta_models")
    if not (models and all(isinstance(m.get("seconds"), int | float) for m in models)):
        out.append("cycle.delta_models: no model timings of the delta cycle")
    name = f"scale_{results.get('scale')}"
    at_scale = results.get(name) or {}
    for key in SCALE:
        value = at_scale.get(key)
        if not (isinstance(value, int | float) and value > 0):
            out.append(f"{name}.{key} is missing or not a positive number: {value!r}")
    peaks = at_scale.get("peak_rss_mb") or {}
    for process in PROCESSES:
        if not (isinstance(peaks.get(process), int) and peaks[process] > 0):
            out.append(f"{name}.peak_rss_mb.{process} is missing: {peaks.get(process)!r}")
    ratio = at_scale.get("steady_cycle_ratio")
    if results.get("scale") == "large" and not (isinstance(ratio, int | float) and ratio > 0):
        out.append(f"{name}.steady_cycle_ratio is missing ({ratio!r}): run the default"
                   " scale first, its cycle is the reference")
    return out


RELIABILITY_COUNTS = ["kills", "outage_cycles", "rows_expected", "rows_found", "lost_rows",
                      "duplicate_pks", "http_fault_rate", "http_ratio", "watch_kills",
                      "watch_kills_during_publication", "watch_recoveries",
                      "content_columns", "content_mismatches"]
# the fewest rows a reconciliation must cover, per scale (an empty or tiny run proves
# nothing); a scale not listed must cover the largest
ROWS_FLOOR = {"smoke": 5_000, "default": 100_000}
# SIGKILLs of `salesflow watch` a run must include
WATCH_KILLS_MIN = 10
# what must hold, whatever the scale
RELIABILITY_EXACT = {"lost_rows": 0, "unexpected_rows": 0, "duplicate_pks": 0,
                     "mart_checksum_match": True, "raw_checksums_match": True,
                     "revenue_match": True, "outage_alerts": 1, "recovery_notices": 1,
                     "raw_content_match": True, "content_mismatches": 0,
                     "published_marts_match": True, "passed": True}


def reliability_problems(results: dict) -> list[str]:
    out = []
    for key in RELIABILITY_COUNTS:
        value = results.get(key)
        if not (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
            out.append(f"{key} is missing or not a non-negative number: {value!r}")
    for key, want in RELIABILITY_EXACT.items():
        if results.get(key) != want:
            out.append(f"{key} is {results.get(key)!r}, must be {want!r}")
    if not results.get("kills"):
        out.append("kills: the pipeline was never killed")
    floor = ROWS_FLOOR.get(results.get("scale"), max(ROWS_FLOOR.values()))
    rows = results.get("rows_expected")
    if isinstance(rows, int | float) and rows < floor:
        out.append(f"rows_expected is {rows}, below the floor of {floor} for scale"
                   f" {results.get('scale')!r}")
    watch_kills = results.get("watch_kills")
    if isinstance(watch_kills, int | float) and watch_kills < WATCH_KILLS_MIN:
        out.append(f"watch_kills is {watch_kills}, fewer than {WATCH_KILLS_MIN}")
    if not results.get("watch_kills_during_publication"):
        out.append("watch_kills_during_publication: no kill landed in a publication")
    if results.get("watch_recoveries") != watch_kills:
        out.append(f"watch_recoveries is {results.get('watch_recoveries')!r}: not every"
                   f" restarted watch recovered from its {watch_kills!r} kills")
    if not results.get("content_columns"):
        out.append("content_columns: no column was compared")
    if results.get("rows_found") != results.get("rows_expected"):
        out.append("rows_found differs from rows_expected")
    if not results.get("outage_cycles"):
        out.append("outage_cycles: the outage spanned no cycle")
    detected, expected = (results.get("schema_changes_detected"),
                          results.get("schema_changes_expected"))
    if not expected or detected != expected:
        out.append(f"schema changes: {detected!r} of {expected!r} detected")
    for key in ("measured_at", "machine"):
        if not results.get(key):
            out.append(f"missing {key}")
    return out


def main(argv: list[str]) -> int:
    check = problems
    if argv and argv[0] == "--reliability":
        check, argv = reliability_problems, argv[1:]
    path = Path(argv[0] if argv else "benchmarks/results.json")
    found = check(json.loads(path.read_text()))
    for p in found:
        print(f"{path}: {p}", file=sys.stderr)
    if not found:
        print(f"{path}: every figure present")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
