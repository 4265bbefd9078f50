"""The test's warehouse: dbt on it, and the last load that must reconcile it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbt.cli.main import dbtRunner

from benchmarks.oracle import assert_reconciled
from loaders import pii
from loaders.runners import pipeline
from tests.support import ROOT, TOKEN
from tests.support.simulator import start_simulator


def dbt_invoke(tmp_path: Path, *args: str) -> None:
    """A dbt command on the repository's project and the test's warehouse; fails the
    test on any error or failing test. The key personal data is hashed with reaches
    dbt as it does from salesflow (:func:`loaders.pii.dbt_environment`)."""
    with pii.dbt_environment():
        result = dbtRunner().invoke(
            [
                *args,
                "--project-dir", str(ROOT),
                "--profiles-dir", str(ROOT),
                "--target-path", str(tmp_path / "target"),
                "--log-path", str(tmp_path / "logs"),
            ]
        )
    assert result.exception is None, result.exception
    failed = [
        f"{r.node.unique_id}: {r.status} {r.message}"
        for r in getattr(result.result, "results", None) or []  # docs generate has none
        if str(r.status) in ("error", "fail", "runtime error")
    ]
    assert result.success and not failed, f"dbt {args[0]} failed:\n" + "\n".join(failed)


def catch_up_and_reconcile(
    sim_dir: Path, path: Path, *serve_args: str, **load_options: Any
) -> None:
    """Serve the (now quiet) platform again (``serve_args``: as it was served), load once
    more (``load_options``: as the loads before), and check that raw holds exactly the
    replica's rows: nothing lost, nothing twice."""
    quiet = start_simulator(sim_dir, *serve_args)
    try:
        pipeline.load(base_url=quiet.url, token=TOKEN, **load_options)
    finally:
        quiet.stop()
    assert_reconciled(sim_dir, path)
