"""The result checks (benchmark and reliability) fail on what they must catch."""

import json

import pytest

from benchmarks import bench
from benchmarks.bench import steady_cycle_ratio, steady_cycles
from benchmarks.check import (
    JSON_LOAD,
    PROCESSES,
    REQUIRED,
    SCALE,
    main,
    problems,
    reliability_problems,
)


def complete() -> dict:
    results = {section: {key: 1 for key in keys} for section, keys in REQUIRED.items()}
    results["json"].update({key: 1 for key in JSON_LOAD})
    results["freshness"]["reader_errors"] = 0
    results["freshness"]["conditions"] = {"replica_lag_s": 0.5, "reader_held": True,
                                          "seconds": 600, "late_commits": True,
                                          "clock_skew": True}
    results["cycle"]["delta_models"] = [{"model": "fct_order_items", "seconds": 0.4}]
    results["scale"] = "default"
    results["scale_default"] = {key: 1 for key in SCALE}
    results["scale_default"]["peak_rss_mb"] = {p: 100 for p in PROCESSES}
    results["machine"]["python"] = "3.11"
    results["measured_at"] = "2026-11-23T00:00:00+00:00"
    return results


def test_complete_results_pass():
    assert problems(complete()) == []


def test_a_missing_or_negative_figure_fails():
    r = complete()
    del r["cycle"]["noop_s"]
    r["freshness"]["p95_s"] = -1
    r["load"]["rows"] = 0
    found = problems(r)
    assert "missing cycle.noop_s" in found
    assert any("freshness.p95_s" in p for p in found)
    assert any("nothing was loaded" in p for p in found)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda r: r["freshness"]["conditions"].update(reader_held=False),
         "conditions.reader_held is False"),
        (lambda r: r["freshness"]["conditions"].update(replica_lag_s=0),
         "conditions.replica_lag_s is 0"),
        (lambda r: r["freshness"]["conditions"].pop("late_commits"),
         "conditions.late_commits is None"),
        (lambda r: r["freshness"].update(reader_errors=2), "2 analyst queries failed"),
        (lambda r: r["freshness"].update(reader_queries=0), "analyst never queried"),
        (lambda r: r["freshness"].update(periodic_test_runs=0), "no data test run"),
        (lambda r: r["cycle"].update(delta_models=[]), "cycle.delta_models"),
        (lambda r: r["freshness_ideal"].pop("p99_s"), "missing freshness_ideal.p99_s"),
        (lambda r: r["scale_default"].pop("first_publish_s"),
         "scale_default.first_publish_s is missing"),
        (lambda r: r["scale_default"]["peak_rss_mb"].pop("watch"),
         "scale_default.peak_rss_mb.watch is missing"),
        (lambda r: r.update(scale="large"), "scale_large.orders is missing"),
        (lambda r: r.update(scale="large"), "scale_large.steady_cycle_ratio is missing"),
        (lambda r: r["freshness"].pop("cycle_mean_s"), "missing freshness.cycle_mean_s"),
    ],
)
def test_realistic_freshness_and_scale_figures_are_required(change, says):
    r = complete()
    change(r)
    assert any(says in p for p in problems(r)), problems(r)


def test_steady_cycle_figures_count_every_cycle_and_its_parts():
    cycles = [{"cycle_s": 1.0, "load_s": 0.4, "build_s": 0.5},
              {"cycle_s": 3.0, "load_s": 0.4, "build_s": 0.5, "test_s": 2.0},
              {"cycle_s": 2.0, "load_s": 0.6, "build_s": 1.0, "publish_s": 0.3}]
    figures = steady_cycles(cycles)
    assert figures["cycle_mean_s"] == 2.0
    assert figures["cycle_p50_s"] == 2.0
    assert figures["cycle_max_s"] == 3.0
    assert figures["cycle_parts_mean_s"] == {"load": 0.467, "build": 0.667, "publish": 0.1,
                                             "test": 0.667}
    assert steady_cycles([])["cycle_mean_s"] is None


def test_the_large_scale_cycle_is_compared_with_the_default_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    reference = tmp_path / "results.json"
    large = {"freshness": {"cycle_mean_s": 3.0}}
    assert steady_cycle_ratio(large, reference)["steady_cycle_ratio"] is None
    reference.write_text(json.dumps({"commit": "abc", "freshness": {"cycle_mean_s": 2.0}}))
    compared = steady_cycle_ratio(large, reference)
    assert compared["steady_cycle_ratio"] == 1.5
    assert compared["steady_cycle_reference"] == {"file": "results.json", "commit": "abc",
                                                  "cycle_mean_s": 2.0}


def test_a_missing_json_figure_fails():
    r = complete()
    del r["json"]["parse_ratio"]
    r["json"]["load_json_rows_per_s"] = 0
    found = problems(r)
    assert "missing json.parse_ratio" in found
    assert any("json.load_json_rows_per_s" in p for p in found)


def test_json_load_figures_are_required():
    r = complete()
    del r["json"]["load_rows"]
    assert any("json.load_rows is missing" in p for p in problems(r))


def reliable() -> dict:
    """A reliability result as benchmarks/chaos.py writes it, with nothing wrong."""
    return {
        "kills": 6, "kills_by_phase": {"extract": 2, "normalize": 1, "load": 2, "dbt build": 1},
        "http_fault_rate": 0.1, "http_ratio": 1.4, "outage_cycles": 3, "outage_alerts": 1,
        "recovery_notices": 1, "schema_changes_expected": 13, "schema_changes_detected": 13,
        "rows_expected": 200_021, "rows_found": 200_021, "lost_rows": 0, "unexpected_rows": 0,
        "duplicate_pks": 0, "raw_checksums_match": True, "revenue_match": True,
        "mart_checksum_match": True, "passed": True, "problems": [], "scale": "default",
        "watch_kills": 12, "watch_kills_during_publication": 5, "watch_recoveries": 12,
        "watch_kills_by_phase": {"publish": 5, "load": 4, "dbt build": 3},
        "raw_content_match": True, "content_columns": 63, "content_mismatches": 0,
        "published_marts_match": True,
        "machine": {"cores": 2}, "measured_at": "2026-11-24T00:00:00+00:00",
    }


def test_a_sound_reliability_result_passes():
    assert reliability_problems(reliable()) == []


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("lost_rows", 3, "lost_rows is 3"),
        ("duplicate_pks", 1, "duplicate_pks is 1"),
        ("mart_checksum_match", False, "mart_checksum_match is False"),
        ("outage_alerts", 2, "outage_alerts is 2"),
        ("kills", 0, "never killed"),
        ("rows_found", 200_020, "rows_found differs"),
        ("schema_changes_detected", 12, "12 of 13 detected"),
        ("http_ratio", None, "http_ratio is missing"),
        ("rows_expected", 900, "below the floor of 100000"),
        ("raw_content_match", False, "raw_content_match is False"),
        ("content_mismatches", 2, "content_mismatches is 2"),
        ("content_columns", 0, "no column was compared"),
        ("published_marts_match", False, "published_marts_match is False"),
        ("watch_kills", 9, "fewer than 10"),
        ("watch_kills", None, "watch_kills is missing"),
        ("watch_kills_during_publication", 0, "no kill landed in a publication"),
        ("watch_recoveries", 11, "not every restarted watch recovered"),
    ],
)
def test_a_reliability_result_with_a_loss_or_a_gap_fails(key, value, says):
    r = reliable()
    r[key] = value
    assert any(says in p for p in reliability_problems(r)), reliability_problems(r)


def test_the_rows_floor_follows_the_scale():
    r = reliable()
    r.update(scale="smoke", rows_expected=6_000, rows_found=6_000)
    assert reliability_problems(r) == []
    r.update(rows_expected=0, rows_found=0)
    assert any("below the floor of 5000" in p for p in reliability_problems(r))
    r.update(scale="unknown", rows_expected=6_000, rows_found=6_000)
    assert any("below the floor of 100000" in p for p in reliability_problems(r))


def test_the_checker_exits_1_on_a_lost_row(tmp_path, capsys):
    r = reliable()
    r["lost_rows"] = 1
    path = tmp_path / "reliability.json"
    path.write_text(json.dumps(r))
    assert main(["--reliability", str(path)]) == 1
    assert "lost_rows is 1" in capsys.readouterr().err
