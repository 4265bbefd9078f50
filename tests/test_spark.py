"""salesflow on Spark: the same loaders and dbt project with raw on a lake (dlt's
filesystem destination, parquet, append-only) and dbt building on a local Spark session.
Raw read as a merge leaves it reconciles with the replica, every mart equals the DuckDB
lane's for the same data, and again after a cycle of updates and deletions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from benchmarks.oracle import replica_versions
from loaders import dbt_project, lake, warehouse
from loaders.monitoring import status
from loaders.replica.settings import ENDPOINTS
from loaders.runners import pipeline
from loaders.runners.watch import watch
from loaders.schema_changes.changelog import recent_changes
from simulator import store
from simulator.generate import generate
from simulator.platform import Platform
from tests.support import AS_OF, ROOT, TOKEN, spark
from tests.support.simulator import Simulator, start_simulator
from tests.support.warehouse import dbt_invoke

pytestmark = pytest.mark.slow

PII_KEY = "spark-pii-key-61c2"
# mart columns compared by sum: their Spark type names
NUMERIC = ("bigint", "int", "smallint", "decimal", "double")


@dataclass
class Lanes:
    """One platform loaded twice: onto the lake and built on Spark, and into DuckDB."""

    sim: Simulator
    work: Path

    def env(self, target: str) -> dict[str, str]:
        common = {"DLT_PROJECT_DIR": str(ROOT), "RUNTIME__REQUEST_MAX_ATTEMPTS": "3",
                  "SALESFLOW_PII_KEY": PII_KEY, "SALESFLOW_TARGET": target}
        if target == "spark":
            return {**common, "SALESFLOW_PIPELINES_DIR": str(self.work / "dlt-spark"),
                    lake.BUCKET_URL_ENV: str(self.work / "lake"),
                    warehouse.SPARK_DIR_ENV: str(self.work / "spark")}
        return {**common, "SALESFLOW_PIPELINES_DIR": str(self.work / "dlt-duckdb"),
                "SALESFLOW_DUCKDB_PATH": str(self.work / "warehouse.duckdb"),
                "SALESFLOW_PUBLISHED_PATH": str(self.work / "published.duckdb")}

    def cycle(self, target: str, unit_tests: bool = True) -> pipeline.LoadResult:
        """A load, then ``dbt build`` (and the unit tests), on ``target``."""
        with warehouse.environment(**self.env(target)):
            result = pipeline.load(base_url=self.sim.url, token=TOKEN)
            paths = self.work / f"dbt-{target}"
            dbt_invoke(paths, "build", "--exclude-resource-type", "unit_test", "--target", target)
            if unit_tests:
                dbt_invoke(paths, "test", "--select", "test_type:unit", "--target", target)
            dbt_project.release_warehouse()
        return result


@pytest.fixture(scope="module")
def lanes(tmp_path_factory) -> Iterator[Lanes]:
    work = tmp_path_factory.mktemp("spark")
    generate(work / "sim", orders=300, seed=7, as_of=AS_OF, days=30)
    both = Lanes(start_simulator(work / "sim"), work)
    try:
        for target in ("spark", "dev"):
            result = both.cycle(target)
            assert result.total > 0 and result.quarantined == 0
        yield both
    finally:
        both.sim.stop()
        spark.stop()


def current_raw(lanes: Lanes) -> dict[str, set[tuple]]:
    """(primary key, updated_at in µs) of raw on the lake as the loader reads it."""
    out = {}
    with warehouse.environment(**lanes.env("spark")), \
            warehouse.sql_client(read_only=True) as sql:
        for entity, ep in ENDPOINTS.items():
            rows = sql.execute_sql(
                f"select {ep['primary_key']}, epoch_us(updated_at) from raw.{entity}"
            )
            assert len(rows) == len({r[0] for r in rows}), entity
            out[entity] = set(rows)
    return out


def assert_raw_reconciled(lanes: Lanes) -> None:
    expected, found = replica_versions(lanes.sim.dir), current_raw(lanes)
    for entity in ENDPOINTS:
        missing, extra = expected[entity] - found[entity], found[entity] - expected[entity]
        assert not missing and not extra, (
            f"{entity}: {len(missing)} missing, {len(extra)} unexpected"
        )


def spark_marts() -> dict[str, dict[str, float | None]]:
    """Rows and the sum of every numeric column of each mart built on Spark."""
    out = {}
    names = [name for _, name, temporary in spark.query("show tables in marts")
             if not temporary]  # dbt's temporary views are listed too
    for name in names:
        columns = spark.query(f"describe marts.{name}")
        sums = [c for c, kind, *_ in columns
                if kind and kind.lower().startswith(NUMERIC) and not c.startswith("#")]
        parts = ["cast(count(*) as double)"] + [f"cast(sum({c}) as double)" for c in sums]
        [row] = spark.query(f"select {', '.join(parts)} from marts.{name}")
        out[name] = dict(zip(["rows", *sums], row, strict=True))
    return out


def duckdb_marts(path: Path, wanted: dict[str, dict[str, float | None]]) -> dict[str, dict]:
    out = {}
    with duckdb.connect(str(path), read_only=True) as con:
        for name, columns in wanted.items():
            parts = ["cast(count(*) as double)"] + [
                f"cast(sum({c}) as double)" for c in columns if c != "rows"
            ]
            [row] = con.execute(f"select {', '.join(parts)} from marts.{name}").fetchall()
            out[name] = dict(zip(list(columns), row, strict=True))
    return out


def assert_marts_equal(lanes: Lanes) -> None:
    on_spark = spark_marts()
    assert {"fct_orders", "fct_order_items", "product_sales_daily", "dim_customers",
            "funnel_daily", "customer_cohorts_monthly"} <= set(on_spark)
    on_duckdb = duckdb_marts(lanes.work / "warehouse.duckdb", on_spark)
    for mart, columns in on_spark.items():
        assert columns["rows"] == on_duckdb[mart]["rows"], mart
        if mart == "pipeline_health":  # minutes since the load: "now" differs
            continue
        for column, value in columns.items():
            other = on_duckdb[mart][column]
            if value is None or other is None:
                assert value == other, (mart, column, value, other)
            else:  # amounts are rounded to the cent row by row
                assert abs(value - other) <= 0.01 * columns["rows"] + 1e-9 * abs(value), (
                    mart, column, value, other)
    by_line = dict(spark.query(
        "select product_line, cast(sum(revenue_usd) as double) from marts.product_sales_daily"
        " group by 1"
    ))
    with duckdb.connect(str(lanes.work / "warehouse.duckdb"), read_only=True) as con:
        expected = dict(con.execute(
            "select product_line, cast(sum(revenue_usd) as double)"
            " from marts.product_sales_daily group by 1"
        ).fetchall())
    assert by_line.keys() == expected.keys() and len(by_line) > 1
    for line, revenue in by_line.items():
        assert abs(revenue - expected[line]) <= 0.05, line


def test_raw_on_the_lake_reconciles_with_the_replica(lanes):
    assert_raw_reconciled(lanes)
    # raw keeps the files of every load: dlt's layout under the bucket
    files = list((lanes.work / "lake" / "raw" / "orders").glob("*.parquet"))
    assert files and all(f.name.count(".") == 3 for f in files)


def test_marts_on_spark_equal_those_on_duckdb(lanes):
    assert_marts_equal(lanes)


def test_the_loader_keeps_its_records_on_the_lake(lanes):
    with warehouse.environment(**lanes.env("spark")):
        report = status.collect(lanes.work / "dlt-spark", ROOT)
        # the schema changelog is the loader's too: the first load's baseline is in it
        assert {c["entity"] for c in recent_changes()} >= set(ENDPOINTS)
    assert report["status"] == "green", report
    n_orders = len(store.query(lanes.sim.dir, "SELECT order_id FROM orders"))
    assert {e["entity"]: e["rows_in_raw"] for e in report["entities"]}["orders"] == n_orders
    loads = spark.query("select entity, rows_loaded from raw.pipeline_loads")
    assert {e for e, _ in loads} == set(ENDPOINTS)
    [(entities,)] = spark.query("select count(*) from marts.pipeline_health")
    assert entities == len(ENDPOINTS)


def test_a_cycle_of_updates_and_deletions(lanes):
    before = spark.query("select count(*), sum(units) from marts.product_sales_daily")
    lanes.sim.stop()  # only this test's activity changes the platform
    with Platform(lanes.sim.dir, seed=13) as platform:
        for _ in range(3):
            platform.tick(25)  # new orders, status changes, edits and deletions
        platform.evolve("additive", orders=40)  # new fields: coupon codes on orders, ...
    store.replicate(lanes.sim.dir)
    lanes.sim = start_simulator(lanes.sim.dir)
    # on each lane one watch cycle: load what changed, build what it reaches, with the
    # data tests; DuckDB publishes its marts, Spark has nothing to copy
    stats = {}
    for target in ("spark", "dev"):
        with warehouse.environment(**lanes.env(target)):
            stats[target] = watch(interval=0, max_cycles=1, base_url=lanes.sim.url,
                                  token=TOKEN)
            dbt_project.release_warehouse()
        last = stats[target].last
        assert last["outcome"] == "success_new_data" and last["tests"], last
        assert stats[target].builds == 1 and stats[target].failures == 0
    assert stats["spark"].published == 0 and stats["dev"].published == 1
    assert stats["spark"].last["rows"] == stats["dev"].last["rows"] > 0
    with warehouse.environment(**lanes.env("spark")):
        logged = {(c["entity"], c["column"], c["kind"]) for c in recent_changes()}
    assert ("orders", "coupon_code", "new_column") in logged, logged
    # the ticks deleted something: on the lake its tombstone is a row of raw
    deleted = spark.query("select count(*) from raw.customers where deleted_at is not null")
    assert deleted[0][0] > 0
    assert_raw_reconciled(lanes)
    assert spark.query("select count(*), sum(units) from marts.product_sales_daily") != before
    assert_marts_equal(lanes)
    # the new field reached the marts on both lanes alike
    [(coupons,)] = spark.query("select count(coupon_code) from marts.fct_orders")
    with duckdb.connect(str(lanes.work / "warehouse.duckdb"), read_only=True) as con:
        [(expected,)] = con.execute("select count(coupon_code) from marts.fct_orders").fetchall()
    assert coupons == expected > 0
