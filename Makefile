# One entry point for a fresh machine: `make demo` runs the main job, `make test` the tests.
# Every install step lives here: a virtual environment in .venv, then scripts/install.sh
# (also the Dockerfile's): the CPU build of PyTorch installed explicitly first (an
# unpinned torch would pull a multi-GB CUDA build), then the project with its test tools.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
CHROMIUM ?= /usr/bin/chromium
WORDNET_DIR ?= /usr/share/wordnet
APT_LOCK_TIMEOUT ?= 600
# STRICT=1: a test that would skip for a missing chromium, WordNet or PostgreSQL fails
# instead, and so does the run if any test skipped (tests/system_deps.py). CI=true implies it.
STRICT ?= $(SELECTIVITY_STRICT)
OUT    ?=
ARGS   ?=

.PHONY: install system-packages test lint demo example bench clean chromium wordnet

$(VENV)/.installed: pyproject.toml Makefile scripts/install.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	TORCH="$(TORCH)" sh scripts/install.sh $(BIN)/python -e ".[dev]"
	touch $@

# Debian packages that some tests need, checked on every `make install` (so every `make test`)
# and installed when missing and this user may (scripts/install.sh --system waits up to
# APT_LOCK_TIMEOUT seconds for Debian's package lock). When that fails it says so and goes on:
# the tests that need the package then skip, or fail under CI=true / STRICT=1.
#   chromium: the browser tests drive it through Playwright (`playwright install` cannot
#             download here); another binary through CHROMIUM=...
#   wordnet-base: WordNet 3.0 for free-text coding (analysis/coding.py) and Table 2; another
#             copy through WORDNET_DIR=...
# PostgreSQL is not installed here: the server tests use the one at $$TEST_DATABASE_URL
# (default postgresql://postgres@127.0.0.1:5432/test).
APT_INSTALL = APT_LOCK_TIMEOUT="$(APT_LOCK_TIMEOUT)" sh scripts/install.sh --system

system-packages:
	@test -x "$(CHROMIUM)" || $(APT_INSTALL) chromium || true
	@test -f "$(WORDNET_DIR)/data.noun" || $(APT_INSTALL) wordnet-base || true

chromium:
	@$(APT_INSTALL) chromium

wordnet:
	@$(APT_INSTALL) wordnet-base

install: $(VENV)/.installed system-packages

lint: install
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile

test: lint
	SELECTIVITY_STRICT="$(STRICT)" $(BIN)/python -m pytest -q

# The demo study end to end (experiment/demo.py): the small digits network and its
# generator (trained once, cached in .cache/), activations, selectivity, the paper's
# tables and figures, AM panels for every conv5/fc6/fc8 unit, practice panels, the
# design, the SQLite store; then it serves the experiment at http://127.0.0.1:5000 and
# prints the admin password. Every stage is cached in OUT (default out/demo; out/demo-resnet
# with --network resnet). Options through ARGS:
#   make demo ARGS="--simulate 60"   simulated participants, export, Table 2
#   make demo ARGS="--port 8080"
#   make demo ARGS="--network resnet --methods ppgn,fourier,natural --simulate 60"
demo: install
	$(BIN)/python -m experiment.demo $(if $(OUT),--out $(OUT)) $(ARGS)

# The analysis alone on a generated table with known structure.
example: install
	$(BIN)/python -m analysis.example --out out/example

bench: install
	$(BIN)/python benchmarks/selectivity.py
	$(BIN)/python benchmarks/record.py
	$(BIN)/python benchmarks/record_resnet.py
	$(BIN)/python benchmarks/am_methods.py
	$(BIN)/python benchmarks/table2.py
	$(BIN)/python benchmarks/server_load.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
