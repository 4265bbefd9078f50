"""Changes seen in the records, and field mappings that absorb them: the parser and the
detector on constructed pages."""

from __future__ import annotations

import json

import pytest

from loaders.replica import mapping
from loaders.replica.errors import ReplicaError
from loaders.replica.observe import EntitySeen, Observations
from loaders.replica.pages import EntitySpec, parse_page
from loaders.schema_changes import from_records
from loaders.schema_changes.changelog import FieldProfile

FIELDS = {
    "order_id": "integer",
    "status": "string",
    "total_cents": "integer",
    "coupon": "string",
    "updated_at": "timestamp",
    "deleted_at": "timestamp",
}
TS = "2026-11-01T10:00:00Z"
STRUCTURAL = {"orders": {"order_id", "updated_at", "deleted_at"}}


def spec(fields=FIELDS, maps=None, known=None, required=("order_id", "status", "total_cents")):
    s = EntitySpec("orders", "v1/orders", "order_id", "updated_at", "deleted_at",
                   fields=dict(fields), required=required)
    return s.with_mapping(mapping.parse("orders", maps), known or {})


def page(*records: dict) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


def order(i: int, **kw) -> dict:
    rec = {"order_id": i, "status": "paid", "total_cents": 100 * i, "updated_at": TS, **kw}
    return {k: v for k, v in rec.items() if v is not ...}


def renamed(i: int) -> dict:
    return order(i, total_cents=..., total_amount=100 * i)


# -- mappings -------------------------------------------------------------------------


def test_a_renamed_field_is_held_without_a_mapping_and_loads_with_one():
    held = parse_page(spec(), page(renamed(1), renamed(2)))
    assert held.table is None
    assert {(q["rule"], q["field"]) for q in held.quarantined} == {
        ("required_null", "total_cents")
    }
    mapped = parse_page(spec(maps={"total_cents": "total_amount"}), page(renamed(1), order(2)))
    assert mapped.quarantined == []
    assert mapped.table.column("total_cents").to_pylist() == [100, 200]
    assert "total_amount" not in mapped.table.column_names


def test_a_rename_the_schema_describes_keeps_the_old_column_and_its_requirement():
    described = {**{k: v for k, v in FIELDS.items() if k != "total_cents"},
                 "total_amount": "integer"}
    s = spec(described, {"total_cents": "total_amount"}, {"total_cents": "bigint"},
             required=("order_id", "status", "total_amount"))
    assert "total_cents" in s.required
    parsed = parse_page(s, page(renamed(1), order(2, total_cents=..., total_amount=None)))
    assert parsed.table.column("total_cents").to_pylist() == [100]
    assert [q["field"] for q in parsed.quarantined] == ["total_cents"]


def test_a_renamed_field_whose_type_changed_upstream_loads_into_its_variant():
    # /v1/schema describes total_cents as a decimal now; raw holds it as an integer
    described = {**FIELDS, "total_cents": "decimal"}
    known = {"total_cents": "bigint"}
    rec = order(1, total_cents=..., total_amount="12.99")
    moved = spec(described, {"total_cents": "total_amount"}, known).with_variants(known)
    parsed = parse_page(moved, page(rec))
    assert parsed.quarantined == []
    assert parsed.table.column("total_cents__v_text").to_pylist() == ["12.99"]
    assert "total_cents" not in parsed.table.column_names
    # a mapping that casts keeps the raw column's type
    cast = {"total_cents": {"from": "total_amount", "cast": "number", "multiply": 100}}
    kept = parse_page(spec(described, cast, known).with_variants(known), page(rec))
    assert kept.quarantined == [] and kept.table.column("total_cents").to_pylist() == [1299]


def test_cast_combine_and_nested_paths():
    maps = {
        "total_cents": {"from": "total", "cast": "integer", "multiply": 100},
        "status": {"combine": ["state", "substate"], "separator": "/"},
        "coupon": "promo.code",
    }
    rec = order(1, total_cents=..., status=..., total="12.99", state="paid",
                substate="card", promo={"code": "SPRING", "pct": 10})
    parsed = parse_page(spec(maps=maps), page(rec))
    assert parsed.quarantined == []
    row = parsed.table.to_pylist()[0]
    assert (row["total_cents"], row["status"], row["coupon"]) == (1299, "paid/card", "SPRING")
    assert not {"total", "state", "substate", "promo"} & set(parsed.table.column_names)


def test_a_value_the_mapping_cannot_convert_is_held_and_the_rest_loads():
    maps = {"total_cents": {"from": "total", "cast": "integer"}}
    parsed = parse_page(spec(maps=maps), page(order(1, total_cents=..., total="7"),
                                              order(2, total_cents=..., total="n/a")))
    assert parsed.table.column("order_id").to_pylist() == [1]
    [held] = parsed.quarantined
    assert held["rule"] == "wrong_type" and "total_cents <- total as integer" in held["reason"]


@pytest.mark.parametrize("bad, message", [
    ({"x": 3}, "expected a field name or a table"),
    ({"x": {"from": "a", "combine": ["a", "b"]}}, "exactly one of 'from' or 'combine'"),
    ({"x": {"from": "a", "cast": "money"}}, "cast must be one of"),
    ({"x": {"from": "a", "into": "b"}}, "unknown keys ['into']"),
    ({"x": {"combine": ["a"]}}, "a list of two fields or more"),
    ({"x": "a..b"}, "is not a field name"),
])
def test_a_bad_mapping_says_which_entry_and_why(bad, message):
    with pytest.raises(ReplicaError, match=r"field_mapping\.orders\.x") as err:
        mapping.parse("orders", bad)
    assert message in str(err.value)


# -- detection from records --------------------------------------------------------------


def seen_of(*records: dict, s: EntitySpec | None = None) -> dict[str, EntitySeen]:
    observations = Observations()
    observations.add("orders", parse_page(s or spec(required=()), page(*records)).seen)
    return observations.entities


PROFILE = {"orders": {
    "order_id": FieldProfile("bigint", 1000, 1000),
    "status": FieldProfile("text", 1000, 1000),
    "total_cents": FieldProfile("bigint", 1000, 1000),
    "coupon": FieldProfile("text", 1000, 500),  # half the orders carry one
    "updated_at": FieldProfile("timestamp", 1000, 1000),
}}
RAW = {"orders": {n: p.data_type or "" for n, p in PROFILE["orders"].items()}}


def detect(seen, described=None, maps=None, profiles=PROFILE):
    return from_records.record_changes(
        seen, profiles, RAW, {"orders": described if described is not None else FIELDS},
        {"orders": mapping.parse("orders", maps)}, STRUCTURAL,
    )


def kinds(changes):
    return sorted((c.kind, c.column) for c in changes)


def test_a_field_that_stops_is_judged_by_how_often_it_was_filled():
    few = seen_of(*(order(i) for i in range(1, 4)))  # no coupon in 3 orders: chance
    assert kinds(detect(few)) == []
    many = seen_of(*(order(i) for i in range(1, 21)))  # none in 20: (1/2)^20
    gone, disagrees = detect(many)
    assert (gone.kind, gone.column, gone.rows, gone.schema_agrees) == (
        "column_removed", "coupon", 20, False)
    assert "50% of the 1,000 records before" in gone.detail
    assert "/v1/schema still describes it" in gone.detail
    assert (disagrees.kind, disagrees.value) == ("schema_disagrees", "coupon")
    # a field always filled is missed in a single record
    assert kinds(detect(seen_of(order(1, total_cents=None)), described={})) == [
        ("column_removed", "total_cents")]


def test_a_new_field_comes_with_its_evidence_and_whether_the_schema_agrees():
    seen = seen_of(order(1, coupon="A", channel="tiktok"), order(2, coupon="B"))
    [new, disagrees] = sorted(detect(seen), key=lambda c: c.kind)
    assert (new.kind, new.column, new.new_type, new.rows, new.sample) == (
        "new_column", "channel", "text", 1, '"tiktok"')
    assert new.observed_in == "records" and new.schema_agrees is False
    assert disagrees.kind == "schema_disagrees" and disagrees.value == "channel"
    described = detect(seen, {**FIELDS, "channel": "string"})
    assert kinds(described) == [("new_column", "channel")]
    assert described[0].schema_agrees is True
    assert detect(seen, described={})[0].schema_agrees is None  # the API has no schema


def test_nesting_that_appears_is_a_json_field_and_names_the_move():
    seen = seen_of(*(order(i, coupon=..., promo={"coupon": "X", "pct": 5})
                     for i in range(1, 21)))
    changes = detect(seen)
    from_records.pair_renames(changes, seen, None)
    gone = next(c for c in changes if c.kind == "column_removed")
    new = next(c for c in changes if c.kind == "new_column")
    assert (new.column, new.new_type) == ("promo", "json")
    assert gone.related == "promo" and 'coupon = "promo.coupon"' in gone.detail


def test_a_rename_is_named_when_the_new_field_carries_the_old_values():
    seen = seen_of(*(renamed(i) for i in range(1, 6)))
    changes = detect(seen)
    loaded = {i: 100 * i for i in range(1, 6)}

    def compare(entity, column, samples):
        assert (entity, column) == ("orders", "total_cents")
        return sum(loaded[k] == json.loads(v) for k, v in samples), len(samples)

    from_records.pair_renames(changes, seen, compare)
    gone = next(c for c in changes if c.kind == "column_removed")
    assert gone.related == "total_amount"
    assert "the same values (5 of 5" in gone.detail
    assert 'total_cents = "total_amount"' in gone.detail
    assert "salesflow quarantine replay --entity orders" in gone.detail
    # values that disagree name no rename when another field could be the one
    seen = seen_of(*(order(i, total_cents=..., total_amount=7, other=1) for i in range(1, 6)))
    changes = detect(seen)
    from_records.pair_renames(changes, seen, lambda *a: (0, 5))
    assert all(c.related is None for c in changes)


def test_a_mapped_field_is_not_said_to_stop():
    maps = {"total_cents": "total_amount"}
    seen = seen_of(*(renamed(i) for i in range(1, 6)), s=spec(maps=maps, required=()))
    changes = detect(seen, maps=maps)
    assert kinds(changes) == [("new_column", "total_amount")]  # the mapping answers for it
    assert "absorbed by the field mapping total_cents <- total_amount" in changes[0].detail


def test_a_changed_value_type_is_a_type_change_only_when_most_values_changed():
    s = spec(required=())
    dirt = seen_of(*(order(i, coupon="C") for i in range(1, 10)),
                   order(10, total_cents="oops", coupon="C"), s=s)
    assert kinds(detect(dirt)) == []
    changed = seen_of(*(order(i, total_cents=f"{i}.00", coupon="C") for i in range(1, 10)),
                      s=s)
    [retyped] = detect(changed)
    assert (retyped.kind, retyped.column, retyped.old_type, retyped.new_type, retyped.rows) == (
        "type_change", "total_cents", "bigint", "text", 9)


def test_the_first_load_of_an_entity_only_sets_its_profile():
    seen = seen_of(order(1, coupon="A"), order(2))
    assert detect(seen, profiles={}) == []
    profile = from_records.updated_profiles({}, seen, STRUCTURAL)["orders"]
    assert (profile["coupon"].records, profile["coupon"].filled) == (2, 1)
    assert "order_id" not in profile  # the key is never judged
    again = from_records.updated_profiles({"orders": profile}, seen_of(order(3)), STRUCTURAL)
    assert (again["orders"]["coupon"].records, again["orders"]["coupon"].filled) == (3, 1)


def test_tombstones_say_nothing_of_the_fields():
    tomb = {"order_id": 9, "updated_at": TS, "deleted_at": TS}
    assert seen_of(tomb)["orders"].records == 0
    assert detect(seen_of(tomb)) == []


def test_same_value_compares_across_representations():
    from datetime import datetime, timezone

    assert from_records.same_value(1299, "1299")
    assert from_records.same_value(12.5, "12.5")
    assert from_records.same_value("a b", '"a b"')
    assert from_records.same_value(datetime(2026, 11, 1, 10, tzinfo=timezone.utc),
                                   '"2026-11-01T10:00:00Z"')
    assert not from_records.same_value(1299, "1300")
