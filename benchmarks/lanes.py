"""The Spark lane beside DuckDB: backfill and build times of the same data on each.

    python -m benchmarks.lanes [--scale smoke|demo|default] [--out FILE]

Writes ``benchmarks/lanes.json`` (``--out``) and prints a table. One platform is
generated (the demo's size, or the benchmark's default scale) and served with no live
traffic; then, for each lane in turn, each in an empty warehouse of its own:

* ``backfill_s``: ``salesflow load`` in its own process, from start to exit (as
  :func:`benchmarks.bench.backfill`), into DuckDB (``dev``) or onto the lake
  (``spark``: dlt's filesystem destination, parquet); ``rows``: raw's rows afterwards,
  read as a merge leaves them.
* ``build_s``: ``dbt build`` of every model with its data tests (no unit tests) in its
  own process, as salesflow runs it (:func:`loaders.runners.pipeline.dbt_build`); on
  Spark a local session (``local[2]``): the JVM's start is included, as each command
  pays it.
* ``change_load_s`` / ``change_build_s``: after 1% of the orders are added on the
  platform (with the updates it makes meanwhile), the incremental load and the build
  again, timed the same.

The lanes run one after the other on the same machine; the ratio spark / dev of each
figure is the comparison.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import (
    PII_KEY,
    ROOT,
    Server,
    _change,
    _env,
    backfill,
    command_line,
    written,
)
from loaders import lake, warehouse
from loaders.warehouse import environment
from simulator import model, store
from simulator.generate import generate

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"orders": 400, "days": 10},
    "demo": {"orders": 3_000, "days": 90},  # `make demo`'s platform
    "default": {"orders": 1_000_000, "days": 90},  # `make bench`'s
}
LANES = ("dev", "spark")


def lane_env(work: Path, lane: str) -> dict[str, str]:
    """The settings of a lane's warehouse under ``work``."""
    env = {**_env(work), "SALESFLOW_TARGET": lane, "SALESFLOW_PII_KEY": PII_KEY,
           "DBT_TARGET_PATH": str(work / "target"), "DBT_LOG_PATH": str(work / "logs")}
    if lane == "spark":
        env[lake.BUCKET_URL_ENV] = str(work / "lake")
        env[warehouse.SPARK_DIR_ENV] = str(work / "spark")
    return env


def build(work: Path, lane: str) -> float:
    """``dbt build`` (models, seeds, snapshots, data tests) in a process of its own."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys; from loaders.runners import pipeline;"
         " sys.exit(0 if pipeline.dbt_build() else 1)"],
        cwd=ROOT, env={**os.environ, **lane_env(work, lane)}, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"dbt build on {lane} failed:\n{done.stdout[-4000:]}"
                           f"\n{done.stderr[-4000:]}")
    return round(seconds, 2)


def run(scale: str, out: Path) -> dict[str, Any]:
    cfg = SCALES[scale]
    root = ROOT / "data" / "lanes" / scale
    shutil.rmtree(root, ignore_errors=True)
    sim_dir = root / "sim"
    generate(sim_dir, orders=cfg["orders"], seed=42, days=cfg["days"],
             clock_skew=model.REAL_WORLD_CLOCK_SKEW_S, feed=store.STORED)
    os.sync()
    results: dict[str, Any] = {"scale": scale, "orders": cfg["orders"], "days": cfg["days"]}
    server = Server(sim_dir, "--rate", "0")
    try:
        for lane in LANES:
            work = root / lane
            work.mkdir(parents=True)
            with environment(**lane_env(work, lane)):
                load = backfill(work, server.url, lane_env(work, lane))
            results[lane] = {"rows": load["rows"], "backfill_s": load["seconds"],
                             "backfill_peak_rss_mb": load["peak_rss_mb"],
                             "build_s": build(work, lane)}
    finally:
        server.stop()
    # the same change for both lanes: made once, then each loads and builds it
    _change(sim_dir, max(cfg["orders"] // 100, 10), seed=7)
    server = Server(sim_dir, "--rate", "0")
    try:
        for lane in LANES:
            work = root / lane
            with environment(**lane_env(work, lane)):
                load = backfill(work, server.url, lane_env(work, lane))
            results[lane].update(change_load_s=load["seconds"], rows_after=load["rows"],
                                 change_build_s=build(work, lane))
    finally:
        server.stop()
    if results["dev"]["rows_after"] != results["spark"]["rows_after"]:
        raise RuntimeError(f"the lanes hold different rows: {results}")
    results["ratio"] = {
        k: round(results["spark"][k] / results["dev"][k], 2)
        for k in ("backfill_s", "build_s", "change_load_s", "change_build_s")
    }
    return written(results, out)


def table(results: dict[str, Any]) -> str:
    lines = [f"{results['orders']:,} orders over {results['days']} days;"
             f" raw rows: {results['dev']['rows']:,} (after the change:"
             f" {results['dev']['rows_after']:,})",
             f"{'':<16}{'DuckDB':>10}{'Spark':>10}{'ratio':>8}"]
    for key, label in (("backfill_s", "backfill s"), ("build_s", "build s"),
                       ("change_load_s", "1% load s"), ("change_build_s", "1% build s")):
        lines.append(f"{label:<16}{results['dev'][key]:>10}{results['spark'][key]:>10}"
                     f"{results['ratio'][key]:>8}")
    return "\n".join(lines)


main = command_line(__doc__, SCALES, ROOT / "benchmarks" / "lanes.json", run, table)


if __name__ == "__main__":
    sys.exit(main())
