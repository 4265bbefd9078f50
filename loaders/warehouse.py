"""Which warehouse salesflow writes to: one setting for dlt and dbt alike.

``SALESFLOW_TARGET`` (or ``--target`` on the CLI) names an output of ``profiles.yml``:
``dev`` (the default) is the embedded DuckDB file, ``postgres`` a PostgreSQL database.
The output's ``type`` is also the dlt destination, so the loader and dbt always point at
the same warehouse:

* **duckdb**: the file ``SALESFLOW_DUCKDB_PATH``, loaded from parquet, published for
  analysts as a read-only copy (:mod:`loaders.runners.publish`).
* **postgres**: dlt's ``destination.postgres.credentials`` (``.dlt/secrets.toml`` or
  ``DESTINATION__POSTGRES__CREDENTIALS__*``) are the one place for the connection;
  salesflow hands them to dbt as the environment variables ``profiles.yml`` reads. Raw
  tables load from CSV files through ``COPY``. Nothing is published: analysts query the
  ``marts`` schema with the analyst role (see :mod:`loaders.roles`).
* **spark**: raw lands as parquet files on the lake (dlt's filesystem destination at
  ``DESTINATION__FILESYSTEM__BUCKET_URL``, a folder or a bucket; see :mod:`loaders.lake`),
  which dbt builds on Spark through dbt-spark (the ``spark`` output: a Spark session in
  this process, local by default). Nothing is published: analysts query the marts
  through Spark SQL.
* any other type dlt and dbt both support: add an output to ``profiles.yml`` and the
  destination's credentials to dlt's config; it loads with dlt's preferred file format.

The loader's own SQL goes through :func:`sql_client` (on the lake, a DuckDB client of
its own).

May import: dlt, :mod:`loaders.config`, :mod:`loaders.lake` and the replica source's
settings.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
import yaml
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.common.destination import Destination

from loaders import lake
from loaders.config import PROJECT_ROOT, pipelines_dir
from loaders.replica import settings as replica_settings

log = logging.getLogger(__name__)

DEFAULT_TARGET = "dev"
# profiles.yml's output on the published file, read-only (``mf query`` while watch runs)
PUBLISHED_TARGET = "published"
PROFILE = "salesflow"
DUCKDB_MEMORY_LIMIT = os.environ.get("SALESFLOW_DUCKDB_MEMORY_LIMIT", "400MB")
# the environment variables profiles.yml reads for the postgres output: dlt's own names
PG_ENV = {
    "host": "DESTINATION__POSTGRES__CREDENTIALS__HOST",
    "port": "DESTINATION__POSTGRES__CREDENTIALS__PORT",
    "username": "DESTINATION__POSTGRES__CREDENTIALS__USERNAME",
    "password": "DESTINATION__POSTGRES__CREDENTIALS__PASSWORD",
    "database": "DESTINATION__POSTGRES__CREDENTIALS__DATABASE",
}


def target_name() -> str:
    return os.environ.get("SALESFLOW_TARGET", DEFAULT_TARGET)


def outputs() -> dict[str, dict[str, Any]]:
    """The outputs of salesflow's profile in profiles.yml (unrendered)."""
    profiles = yaml.safe_load((PROJECT_ROOT / "profiles.yml").read_text())
    return profiles[PROFILE]["outputs"]


def target_type(name: str | None = None) -> str:
    """The adapter type of a target (``duckdb``, ``postgres``, ...): also its dlt
    destination. Raises ValueError for a target profiles.yml does not define."""
    name = name or target_name()
    known = outputs()
    if name not in known:
        raise ValueError(
            f"SALESFLOW_TARGET={name!r} is not an output of profiles.yml; use one of"
            f" {', '.join(sorted(known))}"
        )
    return str(known[name]["type"])


def is_duckdb() -> bool:
    return target_type() == "duckdb"


def duckdb_path() -> Path:
    return Path(os.environ.get("SALESFLOW_DUCKDB_PATH", "data/warehouse.duckdb"))


def destination(read_only: bool = False) -> Any:
    """The dlt destination of the current target."""
    kind = target_type()
    if kind == "spark":  # raw lands on the lake, which Spark reads (loaders.lake)
        return _remember_capabilities(dlt.destinations.filesystem(lake.bucket_url()))
    if kind != "duckdb":
        return _remember_capabilities(Destination.from_reference(kind))
    path = duckdb_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    credentials: dict[str, Any] = {"database": str(path), "read_only": read_only}
    if not read_only:
        credentials["global_config"] = {
            # bounded, so a large backfill's merge spills to disk instead of growing
            "memory_limit": DUCKDB_MEMORY_LIMIT,
            # raw tables have no meaningful row order: letting DuckDB drop it makes
            # large inserts parallel and lighter on memory
            "preserve_insertion_order": False,
        }
    return _remember_capabilities(dlt.destinations.duckdb(credentials))


_CAPABILITIES: dict[tuple[Any, ...], Any] = {}


def _remember_capabilities(dest: Any) -> Any:
    """Resolve a destination's capabilities once per process and setting, not per ask.

    dlt works them out afresh, walking every configuration provider, each time a step
    of a run asks (some twenty times, about 0.3 s of a short run). They depend only on
    the destination, its settings and the naming convention, so a continuous run keeps
    them; a capability object handed out is a copy. Asked with a resolved configuration
    (when dlt builds its client), dlt answers as usual."""
    plain = dest.capabilities
    settings = (
        dest.destination_type,
        repr(dest.config_params),
        tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("DESTINATION__"))),
    )

    def capabilities(config: Any = None, naming: Any = None) -> Any:
        if config is not None:
            return plain(config, naming)
        key = (*settings, type(naming), getattr(naming, "max_length", None))
        if key not in _CAPABILITIES:
            _CAPABILITIES[key] = plain(None, naming)
        return _CAPABILITIES[key].copy()

    dest.capabilities = capabilities
    return dest


def quote_identifier(name: str) -> str:
    """A name as an SQL identifier, quoted (DuckDB and PostgreSQL alike): any character,
    quotes included, stays part of the name."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A text as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def loader_file_format() -> Any:
    """How the Arrow pages reach the warehouse: parquet into DuckDB and onto the lake,
    CSV and ``COPY`` into Postgres (its parquet path needs an ADBC driver), the
    destination's preferred format elsewhere."""
    return {"duckdb": "parquet", "postgres": "csv", "spark": "parquet"}.get(target_type())


def describe() -> str:
    """Where the warehouse is, for people (never with a password)."""
    kind = target_type()
    if kind == "duckdb":
        return str(duckdb_path())
    if kind == "postgres":
        c = postgres_credentials()
        return f"postgres {c.username}@{c.host}:{c.port}/{c.database}"
    if kind == "spark":
        return f"spark, raw on the lake {lake.bucket_url()}"
    return f"{target_name()} ({kind})"


def postgres_credentials() -> Any:
    """dlt's resolved postgres credentials (config, secrets or environment)."""
    dest: Any = Destination.from_reference("postgres")
    config = dest.spec()
    config.dataset_name = replica_settings.DATASET_NAME
    try:
        return dest.configuration(config).credentials
    except ConfigFieldMissingException as exc:
        raise ValueError(
            "the postgres target needs connection details: set destination.postgres."
            "credentials in .dlt/secrets.toml (see .dlt/example.secrets.toml) or the"
            f" DESTINATION__POSTGRES__CREDENTIALS__* variables ({exc.fields})"
        ) from None


def prepare_dbt() -> None:
    """Make the current target's connection visible to dbt: for postgres, dlt's
    credentials become the environment variables profiles.yml reads (those already set
    win, so they are one setting either way)."""
    os.environ.setdefault("SALESFLOW_TARGET", target_name())
    if target_type() == "spark":
        prepare_spark()
        return
    if target_type() != "postgres":
        return
    if all(os.environ.get(v) for k, v in PG_ENV.items() if k != "port"):
        return
    c = postgres_credentials()
    values = {"host": c.host, "port": c.port, "username": c.username,
              "password": c.password, "database": c.database}
    for key, var in PG_ENV.items():
        if values[key] is not None and not os.environ.get(var):
            os.environ[var] = str(values[key])


# where a Spark session in this process keeps its metastore and tables (profiles.yml)
SPARK_DIR_ENV = "SALESFLOW_SPARK_DIR"


def spark_dir() -> Path:
    """Where a local Spark session keeps its metastore and tables (profiles.yml)."""
    return Path(os.environ.get(SPARK_DIR_ENV) or "data/spark").absolute()


def local_paths() -> list[Path]:
    """The files and folders holding the current target's data on this machine (none
    for a server warehouse or a remote lake): what starting from scratch removes."""
    kind = target_type()
    if kind == "duckdb":
        return [duckdb_path()]
    if kind == "spark":
        url = lake.bucket_url()
        return [spark_dir(), *([] if "://" in url else [Path(url)])]
    return []


def spark_session() -> Any:
    """The Spark session running in this process (dbt-spark's, started in a thread of
    dbt's: the process's default session), or None; PySpark is imported only if loaded."""
    import sys

    if "pyspark" not in sys.modules:
        return None
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    try:
        return SparkSession.active()
    except PySparkRuntimeError:
        return None


def prepare_spark() -> None:
    """The spark output's settings as dbt reads them: the lake's root and Spark's own
    folder as absolute paths (a relative one would be read from wherever Spark runs),
    and Spark's driver on the loopback address unless told otherwise."""
    os.environ[lake.BUCKET_URL_ENV] = lake.bucket_url()
    os.environ[SPARK_DIR_ENV] = str(spark_dir())
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Settings given as environment variables for the duration of a block (salesflow's
    settings are read from the environment), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def kept_open() -> Iterator[Any]:
    """Keep the DuckDB warehouse file open in this process for a block of work.

    Every dlt sql client, and each step of a dlt run, opens the file afresh and closes it
    when done: the open reads the file's catalog and the close checkpoints it, some
    hundredths of a second each, several times a cycle. While one connection of this
    process holds the file, DuckDB hands later connections (dlt's, dbt's) the database
    already open, and the checkpoint waits for the last one to close (a block that
    spans many writes checkpoints between them: :func:`checkpoint_behind`). Nothing else
    changes: each client still commits as before, and the file is closed,
    checkpointed, when the outermost block ends. Yields the holding connection (None when
    nothing is held: another target, or a file that cannot be opened here, left for dlt
    to report as it would); :func:`held` answers it inside the block too."""
    if target_type() != "duckdb":
        yield None
        return
    path = duckdb_path().absolute()
    if path in _HELD:  # an outer block holds it already
        yield _HELD[path]
        return
    import duckdb

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = duckdb.connect(str(path))
    except (OSError, duckdb.Error) as exc:
        log.debug("warehouse not kept open (%s): each client opens it", exc)
        yield None
        return
    _HELD[path] = conn
    try:
        yield conn
    finally:
        del _HELD[path]
        running = _CHECKPOINTS.pop(path, None)
        if running is not None:  # not let go with a checkpoint running on it
            running.wait()
        conn.close()


_HELD: dict[Path, Any] = {}  # the connections kept_open holds, by file

# the write-ahead log's size (MB) past which a held warehouse is checkpointed between
# cycles (:func:`checkpoint_behind`): DuckDB's own threshold does not fire while the
# connections of a cycle share the database, and the log would grow without end
CHECKPOINT_WAL_MB = 32


@dataclass
class Checkpointing:
    """A checkpoint :func:`checkpoint_behind` started: ``seconds`` it took once done
    (None while it runs, when none was due, or when refused: logged)."""

    seconds: float | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()


def checkpoint_behind(min_bytes: int | None = None) -> Checkpointing:
    """Checkpoint the warehouse :func:`kept_open` holds once its write-ahead log has
    grown past ``min_bytes`` (default ``SALESFLOW_CHECKPOINT_WAL_MB``, 32 MB), in a
    thread that outlives the call. Rows still in the log stay in memory uncompressed,
    and a crash replays them on the next open: the log is kept short. Nothing is started
    when not due (nothing held, a short log) or while one runs; a refused checkpoint is
    logged (the file is checkpointed when closed). A checkpoint compresses the log's
    rows on one core; what only reads the warehouse or works elsewhere (a publication,
    the data tests, the next cycle's reading of the API) goes on beside it, and a write
    to the warehouse waits in DuckDB for it to end. The holding connection is let go
    (:func:`kept_open`'s end) only once it is done."""
    path = duckdb_path().absolute()
    if path in _CHECKPOINTS and _CHECKPOINTS[path].running:
        return Checkpointing()
    conn = _checkpoint_due(min_bytes)
    if conn is None:
        return Checkpointing()
    cursor = conn.cursor()
    done = Checkpointing()

    def run() -> None:
        try:
            done.seconds = _checkpoint(cursor)
        finally:
            cursor.close()

    done.thread = threading.Thread(target=run, name="warehouse-checkpoint", daemon=True)
    _CHECKPOINTS[path] = done
    done.thread.start()
    return done


_CHECKPOINTS: dict[Path, Checkpointing] = {}  # the last one started, by file


def _checkpoint_due(min_bytes: int | None) -> Any:
    """The held connection when its warehouse's log has grown past ``min_bytes`` (see
    :func:`checkpoint_behind`), else None."""
    conn = held()
    if conn is None:
        return None
    if min_bytes is None:
        setting = os.environ.get("SALESFLOW_CHECKPOINT_WAL_MB", str(CHECKPOINT_WAL_MB))
        try:
            min_bytes = int(float(setting) * 2**20)
        except ValueError:
            raise ValueError(f"SALESFLOW_CHECKPOINT_WAL_MB must be a number of MB, got"
                             f" {setting!r}") from None
    wal = duckdb_path().with_name(duckdb_path().name + ".wal")
    try:
        if wal.stat().st_size < min_bytes:
            return None
    except FileNotFoundError:
        return None
    return conn


def _checkpoint(conn: Any) -> float | None:
    import duckdb

    started = time.perf_counter()
    try:
        conn.execute("CHECKPOINT")
    except duckdb.Error as exc:
        log.warning("warehouse not checkpointed (%s): it will be when closed", exc)
        return None
    return time.perf_counter() - started


def held() -> Any:
    """The connection :func:`kept_open` holds the DuckDB warehouse with, or None: work
    that would open the file as another database (an ``ATTACH``, which DuckDB refuses for
    a file this process has open) goes through it instead."""
    return _HELD.get(duckdb_path().absolute()) if target_type() == "duckdb" else None


# ---------------------------------------------------------------- the dlt pipeline on it


def refuse_published_target() -> None:
    """Loading and building write the warehouse: never through the published output."""
    if target_name() == PUBLISHED_TARGET:
        raise ValueError(f"the {PUBLISHED_TARGET!r} output of profiles.yml is analysts'"
                         " read-only copy, for metric queries: load and build with dev"
                         " (the default), postgres or spark")


def dlt_pipeline(progress: str | None = None, read_only: bool = False) -> dlt.Pipeline:
    """The replica pipeline on the current target's warehouse (``read_only``: for
    readers of a DuckDB file, which must not take its write lock)."""
    display: Any = progress  # dlt names its displays in a Literal
    return dlt.pipeline(
        pipeline_name=replica_settings.PIPELINE_NAME,
        destination=destination(read_only=read_only),
        dataset_name=replica_settings.DATASET_NAME,
        pipelines_dir=str(pipelines_dir()),
        progress=display,
    )


def known_types(pipe: dlt.Pipeline) -> dict[str, dict[str, str]]:
    """Column data types of the raw tables loaded so far (table -> column -> type)."""
    if replica_settings.SOURCE_NAME not in pipe.schema_names:
        return {}
    schema = pipe.schemas[replica_settings.SOURCE_NAME]
    return {
        table: {c: str(col["data_type"]) for c, col in t["columns"].items() if col.get("data_type")}
        for table, t in schema.tables.items()
        if not table.startswith("_dlt")
    }


def cursor_positions(pipe: dlt.Pipeline) -> dict[str, Any]:
    """Each resource's incremental cursor (last value seen), from dlt's state."""
    try:
        resources = pipe.state["sources"][replica_settings.SOURCE_NAME]["resources"]
    except KeyError:
        return {}
    out = {}
    for name, r in resources.items():
        for inc in (r.get("incremental") or {}).values():
            out[name] = inc.get("last_value")
    return out


# rows per INSERT statement when many are written at once
INSERT_BATCH = 500


def insert_rows(sql: Any, table: str, columns: Sequence[str] | None,
                rows: Sequence[Sequence[Any]], batch: int = INSERT_BATCH) -> None:
    """Insert ``rows`` into ``table`` (qualified) on an open sql client: one statement
    of many rows per ``batch`` (a statement per row would cost more than the rest of a
    cycle's bookkeeping). ``columns`` None: every column, in the table's order."""
    if not rows:
        return
    names = f" ({', '.join(columns)})" if columns else ""
    marks = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        sql.execute_sql(f"INSERT INTO {table}{names} VALUES " + ", ".join([marks] * len(part)),
                        *(v for row in part for v in row))


def sql_client(pipe: dlt.Pipeline | None = None, read_only: bool = False) -> Any:
    """An SQL client of the pipeline's warehouse (not yet open; use it as a context
    manager). On the lake (the ``spark`` target), one that reads raw as a merge leaves it
    and keeps the loader's own tables (:class:`loaders.lake.LakeSqlClient`)."""
    pipe = pipe or dlt_pipeline(read_only=read_only)
    if target_type() != "spark":
        return pipe.sql_client()
    caps = dlt.destinations.duckdb().capabilities()
    return lake.LakeSqlClient(pipe.dataset_name, caps, read_only=read_only)


def raw_tables(sql: Any) -> set[str]:
    """The tables in raw now (none before the first load), on an open sql client of the
    pipeline."""
    if not sql.has_dataset():
        return set()
    return {
        r[0]
        for r in sql.execute_sql(
            "select table_name from information_schema.tables where table_schema = %s",
            sql.dataset_name,
        )
        or []
    }


def raw_counts(entities: Sequence[str] | None = None) -> dict[str, int]:
    """Rows per raw table now in the warehouse (a DuckDB file is opened read-only)."""
    names = list(entities or replica_settings.ENDPOINTS) + [replica_settings.QUARANTINE_TABLE]
    out: dict[str, int] = {}
    with sql_client(read_only=True) as sql:
        existing = raw_tables(sql)
        for name in names:
            if name in existing:
                [(out[name],)] = sql.execute_sql(
                    f"select count(*) from {sql.make_qualified_table_name(name)}"
                ) or [(0,)]
    return out
