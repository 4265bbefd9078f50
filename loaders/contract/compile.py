"""The dbt project compiled for lineage: every model the replica source feeds.

The models are compiled against a scratch DuckDB whose raw tables carry every column the
source declares, so ``column_or_null`` reads each declared version of a field (models
compile as on a first build: an incremental model's filters on its own last build are
not seen, they read columns its full build uses anyway). The result is kept in
``target/contract`` while the project's files are unchanged.

May import: dbt, :mod:`loaders.dbt_project`, :mod:`loaders.warehouse`, the replica
source's settings and :mod:`.document`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import dbt.version
import duckdb

from loaders import dbt_project, warehouse
from loaders.config import PROJECT_ROOT
from loaders.contract.document import CONTRACT_DOCS, ContractError
from loaders.replica import settings

WORK_DIR = Path("target/contract")  # dbt's compiled project and the scratch warehouse


def fingerprint(project_root: Path) -> str:
    """What the compiled project depends on: dbt's version and the project's files."""
    digest = hashlib.sha256(dbt.version.__version__.encode())
    paths = [project_root / "dbt_project.yml"]
    for folder in ("models", "macros", "seeds", "snapshots"):
        paths += sorted(p for p in (project_root / folder).rglob("*") if p.is_file())
    for path in paths:
        if path == project_root / CONTRACT_DOCS:
            continue  # written from the contract: never an input to it
        digest.update(str(path.relative_to(project_root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def compiled_manifest(
    project_root: Path = PROJECT_ROOT, work_dir: Path | None = None
) -> dict[str, Any]:
    """dbt's manifest with the compiled SQL of every model the replica source feeds.

    Reused from ``work_dir`` while the project's files are unchanged; otherwise parsed and
    compiled again through dbt's programmatic runner against a scratch warehouse in
    ``work_dir`` (never the real one, which a running pipeline may hold)."""
    work = work_dir or project_root / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    stamp, path = work / "fingerprint", work / "manifest.json"
    digest = fingerprint(project_root)
    if path.exists() and stamp.exists() and stamp.read_text() == digest:
        return dict(json.loads(path.read_text()))
    scratch = work / "contract.duckdb"
    scratch.unlink(missing_ok=True)
    common = ["--target-path", str(work), "--log-path", str(work / "logs"), "--quiet"]
    with warehouse.environment(SALESFLOW_DUCKDB_PATH=str(scratch), SALESFLOW_TARGET="dev"):
        dbt_project.release_warehouse()
        parsed = dbt_project.invoke(["parse", *common], project_root=project_root)
        if not parsed.success:
            raise ContractError(
                f"dbt could not parse the project ({parsed.exception or 'see its output'}):"
                " fix what `dbt parse` reports, then export again"
            )
        _scratch_sources(scratch, parsed.result)
        compiled = dbt_project.invoke(
            ["compile", "--select", "@source:replica,resource_type:model", *common],
            runner=dbt_project.runner(parsed.result), project_root=project_root,
        )
    if not compiled.success:
        raise ContractError(
            f"dbt could not compile the models ({compiled.exception or 'see its output'}):"
            " fix what `dbt compile --select @source:replica` reports, then export again"
        )
    stamp.write_text(digest)
    return dict(json.loads(path.read_text()))


def _scratch_sources(scratch: Path, manifest: Any) -> None:
    """Raw tables with every declared column of the replica source (no rows)."""
    with duckdb.connect(str(scratch)) as con:
        for source in manifest.sources.values():
            if source.source_name != settings.SOURCE_NAME or not source.columns:
                continue
            quote = warehouse.quote_identifier
            schema, table = quote(source.schema), quote(source.identifier)
            con.execute(f"create schema if not exists {schema}")
            columns = ", ".join(f"{quote(name)} varchar" for name in source.columns)
            con.execute(f"create table {schema}.{table} ({columns})")
