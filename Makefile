# modelpilot: operator-project style targets. Everything runs from a fresh machine: the virtualenv,
# the control-plane binaries (built from source into ~/.cache/modelpilot, reused when warm), services.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
STATE  ?= .dev
PYTEST_ARGS ?=

.PHONY: help venv binaries dev-up dev-down dev-status install run demo test lint unit bench clean

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed ## create .venv with the operator and the dev/test dependencies

binaries: ## build (or reuse) etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok, helm
	bash hack/build-binaries.sh

dev-up: venv ## start the local control plane + MLflow; writes $(STATE)/kubeconfig and $(STATE)/env
	$(PY) -m hack.devenv up --state $(STATE)

dev-down: ## stop the local control plane, MLflow and a `make run` operator
	@test -x $(PY) && $(PY) -m hack.devenv down --state $(STATE) || true

dev-status: ## is the local environment running?
	$(PY) -m hack.devenv status --state $(STATE)

install: ## apply the CRDs to the current kubectl context
	kubectl apply --server-side -f crds/

run: venv ## run the operator locally against $(STATE) (foreground; Ctrl-C to stop)
	source $(STATE)/env && $(PY) -m modelpilot.cli --all-namespaces

demo: venv ## the whole story: control plane + registry + sample model + operator + ModelDeployment
	$(PY) -m hack.demo --state $(STATE)

lint: venv ## ruff + mypy (strict)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: venv ## fast tests only (no cluster, no registry)
	$(VENV)/bin/pytest tests/unit -q

test: venv binaries lint ## the whole test suite, against a real control plane and a real MLflow
	$(VENV)/bin/pytest -v --durations=15 $(PYTEST_ARGS)

clean: dev-down ## remove local state (keeps the binary cache in ~/.cache/modelpilot)
	rm -rf $(STATE) .pytest_cache .mypy_cache .ruff_cache
