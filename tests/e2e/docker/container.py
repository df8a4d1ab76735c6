"""The image from `make docker`, run as Kubernetes runs it (deploy/k8s/base/deployment.yaml).

Shared by tests/e2e/docker and tests/interop/test_interop_docker_image.py, so it imports
nothing of the server and no V2 protobuf module (tritonclient's messages would clash).
The tests run only when MNIST_SERVING_DOCKER_IMAGE names an image (`make test-docker` sets
it after building; `make test-python` and `make test-interop` leave these tests out).
Without it, or without the docker CLI, they skip, and fail under CI=true.

Network rule: the container's ports are published on 127.0.0.1 only, on ports Docker picks;
every wait is bounded in time and count.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.requirements_support import require_tool, requirement_missing

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOYMENT_FILE = REPO_ROOT / "deploy" / "k8s" / "base" / "deployment.yaml"
SERVER_ENV_FILE = REPO_ROOT / "deploy" / "k8s" / "base" / "server.env"
IMAGE_VARIABLE = "MNIST_SERVING_DOCKER_IMAGE"
GRPC_PORT = 8001
METRICS_PORT = 8002
MODEL_NAME = "mnist"
MODELS_DIR = "/models"
HEALTH_SERVICE = "mnist_serving.v1.Classifier"
DOCKER_TIMEOUT_S = 60.0
SERVING_TIMEOUT_S = 120.0
POLL_S = 0.5
# A model trained for more than one epoch (the shipped model_repository/mnist/1 has 8) must
# reach 97% on the sample's held-out digits. One whose report says one epoch or less (e.g.
# `make model EPOCHS=1` in a hurry; a report without `epochs` counts as 0) reaches ~93%, so
# it is held to 90%, and the tests say so (accuracy_target).
TARGET_ACCURACY = 0.97
ONE_EPOCH_ACCURACY = 0.90


def docker_image() -> str:
    """The image under test: only `make test-docker` builds one and names it."""
    image = os.environ.get(IMAGE_VARIABLE, "")
    if not image:
        requirement_missing(f"the image to test ({IMAGE_VARIABLE})", "run `make test-docker`")
    require_tool("docker", "Debian's docker.io (make test-docker installs it when missing)")
    return image


def docker(*args: str, timeout_s: float = DOCKER_TIMEOUT_S, check: bool = True) -> str:
    """Run the docker CLI; its stdout."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.returncode}: {result.stderr}")
    return result.stdout


def deployment_run_flags(deployment_file: Path = DEPLOYMENT_FILE) -> list[str]:
    """`docker run` flags for what the Deployment's pod and container securityContext ask.

    So the container test proves what Kubernetes will enforce: the user, a read-only root
    filesystem with an emptyDir at /tmp, no capabilities, no privilege escalation, and the
    ConfigMap's MNIST_SERVING_* settings (server.env).
    """
    deployment = yaml.safe_load(deployment_file.read_text(encoding="utf-8"))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    flags = ["--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
    if security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    for dropped in security.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", dropped]
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume, f"only emptyDir volumes can be mimicked: {volume}"
        size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
        flags += ["--tmpfs", f"{mount['mountPath']}:rw,size={size}"]
    flags += ["--env-file", str(SERVER_ENV_FILE)]
    return flags


@dataclass
class Container:
    """A running container of the image, its ports published on 127.0.0.1."""

    container_id: str
    grpc_target: str
    metrics_url: str

    def exec(self, *command: str, check: bool = True) -> str:
        return docker("exec", self.container_id, *command, check=check)

    def inspect(self) -> dict[str, Any]:
        (state,) = json.loads(docker("inspect", self.container_id))
        result: dict[str, Any] = state
        return result

    def logs(self, tail: str = "60") -> str:
        result = subprocess.run(
            ["docker", "logs", "--tail", tail, self.container_id],
            capture_output=True,
            text=True,
            timeout=DOCKER_TIMEOUT_S,
            check=False,
        )
        return result.stdout + result.stderr

    def stop(self, grace_s: int) -> tuple[int, float]:
        """`docker stop -t grace_s`: (the container's exit code, seconds the stop took)."""
        started = time.monotonic()
        docker("stop", "--time", str(grace_s), self.container_id, timeout_s=grace_s + 30)
        elapsed_s = time.monotonic() - started
        exit_code: int = self.inspect()["State"]["ExitCode"]
        return exit_code, elapsed_s

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text: str = response.read().decode("utf-8")
        return text

    def every_worker_ready(self) -> bool:
        """With --workers N, whether the parent logged "ready" (every worker warm): health is
        per worker, so one connection's SERVING says nothing of the worker the next lands on."""
        lines = [_json_line(line) for line in self.logs(tail="all").splitlines()]
        workers = [line for line in lines if line.get("logger") == WORKERS_LOGGER]
        return not workers or any(line.get("message") == "ready" for line in workers)

    def wait_until_serving(self, timeout_s: float = SERVING_TIMEOUT_S) -> None:
        """Poll grpc.health.v1 from the host until SERVING, and, with several workers, until
        every one is warm (bounded in time and count)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(int(timeout_s / POLL_S) + 1):
                if time.monotonic() > deadline:
                    break
                if not self.inspect()["State"]["Running"]:
                    raise AssertionError(f"the container exited:\n{self.logs()}")
                try:
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=2
                    )
                    if (
                        reply.status == health_pb2.HealthCheckResponse.SERVING
                        and self.every_worker_ready()
                    ):
                        return
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as error:
                    last = (str(error).splitlines() or ["?"])[0]
                time.sleep(POLL_S)
        raise AssertionError(f"not SERVING after {timeout_s} s ({last}):\n{self.logs()}")

    def model_report(self) -> dict[str, Any]:
        """The training report of the highest version of the baked-in model."""
        versions = self.exec("ls", f"{MODELS_DIR}/{MODEL_NAME}").split()
        latest = max((v for v in versions if v.isdigit()), key=int)
        report: dict[str, Any] = json.loads(
            self.exec("cat", f"{MODELS_DIR}/{MODEL_NAME}/{latest}/training_report.json")
        )
        return report

    def accuracy_target(self) -> float:
        """TARGET_ACCURACY, or ONE_EPOCH_ACCURACY for a model trained for one epoch."""
        epochs = int(self.model_report().get("epochs", 0))
        if epochs <= 1:
            print(
                f"a {epochs}-epoch model: held to {ONE_EPOCH_ACCURACY:.0%}, "
                f"not {TARGET_ACCURACY:.0%}"
            )
            return ONE_EPOCH_ACCURACY
        return TARGET_ACCURACY


def published_port(container_id: str, port: int) -> int:
    """The 127.0.0.1 port Docker picked for the container's `port`."""
    for line in docker("port", container_id, f"{port}/tcp").splitlines():
        host, _, host_port = line.strip().rpartition(":")
        if host == "127.0.0.1":
            return int(host_port)
    raise AssertionError(f"port {port} of {container_id} is not published on 127.0.0.1")


@contextmanager
def run_container(image: str, *server_args: str) -> Iterator[Container]:
    """Start the image as the Deployment runs it; SERVING before yielding; removed after."""
    name = f"mnist-serving-e2e-{uuid.uuid4().hex[:12]}"
    container_id = docker(
        "run",
        "--detach",
        "--name",
        name,
        "--publish",
        f"127.0.0.1::{GRPC_PORT}",
        "--publish",
        f"127.0.0.1::{METRICS_PORT}",
        *deployment_run_flags(),
        image,
        *server_args,
    ).strip()
    try:
        container = Container(
            container_id=container_id,
            grpc_target=f"127.0.0.1:{published_port(container_id, GRPC_PORT)}",
            metrics_url=f"http://127.0.0.1:{published_port(container_id, METRICS_PORT)}/metrics",
        )
        container.wait_until_serving()
        yield container
    finally:
        docker("rm", "--force", "--volumes", container_id, check=False)


WORKERS_LOGGER = "mnist_serving_server.workers"


def _json_line(line: str) -> dict[str, Any]:
    """A JSON log line (server.env sets MNIST_SERVING_LOG_FORMAT=json), or {}."""
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
