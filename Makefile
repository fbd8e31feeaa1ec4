# Quick start: `make run` (set-up from nothing, then encode with the bundled default model) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch that this project is developed and tested with. The package itself only asks for
# torch>=2.8 (Ascend's torch_npu pairs with specific torch releases); pinning here keeps set-up off the multi-GB
# CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint typecheck bench report clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_PIN)"
	$(PIP) install --quiet -e ".[all,test]"
	touch $(STAMP)

run: setup
	$(PY) inference.py --text "Hello world" --device auto
	$(VENV)/bin/minilm-npu encode --text "The cat sits on the mat." --text "A cat is sitting on a rug." --text "Stock markets fell sharply today." --similarity

# Two pytest-xdist workers: a third of the suite's wall time is spent waiting on subprocesses (Ray, moto, serve,
# the CLI), which a second worker fills (5 min 37 s serial -> under 3 min on 2 cores, 2026-11-27).
test: setup lint typecheck
	$(PY) -m pytest -q -n 2

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
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
