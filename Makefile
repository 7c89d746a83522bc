# kmflow: one command per job. `make test` is what CI runs (.ci/run).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstalled only when pyproject.toml changes (the source itself is an editable install).
STAMP := $(VENV)/.installed

.PHONY: venv chromium test demo bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

# Headless Chromium for the browser tests (tests/reports/test_report_browser.py): Debian's
# package, installed when missing (CI runs as root); without root the target fails, it never
# lets the browser tests be skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y --no-install-recommends chromium; \
	  else \
	    echo "chromium is missing and this is not root: sudo apt-get install -y chromium" >&2; \
	    exit 1; \
	  fi; }

test: venv chromium
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
