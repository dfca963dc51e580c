# Every target creates .venv and installs the project into it if needed: a fresh clone needs
# nothing else. Python >= 3.11 must be on PATH as python3 (or set PYTHON=...).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint fmt clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: start Envoy, the authz sidecar, the dev issuer and demo upstreams in the foreground
run: $(STAMP)
	$(BIN)/python -m authz.devstack

## test: the whole suite (unit + end-to-end through real Envoy and real Redis)
test: $(STAMP)
	$(BIN)/python -m pytest

## bench: throughput and latency through Envoy: alone, with a do-nothing ext_authz, with authz
bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
