# One entry point for a fresh machine: `make demo` runs the main job, `make test` the tests.
# Every install step lives here: a virtual environment in .venv, the CPU build of
# PyTorch installed explicitly first (an unpinned torch would pull a multi-GB CUDA
# build), then the project with its test tools.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
CHROMIUM ?= /usr/bin/chromium
OUT    ?= out/demo

.PHONY: install test lint demo example bench clean chromium wordnet

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
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

test: lint
	$(BIN)/python -m pytest -q

# The demo: the small digits network (trained here once, cached in .cache/), its
# activations over the digits, every unit's selectivity, the paper's tables and figures.
demo: install $(OUT)/tables/tables.md $(OUT)/figures/figA4_synthetic.png
	@echo "demo done: tables in $(OUT)/tables/tables.md, figures in $(OUT)/figures/"

$(OUT)/digits.h5: | install
	$(BIN)/python -m generator.record --network demo --images digits --out $@

$(OUT)/selectivity.csv: $(OUT)/digits.h5
	$(BIN)/python -m analysis.selectivity $< --out $@

$(OUT)/tables/tables.md: $(OUT)/selectivity.csv
	$(BIN)/python -m analysis.tables $< --out $(OUT)/tables --class-names $(OUT)/digits.h5

$(OUT)/figures/figA4_synthetic.png: $(OUT)/selectivity.csv
	$(BIN)/python -m analysis.figures distributions $< --out $(OUT)/figures
	$(BIN)/python -m analysis.figures ccmas2 $< --out $(OUT)/figures
	$(BIN)/python -m analysis.figures jitter $(OUT)/digits.h5 --layer fc6 --unit 0 --out $(OUT)/figures/jitter_fc6_0
	$(BIN)/python -m analysis.figures classes $(OUT)/digits.h5 --layer fc6 --unit 0 --out $(OUT)/figures/classes_fc6_0
	$(BIN)/python -m analysis.figures activation-dist $(OUT)/digits.h5 --layer fc6 --unit 0 --out $(OUT)/figures/activations_fc6_0
	$(BIN)/python -m analysis.figures a4 --out $(OUT)/figures

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
