# Container images built and run for real. Included by the Makefile after
# mk/deploy.mk (IMAGE, IMAGE_TAG, DOCKER); `make test` runs test-docker through
# EXTRA_TEST_TARGETS. See docs/deployment.md.
#
#   make docker        mnist-serving:latest (+ :$(IMAGE_TAG)), CPU, model_repository baked in
#   make docker-gpu    mnist-serving:latest-gpu (+ :$(IMAGE_TAG)-gpu); needs the CUDA base image
#   make test-docker   starts dockerd if none runs (and stops it), builds, runs the e2e checks
#
# No registry needed: the base is $(PYTHON_IMAGE) when it is present or can be pulled, else a
# debootstrap image of this machine's Debian release (deploy/docker/build_base.sh), built once
# and kept. pip runs on the host (its trust store, its index) to fill a wheelhouse; the image
# installs from it with --no-index. The classic builder: Debian's docker.io has no buildx.

DOCKER_BUILD_DIR := build/docker
DOCKER_BUILD := DOCKER_BUILDKIT=0 $(DOCKER) build --network host --quiet
PYTHON_IMAGE ?= python:3.11-slim-bookworm
DEBIAN_SUITE ?= $(shell . /etc/os-release && echo "$$VERSION_CODENAME")
DEBIAN_BASE_IMAGE ?= mnist-serving-base:$(DEBIAN_SUITE)
# The base's python3 and glibc (bookworm: 3.11, 2.36): the wheelhouse is built for them.
DOCKER_PYTHON_VERSION ?= 3.11
DOCKER_GLIBC_MINOR ?= 36
DOCKER_IMAGE_BUDGET_MB ?= 400
# GPU: Dockerfile.gpu's CUDA base (Ubuntu 24.04: python3 3.12, glibc 2.39).
# CUDA and cuDNN come from requirements/serve-gpu.txt's NVIDIA wheels: the base needs neither.
CUDA_IMAGE ?= nvidia/cuda:13.0.0-base-ubuntu24.04
DOCKER_SOURCES := pyproject.toml client/pyproject.toml $(shell find server client -name '*.py' -not -path '*/build/*' 2>/dev/null)
DOCKER_TEST_ENV := MNIST_SERVING_DOCKER_IMAGE=$(IMAGE):latest

EXTRA_TEST_TARGETS += test-docker

.PHONY: docker docker-gpu docker-base docker-wheelhouse test-docker docker-e2e

# The base image's name, written to $(DOCKER_BUILD_DIR)/base-image: $(PYTHON_IMAGE) where a
# registry has it, else the debootstrap base (built only when it does not exist yet).
docker-base:
	@mkdir -p $(DOCKER_BUILD_DIR)
	@if $(DOCKER) image inspect $(PYTHON_IMAGE) >/dev/null 2>&1 \
	    || timeout 120 $(DOCKER) pull --quiet $(PYTHON_IMAGE) >/dev/null 2>&1; then \
	  echo "base image: $(PYTHON_IMAGE)"; echo $(PYTHON_IMAGE) > $(DOCKER_BUILD_DIR)/base-image; \
	else \
	  echo "$(PYTHON_IMAGE) cannot be pulled: base image $(DEBIAN_BASE_IMAGE) from Debian packages"; \
	  DOCKER=$(DOCKER) DEBIAN_SUITE=$(DEBIAN_SUITE) deploy/docker/build_base.sh $(DEBIAN_BASE_IMAGE); \
	  echo $(DEBIAN_BASE_IMAGE) > $(DOCKER_BUILD_DIR)/base-image; \
	fi

# The wheelhouse holds the serving lock's files (hash-checked), which follows the dev lock's
# versions: the image runs what the tests ran.
$(DOCKER_BUILD_DIR)/wheelhouse-cpu/.built: $(DOCKER_SOURCES) $(SERVE_LOCK) deploy/docker/build_wheelhouse.sh
	PYTHON=$(PY) LOCK=$(SERVE_LOCK) deploy/docker/build_wheelhouse.sh \
	  $(@D) $(DOCKER_PYTHON_VERSION) $(DOCKER_GLIBC_MINOR) 2>&1 | grep -v "is ignored: it is neither"
	@touch $@

# The GPU image installs the GPU lock (requirements/serve-gpu.txt), as .venv-gpu does.
$(DOCKER_BUILD_DIR)/wheelhouse-gpu/.built: $(DOCKER_SOURCES) $(SERVE_GPU_LOCK) deploy/docker/build_wheelhouse.sh
	PYTHON=$(PY) LOCK=$(SERVE_GPU_LOCK) deploy/docker/build_wheelhouse.sh $(@D) 3.12 39 \
	  2>&1 | grep -v "is ignored: it is neither"
	@touch $@

docker-wheelhouse: $(DOCKER_BUILD_DIR)/wheelhouse-cpu/.built ## Wheels of the server, client and deps for the image (pip on the host)

docker: model docker-base docker-wheelhouse ## Build the CPU image mnist-serving:latest (model_repository baked in; trains one if empty)
	@start=$$(date +%s); \
	$(DOCKER_BUILD) -f deploy/docker/Dockerfile \
	  --build-arg PYTHON_IMAGE=$$(cat $(DOCKER_BUILD_DIR)/base-image) \
	  --build-arg MODEL_REPOSITORY=$(MODEL_REPOSITORY) \
	  -t $(IMAGE):latest -t $(IMAGE):$(IMAGE_TAG) . >/dev/null; \
	size=$$($(DOCKER) image inspect -f '{{.Size}}' $(IMAGE):latest); \
	size_mb=$$((size / 1000000)); \
	echo "$(IMAGE):latest ($(IMAGE):$(IMAGE_TAG)) built in $$(( $$(date +%s) - start )) s: $$size_mb MB (budget $(DOCKER_IMAGE_BUDGET_MB) MB)"; \
	echo "$$size_mb" > $(DOCKER_BUILD_DIR)/image-size-mb; \
	test "$$size_mb" -le $(DOCKER_IMAGE_BUDGET_MB) || { echo "image over its $(DOCKER_IMAGE_BUDGET_MB) MB budget"; exit 1; }

# The CUDA base cannot be built from Debian packages: without it (no registry) this fails
# with a clear message, and Dockerfile.gpu is only linted (make test-deploy).
docker-gpu: model $(DOCKER_BUILD_DIR)/wheelhouse-gpu/.built ## Build the GPU image mnist-serving:latest-gpu (needs the CUDA base image)
	@$(DOCKER) image inspect $(CUDA_IMAGE) >/dev/null 2>&1 || timeout 600 $(DOCKER) pull --quiet $(CUDA_IMAGE) >/dev/null \
	  || { echo "docker-gpu: the base $(CUDA_IMAGE) is neither present nor pullable (CUDA_IMAGE=...)"; exit 1; }
	$(DOCKER_BUILD) -f deploy/docker/Dockerfile.gpu --build-arg CUDA_IMAGE=$(CUDA_IMAGE) \
	  --build-arg MODEL_REPOSITORY=$(MODEL_REPOSITORY) \
	  -t $(IMAGE):latest-gpu -t $(IMAGE):$(IMAGE_TAG)-gpu .

test-docker: $(VENV_STAMP) ## Build the image and run it for real: read-only, non-root, SDK + tritonclient, docker stop drains
	@start=$$(date +%s); \
	deploy/docker/with_dockerd.sh $(MAKE) --no-print-directory docker docker-e2e; \
	echo "test-docker: $$(( $$(date +%s) - start )) s in all"

# The image's e2e tests (our SDK, /metrics, user, docker stop) and, in a pytest process of its
# own (tritonclient's protobuf messages clash with ours), tritonclient against the container.
docker-e2e:
	$(DOCKER_TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) tests/e2e/docker
	$(DOCKER_TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) tests/interop/test_interop_docker_image.py
