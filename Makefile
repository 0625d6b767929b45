# defectfm: `make demo` (the main job, on generated data) and `make test` work on a fresh machine:
# each creates .venv and installs the project into it when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
DEMO_DATA ?= data/demo

.PHONY: install install-bench demo demo-data demo-diffusion test test-slow test-browser benchmark gpu-wheels gpu-check lint clean

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

# Stage 1 you can see (about 15 min on 2 idle cores): generated corpus + captions, small VAE, small U-Net with the
# implicit captioner, then a grid of samples per object x defect prompt (runs/demo_diffusion/grid.png).
demo-diffusion: install
	$(PY) -m diffdefect.stage1.demo --corpus data/demo_stage1 --out runs/demo_diffusion

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

# The review page in headless Chromium: installs Debian's chromium + chromium-driver when missing (apt, as root
# or with sudo) and selenium; without them (no network, no apt) the tests skip and say why.
$(VENV)/.installed-browser: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,browser]" && touch $@ \
	  || echo "test-browser: could not install selenium (no network?): the browser tests will skip"

test-browser: install $(VENV)/.installed-browser
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver) \
	  || echo "test-browser: could not install chromium (no network or no apt): the browser tests will skip"; }
	$(PY) -m pytest -m browser

benchmark: install-bench
	$(PY) -m benchmarks

# Wheels of what a bare GPU machine lacks (cp312 manylinux) + the project's own, into .whl/ (ignored by git);
# checks the set resolves, fits the 64 MiB a device call carries, and imports on a simulated bare machine.
gpu-wheels: install
	$(PY) -m benchmarks.gpu.wheels --check-import

# The GPU check (one process, under 8 minutes on one H100/H200); `--dry` runs it on the CPU.
gpu-check: install
	$(PY) -m benchmarks.gpu

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs data/demo data/demo_stage1 .pytest_cache
