"""Traces from a real server process to a real OTLP/HTTP endpoint (tests/otlp_collector.py).

The server is started as a user starts it, pointed at the collector by the standard
variables, at sampler rate 0 (`OTEL_TRACES_SAMPLER_ARG=0`, the default sampler being
parent-based): only a call whose caller sent a sampled `traceparent` is traced. Each test
sends its calls with a trace id of its own and waits, up to a deadline, for that trace's
spans: the server exports in batches, off the request path.

The gRPC tests run against every front in GRPC_FRONTS; `--max-batch-size 4` with a long
queue delay makes four concurrent one-image calls one batch, exactly.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, use_span

from mnist_serving_client import Client
from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from tests.integration.http.http_support import png_of
from tests.integration.v2.v2_helpers import output_array, raw_infer_request, reference_outputs
from tests.otlp_collector import (
    SPAN_KIND_INTERNAL,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    CollectedSpan,
    Link,
    OtlpCollector,
)
from tests.support.server_process import ServerProcess, start_server_process

pytestmark = pytest.mark.integration

# The gRPC fronts these tests run against (--grpc-front): each reads the caller's context
# from the call's metadata on its own (native_front.py, and the grpc.aio servicers).
GRPC_FRONTS = ["native", "grpcio"]
BATCH_SIZE = 4
QUEUE_DELAY_MS = "200"
SERVICE_NAME = "mnist-serving-tracing-test"
CALL_TIMEOUT_S = 30.0
# An export that blocked a call would hold it for the exporter's timeout (10 s by default).
SLOW_CALL_S = 5.0
REFUSED_CALLS = 20

MODEL_INFER_SPAN = "inference.GRPCInferenceService/ModelInfer"
CLASSIFY_SPAN = "mnist_serving.v1.Classifier/Classify"
HTTP_INFER_SPAN = "POST /v2/models/{model_name}/infer"
MODEL = "mnist"
VERSION = "1"
PROBABILITIES = "probabilities"
NOT_FOUND = 5
INVALID_ARGUMENT = 3


@dataclass(frozen=True)
class Caller:
    """The span of a traced caller: the W3C context it sends the server."""

    trace_id: str
    span_id: str

    @classmethod
    def new(cls) -> Caller:
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", self.traceparent), ("tracestate", "vendor=test"))


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    with OtlpCollector() as running:
        yield running


@pytest.fixture(scope="module", params=GRPC_FRONTS)
def traced_server(
    request: pytest.FixtureRequest, model_repository: Path, collector: OtlpCollector
) -> Iterator[ServerProcess]:
    environment = collector.environment(OTEL_TRACES_SAMPLER_ARG="0", OTEL_SERVICE_NAME=SERVICE_NAME)
    with start_server_process(
        model_repository,
        "--grpc-front",
        request.param,
        "--workers",
        "1",
        "--max-batch-size",
        str(BATCH_SIZE),
        "--max-queue-delay-ms",
        QUEUE_DELAY_MS,
        "--log-format",
        "json",
        env=environment,
    ) as process:
        yield process
        assert process.stop() == 0


@pytest.fixture(scope="module")
def images(sample_digits: tuple[Any, Any]) -> np.ndarray:
    digits: np.ndarray = sample_digits[0][:BATCH_SIZE]
    return digits


def model_infer(
    target: str, request: pb.ModelInferRequest, caller: Caller | None = None
) -> pb.ModelInferResponse:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = None if caller is None else caller.metadata
        reply: pb.ModelInferResponse = stub.ModelInfer(
            request, metadata=metadata, timeout=CALL_TIMEOUT_S
        )
        return reply


def http_infer(
    process: ServerProcess, body: bytes, caller: Caller | None
) -> tuple[int, dict[str, str], bytes]:
    """POST /v2/models/mnist/infer: (status, headers (lower-case names), body)."""
    headers = {"Content-Type": "application/json"}
    if caller is not None:
        headers["traceparent"] = caller.traceparent
    request = urllib.request.Request(
        f"http://{process.http_target}/v2/models/{MODEL}/infer",
        data=body,
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:
            return response.status, _lower(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers), error.read()


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def json_infer_body(image: np.ndarray, request_id: str) -> bytes:
    return json.dumps(
        {
            "id": request_id,
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [1, 28, 28],
                    "data": image.ravel().tolist(),
                }
            ],
        }
    ).encode()


def only(spans: list[CollectedSpan], name: str) -> CollectedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r}: {found}"
    return found[0]


def batch_serving(collector: OtlpCollector, server: CollectedSpan) -> CollectedSpan:
    """The batch span that links to `server` (the call's server span)."""
    link = Link(server.trace_id, server.span_id)

    def linked(spans: list[CollectedSpan]) -> bool:
        return any(span.name == "batch" and link in span.links for span in spans)

    spans = collector.wait_for(linked, f"a batch span linked to {server.name}")
    return next(span for span in spans if span.name == "batch" and link in span.links)


def assert_model_attributes(span: CollectedSpan) -> None:
    assert span.attributes["mnist_serving.model.name"] == MODEL
    assert span.attributes["mnist_serving.model.version"] == VERSION


# --- gRPC -------------------------------------------------------------------------------


def test_a_grpc_model_infer_joins_the_callers_trace(
    traced_server: ServerProcess, collector: OtlpCollector, images: np.ndarray
) -> None:
    caller = Caller.new()
    request = raw_infer_request(images[:1], request_id="grpc-traced")
    model_infer(traced_server.target, request, caller)

    spans = collector.wait_for_trace(caller.trace_id, {MODEL_INFER_SPAN, "queue"})
    server = only(spans, MODEL_INFER_SPAN)
    assert server.parent_span_id == caller.span_id
    assert server.kind == SPAN_KIND_SERVER
    assert server.status_code != STATUS_ERROR
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert server.attributes["rpc.method"] == "ModelInfer"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["mnist_serving.request.id"] == "grpc-traced"
    assert server.attributes["mnist_serving.request.images"] == 1
    assert_model_attributes(server)
    assert server.resource["service.name"] == SERVICE_NAME
    assert "decode" not in {span.name for span in spans}  # raw pixels: nothing to decode

    queue = only(spans, "queue")
    assert queue.parent_span_id == server.span_id
    assert server.start_ns <= queue.start_ns <= queue.end_ns <= server.end_ns

    batch = batch_serving(collector, server)
    assert batch.parent_span_id == ""  # a root: a batch has many parents, linked
    assert batch.kind == SPAN_KIND_INTERNAL
    assert batch.attributes["mnist_serving.batch.size"] == 1
    assert batch.attributes["mnist_serving.provider"] == "CPUExecutionProvider"
    assert_model_attributes(batch)
    assert Link(batch.trace_id, batch.span_id) in queue.links
    run = collector.wait_for_trace(batch.trace_id, {"onnxruntime.run"})
    assert only(run, "onnxruntime.run").parent_span_id == batch.span_id


def test_a_traced_classify_of_a_png_has_a_decode_span(
    traced_server: ServerProcess, collector: OtlpCollector, images: np.ndarray
) -> None:
    caller = Caller.new()
    request = classifier_pb2.ClassifyRequest(
        images=[classifier_pb2.Image(encoded=png_of(images[0]))], request_id="png"
    )
    with grpc.insecure_channel(traced_server.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        reply = stub.Classify(request, metadata=caller.metadata, timeout=CALL_TIMEOUT_S)
    assert len(reply.predictions) == 1

    spans = collector.wait_for_trace(caller.trace_id, {CLASSIFY_SPAN, "decode", "queue"})
    server = only(spans, CLASSIFY_SPAN)
    assert server.parent_span_id == caller.span_id
    assert server.attributes["rpc.service"] == "mnist_serving.v1.Classifier"
    assert server.attributes["mnist_serving.request.images"] == 1
    assert only(spans, "decode").parent_span_id == server.span_id
    assert only(spans, "queue").parent_span_id == server.span_id


def test_the_client_sdk_sends_the_current_span_as_the_calls_parent(
    traced_server: ServerProcess, collector: OtlpCollector, images: np.ndarray
) -> None:
    caller = Caller.new()
    current = SpanContext(
        int(caller.trace_id, 16), int(caller.span_id, 16), False, TraceFlags(TraceFlags.SAMPLED)
    )
    with Client(traced_server.target) as client, use_span(NonRecordingSpan(current)):
        assert len(client.classify(images[:2])) == 2
    server = only(collector.wait_for_trace(caller.trace_id, {CLASSIFY_SPAN}), CLASSIFY_SPAN)
    assert server.parent_span_id == caller.span_id
    assert server.attributes["mnist_serving.request.images"] == 2


def test_a_call_without_context_at_rate_zero_makes_no_span(
    traced_server: ServerProcess, collector: OtlpCollector, images: np.ndarray
) -> None:
    model_infer(traced_server.target, raw_infer_request(images[:1], request_id="unsampled"))
    # Spans leave in the order they end: once a later call's are in, the first's would be.
    marker = Caller.new()
    model_infer(traced_server.target, raw_infer_request(images[:1]), marker)
    spans = collector.wait_for_trace(marker.trace_id, {MODEL_INFER_SPAN, "queue"})
    assert only(spans, MODEL_INFER_SPAN).parent_span_id == marker.span_id
    batch_serving(collector, only(spans, MODEL_INFER_SPAN))

    everything = collector.spans()
    assert not [
        span for span in everything if span.kind == SPAN_KIND_SERVER and not span.parent_span_id
    ]
    assert all(span.links for span in everything if span.name == "batch")
    assert "unsampled" not in {
        span.attributes.get("mnist_serving.request.id") for span in everything
    }


@pytest.mark.parametrize(
    ("model", "shape", "code", "kind"),
    [
        ("no-such-model", [1, 28, 28], grpc.StatusCode.NOT_FOUND, "ModelNotFoundError"),
        (MODEL, [1, 27, 28], grpc.StatusCode.INVALID_ARGUMENT, "InvalidInputError"),
    ],
)
def test_a_failed_grpc_call_has_an_error_span(
    traced_server: ServerProcess,
    collector: OtlpCollector,
    images: np.ndarray,
    model: str,
    shape: list[int],
    code: grpc.StatusCode,
    kind: str,
) -> None:
    caller = Caller.new()
    request = pb.ModelInferRequest(model_name=model, id="failing")
    request.inputs.add(name="pixels", datatype="UINT8", shape=shape)
    request.raw_input_contents.append(images[0].tobytes())
    with pytest.raises(grpc.RpcError) as raised:
        model_infer(traced_server.target, request, caller)
    assert raised.value.code() == code

    server = only(collector.wait_for_trace(caller.trace_id, {MODEL_INFER_SPAN}), MODEL_INFER_SPAN)
    assert server.status_code == STATUS_ERROR
    assert server.attributes["error.type"] == kind
    assert server.attributes["rpc.grpc.status_code"] == code.value[0]
    # The status says the kind, never the message (which can quote the request).
    assert server.status_message == kind


def test_calls_that_share_a_batch_are_linked_from_its_span(
    traced_server: ServerProcess, collector: OtlpCollector, images: np.ndarray
) -> None:
    callers = [Caller.new() for _ in range(BATCH_SIZE)]
    with grpc.insecure_channel(traced_server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        pending = [
            stub.ModelInfer.future(
                raw_infer_request(images[index : index + 1], request_id=f"batched-{index}"),
                metadata=caller.metadata,
                timeout=CALL_TIMEOUT_S,
            )
            for index, caller in enumerate(callers)
        ]
        for call in pending:
            call.result()

    servers = [
        only(collector.wait_for_trace(caller.trace_id, {MODEL_INFER_SPAN}), MODEL_INFER_SPAN)
        for caller in callers
    ]
    batch = batch_serving(collector, servers[0])
    assert set(batch.links) == {Link(server.trace_id, server.span_id) for server in servers}
    assert batch.attributes["mnist_serving.batch.size"] == BATCH_SIZE
    assert batch.attributes["mnist_serving.batch.requests"] == BATCH_SIZE
    for caller, server in zip(callers, servers, strict=True):
        queue = only(collector.wait_for_trace(caller.trace_id, {"queue"}), "queue")
        assert queue.parent_span_id == server.span_id
        assert Link(batch.trace_id, batch.span_id) in queue.links


# --- HTTP -------------------------------------------------------------------------------


def test_an_http_infer_joins_the_callers_trace_and_answers_its_traceparent(
    traced_server: ServerProcess, collector: OtlpCollector, images: np.ndarray
) -> None:
    caller = Caller.new()
    status, headers, _ = http_infer(
        traced_server, json_infer_body(images[0], "http-traced"), caller
    )
    assert status == 200

    spans = collector.wait_for_trace(caller.trace_id, {HTTP_INFER_SPAN, "queue"})
    server = only(spans, HTTP_INFER_SPAN)
    assert server.parent_span_id == caller.span_id
    assert server.kind == SPAN_KIND_SERVER
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/v2/models/{model_name}/infer"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"] == f"/v2/models/{MODEL}/infer"
    assert server.attributes["mnist_serving.request.id"] == "http-traced"
    assert server.attributes["mnist_serving.request.images"] == 1
    assert_model_attributes(server)
    assert headers["traceparent"] == f"00-{caller.trace_id}-{server.span_id}-01"
    assert only(spans, "queue").parent_span_id == server.span_id
    batch_serving(collector, server)


def test_a_failed_http_call_has_an_error_span_and_an_untraced_one_no_traceparent(
    traced_server: ServerProcess, collector: OtlpCollector, images: np.ndarray
) -> None:
    caller = Caller.new()
    status, headers, _ = http_infer(traced_server, b'{"inputs": [', caller)
    assert status == 400
    assert headers["traceparent"].startswith(f"00-{caller.trace_id}-")
    server = only(collector.wait_for_trace(caller.trace_id, {HTTP_INFER_SPAN}), HTTP_INFER_SPAN)
    assert server.status_code == STATUS_ERROR
    assert server.attributes["http.response.status_code"] == 400
    assert server.attributes["error.type"] == "InvalidInputError"

    status, headers, _ = http_infer(traced_server, json_infer_body(images[0], ""), None)
    assert status == 200
    assert "traceparent" not in headers  # not sampled: no span was made


# --- processes and a collector that is down ---------------------------------------------


def test_each_worker_process_exports_its_own_spans(
    model_repository: Path, collector: OtlpCollector, images: np.ndarray
) -> None:
    callers = [Caller.new() for _ in range(6)]
    with start_server_process(
        model_repository, "--workers", "2", env=collector.environment()
    ) as process:
        # A connection per call: the kernel spreads them over both workers (SO_REUSEPORT).
        for caller in callers:
            status, _, _ = http_infer(process, json_infer_body(images[0], ""), caller)
            assert status == 200
        servers = [
            only(collector.wait_for_trace(caller.trace_id, {HTTP_INFER_SPAN}), HTTP_INFER_SPAN)
            for caller in callers
        ]
        assert process.stop() == 0
    assert all(server.resource["service.name"] == "mnist-serving" for server in servers)
    assert all(server.resource.get("service.instance.id") for server in servers)


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("front", GRPC_FRONTS)
def test_a_collector_that_refuses_connections_changes_no_response(
    model_repository: Path, images: np.ndarray, front: str
) -> None:
    environment = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{closed_port()}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_TRACES_SAMPLER": "always_on",  # every call traced: the most spans to drop
    }
    session = ort.InferenceSession(
        str(model_repository / MODEL / VERSION / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = reference_outputs(session, images)[PROBABILITIES]
    with start_server_process(
        model_repository, "--grpc-front", front, "--workers", "1", env=environment
    ) as process:
        slowest = 0.0
        for index in range(REFUSED_CALLS):
            image = images[index % len(images)]
            started = time.monotonic()
            reply = model_infer(process.target, raw_infer_request(image[None]), Caller.new())
            status, _, body = http_infer(process, json_infer_body(image, ""), Caller.new())
            slowest = max(slowest, time.monotonic() - started)
            np.testing.assert_allclose(
                output_array(reply, PROBABILITIES)[0], expected[index % len(images)], atol=1e-6
            )
            assert status == 200
            answer = json.loads(body)
            outputs = {output["name"]: output["data"] for output in answer["outputs"]}
            np.testing.assert_allclose(
                outputs[PROBABILITIES], expected[index % len(images)], atol=1e-6
            )
        assert slowest < SLOW_CALL_S
        assert process.stop() == 0
