"""Benchmark results: what a client process measures, the merged scenario result, and
the JSON document `make bench` writes (with a schema check, so the format cannot drift).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench.scenarios import Scenario
from bench.stats import MS_PER_S, LatencySummary, summarize_latencies

# 2: h2load rows (with an "h2load" report) and the ASGI echo's rows ("http_echo").
# 3: the bare pygrpc-native echo's rows ("native_echo"), the native front's floor.
# (3, optional: "minimal_path", the minimal full path's rows, bench/minimal_path.py.)
RESULTS_SCHEMA_VERSION = 3
OK_CODE = "OK"
US_PER_S = 1e6


@dataclass
class WorkerResult:
    """What one client process measured inside the measurement window."""

    # Latencies (s) of successful requests sent inside the window.
    latencies_s: list[float] = field(default_factory=list)
    # Successful requests that completed inside the window (throughput numerator).
    completed_in_window: int = 0
    # Failed requests sent inside the window, by gRPC status name.
    errors: dict[str, int] = field(default_factory=dict)
    requests_sent: int = 0
    # Open loop: how far the sender fell behind its schedule (client saturation).
    max_send_lag_s: float = 0.0
    window_s: float = 0.0


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario's merged result over all client processes."""

    name: str
    target: str
    scenario: dict[str, Any]
    window_s: float
    requests_ok: int
    requests_sent: int
    errors: dict[str, int]
    requests_per_s: float
    images_per_s: float
    latency: LatencySummary | None
    max_send_lag_ms: float
    # Server CPU time (all its processes) per successful request, when measured.
    server_cpu_us_per_request: float | None = None
    # Mean images per ONNX Runtime batch during the scenario (from the server's metrics).
    mean_batch_size: float | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def with_server_cpu(self, cpu_s: float | None) -> ScenarioResult:
        per_request = None
        completed = self.requests_per_s * self.window_s
        if cpu_s is not None and completed > 0:
            per_request = cpu_s / completed * US_PER_S
        return replace(self, server_cpu_us_per_request=per_request)

    def with_mean_batch_size(self, mean_batch_size: float | None) -> ScenarioResult:
        return replace(self, mean_batch_size=mean_batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "scenario": self.scenario,
            "window_s": self.window_s,
            "requests_ok": self.requests_ok,
            "requests_sent": self.requests_sent,
            "errors": dict(self.errors),
            "requests_per_s": self.requests_per_s,
            "images_per_s": self.images_per_s,
            "latency_ms": self.latency.to_dict() if self.latency else None,
            "max_send_lag_ms": self.max_send_lag_ms,
            "server_cpu_us_per_request": self.server_cpu_us_per_request,
            "mean_batch_size": self.mean_batch_size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenarioResult:
        latency = data["latency_ms"]
        return cls(
            name=data["name"],
            target=data["target"],
            scenario=dict(data["scenario"]),
            window_s=data["window_s"],
            requests_ok=data["requests_ok"],
            requests_sent=data["requests_sent"],
            errors=dict(data["errors"]),
            requests_per_s=data["requests_per_s"],
            images_per_s=data["images_per_s"],
            latency=LatencySummary(**latency) if latency else None,
            max_send_lag_ms=data["max_send_lag_ms"],
            server_cpu_us_per_request=data.get("server_cpu_us_per_request"),
            mean_batch_size=data.get("mean_batch_size"),
        )


def merge_worker_results(
    scenario: Scenario, target: str, workers: Sequence[WorkerResult]
) -> ScenarioResult:
    """Combine the client processes' measurements of one scenario.

    The processes share one measurement window (they start together), so throughputs add
    and the latency samples pool.
    """
    if not workers:
        raise ValueError("no worker results to merge")
    window_s = max(worker.window_s for worker in workers)
    if window_s <= 0:
        raise ValueError("measurement window must be > 0")
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    for worker in workers:
        errors.update(worker.errors)
        latencies.extend(worker.latencies_s)
    completed = sum(worker.completed_in_window for worker in workers)
    requests_per_s = completed / window_s
    return ScenarioResult(
        name=scenario.name,
        target=target,
        scenario=scenario.to_dict(),
        window_s=window_s,
        requests_ok=len(latencies),
        requests_sent=sum(worker.requests_sent for worker in workers),
        errors=dict(sorted(errors.items())),
        requests_per_s=requests_per_s,
        images_per_s=requests_per_s * scenario.images_per_request,
        latency=summarize_latencies(latencies),
        max_send_lag_ms=max(worker.max_send_lag_s for worker in workers) * MS_PER_S,
    )


# The results document: key -> allowed types (None means JSON null is allowed).
_NUMBER = (int, float)
_DOCUMENT_KEYS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "created_at": (str,),
    "machine": (dict,),
    "command": (str,),
    "settings": (dict,),
    "ort_ceiling": (dict, type(None)),
    "echo": (list,),
    "http_echo": (list,),
    "native_echo": (list,),
    "servers": (list,),
    "ratios": (list,),
}
_SCENARIO_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "target": (str,),
    "scenario": (dict,),
    "window_s": _NUMBER,
    "requests_ok": (int,),
    "requests_sent": (int,),
    "errors": (dict,),
    "requests_per_s": _NUMBER,
    "images_per_s": _NUMBER,
    "latency_ms": (dict, type(None)),
    "max_send_lag_ms": _NUMBER,
    "server_cpu_us_per_request": (*_NUMBER, type(None)),
    "mean_batch_size": (*_NUMBER, type(None)),
}
_SERVER_KEYS: dict[str, tuple[type, ...]] = {
    "label": (str,),
    "server_args": (list,),
    "scenarios": (list,),
}
_RATIO_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "config": (str,),
    "value": (*_NUMBER, type(None)),
    "target": _NUMBER,
    "comparison": (str,),
    "met": (bool, type(None)),
}
_LATENCY_KEYS = ("count", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")


def _check_keys(
    where: str, data: Any, spec: Mapping[str, tuple[type, ...]], problems: list[str]
) -> None:
    if not isinstance(data, dict):
        problems.append(f"{where}: expected an object, got {type(data).__name__}")
        return
    for key, types in spec.items():
        if key not in data:
            problems.append(f"{where}: missing key {key!r}")
        elif not isinstance(data[key], types) or (
            # bool is an int subclass; a count or rate must not be a bool.
            isinstance(data[key], bool) and bool not in types
        ):
            problems.append(f"{where}.{key}: unexpected type {type(data[key]).__name__}")


def _check_scenarios(where: str, scenarios: Iterable[Any], problems: list[str]) -> None:
    for index, scenario in enumerate(scenarios):
        here = f"{where}[{index}]"
        _check_keys(here, scenario, _SCENARIO_KEYS, problems)
        latency = scenario.get("latency_ms") if isinstance(scenario, dict) else None
        if isinstance(latency, dict):
            missing = [key for key in _LATENCY_KEYS if key not in latency]
            if missing:
                problems.append(f"{here}.latency_ms: missing {missing}")
            elif (
                not latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
            ):
                problems.append(f"{here}.latency_ms: percentiles not ascending")


def validate_results_document(document: Any) -> list[str]:
    """Problems with a results document (empty when it matches the schema)."""
    problems: list[str] = []
    _check_keys("document", document, _DOCUMENT_KEYS, problems)
    if problems:
        return problems
    if document["schema_version"] != RESULTS_SCHEMA_VERSION:
        problems.append(f"document.schema_version: expected {RESULTS_SCHEMA_VERSION}")
    _check_scenarios("echo", document["echo"], problems)
    _check_scenarios("http_echo", document["http_echo"], problems)
    _check_scenarios("native_echo", document["native_echo"], problems)
    _check_scenarios("minimal_path", document.get("minimal_path", []), problems)
    for index, server in enumerate(document["servers"]):
        _check_keys(f"servers[{index}]", server, _SERVER_KEYS, problems)
        if isinstance(server, dict) and isinstance(server.get("scenarios"), list):
            _check_scenarios(f"servers[{index}].scenarios", server["scenarios"], problems)
    for index, ratio in enumerate(document["ratios"]):
        _check_keys(f"ratios[{index}]", ratio, _RATIO_KEYS, problems)
    return problems
