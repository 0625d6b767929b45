# defectfm: `make demo` (the main job, on generated data) and `make test` work on a fresh machine:
# each creates .venv and installs the project into it when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
DEMO_DATA ?= data/demo

.PHONY: install install-bench demo demo-data test test-slow benchmark lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

install: $(STAMP)

$(VENV)/.installed-bench: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	@touch $@

install-bench: $(VENV)/.installed-bench

demo-data: install
	$(PY) -m common.data.demo --out $(DEMO_DATA)

demo: demo-data
	$(PY) -m common.demo --data $(DEMO_DATA)

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

benchmark: install-bench
	$(PY) -m benchmarks

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs data/demo .pytest_cache
