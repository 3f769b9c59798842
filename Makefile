# Everything a fresh clone needs: `make demo` and `make test` build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: all venv lint typecheck test pytest demo bench crash-test clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The benchmarks' own extra (eventsourcing, matplotlib, pyinstrument), on top of dev.
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check calsched tests migrations benchmarks
	$(BIN)/ruff format --check calsched tests migrations benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# The benchmark harness has tests of its own, so the suite runs with the bench extra.
pytest: $(BENCH_STAMP)
	$(BIN)/pytest --cov --cov-report=term --cov-fail-under=$(COV_FLOOR) $(PYTEST_ARGS)

COV_FLOOR ?= 80

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/calsched demo

# Quick mode by default (seconds; CI runs it and asserts nothing about time);
# `make bench ARGS=--full` for the sizes issue 7 names, ARGS="--only a,e" for some suites.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

# The kill -9 harness (issue 10; docs/reliability.md "Kill -9"): COUNT kill points and
# REPLAYS kills during replay, over RIGS daemons side by side, with one summary line.
# `make test` runs a CI-sized run of it through tests/reliability/test_crash.py.
SEED ?= 1
COUNT ?= 200
REPLAYS ?= 100
RIGS ?= 4
crash-test: $(STAMP)
	$(BIN)/python -m tests.reliability.driver --seed $(SEED) --count $(COUNT) --replays $(REPLAYS) --rigs $(RIGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
