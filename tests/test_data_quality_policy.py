"""The data-quality policy: device clock skew on the simulated platform is flagged and
corrected in staging while every mart builds, and every data test of the project is an
invariant on a key or on money, or tolerated dirt, as the policy's doc block lists."""

from __future__ import annotations

import copy
import json
import re
from contextlib import closing
from pathlib import Path

import duckdb
import pytest

from loaders.runners import pipeline
from simulator import store
from simulator.generate import generate
from simulator.platform import Platform
from tests.support import AS_OF
from tests.support.simulator import start_simulator
from tests.support.warehouse import dbt_invoke

SKEW = 5.0  # seconds a device clock may run ahead
FAILS_ON_ONE_ROW = {"!=0", ">0"}
# the layer whose tests meet the platform's data as sent: its dirt is tolerated
DIRT_LAYER = re.compile(r"^(source\.salesflow\.replica\.|model\.salesflow\.stg_replica__)")
SINGULAR_DIRT_LAYER = "tests/data/staging/replica/"


def query(path: Path, sql: str) -> list[tuple]:
    with closing(duckdb.connect(str(path))) as con:
        return con.execute(sql).fetchall()


# -- the simulator's knob --------------------------------------------------------------


def test_generated_history_has_device_clocks_ahead_only_with_the_knob(tmp_path):
    plain = generate(tmp_path / "plain", orders=200, seed=3, as_of=AS_OF, days=5)
    skewed = generate(tmp_path / "skew", orders=200, seed=3, as_of=AS_OF, days=5,
                      clock_skew=SKEW)
    ahead = "SELECT count(*) FROM events WHERE occurred_at > updated_at"
    assert store.query(plain.directory, ahead) == [(0,)]
    [(n_ahead,)] = store.query(skewed.directory, ahead)
    [(n_events,)] = store.query(skewed.directory, "SELECT count(*) FROM events")
    assert 0 < n_ahead < n_events * 0.2
    [(most,)] = store.query(
        skewed.directory,
        "SELECT max(julianday(occurred_at) - julianday(updated_at)) * 86400 FROM events",
    )
    assert most <= SKEW
    # the rest of the history is the same
    same = "SELECT count(*), sum(session_id), max(updated_at) FROM events"
    assert store.query(plain.directory, same) == store.query(skewed.directory, same)
    with pytest.raises(ValueError, match="clock_skew"):
        generate(tmp_path / "bad", orders=10, seed=3, as_of=AS_OF, clock_skew=-1)


def test_live_events_have_device_clocks_ahead_only_with_the_knob(tmp_path):
    generate(tmp_path / "sim", orders=50, seed=3, as_of=AS_OF, days=2)
    ahead = "SELECT count(*) FROM events WHERE occurred_at > updated_at"
    with Platform(tmp_path / "sim", seed=1) as plain:
        plain.tick(20)
    assert store.query(tmp_path / "sim", ahead, db=store.PRODUCTION) == [(0,)]
    with Platform(tmp_path / "sim", seed=1, clock_skew=SKEW) as skewed:
        skewed.tick(40)
    assert store.query(tmp_path / "sim", ahead, db=store.PRODUCTION)[0][0] > 0
    with pytest.raises(ValueError, match="clock_skew"):
        Platform(tmp_path / "sim", clock_skew=-1)


# -- staging flags and corrects, the marts build ---------------------------------------


def test_build_is_green_with_clock_skew_flagged_in_staging(warehouse, tmp_path):
    sim_dir = tmp_path / "sim"
    generate(sim_dir, orders=300, seed=7, as_of=AS_OF, days=30, clock_skew=SKEW)
    [(ahead,)] = store.query(sim_dir, "SELECT count(*) FROM events WHERE occurred_at > updated_at")
    assert ahead > 0
    sim = start_simulator(sim_dir)
    try:
        pipeline.load(base_url=sim.url, token=sim.token)
    finally:
        sim.stop()

    dbt_invoke(tmp_path, "build", "--exclude-resource-type", "unit_test")
    # the skewed events are counted by a warning, not a failure
    results = json.loads((tmp_path / "target" / "run_results.json").read_text())["results"]
    [skew] = [r for r in results
              if "not_after_stg_replica__events_device_occurred_at" in r["unique_id"]]
    assert (skew["status"], skew["failures"]) == ("warn", ahead)
    dbt_invoke(tmp_path, "test", "--select", "test_type:unit")

    [(flagged, later)] = query(
        warehouse,
        "select count(*) filter (where is_clock_skewed),"
        " count(*) filter (where occurred_at > arrived_at) from staging.stg_replica__events",
    )
    assert (flagged, later) == (ahead, 0)
    [(sessions, future)] = query(
        warehouse,
        "select count(*), count(*) filter (where started_at > last_arrived_at)"
        " from marts.fct_sessions",
    )
    assert sessions > 0 and future == 0
    for mart in ("fct_orders", "fct_order_items", "funnel_daily", "product_sales_daily"):
        assert query(warehouse, f"select count(*) from marts.{mart}")[0][0] > 0, mart


# -- every data test has its decision --------------------------------------------------


def parsed_manifest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "target" / "manifest.json").read_text())


def policy_sections(manifest: dict) -> dict[str, set[str]]:
    """The `model.column` (or singular test) names listed under each heading of the
    policy's doc block."""
    text = manifest["docs"]["doc.salesflow.data_quality_policy"]["block_contents"]
    sections: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("#### "):
            current = line[5:].strip().split()[0].lower()
            sections[current] = set()
        elif current:
            sections[current] |= set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", line))
    return sections


def in_dirt_layer(test: dict, parent: str) -> bool:
    if test.get("test_metadata"):  # generic: the node it is attached to
        return bool(DIRT_LAYER.match(parent))
    return test["original_file_path"].startswith(SINGULAR_DIRT_LAYER)  # by its folder


def policy_violations(manifest: dict) -> list[str]:
    """Every data test either fails the build on one row (an invariant) or is tolerated
    (severity warn, or a threshold). In the dirt layer an invariant is on a key (a column
    with a unique test) or listed under "Invariants"; anywhere, a tolerated test is listed
    under "Tolerated"; and every listed name has a test of that kind."""
    sections = policy_sections(manifest)
    listed_invariant, listed_tolerated = sections["invariants"], sections["tolerated"]
    tests = [n for n in manifest["nodes"].values() if n["resource_type"] == "test"]
    keys = {
        (n["attached_node"] or n["depends_on"]["nodes"][-1], n["column_name"])
        for n in tests
        if (n.get("test_metadata") or {}).get("name") == "unique"
    }
    found_invariant, found_tolerated, problems = set(), set(), []
    for n in tests:
        parent = n.get("attached_node") or n["depends_on"]["nodes"][-1]
        column = n.get("column_name")
        name = f"{parent.split('.')[-1]}.{column}" if column else n["name"]
        config = n["config"]
        one_row = (
            str(config["severity"]).lower() == "error"
            and config["error_if"].replace(" ", "") in FAILS_ON_ONE_ROW
        )
        if not one_row:
            found_tolerated.add(name)
            if name not in listed_tolerated:
                problems.append(f"{n['name']} is tolerated but not listed as such: {name}")
        elif in_dirt_layer(n, parent) and (parent, column) not in keys:
            found_invariant.add(name)
            if name not in listed_invariant:
                problems.append(
                    f"{n['name']} fails the build on one row of source data but guards no"
                    f" key and is not listed as an invariant: {name}"
                )
    problems += [f"listed invariant without such a test: {x}"
                 for x in sorted(listed_invariant - found_invariant)]
    problems += [f"listed as tolerated without such a test: {x}"
                 for x in sorted(listed_tolerated - found_tolerated)]
    return problems


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("parse")
    dbt_invoke(tmp_path, "parse")
    return parsed_manifest(tmp_path)


def test_every_data_test_has_the_decision_the_policy_lists(manifest):
    assert policy_violations(manifest) == []


def first_test(manifest: dict, name: str) -> dict:
    return next(n for n in manifest["nodes"].values() if n.get("name") == name)


def test_a_test_that_changes_its_decision_without_the_policy_is_caught(manifest):
    strict = copy.deepcopy(manifest)
    config = first_test(strict, "not_null_stg_replica__customers_email_hash")["config"]
    config.update(severity="ERROR", warn_if="!= 0", error_if="!= 0")
    assert policy_violations(strict) == [
        "not_null_stg_replica__customers_email_hash fails the build on one row of source"
        " data but guards no key and is not listed as an invariant:"
        " stg_replica__customers.email_hash",
        "listed as tolerated without such a test: stg_replica__customers.email_hash",
    ]
    lax = copy.deepcopy(manifest)
    first_test(lax, "not_null_stg_replica__orders_total_amount_usd")["config"].update(
        severity="warn")
    problems = policy_violations(lax)
    assert any("tolerated but not listed" in p and "total_amount_usd" in p for p in problems)
