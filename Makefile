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

# Every environment installs from its lock in requirements/ (exact versions, every file's
# hash; docs/environments.md): `make lock` remakes them from pyproject.toml. pip installs a
# lock as it is (--no-deps: nothing is resolved anew), then our two packages, editable, built
# by the lock's setuptools (--no-build-isolation: no unpinned build environment is fetched).
LOCK_DIR := requirements
LOCK_PY := $(PYTHON) $(LOCK_DIR)/lock.py
SERVE_LOCK := $(LOCK_DIR)/serve.txt
TRAIN_LOCK := $(LOCK_DIR)/train.txt
DEV_LOCK := $(LOCK_DIR)/dev.txt
LOCK_TOOLS_LOCK := $(LOCK_DIR)/lock-tools.txt
LOCK_VENV ?= .venv-lock
PIP_INSTALL_LOCK := -m pip install --quiet --require-hashes --no-deps -r
PIP_INSTALL_OURS := -m pip install --quiet --no-deps --no-build-isolation -e ./client -e
PROJECT_FILES := pyproject.toml client/pyproject.toml

# Which PyTorch build .venv-train gets: auto | cpu | pypi. auto: PyPI's build (with CUDA)
# where an NVIDIA GPU is present; otherwise PyTorch's CPU-only index if it answers within
# TORCH_PROBE_TIMEOUT_S, else PyPI's build (which brings ~4 GB of CUDA libraries). Either
# way the versions are the lock's; the choice is kept in $(TORCH_CHOICE).
TORCH ?= auto
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PROBE_TIMEOUT_S ?= 5
TORCH_CHOICE := $(TRAIN_VENV)/.torch

# Which ONNX Runtime build `make serve` runs: auto | cpu | gpu. auto: onnxruntime-gpu (CUDA,
# requirements/serve-gpu.txt) where an NVIDIA GPU is present (the same test as TORCH=auto's),
# else onnxruntime (CPU, requirements/serve.txt). Each build has its own environment
# ($(VENV), $(GPU_VENV)), so ORT= switches between them without reinstalling.
ORT ?= auto
ORT_CHOICES := auto cpu gpu
ifneq ($(words $(ORT))$(filter $(ORT_CHOICES),$(ORT)),1$(strip $(ORT)))
$(error ORT=$(ORT): expected one of $(ORT_CHOICES))
endif
GPU_VENV ?= .venv-gpu
GPU_PY := $(GPU_VENV)/bin/python
GPU_STAMP := $(GPU_VENV)/.installed
SERVE_GPU_LOCK := $(LOCK_DIR)/serve-gpu.txt
NVIDIA_GPU := $(shell { command -v nvidia-smi || test -e /proc/driver/nvidia; } >/dev/null 2>&1 && echo yes)
ORT_BUILD := $(if $(filter auto,$(ORT)),$(if $(NVIDIA_GPU),gpu,cpu),$(ORT))
SERVE_ENV_PY := $(if $(filter gpu,$(ORT_BUILD)),$(GPU_PY),$(SERVE_PY))
SERVE_ENV_STAMP := $(if $(filter gpu,$(ORT_BUILD)),$(GPU_STAMP),$(SERVE_STAMP))

MODEL_REPOSITORY ?= model_repository
MODEL_NAME ?= mnist
DATASET ?= auto
EPOCHS ?= auto
SEED ?= 0
QUANTIZE ?= none
VERSION ?=
HOST ?= 0.0.0.0
PORT ?= 8001
HTTP_PORT ?= 8000
METRICS_PORT ?= 8002
WORKERS ?= auto
PYTEST_ARGS ?=

# Debian packages: every one `make` installs is named in requirements/debian.txt with its
# group; system-deps installs DEBIAN_PACKAGES (the tests' group; mk/bench.mk adds its own).
debian-packages = $(shell awk '!/^#/ && $$2 == "$(1)" {print $$1}' $(LOCK_DIR)/debian.txt)
DEBIAN_PACKAGES ?= $(call debian-packages,test)

# apt-get needs root: use sudo when make runs as another user.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Helpers' fragments (deploy checks, benchmarks, ...) add targets and test steps here.
EXTRA_TEST_TARGETS :=
-include mk/*.mk

.PHONY: help venv gpu-venv ort-choice test-gpu-build train-venv dev-venv lock lock-check system-deps proto proto-check train-export reference-model \
  model serve lint test test-python test-interop docs docs-check clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'
	@echo
	@echo "Environments (each built the first time a target needs it; docs/environments.md):"
	@echo "  $(VENV)         serve: server + client SDK/CLI, no torch (make serve, make venv)"
	@echo "  $(TRAIN_VENV)   train: + PyTorch/ONNX export (make train-export); make test/lint add pytest, ruff, mypy"
	@echo "  $(DEPLOY_VENV)  deploy checks: checkov, hadolint, kubectl (make test-deploy)"
	@echo
	@echo "  $(GPU_VENV)     serve on a GPU: .venv with onnxruntime-gpu + CUDA/cuDNN wheels (make serve where an NVIDIA GPU is, or ORT=gpu)"
	@echo
	@echo "Variables: DATASET=$(DATASET) EPOCHS=$(EPOCHS) SEED=$(SEED) QUANTIZE=$(QUANTIZE) VERSION=$(VERSION) MODEL_NAME=$(MODEL_NAME) MODEL_REPOSITORY=$(MODEL_REPOSITORY) TORCH=$(TORCH) ORT=$(ORT)"
	@echo "  make serve: HOST=$(HOST) HTTP_PORT=$(HTTP_PORT) PORT=$(PORT) METRICS_PORT=$(METRICS_PORT) WORKERS=$(WORKERS); PYTEST_ARGS=... for the test targets"

venv: $(SERVE_STAMP) ## Create .venv: the server and the client SDK/CLI (no torch)

gpu-venv: $(GPU_STAMP) ## Create .venv-gpu: .venv with onnxruntime-gpu (CUDA 13, cuDNN 9 wheels) instead of onnxruntime

train-venv: $(TRAIN_STAMP) ## Create .venv-train: + PyTorch (CPU build where no GPU) and ONNX export

dev-venv: $(VENV_STAMP) ## Add the test and lint tools to .venv-train (what make test/lint use)

$(SERVE_STAMP): $(SERVE_LOCK) $(PROJECT_FILES)
	@test -x $(SERVE_PY) || $(PYTHON) -m venv $(VENV)
	$(SERVE_PY) $(PIP_INSTALL_LOCK) $(SERVE_LOCK)
	$(SERVE_PY) $(PIP_INSTALL_OURS) .
	@touch $@

# The GPU lock holds onnxruntime-gpu in place of onnxruntime (our package comes --no-deps).
$(GPU_STAMP): $(SERVE_GPU_LOCK) $(PROJECT_FILES)
	@test -x $(GPU_PY) || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_PY) $(PIP_INSTALL_LOCK) $(SERVE_GPU_LOCK)
	$(GPU_PY) $(PIP_INSTALL_OURS) .
	@touch $@

# The real onnxruntime-gpu build, installed into $(GPU_VENV) and started here: on a machine
# without a GPU it must serve on the CPU with one warning (tests/e2e/gpu_build). Not part of
# `make test`: it downloads ~0.9 GB of wheels into a 2.6 GB environment.
test-gpu-build: $(GPU_STAMP) $(VENV_STAMP) ## Install onnxruntime-gpu into .venv-gpu and check it serves here (CPU fallback without a GPU)
	MNIST_SERVING_GPU_PYTHON=$(abspath $(GPU_PY)) $(PY) -m pytest $(PYTEST_ARGS) tests/e2e/gpu_build

# Says which ONNX Runtime build `make serve` runs, and why, before it is installed.
ort-choice:
	@case '$(ORT)/$(ORT_BUILD)' in \
	  auto/gpu) echo "onnxruntime: NVIDIA GPU found: serving with onnxruntime-gpu (CUDA) from $(GPU_VENV) ($(SERVE_GPU_LOCK); ORT=cpu for the CPU build)" ;; \
	  auto/cpu) echo "onnxruntime: no NVIDIA GPU: serving with the CPU build from $(VENV) ($(SERVE_LOCK); ORT=gpu for onnxruntime-gpu)" ;; \
	  gpu/gpu) echo "onnxruntime: ORT=gpu: serving with onnxruntime-gpu (CUDA) from $(GPU_VENV) ($(SERVE_GPU_LOCK))$(if $(NVIDIA_GPU),, although no NVIDIA GPU was found: it falls back to the CPU)" ;; \
	  cpu/cpu) echo "onnxruntime: ORT=cpu: serving with the CPU build from $(VENV) ($(SERVE_LOCK))" ;; \
	esac

# The training lock, less PyPI torch's CUDA packages when the CPU build was chosen.
$(TRAIN_STAMP): $(TRAIN_LOCK) $(PROJECT_FILES)
	@test -x $(PY) || $(PYTHON) -m venv $(TRAIN_VENV)
	@$(install-torch)
	$(LOCK_PY) export train --torch "$$(cat $(TORCH_CHOICE))" > $(TRAIN_VENV)/.lock-train.txt
	$(PY) $(PIP_INSTALL_LOCK) $(TRAIN_VENV)/.lock-train.txt
	$(PY) $(PIP_INSTALL_OURS) '.[train]'
	@touch $@

$(VENV_STAMP): $(TRAIN_STAMP) $(DEV_LOCK)
	$(LOCK_PY) export dev --torch "$$(cat $(TORCH_CHOICE))" > $(TRAIN_VENV)/.lock-dev.txt
	$(PY) $(PIP_INSTALL_LOCK) $(TRAIN_VENV)/.lock-dev.txt
	$(PY) $(PIP_INSTALL_OURS) '.[train,dev]'
	$(PY) -m pip check
	@touch $@

# Choose the PyTorch build (see TORCH above) once per .venv-train, and install the CPU build
# of the lock's torch and torchvision when chosen; PyPI's build comes with the lock itself.
define install-torch
if [ -f $(TORCH_CHOICE) ]; then exit 0; fi; \
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
  cpu) specs=$$($(LOCK_PY) export train --versions-of torch torchvision); \
       echo "torch: installing the CPU-only build from $(TORCH_CPU_INDEX) ($$specs, the lock's versions)"; \
       $(PY) -m pip install --quiet --no-deps --index-url '$(TORCH_CPU_INDEX)' $$specs ;; \
  pypi) ;; \
  *) echo "TORCH=$$choice: expected auto, cpu or pypi" >&2; exit 2 ;; \
esac; \
echo "$$choice" > $(TORCH_CHOICE)
endef

# Remake every lock from pyproject.toml, client/pyproject.toml and requirements/*.in with uv
# (itself installed from its own lock into $(LOCK_VENV)). Versions already locked are kept
# unless asked: UPGRADE=1 (everything to the newest allowed) or UPGRADE_PACKAGE='a b'.
lock: ## Remake requirements/*.txt from pyproject.toml (UPGRADE=1, UPGRADE_PACKAGE=name to move versions)
	@test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python $(PIP_INSTALL_LOCK) $(LOCK_TOOLS_LOCK)
	PATH="$(abspath $(LOCK_VENV))/bin:$$PATH" $(LOCK_PY) compile $(if $(UPGRADE),--upgrade) \
	  $(foreach package,$(UPGRADE_PACKAGE),--upgrade-package $(package))

lock-check: ## Fail when a lock is stale against pyproject.toml (tests/unit/test_locks.py too)
	$(LOCK_PY) check

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
REFERENCE_MODEL_ARGS := DATASET=mnist-sample EPOCHS=40 SEED=0 QUANTIZE=none VERSION=1 \
  MODEL_NAME=mnist MODEL_REPOSITORY=model_repository

reference-model: ## Regenerate the shipped model_repository/mnist/1 (seeded, offline MNIST sample)
	$(MAKE) --no-print-directory train-export $(REFERENCE_MODEL_ARGS)

model: ## Train and export mnist only if the repository holds no model at all
	@if ls $(MODEL_REPOSITORY)/*/*/model.onnx >/dev/null 2>&1; then \
	  echo "models found in $(MODEL_REPOSITORY):" $$(ls $(MODEL_REPOSITORY)/*/*/model.onnx); \
	else $(MAKE) --no-print-directory train-export MODEL_NAME=mnist; fi

serve: ort-choice $(SERVE_ENV_STAMP) model ## Serve model_repository: HTTP :8000, gRPC :8001, metrics :8002; HOST, HTTP_PORT, PORT, METRICS_PORT, WORKERS, ORT=auto|cpu|gpu
	exec $(SERVE_ENV_PY) -m mnist_serving_server --model-repository $(MODEL_REPOSITORY) \
	  --host $(HOST) --http-host $(HOST) --metrics-host $(HOST) --http-port $(HTTP_PORT) \
	  --port $(PORT) --metrics-port $(METRICS_PORT) --workers $(WORKERS)

lint: $(VENV_STAMP) ## ruff (lint + format check), mypy, and the import layers (import-linter)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(TRAIN_VENV)/bin/lint-imports

# The container's tests run in test-docker (docker-e2e), which builds the image they need.
DOCKER_TESTS := tests/e2e/docker tests/interop/test_interop_docker_image.py

# The onnxruntime-gpu build's tests run in make test-gpu-build, which installs that build.
GPU_BUILD_TESTS := tests/e2e/gpu_build

test-python: $(VENV_STAMP) system-deps ## Every test but tritonclient's and the container's (part of make test)
	$(PY) -m pytest $(PYTEST_ARGS) tests --ignore=tests/interop $(addprefix --ignore=,$(DOCKER_TESTS) $(GPU_BUILD_TESTS))

# tritonclient registers its own `inference.*` protobuf messages; ours would clash in one
# process, so the tests that use it run in a pytest process of their own.
# Against both gRPC fronts (--grpc-front): the native one (the default) and grpc.aio alone.
GRPC_FRONTS := native grpcio

test-interop: $(VENV_STAMP) system-deps ## The tritonclient tests, once per gRPC front (part of make test)
	for front in $(GRPC_FRONTS); do \
	  echo "test-interop: --grpc-front $$front"; \
	  MNIST_SERVING_GRPC_FRONT=$$front $(PY) -m pytest $(PYTEST_ARGS) tests/interop \
	    $(addprefix --ignore=,$(DOCKER_TESTS)) || exit 1; \
	done

test: lint test-python test-interop $(EXTRA_TEST_TARGETS) ## Lint and run every test (what CI runs)

# docs/reference.md: the flags, metrics and error kinds, generated from the code
# (tests/unit/docs/test_docs_reference.py fails when it is stale).
docs: $(VENV_STAMP) ## Regenerate docs/reference.md (flags, metrics, error kinds) from the code
	$(PY) docs/generate_reference.py

docs-check: $(VENV_STAMP) ## Check the docs: reference.md current, links, anchors, paths, make targets
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/unit/docs

clean: ## Remove .venv, .venv-train, caches and build outputs (keeps model_repository)
	rm -rf $(VENV) $(GPU_VENV) $(TRAIN_VENV) $(LOCK_VENV) build dist *.egg-info client/build client/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
