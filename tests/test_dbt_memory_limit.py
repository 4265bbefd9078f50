"""dbt's DuckDB connection is bounded like the loader's: the memory limit profiles.yml
sets (``SALESFLOW_DBT_MEMORY_LIMIT``) is the one dbt's queries run under."""

from pathlib import Path

import pytest

from loaders import dbt_project


def dbt_memory_limit(tmp_path: Path) -> str:
    """DuckDB's ``memory_limit`` as a query run by dbt sees it."""
    result = dbt_project.invoke([
        "show", "--inline", "select current_setting('memory_limit') as memory_limit",
        "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
    ])
    assert result.success, result.exception
    return str(result.result.results[0].agate_table.rows[0][0])


@pytest.fixture
def empty_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALESFLOW_DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("SALESFLOW_PII_KEY", "a-key-for-this-test-only")
    monkeypatch.delenv("SALESFLOW_TARGET", raising=False)


def test_the_configured_limit_reaches_dbts_connection(empty_warehouse, tmp_path, monkeypatch):
    monkeypatch.setenv("SALESFLOW_DBT_MEMORY_LIMIT", "300MiB")
    assert dbt_memory_limit(tmp_path) == "300.0 MiB"


def test_dbt_is_bounded_by_default(empty_warehouse, tmp_path, monkeypatch):
    monkeypatch.delenv("SALESFLOW_DBT_MEMORY_LIMIT", raising=False)
    # profiles.yml's default, 1GB (10^9 bytes), not DuckDB's own (80% of the memory)
    assert dbt_memory_limit(tmp_path) == "953.6 MiB"
