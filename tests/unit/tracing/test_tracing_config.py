"""When tracing is on, and how it samples and exports: `--tracing` and the OTEL_* variables."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    set_span_in_context,
)

from mnist_serving_server.config import ConfigError, ServerConfig, load_config
from mnist_serving_server.core import tracing
from mnist_serving_server.otlp_spans import OtlpHttpSpanExporter as HttpExporter
from mnist_serving_server.telemetry import (
    TelemetryConfigError,
    exporters_from,
    sampler_from,
    service_resource,
    start_tracing,
    tracing_wanted,
)

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
TRACES_ENDPOINT = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}
# A trace id whose low 64 bits are the largest: sampled only at rate 1.
UNLIKELY_TRACE_ID = (1 << 128) - 1


def remote_parent(*, sampled: bool) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=flags)


def decision(
    environ: dict[str, str], parent: SpanContext | None, links: tuple[Link, ...] = ()
) -> Decision:
    context = None if parent is None else set_span_in_context(NonRecordingSpan(parent))
    result = sampler_from(environ).should_sample(context, UNLIKELY_TRACE_ID, "span", links=links)
    return result.decision


def test_the_setting_is_auto_by_default_and_read_from_its_flag_and_variable() -> None:
    assert ServerConfig().tracing == "auto"
    assert load_config(["--tracing", "on"], {}).tracing == "on"
    assert load_config([], {"MNIST_SERVING_TRACING": "OFF"}).tracing == "off"
    with pytest.raises(ConfigError, match=r"--tracing \(MNIST_SERVING_TRACING\) must be one of"):
        load_config([], {"MNIST_SERVING_TRACING": "sometimes"})


@pytest.mark.parametrize(
    ("mode", "environ", "wanted"),
    [
        ("auto", {}, False),
        ("auto", ENDPOINT, True),
        ("auto", TRACES_ENDPOINT, True),
        ("auto", {"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ("auto", {**ENDPOINT, "OTEL_SDK_DISABLED": "TRUE"}, False),
        ("auto", {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ("on", {}, True),
        ("off", TRACES_ENDPOINT, False),
    ],
)
def test_auto_traces_when_an_otlp_endpoint_is_configured(
    mode: str, environ: dict[str, str], wanted: bool
) -> None:
    assert tracing_wanted(mode, environ) is wanted


def test_tracing_off_installs_nothing() -> None:
    assert start_tracing("auto", {}) is None
    assert tracing.tracer is None


def test_tracing_on_installs_the_core_tracer_until_shutdown() -> None:
    telemetry = start_tracing("on", {"OTEL_TRACES_EXPORTER": "none"})
    assert telemetry is not None
    assert tracing.tracer is not None
    assert telemetry.exporters == 0
    assert telemetry.shutdown(timeout_s=5.0)
    assert tracing.tracer is None


def test_by_default_a_sampled_caller_is_always_traced_and_the_rest_at_the_rate() -> None:
    assert "ParentBased" in sampler_from({}).get_description()
    assert decision({}, None) is Decision.RECORD_AND_SAMPLE  # rate 1.0 by default
    at_zero = {"OTEL_TRACES_SAMPLER_ARG": "0"}
    assert decision(at_zero, None) is Decision.DROP
    assert decision(at_zero, remote_parent(sampled=True)) is Decision.RECORD_AND_SAMPLE
    assert decision({}, remote_parent(sampled=False)) is Decision.DROP


def test_a_root_span_linked_to_a_sampled_call_is_sampled_whatever_the_rate() -> None:
    """A batch span: it has no parent, but it is kept whenever one of its calls is."""
    at_zero = {"OTEL_TRACES_SAMPLER_ARG": "0"}
    sampled, unsampled = remote_parent(sampled=True), remote_parent(sampled=False)
    assert decision(at_zero, None, (Link(unsampled), Link(sampled))) is Decision.RECORD_AND_SAMPLE
    assert decision(at_zero, None, (Link(unsampled),)) is Decision.DROP


@pytest.mark.parametrize(
    ("name", "root_decision"),
    [
        ("always_on", Decision.RECORD_AND_SAMPLE),
        ("always_off", Decision.DROP),
        ("parentbased_always_on", Decision.RECORD_AND_SAMPLE),
        ("parentbased_always_off", Decision.DROP),
        ("traceidratio", Decision.RECORD_AND_SAMPLE),
        ("PARENTBASED_TRACEIDRATIO", Decision.RECORD_AND_SAMPLE),
    ],
)
def test_every_standard_sampler_name_is_understood(name: str, root_decision: Decision) -> None:
    assert decision({"OTEL_TRACES_SAMPLER": name}, None) is root_decision


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
    ],
)
def test_a_sampler_setting_that_cannot_be_used_is_named(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(TelemetryConfigError, match=named):
        sampler_from(environ)


@pytest.mark.parametrize(
    ("environ", "kinds"),
    [
        ({}, [HttpExporter]),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, [GrpcExporter]),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            [HttpExporter],
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, [HttpExporter, ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ],
)
def test_the_exporter_follows_the_protocol_http_protobuf_by_default(
    environ: dict[str, str], kinds: list[type]
) -> None:
    exporters = exporters_from(environ)
    assert [type(exporter) for exporter in exporters] == kinds
    for exporter in exporters:
        exporter.shutdown()


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "carrier-pigeon"}, "TRACES_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ],
)
def test_an_exporter_setting_that_cannot_be_used_is_named(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(TelemetryConfigError, match=named):
        exporters_from(environ)


def test_the_service_is_named_mnist_serving_unless_the_variables_name_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    resource = service_resource().attributes
    assert resource["service.name"] == "mnist-serving"
    assert resource["service.version"]
    assert resource["service.instance.id"]
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,team=ml")
    assert service_resource().attributes["service.name"] == "from-attributes"
    assert service_resource().attributes["team"] == "ml"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-name")
    assert service_resource().attributes["service.name"] == "from-name"
