"""Announcements declared in the repository (``announcements/``): read, checked, merged with
the API's and used wherever the API's are; and announced against observed changes."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from loaders import cli, config
from loaders.monitoring.notify import JsonLinesChannel, Ledger, Notifier
from loaders.runners import pipeline
from loaders.schema_changes import observed
from loaders.schema_changes.changelog import ChangelogEntry
from loaders.schema_changes.declared import (
    DeclaredAnnouncementError,
    load_declared_file,
    merge_announcements,
    read_declared,
)
from simulator import store
from tests.support import ROOT, TOKEN
from tests.support.simulator import evolve

ENTITIES = ["regions", "customers", "products", "orders", "order_items", "events"]
EFFECTIVE = datetime(2026, 12, 1, 6, tzinfo=timezone.utc)

GOOD = """\
title: Customer names combined
description: e-mail from the platform team
breaking: true
announced_at: 2026-11-20T15:30:00+01:00
effective_at: 2026-12-01T06:00:00Z
changes:
  - {entity: customers, field: first_name, change: combined, into: full_name}
  - {entity: customers, field: full_name, change: added, new_type: string}
  - {entity: orders, field: channel, change: new_value, note: tiktok}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ declared files


def test_a_declared_file_is_an_announcement_from_the_repository(tmp_path):
    write(tmp_path, "crm-names.yaml", GOOD)
    write(tmp_path, "_draft.yaml", "not: [an announcement")  # never read
    write(tmp_path, "README.md", "# not read either")
    before = read_declared(tmp_path, ENTITIES, now=EFFECTIVE - timedelta(days=2))
    assert before.errors == []
    [a] = before.announcements
    assert a["change_id"] == "crm-names" and a["source"] == "repository"
    assert a["status"] == "upcoming" and a["breaking"] is True
    assert a["announced_at"] == "2026-11-20T14:30:00+00:00"  # in UTC
    assert a["effective_at"] == EFFECTIVE.isoformat()
    assert a["changes"] == [
        {"entity": "customers", "field": "first_name", "change": "combined",
         "into": "full_name"},
        {"entity": "customers", "field": "full_name", "change": "added",
         "new_type": "string"},
        {"entity": "orders", "field": "channel", "change": "new_value", "note": "tiktok"},
    ]
    [after] = read_declared(tmp_path, ENTITIES, now=EFFECTIVE).announcements
    assert after["status"] == "applied"
    write(tmp_path, "crm-names.yaml", "change_id: crm-2026-12\n" + GOOD)
    [named] = read_declared(tmp_path, ENTITIES).announcements
    assert named["change_id"] == "crm-2026-12"


def test_the_folder_readme_example_is_valid_and_the_readme_is_never_read(tmp_path):
    readme = (ROOT / "announcements" / "README.md").read_text()
    [example] = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    path = write(tmp_path / "example", "crm-names-combined.yaml", example)
    a = load_declared_file(path, ENTITIES)
    assert a["change_id"] == "crm-names-combined"
    assert {c["change"] for c in a["changes"]} == {
        "combined", "added", "type_changed", "new_value"}
    write(tmp_path / "folder", "README.md", readme)
    read = read_declared(tmp_path / "folder", ENTITIES)
    assert read.announcements == [] and read.errors == []


def _bad(text: str, **replace: str) -> str:
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize(
    "text, says",
    [
        (_bad(GOOD, **{"change: added": "change: deleted"}),
         ["changes[2] (customers.full_name): unknown change 'deleted'", "added, removed"]),
        ("\n".join(line for line in GOOD.splitlines() if "effective_at" not in line),
         ["effective_at is missing", "effective_at: 2026-12-01T06:00:00Z"]),
        (_bad(GOOD, **{"2026-12-01T06:00:00Z": "'first Monday of December'"}),
         ["effective_at 'first Monday of December' is not a time", "ISO-8601"]),
        (_bad(GOOD, **{"2026-12-01T06:00:00Z": "2026-12-01T06:00:00"}),
         ["effective_at 2026-12-01T06:00:00 has no time zone"]),
        (_bad(GOOD, **{"2026-12-01T06:00:00Z": "2026-12-01"}),
         ["effective_at 2026-12-01 is a date without a time"]),
        (_bad(GOOD, **{"entity: orders": "entity: ordres"}),
         ["unknown entity 'ordres'", "customers, events, order_items, orders"]),
        (_bad(GOOD, **{", into: full_name": ""}), ["a combined field needs into"]),
        (_bad(GOOD, **{"new_type: string": "new_type: money"}),
         ["unknown new_type 'money'", "integer, string"]),
        (_bad(GOOD, **{"effective_at:": "efective_at:"}), ["unknown key(s) 'efective_at'"]),
        (_bad(GOOD, **{"title: Customer names combined": "title: [unclosed"}),
         ["is not valid YAML", "line"]),
        ("- just\n- a list\n", ["must be a mapping"]),
        (GOOD.split("changes:")[0] + "changes: []\n", ["changes must be a list of one or more"]),
    ],
    ids=["unknown change", "missing effective_at", "unparseable time", "no time zone",
         "date only", "unknown entity", "combined without into", "unknown type",
         "misspelt key", "not YAML", "not a mapping", "no changes"],
)
def test_a_bad_declared_file_is_an_error_naming_the_file_and_the_problem(tmp_path, text, says):
    path = write(tmp_path, "bad-news.yaml", text)
    with pytest.raises(DeclaredAnnouncementError) as caught:
        load_declared_file(path, ENTITIES)
    message = str(caught.value)
    assert message.startswith(f"declared announcement {path}: ")
    for needle in says:
        assert needle in message


def test_a_bad_file_is_reported_and_the_good_ones_are_still_used(tmp_path):
    write(tmp_path, "a-good.yaml", GOOD)
    write(tmp_path, "b-bad.yml", _bad(GOOD, **{"change: added": "change: deleted"}))
    write(tmp_path, "c-twin.yaml", "change_id: a-good\n" + GOOD)
    read = read_declared(tmp_path, ENTITIES)
    assert [a["change_id"] for a in read.announcements] == ["a-good"]
    assert [e.path.name for e in read.errors] == ["b-bad.yml", "c-twin.yaml"]
    assert "change_id 'a-good' is declared in" in str(read.errors[1])


def test_the_api_wins_over_a_declared_announcement_with_the_same_id(tmp_path, caplog):
    write(tmp_path, "restructure.yaml", GOOD)
    write(tmp_path, "crm.yaml", GOOD)
    declared = read_declared(tmp_path, ENTITIES).announcements
    api = [{"change_id": "restructure", "title": "from the API", "source": "api"}]
    merged = merge_announcements(api, declared)
    assert [(a["change_id"], a["source"]) for a in merged] == [
        ("restructure", "api"), ("crm", "repository")]
    assert merged[0]["title"] == "from the API"
    assert "'restructure' is both declared in the repository and announced by the API" in (
        caplog.text)


def test_the_folder_and_the_grace_are_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("DLT_PROJECT_DIR", str(ROOT))
    for name in ("SALESFLOW_ANNOUNCEMENTS_DIR", "ANNOUNCEMENTS__DIR",
                 "SALESFLOW_ANNOUNCEMENTS_GRACE_MINUTES", "ANNOUNCEMENTS__GRACE_MINUTES"):
        monkeypatch.delenv(name, raising=False)
    assert config.announcements_dir() == config.PROJECT_ROOT / "announcements"
    assert config.announcement_grace() == timedelta(minutes=30)
    monkeypatch.setenv("ANNOUNCEMENTS__DIR", "docs/told")
    assert config.announcements_dir() == config.PROJECT_ROOT / "docs" / "told"
    monkeypatch.setenv("SALESFLOW_ANNOUNCEMENTS_DIR", str(tmp_path))
    assert config.announcements_dir() == tmp_path
    monkeypatch.setenv("ANNOUNCEMENTS__GRACE_MINUTES", "5")
    assert config.announcement_grace() == timedelta(minutes=5)
    monkeypatch.setenv("SALESFLOW_ANNOUNCEMENTS_GRACE_MINUTES", "0.5")
    assert config.announcement_grace() == timedelta(seconds=30)
    monkeypatch.setenv("SALESFLOW_ANNOUNCEMENTS_GRACE_MINUTES", "half an hour")
    with pytest.raises(ValueError, match="must be a number of minutes"):
        config.announcement_grace()


# ------------------------------------------------------------------ announced vs observed


def entry(kind: str, entity: str, column: str | None, at: datetime, new_type: str | None = None,
          value: str | None = None) -> ChangelogEntry:
    return ChangelogEntry(
        change_id=f"{kind}-{entity}-{column}-{value}", load_id=None, detected_at=at,
        category="business" if kind == "new_value" else "schema", entity=entity,
        column=column, kind=kind, old_type=None, new_type=new_type, value=value, detail=None,
        schema_version=None,
    )


BASELINE = [entry("new_table", e, None, EFFECTIVE - timedelta(days=30)) for e in ENTITIES]


def announced(*changes: dict, cid: str = "crm") -> dict:
    return {"change_id": cid, "title": "t", "source": "repository",
            "announced_at": (EFFECTIVE - timedelta(days=10)).isoformat(),
            "effective_at": EFFECTIVE.isoformat(), "changes": list(changes)}


PRICE = {"entity": "products", "field": "price", "change": "type_changed",
         "new_type": "decimal"}
NAMES = {"entity": "customers", "field": "first_name", "change": "combined",
         "into": "full_name"}
FULL = {"entity": "customers", "field": "full_name", "change": "added", "new_type": "string"}
APAC = {"entity": "regions", "field": "region_id", "change": "new_value", "note": "apac"}
HOUR = timedelta(hours=1)


def findings(announcements: list[dict], entries: list[ChangelogEntry], now: datetime,
             grace: timedelta = timedelta(minutes=30)) -> set[tuple[str, str, str, str]]:
    return {(m.finding, m.entity, m.column, m.expected)
            for m in observed.compare(announcements, [*BASELINE, *entries], now, grace)}


def test_announced_changes_seen_as_announced_are_no_finding():
    later = EFFECTIVE + timedelta(minutes=5)
    logged = [entry("type_change", "products", "price", later, "text"),
              entry("column_removed", "customers", "first_name", later),
              entry("new_column", "customers", "full_name", later, "text"),
              entry("new_value", "regions", "region_id", later, value="apac")]
    assert findings([announced(PRICE, NAMES, APAC)], logged, EFFECTIVE + 2 * HOUR) == set()


def test_an_announced_change_not_logged_after_the_grace_is_not_seen():
    a = [announced(PRICE, NAMES, APAC)]
    other_value = [entry("new_value", "regions", "region_id", EFFECTIVE + HOUR, value="latam")]
    assert findings(a, other_value, EFFECTIVE + timedelta(minutes=29)) == set()
    assert findings(a, other_value, EFFECTIVE + timedelta(minutes=31)) == {
        ("not_seen", "products", "price", "type_change"),
        ("not_seen", "customers", "first_name", "column_removed"),  # combined: both sides
        ("not_seen", "customers", "full_name", "new_column"),
        ("not_seen", "regions", "region_id", "new_value"),  # latam is not apac
    }
    assert findings(a, other_value, EFFECTIVE + timedelta(minutes=5), timedelta(0)) != set()
    # a new value is expected only where values are tracked
    untracked = {"entity": "customers", "field": "email", "change": "new_value", "note": "x"}
    assert findings([announced(untracked)], [], EFFECTIVE + 2 * HOUR) == set()
    # an announcement that took effect before the changelog began is not compared
    old = {**announced(PRICE), "effective_at": (EFFECTIVE - timedelta(days=31)).isoformat()}
    assert findings([old], [], EFFECTIVE + 2 * HOUR) == set()


def test_an_announced_change_logged_otherwise_is_seen_different():
    logged = [entry("column_removed", "products", "price", EFFECTIVE + HOUR),
              entry("new_column", "customers", "full_name", EFFECTIVE + HOUR, "bigint"),
              entry("column_removed", "customers", "first_name", EFFECTIVE + HOUR)]
    [m, names] = observed.compare([announced(PRICE, NAMES, FULL)], [*BASELINE, *logged],
                                  EFFECTIVE + 2 * HOUR)
    assert (m.finding, m.entity, m.column, m.expected) == (
        "different", "products", "price", "type_change")
    assert "column_removed of products.price" in m.seen and "to decimal" in m.announced
    # announced as a text field, logged as a bigint column
    assert (names.finding, names.column, names.seen.split(" of ")[0]) == (
        "different", "full_name", "new_column (bigint)")
    # a change before the announcement was made says nothing against it
    older = [entry("column_removed", "products", "price", EFFECTIVE - timedelta(days=11))]
    assert findings([announced(PRICE)], older, EFFECTIVE + timedelta(minutes=1)) == set()


def test_an_announced_change_logged_before_it_takes_effect_is_seen_early():
    logged = [entry("type_change", "products", "price", EFFECTIVE - timedelta(days=2), "text"),
              entry("new_value", "regions", "region_id", EFFECTIVE - timedelta(seconds=30),
                    value="apac")]  # within the clocks' margin: on time
    [m] = observed.compare([announced(PRICE, APAC)], [*BASELINE, *logged],
                           EFFECTIVE - timedelta(days=1))
    assert (m.finding, m.entity, m.column) == ("early", "products", "price")
    assert "type_change ? -> text of products.price at 2026-11-29T06:00:00+00:00" in m.seen
    assert m.key == "announced_vs_observed:crm:early:products.price:type_change"


def test_each_finding_is_notified_once(tmp_path):
    mismatches = observed.compare(
        [announced(PRICE, NAMES)],
        [*BASELINE, entry("column_removed", "products", "price", EFFECTIVE + HOUR)],
        EFFECTIVE + 2 * HOUR,
    )
    assert len(mismatches) == 3
    log = tmp_path / "n.jsonl"
    for _ in range(2):  # a new notifier on the same ledger, as after a restart
        observed.report(mismatches, Notifier([JsonLinesChannel(log)], Ledger(tmp_path / "l.db")))
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(n["key"] for n in sent) == sorted(m.key for m in mismatches)
    [different] = [n for n in sent if n["details"]["finding"]["finding"] == "different"]
    assert different["severity"] == "warning" and different["kind"] == "announcement_observed"
    assert different["title"].startswith("Announced change seen different: products.price")
    assert "declared in the repository" in different["text"]
    assert "salesflow schema impact" in different["text"]


# ------------------------------------------------------------------ in real cycles


def declared_names(effective: datetime, announced_at: datetime) -> str:
    """Announced by e-mail: the restructure's customer names (as it ships), price removed
    (it is retyped instead) and a coupon code (it does not ship)."""
    return f"""\
title: CRM names and prices
announced_at: {announced_at.isoformat()}
effective_at: {effective.isoformat()}
changes:
  - {{entity: customers, field: first_name, change: combined, into: full_name}}
  - {{entity: products, field: price, change: removed}}
  - {{entity: orders, field: coupon_code, change: added, new_type: string}}
"""


def declared_early(effective: datetime, announced_at: datetime) -> str:
    return f"""\
title: Full names
announced_at: {announced_at.isoformat()}
effective_at: {effective.isoformat()}
changes:
  - {{entity: customers, field: full_name, change: added, new_type: string}}
"""


def notices(warehouse: Path) -> list[dict]:
    path = warehouse.parent / "dlt" / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_declared_announcements_are_followed_checked_and_compared_in_real_cycles(
    simulator, warehouse, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "announcements"
    monkeypatch.setenv("SALESFLOW_ANNOUNCEMENTS_DIR", str(folder))
    monkeypatch.setenv("SALESFLOW_ANNOUNCEMENTS_GRACE_MINUTES", "0")
    monkeypatch.setenv("SOURCES__REPLICA__TOKEN", TOKEN)
    start = store.utcnow()
    write(folder, "crm-names.yaml", declared_names(start + timedelta(days=3), start))
    write(folder, "broken.yaml", _bad(GOOD, **{"entity: orders": "entity: ordres"}))
    write(folder, "full-names.yaml", declared_early(start + timedelta(days=10), start))

    first = pipeline.load(base_url=simulator.url, token=TOKEN)
    assert {a["change_id"]: a["source"] for a in first.tracked.announcements} == {
        "crm-names": "repository", "full-names": "repository"}
    assert first.tracked.mismatches == []
    [crm] = [n for n in notices(warehouse) if n["key"] == "announcement:crm-names:seen"]
    assert crm["title"].startswith("BREAKING for the marts") and "in 3 days" in crm["title"]
    assert crm["details"]["announcement"]["source"] == "repository"
    contract = crm["details"]["contract"]
    assert contract["verdict"] == "breaking"
    assert {(f["entity"], f["field"]) for f in contract["fields"]} == {
        ("customers", "first_name"), ("products", "price")}

    # the platform brings the change forward by e-mail, and ships the restructure
    write(folder, "crm-names.yaml", declared_names(store.utcnow(), start))
    sim = evolve(simulator, "restructure")
    try:
        second = pipeline.load(base_url=sim.url, token=TOKEN)
        third = pipeline.load(base_url=sim.url, token=TOKEN)
        assert cli.main(["schema", "--json", "--base-url", sim.url]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert cli.main(["schema", "--base-url", sim.url]) == 0
        text = capsys.readouterr().out
    finally:
        sim.stop()

    found = {(m.finding, m.change_id, m.entity, m.column) for m in second.tracked.mismatches}
    assert found == {
        ("different", "crm-names", "products", "price"),  # retyped, not removed
        ("not_seen", "crm-names", "orders", "coupon_code"),
        ("early", "full-names", "customers", "full_name"),
    }
    keys = sorted(m.key for m in second.tracked.mismatches)
    assert sorted(m.key for m in third.tracked.mismatches) == keys
    sent = [n for n in notices(warehouse) if n["kind"] == "announcement_observed"]
    assert sorted(n["key"] for n in sent) == keys  # each once across both cycles
    assert not set(third.tracked.notices) & set(keys)

    # the declared announcement explains the changes it announced in the changelog
    with duckdb.connect(str(warehouse), read_only=True) as con:
        [(detail,)] = con.execute(
            "select detail from raw.schema_changelog where column_name = 'first_name'"
        ).fetchall()
    assert "'CRM names and prices'" in detail
    # status lists the upcoming declared one; schema lists them and their findings
    state = json.loads((warehouse.parent / "dlt" / "health.json").read_text())
    assert [(a["change_id"], a["source"]) for a in state["upcoming_announcements"]] == [
        ("full-names", "repository")]
    by_id = {a["change_id"]: a for a in listed["announced"]}
    assert by_id["crm-names"]["source"] == "repository"
    assert by_id["crm-names"]["contract"]["verdict"] == "breaking"
    assert by_id["restructure"]["source"] == "api"
    assert sorted(m["key"] for m in listed["observed"]) == keys
    # a file that cannot be used is named, notified once, and does not stop the rest
    [error] = listed["declared_errors"]
    assert "broken.yaml: changes[3] (ordres.channel): unknown entity 'ordres'" in error
    assert f"NOT USED: {error}" in text
    invalid = [n for n in notices(warehouse) if n["kind"] == "declared_announcement_invalid"]
    assert len(invalid) == 1 and invalid[0]["details"]["file"].endswith("broken.yaml")
    assert "[declared in the repository]" in text
    assert ("seen different: crm-names (CRM names and prices) announced products.price"
            " removed, effective") in text
