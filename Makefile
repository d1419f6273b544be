# Two commands for a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
NODE_STAMP := tests/node/node_modules/.installed
BROWSER_STAMP := tests/browser/node_modules/.installed
CHROMIUM ?= /usr/bin/chromium

.PHONY: serve test install install-test node browser bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(STAMP)
install-test: $(TEST_STAMP)

$(NODE_STAMP): tests/node/package.json
	cd tests/node && npm install --no-audit --no-fund --silent
	touch $@

node: $(NODE_STAMP)

# The web player's browser test (tests/browser/): Debian's chromium, driven by playwright-core.
# No browser download: playwright-core only talks to the installed chromium. Bounded in time.
$(CHROMIUM):
	timeout 600 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium'

$(BROWSER_STAMP): tests/browser/package.json | $(CHROMIUM)
	cd tests/browser && timeout 300 npm install --no-audit --no-fund --silent
	touch $@

browser: $(BROWSER_STAMP)

serve: $(STAMP)
	$(BIN)/syncopate serve --data-dir ./var

test: $(TEST_STAMP) $(NODE_STAMP) $(BROWSER_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m simulations.bench_runtime

clean:
	rm -rf $(VENV) var .pytest_cache
