"""What the warehouse must hold, computed from the simulator's own database: the oracle
the reliability harness (``benchmarks/chaos.py``) and the tests reconcile against.

* **Raw** holds exactly the replica's rows: per entity, the same set of (primary key,
  ``updated_at`` in µs) — nothing lost, nothing stale, nothing deleted upstream left
  behind — and no primary key twice. :func:`reconcile` reports counts and a checksum per
  entity computed the same way on both sides; :func:`assert_reconciled` fails on any
  difference.
* **Marts** keep their unique keys unique (:func:`mart_duplicates`), order revenue
  equals the replica's per currency (:func:`revenue`), and two warehouses' marts can be
  compared by row count and an order-independent checksum over all their columns
  (:func:`mart_fingerprints`).
"""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import yaml

from loaders.replica.settings import ENDPOINTS
from simulator import store

ROOT = Path(__file__).resolve().parent.parent
MARTS_YML = ROOT / "models" / "marts" / "marketing" / "_marketing__models.yml"
# columns documented as what a row was built from "as of its last build" (the newest
# load and source change behind it): they depend on the build history by design, so
# mart comparisons leave them out
BUILD_LINEAGE_DOCS = ("doc('last_load_id')", "doc('last_source_updated_at')")
# marts describing the pipeline's own history (its cycles, incidents), not the platform
PIPELINE_MARTS = ("pipeline_health",)


def _replica(sim_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{sim_dir / store.REPLICA}?mode=ro", uri=True)


def replica_versions(sim_dir: Path) -> dict[str, set[tuple]]:
    """(primary key, updated_at in µs) of every row of every entity in the replica."""
    out = {}
    with closing(_replica(sim_dir)) as con:
        for entity, ep in ENDPOINTS.items():
            rows = con.execute(f"SELECT {ep['primary_key']}, updated_at FROM {entity}").fetchall()
            out[entity] = {
                (pk, int(store.parse_iso(ts).timestamp() * 1_000_000)) for pk, ts in rows
            }
    return out


def raw_rows(path: Path) -> dict[str, list[tuple]]:
    """(primary key, updated_at in µs) of every raw row, duplicates kept."""
    out = {}
    with duckdb.connect(str(path), read_only=True) as con:
        for entity, ep in ENDPOINTS.items():
            out[entity] = con.execute(
                f"select {ep['primary_key']}, epoch_us(updated_at) from raw.{entity}"
            ).fetchall()
    return out


def raw_versions(path: Path) -> dict[str, set[tuple]]:
    """(primary key, updated_at in µs) of every raw row; fails on a key held twice."""
    out = {}
    for entity, rows in raw_rows(path).items():
        assert len(rows) == len({r[0] for r in rows}), f"duplicate keys in raw.{entity}"
        out[entity] = set(rows)
    return out


def checksum(versions: set[tuple] | list[tuple]) -> str:
    """An order-independent checksum of (key, updated_at) pairs (duplicates count)."""
    digest = hashlib.sha256()
    for pk, ts in sorted(versions, key=lambda r: (str(r[0]), r[1])):
        digest.update(f"{pk}\x1f{ts}\x1e".encode())
    return digest.hexdigest()[:16]


def reconcile(sim_dir: Path, path: Path) -> dict[str, dict[str, Any]]:
    """Per entity: rows expected (replica) and found (raw), versions missing from raw,
    unexpected in raw (stale or deleted upstream), primary keys held twice, and both
    sides' checksums."""
    expected, found = replica_versions(sim_dir), raw_rows(path)
    out = {}
    for entity in ENDPOINTS:
        rows = found[entity]
        have = set(rows)
        out[entity] = {
            "expected": len(expected[entity]),
            "found": len(rows),
            "missing": len(expected[entity] - have),
            "unexpected": len(have - expected[entity]),
            "duplicate_pks": len(rows) - len({r[0] for r in rows}),
            "checksum_expected": checksum(expected[entity]),
            "checksum_found": checksum(rows),
            "examples_missing": sorted(expected[entity] - have)[:3],
            "examples_unexpected": sorted(have - expected[entity])[:3],
        }
    return out


def assert_reconciled(sim_dir: Path, path: Path) -> None:
    for entity, r in reconcile(sim_dir, path).items():
        assert r["duplicate_pks"] == 0, f"duplicate keys in raw.{entity}"
        assert not r["missing"] and not r["unexpected"], (
            f"{entity}: {r['missing']} missing, {r['unexpected']} unexpected; e.g. "
            f"{r['examples_missing']} / {r['examples_unexpected']}"
        )


def mart_unique_keys(models_yml: Path = MARTS_YML) -> dict[str, str]:
    """Each mart's unique key: the column its yml declares with a ``unique`` test."""
    doc = yaml.safe_load(models_yml.read_text())
    keys = {}
    for model in doc.get("models", []):
        for column in model.get("columns", []):
            tests = column.get("data_tests") or []
            if any(t == "unique" or (isinstance(t, dict) and "unique" in t) for t in tests):
                keys[model["name"]] = column["name"]
                break
    return keys


def build_lineage_columns(models_yml: Path = MARTS_YML) -> dict[str, set[str]]:
    """Per mart, the columns described by the build-lineage doc blocks."""
    doc = yaml.safe_load(models_yml.read_text())
    return {
        model["name"]: {
            c["name"] for c in model.get("columns", [])
            if any(d in (c.get("description") or "") for d in BUILD_LINEAGE_DOCS)
        }
        for model in doc.get("models", [])
    }


def mart_duplicates(path: Path, keys: dict[str, str] | None = None) -> dict[str, int]:
    """Rows beyond the first per unique key value, per mart (0 everywhere when sound)."""
    out = {}
    with duckdb.connect(str(path), read_only=True) as con:
        for mart, key in (keys or mart_unique_keys()).items():
            [(n,)] = con.execute(
                f"select count(*) - count(distinct {key}) from marts.{mart}"
            ).fetchall()
            out[mart] = int(n)
    return out


def revenue(sim_dir: Path, path: Path) -> dict[str, Any]:
    """Orders and order revenue per currency: the replica's against ``fct_orders``."""
    with closing(_replica(sim_dir)) as con:
        rows = con.execute(
            "SELECT currency, count(*), sum(total_cents) FROM orders GROUP BY 1"
        ).fetchall()
    expected = {c: (n, str(Decimal(cents) / 100)) for c, n, cents in rows}
    with duckdb.connect(str(path), read_only=True) as con:
        found = {
            c: (n, str(total))
            for c, n, total in con.execute(
                "select currency_code, count(*), sum(total_amount) from marts.fct_orders"
                " group by 1"
            ).fetchall()
        }
    return {
        "expected": {c: {"orders": n, "total": t} for c, (n, t) in sorted(expected.items())},
        "found": {c: {"orders": n, "total": t} for c, (n, t) in sorted(found.items())},
        "match": {c: (n, Decimal(t)) for c, (n, t) in expected.items()}
        == {c: (n, Decimal(t)) for c, (n, t) in found.items()},
    }


def mart_fingerprints(path: Path) -> dict[str, dict[str, Any]]:
    """Per mart: row count and an order-independent checksum over all columns but the
    build lineage (the sum of each row's hash, so a duplicated row changes it too)."""
    out = {}
    lineage = build_lineage_columns()
    with duckdb.connect(str(path), read_only=True) as con:
        marts = [
            r[0] for r in con.execute(
                "select table_name from information_schema.tables where table_schema ="
                " 'marts' and table_type = 'BASE TABLE' order by 1"
            ).fetchall()
            if r[0] not in PIPELINE_MARTS
        ]
        for mart in marts:
            columns = [
                r[0] for r in con.execute(
                    "select column_name from information_schema.columns where table_schema"
                    " = 'marts' and table_name = ? order by ordinal_position", [mart]
                ).fetchall()
                if r[0] not in lineage.get(mart, ())
            ]
            cols = ", ".join(f'"{c}"' for c in columns)
            [(rows, total)] = con.execute(
                f"select count(*), coalesce(sum(hash({cols})), 0) from marts.{mart}"
            ).fetchall()
            out[mart] = {"rows": int(rows), "checksum": format(int(total) % (1 << 64), "016x"),
                         "columns": len(columns), "excluded": sorted(lineage.get(mart, ()))}
    return out
