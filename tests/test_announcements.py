"""Announcements declared in the repository (``announcements/``): read, checked, merged with
the API's and used wherever the API's are."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from loaders import cli, config
from loaders.runners import pipeline
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


def test_the_folder_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("DLT_PROJECT_DIR", str(ROOT))
    for name in ("SALESFLOW_ANNOUNCEMENTS_DIR", "ANNOUNCEMENTS__DIR"):
        monkeypatch.delenv(name, raising=False)
    assert config.announcements_dir() == config.PROJECT_ROOT / "announcements"
    monkeypatch.setenv("ANNOUNCEMENTS__DIR", "docs/told")
    assert config.announcements_dir() == config.PROJECT_ROOT / "docs" / "told"
    monkeypatch.setenv("SALESFLOW_ANNOUNCEMENTS_DIR", str(tmp_path))
    assert config.announcements_dir() == tmp_path


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


def notices(warehouse: Path) -> list[dict]:
    path = warehouse.parent / "dlt" / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_declared_announcement_is_followed_and_checked_in_real_cycles(
    simulator, warehouse, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "announcements"
    monkeypatch.setenv("SALESFLOW_ANNOUNCEMENTS_DIR", str(folder))
    monkeypatch.setenv("SOURCES__REPLICA__TOKEN", TOKEN)
    start = store.utcnow()
    write(folder, "crm-names.yaml", declared_names(start + timedelta(days=3), start))
    write(folder, "broken.yaml", _bad(GOOD, **{"entity: orders": "entity: ordres"}))

    first = pipeline.load(base_url=simulator.url, token=TOKEN)
    assert [(a["change_id"], a["source"]) for a in first.tracked.announcements] == [
        ("crm-names", "repository")]
    [crm] = [n for n in notices(warehouse) if n["key"] == "announcement:crm-names:seen"]
    assert crm["title"].startswith("BREAKING for the marts") and "in 3 days" in crm["title"]
    assert crm["details"]["announcement"]["source"] == "repository"
    contract = crm["details"]["contract"]
    assert contract["verdict"] == "breaking"
    assert {(f["entity"], f["field"]) for f in contract["fields"]} == {
        ("customers", "first_name"), ("products", "price")}

    sim = evolve(simulator, "restructure")
    try:
        pipeline.load(base_url=sim.url, token=TOKEN)
        assert cli.main(["schema", "--json", "--base-url", sim.url]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert cli.main(["schema", "--base-url", sim.url]) == 0
        text = capsys.readouterr().out
    finally:
        sim.stop()

    # the declared announcement explains the changes it announced in the changelog
    with duckdb.connect(str(warehouse), read_only=True) as con:
        [(detail,)] = con.execute(
            "select detail from raw.schema_changelog where column_name = 'first_name'"
        ).fetchall()
    assert "'CRM names and prices'" in detail
    # status lists it as upcoming; schema lists it with its contract check
    state = json.loads((warehouse.parent / "dlt" / "health.json").read_text())
    assert [(a["change_id"], a["source"]) for a in state["upcoming_announcements"]] == [
        ("crm-names", "repository")]
    by_id = {a["change_id"]: a for a in listed["announced"]}
    assert by_id["crm-names"]["source"] == "repository"
    assert by_id["crm-names"]["contract"]["verdict"] == "breaking"
    assert by_id["restructure"]["source"] == "api"
    # a file that cannot be used is named, notified once, and does not stop the rest
    [error] = listed["declared_errors"]
    assert "broken.yaml: changes[3] (ordres.channel): unknown entity 'ordres'" in error
    assert f"NOT USED: {error}" in text
    invalid = [n for n in notices(warehouse) if n["kind"] == "declared_announcement_invalid"]
    assert len(invalid) == 1 and invalid[0]["details"]["file"].endswith("broken.yaml")
    assert "[declared in the repository]" in text
