"""Merging client-process measurements and the results document's schema."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bench.plan import (
    BATCH_NAME,
    H2LOAD_CLASSIFY_NAME,
    H2LOAD_HTTP_NAME,
    H2LOAD_V2_NAME,
    REFERENCE_UNARY,
    STREAM_NAME,
    V2_NAME,
)
from bench.results import (
    RESULTS_SCHEMA_VERSION,
    ScenarioResult,
    WorkerResult,
    merge_worker_results,
    validate_results_document,
)
from bench.scenarios import Api, H2loadScenario, Kind, Scenario

WINDOW_S = 2.0


def _scenario(name: str = REFERENCE_UNARY, images: int = 1) -> Scenario:
    return Scenario(
        name=name,
        kind=Kind.CLASSIFY_UNARY,
        concurrency=64,
        images_per_request=images,
        client_processes=2,
    )


def _workers() -> list[WorkerResult]:
    return [
        WorkerResult(
            latencies_s=[0.001, 0.002, 0.003],
            completed_in_window=300,
            errors={"RESOURCE_EXHAUSTED": 2},
            requests_sent=310,
            window_s=WINDOW_S,
        ),
        WorkerResult(
            latencies_s=[0.010],
            completed_in_window=100,
            errors={"RESOURCE_EXHAUSTED": 1, "DEADLINE_EXCEEDED": 4},
            requests_sent=120,
            max_send_lag_s=0.005,
            window_s=WINDOW_S,
        ),
    ]


def test_merge_adds_throughput_and_pools_latencies() -> None:
    result = merge_worker_results(_scenario(images=4), "127.0.0.1:1", _workers())
    assert result.requests_per_s == pytest.approx(400 / WINDOW_S)
    assert result.images_per_s == pytest.approx(4 * 400 / WINDOW_S)
    assert result.requests_ok == 4
    assert result.requests_sent == 430
    assert result.errors == {"DEADLINE_EXCEEDED": 4, "RESOURCE_EXHAUSTED": 3}
    assert result.error_count == 7
    assert result.latency is not None
    assert result.latency.max_ms == pytest.approx(10.0)
    assert result.latency.p50_ms == pytest.approx(2.0)
    assert result.max_send_lag_ms == pytest.approx(5.0)


def test_merge_needs_workers() -> None:
    with pytest.raises(ValueError, match="no worker results"):
        merge_worker_results(_scenario(), "t", [])


def test_server_cpu_is_per_completed_request() -> None:
    result = merge_worker_results(_scenario(), "t", _workers()).with_server_cpu(0.2)
    # 0.2 s of CPU over 400 requests completed in the window = 500 µs each.
    assert result.server_cpu_us_per_request == pytest.approx(500.0)
    assert (
        merge_worker_results(_scenario(), "t", _workers())
        .with_server_cpu(None)
        .server_cpu_us_per_request
        is None
    )


def test_scenario_result_round_trips_through_json() -> None:
    result = merge_worker_results(_scenario(), "t", _workers()).with_mean_batch_size(3.5)
    again = ScenarioResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def make_document(
    requests_per_s: dict[str, float] | None = None, h2load_v2_rate: float = 1800.0
) -> dict[str, Any]:
    """A minimal valid results document (also used by the report tests)."""
    rates = {REFERENCE_UNARY: 1000.0, STREAM_NAME: 4000.0, BATCH_NAME: 100.0, V2_NAME: 950.0}
    rates.update(requests_per_s or {})

    def scenario(name: str, rate: float, images: int = 1) -> dict[str, Any]:
        worker = WorkerResult(
            latencies_s=[0.001, 0.005, 0.030],
            completed_in_window=int(rate * WINDOW_S),
            window_s=WINDOW_S,
        )
        return merge_worker_results(_scenario(name, images), "t", [worker]).to_dict()

    def h2load_row(name: str, api: Api, rate: float, cpu_us: float) -> dict[str, Any]:
        grpc = api.is_grpc
        shape = H2loadScenario(
            name=name, api=api, connections=4 if grpc else 64, streams=16 if grpc else 1
        )
        return {
            **scenario(name, rate),
            "scenario": shape.to_dict(),
            "server_cpu_us_per_request": cpu_us,
        }

    echo = [scenario(REFERENCE_UNARY, 2000.0), h2load_row(H2LOAD_V2_NAME, Api.GRPC_V2, 3500, 350)]
    http_echo = [h2load_row(H2LOAD_HTTP_NAME, Api.HTTP_BINARY_V2, 5000.0, 65.0)]
    native_echo = [h2load_row(H2LOAD_V2_NAME, Api.GRPC_V2, 20000.0, 50.0)]
    server = [scenario(name, rate, 64 if name == BATCH_NAME else 1) for name, rate in rates.items()]
    server += [
        h2load_row(H2LOAD_V2_NAME, Api.GRPC_V2, h2load_v2_rate, 700.0),
        h2load_row(H2LOAD_CLASSIFY_NAME, Api.GRPC_CLASSIFY, 1700.0, 750.0),
        h2load_row(H2LOAD_HTTP_NAME, Api.HTTP_BINARY_V2, 2000.0, 260.0),
    ]
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "created_at": "2026-01-01T00:00:00+00:00",
        "machine": {
            "cpu_model": "Test CPU",
            "cores": 2,
            "platform": "Linux",
            "python": "3.11",
            "grpcio": "1",
            "onnxruntime": "1",
        },
        "command": "python -m bench.run --quick",
        "settings": {"duration_s": 2.0, "warmup_s": 0.5},
        "ort_ceiling": {"images_per_s": {"1": 30000.0, "64": 64000.0}},
        "echo": echo,
        "http_echo": http_echo,
        "native_echo": native_echo,
        "servers": [{"label": "default", "server_args": [], "scenarios": server}],
        "ratios": [],
    }


def test_a_complete_document_is_valid() -> None:
    assert validate_results_document(make_document()) == []


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("schema_version",), 99, "schema_version"),
        (("echo", 0, "requests_per_s"), "fast", "echo[0].requests_per_s"),
        (("servers", 0, "scenarios", 0, "requests_ok"), True, "requests_ok"),
        (("servers", 0, "label"), None, "servers[0].label"),
        (("echo", 0, "latency_ms", "p50_ms"), 1e9, "not ascending"),
    ],
)
def test_schema_violations_are_named(path: tuple[Any, ...], value: Any, problem: str) -> None:
    document = make_document()
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problems = validate_results_document(document)
    assert any(problem in p for p in problems), problems


def test_missing_keys_are_named() -> None:
    document = copy.deepcopy(make_document())
    del document["servers"][0]["scenarios"][1]["latency_ms"]
    del document["ratios"]
    assert validate_results_document(document) == ["document: missing key 'ratios'"]
    document["ratios"] = []
    assert validate_results_document(document) == [
        "servers[0].scenarios[1]: missing key 'latency_ms'"
    ]


def test_not_an_object() -> None:
    assert validate_results_document([]) == ["document: expected an object, got list"]
