"""Server CPU per traced call: this server's OTLP writer against the SDK's OTLP/HTTP exporter.

    python -m bench.otlp_writer_cost [--rounds 2] [--duration 8] [--ratios 0.01,1]
    python -m bench.otlp_writer_cost --encode     # in process: CPU per span of each encoder

The same server, `--tracing on --workers 1`, exporting to the bench's discarding OTLP/HTTP
sink (bench/otlp_sink.py), started once with the exporter `telemetry.py` picks for
`http/protobuf` (`otlp_spans.OtlpHttpSpanExporter`, when the tree has it) and once with
the SDK's own `OTLPSpanExporter` in its place (`--serve-sdk`, this module as the server's
launcher). Both are driven by h2load exactly like `make bench`'s single-image V2 row (4
connections x 16 streams, bench/h2load.py) at each sampling rate (`parentbased_
traceidratio`, OTEL_TRACES_SAMPLER_ARG), alternating round after round; each row gives
the server's process CPU per OK reply. A third server, tracing off, is the floor.

`--encode` measures what the two differ in, in this process, without the noise of a
loaded machine: CPU per span of the writer's `SpanEncoder` and of the SDK's
`encode_spans(...).SerializePartialToString()` on batches of 512 spans shaped like one
traced gRPC call's (its server span, queue span, batch span and `onnxruntime.run` span).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource

from bench import h2load, h2load_compare, plan
from bench.otlp_sink import DiscardingCollector
from bench.processes import ServiceProcess, python_module_command
from bench.scenarios import Api

REPO_ROOT = Path(__file__).resolve().parent.parent
WRITER = "writer"
SDK = "sdk"
OFF = "off"
SERVER_ARGS = (
    "--model-repository", str(REPO_ROOT / "model_repository"),
    "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
    "--metrics-host", "127.0.0.1", "--metrics-port", "0",
    "--log-level", "WARNING", "--workers", "1",
)  # fmt: skip


def serve_with_sdk_exporter(argv: list[str]) -> int:
    """Run the server with the SDK's OTLP/HTTP exporter where telemetry.py takes ours."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from mnist_serving_server import telemetry
    from mnist_serving_server.__main__ import main

    def sdk_exporter(environ: Any) -> Any:
        return OTLPSpanExporter()

    telemetry._otlp_exporter = sdk_exporter
    return main(argv)


def server(label: str, ratio: float, sink: DiscardingCollector, workdir: Path) -> ServiceProcess:
    env = {**os.environ, **sink.exporter_environment()}
    env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
    env["OTEL_TRACES_SAMPLER_ARG"] = str(ratio)
    if label == OFF:
        command = python_module_command("mnist_serving_server", *SERVER_ARGS)
    else:
        traced = (*SERVER_ARGS, "--tracing", "on")
        command = (
            python_module_command("bench.otlp_writer_cost", "--serve-sdk", *traced)
            if label == SDK
            else python_module_command("mnist_serving_server", *traced)
        )
    return ServiceProcess(
        command, log_path=workdir / f"{label}-{ratio}.log", ready_timeout_s=120.0, env=env
    )


def call_spans(calls: int) -> list[Any]:
    """The spans of `calls` traced gRPC calls, one call per batch, as the server makes them."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mnist_serving_server.core import tracing

    keep = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "mnist-serving"}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("mnist_serving_server")
    model = {tracing.MODEL_NAME: "mnist", tracing.MODEL_VERSION: "1"}
    for index in range(calls):
        server = tracer.start_span(
            "inference.GRPCInferenceService/ModelInfer",
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
                        "rpc.method": "ModelInfer", tracing.REQUEST_IMAGES: 1},
        )  # fmt: skip
        context = server.get_span_context()
        batch = tracer.start_span(
            tracing.BATCH_SPAN,
            links=[trace.Link(context)],
            attributes={**model, tracing.PROVIDER: "CPUExecutionProvider",
                        tracing.BATCH_SIZE: 1, tracing.BATCH_REQUESTS: 1},
        )  # fmt: skip
        tracer.start_span(
            tracing.QUEUE_SPAN,
            context=trace.set_span_in_context(server),
            links=[trace.Link(batch.get_span_context())],
        ).end()
        tracer.start_span(tracing.RUNTIME_SPAN, context=trace.set_span_in_context(batch)).end()
        batch.end()
        server.set_attributes({**model, "rpc.grpc.status_code": 0, tracing.REQUEST_ID: str(index)})
        server.end()
    return list(keep.get_finished_spans())


def encode_cost(repeats: int = 40) -> dict[str, float]:
    """CPU µs per span of each encoder, batches of 512 spans (the batch processor's size)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    spans = call_spans(128)  # 4 spans a call: 512
    encoders: dict[str, Any] = {
        SDK: lambda: encode_spans(spans).SerializePartialToString(),
    }
    try:
        from mnist_serving_server.otlp_spans import SpanEncoder

        writer = SpanEncoder()
        encoders[WRITER] = lambda: writer.encode(spans)
    except ImportError:  # a tree without the writer
        pass
    best: dict[str, float] = {}
    for _ in range(5):  # interleaved rounds; the best of each (the least disturbed)
        for label, encode in encoders.items():
            started = time.process_time()
            for _ in range(repeats):
                encode()
            per_span = (time.process_time() - started) / repeats / len(spans) * 1e6
            best[label] = min(best.get(label, per_span), per_span)
    return best


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-sdk":
        return serve_with_sdk_exporter(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "--encode":
        print(json.dumps({"cpu_us_per_span": encode_cost()}, indent=2))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--ratios", default="0.01,1")
    args = parser.parse_args()
    h2load.require_h2load()
    settings = plan.BenchSettings(duration_s=args.duration, warmup_s=args.warmup)
    scenario = plan.h2load_scenario(settings, plan.H2LOAD_V2_NAME, Api.GRPC_V2)
    ratios = [float(value) for value in args.ratios.split(",")]
    cells = [(OFF, 0.0)] + [(label, r) for r in ratios for label in (WRITER, SDK)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, DiscardingCollector() as sink:
        for round_index in range(args.rounds):
            for label, ratio in cells:
                exports = sink.exports
                with server(label, ratio, sink, Path(tmp)) as process:
                    row = h2load_compare.measure(process, label, scenario)
                row.update(round=round_index, ratio=ratio, exports=sink.exports - exports)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {
        f"{label}@{ratio:g}": statistics.median(
            row["server_cpu_us_per_request"]
            for row in rows
            if row["server"] == label and row["ratio"] == ratio
        )
        for label, ratio in cells
    }
    print(json.dumps({"server_cpu_us_per_request_median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
