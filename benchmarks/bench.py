"""salesflow's benchmark: speed, memory, cycle cost and freshness, side by side.

    python -m benchmarks.bench [--scale smoke|default|large] [--out FILE]

Writes ``benchmarks/results.json`` (``--out``) and prints a table. Everything runs on
this machine through real HTTP on 127.0.0.1; ratios are measured in the same run, since
absolute times drift on shared machines. Method, figure by figure:

* ``load.rows_per_s``: a backfill of the scale's orders (other entities at their natural
  ratios) into an empty warehouse — ``salesflow load`` in its own process against
  ``salesflow sim serve --rate 0``; timed from process start to exit (start-up included),
  rows = rows in the raw tables afterwards; the generated history is flushed to disk
  first (``sync``), so its write-back does not land in the timing.
  ``memory.peak_rss_mb``: that process's peak
  resident memory (its ``VmHWM``, followed while it runs).
* ``load.duckdb_read_json_rows_per_s``: the same rows, dumped from the replica as NDJSON
  (the records the API serves, from the replica's feed; dump not timed), read by
  DuckDB's ``read_json`` into tables
  of a fresh database file; ``load.ratio`` = rows_per_s / that.
* ``load.baseline_dlt_dicts_rows_per_s``: what a user would write first — a dlt resource
  paging the API's JSON with dlt's RESTClient, yielding the dicts, default loader
  (``insert_values``) into DuckDB — over the first ``baseline_rows`` order items;
  ``load.speedup_vs_baseline``.
* ``json.parse_*``: the pages of the first ``json_parse_rows`` rows (spread over the
  entities, the loader's page size), fetched once as NDJSON and once as the JSON
  document the API serves them as (``{"data": [...], "next_cursor": ...}``; fetching
  not timed), each parsed to Arrow by the loader's own functions (``parse_page``; the
  document split first by ``jsondoc.split_document``), page by page in turn;
  ``parse_ratio`` = JSON rows/s / NDJSON rows/s. The two must give equal tables.
* ``json.load_*``: end to end, a backfill (as ``load.rows_per_s``) of a smaller history
  of ``json_load_orders`` orders, generated for it, served once natively (NDJSON) and
  once as ``sim serve --profile envelope`` (JSON documents, body cursor, API key,
  soft deletes) with the loader configured for it
  (``simulator.profiles.loader_env``); ``load_ratio`` = JSON / NDJSON.
* ``cycle.full_s`` / ``delta_1pct_s`` / ``noop_s``: cycles of ``salesflow watch`` (dbt
  parsed once before; parse not timed) after the backfill: the first builds every model
  over all data; then 1% of the rows new or changed on the platform (new orders with
  their lines and events, plus the platform's own updates), rebuilt selectively; then
  nothing new. Each includes load, build and publication. Ratios to full.
* ``freshness.p50_s`` / ``p95_s``: the simulator at 50 orders/s and watch at a 1 s
  interval for ``freshness_seconds``, on top of the scale's history; for every order
  written after watch's first build was published (steady state: the start-up build,
  with its tests over all the data, is not what an analyst waits for while watch runs)
  and first visible in the published file, publication time minus the order's
  ``ordered_at`` (written on the platform then). The platform plays late commits and
  device clock skew (``simulator.model.real_world_args``): an order in a long
  transaction is visible only at its commit, and that wait counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loaders.replica import entity_spec, settings
from loaders.replica.client import fetch_api_schema
from loaders.replica.jsondoc import split_document
from loaders.replica.pages import parse_page
from loaders.replica.protocol import api_from_settings
from loaders.runners.watch import watch
from loaders.warehouse import environment, raw_counts
from simulator import model, store
from simulator.api import Replica
from simulator.generate import generate
from simulator.platform import Platform
from simulator.profiles import loader_env
from simulator.server import read_server_file

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"

SCALES: dict[str, dict[str, Any]] = {
    # keys only: checks that the harness runs end to end, not the targets
    "smoke": {"orders": 400, "baseline_rows": 500, "freshness_seconds": 12, "days": 10,
              "json_parse_rows": 5_000, "json_load_orders": 200},
    "default": {"orders": 1_000_000, "baseline_rows": 50_000, "freshness_seconds": 180,
                "days": 90, "json_parse_rows": 400_000, "json_load_orders": 100_000},
    "large": {"orders": 10_000_000, "baseline_rows": 50_000, "freshness_seconds": 180,
              "days": 365, "json_parse_rows": 400_000, "json_load_orders": 100_000},
}
# where the envelope profile's JSON documents hold their records
ENVELOPE_RECORDS_PATH = "data"
PAGE_SIZE = 20_000  # the loader's default page size
GOALS = {"load.ratio": 0.25, "memory.peak_rss_mb": 1024, "cycle.delta_ratio": 0.10,
         "cycle.noop_ratio": 0.03, "freshness.p50_s": 5, "freshness.p95_s": 10}


class Server:
    def __init__(self, sim_dir: Path, *args: str) -> None:
        (sim_dir / "server.json").unlink(missing_ok=True)
        self.log = open(sim_dir / "serve.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loaders.cli", "sim", "serve", "--dir", str(sim_dir),
             "--token", TOKEN, "--port", "0", "--rate-limit", "100000", *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        self.url = read_server_file(sim_dir, timeout=60)["url"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# one key for hashing personal data for every warehouse of a run, as a deployment
# configures one: warehouses built side by side (a clean rebuild) hash alike
PII_KEY = secrets.token_urlsafe(32)


def _env(work: Path) -> dict[str, str]:
    return {
        "SALESFLOW_PII_KEY": PII_KEY,
        "SALESFLOW_DUCKDB_PATH": str(work / "warehouse.duckdb"),
        "SALESFLOW_PIPELINES_DIR": str(work / "dlt"),
        "SALESFLOW_PUBLISHED_PATH": str(work / "published" / "analytics.duckdb"),
        "SOURCES__REPLICA__TOKEN": TOKEN,
        "DLT_PROJECT_DIR": str(ROOT),
        "NOTIFY__JSONL_PATH": str(work / "notifications.jsonl"),
    }


def _peak_rss_mb(pid: int, done: threading.Event, out: list[int]) -> None:
    """Follow a process's VmHWM (peak resident set of its own address space, reset at
    exec). getrusage/wait4 would also count the parent's pages the child was forked
    with, which here means the generated history."""
    peak = 0
    while not done.is_set():
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        done.wait(0.05)
    out.append(round(peak / 1024))


def backfill(work: Path, url: str, config: dict[str, str] | None = None) -> dict[str, Any]:
    """``salesflow load`` into the empty warehouse of ``work`` (``config``: more
    environment for the loader, e.g. a protocol profile's settings)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loaders.cli", "load", "--base-url", url],
        cwd=ROOT, env={**os.environ, **_env(work), **(config or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    done, peak = threading.Event(), []
    watcher = threading.Thread(target=_peak_rss_mb, args=(proc.pid, done, peak))
    watcher.start()
    output = proc.stdout.read()
    proc.wait()
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"backfill failed:\n{output}")

    with environment(**_env(work)):
        counts = raw_counts(list(settings.ENDPOINTS))
    rows = sum(counts.get(e, 0) for e in settings.ENDPOINTS)
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "peak_rss_mb": peak[0] if peak else None}


def read_json_baseline(work: Path, sim_dir: Path) -> dict[str, Any]:
    import duckdb


    nd = work / "ndjson"
    nd.mkdir(exist_ok=True)
    replica, rows = Replica(sim_dir), 0
    con = replica.con()
    for entity in settings.ENDPOINTS:
        with open(nd / f"{entity}.ndjson", "w") as fh:
            # the live rows' records, as the API serves them
            cur = con.execute(f"SELECT record FROM {store.feed_table(entity)} WHERE dead = 0")
            while batch := cur.fetchmany(100_000):
                fh.write("\n".join(r[0] for r in batch) + "\n")
                rows += len(batch)
    db = work / "read_json.duckdb"
    db.unlink(missing_ok=True)
    started = time.perf_counter()
    with duckdb.connect(str(db)) as d:
        for entity in settings.ENDPOINTS:
            d.execute(
                f"CREATE TABLE {entity} AS SELECT * FROM read_json("
                f"'{nd / (entity + '.ndjson')}', format = 'newline_delimited')"
            )
    seconds = time.perf_counter() - started
    shutil.rmtree(nd)
    db.unlink(missing_ok=True)
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


def dicts_baseline(work: Path, url: str, limit: int) -> dict[str, Any]:
    """A straightforward dlt pipeline: JSON pages, dicts, default loader."""
    import dlt
    from dlt.sources.helpers.rest_client import RESTClient
    from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
    from dlt.sources.helpers.rest_client.paginators import JSONResponseCursorPaginator

    @dlt.resource(name="order_items", primary_key="order_item_id", write_disposition="merge")
    def order_items():
        client = RESTClient(base_url=url, auth=BearerTokenAuth(TOKEN))
        seen = 0
        for page in client.paginate(
            "/v1/order_items", params={"limit": 1000},
            paginator=JSONResponseCursorPaginator(cursor_path="next_cursor",
                                                  cursor_param="cursor"),
            data_selector="data",
        ):
            yield page
            seen += len(page)
            if seen >= limit:
                return

    p = dlt.pipeline("bench_dicts", destination=dlt.destinations.duckdb(
        str(work / "dicts.duckdb")), pipelines_dir=str(work / "dlt_dicts"),
        dataset_name="raw")
    started = time.perf_counter()
    info = p.run(order_items())
    seconds = time.perf_counter() - started
    rows = p.last_trace.last_normalize_info.row_counts.get("order_items", 0)
    del info
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


def _listing_pages(url: str, path: str, rows: int) -> Iterator[tuple[bytes, bytes]]:
    """The first pages (up to ``rows`` records) of a listing, each as (NDJSON, the same
    page as a JSON document)."""
    import requests

    auth = {"Authorization": f"Bearer {TOKEN}"}
    params: dict[str, Any] = {settings.PARAM_LIMIT: min(PAGE_SIZE, rows)}
    seen = 0
    with requests.Session() as http:
        while seen < rows:
            pages = [http.get(f"{url}/{path}", params={**params, "format": f},
                              headers=auth, timeout=120) for f in ("ndjson", "json")]
            for page in pages:
                page.raise_for_status()
            ndjson, document = (p.content for p in pages)
            if not ndjson.strip():
                return
            yield ndjson, document
            seen += ndjson.count(b"\n")
            cursor = pages[0].headers.get(settings.NEXT_CURSOR_HEADER)
            if not cursor:
                return
            params[settings.PARAM_CURSOR] = cursor


def json_parse(url: str, rows: int) -> dict[str, Any]:
    """Pages parsed to Arrow as NDJSON and as JSON documents (see the module
    docstring): rows/s of each and their ratio."""
    described = fetch_api_schema(api_from_settings(url, TOKEN, {}))
    per_entity = max(1, rows // len(settings.ENDPOINTS))
    parsers = {
        "ndjson": parse_page,
        "json": lambda spec, document: parse_page(
            spec, split_document(document, ENVELOPE_RECORDS_PATH)[0]),
    }
    total, seconds, warm = 0, {"ndjson": 0.0, "json": 0.0}, False
    for name, endpoint in settings.ENDPOINTS.items():
        spec = entity_spec(name, endpoint, described)
        for number, bodies in enumerate(_listing_pages(url, endpoint["path"], per_entity)):
            pages = dict(zip(("ndjson", "json"), bodies, strict=True))
            if not warm:  # the first parse pays for pyarrow's set-up: not timed
                for form, parse in parsers.items():
                    parse(spec, pages[form])
                warm = True
            tables = {}
            # each page parsed both ways, in turn first, so drift hits both alike
            for form in sorted(parsers, reverse=number % 2 == 1):
                started = time.perf_counter()
                tables[form] = parsers[form](spec, pages[form]).table
                seconds[form] += time.perf_counter() - started
            native, parsed = tables["ndjson"], tables["json"]
            same = native.equals(parsed) if native is not None and parsed is not None else (
                native is parsed)
            if not same:
                raise RuntimeError(f"{name}: a page parsed from JSON differs from its NDJSON")
            total += native.num_rows if native is not None else 0
    ndjson_rate, json_rate = (round(total / seconds[f]) for f in ("ndjson", "json"))
    return {"parse_rows": total, "parse_ndjson_rows_per_s": ndjson_rate,
            "parse_json_rows_per_s": json_rate,
            "parse_ratio": round(json_rate / ndjson_rate, 3)}


def json_load(work: Path, orders: int, days: int) -> dict[str, Any]:
    """Backfills of one history served natively and as the envelope profile (see the
    module docstring)."""
    sim_dir = work / "sim_json"
    generate(sim_dir, orders=orders, seed=7, days=days,
             clock_skew=model.REAL_WORLD_CLOCK_SKEW_S)
    os.sync()
    loads = {}
    for name, args in (("ndjson", ()), ("json", ("--profile", "envelope"))):
        target = work / f"load_{name}"
        target.mkdir()
        server = Server(sim_dir, "--rate", "0", *args)
        try:
            config = loader_env("envelope", server.url, TOKEN) if args else None
            loads[name] = backfill(target, server.url, config)
        finally:
            server.stop()
    ndjson, json_ = loads["ndjson"], loads["json"]
    return {"load_orders": orders, "load_rows": json_["rows"],
            "load_ndjson_rows": ndjson["rows"],
            "load_ndjson_rows_per_s": ndjson["rows_per_s"],
            "load_json_rows_per_s": json_["rows_per_s"],
            "load_ratio": round(json_["rows_per_s"] / ndjson["rows_per_s"], 3),
            "load_json_peak_rss_mb": json_["peak_rss_mb"]}


def cycles(work: Path, sim_dir: Path, url: str, total_rows: int) -> dict[str, Any]:
    """Full, 1% delta and no-op cycles of watch (see the module docstring)."""

    timings: list[dict[str, Any]] = []

    def between(stats) -> None:
        timings.append(dict(stats.last))
        if stats.cycles == 1:
            # ~10 rows per order (lines, events, session): 1% of all rows, as new orders
            # plus the updates the platform makes while writing them
            orders = max(1, total_rows // 1000)
            p = Platform(sim_dir, seed=5)
            try:
                for _ in range(0, orders, 2000):
                    p.tick(min(2000, orders))
            finally:
                p.close()
            store.replicate(sim_dir)

    with environment(**_env(work)):
        watch(interval=0, max_cycles=3, on_cycle=between, base_url=url, token=TOKEN)
    full, delta, noop = (t["cycle_s"] for t in timings[:3])
    return {"full_s": full, "delta_1pct_s": delta, "noop_s": noop,
            "delta_ratio": round(delta / full, 3), "noop_ratio": round(noop / full, 3),
            "detail": timings}


def freshness(work: Path, url: str, seconds: float) -> dict[str, Any]:
    import duckdb


    published = work / "published" / "analytics.duckdb"
    latencies: list[float] = []
    state: dict[str, Any] = {"newest": None, "since": None}
    stop = threading.Event()

    def measure(stats) -> None:
        if "publish_s" not in stats.last:
            return
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with duckdb.connect(str(published), read_only=True) as con:
            if state["newest"] is None:  # the first (full) build: the clock starts here
                state["newest"] = con.execute(
                    "select max(ordered_at) from marts.fct_orders").fetchone()[0]
                state["since"], state["start"] = time.monotonic(), now
                return
            rows = con.execute("select ordered_at from marts.fct_orders where ordered_at > ?",
                               [state["newest"]]).fetchall()
        if rows:
            # steady state: sales written once watch is up (its first build published)
            latencies.extend(
                (now - r[0]).total_seconds() for r in rows if r[0] >= state["start"]
            )
            state["newest"] = max(r[0] for r in rows)
        if time.monotonic() - state["since"] >= seconds:
            stop.set()

    with environment(**_env(work)):
        watch(interval=1, stop=stop, on_cycle=measure, base_url=url, token=TOKEN)
    latencies.sort()
    if not latencies:
        raise RuntimeError("no sale reached the published marts while measuring freshness")

    def pick(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * q))], 2)

    return {"p50_s": pick(0.5), "p95_s": pick(0.95), "sales": len(latencies),
            "seconds": seconds}


def machine() -> dict[str, Any]:
    import dbt.version
    import dlt
    import duckdb

    mem = next((int(line.split()[1]) // 1024 for line in open("/proc/meminfo")
                if line.startswith("MemTotal")), None)
    return {"cores": os.cpu_count(), "memory_mb": mem, "python": host.python_version(),
            "duckdb": duckdb.__version__, "dlt": dlt.__version__,
            "dbt": dbt.version.__version__, "platform": host.platform()}


def run(scale: str, out: Path) -> dict[str, Any]:

    cfg = SCALES[scale]
    work = ROOT / "data" / "bench" / scale
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sim_dir = work / "sim"
    t = time.perf_counter()
    generate(sim_dir, orders=cfg["orders"], seed=42, days=cfg["days"],
             clock_skew=model.REAL_WORLD_CLOCK_SKEW_S)
    generated_s = round(time.perf_counter() - t, 1)
    os.sync()  # the history's gigabytes reach the disk now, not during the backfill
    results: dict[str, Any] = {"scale": scale, "orders": cfg["orders"],
                               "generate_s": generated_s}
    server = Server(sim_dir, "--rate", "0")
    try:
        load = backfill(work, server.url)
        rj = read_json_baseline(work, sim_dir)
        dicts = dicts_baseline(work, server.url, cfg["baseline_rows"])
        results["load"] = {
            "rows": load["rows"], "seconds": load["seconds"], "rows_per_s": load["rows_per_s"],
            "duckdb_read_json_rows_per_s": rj["rows_per_s"],
            "ratio": round(load["rows_per_s"] / rj["rows_per_s"], 3),
            "baseline_dlt_dicts_rows_per_s": dicts["rows_per_s"],
            "baseline_rows": dicts["rows"],
            "speedup_vs_baseline": round(load["rows_per_s"] / dicts["rows_per_s"], 1),
        }
        results["memory"] = {"peak_rss_mb": load["peak_rss_mb"]}
        results["json"] = json_parse(server.url, cfg["json_parse_rows"])
        results["cycle"] = cycles(work, sim_dir, server.url, load["rows"])
    finally:
        server.stop()
    results["json"].update(json_load(work, cfg["json_load_orders"], cfg["days"]))
    live = Server(sim_dir, "--rate", "50", *model.real_world_args())
    try:
        results["freshness"] = freshness(work, live.url, cfg["freshness_seconds"])
        results["freshness"]["conditions"] = {
            "late_commits_s": model.REAL_WORLD_LATE_COMMITS_S,
            "clock_skew_s": model.REAL_WORLD_CLOCK_SKEW_S,
        }
    finally:
        live.stop()
    results["machine"] = machine()
    results["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def table(results: dict[str, Any]) -> str:
    rows = [
        ("load.rows", results["load"]["rows"]),
        ("load.rows_per_s", results["load"]["rows_per_s"]),
        ("load.duckdb_read_json_rows_per_s", results["load"]["duckdb_read_json_rows_per_s"]),
        ("load.ratio", results["load"]["ratio"]),
        ("load.baseline_dlt_dicts_rows_per_s", results["load"]["baseline_dlt_dicts_rows_per_s"]),
        ("load.speedup_vs_baseline", results["load"]["speedup_vs_baseline"]),
        ("json.parse_ndjson_rows_per_s", results["json"]["parse_ndjson_rows_per_s"]),
        ("json.parse_json_rows_per_s", results["json"]["parse_json_rows_per_s"]),
        ("json.parse_ratio", results["json"]["parse_ratio"]),
        ("json.load_ndjson_rows_per_s", results["json"]["load_ndjson_rows_per_s"]),
        ("json.load_json_rows_per_s", results["json"]["load_json_rows_per_s"]),
        ("json.load_ratio", results["json"]["load_ratio"]),
        ("memory.peak_rss_mb", results["memory"]["peak_rss_mb"]),
        ("cycle.full_s", results["cycle"]["full_s"]),
        ("cycle.delta_1pct_s", results["cycle"]["delta_1pct_s"]),
        ("cycle.noop_s", results["cycle"]["noop_s"]),
        ("cycle.delta_ratio", results["cycle"]["delta_ratio"]),
        ("cycle.noop_ratio", results["cycle"]["noop_ratio"]),
        ("freshness.p50_s", results["freshness"]["p50_s"]),
        ("freshness.p95_s", results["freshness"]["p95_s"]),
    ]
    lines = ["| figure | value | goal |", "|---|---|---|"]
    for key, value in rows:
        goal = None if results["scale"] == "smoke" else GOALS.get(key)
        mark = ""
        if goal is not None:
            ok = value >= goal if key == "load.ratio" else value <= goal
            mark = f"{'≥' if key == 'load.ratio' else '≤'} {goal} {'met' if ok else 'NOT met'}"
        shown = f"{value:,}" if isinstance(value, int) else value
        lines.append(f"| {key} | {shown} | {mark} |")
    m = results["machine"]
    if results["scale"] == "smoke":
        lines.append("\n(smoke scale checks the harness; goals are judged at default scale)")
    lines.append(f"\n{results['scale']} scale, {results['orders']:,} orders; {m['cores']} cores,"
                 f" {m['memory_mb']:,} MB; python {m['python']}, duckdb {m['duckdb']},"
                 f" dlt {m['dlt']}, dbt {m['dbt']}; {results['measured_at']}")
    return "\n".join(lines)


def command_line(
    doc: str, scales: dict[str, Any], default_out: Path, run_scale: Any, table_of: Any,
    passed: Any = lambda results: True,
) -> Any:
    """The ``main`` of a harness module: ``--scale`` (one of ``scales``) and ``--out``,
    run from the repository's root, print the table; exit 1 when ``passed`` says the
    results fail."""
    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(description=doc.splitlines()[0])
        parser.add_argument("--scale", choices=sorted(scales), default="default")
        parser.add_argument("--out", type=Path, default=default_out)
        args = parser.parse_args(argv)
        os.chdir(ROOT)
        results = run_scale(args.scale, args.out)
        print(table_of(results))
        print(f"\nwritten to {args.out}")
        return 0 if passed(results) else 1

    return main


main = command_line(__doc__, SCALES, ROOT / "benchmarks" / "results.json", run, table)


if __name__ == "__main__":
    sys.exit(main())
