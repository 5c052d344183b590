# modelpilot: operator-project style targets. Everything runs from a fresh machine: the virtualenv,
# the control-plane binaries (built from source into ~/.cache/modelpilot, reused when warm), services.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
STATE  ?= .dev
PYTEST_ARGS ?=

.PHONY: help crd venv binaries system-packages images dev-up dev-down dev-status install run demo test lint unit bench bench-operator image image-gpu kind-demo clean

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml serving-image/pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./serving-image -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed ## create .venv with the operator and the dev/test dependencies

binaries: ## build (or reuse) etcd, kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy, kubectl, kwok, helm, prometheus, prometheus-adapter, metrics-server
	bash hack/build-binaries.sh

dev-up: venv system-packages ## start the local control plane, its real node and MLflow; writes $(STATE)/kubeconfig and $(STATE)/env
	$(PY) -m hack.devenv up --state $(STATE)

dev-down: ## stop the local control plane, MLflow and a `make run` operator
	@test -x $(PY) && $(PY) -m hack.devenv down --state $(STATE) || true

dev-status: ## is the local environment running?
	$(PY) -m hack.devenv status --state $(STATE)

crd: venv ## regenerate the CRD's Kubernetes-typed schemas (hack/crd_schemas.py), copy it (crds/, the one source) into the chart
	$(PY) -m hack.crd_schemas
	cp crds/modeldeployments.modelpilot.dev.yaml charts/modelpilot/files/modeldeployments.modelpilot.dev.yaml

install: ## apply the CRDs to the current kubectl context
	kubectl apply --server-side -f crds/

run: venv ## run the operator locally against $(STATE) (foreground; Ctrl-C to stop)
	source $(STATE)/env && $(PY) -m modelpilot.cli --all-namespaces

demo: venv system-packages ## the whole story: control plane + real node + registry + model + operator + a prediction through the Service
	$(PY) -m hack.demo --state $(STATE)

lint: venv ## ruff + mypy (strict)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: venv ## fast tests only (no cluster, no registry)
	$(VENV)/bin/pytest tests/unit -q

system-packages: ## Debian packages the tests run for real (containerd, runc, CNI, buildah, ... for the real node)
	bash hack/system-packages.sh --node

images: venv system-packages ## build (or reuse) the real node's pause, scoring-server and operator images, without Docker
	$(PY) -m hack.images operator

test: venv binaries system-packages images lint ## the whole test suite, against a real control plane and a real MLflow
	$(VENV)/bin/pytest -v --durations=15 $(PYTEST_ARGS)

MLSERVER_VENV := .bench/mlserver-venv
bench: venv ## modelpilot-serve vs `mlflow models serve` vs MLServer, side by side (prints one table)
	@command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	@command -v nginx >/dev/null || command -v /usr/sbin/nginx >/dev/null || apt-get install -y -q nginx-light
	@test -x $(MLSERVER_VENV)/bin/mlserver || (python3 -m venv $(MLSERVER_VENV) && \
	  $(MLSERVER_VENV)/bin/pip install -q "mlserver==1.7.1" "mlserver-mlflow==1.7.1" \
	  "scikit-learn==$$($(PY) -c 'import sklearn; print(sklearn.__version__)')" \
	  "skops==$$($(PY) -c 'import skops; print(skops.__version__)')")
	$(PY) bench/bench.py

bench-operator: venv binaries ## the operator with 1,000 ModelDeployments on kwok nodes (SIZES=1000,5000 for more), then its own ceiling against an in-memory API
	$(PY) bench/operator_bench.py --sizes $(or $(SIZES),1000)
	$(PY) bench/reconcile_ceiling.py

image: ## build the CPU scoring-server image with docker (where Docker exists)
	docker build -f serving-image/Dockerfile -t modelpilot/scoring-server:0.1.0 .

image-gpu: ## build the GPU scoring-server image with docker
	docker build -f serving-image/Dockerfile --build-arg VARIANT=gpu \
	  --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 -t modelpilot/scoring-server:0.1.0-gpu .

kind-demo: venv ## with Docker: kind cluster, images, chart, MLflow, a model, a prediction (tests/kind)
	$(VENV)/bin/pytest tests/kind -v -rs

clean: dev-down ## remove local state (keeps the binary cache in ~/.cache/modelpilot)
	rm -rf $(STATE) .pytest_cache .mypy_cache .ruff_cache
