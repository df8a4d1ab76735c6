"""Paths of the deployment files and small readers the deploy tests share."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from mnist_serving_server.config import ServerConfig

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOY_DIR = REPO_ROOT / "deploy"
DOCKER_DIR = DEPLOY_DIR / "docker"
K8S_BASE = DEPLOY_DIR / "k8s" / "base"
K8S_OVERLAYS = DEPLOY_DIR / "k8s" / "overlays"
SERVER_ENV_FILE = K8S_BASE / "server.env"
PROMETHEUS_RULE_FILE = K8S_BASE / "prometheusrule.yaml"
RENDER_SCRIPT = DEPLOY_DIR / "prometheus" / "render_prometheusrule.py"
WAIVERS_FILE = DEPLOY_DIR / "waivers.yaml"
KSERVE_DIR = DEPLOY_DIR / "kserve"
MAKE_FRAGMENTS = REPO_ROOT / "mk"
DOCKERFILES = (DOCKER_DIR / "Dockerfile", DOCKER_DIR / "Dockerfile.gpu")


def read_env_file(path: Path = SERVER_ENV_FILE) -> dict[str, str]:
    """KEY=VALUE lines (kustomize configMapGenerator `envs` format)."""
    pairs: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def make_variable(name: str) -> str:
    """The default (`NAME ?= value`) a mk/*.mk fragment gives a make variable."""
    for fragment in sorted(MAKE_FRAGMENTS.glob("*.mk")):
        for line in fragment.read_text(encoding="utf-8").splitlines():
            key, separator, value = line.partition("?=")
            if separator and key.strip() == name:
                return value.strip()
    raise KeyError(f"no `{name} ?=` in {MAKE_FRAGMENTS}/*.mk")


def load_script(path: Path) -> ModuleType:
    """Import a standalone script under deploy/ (not a package) by its path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_one_worker_per_cpu(config: ServerConfig, resources: dict[str, Any]) -> None:
    """CPU request = limit = the workers, and their ONNX Runtime threads fit in it."""
    cpus = int(resources["limits"]["cpu"])
    assert int(resources["requests"]["cpu"]) == cpus
    assert config.workers == cpus
    assert config.intra_op_threads * config.worker_count <= cpus
