# Every target creates .venv and installs the project into it if needed: a fresh clone needs
# nothing else. Python >= 3.11 must be on PATH as python3 (or set PYTHON=...).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-tools bench lint fmt clean venv image lock

venv: $(STAMP)

# Dependencies come pinned from requirements.lock (the image installs from it too). xds-protos
# ships an old copy of opentelemetry's protos in the same files as opentelemetry-proto, and
# whichever pip writes last wins: opentelemetry-proto must (the OTLP exporter needs its
# InstrumentationScope; the Envoy protos only use what both have), so it is written again last.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps "$$(grep '^opentelemetry-proto==' requirements.lock)"
	@touch $(STAMP)

## lock: re-resolve every dependency (all extras) from pyproject.toml into requirements.lock
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet '.[dev]'
	{ sed -n '1,2p' requirements.lock; .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^authz'; } \
	  > requirements.lock.new && mv requirements.lock.new requirements.lock
	rm -rf .lock-venv build

## run: start Envoy, the authz sidecar, the dev issuer and demo upstreams in the foreground
run: $(STAMP)
	$(BIN)/python -m authz.dev.stack

## test: the whole suite (unit + end-to-end through real Envoy and real Redis)
test: $(STAMP) test-tools
	$(BIN)/python -m pytest

# promtool (Debian's prometheus package) for the alert tests. Installed when missing and this
# runs as root with apt-get; otherwise those two tests are skipped with a message saying so.
test-tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make test: installing promtool (Debian's prometheus package) for the alert tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      prometheus) >/dev/null 2>&1 || echo "make test: could not install promtool; the alert tests will be skipped"; \
	  else echo "make test: promtool not found (apt-get install prometheus); the alert tests will be skipped"; fi; }
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make test: installing wrk for the bench smoke tests"; \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk || { apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }) >/dev/null 2>&1 \
	      || echo "make test: could not install wrk; the bench smoke tests will be skipped"; \
	  else echo "make test: wrk not found (apt-get install wrk); the bench smoke tests will be skipped"; fi; }

## bench: throughput, latency and CPU per request through Envoy (Check alone, and the whole path
## with ext_proc and an upstream), instructions per request under callgrind. wrk and valgrind are
## installed when missing and this runs as root with apt-get (else: wrk is required, and the
## instructions column is skipped with a message). BENCH_GROUP=check|path|all, BENCH_SCENARIOS=a,b,
## BENCH_ROUNDS, BENCH_SECONDS, BENCH_INSTRUCTIONS=0 (python -m bench --help)
bench: $(STAMP)
	$(BIN)/python -m bench

## lint: ruff on everything, mypy --strict on authz/ and bench/ (settings in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .lock-venv .pytest_cache .ruff_cache .mypy_cache *.egg-info

## image: build the container image (needs docker or podman with a running engine);
## push: push it. Name it for your registry: make image push IMAGE=registry.example.com/authz:0.1.0
IMAGE ?= authz:0.1.0
.PHONY: push
push:
	@engine=$$(command -v docker || command -v podman); $$engine push $(IMAGE)
image:
	@engine=$$(command -v docker || command -v podman); \
	if [ -z "$$engine" ] || ! $$engine info >/dev/null 2>&1; then \
	  echo "make image: no container engine is running here (docker/podman); the Dockerfile is validated by make test" >&2; exit 1; fi; \
	$$engine build -t $(IMAGE) .
