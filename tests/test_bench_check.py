"""The benchmark's result check fails on what it must catch."""

from benchmarks.check import REQUIRED, problems


def complete() -> dict:
    results = {section: {key: 1 for key in keys} for section, keys in REQUIRED.items()}
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
