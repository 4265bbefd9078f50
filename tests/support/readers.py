"""Analysts' processes keeping a read-only DuckDB connection open, as a BI tool's
pooled connection does: a real second process, so DuckDB's file lock is the one a
publication meets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import duckdb, sys
con = None
for line in sys.stdin:
    if con is not None:
        con.close()
    con = duckdb.connect(line.strip(), read_only=True)
    con.execute("select * from marts._published").fetchall()
    print("open", flush=True)
"""


class Reader:
    """One process, one connection at a time: ``open`` moves it to ``path`` (the
    version that file is now) and returns once the connection is open."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )

    def open(self, path: Path) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if answer.strip() != "open":
            raise RuntimeError(f"the reader could not open {path}: {answer!r}")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
