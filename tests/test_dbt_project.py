"""The dbt project end to end: a generated platform loaded by dlt, ``dbt build`` green,
marts reconciled with the simulator's own database, and the three schema evolutions
absorbed by staging."""

from __future__ import annotations

from contextlib import closing
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb
import pytest

from loaders.runners import pipeline
from simulator import store
from simulator.model import EVOLUTIONS, FX_PER_USD
from simulator.platform import Platform
from tests.support.simulator import start_simulator
from tests.support.warehouse import dbt_invoke

CENT = Decimal("0.01")

pytestmark = pytest.mark.slow


def dbt_build(tmp_path: Path) -> None:
    """``dbt build``, then the unit tests: those of incremental marts read the built
    model's columns, so they run once the models exist (as ``salesflow run`` does)."""
    dbt_invoke(tmp_path, "build", "--exclude-resource-type", "unit_test")
    dbt_invoke(tmp_path, "test", "--select", "test_type:unit")


def replica_orders(sim_dir: Path) -> list[tuple[str, int]]:
    """(currency, total_cents) of every live order in the simulator's replica."""
    return store.query(sim_dir, "SELECT currency, total_cents FROM orders")


def query(path: Path, sql: str) -> list[tuple]:
    # not read-only: dbt-duckdb keeps its connection open in this process, and DuckDB
    # refuses a second one to the same file with a different configuration
    with closing(duckdb.connect(str(path))) as con:
        return con.execute(sql).fetchall()


def test_build_is_green_and_order_revenue_reconciles_with_the_replica(
    simulator, warehouse, tmp_path
):
    pipeline.load(base_url=simulator.url, token=simulator.token)
    dbt_build(tmp_path)

    orders = replica_orders(simulator.dir)
    [(n_orders,)] = query(warehouse, "select count(*) from marts.fct_orders")
    assert n_orders == len(orders)

    # exact in each order currency
    expected: dict[str, Decimal] = {}
    for currency, cents in orders:
        expected[currency] = expected.get(currency, Decimal(0)) + Decimal(cents) / 100
    found = dict(
        query(
            warehouse,
            "select currency_code, sum(total_amount) from marts.fct_orders group by 1",
        )
    )
    assert found == expected

    # in US dollars: each order converted at the fixed rate and rounded to the cent
    expected_usd = sum(
        (
            (Decimal(cents) / 100 / Decimal(str(FX_PER_USD[currency]))).quantize(
                CENT, ROUND_HALF_UP
            )
            for currency, cents in orders
        ),
        Decimal(0),
    )
    [(found_usd,)] = query(warehouse, "select sum(total_amount_usd) from marts.fct_orders")
    # the two roundings may differ on an exact half cent only
    assert abs(found_usd - expected_usd) <= CENT * len(orders) / 100 + CENT

    # a second build is incremental and changes nothing
    before = query(
        warehouse,
        "select count(*), sum(units), sum(revenue_usd) from marts.product_sales_daily",
    )
    dbt_build(tmp_path)
    after = query(
        warehouse,
        "select count(*), sum(units), sum(revenue_usd) from marts.product_sales_daily",
    )
    assert after == before


def test_staging_absorbs_every_schema_evolution(simulator, warehouse, tmp_path):
    pipeline.load(base_url=simulator.url, token=simulator.token)
    dbt_build(tmp_path)

    # the serving platform applies due evolutions too: stop it so only this one does
    simulator.stop()
    with Platform(simulator.dir, seed=11) as platform:
        for name in EVOLUTIONS:
            platform.schedule(name, store.utcnow())
        assert platform.apply_due() == list(EVOLUTIONS)
        platform.tick(40)  # new orders, customers and events in the new shapes
    store.replicate(simulator.dir)
    evolved = start_simulator(simulator.dir, token=simulator.token)
    try:
        pipeline.load(base_url=evolved.url, token=evolved.token)
    finally:
        evolved.stop()
    dbt_build(tmp_path)

    [(lines,)] = query(
        warehouse,
        "select count(*) from marts.dim_products where product_line like 'Outdoor / %'",
    )
    assert lines > 0
    [(missing,)] = query(
        warehouse,
        "select count(*) from marts.dim_products"
        " where product_line is null or list_price_usd is null",
    )
    assert missing == 0
    [(regions,)] = query(
        warehouse, "select count(*) from marts.dim_regions where region_id = 'apac'"
    )
    assert regions == 1
    [(orders,)] = query(warehouse, "select count(*) from marts.fct_orders")
    assert orders == len(replica_orders(simulator.dir))


@pytest.mark.parametrize("age_s", [None, 60, 2 * 86400, 30 * 86400])
def test_the_newest_built_load_is_found_however_old_it_is(simulator, warehouse, tmp_path, age_s):
    """An incremental mart resumes from the newest load id it holds, looked for first
    among recent loads (a scan that skips older blocks), then through the whole column:
    a minute-old, days-old or month-old build is found exactly, an empty mart gives ''."""
    import time

    pipeline.load(base_url=simulator.url, token=simulator.token)
    dbt_invoke(tmp_path, "seed")
    dbt_invoke(tmp_path, "run", "--select", "+fct_orders")
    if age_s is None:
        query(warehouse, "delete from marts.fct_orders")
        newest = ""
    else:
        newest = f"{time.time() - age_s:.6f}"
        # one row carries it, the others an older load
        query(warehouse, f"update marts.fct_orders set last_load_id = '{float(newest) - 3600:.6f}'")
        query(warehouse, f"update marts.fct_orders set last_load_id = '{newest}'"
                         " where order_id = (select min(order_id) from marts.fct_orders)")
    dbt_invoke(tmp_path, "run", "--select", "fct_orders")
    compiled = (tmp_path / "target" / "compiled" / "salesflow" / "models" / "marts"
                / "marketing" / "fct_orders.sql").read_text()
    # on DuckDB the build takes the loads after it (the text right after it, a space)
    assert (f"load_id >= '{newest} '" if newest else "load_id >= ''") in compiled
