# Quick start: `make run` (set-up from nothing, then encode with the bundled default model) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch that this project is developed and tested with. The package itself only asks for
# torch>=2.8 (Ascend's torch_npu pairs with specific torch releases); pinning here keeps set-up off the multi-GB
# CUDA build (pip takes the local CPU wheel, whose version 2.13.0+cpu sorts above PyPI's 2.13.0).
TORCH_PIN ?= torch==2.13.0
# Exact versions of everything the tests and the package run with (made by `make lock`; docs/testing.md): a clone
# tests what its commit was tested with. Used as constraints, so the package's own ranges stay broad.
LOCK   := requirements/lock.txt
STAMP  := $(VENV)/.installed
# `make test-latest`: the same suite against the newest releases, in a venv of its own.
LATEST := .venv-latest

.PHONY: setup run test test-latest lock lint typecheck bench report clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_PIN)" -c $(LOCK)
	$(PIP) install --quiet -e ".[all,test]" -c $(LOCK)
	touch $(STAMP)

run: setup
	$(PY) inference.py --text "Hello world" --device auto
	$(VENV)/bin/minilm-npu encode --text "The cat sits on the mat." --text "A cat is sitting on a rug." --text "Stock markets fell sharply today." --similarity

# Two pytest-xdist workers: a third of the suite's wall time is spent waiting on subprocesses (Ray, moto, serve,
# the CLI), which a second worker fills. The tests marked `isa` also rerun under every older CPU class this CPU
# can reach (tests/integration/test_isa_matrix.py).
test: setup lint typecheck
	$(PY) -m pytest -q -n 2

# The suite against the newest release of every dependency (torch stays pinned: the CPU build), in $(LATEST).
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet "$(TORCH_PIN)"
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[all,test]" "$(TORCH_PIN)"
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q -n 2

# Refresh $(LOCK) to the newest releases (needs PyPI; uv is installed into .venv for it), for every Python from
# 3.10 on (markers where versions differ); then `make test`. docs/testing.md says more.
CUDA_ONLY := $(shell grep -v '^\#' requirements/cuda-only.txt)
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra all --extra test --universal --python-version 3.10 \
		--no-python-downloads --constraint requirements/torch.txt $(addprefix --no-emit-package ,$(CUDA_ONLY)) \
		--no-header --output-file $(LOCK)

# ruff's lint and format check over everything that is Python (settings in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks inference.py
	$(VENV)/bin/ruff format --check src tests benchmarks inference.py

# mypy over the modules listed under [tool.mypy] in pyproject.toml (the contracts and the engine's interfaces).
typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/bench_engine.py

report: setup
	$(VENV)/bin/minilm-npu report --device auto --out reports/latest

clean:
	rm -rf $(VENV) $(LATEST) build src/*.egg-info .pytest_cache
