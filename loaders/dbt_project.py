"""Running dbt on this project: where it is, one way to invoke it, its parsed manifest.

Every dbt command salesflow runs goes through :func:`invoke` (dbt's programmatic
runner, in this process: no start-up cost per command). The current target's connection
is handed to dbt first (:func:`loaders.warehouse.prepare_dbt`), with the key personal
data is hashed with (:func:`loaders.pii.dbt_environment`), and the DuckDB database
dbt-duckdb keeps open is released after each command, so the file is free between
commands for analysts, tools and this process's own readers. :class:`Session` keeps the
project parsed for a continuous run (``salesflow watch``).

May import: dbt, :mod:`loaders.config`, :mod:`loaders.warehouse` and :mod:`loaders.pii`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from loaders import pii, warehouse
from loaders.config import PROJECT_ROOT

# the schema the public marts build into: what analysts may read, and what is published
MARTS_SCHEMA = "marts"

# unit tests check the models' logic on fixed inputs: they belong to `make test`, not to
# every cycle (and those of incremental marts need the built model to exist)
NO_UNIT_TESTS = ("--exclude-resource-type", "unit_test")


def target_dir(project_root: Path = PROJECT_ROOT) -> Path:
    """Where dbt writes its artifacts (manifest, run results, docs site): the folder
    ``DBT_TARGET_PATH`` names, as dbt reads it, else ``target``."""
    return project_root / os.environ.get("DBT_TARGET_PATH", "target")


def project_file(project_root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """``dbt_project.yml`` as written (its ``vars`` hold salesflow's thresholds)."""
    return yaml.safe_load((project_root / "dbt_project.yml").read_text()) or {}


def project_version(project_root: Path = PROJECT_ROOT) -> str:
    return str(project_file(project_root).get("version") or "0")


def manifest_project(manifest: dict[str, Any]) -> str:
    """The project's name in its manifest (node ids are ``<type>.<project>.<name>``)."""
    return str(manifest.get("metadata", {}).get("project_name") or "salesflow")


def release_warehouse() -> None:
    """Close the DuckDB database dbt-duckdb keeps open in this process after a command.

    Between commands the warehouse file must be free: for analysts' and tools'
    processes, and for this process's own readers, which DuckDB refuses while an
    instance with another configuration holds the file. (dbt-duckdb exposes no public
    call for this; its connection manager keeps one environment per process.)"""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # another adapter: nothing held between commands
        return
    with DuckDBConnectionManager._LOCK:
        if DuckDBConnectionManager._ENV is not None:
            DuckDBConnectionManager._ENV.close()
            DuckDBConnectionManager._ENV = None


def invoke(
    args: Sequence[str], runner: Any = None, project_root: Path = PROJECT_ROOT
) -> Any:
    """One dbt command on the project (``runner``: a dbtRunner holding a parsed
    manifest; default a new one). Returns dbt's result; the warehouse is released
    whatever happens."""
    # dbt is imported when first used: commands that never run it start without it
    from dbt.cli.main import dbtRunner

    warehouse.prepare_dbt()
    root = str(project_root)
    try:
        with pii.dbt_environment():
            return (runner or dbtRunner()).invoke(
                [*args, "--project-dir", root, "--profiles-dir", root]
            )
    finally:
        release_warehouse()


def runner(parsed: Any) -> Any:
    """A dbtRunner that reuses a parsed manifest (no parsing per command)."""
    from dbt.cli.main import dbtRunner

    return dbtRunner(manifest=parsed)


def run(*args: str) -> bool:
    """A dbt command; raises what dbt raised, returns whether it succeeded."""
    result = invoke(args)
    if result.exception is not None:
        raise result.exception
    return bool(result.success)


def build(select: Sequence[str] | None = None) -> bool:
    """``dbt build`` (models, seeds, snapshots and data tests; never unit tests)."""
    return run("build", *NO_UNIT_TESTS, *(["--select", *select] if select else []))


class Session:
    """dbt with the project parsed once (the manifest is reused by every command)."""

    def __init__(self) -> None:
        parsed = invoke(["parse"])
        if not parsed.success or parsed.result is None:
            raise RuntimeError(f"dbt parse failed: {parsed.exception}")
        self.manifest = parsed.result
        self.runner = runner(parsed.result)
        self.target = target_dir()

    def build(
        self, select: list[str] | None, tests: bool = True, views: bool = True
    ) -> tuple[bool, list[str]]:
        """Build (models, seeds, snapshots, and with ``tests`` their data tests; never
        unit tests); returns success and the marts rebuilt. Without ``views`` (and
        tests), the selected views are left as they are."""
        args = (
            ["build", *NO_UNIT_TESTS] if tests
            # a cycle's run leaves the manifest as parsed (rewriting its megabytes of
            # JSON each cycle cost about 0.2 s); its run_results.json is written below
            else ["run", "--no-write-json"]
        )
        if select:
            args += ["--select", *select]
            if not tests and not views:
                # a view's definition changes with the project or the source's shape,
                # not with new rows: recreating them each cycle is wasted work
                args += ["--exclude", "config.materialized:view"]
        result = invoke(args, self.runner)
        if result.exception is not None:
            raise result.exception
        if not tests and result.result is not None:
            # what failed stays where dbt users (and salesflow's notices) look for it
            result.result.write(str(self.target / "run_results.json"))
        return bool(result.success), self._marts(result)

    def test(self, select: list[str] | None) -> bool:
        """The data tests of the selection (never unit tests); True when all pass."""
        args = ["test", *NO_UNIT_TESTS]
        if select:
            args += ["--select", *select]
        result = invoke(args, self.runner)
        if result.exception is not None:
            raise result.exception
        return bool(result.success)

    @staticmethod
    def _marts(result: Any) -> list[str]:
        return [
            r.node.name
            for r in getattr(result.result, "results", None) or []
            if r.node.resource_type == "model" and r.node.schema == MARTS_SCHEMA
            and str(r.status) == "success"
        ]
