# kmflow: one command per job. `make test` is what CI runs (.ci/run).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstalled only when pyproject.toml changes (the source itself is an editable install).
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test,bench]"
	touch $@

test: venv
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The main job, small: a quick Lloyd benchmark against scikit-learn and dask-ml.
demo: venv
	$(BIN)/python benchmarks/bench_lloyd.py --small

bench: venv
	$(BIN)/python benchmarks/bench_lloyd.py
