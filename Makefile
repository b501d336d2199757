# One entry point for a fresh machine: `make demo` runs the main job, `make test` the tests.
# Every install step lives here: a virtual environment in .venv, then scripts/install.sh
# (also the Dockerfile's): the CPU build of PyTorch installed explicitly first (an
# unpinned torch would pull a multi-GB CUDA build), then the project with its test tools.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
CHROMIUM ?= /usr/bin/chromium
OUT    ?= out/demo
ARGS   ?=

.PHONY: install test lint demo example bench clean chromium wordnet

$(VENV)/.installed: pyproject.toml Makefile scripts/install.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	TORCH="$(TORCH)" sh scripts/install.sh $(BIN)/python -e ".[dev]"
	@test -x $(CHROMIUM) || $(MAKE) --no-print-directory chromium
	@test -f /usr/share/wordnet/data.noun || $(MAKE) --no-print-directory wordnet
	touch $@

# The browser test drives Debian's chromium through Playwright (`playwright install` cannot
# download here). Installed when missing and this user may; otherwise that test skips.
chromium:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium: the browser test will skip"; \
	else echo "chromium is missing (apt-get install chromium): the browser test will skip"; fi

# Free-text coding (analysis/coding.py) reads WordNet 3.0 from Debian's wordnet-base (or
# $WORDNET_DIR). Installed when missing and this user may; otherwise the coding tests skip.
wordnet:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null) \
		|| echo "could not install wordnet-base: the coding tests will skip"; \
	else echo "WordNet is missing (apt-get install wordnet-base): the coding tests will skip"; fi

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile

test: lint
	$(BIN)/python -m pytest -q

# The demo study end to end (experiment/demo.py): the small digits network and its
# generator (trained once, cached in .cache/), activations, selectivity, the paper's
# tables and figures, AM panels for every conv5/fc6/fc8 unit, practice panels, the
# design, the SQLite store; then it serves the experiment at http://127.0.0.1:5000 and
# prints the admin password. Every stage is cached in $(OUT). Options through ARGS:
#   make demo ARGS="--simulate 60"   simulated participants, export, Table 2
#   make demo ARGS="--port 8080"
demo: install
	$(BIN)/python -m experiment.demo --out $(OUT) $(ARGS)

# The analysis alone on a generated table with known structure.
example: install
	$(BIN)/python -m analysis.example --out out/example

bench: install
	$(BIN)/python benchmarks/selectivity.py
	$(BIN)/python benchmarks/record.py
	$(BIN)/python benchmarks/table2.py
	$(BIN)/python benchmarks/server_load.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
