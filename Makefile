# mnist-serving: every target bootstraps what it needs (.venv, pip packages, Debian packages).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

MODEL_REPOSITORY ?= model_repository
MODEL_NAME ?= mnist
DATASET ?= auto
EPOCHS ?= 5
SEED ?= 0
QUANTIZE ?= none
VERSION ?=
HOST ?= 0.0.0.0
PORT ?= 8001
METRICS_PORT ?= 8002
WORKERS ?= 1
PYTEST_ARGS ?=

# Debian packages the tests use: real Fashion-MNIST files and a real Prometheus.
DEBIAN_PACKAGES ?= dataset-fashion-mnist prometheus

VENV_STAMP := $(VENV)/.installed
# apt-get needs root: use sudo when make runs as another user.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Helpers' fragments (deploy checks, benchmarks, ...) add targets and test steps here.
EXTRA_TEST_TARGETS :=
-include mk/*.mk

.PHONY: help venv system-deps proto proto-check train-export model serve lint test test-python test-interop clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: DATASET=$(DATASET) EPOCHS=$(EPOCHS) SEED=$(SEED) QUANTIZE=$(QUANTIZE) MODEL_REPOSITORY=$(MODEL_REPOSITORY)"

venv: $(VENV_STAMP) ## Create .venv with the server, training, client and dev packages

$(VENV_STAMP): pyproject.toml client/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ./client -e '.[train,dev]'
	@touch $@

system-deps: ## Install the Debian packages the tests use (apt-get update first)
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

proto: $(VENV_STAMP) ## Regenerate the Python stubs from proto/ (grpcio-tools + mypy-protobuf)
	$(PY) proto/generate.py client

proto-check: $(VENV_STAMP) ## Fail if the committed stubs differ from what proto/ generates
	$(PY) -m pytest -q tests/unit/test_proto_stubs.py

train-export: $(VENV_STAMP) ## Train the CNN and export model.onnx (DATASET, EPOCHS, SEED, QUANTIZE, VERSION)
	$(PY) -m mnist_serving_training --dataset '$(DATASET)' --epochs $(EPOCHS) --seed $(SEED) \
	  --output-dir $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) --quantize $(QUANTIZE) $(if $(VERSION),--version $(VERSION))

model: $(VENV_STAMP) ## Train and export only if no model exists yet
	@if ls $(MODEL_REPOSITORY)/$(MODEL_NAME)/*/model.onnx >/dev/null 2>&1; then \
	  echo "model found under $(MODEL_REPOSITORY)/$(MODEL_NAME)"; \
	else $(MAKE) --no-print-directory train-export; fi

serve: model ## Serve the model on $(HOST):$(PORT) (metrics on $(METRICS_PORT)), training it first if needed
	exec $(PY) -m mnist_serving_server --model-repository $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) \
	  --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT) --workers $(WORKERS)

lint: $(VENV_STAMP) ## ruff (lint + format check) and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test-python: $(VENV_STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS) tests --ignore=tests/interop

# tritonclient registers its own `inference.*` protobuf messages; ours would clash in one
# process, so the tests that use it run in a pytest process of their own.
test-interop: $(VENV_STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS) tests/interop

test: lint test-python test-interop $(EXTRA_TEST_TARGETS) ## Lint and run every test (what CI runs)

clean: ## Remove the venv, caches and build outputs (keeps model_repository)
	rm -rf $(VENV) build dist *.egg-info client/build client/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
