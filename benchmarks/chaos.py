"""salesflow's reliability harness: faults, crashes and schema changes, then an exact
reconciliation with the simulated platform.

    python -m benchmarks.chaos [--scale smoke|default] [--out FILE]

Writes ``benchmarks/reliability.json`` (``--out``), prints a table, and exits 1 when a
row was lost or duplicated, a value differs, or the pipeline did not recover.
Everything runs against ``salesflow sim serve`` on 127.0.0.1, in real processes. The
history is generated with skewed device clocks; live traffic runs without late commits
and clock skew (``simulator.model.real_world_args``) in the first half of the crashes,
with them from the second half to the end of the watch phases; unscripted drifts are in
force from phase 4 to the end. ``conditions`` in the result says which phase had what:

1. **Crashes.** With live traffic on the platform (new orders, status updates,
   deletions), ``salesflow run`` (load + dbt build) is started again and again and
   SIGKILLed at a random point: each kill aims at one phase in turn (extract, normalize,
   load, dbt build), waits for that phase's first line in the process's output (dlt's
   progress log, dbt's banner), then a random delay drawn within the phase's usual
   length. The phase it actually died in is the last one its output reached, so
   ``kills_by_phase`` counts what happened, not what was aimed at. Every
   ``complete_every`` kills one run is let finish and must succeed. The first half of
   the kills runs with on-time commits and true clocks, the second with late commits
   and skewed clocks. Then traffic stops
   and a clean final cycle runs; raw is reconciled (at smoke scale the next phase's
   first cycle is the run after the last kill, and raw is reconciled at the end).
2. **HTTP faults.** The same backfill into empty warehouses, without faults and with
   10% injected 429/5xx plus 1% connections dropped mid-body, alternating, ``rounds``
   times each; both reconcile exactly; wall times (process start to exit) and the ratio
   of their medians.
3. **Outage.** ``salesflow watch`` runs with live traffic; the API's port closes
   (``outage_until``) for ``outage_s`` seconds, spanning several cycles: exactly one
   outage alert and one recovery notice in the notifications file, the failed cycles
   counted from the recovery notice.
4. **Schema changes.** In the same watch, every evolution the simulator ships is
   scheduled effective now and applied by the serving platform while cycles go on:
   each expected change is logged in ``raw.schema_changelog`` and notified, and the
   build after it (data tests included) is green. One by one; at smoke scale those
   touching different fields land together. Then **unscripted drifts**: random
   renames, nestings and retypes of random required fields of random entities, not told
   by ``/v1/schema`` (``simulator.drift``), each while the watch runs: each must be
   notified (the field named) and turn ``salesflow status`` non-green within a few
   cycles. After the watch, the field mapping each calls for is configured and
   ``salesflow quarantine replay`` loads what was held; the drifts stay in force and
   the mapping stays configured for the rest of the run.
5. **Watch killed.** With live traffic, late commits, clock skew and the drifts in
   force (their mapping configured), ``salesflow watch`` is SIGKILLed ``watch_kills``
   times (at least 10): each kill waits for a good cycle of the (re)started watch, then
   aims in turn at a publication (dbt's summary line opens it, the cycle's line closes
   it), a load or a build of a later cycle, after a random delay within that phase's
   last length; the phase it landed in is read from the output, the publication's files
   present beside the published one are recorded. Each restarted watch must publish a
   good cycle and leave a published file that opens read-only with every mart, none
   held back, no unique key twice. Then traffic stops (the API comes back quiet on the
   same port) and the watch runs until a good cycle that started afterwards ends; it is
   stopped with SIGTERM (the cycle in progress finishes).
6. **Reconcile.** A final ``salesflow run`` that reads every lookback window again
   (``CATCH_UP``); raw against the replica
   (per-entity counts and checksums over (primary key, updated_at), nothing missing,
   stale or twice), raw's content column by column against the platform's records
   (``raw_content_match``, :func:`benchmarks.oracle.content`), the published file's
   orders, units and revenue by day × product line × region × channel against the
   platform's (``published_marts_match``, :func:`benchmarks.oracle.published_sales`,
   computed from the platform's tables, not from the models),
   order revenue per currency in ``fct_orders`` against the replica,
   no mart unique key twice, and ``mart_checksum_match``: the marts equal (rows and a
   checksum over all columns but load ids) those of a clean warehouse loaded from
   scratch from the same final platform and built with a full build. A run covering
   fewer rows than its scale's floor (``benchmarks.check.ROWS_FLOOR``) fails.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from benchmarks import oracle
from benchmarks.bench import ROOT, Server, _env, command_line, machine
from benchmarks.check import ROWS_FLOOR, WATCH_KILLS_MIN
from loaders.schema_changes.announcements import ANNOUNCED_KIND
from simulator import drift as sim_drift
from simulator import faults as sim_faults
from simulator import store
from simulator.faults import Faults
from simulator.generate import generate
from simulator.model import (
    ENTITIES,
    EVOLUTIONS,
    REAL_WORLD_CLOCK_SKEW_S,
    fields_at,
    real_world_args,
)
from simulator.platform import Platform

SCALES: dict[str, dict[str, Any]] = {
    # small enough for `make test` (about 4 minutes on 2 cores), strict all the same
    # (its watch's first cycle is the run after the last kill; the evolutions land in
    # one cycle together)
    "smoke": {"orders": 300, "days": 10, "kills": 6, "complete_every": 0, "rate": 10,
              "page_size": 500, "rounds": 1, "outage_s": 8, "seed": 42,
              "reconcile_after_crashes": False, "evolutions_together": True, "drifts": 2,
              "watch_kills": 10},
    "default": {"orders": 20_000, "days": 30, "kills": 30, "complete_every": 10, "rate": 20,
                "page_size": 5000, "rounds": 5, "outage_s": 15, "seed": 42,
                "reconcile_after_crashes": True, "evolutions_together": False, "drifts": 4,
                "watch_kills": 10},
}
# which phases run with late commits and device clock skew, and with unscripted drifts
# in force (the history is generated with skewed device clocks throughout)
CONDITIONS = {
    "http_faults": {"late_commits": False, "clock_skew": False, "drifts": False},
    "crashes_first_half": {"late_commits": False, "clock_skew": False, "drifts": False},
    "crashes_second_half": {"late_commits": True, "clock_skew": True, "drifts": False},
    "outage_and_schema_changes": {"late_commits": True, "clock_skew": True, "drifts": False},
    "unscripted_drifts": {"late_commits": True, "clock_skew": True, "drifts": True},
    "watch_kills": {"late_commits": True, "clock_skew": True, "drifts": True},
    "final": {"late_commits": False, "clock_skew": False, "drifts": True},
}
HTTP_FAULTS = Faults(error_rate=0.05, rate_limit_rate=0.05, drop_rate=0.01)
RATIO_GOAL = 2.0
PHASES = ("extract", "normalize", "load", "dbt build")
# a line of a `salesflow run --progress log` process, and the phase it starts
MARKERS = (
    ("extract", re.compile(r"-+ Extract replica")),
    ("normalize", re.compile(r"-+ Normalize replica")),
    ("load", re.compile(r"-+ Load replica")),
    ("after load", re.compile(r"^Jobs: (\d+)/\1 \(100\.0%\)")),
    ("dbt build", re.compile(r"Running with dbt=")),
)
ORDER = ("start-up", *(name for name, _ in MARKERS))
# how long after its first line a kill aimed at a phase may land (seconds)
WINDOWS = {"extract": 0.8, "normalize": 0.1, "load": 0.6, "dbt build": 10.0}
RUN_TIMEOUT = 600
# failed watch cycles take about a second each instead of minutes of backoff
QUICK_FAILURES = {"RUNTIME__REQUEST_MAX_ATTEMPTS": "2", "RUNTIME__REQUEST_BACKOFF_FACTOR": "0.1",
                  "RUNTIME__REQUEST_MAX_RETRY_DELAY": "0.5"}


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- processes -------------------------------------------------------------------------


class Proc:
    """A salesflow command in its own process group, its output collected line by line
    (and kept in ``<work>/logs``)."""

    def __init__(self, work: Path, url: str, name: str, *args: str,
                 env: dict[str, str] | None = None) -> None:
        logs = work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.file = open(logs / f"{name}.log", "w")
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loaders.cli", *args, "--base-url", url],
            cwd=ROOT, env={**os.environ, **_env(work), "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.file.write(line)
        self.file.flush()

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.proc.args[3]} did not finish within {timeout} s; see"
                               f" {self.file.name}") from None
        self.reader.join(timeout=30)
        self.file.close()
        return rc

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with suppress(ProcessLookupError):  # already gone
            os.killpg(self.proc.pid, sig)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])


def phase_of(lines: list[str], markers: tuple[tuple[str, re.Pattern[str]], ...] = MARKERS) -> str:
    """The phase a `salesflow run` (or, with ``WATCH_MARKERS``, a watch cycle) had reached:
    the last marker in its output."""
    phase = "start-up"
    for line in lines:
        for name, pattern in markers:
            if pattern.search(line):
                phase = name
    return phase


# A run that catches up before raw is reconciled reads every lookback window again, as
# any cycle does once `lookback_recheck_seconds` have passed since the window's last read:
# right after the traffic stops, a window read a moment before may hold commits that
# landed late, which a cycle within those seconds leaves for the next read
CATCH_UP = {"SOURCES__REPLICA__LOOKBACK_RECHECK_SECONDS": "0"}


def complete_run(work: Path, url: str, name: str, env: dict[str, str] | None = None) -> None:
    run = Proc(work, url, name, "run", "--progress", "log", env=env)
    rc = run.wait()
    if rc != 0:
        raise RuntimeError(f"`salesflow run` failed (exit {rc}) in {name}:\n{run.tail()}")


# -- 1. crashes --------------------------------------------------------------------------


def kill_once(work: Path, url: str, index: int, target: str, rng: random.Random
              ) -> dict[str, Any] | None:
    """Start a run, wait for ``target``'s first line, SIGKILL it a random delay later.
    Returns the kill, or None when the run finished first (it must have succeeded)."""
    run = Proc(work, url, f"kill-{index:03d}", "run", "--progress", "log")
    deadline = time.monotonic() + RUN_TIMEOUT
    while ORDER.index(phase_of(run.lines)) < ORDER.index(target):
        if run.proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    delay = rng.uniform(0, WINDOWS[target])
    time.sleep(delay)
    alive = run.proc.poll() is None
    if alive:
        run.kill()
    rc = run.wait()
    if not alive:
        if rc != 0:
            raise RuntimeError(f"a run after a kill failed (exit {rc}), it did not recover:"
                               f"\n{run.tail()}")
        return None
    return {"target": target, "phase": phase_of(run.lines), "delay_s": round(delay, 3),
            "after_s": round(time.monotonic() - run.started, 2)}


def crashes(work: Path, sim_dir: Path, cfg: dict[str, Any], rng: random.Random
            ) -> dict[str, Any]:
    # the first half of the kills with on-time commits and true clocks, the second
    # half with late commits and skewed device clocks
    server = Server(sim_dir, "--rate", str(cfg["rate"]), "--lag", "0.2")
    real_world = False
    kills: list[dict[str, Any]] = []
    completed = 0
    started = time.monotonic()
    try:
        attempt = 0
        while len(kills) < cfg["kills"]:
            if not real_world and len(kills) >= cfg["kills"] // 2:
                server.stop()
                server = Server(sim_dir, "--rate", str(cfg["rate"]), "--lag", "0.2",
                                *real_world_args())
                real_world = True
            target = PHASES[len(kills) % len(PHASES)]
            attempt += 1
            kill = kill_once(work, server.url, attempt, target, rng)
            if kill is None:
                completed += 1
                continue
            kills.append({**kill, "late_commits_and_skew": real_world})
            log(f"kill {len(kills)}/{cfg['kills']}: aimed at {target}, landed in"
                f" {kill['phase']} ({kill['after_s']} s after start)")
            if cfg["complete_every"] and len(kills) % cfg["complete_every"] == 0:
                complete_run(work, server.url, f"recover-{len(kills):03d}")
                completed += 1
    finally:
        server.stop()  # stops traffic, replica flushed
    reconciled = None
    if cfg["reconcile_after_crashes"]:
        quiet = Server(sim_dir, "--rate", "0")
        try:
            complete_run(work, quiet.url, "crashes-final", CATCH_UP)
        finally:
            quiet.stop()
        reconciled = summarize(oracle.reconcile(sim_dir, work / "warehouse.duckdb"))
    by_phase: dict[str, int] = {}
    for k in kills:
        by_phase[k["phase"]] = by_phase.get(k["phase"], 0) + 1
    return {"kills": len(kills), "kills_by_phase": by_phase, "completed_runs": completed,
            "seconds": round(time.monotonic() - started, 1), "detail": kills,
            "reconcile": reconciled}


# -- 2. HTTP faults ----------------------------------------------------------------------


def backfill(work: Path, url: str, page_size: int) -> float:
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    proc = Proc(work, url, "load", "load",
                env={"SOURCES__REPLICA__PAGE_SIZE": str(page_size)})
    rc = proc.wait()
    seconds = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"backfill into {work} failed (exit {rc}):\n{proc.tail()}")
    return seconds


def http_faults(work: Path, sim_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    server = Server(sim_dir, "--rate", "0")
    clean_s: list[float] = []
    fault_s: list[float] = []
    lost = dup = 0
    try:
        for _ in range(cfg["rounds"]):
            for faulty, times in ((False, clean_s), (True, fault_s)):
                sim_faults.save(sim_dir, HTTP_FAULTS if faulty else Faults())
                target = work / ("faulted" if faulty else "clean")
                times.append(round(backfill(target, server.url, cfg["page_size"]), 2))
                sim_faults.save(sim_dir, Faults())
                r = summarize(oracle.reconcile(sim_dir, target / "warehouse.duckdb"))
                lost += r["lost_rows"] + r["unexpected_rows"]
                dup += r["duplicate_pks"]
                log(f"backfill {'with' if faulty else 'without'} faults: {times[-1]} s,"
                    f" {r['rows_found']:,} rows, {r['lost_rows']} lost")
    finally:
        sim_faults.save(sim_dir, Faults())
        server.stop()
    ratio = round(statistics.median(fault_s) / statistics.median(clean_s), 2)
    return {"error_rate": HTTP_FAULTS.error_rate, "rate_limit_rate": HTTP_FAULTS.rate_limit_rate,
            "drop_rate": HTTP_FAULTS.drop_rate, "page_size": cfg["page_size"],
            "clean_s": clean_s, "faulted_s": fault_s,
            "clean_median_s": statistics.median(clean_s),
            "faulted_median_s": statistics.median(fault_s), "ratio": ratio,
            "ratio_goal": RATIO_GOAL, "lost_rows": lost, "duplicate_pks": dup,
            "rows": r["rows_found"]}


# -- 3 and 4. outage and schema changes, in one watch ------------------------------------


@dataclass
class Watch:
    proc: Proc
    cycles: list[dict[str, Any]] = field(default_factory=list)

    def refresh(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.proc.lines):
            m = re.match(r"cycle (\d+): (\{.*\})$", line)
            if m:
                out.append({"n": int(m.group(1)), **ast.literal_eval(m.group(2))})
        self.cycles = out
        return out

    def wait_for(self, what: str, test, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.proc.poll() is not None:
                raise RuntimeError(f"watch exited while waiting for {what}:\n{self.proc.tail()}")
            for c in self.refresh():
                if test(c):
                    return c
            time.sleep(0.1)
        raise RuntimeError(f"no watch cycle showed {what} within {timeout} s:"
                           f"\n{self.proc.tail()}")


def notifications(work: Path) -> list[dict[str, Any]]:
    path = work / "notifications.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def outage(work: Path, sim_dir: Path, watch: Watch, seconds: float) -> dict[str, Any]:
    before = len(notifications(work))
    last = watch.wait_for("a successful cycle", lambda c: "cycle_s" in c, 300)["n"]
    log(f"outage: the API closes for {seconds} s")
    sim_faults.save(sim_dir, Faults(outage_until=sim_faults.window(seconds)))
    watch.wait_for("a failed cycle", lambda c: c["n"] > last and c["outcome"] == "failed",
                   seconds + 60)
    recovered = watch.wait_for(
        "a cycle after the outage",
        lambda c: c["n"] > last and c["outcome"].startswith("success")
        and any(x["outcome"] == "failed" for x in watch.cycles if last < x["n"] < c["n"]),
        seconds + 180,
    )
    sim_faults.save(sim_dir, Faults())
    failed = sum(1 for c in watch.cycles if last < c["n"] < recovered["n"])
    notes = notifications(work)[before:]
    alerts = [n for n in notes if n["kind"] == "outage"]
    recoveries = [n for n in notes if n["kind"] == "recovery"]
    log(f"outage over: {failed} failed cycles, {len(alerts)} alert(s),"
        f" {len(recoveries)} recovery notice(s)")
    return {"seconds": seconds, "failed_cycles": failed,
            "failed_cycles_notified": recoveries[0]["details"]["failed_cycles"]
            if recoveries else None,
            "rows_caught_up": recoveries[0]["details"]["rows_caught_up"] if recoveries else None,
            "alerts": len(alerts), "recoveries": len(recoveries),
            "other_notices": sorted({n["kind"] for n in notes} - {"outage", "recovery"})}


def expected_changes(name: str) -> set[tuple[str, str, str]]:
    return {(ANNOUNCED_KIND[c.change], c.entity, c.field) for c in EVOLUTIONS[name].changes}


def applied_at(sim_dir: Path, name: str) -> str | None:
    with closing(sqlite3.connect(f"file:{sim_dir / store.PRODUCTION}?mode=ro", uri=True)) as con:
        row = con.execute("SELECT applied_at FROM evolutions WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def groups(together: bool) -> list[list[str]]:
    """The evolutions in the order they ship, one by one; with ``together``, those that
    touch different fields in the same group (one that combines a field away and another
    that brings a new value into it would hide each other if applied at once)."""
    if not together:
        return [[name] for name in EVOLUTIONS]
    out: list[list[str]] = []
    touched: set[tuple[str, str]] = set()
    for name, evo in EVOLUTIONS.items():
        fields = {(c.entity, c.field) for c in evo.changes}
        if not out or fields & touched:
            out.append([])
            touched = set()
        out[-1].append(name)
        touched |= fields
    return out


def evolutions(sim_dir: Path, watch: Watch, together: bool) -> list[dict[str, Any]]:
    """Schedule each evolution effective now (see :func:`groups`), let the serving
    platform apply it, and wait for the build that loads the new shape: a shape change
    makes watch run the data tests with that build (they gate publication)."""
    out = []
    for names in groups(together):
        last = watch.refresh()[-1]["n"]
        platform = Platform(sim_dir)
        try:
            for name in names:
                platform.schedule(name, store.utcnow())  # applied by the serving platform
        finally:
            platform.close()
        deadline = time.monotonic() + 60
        while any(applied_at(sim_dir, name) is None for name in names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the platform did not apply {names} within 60 s")
            time.sleep(0.1)
        gated = watch.wait_for(f"the tested build after {', '.join(names)}",
                               lambda c, last=last: c["n"] > last and c.get("tests"), 180)
        failed = [c["n"] for c in watch.cycles
                  if last < c["n"] <= gated["n"] and c.get("build") == "failed"]
        for name in names:
            log(f"evolution {name}: tested build in cycle {gated['n']},"
                f" {'green' if not failed else 'FAILED in cycles ' + str(failed)}")
            out.append({"evolution": name, "applied_at": applied_at(sim_dir, name),
                        "tested_build_cycle": gated["n"], "build_green": not failed,
                        "expected": sorted(expected_changes(name))})
    return out


def judge_evolutions(work: Path, found: list[dict[str, Any]]) -> None:
    """Each expected change logged in the changelog and notified (read after watch)."""
    import duckdb

    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        logged = {
            (k, e, c) for k, e, c in con.execute(
                "select change_kind, entity, column_name from raw.schema_changelog"
            ).fetchall()
        }
    notified = {
        (n["details"]["change"]["kind"], n["details"]["change"]["entity"],
         n["details"]["change"]["column"])
        for n in notifications(work)
        if n["kind"] in ("schema_change", "business_change")
    }
    for evo in found:
        expected = {tuple(x) for x in evo["expected"]}
        evo["detected"] = len(expected & logged)
        evo["notified"] = len(expected & notified)
        evo["changes"] = len(expected)
        evo["missing"] = sorted(expected - (logged & notified))


# the entities drifted (those the marts read), and the kinds of drift a mapping absorbs
DRIFTED = ("orders", "order_items", "customers", "products", "events")
ABSORBABLE = ("rename", "nest", "retype")


def random_drifts(sim_dir: Path, rng: random.Random, count: int) -> list[sim_drift.Drift]:
    """``count`` drifts, each on a different entity: a random required field (not the
    key nor the cursor) renamed, moved into an object, or (an integer) served as a
    string, without a word from ``/v1/schema``: every record in the new shape is held,
    so the mapping and a replay must bring all of them back. (A change the schema
    describes loads its new field into a column of its own; the drift matrix covers
    those.)"""
    with closing(store.connect(sim_dir / store.REPLICA, readonly=True)) as con:
        applied = store.applied_evolutions(con)
    out = []
    for i, entity in enumerate(rng.sample(DRIFTED, count)):
        key = ENTITIES[entity].primary_key
        fields = [f for f in fields_at(entity, applied)
                  if f.required and f.name not in (key, "updated_at")]
        chosen = rng.choice(fields)
        kinds = [k for k in ABSORBABLE if k != "retype" or chosen.type == "integer"]
        kind = rng.choice(kinds)
        to = {"rename": f"{chosen.name}_v{i + 2}", "nest": f"details_{i + 1}",
              "retype": "string"}[kind]
        out.append(sim_drift.Drift(
            kind, entity, chosen.name if kind != "nest" else None, to=to,
            fields=(chosen.name,) if kind == "nest" else (),
        ))
    return out


def absorbing_mapping(drifts: list[sim_drift.Drift]) -> dict[str, dict[str, Any]]:
    """The field mapping that absorbs ``drifts`` (what the notices advise)."""
    out: dict[str, dict[str, Any]] = {}
    for d in drifts:
        name = d.field or d.fields[0]
        spec: Any = {"rename": d.to, "nest": f"{d.to}.{name}",
                     "retype": {"from": name, "cast": "integer"}}[d.kind]
        out.setdefault(d.entity, {})[name] = spec
    return out


def unscripted(work: Path, sim_dir: Path, watch: Watch, rng: random.Random, count: int
               ) -> list[dict[str, Any]]:
    """Apply random drifts one by one while the watch runs; each must be notified with
    its field named and turn status non-green within a few cycles."""
    from loaders.monitoring import status

    out = []
    for d in random_drifts(sim_dir, rng, count):
        name = d.field or d.fields[0]
        seen = len(notifications(work))
        added = sim_drift.add(sim_dir, d)
        started = time.monotonic()
        notice = None
        while notice is None and time.monotonic() - started < 120:
            if watch.proc.proc.poll() is not None:
                raise RuntimeError(f"watch exited during a drift:\n{watch.proc.tail()}")
            notice = next(
                (n for n in notifications(work)[seen:] if n["kind"] == "schema_change"
                 and n["details"]["change"]["entity"] == d.entity
                 and n["details"]["change"]["column"] == name), None)
            time.sleep(0.2)
        told = time.monotonic() - started
        # the notice goes out mid-cycle; the status is written when the cycle ends
        level = status.collect(work / "dlt")["status"]
        while level == "green" and time.monotonic() - started < told + 60:
            time.sleep(0.2)
            level = status.collect(work / "dlt")["status"]
        log(f"drift {added.summary()}: {'notified' if notice else 'NOT notified'} after"
            f" {told:.1f} s, status {level} after {time.monotonic() - started:.1f} s")
        out.append({"drift": added.summary(), "entity": d.entity, "field": name,
                    "described": d.described, "notified": notice is not None,
                    "notice": notice["title"] if notice else None,
                    "seconds_to_notice": round(told, 1),
                    "seconds_to_status": round(time.monotonic() - started, 1),
                    "status": level})
    return out


def watch_phases(work: Path, sim_dir: Path, cfg: dict[str, Any], rng: random.Random
                 ) -> dict[str, Any]:
    server = Server(sim_dir, "--rate", str(cfg["rate"]), "--lag", "0.2", *real_world_args())
    proc = Proc(work, server.url, "watch", "watch", "--interval", "0.5", env=QUICK_FAILURES)
    watch = Watch(proc)
    try:
        result: dict[str, Any] = {
            "outage": outage(work, sim_dir, watch, cfg["outage_s"]),
            "schema_changes": evolutions(sim_dir, watch, cfg["evolutions_together"]),
        }
        result["drifts"] = unscripted(work, sim_dir, watch, rng, cfg["drifts"])
    finally:
        proc.kill(signal.SIGTERM)  # finishes the cycle in progress
        try:
            proc.wait(timeout=120)
        finally:
            sim_faults.save(sim_dir, Faults())
            server.stop()
    result["mapping"] = absorbing_mapping(sim_drift.load(sim_dir))
    result["replay"] = replay(work, sim_dir, result["mapping"])
    judge_evolutions(work, result["schema_changes"])
    result["watch_cycles"] = len(watch.refresh())
    result["watch_failed_builds"] = sum(1 for c in watch.cycles if c.get("build") == "failed")
    return result


def mapping_env(mapping: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {"SOURCES__REPLICA__FIELD_MAPPING": json.dumps(mapping)} if mapping else {}


def replay(work: Path, sim_dir: Path, mapping: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """With the absorbing mapping configured, load what the drifts sent to quarantine."""
    quiet = Server(sim_dir, "--rate", "0")
    try:
        proc = Proc(work, quiet.url, "replay", "quarantine", "replay",
                    env=mapping_env(mapping))
        rc = proc.wait()
    finally:
        quiet.stop()
    if rc != 0:
        raise RuntimeError(f"`salesflow quarantine replay` failed (exit {rc}):\n{proc.tail()}")
    log(f"replay with {mapping}: {proc.tail(3)}")
    return {"exit": rc, "output": proc.tail(10)}


# -- 5. watch killed ---------------------------------------------------------------------

# a line of a `salesflow watch` process, and the phase of its cycle that follows it: a
# cycle's line ends it (the next one loads), dbt's banner opens its build, dbt's summary
# closes the build and the publication follows
WATCH_MARKERS = (
    ("load", re.compile(r"^cycle \d+: ")),
    ("dbt build", re.compile(r"Running with dbt=")),
    ("publish", re.compile(r"Done\. PASS=")),
)
WATCH_TARGETS = ("publish", "load", "publish", "dbt build")


def published_state(work: Path) -> dict[str, Any]:
    """The file analysts read: opens read-only, has every mart, no mart held back, no
    unique key twice."""
    import duckdb

    path = work / "published" / "analytics.duckdb"
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            present = {r[0] for r in con.execute(
                "select table_name from duckdb_tables() where schema_name = 'marts'"
            ).fetchall()}
            [(cycle_id, held)] = con.execute(
                "select cycle_id, held_back_tables from marts._published"
            ).fetchall()
        duplicates = sum(oracle.mart_duplicates(path).values())
    except Exception as exc:  # noqa: BLE001 - an unreadable file is the finding
        return {"readable": False, "error": str(exc), "ok": False}
    missing = sorted(set(oracle.mart_unique_keys()) - present)
    return {"readable": True, "cycle_id": cycle_id, "held_back": list(held or []),
            "missing_marts": missing, "duplicates": duplicates,
            "ok": not missing and not held and not duplicates}


def kill_watch(watch: Watch, target: str, rng: random.Random) -> dict[str, Any]:
    """In a watch whose last cycle succeeded, wait for ``target``'s first line in a
    later cycle, then SIGKILL it a random delay later (within that phase's last length)."""
    start = len(watch.proc.lines)
    last = watch.refresh()[-1]
    window = {"publish": last.get("publish_s", 0.1), "dbt build": last.get("build_s", 1.0),
              "load": 0.5 + last.get("load_s", 0.5)}[target]
    pattern = dict(WATCH_MARKERS)[target]
    deadline = time.monotonic() + 300
    while not any(pattern.search(line) for line in watch.proc.lines[start:]):
        if watch.proc.proc.poll() is not None:
            raise RuntimeError(f"watch exited on its own:\n{watch.proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no watch cycle reached {target} within 300 s")
        time.sleep(0.005)
    delay = rng.uniform(0, window)
    time.sleep(delay)
    # a publication in progress writes the next version beside the current one (or
    # brings the spare up to date, with its write-ahead log)
    in_progress = [p.name for p in (watch.proc.work / "published").glob("analytics.duckdb.*")
                   if p.suffix in (".next", ".wal")]
    if watch.proc.proc.poll() is not None:
        raise RuntimeError(f"watch exited on its own:\n{watch.proc.tail()}")
    watch.proc.kill()
    watch.proc.wait()
    return {"target": target, "phase": phase_of(watch.proc.lines[start:], WATCH_MARKERS),
            "delay_s": round(delay, 3), "publication_files": sorted(in_progress)}


def watch_kills(work: Path, sim_dir: Path, cfg: dict[str, Any], rng: random.Random,
                mapping: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """SIGKILL ``salesflow watch`` again and again, with live traffic, late commits,
    clock skew and the unscripted drifts in force (their mapping configured): each
    restarted watch must publish a good cycle and leave a sound published file. Then
    traffic stops (the API comes back on the same port, quiet) and the watch runs until
    a good cycle started after that ends: the published file is then reconciled by the
    caller."""
    server = Server(sim_dir, "--rate", str(cfg["rate"]), "--lag", "0.2", *real_world_args())
    port = str(urlparse(server.url).port)
    env = {**QUICK_FAILURES, **mapping_env(mapping)}
    kills: list[dict[str, Any]] = []
    recoveries: list[dict[str, Any]] = []
    started = time.monotonic()
    proc = None
    try:
        for i in range(cfg["watch_kills"] + 1):
            proc = Proc(work, server.url, f"watch-kill-{i:02d}", "watch", "--interval", "0.5",
                        env=env)
            watch = Watch(proc)
            good = watch.wait_for(
                "a published cycle",
                lambda c: "publish_s" in c and c.get("build") != "failed", RUN_TIMEOUT)
            state = published_state(work)
            if i:
                recoveries.append({"after_kill": i, "cycle": good["n"], **state})
                log(f"watch restarted after kill {i}: cycle {good['n']} published,"
                    f" file {'sound' if state['ok'] else 'NOT sound: ' + str(state)}")
            if i == cfg["watch_kills"]:
                break
            kill = kill_watch(watch, WATCH_TARGETS[i % len(WATCH_TARGETS)], rng)
            kills.append(kill)
            log(f"watch kill {len(kills)}/{cfg['watch_kills']}: aimed at {kill['target']},"
                f" landed in {kill['phase']} {kill['publication_files'] or ''}")
        server.stop()  # commits the late transactions and replicates everything
        server = Server(sim_dir, "--rate", "0", "--port", port)
        # the cycle in progress may have started before; the one after it loads all
        last = watch.refresh()[-1]["n"]
        settled = watch.wait_for(
            "a good cycle started after traffic stopped",
            lambda c: c["n"] > last + 1 and c["outcome"].startswith("success")
            and c.get("build") != "failed", RUN_TIMEOUT)
        log(f"traffic stopped; watch cycle {settled['n']}: {settled}")
    finally:
        if proc is not None:
            proc.kill(signal.SIGTERM)
            with suppress(RuntimeError):
                proc.wait(timeout=120)
        server.stop()
    by_phase: dict[str, int] = {}
    for k in kills:
        by_phase[k["phase"]] = by_phase.get(k["phase"], 0) + 1
    return {"kills": len(kills), "kills_by_phase": by_phase,
            "kills_during_publication": sum(k["phase"] == "publish" for k in kills),
            "recovered": sum(r["ok"] for r in recoveries), "detail": kills,
            "recoveries": recoveries, "seconds": round(time.monotonic() - started, 1)}


# -- 6. reconcile ------------------------------------------------------------------------


def summarize(per_entity: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "rows_expected": sum(r["expected"] for r in per_entity.values()),
        "rows_found": sum(r["found"] for r in per_entity.values()),
        "lost_rows": sum(r["missing"] for r in per_entity.values()),
        "unexpected_rows": sum(r["unexpected"] for r in per_entity.values()),
        "duplicate_pks": sum(r["duplicate_pks"] for r in per_entity.values()),
        "checksums_match": all(
            r["checksum_expected"] == r["checksum_found"] for r in per_entity.values()
        ),
        "entities": per_entity,
    }


def final(work: Path, sim_dir: Path, mapping: dict[str, dict[str, Any]]) -> dict[str, Any]:
    quiet = Server(sim_dir, "--rate", "0")
    env = mapping_env(mapping)
    try:
        complete_run(work, quiet.url, "final", env | CATCH_UP)
        clean = work / "clean"
        shutil.rmtree(clean, ignore_errors=True)
        complete_run(clean, quiet.url, "clean-from-scratch", env)
    finally:
        quiet.stop()
    warehouse = work / "warehouse.duckdb"
    raw = summarize(oracle.reconcile(sim_dir, warehouse))
    mine, theirs = oracle.mart_fingerprints(warehouse), oracle.mart_fingerprints(
        clean / "warehouse.duckdb")
    marts = {
        name: {"rows": mine.get(name, {}).get("rows"), "rows_clean": theirs[name]["rows"],
               "match": mine.get(name) == theirs[name]}
        for name in sorted(set(mine) | set(theirs))
    }
    content = oracle.content(sim_dir, warehouse)
    published = oracle.published_sales(sim_dir, work / "published" / "analytics.duckdb")
    return {"raw": raw, "content": content,
            "content_mismatches": sum(c["mismatches"] for c in content.values()),
            "content_columns": sum(c["columns_compared"] for c in content.values()),
            "published": published,
            "revenue": oracle.revenue(sim_dir, warehouse),
            "mart_duplicates": oracle.mart_duplicates(warehouse), "marts": marts,
            "mart_checksum_match": all(m["match"] for m in marts.values())}


# -- the run -----------------------------------------------------------------------------


def problems(r: dict[str, Any]) -> list[str]:
    """Everything that makes the run a failure (empty when nothing was lost)."""
    out = []
    if r["lost_rows"] or r["unexpected_rows"]:
        out.append(f"raw: {r['lost_rows']} rows lost, {r['unexpected_rows']} unexpected")
    if r["duplicate_pks"]:
        out.append(f"{r['duplicate_pks']} duplicate primary keys (raw and marts)")
    if not r["raw_checksums_match"]:
        out.append("raw checksums differ from the replica's")
    crash = r["crashes"]["reconcile"]
    if crash and (crash["lost_rows"] or crash["unexpected_rows"] or crash["duplicate_pks"]):
        out.append("after the crashes raw did not reconcile with the replica")
    if r["http"]["lost_rows"] or r["http"]["duplicate_pks"]:
        out.append("a backfill through HTTP faults lost or duplicated rows")
    if r["rows_expected"] < ROWS_FLOOR[r["scale"]]:
        out.append(f"only {r['rows_expected']} rows expected: the run is too small to"
                   f" prove anything (at least {ROWS_FLOOR[r['scale']]} at {r['scale']} scale)")
    if not r["raw_content_match"]:
        sample = r["final"]["content"]
        bad = [x for c in sample.values() for x in c["examples"]][:3]
        out.append(f"raw content differs from the platform's in {r['content_mismatches']}"
                   f" values, e.g. {bad}")
    if not r["published_marts_match"]:
        pub = r["final"]["published"]
        out.append(f"the published file's sales differ from the platform's in"
                   f" {pub['mismatches']} of {pub['groups']} groups, e.g. {pub['examples'][:2]}")
    wk = r["watch_killed"]
    if wk["kills"] < WATCH_KILLS_MIN:
        out.append(f"watch was killed {wk['kills']} times only")
    if wk["recovered"] != wk["kills"]:
        bad = [x for x in wk["recoveries"] if not x["ok"]]
        out.append(f"after {wk['kills']} watch kills, {wk['recovered']} restarts left a sound"
                   f" published file: {bad[:2]}")
    if not r["revenue_match"]:
        out.append("fct_orders revenue differs from the replica's")
    if not r["mart_checksum_match"]:
        bad = [m for m, v in r["final"]["marts"].items() if not v["match"]]
        out.append(f"marts differ from a clean rebuild: {', '.join(bad)}")
    o = r["watch"]["outage"]
    if (o["alerts"], o["recoveries"]) != (1, 1):
        out.append(f"outage: {o['alerts']} alerts and {o['recoveries']} recovery notices"
                   " (expected one each)")
    if r["watch"]["watch_failed_builds"]:
        out.append(f"{r['watch']['watch_failed_builds']} watch builds failed")
    for d in r["watch"]["drifts"]:
        if not d["notified"] or d["status"] == "green":
            out.append(f"drift {d['drift']}: notified {d['notified']}, status {d['status']}")
    for evo in r["watch"]["schema_changes"]:
        if evo["missing"] or not evo["build_green"]:
            out.append(f"schema change {evo['evolution']}: not logged and notified"
                       f" {evo['missing']}" if evo["missing"]
                       else f"schema change {evo['evolution']}: build failed")
    return out


def run(scale: str, out: Path) -> dict[str, Any]:

    cfg = SCALES[scale]
    rng = random.Random(cfg["seed"])
    work = ROOT / "data" / "chaos" / scale
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sim_dir = work / "sim"
    started = time.monotonic()
    generate(sim_dir, orders=cfg["orders"], seed=cfg["seed"], days=cfg["days"],
             clock_skew=REAL_WORLD_CLOCK_SKEW_S)
    log(f"generated {cfg['orders']:,} orders of history; HTTP faults first")
    http = http_faults(work / "http", sim_dir, cfg)
    log(f"crashes: {cfg['kills']} kills with {cfg['rate']} orders/s of live traffic")
    crash = crashes(work, sim_dir, cfg, rng)
    log("outage and schema changes under watch")
    watched = watch_phases(work, sim_dir, cfg, rng)
    log(f"watch killed {cfg['watch_kills']} times, with the drifts in force")
    killed = watch_kills(work, sim_dir, cfg, rng, watched["mapping"])
    log("final cycle, clean rebuild, reconciliation")
    end = final(work, sim_dir, watched["mapping"])
    raw = end["raw"]
    results: dict[str, Any] = {
        "scale": scale, "orders": cfg["orders"],
        "kills": crash["kills"], "kills_by_phase": crash["kills_by_phase"],
        "http_fault_rate": round(HTTP_FAULTS.error_rate + HTTP_FAULTS.rate_limit_rate, 3),
        "http_drop_rate": HTTP_FAULTS.drop_rate,
        "http_clean_s": http["clean_median_s"], "http_faulted_s": http["faulted_median_s"],
        "http_ratio": http["ratio"],
        "outage_cycles": watched["outage"]["failed_cycles"],
        "outage_alerts": watched["outage"]["alerts"],
        "recovery_notices": watched["outage"]["recoveries"],
        "schema_changes_expected": sum(e["changes"] for e in watched["schema_changes"]),
        "schema_changes_detected": sum(e["detected"] for e in watched["schema_changes"]),
        "schema_changes_notified": sum(e["notified"] for e in watched["schema_changes"]),
        "drifts": len(watched["drifts"]),
        "drifts_notified": sum(d["notified"] for d in watched["drifts"]),
        "drifts_not_green": sum(d["status"] != "green" for d in watched["drifts"]),
        "rows_expected": raw["rows_expected"], "rows_found": raw["rows_found"],
        "lost_rows": raw["lost_rows"], "unexpected_rows": raw["unexpected_rows"],
        "duplicate_pks": raw["duplicate_pks"] + sum(end["mart_duplicates"].values()),
        "raw_checksums_match": raw["checksums_match"],
        "revenue_match": end["revenue"]["match"],
        "mart_checksum_match": end["mart_checksum_match"],
        "raw_content_match": end["content_mismatches"] == 0 and end["content_columns"] > 0,
        "content_mismatches": end["content_mismatches"],
        "content_columns": end["content_columns"],
        "published_marts_match": end["published"]["match"],
        "watch_kills": killed["kills"], "watch_kills_by_phase": killed["kills_by_phase"],
        "watch_kills_during_publication": killed["kills_during_publication"],
        "watch_recoveries": killed["recovered"],
        "rows_floor": ROWS_FLOOR[scale],
        "conditions": CONDITIONS,
        "crashes": crash, "watch_killed": killed, "http": http, "watch": watched, "final": end,
    }
    results["problems"] = problems(results)
    results["passed"] = not results["problems"]
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["machine"] = machine()
    results["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def table(r: dict[str, Any]) -> str:
    phases = ", ".join(f"{p} {n}" for p, n in sorted(r["kills_by_phase"].items()))
    schema = ", ".join(
        f"{e['evolution']} {e['detected']}/{e['changes']}"
        + ("" if e["build_green"] else " (build failed)")
        for e in r["watch"]["schema_changes"]
    )
    watch_phases_done = ", ".join(
        f"{p} {n}" for p, n in sorted(r["watch_kills_by_phase"].items()))
    rows = [
        ("kills (SIGKILL, then rerun)", f"{r['kills']} ({phases})"),
        ("HTTP faults: 429/5xx + dropped",
         f"{r['http_fault_rate']:.0%} + {r['http_drop_rate']:.0%}"),
        ("backfill clean / faulted / ratio",
         f"{r['http_clean_s']} s / {r['http_faulted_s']} s / {r['http_ratio']}"
         f" (goal ≤ {RATIO_GOAL} {'met' if r['http_ratio'] <= RATIO_GOAL else 'NOT met'})"),
        ("outage: failed cycles / alerts / recoveries",
         f"{r['outage_cycles']} / {r['outage_alerts']} / {r['recovery_notices']}"),
        ("schema changes detected and notified", f"{r['schema_changes_detected']}/"
         f"{r['schema_changes_expected']} logged, {r['schema_changes_notified']} notified"
         f" ({schema})"),
        ("unscripted drifts notified / status not green",
         f"{r['drifts_notified']}/{r['drifts']} / {r['drifts_not_green']}/{r['drifts']}"
         f" ({', '.join(d['drift'] for d in r['watch']['drifts'])}; absorbed by a"
         " mapping and a replay)"),
        ("rows expected / found", f"{r['rows_expected']:,} / {r['rows_found']:,}"),
        ("lost rows", r["lost_rows"]),
        ("duplicate primary keys (raw + marts)", r["duplicate_pks"]),
        ("raw checksums match the replica", r["raw_checksums_match"]),
        ("watch killed (SIGKILL) / during a publication / recovered",
         f"{r['watch_kills']} / {r['watch_kills_during_publication']} /"
         f" {r['watch_recoveries']} ({watch_phases_done})"),
        ("raw content matches the platform (columns, values differing)",
         f"{r['raw_content_match']} ({r['content_columns']} columns,"
         f" {r['content_mismatches']})"),
        ("published file's sales match the platform", r["published_marts_match"]),
        ("fct_orders revenue matches the replica", r["revenue_match"]),
        ("mart_checksum_match (vs clean rebuild)", r["mart_checksum_match"]),
    ]
    lines = ["| check | result |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    m = r["machine"]
    lines.append(f"\n{r['scale']} scale, {r['orders']:,} orders of history; {r['wall_s']} s;"
                 f" {m['cores']} cores; python {m['python']}, duckdb {m['duckdb']},"
                 f" dlt {m['dlt']}, dbt {m['dbt']}; {r['measured_at']}")
    lines.append("PASSED" if r["passed"] else "FAILED: " + "; ".join(r["problems"]))
    return "\n".join(lines)


main = command_line(
    __doc__, SCALES, ROOT / "benchmarks" / "reliability.json", run, table,
    passed=lambda results: results["passed"],
)


if __name__ == "__main__":
    sys.exit(main())
