"""The Kubernetes base and overlays agree with the server: settings, ports, health, shutdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mnist_serving_server.config import ServerConfig, load_config
from tests.unit.deploy.deploy_files import (
    K8S_BASE,
    K8S_OVERLAYS,
    WAIVERS_FILE,
    check_one_worker_per_cpu,
    read_env_file,
)

# Health service names the server registers (docs/architecture.md, "Health").
HEALTH_SERVICES = {"", "mnist_serving.v1.Classifier", "inference.GRPCInferenceService"}
MIN_REPLICAS_FOR_A_DISRUPTION_BUDGET = 2
GPU_RESOURCE = "nvidia.com/gpu"


def load_objects(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Kubernetes objects in a folder's YAML files, by kind.

    Kustomization files and other YAML (the Prometheus adapter's Helm values) are left out.
    """
    objects: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document and "kind" in document:
                objects.setdefault(document["kind"], []).append(document)
    return objects


def base_objects() -> dict[str, list[dict[str, Any]]]:
    return load_objects(K8S_BASE)


def server_container() -> dict[str, Any]:
    (deployment,) = base_objects()["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_dict: dict[str, Any] = container
    return container_dict


def base_config() -> ServerConfig:
    return load_config([], environ=read_env_file())


def test_every_setting_in_the_configmap_is_accepted_by_the_server() -> None:
    settings = read_env_file()
    config = load_config([], environ=settings)
    assert str(config.model_repository) == "/models"
    assert config.provider == "cpu"
    unknown = [key for key in settings if not key.startswith("MNIST_SERVING_")]
    assert unknown == []


def test_one_worker_per_cpu_of_the_limit_each_with_its_share_of_threads() -> None:
    check_one_worker_per_cpu(base_config(), server_container()["resources"])


def test_gpu_overlay_settings_are_accepted_and_select_cuda() -> None:
    kustomization = yaml.safe_load((K8S_OVERLAYS / "gpu" / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["behavior"] == "merge"
    literals = dict(literal.split("=", 1) for literal in generator["literals"])
    config = load_config([], environ={**read_env_file(), **literals})
    assert config.provider == "cuda"


def test_container_ports_are_the_configured_ports() -> None:
    config = base_config()
    ports = {port["name"]: port["containerPort"] for port in server_container()["ports"]}
    assert ports == {
        "grpc": config.port,
        "http": config.http_port,
        "metrics": config.metrics_port,
    }


def test_probes_are_native_grpc_health_checks_on_the_grpc_port() -> None:
    container = server_container()
    config = base_config()
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[probe_name]["grpc"]
        assert probe["port"] == config.port, probe_name
        assert probe["service"] in HEALTH_SERVICES, probe_name


def test_termination_grace_covers_prestop_drain_and_in_flight_grace() -> None:
    (deployment,) = base_objects()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    command = server_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    config = base_config()
    needed_s = pre_stop_s + config.drain_delay_s + config.grace_period_s
    assert pod["terminationGracePeriodSeconds"] > needed_s


def test_pod_runs_as_restricted_non_root() -> None:
    (deployment,) = base_objects()["Deployment"]
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    container_security = server_container()["securityContext"]
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]
    assert container_security["runAsUser"] > 0


def test_services_clusterip_and_headless_route_to_named_ports() -> None:
    services = {service["metadata"]["name"]: service for service in base_objects()["Service"]}
    cluster_ip, headless = services["mnist-serving"], services["mnist-serving-headless"]
    assert cluster_ip["spec"]["type"] == "ClusterIP"
    assert headless["spec"]["clusterIP"] == "None"
    container_port_names = {port["name"] for port in server_container()["ports"]}
    for service in services.values():
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_port_names


def test_service_monitor_scrapes_the_metrics_port_of_one_service_only() -> None:
    objects = base_objects()
    (monitor,) = objects["ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    services_with_port = [
        service["metadata"]["name"]
        for service in objects["Service"]
        if endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    ]
    # Both services carry the selector label after kustomize; only one has the port.
    assert services_with_port == ["mnist-serving"]


def test_autoscaler_and_disruption_budget_target_the_deployment() -> None:
    objects = base_objects()
    (hpa,) = objects["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mnist-serving"
    assert hpa["spec"]["minReplicas"] >= MIN_REPLICAS_FOR_A_DISRUPTION_BUDGET
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (pdb,) = objects["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_network_policy_opens_only_the_server_ports() -> None:
    (policy,) = base_objects()["NetworkPolicy"]
    config = base_config()
    opened = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert opened == {config.port, config.http_port, config.metrics_port}
    assert policy["spec"]["egress"] == []


def test_custom_metric_autoscaling_uses_documented_gauges() -> None:
    component = K8S_BASE.parent / "components" / "hpa-custom-metrics"
    (hpa,) = load_objects(component)["HorizontalPodAutoscaler"]
    pod_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if "pods" in m}
    assert pod_metrics == {"mnist_serving_inflight_requests", "mnist_serving_queue_depth"}


def test_gpu_overlay_asks_for_a_gpu_and_tolerates_gpu_nodes() -> None:
    (patch,) = load_objects(K8S_OVERLAYS / "gpu")["Deployment"]
    pod = patch["spec"]["template"]["spec"]
    assert pod["tolerations"][0]["key"] == GPU_RESOURCE
    assert pod["containers"][0]["resources"]["limits"][GPU_RESOURCE] == 1


def test_every_waiver_has_a_reason() -> None:
    waivers = yaml.safe_load(WAIVERS_FILE.read_text(encoding="utf-8"))
    entries = waivers["schema_validation"] + waivers["checkov"]
    assert entries
    assert all(str(entry["reason"]).strip() for entry in entries)
