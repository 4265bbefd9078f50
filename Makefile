# salesflow: `make demo` and `make test` set everything up themselves (a .venv here).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint pytest venv clean

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
	$(BIN)/ruff check loaders simulator tests
	mkdir -p target
	SALESFLOW_DUCKDB_PATH=target/sqlfluff.duckdb $(BIN)/sqlfluff lint models tests/data

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint pytest

clean:
	rm -rf data target logs .pytest_cache .ruff_cache .hypothesis
