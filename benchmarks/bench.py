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
  of a fresh database file; ``load.ratio`` = rows_per_s / that. A scale with
  ``read_json_rows`` dumps at most that many rows per entity (the first in the feed's
  order; the dump of a whole large history would need as much disk again as the
  replica); ``load.read_json_rows`` says how many were read.
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
  over all data; then a few incremental cycles, each on a small change (a tenth of the
  delta), so the measured cycles are those of a pipeline in steady state, not the first
  one after the backfill; then ``DELTA_SAMPLES`` cycles each on 1% of the rows new or
  changed on the platform (new orders with their lines and events, plus the platform's
  own updates), rebuilt selectively, each after small ones and once the one before has
  left the lookback window (``lookback_seconds`` later: back to back, a cycle would
  read the changes before it again, and each sample would measure another thing);
  then ``NOOP_SAMPLES``
  with nothing new, once the last change has left the window too (inside it, a cycle
  with nothing new still reads the change again and measures that).
  The delta and no-op figures are the means of their cycles (each
  listed under ``*_samples_s``): one cycle varies by tenths of a second with what
  falls in it (a checkpoint of the log, a collection), and the mean counts such costs
  at their share. Each includes load, build and publication; the periodic data tests
  are kept out (they run on their own rhythm, after publication, and show in the
  freshness runs). Ratios to full. ``cycle.delta_models``: the slowest models of the
  last delta cycle with their seconds, from dbt's ``run_results.json``.
* ``freshness.*`` (the headline): ``salesflow watch`` in its own process (1 s interval,
  data tests every ``test_interval`` seconds in slices of ``test_slice_seconds``, as
  configured for watch) while the simulator writes 50 orders/s on top of the scale's
  history, with replica lag
  (``sim serve --lag``), late commits and device clock skew
  (``simulator.model.real_world_args``: an order in a long transaction is visible only
  at its commit, and that wait counts), and an analyst process
  (:mod:`benchmarks.analyst`) holding one read-only connection to the published file
  for the whole window, running the project's analyses every few seconds
  (``reader_queries``; ``reader_errors`` must be 0). The window, ``freshness_seconds``
  from watch's first publication (the start-up build, with its tests over all the
  data, is not what an analyst waits for while watch runs), must hold a run of the
  periodic data tests (``periodic_test_runs``: runs completed, every data test once, in
  slices after the cycles' publications; ``periodic_test_slices`` and
  ``test_slice_max_s``: the slices run and the longest; from watch's cycle log). The
  published file is checked for a new version every ``POLL_S``; for every order
  written after the first publication, the moment its first version is seen minus the order's
  ``ordered_at`` (written on the platform then): p50/p95/p99/max. ``conditions`` says
  what was on. ``freshness_ideal.*``: the same for ``ideal_seconds``, without lag or
  analyst, labelled as such.
* ``scale_<scale>.*``: the history's figures side by side: its orders, the backfill's
  seconds, ``first_publish_s`` (the first watch cycle after the backfill: every model
  built over all the history, with its tests, and everything published; dbt's parse not
  timed, as in ``cycle.full_s``), the realistic
  freshness p95, and ``peak_rss_mb`` of each process (loader, watch with dbt and the
  loader in it, analyst), each followed by :class:`PeakRss`. dbt's DuckDB is bounded
  (``SALESFLOW_DBT_MEMORY_LIMIT`` in ``profiles.yml``) like the loader's. At the large
  scale, ``steady_cycle_ratio``: the realistic run's ``freshness.cycle_mean_s`` (what a
  cycle of watch costs once up, test slices and re-reads included; ``cycle_p50_s`` and
  ``cycle_parts_mean_s`` beside it) over the default scale's, read from
  ``benchmarks/results.json`` (run ``make bench`` first, at the same commit:
  ``commit`` in both files says which).
* ``feed`` / ``simulator_bytes``: how the simulated replica keeps the records it serves
  (``simulator.store``: stored at smoke and default scale; views at large scale, where
  a stored copy of every record would not fit the disk; rendering as it serves costs
  the simulator CPU that the loader shares) and the simulator's files after generation.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform as host
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loaders import config
from loaders.dbt_project import target_dir
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
    # keys only: checks that the harness runs end to end, not the targets; its windows
    # are short, so its data tests run every few seconds, in few slices, to complete a
    # run in the realistic one
    "smoke": {"orders": 400, "baseline_rows": 500, "days": 10,
              "freshness_seconds": 25, "ideal_seconds": 10, "test_interval": 8,
              "test_slice_seconds": 5,
              "json_parse_rows": 5_000, "json_load_orders": 200},
    # the realistic window holds two periodic test runs at watch's default rhythm
    "default": {"orders": 1_000_000, "baseline_rows": 50_000, "days": 90,
                "freshness_seconds": 660, "ideal_seconds": 180, "test_interval": 300,
                "test_slice_seconds": 1,
                "json_parse_rows": 400_000, "json_load_orders": 100_000},
    "large": {"orders": 10_000_000, "baseline_rows": 50_000, "days": 365,
              "freshness_seconds": 660, "ideal_seconds": 180, "test_interval": 300,
              "test_slice_seconds": 1,
              "json_parse_rows": 400_000, "json_load_orders": 100_000,
              "read_json_rows": 2_000_000, "feed": "views"},
}
# where the envelope profile's JSON documents hold their records
ENVELOPE_RECORDS_PATH = "data"
PAGE_SIZE = 20_000  # the loader's default page size
LIVE_RATE = 50  # orders/s written on the platform while freshness is measured
REPLICA_LAG_S = 0.5  # the realistic run's replica lag
ANALYST_EVERY_S = 3  # seconds between the analyst's queries
POLL_S = 0.1  # how often the published file is checked for a new version
GOALS = {"load.ratio": 0.30, "memory.peak_rss_mb": 1024, "cycle.delta_ratio": 0.10,
         "cycle.noop_ratio": 0.02, "freshness.p50_s": 3, "freshness.p95_s": 6,
         "freshness.reader_errors": 0, "scale.peak_rss_mb.loader": 2048,
         "scale.peak_rss_mb.watch": 2048}
# at 10M orders of history, the realistic freshness p95 may be longer
LARGE_GOALS = {"scale.freshness_p95_s": 10, "scale.steady_cycle_ratio": 1.5}


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


class PeakRss:
    """Follows a process's ``VmHWM`` (the peak resident set of its own address space,
    reset at exec) while it runs; ``stop()`` answers it in MB. Not getrusage/wait4:
    Linux carries the larger high-water mark across exec, and a child starts as a
    (v)fork of this process, so they would count the pages of the generated history
    this process holds; psutil is not a dependency."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb = pid, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        while not self.done.is_set():
            try:
                for line in open(f"/proc/{self.pid}/status"):
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                break
            self.done.wait(0.05)

    def stop(self) -> int | None:
        self.done.set()
        self.thread.join()
        return round(self.peak_kb / 1024) if self.peak_kb else None


def backfill(work: Path, url: str, config: dict[str, str] | None = None) -> dict[str, Any]:
    """``salesflow load`` into the empty warehouse of ``work`` (``config``: more
    environment for the loader, e.g. a protocol profile's settings)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loaders.cli", "load", "--base-url", url],
        cwd=ROOT, env={**os.environ, **_env(work), **(config or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    rss = PeakRss(proc.pid)
    output = proc.stdout.read()
    proc.wait()
    seconds = time.perf_counter() - started
    peak = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"backfill failed:\n{output}")

    with environment(**_env(work)):
        counts = raw_counts(list(settings.ENDPOINTS))
    rows = sum(counts.get(e, 0) for e in settings.ENDPOINTS)
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "peak_rss_mb": peak}


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def read_json_baseline(work: Path, sim_dir: Path, limit: int | None = None) -> dict[str, Any]:
    import duckdb


    nd = work / "ndjson"
    nd.mkdir(exist_ok=True)
    replica, rows = Replica(sim_dir), 0
    con = replica.con()
    for entity in settings.ENDPOINTS:
        with open(nd / f"{entity}.ndjson", "w") as fh:
            # the live rows' records, as the API serves them
            cur = con.execute(
                f"SELECT record FROM {store.feed_table(entity)} WHERE dead = 0"
                + (f" LIMIT {int(limit)}" if limit else "")
            )
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


# incremental cycles (each a small change) run between the full cycle and the measured
# 1% delta, so the delta is measured in steady state, not on the heels of the backfill
WARM_CYCLES = 3
# the slowest models of the delta cycle reported (cycle.delta_models)
SLOWEST_MODELS = 8
# 1% delta and no-op cycles measured (their means are reported), and the small cycles
# run between two deltas
DELTA_SAMPLES = 3
NOOP_SAMPLES = 3
WARMS_BETWEEN = 2


def _change(sim_dir: Path, orders: int, seed: int) -> None:
    """New orders (with their lines, events and sessions, plus the updates the platform
    makes while writing them) on the platform, then replicated."""
    p = Platform(sim_dir, seed=seed)
    try:
        for done in range(0, orders, 2000):
            p.tick(min(2000, orders - done))
    finally:
        p.close()
    store.replicate(sim_dir)


def _slowest_models(run_results: Path, top: int) -> list[dict[str, Any]]:
    """The slowest models of dbt's last build or run (its ``run_results.json``)."""
    nodes = json.loads(run_results.read_text())["results"]
    models = [(r["unique_id"].split(".")[-1], r["execution_time"]) for r in nodes
              if r["unique_id"].startswith("model.")]
    models.sort(key=lambda m: m[1], reverse=True)
    return [{"model": name, "seconds": round(t, 2)} for name, t in models[:top]]


def cycles(work: Path, sim_dir: Path, url: str, total_rows: int) -> dict[str, Any]:
    """Full, steady-state 1% delta and no-op cycles of watch (see the module docstring)."""
    # what each cycle after the full one loads: every 1% change comes after small ones,
    # as the first does, and once the change before it has left the lookback window
    # (back to back, a change would also carry the ones before: their rows read again
    # by the lookback, the spare version refreshed two publications behind)
    plan = (["warm"] * WARM_CYCLES
            + (["delta"] + ["warm"] * WARMS_BETWEEN) * (DELTA_SAMPLES - 1)
            + ["delta"] + ["noop"] * NOOP_SAMPLES)
    last_delta = len(plan) - 1 - plan[::-1].index("delta")
    timings: list[dict[str, Any]] = []
    slowest: list[dict[str, Any]] = []
    # ~10 rows per order (lines, events, session): 1% of all rows as new orders
    one_percent = max(1, total_rows // 1000)
    # the platform stamps a change's rows with its clock as they are written: a change
    # has left the lookback window once that long has passed since it was made
    apart = config.lookback_seconds() + 1
    changed_at = [0.0]

    def between(stats) -> None:
        timings.append(dict(stats.last))
        done = plan[stats.cycles - 2] if stats.cycles >= 2 else "full"
        if stats.cycles - 2 == last_delta:  # dbt's results of the last 1% change
            slowest[:] = _slowest_models(target_dir() / "run_results.json",
                                         SLOWEST_MODELS)
        if done == "delta":  # the next change, or the no-ops, once it left the window
            time.sleep(max(0.0, changed_at[0] + apart - time.monotonic()))
        upcoming = plan[stats.cycles - 1] if stats.cycles <= len(plan) else None
        if upcoming == "warm":  # a warm-up change: a tenth of the delta
            _change(sim_dir, max(1, one_percent // 10), seed=100 + stats.cycles)
        elif upcoming == "delta":
            _change(sim_dir, one_percent, seed=5 + stats.cycles)
            changed_at[0] = time.monotonic()

    with environment(**_env(work)):
        # the periodic data tests are kept out of cycles measured one by one: they run on
        # their own rhythm, after publication (their cost shows in the freshness runs)
        watch(interval=0, max_cycles=1 + len(plan), test_interval=float("inf"),
              on_cycle=between, base_url=url, token=TOKEN)
    kinds = ["full", *plan]
    if len(timings) != len(kinds):
        raise RuntimeError(f"watch ran {len(timings)} cycles, not {len(kinds)}: {timings}")
    run = list(zip(kinds, timings, strict=True))
    if any("publish_s" not in t for k, t in run if k != "noop"):
        raise RuntimeError(f"a measured cycle built or published nothing: {timings}")
    full = timings[0]["cycle_s"]
    deltas = [t["cycle_s"] for k, t in run if k == "delta"]
    noops = [t["cycle_s"] for k, t in run if k == "noop"]
    delta, noop = round(statistics.mean(deltas), 2), round(statistics.mean(noops), 2)
    return {"full_s": full, "delta_1pct_s": delta, "noop_s": noop,
            "delta_ratio": round(delta / full, 3), "noop_ratio": round(noop / full, 3),
            "delta_samples_s": deltas, "noop_samples_s": noops,
            "warm_cycles": WARM_CYCLES, "delta_models": slowest,
            "detail": [{"kind": k, **t} for k, t in run]}


def _cycle_lines(log: Path) -> list[dict[str, Any]]:
    """The cycles ``salesflow watch`` printed (``cycle N: {...}``), as dicts."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("cycle ") and ": {" in line:
            try:
                out.append(ast.literal_eval(line.split(": ", 1)[1]))
            except (ValueError, SyntaxError):
                continue
    return out


def freshness(work: Path, url: str, seconds: float, *, label: str, reader: bool,
              test_interval: float, test_slice_seconds: float,
              expect_test_run: bool) -> dict[str, Any]:
    """Freshness of the published marts with ``salesflow watch`` in its own process
    (see the module docstring); ``reader``: an analyst process holds the published
    file for the whole window; ``expect_test_run``: the window must contain a run of
    the periodic data tests (said on stderr when it does not; the results' check fails
    it)."""
    import duckdb

    published = work / "published" / "analytics.duckdb"
    log_path = work / f"watch-{label}.log"
    env = {**os.environ, **_env(work)}
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loaders.cli", "watch", "--base-url", url,
             "--interval", "1", "--test-interval", f"{test_interval:g}",
             "--test-slice-seconds", f"{test_slice_seconds:g}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    rss = PeakRss(proc.pid)
    analyst, analyst_rss = None, None
    latencies: list[float] = []
    newest, first_publish_s, window_start, since = None, None, None, 0.0
    # a version left by an earlier run is not this watch's publication
    seen = published.stat().st_ino if published.exists() else None
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"watch stopped during the freshness run ({label}):\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            try:
                version = os.stat(published).st_ino
            except FileNotFoundError:
                version = None
            if version is not None and version != seen:
                # a new publication: visible to analysts from now on
                now = datetime.now(timezone.utc).replace(tzinfo=None)
                with duckdb.connect(str(published), read_only=True) as con:
                    if newest is None:  # the first (full) build: the clock starts here
                        first_publish_s = round(time.monotonic() - started, 2)
                        newest = con.execute(
                            "select max(ordered_at) from marts.fct_orders").fetchone()[0]
                        window_start, since = now, time.monotonic()
                        if reader:
                            analyst = subprocess.Popen(
                                [sys.executable, "-m", "benchmarks.analyst", str(published),
                                 "--every", str(ANALYST_EVERY_S)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
                            analyst_rss = PeakRss(analyst.pid)
                        rows: list[Any] = []
                    else:
                        rows = con.execute("select ordered_at from marts.fct_orders"
                                           " where ordered_at > ?", [newest]).fetchall()
                seen = version
                if rows:
                    # steady state: sales written once watch is up (its first build
                    # published)
                    latencies.extend((now - r[0]).total_seconds() for r in rows
                                     if r[0] >= window_start)
                    newest = max(r[0] for r in rows)
            if newest is not None and time.monotonic() - since >= seconds:
                break
            time.sleep(POLL_S)
        # the cycles watch finished inside the window
        cycles_done = _cycle_lines(log_path)
    finally:
        reader_result: dict[str, Any] = {}
        if analyst is not None:
            analyst.terminate()
            out, _ = analyst.communicate(timeout=60)
            reader_result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        proc.terminate()  # the cycle in progress finishes, then watch exits
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        watch_peak = rss.stop()
    # a run of the data tests goes in slices over cycles: the cycle that completes one
    # says so
    test_runs = sum(1 for c in cycles_done[1:] if c.get("tests_done"))
    test_slices = [c["test_s"] for c in cycles_done[1:] if "test_s" in c]
    if expect_test_run and not test_runs:
        # recorded, not raised: the run's other figures stand, and the results' check
        # (benchmarks/check.py) fails a window without a test run
        print(f"no periodic data test run completed in the {seconds:g} s window ({label};"
              f" tests every {test_interval:g} s): see {log_path}", file=sys.stderr)
    if reader and analyst is None:
        raise RuntimeError("the analyst never started")
    if not latencies:
        raise RuntimeError("no sale reached the published marts while measuring freshness")
    latencies.sort()
    steady = [c for c in cycles_done[1:] if "cycle_s" in c]  # after the start-up build

    def pick(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * q))], 2)

    figures = {"p50_s": pick(0.5), "p95_s": pick(0.95), "p99_s": pick(0.99),
               "max_s": round(latencies[-1], 2), "sales": len(latencies),
               "seconds": seconds, "cycles": len(cycles_done),
               "periodic_test_runs": test_runs,
               "periodic_test_slices": len(test_slices),
               "test_slice_max_s": max(test_slices, default=None),
               **steady_cycles(steady),
               # a watch process started on a warehouse already built: to its first publication
               "restart_publish_s": first_publish_s,
               "watch_peak_rss_mb": watch_peak}
    if reader:
        figures.update({"reader_queries": reader_result.get("queries"),
                        "reader_errors": reader_result.get("errors"),
                        "reader_first_error": reader_result.get("first_error"),
                        "reader_peak_rss_mb": analyst_rss.stop() if analyst_rss else None})
    return figures


def steady_cycles(cycles: list[dict[str, Any]]) -> dict[str, Any]:
    """What watch's cycles cost once it is up: ``cycle_mean_s`` (every cycle, test
    slices and re-reads included: the cost of keeping up), ``cycle_p50_s``,
    ``cycle_max_s``, and ``cycle_parts_mean_s``, each part's seconds per cycle (load,
    build, publication, test slice; 0 in a cycle without it)."""
    if not cycles:
        return {"cycle_mean_s": None, "cycle_p50_s": None, "cycle_max_s": None,
                "cycle_parts_mean_s": None}
    spent = sorted(c["cycle_s"] for c in cycles)
    parts = {part: round(sum(c.get(f"{part}_s", 0.0) for c in cycles) / len(cycles), 3)
             for part in ("load", "build", "publish", "test")}
    return {"cycle_mean_s": round(statistics.fmean(spent), 3),
            "cycle_p50_s": spent[len(spent) // 2], "cycle_max_s": spent[-1],
            "cycle_parts_mean_s": parts}


def steady_cycle_ratio(results: dict[str, Any], reference: Path) -> dict[str, Any]:
    """A steady-state cycle at this scale against the default scale's (1M orders), from
    ``reference``, the default scale's results: ``cycle_mean_s`` of both realistic runs;
    the reference's commit is shown beside it, as both must be measured at one commit."""
    ref = json.loads(reference.read_text()) if reference.exists() else {}
    base = (ref.get("freshness") or {}).get("cycle_mean_s")
    mine = results["freshness"].get("cycle_mean_s")
    return {"steady_cycle_ratio": round(mine / base, 2) if base and mine else None,
            "steady_cycle_reference": {"file": str(reference.relative_to(ROOT)),
                                       "commit": ref.get("commit"),
                                       "cycle_mean_s": base}}


def conditions(lag: float, reader: bool, seconds: float) -> dict[str, Any]:
    return {"replica_lag_s": lag, "reader_held": reader, "seconds": seconds,
            "late_commits": True, "late_commits_s": model.REAL_WORLD_LATE_COMMITS_S,
            "clock_skew": True, "clock_skew_s": model.REAL_WORLD_CLOCK_SKEW_S,
            "orders_per_s": LIVE_RATE}


def machine() -> dict[str, Any]:
    import dbt.version
    import dlt
    import duckdb

    mem = next((int(line.split()[1]) // 1024 for line in open("/proc/meminfo")
                if line.startswith("MemTotal")), None)
    return {"cores": os.cpu_count(), "memory_mb": mem, "python": host.python_version(),
            "duckdb": duckdb.__version__, "dlt": dlt.__version__,
            "dbt": dbt.version.__version__, "platform": host.platform()}


def commit() -> str | None:
    """The commit measured, ``+`` when the work tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        return head + ("+" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def run(scale: str, out: Path) -> dict[str, Any]:

    cfg = SCALES[scale]
    work = ROOT / "data" / "bench" / scale
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sim_dir = work / "sim"
    t = time.perf_counter()
    generate(sim_dir, orders=cfg["orders"], seed=42, days=cfg["days"],
             clock_skew=model.REAL_WORLD_CLOCK_SKEW_S, feed=cfg.get("feed", store.STORED))
    generated_s = round(time.perf_counter() - t, 1)
    os.sync()  # the history's gigabytes reach the disk now, not during the backfill
    results: dict[str, Any] = {"scale": scale, "orders": cfg["orders"],
                               "generate_s": generated_s,
                               "feed": cfg.get("feed", store.STORED),
                               "simulator_bytes": _size(sim_dir)}
    server = Server(sim_dir, "--rate", "0")
    try:
        load = backfill(work, server.url)
        rj = read_json_baseline(work, sim_dir, cfg.get("read_json_rows"))
        dicts = dicts_baseline(work, server.url, cfg["baseline_rows"])
        results["load"] = {
            "rows": load["rows"], "seconds": load["seconds"], "rows_per_s": load["rows_per_s"],
            "duckdb_read_json_rows_per_s": rj["rows_per_s"],
            "ratio": round(load["rows_per_s"] / rj["rows_per_s"], 3),
            "read_json_rows": rj["rows"],
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
    for name, lag, reader in (("freshness_ideal", 0.0, False),
                              ("freshness", REPLICA_LAG_S, True)):
        seconds = cfg["freshness_seconds"] if reader else cfg["ideal_seconds"]
        live = Server(sim_dir, "--rate", str(LIVE_RATE), "--lag", f"{lag:g}",
                      *model.real_world_args())
        try:
            results[name] = freshness(work, live.url, seconds, label=name, reader=reader,
                                      test_interval=cfg["test_interval"],
                                      test_slice_seconds=cfg["test_slice_seconds"],
                                      expect_test_run=reader)
            results[name]["conditions"] = conditions(lag, reader, seconds)
        finally:
            live.stop()
    fresh = results["freshness"]
    results[f"scale_{scale}"] = {
        "orders": cfg["orders"], "days": cfg["days"], "rows": load["rows"],
        "backfill_s": load["seconds"],
        # the first build and publication of the whole history (the first full cycle)
        "first_publish_s": results["cycle"]["full_s"],
        "freshness_p95_s": fresh["p95_s"],
        "peak_rss_mb": {
            "loader": load["peak_rss_mb"],
            "watch": max(r for r in (fresh["watch_peak_rss_mb"],
                                     results["freshness_ideal"]["watch_peak_rss_mb"]) if r),
            "analyst": fresh.get("reader_peak_rss_mb"),
        },
    }
    if scale == "large":
        results[f"scale_{scale}"].update(
            steady_cycle_ratio(results, ROOT / "benchmarks" / "results.json"))
    return written(results, out)


def written(results: dict[str, Any], out: Path) -> dict[str, Any]:
    """``results`` stamped with the machine, the commit and the time, written to ``out``."""
    results["machine"] = machine()
    results["commit"] = commit()
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
        ("freshness.p99_s", results["freshness"]["p99_s"]),
        ("freshness.max_s", results["freshness"]["max_s"]),
        ("freshness.periodic_test_runs", results["freshness"]["periodic_test_runs"]),
        ("freshness.cycle_mean_s", results["freshness"]["cycle_mean_s"]),
        ("freshness.cycle_p50_s", results["freshness"]["cycle_p50_s"]),
        ("freshness.reader_queries", results["freshness"]["reader_queries"]),
        ("freshness.reader_errors", results["freshness"]["reader_errors"]),
        ("freshness_ideal.p50_s", results["freshness_ideal"]["p50_s"]),
        ("freshness_ideal.p95_s", results["freshness_ideal"]["p95_s"]),
    ]
    at_scale = results[f"scale_{results['scale']}"]
    rows += [
        ("scale.backfill_s", at_scale["backfill_s"]),
        ("scale.first_publish_s", at_scale["first_publish_s"]),
        ("scale.freshness_p95_s", at_scale["freshness_p95_s"]),
        *((("scale.steady_cycle_ratio", at_scale["steady_cycle_ratio"]),)
          if "steady_cycle_ratio" in at_scale else ()),
        *((f"scale.peak_rss_mb.{k}", v) for k, v in at_scale["peak_rss_mb"].items()),
    ]
    goals = {**GOALS, **(LARGE_GOALS if results["scale"] == "large" else {})}
    lines = ["| figure | value | goal |", "|---|---|---|"]
    for key, value in rows:
        goal = None if results["scale"] == "smoke" else goals.get(key)
        mark = ""
        if goal is not None and value is not None:
            ok = value >= goal if key == "load.ratio" else value <= goal
            mark = f"{'≥' if key == 'load.ratio' else '≤'} {goal} {'met' if ok else 'NOT met'}"
        shown = f"{value:,}" if isinstance(value, int) else value
        lines.append(f"| {key} | {shown} | {mark} |")
    c, ideal = results["freshness"]["conditions"], results["freshness_ideal"]["seconds"]
    lines.append(f"\nfreshness: {c['seconds']:g} s at {c['orders_per_s']} orders/s, replica lag"
                 f" {c['replica_lag_s']:g} s, an analyst holding the published file, late"
                 f" commits and clock skew; freshness_ideal: {ideal:g} s, no lag, no analyst")
    m = results["machine"]
    if results["scale"] == "smoke":
        lines.append("\n(smoke scale checks the harness; goals are judged at default scale)")
    if "feed" in results:
        lines.append(f"\nsimulated replica: feed {results['feed']},"
                     f" {results['simulator_bytes'] / results['orders']:,.0f} bytes per order")
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
