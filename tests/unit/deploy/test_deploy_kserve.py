"""deploy/kserve: KServe's conventions, and a server that takes them without a wrapper.

KServe's CRD schemas are not available offline (deploy/waivers.yaml); `make test-deploy`
validates the runtime's containers and volumes as a core Pod, and these tests check what
KServe itself requires of a runtime: a container named kserve-container, the model at
/mnt/models, a gRPC port named h2c, the protocol versions, and the settings the server reads.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from mnist_serving_server.config import ServerConfig, env_name, load_config
from tests.unit.deploy.deploy_files import (
    K8S_BASE,
    K8S_OVERLAYS,
    KSERVE_DIR,
    check_one_worker_per_cpu,
    make_variable,
)

KSERVE_MODEL_DIR = "/mnt/models"
KSERVE_CONTAINER = "kserve-container"
# Knative/KServe: a port named h2c is spoken to with HTTP/2 cleartext (gRPC).
GRPC_PORT_NAME = "h2c"
PROTOCOLS = {"v2", "grpc-v2"}
MODEL_NAME = "mnist"


def load(path_name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KSERVE_DIR / path_name).read_text("utf-8"))
    return document


def runtime() -> dict[str, Any]:
    return load("servingruntime.yaml")


def runtime_container() -> dict[str, Any]:
    (container,) = runtime()["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def runtime_config() -> ServerConfig:
    """The server's settings from the runtime's args and env, as the container gets them."""
    container = runtime_container()
    environ = {item["name"]: item["value"] for item in container.get("env", [])}
    return load_config(container.get("args", []), environ=environ)


def test_one_worker_per_cpu_of_the_limit_each_with_its_share_of_threads() -> None:
    check_one_worker_per_cpu(runtime_config(), runtime_container()["resources"])


def test_runtime_follows_kserve_naming() -> None:
    document = runtime()
    assert document["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert document["kind"] == "ServingRuntime"
    assert runtime_container()["name"] == KSERVE_CONTAINER
    formats = {fmt["name"]: fmt for fmt in document["spec"]["supportedModelFormats"]}
    assert formats["onnx"]["autoSelect"] is True
    assert set(document["spec"]["protocolVersions"]) == PROTOCOLS


def test_server_reads_the_model_from_kserve_mount_with_its_own_flags() -> None:
    config = runtime_config()
    assert str(config.model_repository) == KSERVE_MODEL_DIR
    assert config.host == "0.0.0.0"
    assert config.metrics_host == "0.0.0.0"
    assert config.provider == "cpu"
    for item in runtime_container().get("env", []):
        assert item["name"] in {env_name(field) for field in ServerConfig.model_fields}


def test_the_one_container_port_is_grpc_named_h2c() -> None:
    (port,) = runtime_container()["ports"]  # Knative allows exactly one
    assert port["name"] == GRPC_PORT_NAME
    assert port["containerPort"] == runtime_config().port


def test_readiness_asks_grpc_health_for_the_v2_service() -> None:
    probe = runtime_container()["readinessProbe"]["grpc"]
    assert probe["port"] == runtime_config().port
    assert probe["service"] == "inference.GRPCInferenceService"


def test_metrics_are_scraped_through_kserve_annotations() -> None:
    annotations = runtime()["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == runtime_config().metrics_port
    assert annotations["prometheus.kserve.io/path"] == "/metrics"


def test_runtime_security_matches_the_deployment_the_container_test_proves() -> None:
    deployment = yaml.safe_load((K8S_BASE / "deployment.yaml").read_text("utf-8"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert runtime_container()["securityContext"] == container["securityContext"]
    mounts = {mount["mountPath"]: mount["name"] for mount in runtime_container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in runtime()["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert KSERVE_MODEL_DIR not in mounts  # KServe mounts the storage initializer's volume


def test_drain_fits_the_default_termination_grace() -> None:
    """Kubernetes' default 30 s grace must cover the server's drain delay + grace period."""
    config = runtime_config()
    assert config.drain_delay_s + config.grace_period_s < 30


def test_inference_service_uses_the_runtime_over_grpc_v2() -> None:
    service = load("inferenceservice.yaml")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    # Served by the model folder's name: the InferenceService is named like it.
    assert service["metadata"]["name"] == MODEL_NAME
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime()["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx"
    assert model["protocolVersion"] in PROTOCOLS
    assert re.match(r"^[a-z0-9]+://", model["storageUri"])


def test_images_are_tags_that_make_docker_builds() -> None:
    """Every kustomization names mnist-serving with a tag `make docker`/`docker-gpu` builds."""
    tag = make_variable("IMAGE_TAG")
    built = {"latest", tag, "latest-gpu", f"{tag}-gpu"}
    kustomizations = [KSERVE_DIR / "kustomization.yaml", K8S_BASE / "kustomization.yaml"]
    kustomizations += sorted(K8S_OVERLAYS.glob("*/kustomization.yaml"))
    for path in kustomizations:
        for image in yaml.safe_load(path.read_text("utf-8")).get("images", []):
            assert image["name"] == "mnist-serving", path
            assert image["newTag"] in built, path
    docker_fragment = (K8S_BASE.parents[2] / "mk" / "docker.mk").read_text("utf-8")
    assert "-t $(IMAGE):latest -t $(IMAGE):$(IMAGE_TAG)" in docker_fragment
    assert "-t $(IMAGE):latest-gpu -t $(IMAGE):$(IMAGE_TAG)-gpu" in docker_fragment
