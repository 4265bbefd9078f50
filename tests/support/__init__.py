"""What the tests share besides fixtures (those are in ``tests/conftest.py``).

Tests import these, always as ``from tests.support... import ...``, never from another
test file:

* this module: the repository's root and the fixed values the fixtures use;
* ``simulator``: serving a generated platform in its own process, and changing its
  schema (scripted evolutions) or what its API serves (drifts) while served;
* ``warehouse``: dbt on the test's warehouse, and the last load that reconciles it;
* ``postgres``: a throw-away PostgreSQL server;
* ``spark``: Spark SQL on the session dbt-spark runs in the test's process;
* ``sinks``: local receivers for notifications (HTTP and SMTP);
* ``readers``: analysts' processes holding a published version open;
* ``board``: the live board served in its own process, and headless Chromium on it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
AS_OF = datetime(2026, 11, 1, tzinfo=timezone.utc)  # end of the generated history
TOKEN = "test-token-5f3a"  # the served simulator's bearer token


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Ask a server or runner process to stop (SIGTERM), kill it if it does not in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def free_port() -> int:
    """A port of 127.0.0.1 free when asked (nothing listens on it until someone binds it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
