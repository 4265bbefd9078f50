"""The board's entry point, run by Streamlit (``salesflow board``): the banner with the
pipeline's notices on every page, then the page asked for (``/live``, ``/funnel``,
``/retention``)."""

from __future__ import annotations

import streamlit as st

from loaders.board import pages

st.set_page_config(page_title="salesflow board", layout="wide")

# one page per dbt exposure, at the path its URL names (``pages.PAGES``)
dashboards = {
    "live": st.Page(pages.live, title="Product sales, live", url_path="live"),
    "funnel": st.Page(pages.funnel, title="Funnel and acquisition", url_path="funnel"),
    "retention": st.Page(pages.retention, title="Customer retention", url_path="retention"),
}
links = {pages.PAGES[path]: page for path, page in dashboards.items()}
navigation = st.navigation([
    st.Page(pages.overview(links), title="Overview", url_path="overview", default=True),
    *dashboards.values(),
])


@st.fragment(run_every=pages.refresh_seconds())
def _banner() -> None:
    pages.banner()


_banner()
navigation.run()
