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
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

test: venv
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The main job: quantize images to 16 colors (default: the sample photos bundled with
# scikit-learn) on a local Dask cluster; PNGs, palette and Zarr pixel store under kmflow-out/.
demo: venv
	$(BIN)/kmflow quantize --k 16 --out kmflow-out --report kmflow-out/report.json

bench: venv
	$(BIN)/python benchmarks/bench_lloyd.py --output benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_quantize.py --output benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_sweep.py --output benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_metrics.py --output benchmarks/RESULTS.md
