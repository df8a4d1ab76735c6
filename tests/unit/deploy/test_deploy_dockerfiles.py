"""The Dockerfiles: ports, entry point, user, health check and settings match the server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mnist_serving_server.config import DEFAULT_METRICS_PORT, DEFAULT_PORT, ServerConfig, env_name
from tests.unit.deploy.deploy_files import DOCKERFILES, K8S_BASE, REPO_ROOT

CONFIG_VARIABLES = {env_name(name) for name in ServerConfig.model_fields}
HEALTH_CHECK_SCRIPT = "grpc_health_check.py"
# The HTTP front (V2 REST) that is coming: the images expose its port already.
HTTP_PORT = 8000
WHEELHOUSE_ARG = "${WHEELHOUSE}"
DEPLOYMENT_FILE = K8S_BASE / "deployment.yaml"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def final_stage(dockerfile: Path, stage: str) -> list[tuple[str, str]]:
    """Instructions of one named stage."""
    collected: list[tuple[str, str]] = []
    inside = False
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            inside = arguments.endswith(f" AS {stage}")
        if inside:
            collected.append((keyword, arguments))
    return collected


@pytest.fixture(params=DOCKERFILES, ids=lambda path: path.name)
def dockerfile(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_runtime_stage_exposes_the_server_ports(dockerfile: Path) -> None:
    exposed = [args for keyword, args in final_stage(dockerfile, "server") if keyword == "EXPOSE"]
    assert exposed == [f"{HTTP_PORT} {DEFAULT_PORT} {DEFAULT_METRICS_PORT}"]


def test_entrypoint_is_tini_then_the_server_so_sigterm_reaches_it(dockerfile: Path) -> None:
    (entrypoint,) = [a for k, a in final_stage(dockerfile, "server") if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["tini", "--", "mnist-serving"]
    runs = " ".join(a for k, a in final_stage(dockerfile, "server") if k == "RUN")
    assert "tini" in runs  # installed unless the base has it


def test_runtime_stage_runs_as_a_non_root_user(dockerfile: Path) -> None:
    (user,) = [a for k, a in final_stage(dockerfile, "server") if k == "USER"]
    assert user.split(":")[0] not in {"root", "0"}


def test_healthcheck_asks_the_grpc_health_service(dockerfile: Path) -> None:
    (healthcheck,) = [a for k, a in final_stage(dockerfile, "server") if k == "HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"
    assert command[1].endswith(HEALTH_CHECK_SCRIPT)


def test_environment_names_only_real_settings(dockerfile: Path) -> None:
    env_lines = " ".join(a for k, a in final_stage(dockerfile, "server") if k == "ENV")
    names = set(re.findall(r"\b(MNIST_SERVING_[A-Z_]+)=", env_lines))
    assert names
    assert names <= CONFIG_VARIABLES


def test_default_stage_copies_the_model_repository_in(dockerfile: Path) -> None:
    keyword, arguments = instructions(dockerfile)[-1]
    assert keyword == "COPY"
    assert arguments.endswith("/models/")


def test_images_install_the_server_from_the_wheelhouse_only(dockerfile: Path) -> None:
    """pip runs on the host (its trust store); the build installs with --no-index."""
    runs = " ".join(
        arguments for keyword, arguments in instructions(dockerfile) if keyword == "RUN"
    )
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert installs
    for install in installs:
        assert "--no-index --find-links /wheelhouse" in install, install
    assert "mnist-serving-client mnist-serving" in installs[0]
    assert "[train" not in runs
    assert "torch" not in runs
    assert "rm -rf /opt/mnist-serving/lib/python3*/site-packages/mnist_serving_training" in runs
    copies = [a for k, a in instructions(dockerfile) if k == "COPY"]
    assert f"{WHEELHOUSE_ARG}/ /wheelhouse/" in copies


def test_gpu_image_installs_the_gpu_lock_and_selects_cuda() -> None:
    """The GPU image installs requirements/serve-gpu.txt as .venv-gpu does (onnxruntime-gpu
    in place of onnxruntime, hash-checked), not a version of its own."""
    text = (REPO_ROOT / "deploy" / "docker" / "Dockerfile.gpu").read_text(encoding="utf-8")
    assert "COPY requirements/serve-gpu.txt /tmp/serve-gpu.txt" in text
    assert "--require-hashes --no-deps -r /tmp/serve-gpu.txt" in text
    assert "onnxruntime-gpu==" not in text
    assert "MNIST_SERVING_PROVIDER=cuda" in text
    wheelhouse = (REPO_ROOT / "mk" / "docker.mk").read_text(encoding="utf-8")
    assert "LOCK=$(SERVE_GPU_LOCK) deploy/docker/build_wheelhouse.sh" in wheelhouse


def test_dockerignore_lets_in_everything_the_images_copy() -> None:
    allowed = {
        line.lstrip("!").rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    for path in DOCKERFILES:
        for keyword, arguments in instructions(path):
            if keyword == "COPY" and "--from=" not in arguments:
                sources = [a for a in arguments.split()[:-1] if not a.startswith("--")]
                for source in sources:
                    source = source.replace("${MODEL_REPOSITORY}", "model_repository")
                    source = source.replace(WHEELHOUSE_ARG, "build/docker/wheelhouse-*")
                    assert source.rstrip("/") in allowed, (path.name, source)


def test_wheelhouse_defaults_are_the_ones_make_builds(dockerfile: Path) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    (default,) = re.findall(r"^ARG WHEELHOUSE=(\S+)$", text, re.M)
    make_fragment = (REPO_ROOT / "mk" / "docker.mk").read_text(encoding="utf-8")
    assert default.startswith("build/docker/wheelhouse-")
    assert f"$(DOCKER_BUILD_DIR)/{default.removeprefix('build/docker/')}/.built:" in make_fragment


def test_image_user_is_the_one_kubernetes_runs_as(dockerfile: Path) -> None:
    """The Deployment's runAsUser/runAsGroup are the image's numeric user (tests/e2e/docker
    runs the image with the Deployment's securityContext)."""
    import yaml

    (uid,) = re.findall(r"^ARG UID=(\d+)$", dockerfile.read_text(encoding="utf-8"), re.M)
    deployment = yaml.safe_load(DEPLOYMENT_FILE.read_text(encoding="utf-8"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["runAsUser"] == int(uid)
    assert container["securityContext"]["runAsGroup"] == int(uid)
