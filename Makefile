# Everything a fresh clone needs: `make demo` and `make test` build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv lint typecheck test pytest demo clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check calsched tests migrations
	$(BIN)/ruff format --check calsched tests migrations

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term --cov-fail-under=$(COV_FLOOR) $(PYTEST_ARGS)

COV_FLOOR ?= 80

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/calsched demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
