# One entry point for a fresh machine: `make demo` runs the main job, `make test` the tests.
# Every install step lives here: a virtual environment in .venv, the CPU build of
# PyTorch installed explicitly first (an unpinned torch would pull a multi-GB CUDA
# build), then the project with its test tools.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
OUT    ?= out/demo

.PHONY: install test lint demo bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python -m analysis.example --out $(OUT)

bench: install
	$(BIN)/python benchmarks/selectivity.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
