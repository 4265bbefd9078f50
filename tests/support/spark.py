"""Spark SQL on the session dbt-spark runs in this process (the ``spark`` output's
``session`` method), for tests reading what dbt built there."""

from __future__ import annotations

from typing import Any


def session() -> Any:
    """The Spark session dbt started in this process (None before its first command)."""
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    try:  # dbt starts it in a thread of its own: the process's default session
        return SparkSession.active()
    except PySparkRuntimeError:
        return None


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
