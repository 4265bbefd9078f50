"""Spark SQL on the session dbt-spark runs in this process (the ``spark`` output's
``session`` method), for tests reading what dbt built there."""

from __future__ import annotations

from typing import Any

from loaders import warehouse


def session() -> Any:
    """The Spark session dbt started in this process (None before its first command)."""
    return warehouse.spark_session()


def query(sql: str) -> list[tuple]:
    """Rows of ``sql`` on that session, as tuples."""
    spark = session()
    assert spark is not None, "no Spark session: run a dbt command on the spark output first"
    return [tuple(r) for r in spark.sql(sql).collect()]


def stop() -> None:
    """Stop the session (and its JVM's work): later tests start afresh."""
    spark = session()
    if spark is not None:
        spark.stop()
