# kaudit: `make demo` runs the whole pipeline on the sample audit logs; `make test` runs the suite.
# Everything is installed into .venv and state lives under var/ (both ignored by git).

PYTHON3 ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
KAUDIT := $(VENV)/bin/kaudit
export KAUDIT_VAR ?= $(CURDIR)/var
export PYTHON := $(CURDIR)/$(PY)

.PHONY: help install up down demo demo-live demo-stop k8s-build k8s-up k8s-down test test-unit lint bench bench-bridge bench-worker bench-sink bench-query bench-web bench-e2e bench-clusters bench-normalize bench-policy clean alertmanager

help:
	@echo "make demo    start Kafka, bridge, worker and sink; replay the sample audit logs; show results"
	@echo "make demo-live   the same fed by a real local kube-apiserver (built once, 8-10 min); a scripted story, then yours"
	@echo "make k8s-build/k8s-up/k8s-down   build, start, stop the local control plane alone (infra/control-plane/)"
	@echo "make test    install everything into .venv, start what the tests need, run the suite"
	@echo "make up/down start/stop the local Kafka broker (infra/kafka/kafka.sh)"
	@echo "make bench   print throughput/latency numbers (bridge, worker, sink, normalize)"
	@echo "make lint    ruff"
	@echo "make alertmanager  build Prometheus Alertmanager from its Go module (notify tests; cached in ~/.cache/kaudit)"

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON3) >/dev/null || { echo "kaudit: Python 3.11 is required ($(PYTHON3) not found)"; exit 2; }
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	@touch $@

# The compiled hot path (native/, Rust + PyO3): optional; without cargo the worker uses pure Python (same output).
$(VENV)/.native: $(VENV)/.installed native/Cargo.toml native/pyproject.toml $(wildcard native/src/*.rs)
	@if command -v cargo >/dev/null; then \
		echo "kaudit: building the compiled hot path (native/, about a minute the first time)"; \
		$(VENV)/bin/pip install -q ./native || { echo "kaudit: native build failed; see above"; exit 2; }; \
	else \
		echo "kaudit: cargo not found: skipping native/ (the worker runs pure Python, ~2x slower; install Rust for speed)"; \
	fi
	@touch $@

install: $(VENV)/.installed $(VENV)/.native

up: install
	bash infra/kafka/kafka.sh up

down:
	bash infra/kafka/kafka.sh down

demo: install
	bash infra/demo.sh

demo-live: install
	bash infra/control-plane/build.sh
	bash infra/demo.sh live

demo-stop:
	bash infra/demo.sh stop

k8s-build:
	bash infra/control-plane/build.sh

k8s-up: k8s-build
	bash infra/control-plane/control-plane.sh up

k8s-down:
	bash infra/control-plane/control-plane.sh down

test: install
	bash infra/test-deps.sh
	bash infra/control-plane/build.sh
	$(VENV)/bin/ruff check pipeline tests
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-unit: install
	$(VENV)/bin/pytest -q -m "not kafka" -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check pipeline tests
	$(VENV)/bin/ruff format --check pipeline tests || true

bench: install bench-normalize bench-bridge bench-worker bench-sink bench-merge bench-query bench-web bench-e2e bench-clusters

bench-normalize: install
	$(PY) -m pipeline.bench.normalize

bench-bridge: install
	$(PY) -m pipeline.bench.bridge

bench-worker: up
	$(PY) -m pipeline.bench.worker

bench-sink: up
	$(PY) -m pipeline.bench.sink

bench-merge: install
	$(PY) -m pipeline.bench.merge

bench-query: install
	$(PY) -m pipeline.bench.query

bench-web: install
	$(PY) -m pipeline.bench.web

bench-e2e: install
	$(PY) -m pipeline.bench.e2e

bench-clusters: install  # 1,000 clusters posting at once: exactness per cluster, metrics budget, spread, RSS
	$(PY) -m pipeline.bench.clusters $(ARGS)

bench-policy: up k8s-build  # volume helper: policy suggest on a real API server, estimate vs measured
	$(PY) -m pipeline.bench.policy

# Prometheus Alertmanager for kaudit notify's tests (Go module build, cached outside the tree)
alertmanager:
	bash infra/alertmanager/build.sh

clean:
	-bash infra/kafka/kafka.sh down
	rm -rf var
