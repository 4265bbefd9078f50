"""``salesflow demo``: the whole flow on this machine, from scratch, ending by itself.

1. generate a small platform history (``data/demo/sim``);
2. serve its replica API on a free local port, with live traffic;
3. backfill the warehouse (``data/warehouse.duckdb``, dataset ``raw``);
4. let traffic run a few seconds and load again, incrementally;
5. build and test the dbt project, and generate its docs site;
6. stop the simulator and say where everything is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loaders import config, warehouse
from loaders.runners import pipeline
from loaders.runners.publish import publish
from simulator import model
from simulator.cli import DEFAULT_TOKEN
from simulator.generate import default_as_of, generate
from simulator.server import read_server_file

DEMO_DIR = Path("data/demo")


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def demo(orders: int = 3000, live_seconds: float = 5.0) -> int:
    sim_dir = DEMO_DIR / "sim"
    token = os.environ.get("SALESFLOW_SIM_TOKEN", DEFAULT_TOKEN)
    _step(f"generating a platform with {orders:,} orders in {sim_dir}")
    shutil.rmtree(sim_dir, ignore_errors=True)
    for stale in (*warehouse.local_paths(), config.pipelines_dir()):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    summary = generate(sim_dir, orders=orders, seed=42, as_of=default_as_of(), days=90,
                       clock_skew=model.REAL_WORLD_CLOCK_SKEW_S)
    for table, n in summary.rows.items():
        print(f"  {table:<12}{n:>10,}")

    _step("serving the replica API with live traffic (20 orders/s, 0.5 s replica lag,"
          f" commits up to {model.REAL_WORLD_LATE_COMMITS_S:g} s late, device clocks up to"
          f" {model.REAL_WORLD_CLOCK_SKEW_S:g} s ahead)")
    log = open(DEMO_DIR / "simulator.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loaders.cli", "sim", "serve", "--dir", str(sim_dir),
         "--token", token, "--rate", "20", "--lag", "0.5", "--duration", "600",
         *model.real_world_args()],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    docs: Path | None = None
    try:
        url = read_server_file(sim_dir, timeout=60)["url"]
        print(f"  {url}  (log: {DEMO_DIR / 'simulator.log'})")
        os.environ["SOURCES__REPLICA__BASE_URL"] = url
        os.environ["SOURCES__REPLICA__TOKEN"] = token

        _step("backfill: salesflow load")
        first = pipeline.load()
        print(pipeline.describe_load(first))

        _step(f"{live_seconds:.0f} s of live traffic, then an incremental load")
        time.sleep(live_seconds)
        second = pipeline.load()
        print(pipeline.describe_load(second))

        if any(Path("models").rglob("*.sql")):
            _step("dbt build")
            if not pipeline.dbt_build():
                print("dbt build failed: see the output above", file=sys.stderr)
                return 1
            if warehouse.is_duckdb():
                _step("publish the marts for analysts")
                published = publish(warehouse.duckdb_path())
                print(f"  {len(published.tables)} marts in {published.path}"
                      f" ({published.seconds:.2f} s)")
            _step("docs site: dbt docs generate --static")
            docs = pipeline.dbt_docs()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    _step("done")
    wh = warehouse.describe()
    if docs is not None:
        print(f"  docs site:      open {docs} in a browser, or `make docs-serve`")
    print(f"  warehouse:      {wh}  (schemas raw, staging, marts)")
    print(f"  dlt pipeline:   dlt pipeline --pipelines-dir {config.pipelines_dir()} "
          f"salesflow_replica info")
    if warehouse.is_duckdb():
        print("  query it:       .venv/bin/salesflow query"
              " analyses/top_product_lines_last_7_days.sql   (the published marts)")
    elif warehouse.target_type() == "spark":
        print("  query it:       .venv/bin/dbt show --inline 'select * from"
              " marts.product_sales_daily'   (Spark SQL, between runs: README, Spark)")
    print("  or with dbt:    .venv/bin/dbt show --select product_sales_daily")
    if warehouse.is_duckdb():
        print("  metrics:        SALESFLOW_TARGET=published .venv/bin/mf query --metrics"
              " revenue,orders --group-by metric_time__day   (the published marts)")
        print("  live board:     make board, then open http://127.0.0.1:8501/live"
              "   (run `salesflow watch` beside it for live figures)")
    else:
        print("  metrics:        .venv/bin/mf query --metrics revenue,orders"
              " --group-by metric_time__day")
    print("  schema changes: .venv/bin/salesflow schema   (and `salesflow schema impact`)")
    print(f"  notifications:  {config.pipelines_dir() / 'notifications.jsonl'}")
    return 0

