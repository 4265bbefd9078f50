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
* **Content**: every column of every live record, as the platform's feed renders it
  (the API's JSON, before any drift the API layers over it), equals raw's column of
  that name, cast to raw's type (a dlt variant column ``<name>__v_<type>`` holds a value
  whose type changed): :func:`content`. The feed's records are read with ``sqlite3`` by
  entity in bulk into Arrow and compared in DuckDB SQL (DuckDB's sqlite extension is
  not there offline), one query per entity, no Python per row. A schema evolution that
  rewrites values in place (``UPDATE ... SET`` in its DDL, no new ``updated_at``) leaves
  raw's rows of that version in the old shape, by design (staging coalesces both): such
  a field also matches raw's old columns rendered forward with the evolution's own SQL.
* **The file analysts read**: orders, units and revenue by day × product line × region
  × channel computed from the platform's tables with the business rules the marts
  document (cancelled orders out, returned in, line net amounts converted to USD at the
  seed's fixed rates and rounded to cents, an unknown product under ``Unknown``) and
  compared with ``product_sales_daily`` in the published file: :func:`published_sales`.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import yaml

from loaders.replica.settings import ENDPOINTS
from simulator import store
from simulator.model import EVOLUTIONS

ROOT = Path(__file__).resolve().parent.parent
MARTS_YML = ROOT / "models" / "marts" / "marketing" / "_marketing__models.yml"
# columns documented as what a row was built from "as of its last build" (the newest
# load and source change behind it): they depend on the build history by design, so
# mart comparisons leave them out
BUILD_LINEAGE_DOCS = ("doc('last_load_id')", "doc('last_source_updated_at')")
CURRENCY_RATES = ROOT / "seeds" / "currency_rates.csv"
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


def _raw_columns(con: duckdb.DuckDBPyConnection, entity: str) -> dict[str, str]:
    return dict(con.execute(
        "select column_name, data_type from information_schema.columns"
        " where table_schema = 'raw' and table_name = ? order by ordinal_position", [entity],
    ).fetchall())


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrades(applied: list[str]) -> dict[str, dict[str, str]]:
    """Per entity, field → the SQL (SQLite's, valid in DuckDB) the evolutions ``applied``
    computed its value with from the old columns, under the field's final name."""
    out: dict[str, dict[str, str]] = {}
    for name in applied:
        for ddl in EVOLUTIONS[name].ddl:
            if m := re.fullmatch(r"UPDATE (\w+) SET (\w+) = (.+)", ddl, re.S):
                out.setdefault(m[1], {})[m[2]] = m[3]
            elif (m := re.fullmatch(r"ALTER TABLE (\w+) RENAME COLUMN (\w+) TO (\w+)", ddl)
                  ) and m[2] in out.get(m[1], {}):
                out[m[1]][m[3]] = out[m[1]].pop(m[2])
    return out


def _matches(field: str, candidates: dict[str, str], upgraded: bool = False) -> str:
    """SQL: the served value of ``field`` (``s``, JSON text or NULL) equals raw's, held
    in one of ``candidates`` (column: type; the column itself and its dlt variants)."""
    served = f"s.{_quoted(field)}"
    all_null = " and ".join(f"w.{_quoted(c)} is null" for c in candidates)
    equal = " or ".join(
        f"(w.{_quoted(c)} is not null and w.{_quoted(c)} = try_cast({served} as {t}))"
        for c, t in candidates.items()
    )
    old = f" or w.{_quoted('__old_' + field)} = {served}" if upgraded else ""
    return f"(({served} is null and {all_null}) or {equal}{old})"


def content(sim_dir: Path, path: Path, sample: int = 5) -> dict[str, dict[str, Any]]:
    """Per entity: the live records compared column by column with raw's rows of the
    same key — rows and columns compared, mismatching values, and a sample of them
    (entity, key, column, served, stored). A column the platform serves that raw lacks
    is a mismatch on every row that has a value for it."""
    out: dict[str, dict[str, Any]] = {}
    with closing(_replica(sim_dir)) as rcon, duckdb.connect(str(path), read_only=True) as con:
        forward = upgrades(store.applied_evolutions(rcon))
        for entity, ep in ENDPOINTS.items():
            pk = ep["primary_key"]
            keys, records = [], []
            for k, record in rcon.execute(
                f"SELECT k, record FROM {store.feed_table(entity)} WHERE dead = 0"
            ):
                keys.append(k)
                records.append(record)
            feed = pa.table({"k": keys, "record": pa.array(records, pa.string())})
            con.register("feed", feed)
            fields = [r[0] for r in con.execute(
                "select distinct unnest(json_keys(record)) from feed order by 1"
            ).fetchall()]
            columns = _raw_columns(con, entity)
            checked, missing = {}, []
            for f in fields:
                candidates = {c: t for c, t in columns.items()
                              if c == f or c.startswith(f + "__v_")}
                if candidates:
                    checked[f] = candidates
                else:
                    missing.append(f)
            served = ", ".join(
                f"json_extract_string(record, '$.\"{f}\"') as {_quoted(f)}" for f in fields
            )
            old = {}
            for f, expr in forward.get(entity, {}).items():
                try:  # raw has the old columns (it loaded rows before the evolution)
                    con.execute(f"select cast(({expr}) as varchar) from raw.{entity} limit 0")
                    old[f] = expr
                except duckdb.BinderException:
                    pass
            forwarded = ", ".join(
                f"cast(({e}) as varchar) as {_quoted('__old_' + f)}" for f, e in old.items()
            )
            rows_of = f"(select *, {forwarded} from raw.{entity})" if old else f"raw.{entity}"
            unions = [
                f"select '{f}' as column_name, s.k, s.{_quoted(f)} as served,"
                f" concat_ws(' | ', {', '.join(f'cast(w.{_quoted(c)} as varchar)' for c in cand)})"
                f" as stored from served as s join {rows_of} as w"
                f" on w.{_quoted(pk)} = s.k where not {_matches(f, cand, f in old)}"
                for f, cand in checked.items()
            ] + [
                f"select '{f}' as column_name, s.k, s.{_quoted(f)} as served,"
                " '(no such column in raw)' as stored from served as s"
                f" where s.{_quoted(f)} is not null"
                for f in missing
            ]
            con.execute(
                f"create or replace temp table served as select k, {served} from feed"
            )
            con.unregister("feed")
            con.execute(
                "create or replace temp table bad as " + " union all ".join(unions)
                if unions else "create or replace temp table bad as select 1 where false"
            )
            [(rows,)] = con.execute(
                f"select count(*) from served as s join raw.{entity} as w"
                f" on w.{_quoted(pk)} = s.k"
            ).fetchall()
            [(mismatches,)] = con.execute("select count(*) from bad").fetchall()
            examples = con.execute(
                "select column_name, k, served, stored from bad order by 1, 2 limit ?",
                [sample],
            ).fetchall() if mismatches else []
            out[entity] = {
                "rows_compared": int(rows), "columns_compared": len(checked),
                "columns_missing": missing, "mismatches": int(mismatches),
                "examples": [
                    {"entity": entity, "key": k, "column": c, "served": v, "raw": w}
                    for c, k, v, w in examples
                ],
            }
    return out


def _table(rcon: sqlite3.Connection, sql: str) -> pa.Table:
    """A query's rows as an Arrow table (column by column, read in bulk)."""
    cur = rcon.execute(sql)
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    return pa.table({n: list(col) for n, col in zip(names, zip(*rows, strict=True), strict=True)}
                    if rows else {n: pa.array([], pa.null()) for n in names})


def published_sales(sim_dir: Path, published: Path, sample: int = 5) -> dict[str, Any]:
    """Orders, units and revenue (USD) by day × product line × region × channel: the
    platform's, computed here from its tables, against ``product_sales_daily`` in the
    published file. Cancelled orders are left out, returned ones count; a line's net
    amount (quantity × unit price − discount, in the order's currency) is converted at
    the seed's fixed rate and rounded to cents; the day is the order's, in UTC; a product
    the platform does not know falls under ``Unknown``."""
    with closing(_replica(sim_dir)) as rcon:
        product_columns = {r[1] for r in rcon.execute("PRAGMA table_info(products)")}
        line = ("product_line" if "product_line" in product_columns
                else "category || ' / ' || subcategory")
        orders = _table(rcon, "SELECT order_id, status, currency, region_id, channel,"
                              " substr(ordered_at, 1, 10) AS sales_date FROM orders")
        items = _table(rcon, "SELECT order_id, product_id, quantity, unit_price_cents,"
                             " discount_cents FROM order_items")
        products = _table(rcon, f"SELECT product_id, {line} AS product_line FROM products")
    with duckdb.connect() as con:
        for name, t in (("p_orders", orders), ("p_items", items), ("p_products", products)):
            con.register(name, t)
        con.execute(f"ATTACH {_literal(str(published))} AS pub (READ_ONLY)")
        con.execute(
            "create temp table expected as"
            " with rates as (select * from read_csv("
            f"{_literal(str(CURRENCY_RATES))}, header = true,"
            " columns = {'currency_code': 'varchar', 'units_per_usd': 'double'})),"
            " lines as (select o.order_id, cast(o.sales_date as date) as sales_date,"
            " coalesce(p.product_line, 'Unknown') as product_line, o.region_id, o.channel,"
            " i.quantity, round((i.quantity * i.unit_price_cents - i.discount_cents)"
            " / 100.0 / r.units_per_usd, 2) as usd"
            " from p_items as i join p_orders as o on o.order_id = i.order_id"
            " left join p_products as p on p.product_id = i.product_id"
            " left join rates as r on r.currency_code = o.currency"
            " where o.status != 'cancelled')"
            " select sales_date, product_line, region_id, channel,"
            " count(distinct order_id) as orders, sum(quantity) as units,"
            " cast(sum(usd) as decimal(18, 2)) as revenue_usd"
            " from lines group by all"
        )
        con.execute(
            "create temp table diff as select coalesce(e.sales_date, f.sales_date) as sales_date,"
            " coalesce(e.product_line, f.product_line) as product_line,"
            " coalesce(e.region_id, f.region_id) as region_id,"
            " coalesce(e.channel, f.channel) as channel,"
            " e.orders as orders_expected, f.orders as orders_published,"
            " e.units as units_expected, f.units as units_published,"
            " e.revenue_usd as revenue_expected, f.revenue_usd as revenue_published"
            " from expected as e full join pub.marts.product_sales_daily as f"
            " on f.sales_date = e.sales_date and f.product_line = e.product_line"
            " and f.region_id = e.region_id and f.channel = e.channel"
            " where e.orders is distinct from f.orders or e.units is distinct from f.units"
            " or e.revenue_usd is distinct from f.revenue_usd"
        )
        [(groups, orders_n, units, revenue)] = con.execute(
            "select count(*), sum(orders), sum(units), sum(revenue_usd) from expected"
        ).fetchall()
        [(published_groups,)] = con.execute(
            "select count(*) from pub.marts.product_sales_daily"
        ).fetchall()
        [(mismatches,)] = con.execute("select count(*) from diff").fetchall()
        cols = [d[0] for d in con.execute("select * from diff limit 0").description]
        examples = [
            dict(zip(cols, (str(v) if v is not None else None for v in row), strict=True))
            for row in con.execute("select * from diff order by 1, 2, 3, 4 limit ?",
                                   [sample]).fetchall()
        ]
    return {"groups": int(groups), "groups_published": int(published_groups),
            "orders": int(orders_n or 0), "units": int(units or 0),
            "revenue_usd": str(revenue or 0), "mismatches": int(mismatches),
            "examples": examples, "match": mismatches == 0 and groups > 0}


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
