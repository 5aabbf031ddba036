# iclft — `make demo` and `make test` are all the set-up a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.iclft-installed

.PHONY: install demo test test-fast lint format bench clean browser

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

# Until `iclft demo` (the full pipeline) lands: a small ICL sweep on the embedded default model.
demo: install
	$(PY) -m iclft data show --task expression --variant misleading -n 1
	$(PY) -m iclft eval --model smollm2-135m --task expression,boolean,parity \
		--variant clean,misleading --shots 0,1,4,8 -n 12 --seed 0 -o runs/demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration"

lint: install
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: install
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

bench: install
	$(PY) benchmarks/icl_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache .ruff_cache
