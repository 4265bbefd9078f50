"""The dbt-duckdb plugin that gives each DuckDB connection dbt opens the key personal
data is hashed with (``plugins`` of the ``dev`` output in profiles.yml).

It sets the session variables :data:`loaders.pii.DUCKDB_VARIABLES` (HMAC's padded keys)
on the connection and on every cursor dbt takes from it (variables belong to one
DuckDB connection, cursors included): they live in memory only, never in the warehouse
file, SQL text or dbt's logs. A connection without them (an analyst opening the
warehouse) cannot compute a hash: the staging views holding hashes then fail with an
error saying so. See :mod:`loaders.pii` for where the key comes from.

May import: dbt-duckdb's plugin base and :mod:`loaders.pii`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin

from loaders import pii


class Plugin(BasePlugin):
    """Sets the padded keys on dbt's DuckDB connection and cursors."""

    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self._padded: tuple[str, str] | None = None

    def _padded_keys(self) -> tuple[str, str]:
        if self._padded is None:  # once per dbt command, on the first connection
            database = Path(self.creds.path if self.creds else "")
            self._padded = pii.padded_keys(pii.duckdb_key(database))
        return self._padded

    def _set(self, connection: Any) -> None:
        for name, value in zip(pii.DUCKDB_VARIABLES, self._padded_keys(), strict=True):
            connection.execute(f"set variable {name} = ?", [value])

    def configure_connection(self, conn: Any) -> None:
        self._set(conn)

    def configure_cursor(self, cursor: Any) -> None:
        self._set(cursor)
