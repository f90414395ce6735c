# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CERTS  := certs-dev
TS_DIR := tests/e2e/ts
TS_STAMP := $(TS_DIR)/node_modules/.installed
LOCK   := constraints.txt

.PHONY: run test lint typecheck unit e2e protos bench clean venv certs ts-sdk lock browser

# Installs take exact versions from the lock (what CI tested); `make lock` updates it.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade -c $(LOCK) pip
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[test,worker]'
	touch $(STAMP)

## make lock: re-pin constraints.txt after editing dependencies in pyproject.toml (~20 s)
lock:
	$(PYTHON) tools/lock.py

venv: $(STAMP)

# The TypeScript SDK e2e test's packages, exactly as locked. Node and npm: the machine's, or
# Debian's when node is missing. --ignore-scripts: nothing is built or downloaded at install.
$(TS_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	@if ! command -v node >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "node is missing: install Node.js >= 20.3 and npm (as root, make does it)" >&2; exit 1; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	fi
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing: install npm for $$(node --version)" >&2; exit 1; }
	cd $(TS_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

ts-sdk: $(TS_STAMP)

# The Web UI test's browser: Debian's Chromium, installed when neither build is there (root).
# Playwright drives it as is; it never downloads a browser of its own.
browser:
	@command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "Chromium is missing: apt-get install chromium-headless-shell (as root, make does it)" >&2; exit 1; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium-headless-shell fonts-dejavu-core; }

certs: $(STAMP)
	$(BIN)/temporal-auth-proxy certs-dev --out $(CERTS)

## make run: dev PKI + keys, a Temporal dev server on 127.0.0.1:17233 with its Web UI on
## http://localhost:8233 (codec: the proxy's), the proxy on :7233, one encrypted sample workflow
run: certs
	TAP_ROOT=$(CURDIR) ./deploy/dev/run.sh

## make test: lint, type-check, then the whole suite (end-to-end tests included)
test: $(STAMP) $(TS_STAMP) browser lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check proxy tests $(wildcard bench)
	$(BIN)/ruff format --check proxy tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -m "not e2e"

e2e: $(STAMP) $(TS_STAMP) browser
	$(BIN)/pytest -q -m e2e

## make protos: regenerate proxy/_pb from protos/ (a test fails when they are stale)
protos: $(STAMP)
	$(BIN)/python protos/generate.py

## make bench: direct vs this proxy (full, noop, 2 workers) vs nginx vs a bare grpc.aio relay; this
## revision vs the round's start (bench/run.py --baseline); then the Cedar authorizer's CPU per
## call (bench/cedar_authz.py)
bench: $(STAMP)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[bench]'
	$(BIN)/python bench/run.py
	@# Stage 2, in process (about a minute): CPU per call of authorizer: cedar, 20 policies.
	mkdir -p bench/results && $(BIN)/python bench/cedar_authz.py --json bench/results/cedar_authz.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
