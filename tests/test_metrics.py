"""The MetricFlow semantic layer: ``mf query`` on the built warehouse answers the same
revenue, orders and conversion rate as the marts queried directly."""

from __future__ import annotations

import csv
import os
import subprocess
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from loaders import cli, dbt_project
from loaders.runners import pipeline
from tests.support import ROOT, TOKEN
from tests.support.warehouse import dbt_invoke

MF = ROOT / ".venv" / "bin" / "mf"

pytestmark = pytest.mark.slow


def query(path: Path, sql: str) -> list[tuple]:
    # not read-only: dbt-duckdb keeps its connection open in this process, and DuckDB
    # refuses a second one to the same file with a different configuration
    with closing(duckdb.connect(str(path))) as con:
        return con.execute(sql).fetchall()


def mf_query(tmp_path: Path, metrics: str, group_by: str) -> list[dict[str, str]]:
    """``mf query`` against the test's warehouse, rows as read from its CSV output.

    mf reads ``<project dir>/target/semantic_manifest.json``: a project dir of the
    test's own links the repository's dbt_project.yml and the test's target path."""
    project = tmp_path / "mf_project"
    project.mkdir(exist_ok=True)
    for name, to in (("dbt_project.yml", ROOT / "dbt_project.yml"),
                     ("target", tmp_path / "target")):
        if not (project / name).exists():
            (project / name).symlink_to(to)
    out = tmp_path / f"mf_{metrics.replace(',', '_')}.csv"
    proc = subprocess.run(
        [str(MF), "query", "--metrics", metrics, "--group-by", group_by,
         "--csv", str(out), "--quiet"],
        cwd=ROOT,
        env={
            **os.environ,
            "DBT_PROJECT_DIR": str(project),
            "DBT_PROFILES_DIR": str(ROOT),
            "DBT_LOG_PATH": str(tmp_path / "logs"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and out.exists(), proc.stdout + proc.stderr
    with out.open(newline="") as f:
        return list(csv.DictReader(f))


def test_metricflow_metrics_reconcile_with_the_marts(simulator, warehouse, tmp_path):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    dbt_invoke(tmp_path, "build", "--exclude-resource-type", "unit_test")
    dbt_project.release_warehouse()

    # revenue and orders per day: cancelled orders never became sales
    rows = mf_query(tmp_path, "revenue,orders", "metric_time__day")
    expected = {
        str(day): (revenue, orders)
        for day, revenue, orders in query(
            warehouse,
            "select order_date, sum(total_amount_usd), count(*) from marts.fct_orders"
            " where not is_cancelled group by order_date",
        )
    }
    found = {
        row["metric_time__day"][:10]: (
            Decimal(row["revenue"]).quantize(Decimal("0.01")), int(row["orders"])
        )
        for row in rows
    }
    assert expected and found == expected

    # conversion rate over all sessions
    [row] = mf_query(tmp_path, "conversion_rate,sessions", "metric_time__year")
    [(sessions, purchases)] = query(
        warehouse,
        "select count(*), count_if(has_purchased) from marts.fct_sessions",
    )
    assert int(row["sessions"]) == sessions
    assert float(row["conversion_rate"]) == pytest.approx(purchases / sessions)


def test_loading_through_the_published_output_is_refused(tmp_path, monkeypatch, capsys):
    """``published`` (profiles.yml) is analysts' read-only copy for ``mf``: a command that
    writes refuses it before it starts, and leaves no cycle, state or warehouse behind."""
    monkeypatch.setenv("SALESFLOW_PIPELINES_DIR", str(tmp_path / "dlt"))
    monkeypatch.setenv("SALESFLOW_DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    # `--target` sets SALESFLOW_TARGET for the process: restored after the test
    monkeypatch.setenv("SALESFLOW_TARGET", "dev")
    for args in (["load"], ["run"], ["watch", "--cycles", "1"], ["quarantine", "replay"]):
        assert cli.main([*args, "--target", "published"]) == 2, args
        assert "analysts' read-only copy" in capsys.readouterr().err
    assert not (tmp_path / "dlt").exists() and not (tmp_path / "warehouse.duckdb").exists()
