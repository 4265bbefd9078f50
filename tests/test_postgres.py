"""salesflow on PostgreSQL: the same loaders and dbt project on a real server (started by
the ``postgres_server`` fixture), raw reconciled with the replica, the analyst role kept
to the marts, the marts equal to DuckDB's for the same data, and an incremental cycle."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from psycopg2 import errors

from benchmarks.oracle import replica_versions
from loaders import cli, dbt_project, roles
from loaders.board import marts as board_marts
from loaders.monitoring import status
from loaders.replica.settings import ENDPOINTS
from loaders.runners import pipeline
from loaders.runners.watch import watch
from loaders.schema_changes.changelog import recent_changes
from loaders.warehouse import raw_counts
from simulator import store
from simulator.generate import generate
from simulator.platform import Platform
from tests.support import AS_OF, ROOT, TOKEN
from tests.support.postgres import SUPERUSER_PASSWORD, PostgresServer
from tests.support.simulator import Simulator, start_simulator
from tests.support.warehouse import dbt_invoke

pytestmark = pytest.mark.slow

DATABASE = "salesflow_test"
PII_KEY = "pg-pii-key-9d41"  # the postgres target needs one configured (no generation)
LOADER_PASSWORD = "loader-secret-1"
ANALYST_LOGIN, ANALYST_PASSWORD = "alice", "alice-secret-1"


@dataclass
class Warehouse:
    server: PostgresServer
    sim: Simulator
    work: Path

    def loader(self):
        return self.server.connect(roles.LOADER_ROLE, LOADER_PASSWORD, DATABASE)

    def analyst(self):
        return self.server.connect(ANALYST_LOGIN, ANALYST_PASSWORD, DATABASE)

    def query(self, sql: str) -> list[tuple]:
        with closing(self.loader()) as con, con.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()


def build(work: Path, target: str) -> None:
    """``dbt build`` on ``target``, then the unit tests (those of incremental marts read
    the built model's columns)."""
    paths = work / f"dbt-{target}"
    dbt_invoke(paths, "build", "--exclude-resource-type", "unit_test", "--target", target)
    dbt_invoke(paths, "test", "--select", "test_type:unit", "--target", target)


@pytest.fixture(scope="module")
def pg(postgres_server: PostgresServer, tmp_path_factory) -> Iterator[Warehouse]:
    """A platform loaded into a fresh Postgres database by the loader role and built by
    dbt, with the roles set up first as a DBA would."""
    work = tmp_path_factory.mktemp("pg")
    generate(work / "sim", orders=300, seed=7, as_of=AS_OF, days=30)
    postgres_server.create_database(DATABASE)
    with closing(postgres_server.connect(database=DATABASE)) as admin:
        roles.init_roles(admin, DATABASE, roles.LOADER_ROLE, LOADER_PASSWORD,
                         analyst_logins={ANALYST_LOGIN: ANALYST_PASSWORD})
    wh = Warehouse(postgres_server, start_simulator(work / "sim"), work)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SALESFLOW_TARGET", "postgres")
        env.setenv("DESTINATION__POSTGRES__CREDENTIALS__HOST", postgres_server.host)
        env.setenv("DESTINATION__POSTGRES__CREDENTIALS__PORT", str(postgres_server.port))
        env.setenv("DESTINATION__POSTGRES__CREDENTIALS__USERNAME", roles.LOADER_ROLE)
        env.setenv("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", LOADER_PASSWORD)
        env.setenv("DESTINATION__POSTGRES__CREDENTIALS__DATABASE", DATABASE)
        env.setenv("SALESFLOW_PIPELINES_DIR", str(work / "dlt"))
        env.setenv("DLT_PROJECT_DIR", str(ROOT))
        env.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "3")
        env.setenv("SALESFLOW_PII_KEY", PII_KEY)
        try:
            result = pipeline.load(base_url=wh.sim.url, token=TOKEN)
            assert result.total > 0 and result.quarantined == 0
            build(work, "postgres")
            yield wh
        finally:
            wh.sim.stop()  # the one serving now (a test may restart it)


def raw_versions(wh: Warehouse) -> dict[str, set[tuple]]:
    """(primary key, updated_at in µs) of every raw row, with no key twice."""
    out = {}
    for entity, ep in ENDPOINTS.items():
        rows = wh.query(
            f"select {ep['primary_key']}, (extract(epoch from updated_at) * 1000000)::bigint"
            f" from raw.{entity}"
        )
        assert len(rows) == len({r[0] for r in rows}), f"duplicate keys in raw.{entity}"
        out[entity] = set(rows)
    return out


def assert_reconciled(wh: Warehouse) -> None:
    expected, found = replica_versions(wh.sim.dir), raw_versions(wh)
    for entity in ENDPOINTS:
        assert len(found[entity]) == len(expected[entity]), entity
        missing, extra = expected[entity] - found[entity], found[entity] - expected[entity]
        assert not missing and not extra, (
            f"{entity}: {len(missing)} missing, {len(extra)} unexpected; e.g."
            f" {sorted(missing)[:3]} / {sorted(extra)[:3]}"
        )


def replica_orders(sim_dir: Path) -> list[tuple[str, int]]:
    return store.query(sim_dir, "SELECT currency, total_cents FROM orders")


def assert_orders_reconciled(wh: Warehouse) -> None:
    """fct_orders holds every live order of the replica once, with its exact amount."""
    orders = replica_orders(wh.sim.dir)
    expected: dict[str, Decimal] = {}
    for currency, cents in orders:
        expected[currency] = expected.get(currency, Decimal(0)) + Decimal(cents) / 100
    [(n,)] = wh.query("select count(*) from marts.fct_orders")
    assert n == len(orders)
    found = dict(wh.query(
        "select currency_code, sum(total_amount) from marts.fct_orders group by 1"
    ))
    assert found == expected


def test_load_and_build_on_postgres_reconcile_with_the_replica(pg):
    assert_reconciled(pg)
    assert_orders_reconciled(pg)
    # every mart was built, by the loader role, in the marts schema
    tables = {r[0]: r[1] for r in pg.query(
        "select tablename, tableowner from pg_tables where schemaname = 'marts'"
    )}
    assert {"fct_orders", "product_sales_daily", "dim_customers"} <= set(tables)
    assert set(tables.values()) == {roles.LOADER_ROLE}
    # the commands read the same warehouse: raw counts, status, the schema changelog
    n_orders = len(replica_orders(pg.sim.dir))
    assert raw_counts()["orders"] == n_orders
    report = status.collect(pg.work / "dlt", ROOT)
    assert report["warehouse"] == "readable" and report["status"] == "green"
    assert {e["entity"]: e["rows_in_raw"] for e in report["entities"]}["orders"] == n_orders
    assert {c["entity"] for c in recent_changes()} >= set(ENDPOINTS)


def denied(con, sql: str) -> bool:
    """Whether ``sql`` is refused for lack of privilege."""
    with con.cursor() as cur:
        try:
            cur.execute(sql)
        except errors.InsufficientPrivilege:
            return True
    return False


def test_the_analyst_reads_the_marts_and_nothing_else(pg):
    with closing(pg.analyst()) as con:
        with con.cursor() as cur:
            cur.execute("select count(*), sum(revenue_usd) from marts.product_sales_daily")
            [(rows, revenue)] = cur.fetchall()
            assert rows > 0 and revenue > 0
            cur.execute("select count(*) from marts.pipeline_health")  # a view over raw
            assert cur.fetchone()[0] == len(ENDPOINTS)
        # personal data stays out of reach: raw, staging, reference data, snapshots (and
        # dlt's staging copies of raw, which the first merge creates: see the cycle test)
        for sql in (
            "select * from raw.customers limit 1",
            "select * from staging.stg_replica__customers limit 1",
            "select * from intermediate.int_order_items_joined_to_orders limit 1",
            "select * from reference.currency_rates limit 1",
            "select * from snapshots.products_snapshot limit 1",
        ):
            assert denied(con, sql), sql
        # and nothing can be written
        for sql in (
            "insert into marts.fct_orders (order_id) values (-1)",
            "update marts.fct_orders set order_status = 'x'",
            "delete from marts.fct_orders",
            "create table marts.mine (x int)",
            "create view marts.mine as select 1 as x",
            "create table public.mine (x int)",
            "create temporary table mine (x int)",
            "create schema mine",
        ):
            assert denied(con, sql), sql
    # the set-up can run again: nothing changes, nothing breaks
    with closing(pg.server.connect(database=DATABASE)) as admin:
        roles.init_roles(admin, DATABASE, roles.LOADER_ROLE, None,
                         analyst_logins={ANALYST_LOGIN: None})
    with closing(pg.analyst()) as con, con.cursor() as cur:
        cur.execute("select count(*) from marts.fct_orders")
        assert cur.fetchone()[0] > 0
        assert denied(con, "select * from raw.orders limit 1")
        # the key personal data is hashed with is not the analysts' to read
        cur.execute("select current_setting('salesflow.pii_ipad', true),"
                    " current_setting('salesflow.pii_opad', true)")
        assert cur.fetchone() in ((None, None), ("", ""))
        cur.execute("select count(*) from pg_roles where rolconfig::text like '%pii%'")
        assert cur.fetchone()[0] == 0


def test_the_board_reads_the_marts_as_the_analyst(pg, monkeypatch):
    for name, value in (("PGHOST", pg.server.host), ("PGPORT", str(pg.server.port)),
                        ("PGUSER", ANALYST_LOGIN), ("PGPASSWORD", ANALYST_PASSWORD),
                        ("PGDATABASE", DATABASE)):
        monkeypatch.setenv(name, value)
    with board_marts.connect() as r:
        assert r.engine == "postgres" and "as alice" in r.where
        day = board_marts.sales_day(r, date.today())  # the history ends at AS_OF
        assert day <= AS_OF.date()
        hours = board_marts.hourly(r, day, board_marts.Filters())
        start, end = board_marts.day_bounds(day)
        day_totals = board_marts.totals(r, start, end, board_marts.Filters())
        line = board_marts.options(r).product_lines[0]
        one_line = board_marts.totals(r, start, end, board_marts.Filters(product_lines=(line,)))
        assert not board_marts.funnel_by_channel(r, day - timedelta(days=27), day).empty
        assert not board_marts.campaigns(r, day - timedelta(days=27), day).empty
        assert not board_marts.cohorts(r, 12).empty
        assert board_marts.new_customers(r, 12)["customers"].sum() > 0
        assert board_marts.currency(r).newest_sale_at is not None
    [(revenue, units, orders)] = pg.query(
        "select sum(revenue_usd), sum(units), (select count(*) from marts.fct_orders"
        f" where not is_cancelled and order_date = '{day}')"
        f" from marts.product_sales_daily where sales_date = '{day}'")
    assert round(hours["revenue_usd"].sum(), 2) == float(revenue)
    assert (day_totals.revenue_usd, day_totals.units, day_totals.orders) == (
        float(revenue), units, orders)
    assert 0 < one_line.revenue_usd < day_totals.revenue_usd


def test_init_roles_from_the_command_line(pg, monkeypatch, capsys):
    monkeypatch.setenv("PGPASSWORD", SUPERUSER_PASSWORD)
    args = ["warehouse", "init-roles", "--target", "postgres", "--admin-user", "postgres"]
    assert cli.main(args) == 0
    assert "roles ready in salesflow_test" in capsys.readouterr().out
    assert cli.main([*args, "--print", "--analyst-login", "bob"]) == 0
    script = capsys.readouterr().out
    assert 'GRANT "salesflow_analyst" TO "bob";' in script
    assert 'GRANT USAGE ON SCHEMA "marts" TO "salesflow_analyst";' in script
    assert LOADER_PASSWORD not in script and SUPERUSER_PASSWORD not in script
    monkeypatch.setenv("PGPASSWORD", "wrong")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "password authentication failed" in err and "PGPASSWORD" in err
    with closing(pg.analyst()) as con, con.cursor() as cur:  # still reads the marts
        cur.execute("select count(*) from marts.fct_orders")
        assert cur.fetchone()[0] > 0


def test_the_set_up_refuses_a_superuser_as_analyst(pg):
    with closing(pg.server.connect(database=DATABASE)) as admin, pytest.raises(
        ValueError, match="superuser"
    ):
        roles.init_roles(admin, DATABASE, analyst_logins={"postgres": None})


INTEGER = ("bigint", "integer", "smallint")
DECIMAL = ("numeric", "decimal", "double")


def profile_sql(columns: list[tuple[str, str]], table: str) -> str:
    """Row count and the sum of every numeric column of a mart, as (name, kind, value)."""
    parts = [f"select 'rows', 'integer', cast(count(*) as double precision) from marts.{table}"]
    for name, data_type in columns:
        kind = "integer" if data_type.lower().startswith(INTEGER) else (
            "decimal" if data_type.lower().startswith(DECIMAL) else None
        )
        if kind:
            parts.append(f"select '{name}', '{kind}', cast(sum({name}) as double precision)"
                         f" from marts.{table}")
    return " union all ".join(parts)


def pg_profile(wh: Warehouse, marts: list[str]) -> dict[str, dict[str, tuple]]:
    out = {}
    for t in marts:
        cols = wh.query(
            "select column_name, data_type from information_schema.columns where"
            f" table_schema = 'marts' and table_name = '{t}'"
        )
        out[t] = {c: (kind, v) for c, kind, v in wh.query(profile_sql(cols, t))}
    return out


def duckdb_profile(path: Path, marts: list[str]) -> dict[str, dict[str, tuple]]:
    dbt_project.release_warehouse()  # dbt-duckdb keeps the file open in this process
    out = {}
    with closing(duckdb.connect(str(path), read_only=True)) as con:
        for t in marts:
            cols = con.execute(
                "select column_name, data_type from information_schema.columns where"
                " table_schema = 'marts' and table_name = ?", [t]
            ).fetchall()
            out[t] = {c: (kind, v) for c, kind, v in con.execute(profile_sql(cols, t)).fetchall()}
    return out


def test_marts_on_postgres_equal_those_on_duckdb(pg, tmp_path, monkeypatch):
    monkeypatch.setenv("SALESFLOW_TARGET", "dev")
    monkeypatch.setenv("SALESFLOW_DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("SALESFLOW_PIPELINES_DIR", str(tmp_path / "dlt"))
    pipeline.load(base_url=pg.sim.url, token=TOKEN)
    dbt_invoke(tmp_path, "build", "--exclude-resource-type", "unit_test", "--target", "dev")

    marts = sorted(r[0] for r in pg.query(
        "select table_name from information_schema.tables where table_schema = 'marts'"
    ))
    assert len(marts) >= 10
    on_pg = pg_profile(pg, marts)
    on_duckdb = duckdb_profile(tmp_path / "warehouse.duckdb", marts)
    assert {"units", "revenue_usd", "orders"} <= set(on_pg["product_sales_daily"])
    for mart in marts:
        pg_cols, dd_cols = on_pg[mart], on_duckdb[mart]
        rows = pg_cols["rows"][1]
        assert rows == dd_cols["rows"][1], mart
        if mart == "pipeline_health":  # minutes since the load: "now" differs
            continue
        assert set(pg_cols) == set(dd_cols), mart
        for column, (kind, value) in pg_cols.items():
            other = dd_cols[column][1]
            if value is None or other is None or kind == "integer":
                assert value == other, (mart, column, value, other)
            else:
                # amounts are rounded to the cent row by row; DuckDB divides in floating
                # point, Postgres in numeric: an exact half cent may round apart
                assert abs(value - other) <= 0.01 * rows + 1e-9 * abs(value), (
                    mart, column, value, other
                )

    # revenue per product line, the question the marts exist for
    by_line = dict(pg.query(
        "select product_line, sum(revenue_usd) from marts.product_sales_daily group by 1"
    ))
    with closing(duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)) as con:
        by_line_duckdb = dict(con.execute(
            "select product_line, sum(revenue_usd) from marts.product_sales_daily group by 1"
        ).fetchall())
        # personal data is hashed alike by both (hash_pii): the same customers join
        hashes_duckdb = set(con.execute(
            "select customer_id, email_hash, customer_name_hash from marts.dim_customers"
        ).fetchall())
    assert set(by_line) == set(by_line_duckdb)
    for line, revenue in by_line.items():
        assert abs(revenue - by_line_duckdb[line]) <= Decimal("0.05"), line
    hashes = set(pg.query(
        "select customer_id, email_hash, customer_name_hash from marts.dim_customers"
    ))
    assert hashes == hashes_duckdb and len(hashes) > 0
    # ... with the key: HMAC-SHA256 of the trimmed, lower-cased address
    [(customer_id, email)] = store.query(
        pg.sim.dir, "SELECT customer_id, email FROM customers ORDER BY customer_id LIMIT 1"
    )
    expected = hmac.new(PII_KEY.encode(), email.strip().lower().encode(), hashlib.sha256)
    assert (customer_id, expected.hexdigest()) in {(h[0], h[1]) for h in hashes}


def test_an_incremental_cycle_after_platform_activity(pg, monkeypatch):
    before = pg.query("select count(*), sum(units) from marts.product_sales_daily")
    pg.sim.stop()  # so only this test's activity changes the platform
    with Platform(pg.sim.dir, seed=13) as platform:
        for _ in range(3):
            platform.tick(25)  # new orders, status changes, edits and deletions
    store.replicate(pg.sim.dir)
    pg.sim = start_simulator(pg.sim.dir)
    published = pg.work / "published.duckdb"
    monkeypatch.setenv("SALESFLOW_PUBLISHED_PATH", str(published))
    # one watch cycle: load what changed, build (incremental marts: delete+insert of the
    # changed keys) with the data tests; a server warehouse publishes nothing
    stats = watch(interval=0, max_cycles=1, base_url=pg.sim.url, token=TOKEN)
    assert stats.last["outcome"] == "success_new_data" and stats.last["tests"], stats.last
    assert stats.builds == 1 and stats.failures == 0 and "build" not in stats.last
    assert stats.published == 0 and not published.exists()

    assert_reconciled(pg)
    assert_orders_reconciled(pg)
    assert pg.query("select count(*), sum(units) from marts.product_sales_daily") != before
    # the incremental daily aggregate equals one computed from scratch from the lines
    [(stale,)] = pg.query(
        """
        with expected as (
            select
                cast(ordered_at as date) as sales_date, product_line, region_id, channel,
                sum(quantity) as units, sum(net_amount_usd) as revenue_usd
            from marts.fct_order_items
            where not is_cancelled
            group by 1, 2, 3, 4
        )
        select count(*)
        from expected
        full outer join marts.product_sales_daily as built
            using (sales_date, product_line, region_id, channel)
        where built.units is distinct from expected.units
            or built.revenue_usd is distinct from expected.revenue_usd
        """
    )
    assert stale == 0
    with closing(pg.analyst()) as con, con.cursor() as cur:  # grants survive the rebuild
        cur.execute("select count(*) from marts.fct_orders")
        assert cur.fetchone()[0] == len(replica_orders(pg.sim.dir))
    # the cycle merged into raw: dlt's staging copies exist now, out of the analyst's reach
    assert pg.query("select count(*) from raw_staging.customers")
    with closing(pg.analyst()) as con:
        assert denied(con, "select * from raw_staging.customers limit 1")
