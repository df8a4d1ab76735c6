"""The alert rules: documented metrics only, one source of truth, thresholds follow config."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.unit.deploy.deploy_files import (
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

QUEUE_SATURATION_FRACTION = 0.8
# The saturation rule compares depth with the capacity the server reports, never a number.
QUEUE_RATIO = re.compile(
    r"mnist_serving_queue_depth\[\w+\]\)\s*/\s*mnist_serving_queue_capacity\s*\)\s*>\s*([0-9.]+)"
)
REQUIRED_ALERTS = {
    "MnistServingHighErrorRatio",
    "MnistServingHighP99Latency",
    "MnistServingQueueSaturated",
    "MnistServingLoadShedding",
    "MnistServingTargetDown",
    "MnistServingNoInstanceUp",
    "MnistServingNoReadyPods",
    "MnistServingModelDrift",
    "MnistServingConfidenceDrop",
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


def test_queue_threshold_is_a_fraction_of_the_reported_capacity() -> None:
    saturated = rule("MnistServingQueueSaturated")
    match = QUEUE_RATIO.search(saturated["expr"])
    assert match is not None, saturated["expr"]
    assert float(match.group(1)) == QUEUE_SATURATION_FRACTION
    # Nothing in the rule may restate the configured queue size (it would go stale when an
    # operator changes MNIST_SERVING_MAX_QUEUE_SIZE).
    queue_size = read_env_file()["MNIST_SERVING_MAX_QUEUE_SIZE"]
    texts = [saturated["expr"], *saturated["annotations"].values()]
    assert [text for text in texts if re.search(rf"\b{queue_size}\b", text)] == []


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
