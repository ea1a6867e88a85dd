# Routine tasks. `make run` and `make test` each do their own set-up on a fresh machine.
PYTHON ?= python3.11
SHELL  := /bin/bash
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help install run test test-fast lint fmt kafka-up kafka-down bench-ingest bench-pipeline bench-faust \
	bench-console bench-generator bench bench-hostile soak fuzz clean

help:
	@echo "make run           install, then run the pipeline on the embedded default"
	@echo "make test          install, provision Kafka, run every test"
	@echo "make lint          ruff (lint + format check) and mypy"
	@echo "make fmt           apply ruff's formatting and fixes"
	@echo "make kafka-up      start a local single-node Kafka (KRaft) on 127.0.0.1:\$${KAFKA_PORT:-9092}"
	@echo "make kafka-down    stop it"
	@echo "make bench-ingest  measure the receiver: exports/s, snapshots/s, latency, memory"
	@echo "make bench-pipeline  measure detectors + store: snapshots/s, latency to ClickHouse, state size"
	@echo "make bench-faust     one Faust worker draining a backlog: snapshots/s, CPU per snapshot"
	@echo "make bench-console   time the console's page queries for a 100,000-endpoint tenant"
	@echo "make bench         the standard load tests (10,000 endpoints embedded and on Kafka, a rotation storm)"
	@echo "make bench-generator measure the load test's generator: exports/s on one core, HTTP and gRPC"
	@echo "make bench-hostile  driftline run under attack: bombs, half-sent bodies, 3x overload, stale bursts"
	@echo "make soak          steady mixed load for SOAK_SECONDS (default 120): RSS, open files, lag"
	@echo "make fuzz          the fuzzers with a long budget (make test runs them briefly)"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	@command -v java >/dev/null || echo "note: no java on PATH; the local Kafka broker needs a JDK 17"
	@test -d $(VENV) || { echo "creating the virtual environment $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing Driftline and its ~85 dependencies into $(VENV) (1.2 GB: under a minute on a"
	@echo "fast network, a few minutes on a slow one; a progress line at least every 15 s):"
	@$(PYTHON) scripts/install_progress.py $(BIN)/pip install --upgrade pip
	@$(PYTHON) scripts/install_progress.py $(BIN)/pip install -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: install
	@echo "starting \`driftline run\` (Ctrl-C stops it)"
	@$(BIN)/driftline run

# The local Kafka broker the tests start outlives pytest on purpose (the next run reuses it);
# `make test` stops it on the way out, pass or fail, so nothing it started keeps running.
test: install
	@echo "running every test (~700; 8 min here on 2 busy cores). The first Kafka test starts a local"
	@echo "broker (seconds; the first time on a machine Maven also downloads its jars, about a minute)."
	@trap '$(BIN)/driftline kafka down --kafka-data .cache/kafka-test >/dev/null 2>&1 || true' EXIT; \
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not kafka and not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy schemas bus ingest processors actions store loadtest driftline tests scripts

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

kafka-up: install
	$(BIN)/driftline kafka up

kafka-down: install
	$(BIN)/driftline kafka down

bench-ingest: install
	$(BIN)/python -m tests.load.bench_ingest

bench-pipeline: install
	$(BIN)/python -m tests.load.bench_pipeline

bench-faust: install
	$(BIN)/python -m tests.load.bench_pipeline --only faust-drain $(BENCH_ARGS)

bench-console: install
	$(BIN)/python -m tests.load.bench_console

bench: install
	$(BIN)/python -m tests.load.bench

bench-generator: install
	$(BIN)/python -m tests.load.bench_generator

bench-hostile: install
	$(BIN)/python -m tests.load.bench_hostile

SOAK_SECONDS ?= 120
soak: install
	$(BIN)/python -m tests.load.soak --seconds $(SOAK_SECONDS)

fuzz: install
	DRIFTLINE_FUZZ=long $(BIN)/python -m pytest -q tests/fuzz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
