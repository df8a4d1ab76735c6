# Deployment and observability: container images, Kubernetes manifests, Prometheus.
# Included by the Makefile; `make test` runs test-deploy through EXTRA_TEST_TARGETS.
# The deploy tools (checkov, hadolint, kubectl with kustomize, kubernetes-validate) live in a
# venv of their own, .venv-deploy, because checkov pins packages that clash with .venv.
# promtool and prometheus come from Debian's `prometheus` package (DEBIAN_PACKAGES).

DEPLOY_VENV ?= .venv-deploy
DEPLOY_PY := $(DEPLOY_VENV)/bin/python
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
DEPLOY_LOCK := $(LOCK_DIR)/deploy.txt
DEPLOY_BUILD := build/deploy
K8S_OVERLAYS := $(notdir $(wildcard deploy/k8s/overlays/*))
DOCKER ?= docker
IMAGE ?= mnist-serving
IMAGE_TAG ?= 0.1.0

EXTRA_TEST_TARGETS += test-deploy

.PHONY: deploy-venv deploy-generate test-deploy deploy-lint-docker \
  deploy-k8s deploy-prometheus

deploy-venv: $(DEPLOY_STAMP) ## Create .venv-deploy with the deploy check tools

$(DEPLOY_STAMP): $(DEPLOY_LOCK)
	@test -x $(DEPLOY_PY) || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_PY) $(PIP_INSTALL_LOCK) $(DEPLOY_LOCK)
	@touch $@

deploy-generate: ## Regenerate deploy/k8s/base/prometheusrule.yaml from the Prometheus rules file
	$(PYTHON) deploy/prometheus/render_prometheusrule.py

# `make docker` and `make docker-gpu` (build and run the images for real) are in mk/docker.mk.

test-deploy: deploy-lint-docker deploy-k8s deploy-prometheus ## hadolint, kustomize + schema + checkov, promtool
	@echo "test-deploy: all deployment checks passed"

CHECKOV_SKIPS = $$($(DEPLOY_PY) deploy/k8s/check_manifests.py --checkov-skips)
CHECKOV := $(DEPLOY_VENV)/bin/checkov --compact --quiet --skip-download

deploy-lint-docker: $(DEPLOY_STAMP)
	$(DEPLOY_VENV)/bin/hadolint deploy/docker/Dockerfile deploy/docker/Dockerfile.gpu
	$(CHECKOV) --directory deploy/docker --framework dockerfile --skip-check "$(CHECKOV_SKIPS)"

# Render every overlay and deploy/kserve (ServingRuntime + InferenceService), validate each
# object offline against the Kubernetes schemas, then
# scan the rendered objects with checkov; waivers (with reasons) in deploy/waivers.yaml.
deploy-k8s: $(DEPLOY_STAMP)
	$(PYTHON) deploy/prometheus/render_prometheusrule.py --check
	rm -rf $(DEPLOY_BUILD) && mkdir -p $(DEPLOY_BUILD)
	for overlay in $(K8S_OVERLAYS); do \
	  $(DEPLOY_VENV)/bin/kubectl kustomize deploy/k8s/overlays/$$overlay > $(DEPLOY_BUILD)/$$overlay.yaml; \
	done
	$(DEPLOY_VENV)/bin/kubectl kustomize deploy/kserve > $(DEPLOY_BUILD)/kserve.yaml
	$(DEPLOY_PY) deploy/k8s/check_manifests.py $(DEPLOY_BUILD)/*.yaml
	$(CHECKOV) --directory $(DEPLOY_BUILD) --framework kubernetes --skip-check "$(CHECKOV_SKIPS)"

deploy-prometheus: system-deps
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/rules/mnist-serving-alerts.yml
	promtool test rules deploy/prometheus/tests/mnist-serving-alerts.test.yml
