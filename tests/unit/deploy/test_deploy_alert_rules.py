"""The alert rules: documented metrics only, one source of truth, thresholds follow config."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from tests.unit.deploy.deploy_files import (
    K8S_OVERLAYS,
    PROMETHEUS_RULE_FILE,
    RENDER_SCRIPT,
    load_script,
    read_env_file,
)
from tests.unit.deploy.metric_contract import (
    RULES_FILE,
    alert_rules,
    contract_violations,
    read_contract,
)

# PyYAML: requested as a dev dependency; until then these checks skip (make test-deploy
# still runs promtool on the same files).
yaml = pytest.importorskip("yaml")

QUEUE_SATURATION_FRACTION = 0.8
REQUIRED_ALERTS = {
    "MnistServingHighErrorRatio",
    "MnistServingHighP99Latency",
    "MnistServingQueueSaturated",
    "MnistServingLoadShedding",
    "MnistServingTargetDown",
    "MnistServingNoInstanceUp",
    "MnistServingNoReadyPods",
}


def rules_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return document


def rule(name: str) -> dict[str, Any]:
    return next(r for r in alert_rules(rules_document()) if r["alert"] == name)


def test_every_required_alert_exists_with_severity_and_runbook() -> None:
    rules = alert_rules(rules_document())
    assert {r["alert"] for r in rules} == REQUIRED_ALERTS
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["runbook"].startswith("docs/operations.md")


@pytest.mark.parametrize("name", sorted(REQUIRED_ALERTS))
def test_alert_expression_follows_the_contract(name: str) -> None:
    assert contract_violations(rule(name)["expr"], read_contract()) == []


def test_p99_alert_is_a_histogram_quantile_over_request_latency_buckets() -> None:
    expr = rule("MnistServingHighP99Latency")["expr"]
    assert "histogram_quantile(0.99" in expr
    assert "mnist_serving_request_duration_seconds_bucket" in expr


def test_queue_threshold_follows_the_configured_queue_size() -> None:
    queue_size = int(read_env_file()["MNIST_SERVING_MAX_QUEUE_SIZE"])
    threshold = int(re.findall(r">\s*(\d+)", rule("MnistServingQueueSaturated")["expr"])[-1])
    assert threshold == math.ceil(QUEUE_SATURATION_FRACTION * queue_size)
    # No overlay may change the queue size without this alert following.
    for overlay in K8S_OVERLAYS.iterdir():
        text = (overlay / "kustomization.yaml").read_text(encoding="utf-8")
        assert "MNIST_SERVING_MAX_QUEUE_SIZE" not in text, overlay


def test_prometheus_rule_spec_equals_the_rules_file() -> None:
    documents = list(yaml.safe_load_all(PROMETHEUS_RULE_FILE.read_text(encoding="utf-8")))
    assert len(documents) == 1
    prometheus_rule = documents[0]
    assert prometheus_rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert prometheus_rule["kind"] == "PrometheusRule"
    assert prometheus_rule["spec"] == rules_document()


def test_prometheus_rule_file_is_what_the_generator_writes() -> None:
    render = load_script(RENDER_SCRIPT).render
    committed = PROMETHEUS_RULE_FILE.read_text(encoding="utf-8")
    assert committed == render(RULES_FILE.read_text(encoding="utf-8"))
