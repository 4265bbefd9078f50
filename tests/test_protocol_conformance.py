"""Every protocol profile the simulator serves (``simulator.profiles``), read by
configuration alone: the environment ``loader_env`` gives, nothing else.

For each profile, against the same generated platform with live traffic: a first load;
incremental cycles while the platform updates and deletes records; a ``salesflow load``
killed (SIGKILL) while it extracts, then resumed; a silent rename detected, notified,
absorbed by the field mapping the notice advises and a replay of what was held; and at
the end raw reconciled exactly with the simulator's database (every live key at its
version, no deleted key left, none twice). On one JSON profile the marts are built as
well, unchanged: raw's deletion column is ``deleted_marker`` whatever the style.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from benchmarks.oracle import assert_reconciled, revenue
from loaders import config, dbt_project
from loaders.runners import dead_letters, pipeline
from simulator import faults, store
from simulator.generate import generate
from simulator.platform import Platform
from simulator.profiles import PROFILES, loader_env
from tests.support import AS_OF, TOKEN
from tests.support.loads import kill_a_load_while_it_extracts
from tests.support.simulator import Simulator, drift, start_simulator, wait_for_new_records
from tests.support.warehouse import dbt_invoke

pytestmark = pytest.mark.slow

PAGE_SIZE = 100  # small pages: every listing is paged
LIVE = ("--rate", "20", "--lag", "0.2")
BUILT_ON = "envelope"  # a JSON profile with soft deletes: the marts are built on it
RENAMED, RENAMED_TO = "total_cents", "total_amount"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small generated platform; each profile serves a copy of it."""
    d = tmp_path_factory.mktemp("generated") / "sim"
    generate(d, orders=150, seed=7, as_of=AS_OF, days=10)
    return d


def serve(sim_dir: Path, profile: str, monkeypatch: pytest.MonkeyPatch,
          *args: str) -> Simulator:
    """Serve ``profile`` and configure the loader for it, by its environment alone."""
    sim = start_simulator(sim_dir, "--profile", profile, *args)
    for name, value in loader_env(profile, sim.url, TOKEN, page_size=PAGE_SIZE).items():
        monkeypatch.setenv(name, value)
    return sim


def ids(sim_dir: Path, sql: str) -> list[int]:
    return [r[0] for r in store.query(sim_dir, sql, db=store.PRODUCTION)]


def update_and_delete(sim_dir: Path, deleted: dict[str, set[int]]) -> None:
    """Beside the live traffic: two history orders updated, two orders (with their
    lines) and a customer deleted; returns once the replica has them."""
    orders = ids(sim_dir, "SELECT order_id FROM orders WHERE order_id <= 150"
                          " ORDER BY order_id LIMIT 4")
    customers = ids(sim_dir, "SELECT customer_id FROM customers ORDER BY customer_id"
                             " DESC LIMIT 1")
    with Platform(sim_dir) as platform:
        for order_id in orders[2:]:
            platform.update("orders", order_id, status="returned")
        assert platform.delete_records("orders", orders[:2]) == 2
        assert platform.delete_records("customers", customers) == 1
    deleted["orders"] |= set(orders[:2])
    deleted["customers"] |= set(customers)
    store.wait_for_replica(sim_dir, timeout=20)


def raw_keys(warehouse: Path, entity: str, key: str) -> set[int]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {r[0] for r in con.execute(f"select {key} from raw.{entity}").fetchall()}


def logged(warehouse: Path, entity: str) -> set[tuple[str, str]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return set(con.execute(
            "select change_kind, column_name from raw.schema_changelog where entity = ?",
            [entity],
        ).fetchall())


def notices() -> list[dict]:
    path = config.pipelines_dir() / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("profile", list(PROFILES))
def test_a_profile_loads_exactly_by_configuration_alone(
    profile, generated, warehouse, tmp_path, monkeypatch
):
    sim_dir = tmp_path / "sim"
    shutil.copytree(generated, sim_dir)
    pipelines_dir = config.pipelines_dir()
    deleted: dict[str, set[int]] = {"orders": set(), "customers": set()}
    sim = serve(sim_dir, profile, monkeypatch, *LIVE)
    try:
        first = pipeline.load()
        assert first.total > 0 and first.quarantined == 0 and not first.failed, first

        for _ in range(2):  # incremental cycles while the platform writes
            update_and_delete(sim_dir, deleted)
            cycle = pipeline.load()
            assert cycle.rows.get("orders") and not cycle.quarantined and not cycle.failed
            assert not raw_keys(warehouse, "orders", "order_id") & deleted["orders"]

        # a load killed while it extracts (slow answers, every event to read again)
        with Platform(sim_dir) as platform:
            platform.touch("events")
        store.wait_for_replica(sim_dir, timeout=20)
        faults.save(sim_dir, faults.Faults(slow_ms=150))
        try:
            # at once: a load's steps after the extract are quick enough to finish
            # within half a second of its start
            status = kill_a_load_while_it_extracts(pipelines_dir, after=0.05)
        finally:
            faults.save(sim_dir, faults.Faults())
        assert status == -9, f"the load was not killed mid-run (it exited {status})"
        resumed = pipeline.load()
        assert resumed.rows.get("events") and not resumed.failed

        # a silent rename: held, detected, notified with the mapping that absorbs it
        since = store.iso(store.utcnow())
        drift(sim, "rename", "orders", RENAMED, to=RENAMED_TO)
        wait_for_new_records(sim_dir, "orders", since)
        held = pipeline.load()
        assert held.quarantined, "the renamed records were not held"
        assert {("column_removed", RENAMED), ("new_column", RENAMED_TO)} <= logged(
            warehouse, "orders")
        advice = [n for n in notices() if n["key"].startswith("change:")
                  and n["details"]["change"]["entity"] == "orders"
                  and n["details"]["change"]["column"] == RENAMED]
        assert advice and f'{RENAMED} = "{RENAMED_TO}"' in advice[0]["text"]
        monkeypatch.setenv("SOURCES__REPLICA__FIELD_MAPPING",
                           json.dumps({"orders": {RENAMED: RENAMED_TO}}))
        absorbed = pipeline.load()
        assert not absorbed.quarantined and not absorbed.failed
    finally:
        sim.stop()  # the replica catches up with production

    quiet = serve(sim_dir, profile, monkeypatch)
    try:
        replayed = dead_letters.replay("orders")
        assert replayed.total["held"] == 0
        pipeline.load()
    finally:
        quiet.stop()
    assert_reconciled(sim_dir, warehouse)
    for entity, key in (("orders", "order_id"), ("customers", "customer_id")):
        assert not raw_keys(warehouse, entity, key) & deleted[entity], f"deleted {entity} left"

    if profile == BUILT_ON:
        dbt_invoke(tmp_path, "build", "--exclude-resource-type", "unit_test")
        dbt_project.release_warehouse()  # dbt-duckdb keeps the file open in this process
        assert revenue(sim_dir, warehouse)["match"], "the marts do not count every sale"


def test_the_build_profile_is_a_json_one_with_its_own_deletions():
    """The marts are built on a profile that is neither NDJSON nor tombstones."""
    env = loader_env(BUILT_ON, "http://127.0.0.1:1", TOKEN)
    assert env["SOURCES__REPLICA__FORMAT"] == "json"
    endpoints = json.loads(env["SOURCES__REPLICA__ENDPOINTS"])
    assert endpoints["orders"].get("soft_delete_field") or endpoints["orders"].get(
        "deletions_path")
