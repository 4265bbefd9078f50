"""Drifts through a served simulator: any change of shape, declared at runtime with
``simulator.drift``, changes what the API serves (records, schema, announcements) and
nothing in its databases; and a replication pause stops the replica behind a healthy API."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from loaders.cli import main as salesflow
from simulator import drift as drift_mod
from simulator import faults, store
from simulator.drift import DriftError
from simulator.faults import Faults
from simulator.generate import generate
from simulator.platform import Platform
from tests.support import AS_OF
from tests.support.simulator import Simulator, clear_drifts, drift, start_simulator

Record = dict
Expect = Callable[[Record], Record]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    d = tmp_path_factory.mktemp("drift") / "sim"
    generate(d, orders=300, seed=7, as_of=AS_OF, days=30)
    with Platform(d, seed=3) as platform:  # tombstones among the records drifts rewrite
        platform.delete_records("orders", [5, 9], deleted_at=AS_OF)
        platform.delete_records("customers", [7], deleted_at=AS_OF)
    sim = start_simulator(d)
    yield sim
    sim.stop()


@pytest.fixture
def sim(served: Simulator) -> Iterator[Simulator]:
    """The served simulator, without drifts nor faults at the start and the end of a test."""
    faults.save(served.dir, Faults())
    clear_drifts(served)
    yield served
    faults.save(served.dir, Faults())
    clear_drifts(served)


def ndjson(sim: Simulator, endpoint: str, **params) -> bytes:
    r = sim.get(f"/v1/{endpoint}", params={"limit": 50_000, "format": "ndjson", **params})
    assert r.status_code == 200, r.text
    return r.content


def records(sim: Simulator, endpoint: str) -> list[Record]:
    """The whole listing, in NDJSON, checked equal to the same listing in JSON."""
    lines = [json.loads(line) for line in ndjson(sim, endpoint).splitlines()]
    body = sim.get(f"/v1/{endpoint}", params={"limit": 50_000}).json()
    assert body["data"] == lines and body["has_more"] is False
    return lines


def page_all(sim: Simulator, endpoint: str, limit: int) -> list[Record]:
    out: list[Record] = []
    cursor = None
    while True:
        body = sim.get(
            f"/v1/{endpoint}", params={"limit": limit, **({"cursor": cursor} if cursor else {})}
        ).json()
        out += body["data"]
        if not body["has_more"]:
            return out
        cursor = body["next_cursor"]


def canon(recs: list[Record]) -> list[str]:
    """Records as comparable text: 1299, 1299.0, "1299" and true all differ."""
    return [json.dumps(r, sort_keys=True) for r in recs]


def dead(r: Record) -> bool:
    return "deleted_at" in r


# --- what each kind does to a record (Python mirrors of the SQL) ---------------------------


def renamed(old: str, new: str) -> Expect:
    def f(r: Record) -> Record:
        if old not in r:
            return r
        out = {k: v for k, v in r.items() if k != old}
        out[new] = r[old]
        return out
    return f


def dropped(name: str) -> Expect:
    return lambda r: {k: v for k, v in r.items() if k != name}


def nulled(name: str) -> Expect:
    return lambda r: {**r, name: None} if name in r else r


def as_string(v: object) -> object:
    if isinstance(v, bool):
        return "true" if v else "false"
    return None if v is None else str(v)


def as_boolean(v: object) -> object:
    return None if v is None else v not in (0, "0", "false", "")


def as_number(v: Any) -> object:
    return None if v is None else float(v)


def as_integer(v: Any) -> object:
    return None if v is None else int(float(v))


CONVERT: dict[str, Callable[[Any], object]] = {
    "string": as_string, "number": as_number, "integer": as_integer, "boolean": as_boolean,
}


def retyped(name: str, to: str) -> Expect:
    return lambda r: {**r, name: CONVERT[to](r[name])} if name in r else r


def added(name: str, value: object = None, source: str | None = None) -> Expect:
    return lambda r: r if dead(r) else {**r, name: r.get(source) if source else value}


def nested(names: list[str], into: str) -> Expect:
    def f(r: Record) -> Record:
        if dead(r):
            return r
        out = {k: v for k, v in r.items() if k not in names}
        out[into] = {n: r.get(n) for n in names}
        return out
    return f


CASES: list[tuple[str, str, str | None, dict, Expect]] = [
    ("rename", "orders", "total_cents", {"to": "grand_total"},
     renamed("total_cents", "grand_total")),
    ("rename", "customers", "customer_id", {"to": "id"}, renamed("customer_id", "id")),
    ("drop", "customers", "email", {}, dropped("email")),
    ("null", "customers", "phone", {}, nulled("phone")),
    ("retype", "products", "price", {"to": "string"}, retyped("price", "string")),
    ("retype", "orders", "total_cents", {"to": "number"}, retyped("total_cents", "number")),
    ("retype", "customers", "is_marketing_opt_in", {"to": "string"},
     retyped("is_marketing_opt_in", "string")),
    ("retype", "orders", "discount_cents", {"to": "boolean"},
     retyped("discount_cents", "boolean")),
    ("add", "orders", "gift", {"value": {"wrapped": True}}, added("gift", {"wrapped": True})),
    ("add", "orders", "note", {"value": None}, added("note", None)),
    ("add", "events", "visited_at", {"source": "occurred_at"},
     added("visited_at", source="occurred_at")),
    ("nest", "orders", None, {"fields": ("subtotal_cents", "total_cents"), "to": "amounts"},
     nested(["subtotal_cents", "total_cents"], "amounts")),
]


@pytest.mark.parametrize(
    ("kind", "entity", "field", "options", "expect"), CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2] or c[3]['to']}" for c in CASES],
)
def test_each_kind_changes_the_records_served(
    sim: Simulator, kind: str, entity: str, field: str | None, options: dict, expect: Expect
) -> None:
    before = records(sim, entity)
    assert entity not in ("orders", "customers") or any(dead(r) for r in before)
    drift(sim, kind, entity, field, **options)
    after = records(sim, entity)
    assert canon(after) == canon([expect(r) for r in before])
    assert canon(after) != canon(before)


def test_new_value_is_served_to_a_steady_share_of_records_chosen_by_key(sim: Simulator) -> None:
    before = records(sim, "orders")
    drift(sim, "new_value", "orders", "status", value="lost_in_transit", share=0.3)
    after = records(sim, "orders")
    changed = {a["order_id"] for a, b in zip(after, before, strict=True) if a != b}
    assert all(a == {**b, "status": "lost_in_transit"} for a, b in zip(after, before, strict=True)
               if a["order_id"] in changed)
    live = [b for b in before if not dead(b)]
    assert 0.2 * len(live) < len(changed) < 0.4 * len(live)
    # the same records, however they are read again: whole, or page by page
    again = page_all(sim, "orders", 23)
    assert {a["order_id"] for a in again if a.get("status") == "lost_in_transit"} == changed


def test_endpoints_are_removed_and_added(sim: Simulator) -> None:
    orders = records(sim, "orders")
    drift(sim, "remove_endpoint", "events")
    assert sim.get("/v1/events").status_code == 404
    assert sim.get("/v1/orders").status_code == 200

    drift(sim, "add_endpoint", "orders", to="orders_v2")
    assert records(sim, "orders_v2") == orders
    drift(sim, "rename", "orders_v2", "order_id", to="id")  # the new endpoint's own shape
    assert records(sim, "orders_v2") == [renamed("order_id", "id")(r) for r in orders]
    assert records(sim, "orders") == orders
    assert sim.get("/v1/invoices").status_code == 422  # still no such entity
    assert sim.get("/v1/orders_v2", headers={"Authorization": ""}).status_code == 401


def schema_of(sim: Simulator) -> dict:
    return sim.get("/v1/schema").json()


def fields_of(schema: dict, entity: str) -> dict[str, str]:
    return {f["name"]: f["type"] for f in schema["entities"][entity]["fields"]}


def test_described_drifts_change_the_schema_and_others_do_not(sim: Simulator) -> None:
    base = schema_of(sim)
    drift(sim, "rename", "orders", "total_cents", to="grand_total")
    drift(sim, "add_endpoint", "orders", to="orders_v2")
    assert schema_of(sim) == base

    drift(sim, "rename", "customers", "customer_id", to="id", described=True)
    drift(sim, "retype", "products", "price", to="string", described=True)
    drift(sim, "nest", "orders", fields="subtotal_cents,shipping_cents", to="amounts",
          described=True)
    drift(sim, "drop", "customers", "email", described=True)
    drift(sim, "remove_endpoint", "events", described=True)
    drift(sim, "add_endpoint", "products", to="catalogue", described=True)
    told = schema_of(sim)
    assert told["schema_version"] == base["schema_version"] + 6
    assert sim.get("/health").json()["schema_version"] == told["schema_version"]
    assert told["entities"]["customers"]["primary_key"] == "id"
    customers = fields_of(told, "customers")
    assert "id" in customers and "customer_id" not in customers and "email" not in customers
    assert fields_of(told, "products")["price"] == "string"
    orders = fields_of(told, "orders")
    assert orders["amounts"] == "object" and "subtotal_cents" not in orders
    assert "grand_total" not in orders  # that rename was not described
    assert "events" not in told["entities"] and "orders_v2" not in told["entities"]
    assert fields_of(told, "catalogue") == fields_of(base, "products")


def announcements_of(sim: Simulator) -> dict[str, dict]:
    return {a["change_id"]: a for a in sim.get("/v1/announcements").json()["announcements"]}


def test_announced_drifts_are_listed_and_unenacted_ones_change_no_record(sim: Simulator) -> None:
    before = records(sim, "orders")
    quiet = drift(sim, "drop", "orders", "utm_campaign")
    told = drift(sim, "rename", "orders", "total_cents", to="grand_total", announced=True,
                 enacted=False)
    listed = announcements_of(sim)
    assert quiet.id not in listed
    a = listed[told.id]
    assert a["status"] == "applied" and a["breaking"] is True
    assert a["applied_at"] == a["effective_at"] == told.effective_at
    assert a["changes"] == [
        {"entity": "orders", "field": "total_cents", "change": "combined", "into": "grand_total"},
        {"entity": "orders", "field": "grand_total", "change": "added", "new_type": "integer"},
    ]
    assert records(sim, "orders") == [dropped("utm_campaign")(r) for r in before]

    soon = drift(sim, "retype", "orders", "total_cents", to="string", announced=True,
                 effective_at=store.utcnow() + timedelta(seconds=1.0))
    a = announcements_of(sim)[soon.id]
    assert a["status"] == "upcoming" and a["applied_at"] is None
    assert a["changes"] == [{"entity": "orders", "field": "total_cents",
                             "change": "type_changed", "new_type": "string",
                             "old_type": "integer"}]
    assert records(sim, "orders") == [dropped("utm_campaign")(r) for r in before]
    assert soon.effective_at is not None
    wait = (store.parse_iso(soon.effective_at) - store.utcnow()).total_seconds()
    time.sleep(max(0.0, wait) + 0.05)
    # in force for every record served from then on, records read again included
    assert announcements_of(sim)[soon.id]["status"] == "applied"
    expect = retyped("total_cents", "string")
    assert canon(records(sim, "orders")) == canon(
        [expect(dropped("utm_campaign")(r)) for r in before]
    )


def test_drifts_compose_in_order_and_paging_follows_the_feed(sim: Simulator) -> None:
    before = records(sim, "orders")
    steps: list[tuple[tuple, dict, Expect]] = [
        (("rename", "orders", "order_id"), {"to": "id"}, renamed("order_id", "id")),
        (("retype", "orders", "id"), {"to": "string"}, retyped("id", "string")),
        (("rename", "orders", "updated_at"), {"to": "modified_at"},
         renamed("updated_at", "modified_at")),
        (("retype", "orders", "total_cents"), {"to": "number"}, retyped("total_cents", "number")),
        (("retype", "orders", "shipping_cents"), {"to": "number"},
         retyped("shipping_cents", "number")),
        (("retype", "orders", "shipping_cents"), {"to": "integer"},
         retyped("shipping_cents", "integer")),
        (("nest", "orders", None), {"fields": "total_cents,discount_cents", "to": "amounts"},
         nested(["total_cents", "discount_cents"], "amounts")),
        (("add", "orders", "total"), {"source": "amounts"}, added("total", source="amounts")),
        (("drop", "orders", "amounts"), {}, dropped("amounts")),
    ]
    expect = before
    for args, options, step in steps:
        drift(sim, *args, **options)
        expect = [step(r) for r in expect]
    assert canon(records(sim, "orders")) == canon(expect)
    # the key and the cursor field are renamed and retyped: paging still follows the feed
    assert canon(page_all(sim, "orders", 17)) == canon(expect)
    assert expect[0]["total"] == {"total_cents": float(before[0]["total_cents"]),
                                  "discount_cents": before[0]["discount_cents"]}


def test_clearing_restores_the_records_byte_for_byte_and_the_database_is_untouched(
    sim: Simulator,
) -> None:
    feeds = store.feeds(sim.dir)
    entities = ("regions", "customers", "products", "orders", "order_items", "events")
    served = {e: ndjson(sim, e) for e in entities}
    as_json = sim.get("/v1/orders", params={"limit": 100}).content
    drift(sim, "rename", "orders", "total_cents", to="grand_total", described=True)
    drift(sim, "new_value", "orders", "status", value="lost", share=0.5)
    drift(sim, "drop", "customers", "email")
    drift(sim, "retype", "products", "price", to="string")
    drift(sim, "stall", "events", effective_at=AS_OF - timedelta(days=10))
    drift(sim, "remove_endpoint", "regions")
    assert ndjson(sim, "orders") != served["orders"]

    clear_drifts(sim)
    assert {e: ndjson(sim, e) for e in entities} == served
    assert sim.get("/v1/orders", params={"limit": 100}).content == as_json
    assert store.feeds(sim.dir) == feeds
    assert store.feeds(sim.dir) == store.feeds(sim.dir, rebuild=True)


def test_a_stalled_listing_stops_while_the_others_go_on(sim: Simulator) -> None:
    orders, items = records(sim, "orders"), records(sim, "order_items")
    drift(sim, "stall", "orders")
    with Platform(sim.dir, seed=5) as platform:
        platform.tick(3)
    store.wait_for_replica(sim.dir)
    assert records(sim, "orders") == orders  # 200, and nothing new
    assert len(records(sim, "order_items")) > len(items)

    clear_drifts(sim)
    assert len(records(sim, "orders")) == len(orders) + 3


def health(sim: Simulator) -> dict:
    return requests.get(sim.url + "/health", timeout=5).json()


def test_a_replication_pause_stops_the_replica_behind_a_healthy_api(sim: Simulator) -> None:
    orders = records(sim, "orders")
    caught_up = health(sim)
    assert caught_up["replication_lag_seconds"] == 0
    assert caught_up["replica_seq"] == caught_up["production_seq"]

    faults.save(sim.dir, Faults(replication_paused_until=faults.window(30)))
    time.sleep(0.3)  # the platform reads the fault file every tick (0.1 s)
    with Platform(sim.dir, seed=6) as platform:
        platform.tick(2)
        time.sleep(0.3)
        lagging = health(sim)
        platform.tick(2)  # production goes on writing
        time.sleep(0.5)
    later = health(sim)
    assert lagging["replica_seq"] == caught_up["replica_seq"] == later["replica_seq"]
    assert later["production_seq"] == caught_up["production_seq"] + 2
    assert 0.2 < lagging["replication_lag_seconds"] < later["replication_lag_seconds"] - 0.4
    assert records(sim, "orders") == orders  # 200, and nothing new

    faults.save(sim.dir, Faults())
    deadline = time.monotonic() + 5
    while health(sim)["replication_lag_seconds"] != 0:
        assert time.monotonic() < deadline, "the replica did not catch up"
        time.sleep(0.05)
    resumed = health(sim)
    assert resumed["replica_seq"] == resumed["production_seq"]
    assert len(records(sim, "orders")) == len(orders) + 4


def test_the_command_line_pauses_and_resumes_replication(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert salesflow(["sim", "fault", "--pause-replication", "30", "--dir", d]) == 0
    assert 28 < faults.load(tmp_path).replication_paused_left() <= 30
    assert salesflow(["sim", "fault", "--pause-replication", "0", "--dir", d]) == 0
    assert faults.load(tmp_path).replication_paused_until is None


# --- declaring drifts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("explode", "orders", "status"), {}, "unknown drift kind 'explode'"),
        (("drop", "invoices", "status"), {}, "unknown entity 'invoices'"),
        (("drop", "orders", "colour"), {}, "orders has no field 'colour'"),
        (("rename", "orders", "status"), {}, "rename needs to"),
        (("drop", "orders", None), {}, "drop needs field"),
        (("nest", "orders", None), {"to": "amounts"}, "nest needs fields"),
        (("nest", "orders", None), {"fields": "total_cents,hue", "to": "x"}, "no field 'hue'"),
        (("new_value", "orders", "status"), {}, "new_value needs value"),
        (("add", "orders", "gift"), {}, "either a value or a source"),
        (("add", "orders", "gift"), {"source": "colour"}, "no source field 'colour'"),
        (("add", "orders", "status"), {"value": 1}, "has a field 'status' already"),
        (("rename", "orders", "status"), {"to": "currency"}, "has a field 'currency' already"),
        (("retype", "orders", "status"), {"to": "date"}, "retype to 'date'"),
        (("drop", "orders", "status"), {"to": "x"}, "drop takes no to"),
        (("new_value", "orders", "status"), {"value": "x", "share": 0}, "share must be"),
        (("add_endpoint", "orders"), {"to": "customers"}, "/v1/customers exists already"),
        (("add_endpoint", "orders"), {"to": "schema"}, "/v1/schema exists already"),
        (("stall", "orders"), {"announced": True}, "neither described nor announced"),
        (("rename", "orders", "status"), {"to": "a b"}, "'a b' is not a field"),
        (("drop", "orders", "status"), {"effective_at": "soon"}, "not an ISO-8601 time"),
    ],
)
def test_drifts_are_checked(tmp_path: Path, args: tuple, options: dict, message: str) -> None:
    with pytest.raises(DriftError, match=re.escape(message)):
        drift(tmp_path, *args, **options)
    assert drift_mod.load(tmp_path) == []


def test_drifts_check_against_the_shape_left_by_earlier_ones(tmp_path: Path) -> None:
    drift(tmp_path, "rename", "orders", "total_cents", to="grand_total")
    with pytest.raises(DriftError, match="no field 'total_cents'"):
        drift(tmp_path, "drop", "orders", "total_cents")
    drift(tmp_path, "drop", "orders", "grand_total")
    drift(tmp_path, "add_endpoint", "orders", to="orders_v2")
    drift(tmp_path, "drop", "orders_v2", "total_cents")  # its own shape, from orders'
    with pytest.raises(DriftError, match="unknown entity 'orders_v3'"):
        drift(tmp_path, "drop", "orders_v3", "status")


def test_the_drift_file_round_trips_and_ids_are_never_given_twice(tmp_path: Path) -> None:
    first = drift(tmp_path, "add", "orders", "note", value=None, announced=True)
    second = drift(tmp_path, "new_value", "regions", "region_id", value="apac", share=0.5)
    assert [first.id, second.id] == ["d1", "d2"]
    assert drift_mod.load(tmp_path) == [first, second]
    assert first.value is None and first.effective_at and first.announced_at
    assert "new field orders.note (constant null)" in first.describe()
    assert "in force since" in first.describe() and "announced" in first.describe()
    drift_mod.clear(tmp_path)
    assert drift_mod.load(tmp_path) == []
    assert drift(tmp_path, "drop", "orders", "status").id == "d3"
    (tmp_path / drift_mod.DRIFTS_FILE).write_text('{"drifts": [{"kind": "drop", "x": 1}]}')
    with pytest.raises(DriftError, match="unknown drift settings"):
        drift_mod.load(tmp_path)


def test_the_command_line_declares_lists_and_clears(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    assert salesflow(["sim", "drift", "add", "nest", "orders", "--fields",
                      "subtotal_cents,total_cents", "--to", "amounts", "--described",
                      "--in", "60", "--dir", d]) == 0
    assert salesflow(["sim", "drift", "add", "new_value", "products", "category",
                      "--value", "Outdoor", "--share", "0.2", "--announced", "--not-enacted",
                      "--dir", d]) == 0
    out = capsys.readouterr().out
    assert "d1 orders.subtotal_cents, total_cents moved into amounts: in force from" in out
    assert 'd2 new value "Outdoor" in products.category (20% of records): never enacted' in out
    assert [x.value for x in drift_mod.load(tmp_path)] == [drift_mod.UNSET, "Outdoor"]
    assert salesflow(["sim", "drift", "add", "drop", "orders", "colour", "--dir", d]) == 2
    assert "orders has no field 'colour'" in capsys.readouterr().err
    assert salesflow(["sim", "drift", "clear", "--dir", d]) == 0
    assert salesflow(["sim", "drift", "list", "--dir", d]) == 0
    assert "drifts declared for" in capsys.readouterr().out and not drift_mod.load(tmp_path)
