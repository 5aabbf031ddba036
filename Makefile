# iclft — `make demo` and `make test` are all the set-up a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.iclft-installed

.PHONY: install demo test test-fast lint format bench clean browser docs

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: on a machine with a local CPU wheel this picks it; elsewhere pip picks
# the build for the platform (CUDA on Linux with a GPU). Then the package with its dev extras.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# configs/demo.yaml on the embedded smollm2-135m on CPU: every stage at small scale, then the
# report (runs/demo/report.html).
demo: install
	$(PY) -m iclft demo -o runs/demo

# Debian's chromium for the report's browser test; non-fatal: without it that test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  echo "chromium not installed: the browser test will be skipped"

# The documentation (mkdocs.yml, docs/) into site/; strict: a broken link or anchor fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

test: install browser docs
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration"

lint: install
	$(VENV)/bin/lint-imports
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: install
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

bench: install
	$(PY) benchmarks/icl_throughput.py

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info .pytest_cache .ruff_cache
