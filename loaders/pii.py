"""The key personal data is hashed with, and how each connection dbt opens gets it.

Staging hashes e-mail addresses and names with HMAC-SHA256 (macro ``hash_pii``), not a
plain hash: without the key, nobody can turn a known address into its hash and look
that customer up in the marts. The key is a secret: ``SALESFLOW_PII_KEY`` or
``[salesflow] pii_key`` in ``.dlt/secrets.toml`` (:func:`loaders.config.pii_key`). A
DuckDB warehouse with none configured gets one generated on first use, in a file beside
it (``<warehouse file>.pii-key``, readable by its owner only: as private as the raw data
it protects), logged by path, never by value; a PostgreSQL target without one is an
error, as its marts outlive any one machine.

The key never enters SQL text, dbt vars, ``env_var()`` or dbt's artifacts. Each
connection dbt opens carries HMAC's two padded keys (the key xor ipad and xor opad, in
hex) as session state the macro reads, so the hash is two ``sha256`` calls in SQL,
vectorised and alike on both warehouses: on DuckDB the variables
``salesflow_pii_ipad``/``salesflow_pii_opad``, set by the dbt-duckdb plugin
:mod:`loaders.pii_duckdb` that profiles.yml declares (any way of running dbt gets
them); on PostgreSQL the settings ``salesflow.pii_ipad``/``salesflow.pii_opad``, given as
libpq's ``PGOPTIONS`` for the duration of a dbt command (:func:`dbt_environment`). Not
``ALTER ROLE ... SET``: any role can read every role's settings in ``pg_roles``. On
Spark, Spark SQL's variable substitution puts them in each statement as Spark parses it,
from the session's settings or the driver's environment (:func:`spark_keys`); Spark
keeps a view's text as substituted, so a model hashing personal data is a table there.

May import: :mod:`loaders.config` and :mod:`loaders.warehouse`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loaders import config, warehouse

log = logging.getLogger(__name__)

KEY_FILE_SUFFIX = ".pii-key"
# session state the macro hash_pii reads: (K' xor ipad, K' xor opad) as hex
DUCKDB_VARIABLES = ("salesflow_pii_ipad", "salesflow_pii_opad")
POSTGRES_SETTINGS = ("salesflow.pii_ipad", "salesflow.pii_opad")
SPARK_VARIABLES = ("SALESFLOW_PII_IPAD", "SALESFLOW_PII_OPAD")
SPARK_SETTINGS = ("spark.salesflow.pii_ipad", "spark.salesflow.pii_opad")
BLOCK_SIZE = 64  # sha256's block, in bytes
ROTATION_HELP = "see 'Personal data' in README.md for how to set or rotate it"


def padded_keys(key: str) -> tuple[str, str]:
    """HMAC-SHA256's inner and outer padded keys of ``key`` (UTF-8), as hex: with them,
    HMAC(m) = sha256(opad || sha256(ipad || m)) (RFC 2104)."""
    k = key.encode()
    if len(k) > BLOCK_SIZE:
        k = hashlib.sha256(k).digest()
    k = k.ljust(BLOCK_SIZE, b"\0")
    return bytes(b ^ 0x36 for b in k).hex(), bytes(b ^ 0x5C for b in k).hex()


def _secret(key: str) -> str:
    """``key``, masked from now on wherever salesflow's output is (with its padded
    forms, which stand for it): a generated key is configured nowhere the redaction
    reads."""
    for value in (key, *padded_keys(key)):
        config.remember_secret(value)
    return key


def key_file(database: Path) -> Path:
    """Where the generated key of a DuckDB warehouse file lives: beside it."""
    return database.with_name(database.name + KEY_FILE_SUFFIX)


def duckdb_key(database: Path) -> str:
    """The key for a DuckDB warehouse: the configured one, else the one generated for
    ``database`` (generated now if there is none yet)."""
    configured = config.pii_key()
    if configured:
        return _secret(configured)
    path = key_file(database)
    if not path.exists():
        _generate(path)
    key = path.read_text().strip()
    if not key:
        raise ValueError(
            f"{path} holds no key for hashing personal data: delete it to have one"
            f" generated (every hash in the marts changes), or set SALESFLOW_PII_KEY;"
            f" {ROTATION_HELP}"
        )
    return _secret(key)


def _generate(path: Path) -> None:
    """A random key written to ``path`` (owner-only), unless another process wrote one
    first: theirs is kept, so concurrent first runs agree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
    finally:
        os.unlink(tmp)
    log.warning(
        "generated the key for hashing personal data in %s: keep it with the warehouse"
        " (a new key changes every hash); %s", path, ROTATION_HELP,
    )


def key() -> str:
    """The key for the current target; for one other than DuckDB without a key
    configured, a ValueError saying how to set it."""
    if warehouse.is_duckdb():
        return duckdb_key(warehouse.duckdb_path())
    configured = config.pii_key()
    if not configured:
        raise ValueError(
            f"no key for hashing personal data on the {warehouse.target_name()!r} target:"
            " set SALESFLOW_PII_KEY or pii_key under [salesflow] in .dlt/secrets.toml to a"
            " long random string (python -c 'import secrets;"
            " print(secrets.token_urlsafe(32))'), the same for every run;"
            f" {ROTATION_HELP}"
        )
    return _secret(configured)


@contextmanager
def dbt_environment() -> Iterator[None]:
    """What a dbt command on the current target needs to hash personal data, for its
    duration: on PostgreSQL the padded keys as settings in ``PGOPTIONS`` (after any
    options already there); on Spark (:func:`spark_keys`); on DuckDB nothing, its plugin
    resolves the key itself."""
    kind = warehouse.target_type()
    if kind == "spark":
        with spark_keys():
            yield
        return
    if kind != "postgres":
        yield
        return
    settings = zip(POSTGRES_SETTINGS, padded_keys(key()), strict=True)
    options = [os.environ.get("PGOPTIONS", ""), *(f"-c {n}={v}" for n, v in settings)]
    with warehouse.environment(PGOPTIONS=" ".join(o for o in options if o)):
        yield


@contextmanager
def spark_keys() -> Iterator[None]:
    """The padded keys for a dbt command on Spark, where Spark's SQL variable
    substitution reads them as it parses each statement (macro ``hash_pii``): the
    environment variables :data:`SPARK_VARIABLES` for the command's duration (the Spark
    session dbt starts in this process inherits them), and the session's settings
    :data:`SPARK_SETTINGS` when one runs already (they win: a key changed since)."""
    pads = padded_keys(key())
    session = warehouse.spark_session()
    if session is not None:
        for name, value in zip(SPARK_SETTINGS, pads, strict=True):
            session.conf.set(name, value)
    with warehouse.environment(**dict(zip(SPARK_VARIABLES, pads, strict=True))):
        yield
