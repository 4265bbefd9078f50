"""Roles and grants of a PostgreSQL warehouse: who may write, who may read what.

Two roles, set up once by a database administrator (``salesflow warehouse init-roles``,
or the SQL of ``salesflow warehouse init-roles --print`` run with psql):

* the **loader** (``salesflow_loader`` by default: the user in dlt's
  ``destination.postgres.credentials``) logs in, owns ``raw`` and every schema dbt
  builds (staging, intermediate, marts, reference, snapshots) and may create schemas in
  the warehouse database (dlt merges through ``raw_staging``);
* the **analyst** role (``SALESFLOW_ANALYST_ROLE``, default ``salesflow_analyst``) is a
  group: people's logins are its members. It may connect and ``SELECT`` the ``marts``
  schema, nothing else: no access to raw, staging, intermediate, reference or snapshots
  (where personal data lives), no CREATE on any schema or the database, no temporary
  tables, no INSERT/UPDATE/DELETE anywhere. dbt grants SELECT on each mart as it builds
  it (``+grants`` on ``marts`` in dbt_project.yml, in the same transaction as the swap).

Every statement is idempotent: running it again changes nothing, and it may run before
or after the first load. Passwords are sent as parameters, never printed or logged.

May import: :mod:`loaders.warehouse` (quoting) and :mod:`loaders.dbt_project` (the marts schema).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from loaders.dbt_project import MARTS_SCHEMA
from loaders.warehouse import quote_identifier, quote_literal

log = logging.getLogger(__name__)

LOADER_ROLE = "salesflow_loader"
# the schemas salesflow writes: dlt's dataset and the folders of the dbt project
PUBLIC_SCHEMA = MARTS_SCHEMA
SCHEMAS = ("raw", "staging", "intermediate", PUBLIC_SCHEMA, "reference", "snapshots")


def analyst_role() -> str:
    """The analysts' group role: one setting for this module and dbt's grants."""
    return os.environ.get("SALESFLOW_ANALYST_ROLE", "salesflow_analyst")


def _ident(name: str) -> str:
    if not name or "\x00" in name:
        raise ValueError(f"not a valid role, schema or database name: {name!r}")
    return quote_identifier(name)


def _create_role(name: str, login: bool) -> str:
    kind = "LOGIN" if login else "NOLOGIN"
    return (
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname ="
        f" {quote_literal(name)}) THEN CREATE ROLE {_ident(name)} {kind}; END IF; END $$"
    )


def statements(database: str, loader: str = LOADER_ROLE, analyst: str | None = None,
               analyst_logins: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The set-up as SQL statements (no passwords), in the order they must run."""
    analyst = analyst or analyst_role()
    db, lo, an = _ident(database), _ident(loader), _ident(analyst)
    if loader == analyst:
        raise ValueError("the loader and analyst roles must differ")
    # new roles are created without SUPERUSER, CREATEDB and CREATEROLE; existing ones
    # keep their attributes (init_roles refuses a superuser among the analysts)
    sql = [_create_role(loader, login=True), _create_role(analyst, login=False)]
    for login in analyst_logins:
        sql += [_create_role(login, login=True), f"GRANT {an} TO {_ident(login)}"]
    sql += [
        # nobody creates objects or temporary tables in the warehouse unless granted
        f"REVOKE CREATE, TEMPORARY ON DATABASE {db} FROM PUBLIC",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {db} TO {lo}",
        f"GRANT CONNECT ON DATABASE {db} TO {an}",
    ]
    for schema in SCHEMAS:
        s = _ident(schema)
        sql += [
            f"CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {lo}",
            f"ALTER SCHEMA {s} OWNER TO {lo}",
            f"REVOKE ALL ON SCHEMA {s} FROM PUBLIC",
        ]
    m = _ident(PUBLIC_SCHEMA)
    sql += [
        f"GRANT USAGE ON SCHEMA {m} TO {an}",
        # marts built before this set-up; dbt grants each one it builds from now on
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {m} TO {an}",
    ]
    return sql


def script(database: str, loader: str = LOADER_ROLE, analyst: str | None = None,
           analyst_logins: list[str] | tuple[str, ...] = ()) -> str:
    """The set-up as a psql script for a DBA (passwords are set separately)."""
    lines = [
        f"-- salesflow warehouse roles for database {database}: run as a superuser or the",
        "-- database owner with CREATEROLE; safe to run again. Set passwords with \\password.",
    ]
    lines += [s + ";" for s in statements(database, loader, analyst, analyst_logins)]
    return "\n".join(lines) + "\n"


def _check(cur: Any, database: str, analysts: list[str]) -> None:
    """Refuse the wrong database, and a superuser among the analysts."""
    cur.execute("SELECT current_database()")
    [(current,)] = cur.fetchall()
    if current != database:
        raise ValueError(
            f"connected to database {current!r}, not {database!r}: grants on schemas only"
            " apply in the database they are run in"
        )
    cur.execute("SELECT rolname FROM pg_roles WHERE rolsuper AND rolname = ANY(%s)",
                (analysts,))
    superusers = [r[0] for r in cur.fetchall()]
    if superusers:
        raise ValueError(
            f"{', '.join(superusers)} is a superuser: superusers bypass every grant, so it"
            " cannot be an analyst; choose another role"
        )


def init_roles(connection: Any, database: str, loader: str = LOADER_ROLE,
               loader_password: str | None = None, analyst: str | None = None,
               analyst_logins: Mapping[str, str | None] | None = None) -> list[str]:
    """Run the set-up on ``connection`` (psycopg2, to ``database``, as a superuser or a
    role with CREATEROLE that owns the database, not inside a transaction), in one
    transaction. Passwords given are set; ``None`` leaves a role's password as it is.
    Returns the statements run."""
    logins = dict(analyst_logins or {})
    sql = statements(database, loader, analyst, list(logins))
    previous = connection.autocommit
    connection.autocommit = False  # checks and set-up in one transaction
    try:
        with connection.cursor() as cur:
            _check(cur, database, [analyst or analyst_role(), *logins])
            for statement in sql:
                cur.execute(statement)
            passwords = {loader: loader_password, **logins}
            for role, password in passwords.items():
                if password is not None:
                    cur.execute(f"ALTER ROLE {_ident(role)} PASSWORD %s", (password,))
        connection.commit()
    except Exception:
        connection.rollback()
        raise
    finally:
        connection.autocommit = previous
    log.info("roles set up in %s: loader %s, analyst %s (%d login(s))", database, loader,
             analyst or analyst_role(), len(logins))
    return sql
