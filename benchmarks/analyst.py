"""An analyst for the benchmark's realistic freshness run: one read-only DuckDB
connection to the published file, opened once and held until stopped, querying it
every few seconds with the project's own analyses (``analyses/*.sql``, in turn).

    python -m benchmarks.analyst PUBLISHED_FILE [--every 3]

Holding the connection is the point: the pipeline must publish around a file a reader
keeps open (see :mod:`loaders.runners.publish`), as a BI tool's pooled connection does.
Runs until SIGTERM or SIGINT, then prints one JSON line: ``queries``, ``errors`` and the
first error's message. A failed query is counted, never fatal: the benchmark reports it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent


def analyses() -> list[str]:
    queries = [p.read_text() for p in sorted((ROOT / "analyses").glob("*.sql"))]
    if not queries:
        raise FileNotFoundError(f"no analyses in {ROOT / 'analyses'}")
    return queries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("published", type=Path)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between queries")
    parser.add_argument("--wait", type=float, default=120.0,
                        help="seconds to wait for the file to be published first")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    deadline = time.monotonic() + args.wait
    while not args.published.exists():
        if time.monotonic() > deadline or stop.wait(0.1):
            raise FileNotFoundError(f"{args.published} was never published")
    sql = analyses()
    done = {"queries": 0, "errors": 0, "first_error": None}
    with duckdb.connect(str(args.published), read_only=True) as con:
        while not stop.is_set():
            try:
                con.execute(sql[done["queries"] % len(sql)]).fetchall()
            except duckdb.Error as exc:
                done["errors"] += 1
                done["first_error"] = done["first_error"] or str(exc)
            done["queries"] += 1
            stop.wait(args.every)
    print(json.dumps(done), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
