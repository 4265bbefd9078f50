"""The data contract with the platform team: derived from the models' column lineage,
deterministic and committed; checked against a running replica API; announcements
checked against it."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest

from loaders import cli
from loaders.contract import assess, document, export, lineage, reach
from loaders.contract.build import build as build_contract
from loaders.contract.compile import compiled_manifest
from loaders.contract.verify import check_records
from loaders.dbt_project import project_version
from loaders.monitoring.notify import JsonLinesChannel, Ledger, Notifier
from loaders.replica import api_from_settings, fetch_announcements
from loaders.schema_changes.announcements import follow_announcements
from simulator import store
from tests.support import ROOT, TOKEN
from tests.support.simulator import evolve

REPLICA = "source.salesflow.replica"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dbt's compiled project for the contract, of this module's own."""
    return tmp_path_factory.mktemp("contract")


@pytest.fixture(scope="module")
def exported(work_dir: Path) -> export.Exported:
    return export.export(ROOT, work_dir=work_dir)


def props(exported: export.Exported, entity: str) -> dict:
    return exported.document["$defs"][entity]["properties"]


def uses(exported: export.Exported, entity: str, field: str) -> dict:
    return props(exported, entity)[field]["x-salesflow"]


def test_export_is_deterministic_and_the_committed_contract_is_current(exported, tmp_path):
    again = export.export(ROOT, work_dir=tmp_path / "again")  # parsed and compiled anew
    assert again.json == exported.json
    assert again.yaml == exported.yaml
    assert again.docs == exported.docs
    stale = export.stale(exported, ROOT)
    assert stale == [], (
        f"{[str(p) for p in stale]} out of date with the models: run"
        " `salesflow contract export` and commit the result"
    )
    doc = exported.document
    assert doc["version"].startswith(project_version(ROOT) + "+")
    assert doc["version"].split("+")[1] in doc["x-salesflow"]["content_hash"]


def test_a_field_only_a_staging_model_selects_is_not_contracted(exported, work_dir):
    models = reach.project_lineage(compiled_manifest(ROOT, work_dir), ROOT)
    staging = {m.unique_id.split(".")[-1]: m for m in models.values()}
    # selected by its staging model, used by nothing downstream
    for entity, field in (("order_items", "created_at"), ("events", "product_id"),
                          ("events", "referrer")):
        column = staging[f"stg_replica__{entity}"].columns[field]
        assert column == {(f"{REPLICA}.{entity}", field)}, (entity, field)
        assert field not in props(exported, entity), f"{entity}.{field} is contracted"
    # only the loader needs it (incremental cursor): contracted for the loader alone
    updated = uses(exported, "customers", "updated_at")
    assert updated["marts"] == {} and updated["loader"] == ["incremental cursor"]
    assert "Data Platform <data-platform@salesflow.example>" in updated["owners"]


def test_a_field_a_mart_uses_is_contracted_with_its_marts_exposures_and_owners(exported):
    total = uses(exported, "orders", "total_cents")
    assert "total_amount_usd" in total["marts"]["fct_orders"]["columns"]
    assert "revenue_usd" in total["marts"]["customer_cohorts_monthly"]["columns"]
    assert total["exposures"] == ["customer_retention"]
    assert "Marketing Analytics <marketing-analytics@salesflow.example>" in total["owners"]
    assert "CRM and Lifecycle <crm-lifecycle@salesflow.example>" in total["owners"]
    assert total["staging_models"] == ["stg_replica__orders"] and total["read"] == "direct"
    # a filter in staging decides the rows of every mart downstream
    deleted = uses(exported, "orders", "deleted_at")
    assert deleted["marts"]["fct_orders"] == {"columns": [], "rows": True}
    assert deleted["presence"] == "tombstone"
    # read through column_or_null: absorbed by staging, still contracted
    assert uses(exported, "customers", "first_name")["read"] == "tolerant"
    assert uses(exported, "customers", "full_name")["presence"] == "optional"


def test_a_mart_that_stops_using_a_field_takes_it_out_of_the_contract(work_dir):
    manifest = copy.deepcopy(compiled_manifest(ROOT, work_dir))
    dim = manifest["nodes"]["model.salesflow.dim_products"]
    assert "        sku,\n" in dim["compiled_code"]
    dim["compiled_code"] = dim["compiled_code"].replace("        sku,\n", "")
    products = build_contract(manifest, ROOT)["$defs"]["products"]["properties"]
    assert "sku" not in products and "product_name" in products

    column = manifest["sources"][f"{REPLICA}.products"]["columns"]["product_name"]
    column["data_type"] = None
    with pytest.raises(document.ContractError, match="products.product_name .*_sources.yml"):
        build_contract(manifest, ROOT)


def test_types_nullability_and_allowed_values_come_from_the_yml_and_the_tests(exported):
    orders = props(exported, "orders")
    assert orders["total_cents"]["type"] == "integer"  # not_null on total_amount_usd
    assert orders["session_id"]["type"] == ["integer", "null"]  # no test says otherwise
    assert orders["ordered_at"]["format"] == "date-time"
    statuses = ["cancelled", "delivered", "paid", "placed", "returned", "shipped"]
    assert orders["status"]["enum"] == statuses  # error-level accepted_values
    channel = orders["channel"]
    assert "enum" not in channel  # warn-level: a new channel is news, not a violation
    assert channel["x-salesflow"]["accepted_values"]["severity"] == "warn"
    assert props(exported, "events")["platform"]["enum"] == ["app", "web", None]
    email = uses(exported, "customers", "email")  # not_null on the hash passes through
    assert not email["nullable"] and email["not_null_evidence"]
    assert props(exported, "products")["category"]["x-salesflow"]["accepted_values"][
        "values"] == ["Apparel", "Electronics", "Footwear", "Home", "Outdoor"]

    doc = exported.document
    jsonschema.Draft202012Validator.check_schema(doc)
    validator = jsonschema.Draft202012Validator(doc)
    live = {name: 1 for name in doc["$defs"]["order_items"]["else"]["required"]}
    live.update(created_at="2026-11-01T00:00:00Z", updated_at="2026-11-01T00:00:00Z")
    tombstone = {"order_item_id": 1, "updated_at": "2026-11-01T00:00:00Z",
                 "deleted_at": "2026-11-01T00:00:00Z"}
    assert not list(validator.iter_errors({"order_items": [live, tombstone]}))
    assert list(validator.iter_errors({"order_items": [{**live, "quantity": None}]}))
    assert list(validator.iter_errors({"orders": [{"order_id": 1}]}))


def test_lineage_counts_filters_joins_and_group_keys_but_not_unused_columns():
    project = lineage.Project()
    project.add("src.a", '"db"."raw"."a"', ["id", "kind", "amount", "note", "deleted_at"])
    project.add("src.b", '"db"."raw"."b"', ["id", "region", "label"])
    sql = """
        with a as (select * from "db"."raw"."a" where deleted_at is null),
        joined as (
            select a.id, a.amount, a.note, b.region
            from a inner join "db"."raw"."b" as b on a.id = b.id
        )
        select region, sum(amount) as total, count(*) as lines from joined group by region
    """
    m = lineage.analyse("model.m", sql, project)
    assert m.columns == {"region": {("src.b", "region")}, "total": {("src.a", "amount")},
                         "lines": set()}
    assert m.rows == {("src.a", "deleted_at"), ("src.a", "id"), ("src.b", "id"),
                      ("src.b", "region")}
    reached = lineage.reach(lineage.edges({"model.m": m}), ("src.a", "note"))
    assert reached == set()  # selected in a CTE, used by nothing


def test_sampled_records_break_the_contract_with_nulls_wrong_types_and_missing_fields():
    doc = document.load()
    spec = doc["$defs"]["orders"]
    good = {name: "x" for name in spec["else"]["required"]}
    good.update(order_id=1, customer_id=2, session_id=None, subtotal_cents=10, discount_cents=0,
                shipping_cents=0, total_cents=10, status="paid", channel="email",
                ordered_at="2026-11-01T10:00:00.000000Z", updated_at="2026-11-01T10:00:00Z")
    assert check_records("orders", spec, [good], set()) == []
    bad = [
        {**good, "total_cents": None},  # the marts need a value
        {**good, "total_cents": "12.50"},  # not an integer
        {k: v for k, v in good.items() if k != "region_id"},  # field missing
        {**good, "channel": "tiktok"},  # warn-level allowed set
        {**good, "status": "lost"},  # error-level allowed set
        {"order_id": 3, "updated_at": "2026-11-01T10:00:00Z",
         "deleted_at": "2026-11-01T10:00:00Z"},  # a tombstone: nothing to check
    ]
    found = {(v.field, v.kind): v for v in check_records("orders", spec, bad,
                                                                         set())}
    assert {k: (v.severity, v.records) for k, v in found.items()} == {
        ("total_cents", "null_in_sample"): ("breaking", 1),
        ("total_cents", "wrong_type_in_sample"): ("breaking", 1),
        ("region_id", "missing_in_sample"): ("breaking", 1),
        ("channel", "value_not_allowed"): ("warning", 1),
        ("status", "value_not_allowed"): ("breaking", 1),
    }
    assert found[("status", "value_not_allowed")].examples == ["lost"]
    assert found[("total_cents", "wrong_type_in_sample")].examples == []  # values stay out
    assert "fct_orders" in found[("total_cents", "null_in_sample")].marts


def announcement(*changes: dict) -> dict:
    return {"change_id": "x", "title": "t", "status": "upcoming", "changes": list(changes)}


@pytest.mark.parametrize(
    "change, verdict",
    [
        ({"entity": "events", "field": "referrer", "change": "removed"}, "safe"),
        ({"entity": "order_items", "field": "created_at", "change": "type_changed",
          "new_type": "string"}, "safe"),
        ({"entity": "orders", "field": "coupon_code", "change": "added"}, "safe"),
        ({"entity": "orders", "field": "coupon_code", "change": "removed"}, "safe"),  # optional
        ({"entity": "orders", "field": "total_cents", "change": "type_changed",
          "new_type": "integer"}, "safe"),
        ({"entity": "orders", "field": "total_cents", "change": "type_changed",
          "new_type": "decimal"}, "breaking"),
        ({"entity": "orders", "field": "utm_source", "change": "renamed", "into": "source"},
         "breaking"),
        ({"entity": "orders", "field": "channel", "change": "new_value", "note": "tiktok"},
         "warning"),
        ({"entity": "orders", "field": "status", "change": "new_value", "note": "lost"},
         "breaking"),
        ({"entity": "orders", "field": "status", "change": "new_value", "note": "paid"}, "safe"),
    ],
)
def test_announced_changes_are_judged_against_the_contract(change, verdict):
    assessment = assess.assess_announcement(announcement(change), document.load())
    assert assessment["verdict"] == verdict
    text = assess.format_assessment(assessment)
    assert ("BREAKING" in text) == (verdict == "breaking")
    if verdict == "safe" and change["field"] in ("referrer", "created_at"):
        assert "touches no contracted field" in text


# ------------------------------------------------------------------ against the API


def verify(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main(["contract", "verify", "--json", *args])
    out = capsys.readouterr().out
    assert TOKEN not in out
    return code, json.loads(out)


def test_verify_passes_before_the_restructure_and_fails_after_it_naming_fields_and_marts(
    simulator, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("SOURCES__REPLICA__TOKEN", TOKEN)
    code, report = verify(capsys, "--api", simulator.url, "--sample", "100")
    assert (code, report["status"]) == (0, "ok"), report["violations"]
    assert report["sampled"]["orders"] == 100 and report["breaking"] == 0

    # a warn-level allowed set the platform's values exceed: reported, not breaking
    doc = copy.deepcopy(document.load())
    allowed = doc["$defs"]["customers"]["properties"]["acquisition_channel"]["x-salesflow"]
    allowed["accepted_values"]["values"].remove("email")
    path = tmp_path / "warn.contract.json"
    path.write_text(json.dumps(doc))
    code, report = verify(capsys, "--api", simulator.url, "--contract", str(path))
    assert (code, report["status"], report["warnings"]) == (0, "warnings", 1)
    [warning] = report["violations"]
    assert (warning["kind"], warning["examples"]) == ("value_not_allowed", ["email"])
    assert warning["exposures"] == ["customer_retention"]

    # an error-level allowed set, and an entity the API does not serve: breaking
    doc["$defs"]["events"]["properties"]["platform"]["x-salesflow"]["accepted_values"][
        "values"] = ["web"]
    doc["$defs"]["refunds"] = {**doc["$defs"]["regions"], "title": "refunds"}
    path.write_text(json.dumps(doc))
    code, report = verify(capsys, "--api", simulator.url, "--contract", str(path))
    found = {(v["entity"], v["field"], v["kind"]) for v in report["violations"]}
    assert code == 1
    assert {("events", "platform", "value_not_allowed"), ("refunds", None, "entity_missing")
            } <= found

    sim = evolve(simulator, "restructure", store.utcnow())
    try:
        code, report = verify(capsys, "--api", sim.url)
        cli.main(["contract", "verify", "--api", sim.url])
        text = capsys.readouterr().out
    finally:
        sim.stop()
    assert code == 1 and report["status"] == "breaking"
    found = {(v["entity"], v["field"], v["kind"]): v for v in report["violations"]}
    assert set(found) == {
        ("customers", "first_name", "field_missing"),
        ("customers", "last_name", "field_missing"),
        ("products", "category", "field_missing"),
        ("products", "subcategory", "field_missing"),
        ("products", "price", "type_changed"),
    }
    price = found[("products", "price", "type_changed")]
    assert price["marts"] == {"dim_products": ["list_price_usd"]}
    assert price["exposures"] == ["product_sales_live_board"]
    assert "product_sales_hourly" in found[("products", "category", "field_missing")]["marts"]
    assert found[("customers", "first_name", "field_missing")]["marts"] == {
        "dim_customers": ["customer_name_hash"]}
    assert "BREAKING products.price: type changed: integer -> decimal" in text
    assert TOKEN not in text


def test_verify_without_a_token_says_how_to_give_one(simulator, monkeypatch, capsys):
    monkeypatch.delenv("SOURCES__REPLICA__TOKEN", raising=False)
    if not (ROOT / ".dlt" / "secrets.toml").exists():  # else the token comes from there
        assert cli.main(["contract", "verify", "--api", simulator.url]) == 2
        assert "SOURCES__REPLICA__TOKEN" in capsys.readouterr().err
    assert cli.main(["contract", "verify", "--api", simulator.url, "--token", "wrong"]) == 3
    err = capsys.readouterr().err
    assert "refused the token" in err and "wrong" not in err


def notices(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_announced_breaking_change_is_flagged_from_its_first_notice(
    simulator, warehouse, tmp_path, capsys, monkeypatch
):
    now = store.utcnow()
    sim = evolve(simulator, "restructure", now + timedelta(days=3))
    sim = evolve(sim, "additive", now + timedelta(days=5))
    try:
        announced = fetch_announcements(api_from_settings(sim.url, TOKEN, {}))
        monkeypatch.setenv("SOURCES__REPLICA__TOKEN", TOKEN)
        assert cli.main(["schema", "--base-url", sim.url]) == 0
        listing = capsys.readouterr().out
    finally:
        sim.stop()
    assert {a["change_id"]: a["status"] for a in announced} == {
        "restructure": "upcoming", "additive": "upcoming"}
    log = tmp_path / "notices.jsonl"
    notifier = Notifier([JsonLinesChannel(log)], Ledger(tmp_path / "ledger.db"))
    follow_announcements(announced, notifier, None, now)
    by_id = {n["details"]["announcement"]["change_id"]: n for n in notices(log)}

    restructure = by_id["restructure"]
    assert restructure["key"] == "announcement:restructure:seen"
    assert restructure["title"].startswith("BREAKING for the marts")
    assert "in 3 days" in restructure["title"] and restructure["severity"] == "error"
    verdict = restructure["details"]["contract"]
    assert verdict["verdict"] == "breaking"
    flagged = {(f["entity"], f["field"]): f for f in verdict["fields"]}
    assert set(flagged) == {("customers", "first_name"), ("customers", "last_name"),
                            ("products", "category"), ("products", "subcategory"),
                            ("products", "price")}
    assert "dim_products" in flagged[("products", "price")]["marts"]
    for needle in ("BREAKING for the data contract", "products.price type_changed integer ->"
                   " decimal", "dim_customers", "crm-lifecycle@salesflow.example"):
        assert needle in restructure["text"], needle

    additive = by_id["additive"]
    assert additive["details"]["contract"]["verdict"] == "safe"
    assert "safe for the marts" in additive["title"] and "BREAKING" not in additive["text"]

    assert "BREAKING for the data contract" in listing
    assert "safe for the marts" in listing
