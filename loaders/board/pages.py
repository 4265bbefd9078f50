"""The board's three pages, one per dbt exposure, and what every page shows on top.

Each page draws its filters on a full run and its figures in a fragment that Streamlit
re-runs every ``SALESFLOW_BOARD_REFRESH_SECONDS`` (default 3): new sales appear without
a reload. Every refresh opens the marts anew (:func:`.marts.connect`) and says how
current they are.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
import yaml

from loaders import config
from loaders.board import marts, notices
from loaders.board.marts import Filters, Reader
from loaders.contract.document import committed
from loaders.monitoring import alarms, status

# the dbt exposure each page is for, and its path on the board (the exposures' URLs)
PAGES = {
    "live": "product_sales_live_board",
    "funnel": "funnel_and_acquisition_review",
    "retention": "customer_retention",
}


def refresh_seconds() -> float:
    return float(os.environ.get("SALESFLOW_BOARD_REFRESH_SECONDS", "3"))


def money(x: float) -> str:
    return f"${x:,.2f}"


def ago(t: datetime | None, now: datetime) -> str:
    if t is None:
        return "unknown"
    return f"{alarms.human(max((now - t).total_seconds(), 0))} ago"


def show_currency(r: Reader) -> None:
    """How current the page's figures are: the publication read and the newest sale."""
    c = marts.currency(r)
    now = marts.utcnow()
    parts = []
    if c.published_at is not None:
        parts.append(f"published {c.published_at:%H:%M:%S} UTC ({ago(c.published_at, now)})")
    if c.newest_sale_at is not None:
        parts.append(f"newest sale {c.newest_sale_at:%Y-%m-%d %H:%M:%S} UTC"
                     f" ({ago(c.newest_sale_at, now)})")
    if c.held_back:
        parts.append("held back (last good version): " + ", ".join(c.held_back))
    st.caption("Data: " + " · ".join(parts or ["no sales yet"]) + f" · refreshed"
               f" {now:%H:%M:%S} UTC, every {refresh_seconds():g} s · {r.where}",
               help="Figures come from the published marts; each refresh reads the newest"
                    " publication.")


def refreshing(draw: Callable[[Reader], None]) -> None:
    """Draw the page's figures in a fragment Streamlit re-runs every refresh, each time
    on a fresh connection."""

    @st.fragment(run_every=refresh_seconds())
    def figures() -> None:
        reading(draw)

    figures()


def reading(draw: Callable[[Reader], None]) -> None:
    """Run ``draw`` on a fresh connection; say so on the page when there is nothing yet
    or the marts cannot be read (the next refresh tries again)."""
    try:
        with marts.connect() as r:
            draw(r)
    except marts.NotPublished as exc:
        st.info(str(exc))
    except Exception as exc:  # a refresh that fails says why and retries on the next
        st.warning(f"Could not read the marts this time ({type(exc).__name__}: {exc});"
                   " retrying.")


# -- the banner ----------------------------------------------------------------------

@st.cache_data(ttl=300, show_spinner=False)
def _contract() -> dict[str, Any] | None:
    return committed()


SHOW = {notices.ERROR: st.error, notices.WARNING: st.warning, notices.INFO: st.info,
        notices.SUCCESS: st.success}


def banner() -> None:
    """The pipeline's notices, re-read at every refresh."""
    try:
        report = status.collect(config.pipelines_dir(), config.PROJECT_ROOT,
                                read_warehouse=False)
        found = notices.from_status(report, _contract())
    except Exception as exc:  # the figures stay readable; the next refresh tries again
        st.warning(f"The pipeline's notices could not be read ({type(exc).__name__}:"
                   f" {exc}); retrying.")
        return
    with st.container(key="pipeline_notices"):
        for n in found:
            text = n.text
            if n.dashboards:
                text += f"  \nDashboards: {', '.join(n.dashboards)}"
            if n.owners:
                text += f"  \nOwners: {', '.join(n.owners)}"
            SHOW[n.level](f"**{n.title}**  \n{text}")


# -- overview ------------------------------------------------------------------------

def exposures() -> list[dict[str, Any]]:
    """The dbt project's exposures, as declared in its YAML (``models/**/*exposures.yml``):
    the dashboards this board serves, their owners and the marts they read."""
    found: list[dict[str, Any]] = []
    for path in sorted((config.PROJECT_ROOT / "models").rglob("*exposures.yml")):
        found += (yaml.safe_load(path.read_text()) or {}).get("exposures") or []
    return found


def overview(links: dict[str, Any]) -> Callable[[], None]:
    """The start page: each dashboard with its owner and the marts it reads; ``links``:
    the exposure's name -> its page."""

    def draw() -> None:
        st.title("salesflow board")
        st.caption("The marketing dashboards of the dbt project's exposures, on the"
                   " published marts; the banner above says what the pipeline wants you"
                   " to know.")
        for e in exposures():
            with st.container(border=True):
                page = links.get(e["name"])
                if page is not None:
                    st.page_link(page, label=f"**{e.get('label', e['name'])}**")
                else:
                    st.markdown(f"**{e.get('label', e['name'])}** (not on this board)")
                owner = e.get("owner") or {}
                st.write(" ".join(str(e.get("description", "")).split()))
                reads = ", ".join(d.split("'")[1] for d in e.get("depends_on") or []
                                  if "'" in d)
                st.caption(f"Owner: {owner.get('name', '-')} ({owner.get('email', '-')})"
                           f" · maturity {e.get('maturity', '-')} · reads {reads}")

    return draw


# -- live ----------------------------------------------------------------------------

def _filters(r: Reader) -> Filters:
    o = marts.options(r)
    side = st.sidebar
    side.header("Filters")
    lines = side.multiselect("Product line", o.product_lines, key="product_lines")
    regions = side.multiselect("Region", list(o.regions), key="regions",
                               format_func=lambda rid: f"{o.regions[rid]} ({rid})")
    channels = side.multiselect("Channel", o.channels, key="channels")
    return Filters(tuple(lines), tuple(regions), tuple(channels))


def live() -> None:
    st.title("Product sales, live")
    st.caption("Net line revenue in US dollars, units and orders that were not cancelled,"
               " by hour (UTC). Source: product_sales_hourly, fct_order_items.")
    chosen = Filters()
    try:
        with marts.connect() as r:
            chosen = _filters(r)
    except marts.NotPublished:
        pass  # nothing to filter yet: the figures below say so, and retry
    except Exception as exc:  # the figures stay, unfiltered
        st.sidebar.warning(f"Filters unavailable ({type(exc).__name__}: {exc}).")
    refreshing(lambda r: _live(r, chosen))


def _live(r: Reader, f: Filters) -> None:
    now = marts.utcnow()
    day = marts.sales_day(r, now.date())
    is_today = day == now.date()
    week_ago = day - timedelta(days=7)
    # today so far against the same hours of the same weekday last week
    upto = (now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            if is_today else datetime.combine(day, datetime.min.time()) + timedelta(days=1))
    start = datetime.combine(day, datetime.min.time())
    this = marts.totals(r, start, upto, f)
    last = marts.totals(r, start - timedelta(days=7), upto - timedelta(days=7), f)
    label = "today" if is_today else f"on {day:%a %b %-d}"
    if not is_today:
        st.info(f"No sales yet today ({now:%a %b %-d}, UTC): showing {day:%a %b %-d},"
                " the last day with sales.")
    versus = f"vs {week_ago:%a %b %-d}" + (f" up to {upto:%H:%M}" if is_today else "")

    def delta(a: float, b: float) -> str | None:
        return None if not b else f"{(a - b) / b:+.1%} {versus}"

    c1, c2, c3 = st.columns(3)
    c1.metric(f"Revenue {label} (USD)", money(this.revenue_usd),
              delta(this.revenue_usd, last.revenue_usd))
    c2.metric(f"Units {label}", f"{this.units:,}", delta(this.units, last.units))
    c3.metric(f"Orders {label}", f"{this.orders:,}", delta(this.orders, last.orders))

    hours = marts.hourly(r, day, f)
    orders = marts.orders_by_hour(r, day, f)
    left, right = st.columns([3, 2])
    with left:
        st.subheader(f"Revenue by hour and product line, {day:%a %b %-d}")
        if hours.empty:
            st.write("No sales yet.")
        else:
            st.altair_chart(
                alt.Chart(hours.assign(hour=hours["sales_hour"].dt.hour)).mark_bar().encode(
                    x=alt.X("hour:O", title="hour (UTC)", scale=alt.Scale(domain=HOURS)),
                    y=alt.Y("sum(revenue_usd):Q", title="revenue (USD)"),
                    color=alt.Color("product_line:N", title="product line"),
                    tooltip=["sales_hour:T", "product_line:N", "revenue_usd:Q", "units:Q"],
                ),
                width="stretch",
            )
    with right:
        st.subheader("Revenue per product line")
        per_line = (hours.groupby("product_line", as_index=False)
                    [["revenue_usd", "units"]].sum()
                    .sort_values("revenue_usd", ascending=False))
        st.table(pd.DataFrame({
            "product line": per_line["product_line"],
            "revenue (USD)": per_line["revenue_usd"].map(money),
            "units": per_line["units"].map("{:,}".format),
        }).set_index("product line"))
    a, b = st.columns(2)
    with a:
        st.subheader("Orders by hour")
        if not orders.empty:
            st.altair_chart(alt.Chart(orders.assign(hour=orders["sales_hour"].dt.hour))
                            .mark_bar().encode(
                x=alt.X("hour:O", title="hour (UTC)", scale=alt.Scale(domain=HOURS)),
                y=alt.Y("orders:Q", title="orders"),
                tooltip=["sales_hour:T", "orders:Q"],
            ), width="stretch")
    with b:
        st.subheader(f"Cumulative revenue vs {week_ago:%a %b %-d}")
        before = marts.hourly(r, week_ago, f)
        shown = upto.hour if is_today else 24
        curves = pd.concat([_cumulative(hours, "this day", shown or 24),
                            _cumulative(before, "same weekday last week", 24)])
        if not curves.empty:
            st.altair_chart(alt.Chart(curves).mark_line().encode(
                x=alt.X("hour:Q", title="hour (UTC)", scale=alt.Scale(domain=[0, 24])),
                y=alt.Y("revenue_usd:Q", title="revenue so far (USD)"),
                color=alt.Color("day:N", title=None),
            ), width="stretch")
    show_currency(r)


HOURS = list(range(24))


def _cumulative(hours: pd.DataFrame, name: str, until: int) -> pd.DataFrame:
    """Revenue so far at the end of each hour of a day, up to hour ``until``."""
    per_hour = (hours.groupby(hours["sales_hour"].dt.hour)["revenue_usd"].sum()
                if not hours.empty else pd.Series(dtype=float))
    per_hour = per_hour.reindex(range(until), fill_value=0.0)
    return pd.DataFrame({"hour": [h + 1 for h in range(until)],
                         "revenue_usd": per_hour.cumsum().to_numpy(), "day": name})


# -- funnel and acquisition ----------------------------------------------------------

def funnel() -> None:
    st.title("Funnel and acquisition")
    st.caption("Sessions reaching each step (view → cart → checkout → purchase), by"
               " channel and UTM campaign. Source: funnel_daily, fct_sessions.")
    days = st.sidebar.slider("Days", 1, 90, 28, key="funnel_days")
    refreshing(lambda r: _funnel(r, days))


STEPS = [("sessions", "session"), ("viewed", "product view"), ("carted", "cart"),
         ("checked_out", "checkout"), ("purchased", "purchase")]


def _funnel(r: Reader, days: int) -> None:
    until = marts.utcnow().date()
    since = until - timedelta(days=days - 1)
    by_channel = marts.funnel_by_channel(r, since, until)
    st.subheader(f"Conversion by step, {since:%b %-d} – {until:%b %-d}")
    if by_channel.empty:
        st.write("No sessions in this period.")
        show_currency(r)
        return
    steps = pd.DataFrame({"step": [s for _, s in STEPS],
                          "sessions": [int(by_channel[c].sum()) for c, _ in STEPS]})
    steps["of all sessions"] = steps["sessions"] / max(steps["sessions"].iloc[0], 1)
    left, right = st.columns(2)
    with left:
        st.altair_chart(alt.Chart(steps).mark_bar().encode(
            x=alt.X("sessions:Q"), y=alt.Y("step:N", sort=None, title=None),
            tooltip=["step", "sessions", alt.Tooltip("of all sessions:Q", format=".1%")],
        ), width="stretch")
    with right:
        rates = by_channel.assign(
            conversion=by_channel["purchased"] / by_channel["sessions"].where(
                by_channel["sessions"] > 0),
            cart=by_channel["carted"] / by_channel["viewed"].where(by_channel["viewed"] > 0),
        )
        st.table(pd.DataFrame({
            "channel": rates["channel"],
            "sessions": rates["sessions"].map("{:,}".format),
            "view → cart": rates["cart"].map("{:.1%}".format),
            "conversion": rates["conversion"].map("{:.2%}".format),
        }).set_index("channel"))
    st.subheader("Session conversion by day and channel")
    daily = marts.conversion_by_day(r, since, until)
    st.altair_chart(alt.Chart(daily).mark_line().encode(
        x=alt.X("session_date:T", title=None),
        y=alt.Y("conversion_rate:Q", title="conversion", axis=alt.Axis(format="%")),
        color=alt.Color("channel:N"),
    ), width="stretch")
    st.subheader("Campaigns (UTM)")
    c = marts.campaigns(r, since, until)
    st.table(pd.DataFrame({
        "campaign": c["campaign"], "source": c["source"], "medium": c["medium"],
        "sessions": c["sessions"].map("{:,}".format),
        "purchases": c["purchases"].map("{:,}".format),
        "conversion": c["conversion_rate"].map("{:.2%}".format),
    }).set_index("campaign"))
    show_currency(r)


# -- retention -----------------------------------------------------------------------

def retention() -> None:
    st.title("Customer retention")
    st.caption("Monthly cohorts by first order: share of the cohort ordering again, and"
               " revenue, by months since the first order. Source:"
               " customer_cohorts_monthly.")
    months = st.sidebar.slider("Cohorts (months)", 2, 24, 12, key="cohort_months")
    refreshing(lambda r: _retention(r, months))


def _retention(r: Reader, months: int) -> None:
    c = marts.cohorts(r, months)
    if c.empty:
        st.write("No cohorts yet.")
        show_currency(r)
        return
    c["cohort"] = pd.to_datetime(c["cohort_month"]).dt.strftime("%Y-%m")
    st.subheader("Retention: share of the cohort ordering in each month")
    grid = alt.Chart(c).encode(
        x=alt.X("months_since_first_order:O", title="months since first order",
                axis=alt.Axis(labelAngle=0)),
        y=alt.Y("cohort:O", title="cohort"),
    )
    cells = grid.mark_rect().encode(
        color=alt.Color("retention:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]),
                        legend=alt.Legend(format="%")),
        tooltip=["cohort", "months_since_first_order", "cohort_customers",
                 "active_customers", alt.Tooltip("retention:Q", format=".1%"),
                 alt.Tooltip("revenue_usd:Q", format=",.2f")],
    )
    labels = grid.mark_text(baseline="middle").encode(
        text=alt.Text("retention:Q", format=".0%"),
        color=alt.condition("datum.retention > 0.5", alt.value("white"), alt.value("black")),
    )
    st.altair_chart((cells + labels).properties(height=36 * c["cohort"].nunique() + 40),
                    width="stretch")
    st.subheader("Revenue per cohort (USD)")
    st.altair_chart(alt.Chart(c).mark_bar().encode(
        x=alt.X("cohort:O", title="cohort"),
        y=alt.Y("sum(revenue_usd):Q", title="revenue (USD)"),
        color=alt.Color("months_since_first_order:O", title="months since"),
    ), width="stretch")
    st.subheader("New customers per month by acquisition channel")
    new = marts.new_customers(r, months)
    if not new.empty:
        new["cohort"] = pd.to_datetime(new["cohort_month"]).dt.strftime("%Y-%m")
        st.altair_chart(alt.Chart(new).mark_bar().encode(
            x=alt.X("cohort:O", title="month of first order", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("sum(customers):Q", title="new customers"),
            color=alt.Color("acquisition_channel:N", title="acquisition channel"),
            tooltip=["cohort", "acquisition_channel", "region_id", "customers"],
        ), width="stretch")
    first = c[c["months_since_first_order"] == 0]
    st.table(pd.DataFrame({
        "cohort": first["cohort"],
        "customers": first["cohort_customers"].map("{:,}".format),
        "revenue (USD)": c.groupby("cohort")["revenue_usd"].sum().reindex(
            first["cohort"]).map(money).to_numpy(),
    }).set_index("cohort"))
    show_currency(r)

