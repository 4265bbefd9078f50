"""Personal data hashed with a key (HMAC-SHA256, macro ``hash_pii``): the SQL equals
Python's ``hmac``; no mart holds the unkeyed sha256 of a customer's e-mail address; the
key is in no file the run leaves; without a key configured one is generated for a
DuckDB warehouse and kept, and a PostgreSQL target says how to set one."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import stat
from pathlib import Path

import duckdb
import pytest
from dbt.cli.main import dbtRunner

from loaders import dbt_project, pii
from loaders.monitoring import redact
from loaders.runners import pipeline, publish
from simulator import store
from tests.support import ROOT
from tests.support.warehouse import dbt_invoke

# a key unlike anything else the run writes, so finding it anywhere is a leak
KEY = "pii-test-key-ü-7f3c91e2b4"
LONG_KEY = "a-key-longer-than-sha256s-64-byte-block-" * 3  # hashed first (RFC 2104)
VALUES = ["Alice@Example.COM", "  bob@example.com  ", "", "Zoë Ünïcode", "ÉLODIE@exämple.fr"]


def keyed(key: str, value: str) -> str:
    """What hash_pii must give: HMAC-SHA256 of the trimmed, lower-cased value."""
    return hmac.new(key.encode(), value.strip(" ").lower().encode(), hashlib.sha256).hexdigest()


def show_hashes(tmp_path: Path, values: list[str]) -> dict[str, str]:
    """hash_pii of each value, computed by dbt on the test's DuckDB warehouse."""
    literals = ", ".join("(" + "'" + v.replace("'", "''") + "')" for v in values)
    sql = f"select v, {{{{ hash_pii('v') }}}} as h from (values {literals}) as t (v)"
    with pii.dbt_environment():
        result = dbtRunner().invoke([
            "show", "--inline", sql, "--limit", str(len(values)),
            "--project-dir", str(ROOT), "--profiles-dir", str(ROOT),
            "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
        ])
    dbt_project.release_warehouse()
    assert result.success, result.exception
    [node] = result.result.results
    return {row[0]: row[1] for row in node.agate_table.rows}


@pytest.mark.parametrize("key", [KEY, LONG_KEY])
def test_sql_hmac_equals_pythons_hmac(warehouse, tmp_path, monkeypatch, key):
    monkeypatch.setenv("SALESFLOW_PII_KEY", key)
    found = show_hashes(tmp_path, VALUES)
    assert found == {v: keyed(key, v) for v in VALUES}
    # not the unkeyed hash of old, and another key gives other hashes
    plain = hashlib.sha256(b"alice@example.com").hexdigest()
    assert found["Alice@Example.COM"] != plain
    assert keyed(key + "x", "Alice@Example.COM") != found["Alice@Example.COM"]


def test_a_generated_key_is_kept_private_and_used(warehouse, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("SALESFLOW_PII_KEY", raising=False)
    caplog.set_level(logging.WARNING, logger="loaders.pii")
    found = show_hashes(tmp_path, ["Alice@Example.COM"])
    path = pii.key_file(warehouse)
    key = path.read_text().strip()
    assert len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert found == {"Alice@Example.COM": keyed(key, "Alice@Example.COM")}
    assert str(path) in caplog.text and key not in caplog.text
    # kept: the next command hashes alike, and says nothing more
    caplog.clear()
    assert show_hashes(tmp_path, ["Alice@Example.COM"]) == found
    assert pii.duckdb_key(warehouse) == key and "generated" not in caplog.text
    # configured nowhere, yet masked like a configured secret, with its padded forms
    inner, outer = pii.padded_keys(key)
    assert redact.redact(f"{key} {inner} {outer}") == "*** *** ***"


def test_a_postgres_target_without_a_key_says_how_to_set_one(monkeypatch):
    monkeypatch.setenv("SALESFLOW_TARGET", "postgres")
    monkeypatch.delenv("SALESFLOW_PII_KEY", raising=False)
    with pytest.raises(ValueError, match="SALESFLOW_PII_KEY or pii_key under"), \
            pii.dbt_environment():
        pass
    monkeypatch.setenv("SALESFLOW_PII_KEY", KEY)
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=0")
    ipad, opad = pii.padded_keys(KEY)
    with pii.dbt_environment():
        assert os.environ["PGOPTIONS"] == (
            f"-c statement_timeout=0 -c salesflow.pii_ipad={ipad} -c salesflow.pii_opad={opad}"
        )
    assert os.environ["PGOPTIONS"] == "-c statement_timeout=0"


def customer_emails(sim_dir: Path) -> set[str]:
    with contextlib.closing(store.connect(sim_dir / store.REPLICA, readonly=True)) as con:
        return {r[0] for r in con.execute("select email from customers") if r[0]}


def text_cells(path: Path) -> set[str]:
    """Every distinct value of every text column of every table in schema marts."""
    cells: set[str] = set()
    with contextlib.closing(duckdb.connect(str(path), read_only=True)) as con:
        columns = con.execute(
            "select table_name, column_name from duckdb_columns()"
            " where schema_name = 'marts' and data_type = 'VARCHAR'"
        ).fetchall()
        assert {t for t, _ in columns} >= {"dim_customers", "fct_orders"}
        for table, column in columns:
            cells |= {r[0] for r in con.execute(
                f'select distinct "{column}" from marts."{table}" where "{column}" is not null'
            ).fetchall()}
    return cells


def test_marts_hold_keyed_hashes_only_and_the_key_is_nowhere(
    simulator, warehouse, tmp_path, monkeypatch
):
    monkeypatch.setenv("SALESFLOW_PII_KEY", KEY)
    pipeline.load(base_url=simulator.url, token=simulator.token)
    dbt_invoke(tmp_path, "build", "--exclude-resource-type", "unit_test")
    dbt_project.release_warehouse()
    published = publish.publish(warehouse, tmp_path / "published" / "analytics.duckdb").path

    emails = customer_emails(simulator.dir)
    assert len(emails) > 50
    cells = text_cells(published)
    unkeyed = {hashlib.sha256(e.strip().lower().encode()).hexdigest() for e in emails}
    unkeyed |= {hashlib.sha256(e.encode()).hexdigest() for e in emails}
    assert not unkeyed & cells, "a mart holds the unkeyed sha256 of an e-mail address"
    # the scan finds what is there: each address's keyed hash is in the marts
    keyed_hashes = {keyed(KEY, e) for e in emails}
    assert len(keyed_hashes & cells) > 50

    # the warehouse's staging view cannot hash without the key: it says so
    with contextlib.closing(duckdb.connect(str(warehouse), read_only=True)) as con, \
            pytest.raises(duckdb.Error, match="no key for hashing personal data"):
        con.execute("select email_hash from staging.stg_replica__customers").fetchall()

    # no file the run left holds the key or the padded keys that stand for it
    secrets = [KEY.encode(), *(p.encode() for p in pii.padded_keys(KEY))]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "sim" not in p.parts]
    assert any(p.parent.name == "target" and p.name == "manifest.json" for p in files)
    assert any(p.suffix == ".log" for p in files)
    leaks = [str(p) for p in files for s in secrets if s in p.read_bytes()]
    assert leaks == []
