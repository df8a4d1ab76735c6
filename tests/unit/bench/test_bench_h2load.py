"""h2load's rows: request bodies, its report and log parsed, and the error accounting."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bench import h2load, plan
from bench.h2load import (
    NOT_COUNTED,
    UNEXPECTED_OK,
    H2loadError,
    build_request,
    count_errors,
    cpu_per_request_us,
    log_latency,
    ok_replies,
    parse_log,
    parse_report,
    planned_requests,
    request_counts,
    row_problem,
)
from bench.scenarios import Api, H2loadScenario
from mnist_serving_server.metrics import ServerMetrics

# What h2load 1.52 (Debian bookworm's nghttp2-client) prints after a gRPC run.
REPORT = """starting benchmark...
spawning thread #0: 4 total client(s). 2000 total requests
Application protocol: h2c
progress: 10% done
progress: 100% done

finished in 1.01s, 1975.25 req/s, 120.42KB/s
requests: 2000 total, 2000 started, 1998 done, 1997 succeeded, 3 failed, 1 errored, 2 timeout
status codes: 1997 2xx, 0 3xx, 1 4xx, 0 5xx
traffic: 121.68KB (124598) total, 12.07KB (12357) headers (space savings 93.21%), 97.66KB data
                     min         max         mean         sd        +/- sd
time for request:      538us     65.05ms     31.21ms     13.24ms    66.75%
time for connect:      180us       302us       241us        52us    50.00%
time to 1st byte:    12.51ms     14.20ms     13.31ms       702us    50.00%
req/s           :     493.29      494.49      493.93        0.53    75.00%
"""


def test_report_parsed_with_units() -> None:
    report = parse_report(REPORT)
    assert report.finished_s == pytest.approx(1.01)
    assert report.requests_per_s == pytest.approx(1975.25)
    assert report.requests == {
        "total": 2000,
        "started": 2000,
        "done": 1998,
        "succeeded": 1997,
        "failed": 3,
        "errored": 1,
        "timeout": 2,
    }
    assert report.status_codes == {"2xx": 1997, "3xx": 0, "4xx": 1, "5xx": 0}
    assert report.request_time_ms == pytest.approx(
        {"min": 0.538, "max": 65.05, "mean": 31.21, "sd": 13.24}
    )
    assert report.not_succeeded == 3


def test_a_run_in_seconds_and_microseconds() -> None:
    text = REPORT.replace("finished in 1.01s", "finished in 870us").replace("65.05ms", "2.5s")
    report = parse_report(text)
    assert report.finished_s == pytest.approx(870e-6)
    assert report.request_time_ms["max"] == pytest.approx(2500.0)


def test_no_report_is_an_error() -> None:
    with pytest.raises(H2loadError, match="no h2load report"):
        parse_report("connect to 127.0.0.1:1 failed: Connection refused\n")


def _log(durations_us: list[int], statuses: list[int] | None = None) -> str:
    statuses = statuses or [200] * len(durations_us)
    return "".join(
        f"{1_700_000_000_000_000 + i}\t{status}\t{duration}\n"
        for i, (status, duration) in enumerate(zip(statuses, durations_us, strict=True))
    )


def test_percentiles_from_the_per_request_log() -> None:
    # 1 ms .. 100 ms, shuffled: nearest-rank p50 = 50 ms, p95 = 95 ms, p99 = 99 ms.
    durations = [1000 * (i + 1) for i in np.random.default_rng(3).permutation(100)]
    entries = parse_log(_log(durations))
    assert len(entries) == 100
    latency = log_latency(entries)
    assert latency is not None
    assert latency.count == 100
    assert (latency.p50_ms, latency.p95_ms, latency.p99_ms, latency.max_ms) == pytest.approx(
        (50.0, 95.0, 99.0, 100.0)
    )
    assert latency.mean_ms == pytest.approx(50.5)


def test_only_2xx_replies_count_in_the_latency() -> None:
    # A failed stream (-1) and a 503 are not latencies of answered calls.
    entries = parse_log(_log([1000, 900_000, 2000, 800_000], [200, -1, 204, 503]))
    assert [entry.status for entry in entries] == [200, -1, 204, 503]
    latency = log_latency(entries)
    assert latency is not None
    assert latency.count == 2
    assert latency.max_ms == pytest.approx(2.0)
    assert log_latency(parse_log(_log([5], [-1]))) is None


def test_a_garbled_log_line_is_an_error() -> None:
    with pytest.raises(H2loadError, match="line 2"):
        parse_log(_log([1000]) + "1700000000000001\tOK\n")


@pytest.mark.parametrize(
    ("before", "after", "errors"),
    [
        ({"OK": 10.0}, {"OK": 110.0}, {}),
        # A gRPC error is an HTTP 200 to h2load: only the server's counter shows it.
        ({"OK": 0.0}, {"OK": 97.0, "RESOURCE_EXHAUSTED": 3.0}, {"RESOURCE_EXHAUSTED": 3}),
        # Calls the service never counted (a connection dropped before the handler).
        ({}, {"OK": 95.0}, {NOT_COUNTED: 5}),
        (
            {"OK": 5.0, "NOT_FOUND": 1.0},
            {"OK": 95.0, "NOT_FOUND": 3.0},
            {"NOT_FOUND": 2, NOT_COUNTED: 8},
        ),
        # Someone else called the service in the window: the count proves nothing.
        ({"OK": 0.0}, {"OK": 104.0}, {UNEXPECTED_OK: 4}),
    ],
)
def test_errors_are_requests_minus_ok_replies(
    before: dict[str, float], after: dict[str, float], errors: dict[str, int]
) -> None:
    assert count_errors(100, before, after) == errors
    if UNEXPECTED_OK not in errors:
        assert sum(errors.values()) == 100 - ok_replies(before, after)


def test_errors_fail_a_row() -> None:
    report = parse_report(REPORT.replace("1997 succeeded, 3 failed", "2000 succeeded, 0 failed"))
    row = {"errors": {}, "requests_sent": 2000, "h2load": report.to_dict()}
    assert row_problem(row) is None
    assert "2 of 2000" in str(row_problem({**row, "errors": {"UNAVAILABLE": 2}}))
    failed = {**row, "h2load": parse_report(REPORT).to_dict()}
    assert "h2load saw 3 failed" in str(row_problem(failed))


def test_the_servers_counter_by_protocol_and_method() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    calls = [
        ("grpc", "ModelInfer", "mnist", "1", "OK"),
        ("grpc", "ModelInfer", "mnist", "2", "OK"),
        ("grpc", "ModelInfer", "", "", "NOT_FOUND"),
        ("grpc", "Classify", "mnist", "1", "OK"),
        ("http", "ModelInfer", "mnist", "1", "OK"),
    ]
    for call in calls:
        metrics.count_request(*call, 0.001)
    text = generate_latest(registry).decode()
    assert request_counts(text, "grpc", "ModelInfer") == {"OK": 2.0, "NOT_FOUND": 1.0}
    assert request_counts(text, "grpc", "Classify") == {"OK": 1.0}
    assert request_counts(text, "http", "ModelInfer") == {"OK": 1.0}
    assert request_counts(text, "http", "Classify") == {}
    assert h2load.COUNTER_LABELS[Api.HTTP_BINARY_V2] == ("http", "ModelInfer")


def _grpc_message(body: bytes) -> bytes:
    flag, length = struct.unpack(">BI", body[:5])
    assert flag == 0
    assert length == len(body) - 5
    return body[5:]


def test_grpc_bodies_are_framed_requests() -> None:
    from mnist_serving_proto import classifier_pb2, open_inference_pb2

    v2 = build_request(Api.GRPC_V2, model_name="fashion")
    assert v2.path == "/inference.GRPCInferenceService/ModelInfer"
    assert "te: trailers" in v2.headers
    request = open_inference_pb2.ModelInferRequest.FromString(_grpc_message(v2.body))
    assert request.model_name == "fashion"
    assert (request.inputs[0].datatype, list(request.inputs[0].shape)) == ("UINT8", [1, 1, 28, 28])
    assert len(request.raw_input_contents[0]) == 784
    classify = build_request(Api.GRPC_CLASSIFY)
    assert classify.path == "/mnist_serving.v1.Classifier/Classify"
    message = classifier_pb2.ClassifyRequest.FromString(_grpc_message(classify.body))
    assert [len(image.pixels) for image in message.images] == [784]


def test_http_binary_body_names_its_json_header() -> None:
    request = build_request(Api.HTTP_BINARY_V2, images=2)
    assert request.path == "/v2/models/mnist/infer"
    (length,) = [int(h.split(":")[1]) for h in request.headers if h.startswith("inference-header")]
    header = json.loads(request.body[:length])
    assert header["inputs"][0]["shape"] == [2, 1, 28, 28]
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 2 * 784
    assert len(request.body) == length + 2 * 784
    assert request.header_args()[:2] == ["-H", "content-type: application/octet-stream"]


def test_http_json_body() -> None:
    request = build_request(Api.HTTP_JSON_V2, images=3)
    tensor = json.loads(request.body)["inputs"][0]
    assert tensor["shape"] == [3, 1, 28, 28]
    assert len(tensor["data"]) == 3 * 784


def test_load_shapes_and_request_counts() -> None:
    settings = plan.BenchSettings(cores=2, duration_s=3.0)
    grpc_row, classify_row, http_row = plan.h2load_server_scenarios(settings)
    assert grpc_row.load_args() == ["-c", "4", "-m", "16"]
    assert classify_row.api is Api.GRPC_CLASSIFY
    assert http_row.load_args() == ["--h1", "-c", "64", "-m", "1"]
    assert grpc_row.in_flight == http_row.in_flight == 64
    assert [s.api for s in plan.h2load_server_scenarios(settings, with_v2=False)] == [
        Api.GRPC_CLASSIFY,
        Api.HTTP_BINARY_V2,
    ]
    # About the duration at the warm-up's rate, at least 4 calls per call in flight.
    assert planned_requests(2000.0, grpc_row) == 6000
    assert planned_requests(10.0, grpc_row) == 4 * 64
    with pytest.raises(ValueError, match="one call at a time"):
        H2loadScenario(name="x", api=Api.HTTP_BINARY_V2, connections=4, streams=2)


def test_cpu_per_reply() -> None:
    assert cpu_per_request_us(0.5, 1000) == pytest.approx(500.0)
    assert cpu_per_request_us(None, 1000) is None
    assert cpu_per_request_us(0.5, 0) is None
