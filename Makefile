# salesflow: `make demo` and `make test` set everything up themselves (a .venv here).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint pytest venv clean docs docs-serve chromium postgres bench bench-large \
	bench-smoke chaos \
	chaos-smoke contract board java bench-lanes

# (Re)create the virtualenv when the dependency pins change; a no-op otherwise.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/salesflow demo

# sqlfluff's dbt templater compiles against a warehouse: give it a scratch one, so linting
# never contends with a running pipeline for data/warehouse.duckdb
lint: $(STAMP)
	$(BIN)/ruff check loaders simulator tests benchmarks
	$(BIN)/mypy
	mkdir -p target
	SALESFLOW_DUCKDB_PATH=target/sqlfluff.duckdb $(BIN)/sqlfluff lint models tests/data

# tests/test_postgres.py starts its own throw-away PostgreSQL server
# (tests/support/postgres.py): the server binaries must be there, and missing ones fail the
# run instead of skipping it; tests/test_spark.py needs a Java runtime for Spark
pytest: $(STAMP) chromium postgres java
	SALESFLOW_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest

test: lint pytest bench-smoke chaos-smoke

# The benchmark (benchmarks/bench.py): 1M orders through the whole pipeline, with
# benchmarks/results.json and a table as the result; about 30 minutes on 2 cores.
# `bench-large` runs it at 10M orders over a year of history (hours, and disk).
# `bench-smoke` runs the same harness at a tiny scale so it cannot rot (keys, not goals).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench --scale default

bench-large: $(STAMP)
	$(BIN)/python -m benchmarks.bench --scale large --out benchmarks/results-large.json

# The Spark lane beside DuckDB (benchmarks/lanes.py): backfill and build times of the same
# platform on each, then of a 1% change; LANES_SCALE=demo (3,000 orders, a few minutes)
# or default (1M orders, as `make bench`). Writes benchmarks/lanes.json.
LANES_SCALE ?= default
bench-lanes: $(STAMP) java
	$(BIN)/python -m benchmarks.lanes --scale $(LANES_SCALE) \
	  --out benchmarks/lanes$(if $(filter default,$(LANES_SCALE)),,-$(LANES_SCALE)).json

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.bench --scale smoke --out target/bench-smoke.json
	$(BIN)/python -m benchmarks.check target/bench-smoke.json

# The reliability harness (benchmarks/chaos.py): crashes (SIGKILL) in every phase, HTTP
# faults, an outage, every schema evolution and unscripted drifts against the simulator,
# `watch` killed mid-publication, then an exact reconciliation of raw's content and of
# the published file; writes benchmarks/reliability.json and a table, exits 1 when
# anything was lost, duplicated or differs. About 10 minutes on 2 cores. `chaos-smoke`,
# part of `make test`, runs it at a tiny scale (a few minutes), just as strict.
chaos: $(STAMP)
	$(BIN)/python -m benchmarks.chaos --scale default
	$(BIN)/python -m benchmarks.check --reliability benchmarks/reliability.json

chaos-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.chaos --scale smoke --out target/chaos-smoke.json
	$(BIN)/python -m benchmarks.check --reliability target/chaos-smoke.json

# The dbt docs site as one self-contained page: target/static_index.html (plus the usual
# target/index.html, manifest.json and catalog.json). Compiles against the warehouse in
# SALESFLOW_DUCKDB_PATH (default data/warehouse.duckdb); it works on an empty warehouse
# too, but column types and row counts come from the catalog, so run `make demo` first
# for a site with real column stats.
docs: $(STAMP)
	$(BIN)/dbt docs generate --static --project-dir . --profiles-dir .
	@echo "docs: open target/static_index.html, or run 'make docs-serve'"

# The data contract with the platform team, from the models' column lineage: rewrites
# contracts/replica_api.contract.{json,yaml} and its docs page (commit the result).
contract: $(STAMP)
	$(BIN)/salesflow contract export

# Serve target/ on 127.0.0.1 only (http://127.0.0.1:$(DOCS_PORT)/static_index.html).
DOCS_PORT ?= 8080
docs-serve: $(STAMP)
	@test -f target/static_index.html || $(MAKE) --no-print-directory docs
	$(BIN)/python -m http.server $(DOCS_PORT) --bind 127.0.0.1 --directory target

# The live board (loaders/board/, Streamlit) on the published marts, on 127.0.0.1 only:
# http://127.0.0.1:$(BOARD_PORT)/live, /funnel and /retention. Run `make demo` first, and
# `salesflow watch` beside it for figures that move.
BOARD_PORT ?= 8501
board: $(STAMP)
	$(BIN)/salesflow board --port $(BOARD_PORT)

# Debian's chromium, for tests/test_docs_site.py and tests/test_board.py (headless);
# installed only when missing.
SUDO := $(shell test "$$(id -u)" -eq 0 || echo sudo)
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "installing chromium (apt-get)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    chromium >/dev/null; }

# Debian's PostgreSQL server binaries (initdb, pg_ctl), for tests/test_postgres.py;
# installed only when none are found. No cluster is created or started: the tests run
# their own server on 127.0.0.1 with a temporary data directory.
postgres:
	@command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  echo "installing postgresql (apt-get)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    postgresql-common >/dev/null && \
	  $(SUDO) sed -i 's/^#\?\s*create_main_cluster.*/create_main_cluster = false/' \
	    /etc/postgresql-common/createcluster.conf && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    postgresql >/dev/null; }

# A Java 17 runtime for Spark (the spark target runs PySpark in local mode): Debian's
# OpenJDK, installed only when no `java` is found.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "installing openjdk-17-jre-headless (apt-get)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    openjdk-17-jre-headless >/dev/null; }

clean:
	rm -rf data target logs .pytest_cache .ruff_cache .hypothesis
