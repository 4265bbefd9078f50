"""What the board reads: the published marts, read-only, as analysts read them.

DuckDB: the published file (:func:`loaders.runners.publish.published_path`), opened
read-only for each refresh and closed at once, so every refresh sees the newest
publication and no version stays held (a held one would make the next publication copy
instead of reusing a spare). PostgreSQL: the ``marts`` schema through libpq's own
settings (``PGHOST``, ``PGUSER``, ``PGPASSWORD`` or ``~/.pgpass``, ...) — the analyst's
login, never the loader's credentials.

Queries are written once for both engines (``%s`` placeholders). Timestamps in the marts
are UTC without a zone; parameters are passed the same way. Revenue is net line revenue
in US dollars on orders that were not cancelled (the semantic layer's ``line_revenue``),
units are ``units``, orders are distinct orders that were not cancelled (``orders``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from loaders import warehouse
from loaders.runners.publish import published_path

SCHEMA = "marts"


class NotPublished(RuntimeError):
    """Nothing to read yet: no published file, or no marts in it."""


@dataclass(frozen=True)
class Filters:
    """The live page's filters; an empty tuple means all."""

    product_lines: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    def where(self, prefix: str = "") -> tuple[str, list[Any]]:
        """``and ...`` conditions for these filters, and their parameters."""
        sql, params = "", []
        for column, values in (("product_line", self.product_lines),
                               ("region_id", self.regions), ("channel", self.channels)):
            if values:
                sql += f" and {prefix}{column} in ({', '.join(['%s'] * len(values))})"
                params += list(values)
        return sql, params


class Reader:
    """One connection, for one refresh."""

    def __init__(self, con: Any, engine: str, where: str) -> None:
        self.con, self.engine, self.where = con, engine, where

    def frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        if self.engine == "duckdb":
            return self.con.execute(sql.replace("%s", "?"), list(params)).df()
        with self.con.cursor() as cur:
            cur.execute(sql, list(params))
            columns = [d[0] for d in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=columns)

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        f = self.frame(sql, params)
        return None if f.empty else f.iat[0, 0]


@contextmanager
def connect(path: Path | None = None) -> Iterator[Reader]:
    """A read-only connection to the marts analysts read (see the module's docstring)."""
    if warehouse.is_duckdb():
        import duckdb

        path = path or published_path()
        if not path.exists():
            raise NotPublished(f"no published marts yet at {path}: run `make demo` or"
                               " `salesflow watch`")
        con = duckdb.connect(str(path), read_only=True)
        try:
            yield Reader(con, "duckdb", str(path))
        finally:
            con.close()
        return
    import psycopg2

    pg = psycopg2.connect("", connect_timeout=10)  # libpq's environment: the analyst
    try:
        pg.set_session(readonly=True, autocommit=True)
        yield Reader(pg, "postgres", f"{pg.info.dbname} on {pg.info.host}"
                     f" as {pg.info.user}")
    finally:
        pg.close()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time())
    return start, start + timedelta(days=1)


def utcnow() -> datetime:
    """Now in UTC, without a zone, as the marts keep time."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


# -- how current ---------------------------------------------------------------------

@dataclass(frozen=True)
class Currency:
    """How current what a page shows is."""

    published_at: datetime | None  # the publication read (DuckDB)
    newest_sale_at: datetime | None  # the newest sold line's source update
    held_back: tuple[str, ...] = ()


def currency(r: Reader) -> Currency:
    published, held = None, ()
    if r.engine == "duckdb":
        f = r.frame(f"select published_at, held_back_tables from {SCHEMA}._published")
        if not f.empty:
            published = pd.Timestamp(f.iat[0, 0]).tz_convert("UTC").tz_localize(None)
            held = tuple(() if f.iat[0, 1] is None else f.iat[0, 1])
    newest = r.scalar(f"select max(last_source_updated_at) from {SCHEMA}.product_sales_hourly"
                      " where sales_hour >= %s", [utcnow() - timedelta(days=8)])
    if newest is None or pd.isna(newest):
        newest = r.scalar(f"select max(last_source_updated_at) from"
                          f" {SCHEMA}.product_sales_hourly")
    newest = None if newest is None or pd.isna(newest) else pd.Timestamp(newest).to_pydatetime()
    return Currency(published.to_pydatetime() if published is not None else None, newest, held)


# -- the live page -------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    product_lines: list[str]
    regions: dict[str, str]  # id -> name
    channels: list[str]


def options(r: Reader) -> Options:
    lines = r.frame(f"select distinct product_line from {SCHEMA}.dim_products"
                    " where product_line is not null order by 1")
    regions = r.frame(f"select region_id, region_name from {SCHEMA}.dim_regions order by 1")
    channels = r.frame(f"select distinct channel from {SCHEMA}.product_sales_daily"
                       " where channel is not null order by 1")
    return Options(list(lines["product_line"]),
                   dict(zip(regions["region_id"], regions["region_name"], strict=True)),
                   list(channels["channel"]))


def sales_day(r: Reader, today: date) -> date:
    """Today, or the last day with sales when there is none yet today."""
    start, end = day_bounds(today)
    newest = r.scalar(f"select max(sales_hour) from {SCHEMA}.product_sales_hourly"
                      " where sales_hour < %s", [end])
    if newest is None or pd.isna(newest) or pd.Timestamp(newest) >= pd.Timestamp(start):
        return today
    return pd.Timestamp(newest).date()


def hourly(r: Reader, day: date, filters: Filters) -> pd.DataFrame:
    """Revenue and units per hour and product line, and orders per hour, on ``day``:
    columns sales_hour, product_line, revenue_usd, units (orders per hour in
    :func:`orders_by_hour`: an order may hold several product lines)."""
    start, end = day_bounds(day)
    cond, params = filters.where()
    f = r.frame(
        f"select sales_hour, product_line, sum(revenue_usd) as revenue_usd,"
        f" sum(units) as units from {SCHEMA}.product_sales_hourly"
        f" where sales_hour >= %s and sales_hour < %s{cond}"
        " group by sales_hour, product_line order by sales_hour, product_line",
        [start, end, *params],
    )
    f["revenue_usd"] = f["revenue_usd"].astype(float)
    f["units"] = f["units"].astype("int64")
    return f


def orders_by_hour(r: Reader, day: date, filters: Filters) -> pd.DataFrame:
    """Distinct orders not cancelled per hour of ``day`` (with a line in the filters)."""
    start, end = day_bounds(day)
    cond, params = filters.where()
    f = r.frame(
        f"select date_trunc('hour', ordered_at) as sales_hour,"
        f" count(distinct order_id) as orders from {SCHEMA}.fct_order_items"
        f" where not is_cancelled and ordered_at >= %s and ordered_at < %s{cond}"
        " group by 1 order by 1",
        [start, end, *params],
    )
    f["orders"] = f["orders"].astype("int64")
    return f


@dataclass(frozen=True)
class Totals:
    revenue_usd: float
    units: int
    orders: int


def totals(r: Reader, start: datetime, end: datetime, filters: Filters) -> Totals:
    """Revenue, units and orders of the hours in [start, end)."""
    cond, params = filters.where()
    sold = r.frame(
        f"select coalesce(sum(revenue_usd), 0) as revenue_usd, coalesce(sum(units), 0)"
        f" as units from {SCHEMA}.product_sales_hourly"
        f" where sales_hour >= %s and sales_hour < %s{cond}",
        [start, end, *params],
    )
    orders = r.scalar(
        f"select count(distinct order_id) from {SCHEMA}.fct_order_items"
        f" where not is_cancelled and ordered_at >= %s and ordered_at < %s{cond}",
        [start, end, *params],
    )
    return Totals(float(sold.iat[0, 0]), int(sold.iat[0, 1]), int(orders or 0))


# -- funnel and acquisition ----------------------------------------------------------

def funnel_by_channel(r: Reader, since: date, until: date) -> pd.DataFrame:
    """Sessions reaching each step per channel over [since, until]."""
    return r.frame(
        "select channel, sum(sessions) as sessions, sum(sessions_with_view) as viewed,"
        " sum(sessions_with_cart) as carted, sum(sessions_with_checkout) as checked_out,"
        f" sum(sessions_with_purchase) as purchased from {SCHEMA}.funnel_daily"
        " where session_date >= %s and session_date <= %s"
        " group by channel order by sessions desc",
        [since, until],
    ).astype({c: "int64" for c in ("sessions", "viewed", "carted", "checked_out",
                                     "purchased")})


def conversion_by_day(r: Reader, since: date, until: date) -> pd.DataFrame:
    """The session conversion rate per day and channel."""
    f = r.frame(
        "select session_date, channel, sum(sessions_with_purchase) as purchased,"
        f" sum(sessions) as sessions from {SCHEMA}.funnel_daily"
        " where session_date >= %s and session_date <= %s"
        " group by session_date, channel order by session_date, channel",
        [since, until],
    )
    f["conversion_rate"] = f["purchased"].astype(float) / f["sessions"].where(
        f["sessions"] > 0).astype(float)
    return f


def campaigns(r: Reader, since: date, until: date, limit: int = 15) -> pd.DataFrame:
    """Sessions and purchases per UTM campaign, source and medium (the largest)."""
    f = r.frame(
        "select coalesce(utm_campaign, '(none)') as campaign,"
        " coalesce(utm_source, '(none)') as source, coalesce(utm_medium, '(none)') as medium,"
        " count(*) as sessions, sum(case when has_purchased then 1 else 0 end) as purchases"
        f" from {SCHEMA}.fct_sessions where session_date >= %s and session_date <= %s"
        " group by 1, 2, 3 order by sessions desc, campaign limit %s",
        [since, until, limit],
    ).astype({"sessions": "int64", "purchases": "int64"})
    f["conversion_rate"] = f["purchases"] / f["sessions"].where(f["sessions"] > 0)
    return f


# -- retention -----------------------------------------------------------------------

def months_before(day: Any, months: int) -> date:
    """The first day of the month ``months`` before ``day``'s (today's when None)."""
    d = utcnow().date() if day is None or pd.isna(day) else pd.Timestamp(day).date()
    index = d.year * 12 + d.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


def cohorts(r: Reader, months: int = 12) -> pd.DataFrame:
    """The last ``months`` cohorts: customers, retention and revenue per month since the
    first order."""
    newest = r.scalar(f"select max(cohort_month) from {SCHEMA}.customer_cohorts_monthly")
    f = r.frame(
        "select cohort_month, months_since_first_order, cohort_customers,"
        f" active_customers, orders, revenue_usd from {SCHEMA}.customer_cohorts_monthly"
        " where cohort_month >= %s order by cohort_month, months_since_first_order",
        [months_before(newest, months - 1)],
    )
    f["revenue_usd"] = f["revenue_usd"].astype(float)
    f["retention"] = f["active_customers"] / f["cohort_customers"].where(
        f["cohort_customers"] > 0)
    return f


def new_customers(r: Reader, months: int = 12) -> pd.DataFrame:
    """Customers by the month of their first order that was not cancelled, acquisition
    channel and region (the semantic layer's ``new_customers``), the last ``months``."""
    newest = r.scalar(f"select max(first_order_date) from {SCHEMA}.dim_customers")
    f = r.frame(
        "select cast(date_trunc('month', first_order_date) as date) as cohort_month,"
        " acquisition_channel, region_id, count(*) as customers"
        f" from {SCHEMA}.dim_customers where has_ordered and first_order_date >= %s"
        " group by 1, 2, 3 order by 1, 2, 3",
        [months_before(newest, months - 1)],
    )
    f["customers"] = f["customers"].astype("int64")
    return f
