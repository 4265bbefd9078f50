"""Marts built at their own rhythm (dbt's ``freshness: build_after``) while watch cycles:
left out until their time has come, then built with the data that waited."""

from __future__ import annotations

from types import SimpleNamespace

from loaders.dbt_project import BuildAfter, Outcome


def _model(name: str, every: tuple[int, str] | None = None) -> SimpleNamespace:
    after = (SimpleNamespace(count=every[0], period=SimpleNamespace(value=every[1]))
             if every else None)
    return SimpleNamespace(name=name, resource_type="model",
                           config=SimpleNamespace(freshness=SimpleNamespace(build_after=after)
                                                  if after else None))


def _manifest() -> SimpleNamespace:
    """orders -> fct_orders -> cohorts (every 5 minutes); events -> sessions -> funnel
    (every hour)."""
    nodes = {
        "model.p.fct_orders": _model("fct_orders"),
        "model.p.cohorts": _model("cohorts", (5, "minute")),
        "model.p.sessions": _model("sessions"),
        "model.p.funnel": _model("funnel", (1, "hour")),
    }
    sources = {
        "source.p.replica.orders": SimpleNamespace(source_name="replica", name="orders"),
        "source.p.replica.events": SimpleNamespace(source_name="replica", name="events"),
    }
    child_map = {
        "source.p.replica.orders": ["model.p.fct_orders"],
        "model.p.fct_orders": ["model.p.cohorts"],
        "source.p.replica.events": ["model.p.sessions"],
        "model.p.sessions": ["model.p.funnel"],
    }
    return SimpleNamespace(nodes=nodes, sources=sources, child_map=child_map)


def test_a_mart_waits_for_its_time_then_is_built_with_what_waited():
    now = [1000.0]
    rhythm = BuildAfter(_manifest(), clock=lambda: now[0])
    assert rhythm.every == {"model.p.cohorts": 300, "model.p.funnel": 3600}
    # the first build built everything
    rhythm.built(Outcome(True, rebuilt=["fct_orders", "cohorts", "sessions", "funnel"]))

    select, exclude = rhythm.plan(["source:replica.orders+"], "replica", ["orders"])
    assert (select, exclude) == (["source:replica.orders+"], ["cohorts"])
    rhythm.built(Outcome(True, rebuilt=["fct_orders"]))

    # its time has come: built, though this cycle's change does not reach it
    now[0] += 301
    select, exclude = rhythm.plan(["source:replica.events+"], "replica", ["events"])
    assert (select, exclude) == (["source:replica.events+", "cohorts"], ["funnel"])
    rhythm.built(Outcome(True, rebuilt=["sessions", "cohorts"]))
    assert rhythm.waiting == {"model.p.funnel"}

    # nothing waits for it any more: no new data, no build
    now[0] += 301
    select, exclude = rhythm.plan(["source:replica.events+"], "replica", ["events"])
    assert (select, exclude) == (["source:replica.events+"], ["funnel"])


def test_a_failed_build_leaves_the_mart_waiting():
    now = [0.0]
    rhythm = BuildAfter(_manifest(), clock=lambda: now[0])
    rhythm.built(Outcome(True, rebuilt=["fct_orders", "cohorts"]))
    now[0] += 301
    select, exclude = rhythm.plan(["source:replica.orders+"], "replica", ["orders"])
    assert exclude == []
    rhythm.built(Outcome(False, rebuilt=["fct_orders"]))  # cohorts failed
    assert rhythm.waiting == {"model.p.cohorts"}
    assert rhythm.plan([], "replica", [])[0] == ["cohorts"]
