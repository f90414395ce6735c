# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CERTS  := certs-dev
LOCK   := constraints.txt

.PHONY: run test lint typecheck unit e2e protos bench clean venv certs lock

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

certs: $(STAMP)
	$(BIN)/temporal-auth-proxy certs-dev --out $(CERTS)

## make run: dev PKI + JWT key, a Temporal dev server on 127.0.0.1:17233, the proxy on :7233
run: certs
	TAP_ROOT=$(CURDIR) ./deploy/dev/run.sh

## make test: lint, type-check, then the whole suite (end-to-end tests included)
test: $(STAMP) lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check proxy tests $(wildcard bench)
	$(BIN)/ruff format --check proxy tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -m "not e2e"

e2e: $(STAMP)
	$(BIN)/pytest -q -m e2e

## make protos: regenerate proxy/_pb from protos/ (a test fails when they are stale)
protos: $(STAMP)
	$(BIN)/python protos/generate.py

## make bench: direct vs this proxy (full, noop, 2 workers) vs nginx vs a bare grpc.aio relay
bench: $(STAMP)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
