# mnist-serving: every target bootstraps what it needs (.venv, pip packages, Debian packages).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3

# One environment per job (docs/environments.md), each built the first time a target needs it:
#   .venv        `make serve`: the server and the client SDK/CLI (ONNX Runtime, gRPC). No torch.
#   .venv-train  `make train-export`: adds PyTorch, torchvision and the ONNX export tooling;
#                `make test`, `make lint` (and the other developer targets) add the test and
#                lint tools to it, so a developer's machine holds one copy of torch, not two.
VENV ?= .venv
TRAIN_VENV ?= .venv-train
SERVE_PY := $(VENV)/bin/python
SERVE_STAMP := $(VENV)/.installed
PY := $(TRAIN_VENV)/bin/python
TRAIN_STAMP := $(TRAIN_VENV)/.installed-train
# The full developer environment (training + test + lint tools). Fragments in mk/ use
# $(PY) and $(VENV_STAMP) for their developer targets (benchmarks, fuzzing, soak).
VENV_STAMP := $(TRAIN_VENV)/.installed
export PATH := $(abspath $(TRAIN_VENV))/bin:$(PATH)

# Which PyTorch build .venv-train gets: auto | cpu | pypi. auto: PyPI's build (with CUDA)
# where an NVIDIA GPU is present; otherwise PyTorch's CPU-only index if it answers within
# TORCH_PROBE_TIMEOUT_S, else PyPI's build (which brings ~4 GB of CUDA libraries).
TORCH ?= auto
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PROBE_TIMEOUT_S ?= 5

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
WORKERS ?= auto
PYTEST_ARGS ?=

# Debian packages the tests use: real Fashion-MNIST files, a real Prometheus, and headless
# Chromium with its WebDriver for the drawing page's browser test (tests/e2e/browser).
DEBIAN_PACKAGES ?= dataset-fashion-mnist prometheus chromium chromium-driver

# apt-get needs root: use sudo when make runs as another user.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Helpers' fragments (deploy checks, benchmarks, ...) add targets and test steps here.
EXTRA_TEST_TARGETS :=
-include mk/*.mk

.PHONY: help venv train-venv dev-venv system-deps proto proto-check train-export reference-model \
  model serve lint test test-python test-interop clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'
	@echo
	@echo "Environments (each built the first time a target needs it; docs/environments.md):"
	@echo "  $(VENV)         serve: server + client SDK/CLI, no torch (make serve, make venv)"
	@echo "  $(TRAIN_VENV)   train: + PyTorch/ONNX export (make train-export); make test/lint add pytest, ruff, mypy"
	@echo "  $(DEPLOY_VENV)  deploy checks: checkov, hadolint, kubectl (make test-deploy)"
	@echo
	@echo "Variables: DATASET=$(DATASET) EPOCHS=$(EPOCHS) SEED=$(SEED) QUANTIZE=$(QUANTIZE) MODEL_REPOSITORY=$(MODEL_REPOSITORY) TORCH=$(TORCH)"

venv: $(SERVE_STAMP) ## Create .venv: the server and the client SDK/CLI (no torch)

train-venv: $(TRAIN_STAMP) ## Create .venv-train: + PyTorch (CPU build where no GPU) and ONNX export

dev-venv: $(VENV_STAMP) ## Add the test and lint tools to .venv-train (what make test/lint use)

$(SERVE_STAMP): pyproject.toml client/pyproject.toml
	@test -x $(SERVE_PY) || $(PYTHON) -m venv $(VENV)
	$(SERVE_PY) -m pip install --quiet --upgrade "pip>=24"
	$(SERVE_PY) -m pip install --quiet -e ./client -e .
	@touch $@

$(TRAIN_STAMP): pyproject.toml client/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(TRAIN_VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	@$(install-torch)
	$(PY) -m pip install --quiet -e ./client -e '.[train]'
	@touch $@

$(VENV_STAMP): $(TRAIN_STAMP)
	$(PY) -m pip install --quiet -e ./client -e '.[train,dev]'
	@touch $@

# Install torch and torchvision (the versions pyproject.toml's `train` extra allows) before the
# rest, so that the `.[train]` install finds them there. See TORCH above.
define install-torch
if $(PY) -m pip show --quiet torch >/dev/null 2>&1; then exit 0; fi; \
specs=$$($(PY) -c 'import re, tomllib; \
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["train"]; \
print(" ".join(d for d in extra if re.match(r"(torch|torchvision)\b", d)))'); \
choice='$(TORCH)'; \
if [ "$$choice" = auto ]; then \
  if command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia ]; then \
    echo "torch: NVIDIA GPU found: installing PyPI's build (CUDA)"; choice=pypi; \
  elif timeout $(TORCH_PROBE_TIMEOUT_S) $(PY) -c 'import sys, urllib.request; \
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=float(sys.argv[2])).close()' \
      '$(TORCH_CPU_INDEX)' '$(TORCH_PROBE_TIMEOUT_S)' >/dev/null 2>&1; then \
    choice=cpu; \
  else \
    echo "torch: no NVIDIA GPU, but $(TORCH_CPU_INDEX) did not answer within $(TORCH_PROBE_TIMEOUT_S) s:" \
      "installing PyPI's build, which brings ~4 GB of CUDA libraries this machine cannot use" \
      "(TORCH_CPU_INDEX=<url> to name a reachable CPU index)"; \
    choice=pypi; \
  fi; \
fi; \
case "$$choice" in \
  cpu) echo "torch: installing the CPU-only build from $(TORCH_CPU_INDEX) ($$specs)"; \
       $(PY) -m pip install --quiet --index-url '$(TORCH_CPU_INDEX)' $$specs ;; \
  pypi) ;; \
  *) echo "TORCH=$$choice: expected auto, cpu or pypi" >&2; exit 2 ;; \
esac
endef

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

# The report records the command that made each model (`make_command`, with every value).
TRAIN_EXPORT_ARGS = DATASET=$(DATASET) EPOCHS=$(EPOCHS) SEED=$(SEED) QUANTIZE=$(QUANTIZE) \
  MODEL_NAME=$(MODEL_NAME) MODEL_REPOSITORY=$(MODEL_REPOSITORY)$(if $(VERSION), VERSION=$(VERSION))

train-export: $(TRAIN_STAMP) ## Train the CNN and export model.onnx (DATASET, EPOCHS, SEED, QUANTIZE, VERSION)
	MNIST_SERVING_TRAIN_MAKE_COMMAND='make train-export $(strip $(TRAIN_EXPORT_ARGS))' \
	$(PY) -m mnist_serving_training --dataset '$(DATASET)' --epochs $(EPOCHS) --seed $(SEED) \
	  --output-dir $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) --quantize $(QUANTIZE) $(if $(VERSION),--version $(VERSION))

# The reference model that ships in model_repository/mnist/1 (tests/unit/training/
# test_training_reference_model.py checks it against the current export). Its state_dict
# (model_state_dict.pt) stays local: .gitignore keeps it out, the weights are in model.onnx.
REFERENCE_MODEL_ARGS := DATASET=mnist-sample EPOCHS=8 SEED=0 QUANTIZE=none VERSION=1 \
  MODEL_NAME=mnist MODEL_REPOSITORY=model_repository

reference-model: ## Regenerate the shipped model_repository/mnist/1 (seeded, offline MNIST sample)
	$(MAKE) --no-print-directory train-export $(REFERENCE_MODEL_ARGS)

model: ## Train and export mnist only if the repository holds no model at all
	@if ls $(MODEL_REPOSITORY)/*/*/model.onnx >/dev/null 2>&1; then \
	  echo "models found in $(MODEL_REPOSITORY):" $$(ls $(MODEL_REPOSITORY)/*/*/model.onnx); \
	else $(MAKE) --no-print-directory train-export MODEL_NAME=mnist; fi

serve: $(SERVE_STAMP) model ## Serve every model in model_repository on :8001 (metrics :8002); HOST, PORT, METRICS_PORT, WORKERS
	exec $(SERVE_PY) -m mnist_serving_server --model-repository $(MODEL_REPOSITORY) \
	  --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT) --workers $(WORKERS)

lint: $(VENV_STAMP) ## ruff (lint + format check), mypy, and the import layers (import-linter)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(TRAIN_VENV)/bin/lint-imports

test-python: $(VENV_STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS) tests --ignore=tests/interop

# tritonclient registers its own `inference.*` protobuf messages; ours would clash in one
# process, so the tests that use it run in a pytest process of their own.
test-interop: $(VENV_STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS) tests/interop

test: lint test-python test-interop $(EXTRA_TEST_TARGETS) ## Lint and run every test (what CI runs)

clean: ## Remove .venv, .venv-train, caches and build outputs (keeps model_repository)
	rm -rf $(VENV) $(TRAIN_VENV) build dist *.egg-info client/build client/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
