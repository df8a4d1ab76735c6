"""Tracing set-up: this process's OpenTelemetry SDK, from the standard OTEL_* variables.

`start_tracing` runs once per server process (each `--workers` process sets up its own,
after spawning: an SDK's export thread does not survive a fork, and each worker's spans
carry its own `service.instance.id`). `--tracing auto` (the default) turns tracing on when
an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
OTEL_EXPORTER_OTLP_ENDPOINT) and OTEL_SDK_DISABLED is not `true`; `on` and `off` decide
alone. What the SDK reads itself, it reads from the process environment as usual:
endpoints, headers, certificates, timeouts, compression (the exporters),
OTEL_BSP_* (the batch processor), OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the
resource; `mnist-serving` is the service name when neither names one). Chosen here:

- the exporter: OTEL_TRACES_EXPORTER `otlp` (the default), `console` or `none`; OTLP over
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL, `http/protobuf` (the
  default, port 4318) or `grpc` (4317);
- the sampler: OTEL_TRACES_SAMPLER, by default `parentbased_traceidratio`: a call whose
  caller sampled it is always traced, one sent without a context at the rate
  OTEL_TRACES_SAMPLER_ARG (default 1.0); and a batch span is kept whenever one of the
  calls it links to is (it has no parent of its own to follow).

Spans leave through a BatchSpanProcessor: queued in memory (bounded; the oldest dropped
when full) and exported by its own thread, so a collector that is slow or down never
delays or fails a call. `Telemetry.shutdown` flushes what is queued, for a few seconds
at most, when the server stops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry.context import Context
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
    OTEL_TRACES_SAMPLER,
    OTEL_TRACES_SAMPLER_ARG,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes

from mnist_serving_server.core import tracing
from mnist_serving_server.core.server_info import SERVER_NAME, server_version

logger = logging.getLogger(__name__)

TRACING_ON: Final = "on"
TRACING_OFF: Final = "off"
HTTP_PROTOBUF: Final = "http/protobuf"
GRPC: Final = "grpc"
PROTOCOLS: Final = (HTTP_PROTOBUF, GRPC)
OTLP_EXPORTER: Final = "otlp"
CONSOLE_EXPORTER: Final = "console"
NO_EXPORTER: Final = "none"
DEFAULT_SAMPLER: Final = "parentbased_traceidratio"
DEFAULT_SAMPLER_RATE: Final = 1.0
RATIO_SAMPLERS: Final = ("traceidratio", "parentbased_traceidratio")
FIXED_SAMPLERS: Final[Mapping[str, Sampler]] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": ParentBased(ALWAYS_ON),
    "parentbased_always_off": ParentBased(ALWAYS_OFF),
}
SAMPLERS: Final = (*RATIO_SAMPLERS, *FIXED_SAMPLERS)
SHUTDOWN_TIMEOUT_S: Final = 3.0
"""At server stop, queued spans get this long to be exported; then they are dropped."""
UNKNOWN_SERVICE: Final = "unknown_service"
"""The SDK's service name when none is configured (a prefix)."""
TRACER_NAME: Final = "mnist_serving_server"
# The SDK's batch processor warns once per span it drops when its queue is full: with a
# collector down under load that would be a log line per call, written on the call's own
# path. Its errors (a failed export, from its own thread) still show.
QUIET_SDK_LOGGER: Final = "opentelemetry.sdk._shared_internal"


class TelemetryConfigError(ValueError):
    """An OTEL_* variable this server reads has a value it cannot use; says which."""


def tracing_wanted(mode: str, environ: Mapping[str, str]) -> bool:
    """Whether `--tracing mode` turns tracing on with these variables."""
    if mode == TRACING_ON:
        return True
    if mode == TRACING_OFF:
        return False
    if _value(environ, OTEL_SDK_DISABLED) == "true":
        return False
    if _exporter_names(environ) == [NO_EXPORTER]:
        return False
    return bool(_value(environ, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)) or bool(
        _value(environ, OTEL_EXPORTER_OTLP_ENDPOINT)
    )


def _value(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip().lower()


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    names = [name.strip() for name in _value(environ, OTEL_TRACES_EXPORTER).split(",")]
    return [name for name in names if name] or [OTLP_EXPORTER]


class SampledLinks(Sampler):
    """`base`, except that a span with no parent and a sampled link is sampled: a batch span
    (a root, linked to the calls it serves) is kept whenever one of its calls is."""

    def __init__(self, base: Sampler) -> None:
        self.base = base

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if (
            links
            and not get_current_span(parent_context).get_span_context().is_valid
            and any(link.context.trace_flags.sampled for link in links)
        ):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self.base.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"SampledLinks{{{self.base.get_description()}}}"


def sampler_from(environ: Mapping[str, str]) -> SampledLinks:
    """OTEL_TRACES_SAMPLER and _ARG, by default parentbased_traceidratio at rate 1.0."""
    name = _value(environ, OTEL_TRACES_SAMPLER) or DEFAULT_SAMPLER
    if name in FIXED_SAMPLERS:
        return SampledLinks(FIXED_SAMPLERS[name])
    if name not in RATIO_SAMPLERS:
        raise TelemetryConfigError(
            f"{OTEL_TRACES_SAMPLER} must be one of {', '.join(SAMPLERS)}, got {name!r}"
        )
    text = _value(environ, OTEL_TRACES_SAMPLER_ARG)
    try:
        rate = float(text) if text else DEFAULT_SAMPLER_RATE
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise TelemetryConfigError(
            f"{OTEL_TRACES_SAMPLER_ARG} must be a rate in [0, 1] for {name}, got {text!r}"
        )
    ratio = TraceIdRatioBased(rate)
    return SampledLinks(ratio if name == "traceidratio" else ParentBased(ratio))


def exporters_from(environ: Mapping[str, str]) -> list[SpanExporter]:
    """OTEL_TRACES_EXPORTER's exporters ([] for `none`), OTLP over the chosen protocol."""
    exporters: list[SpanExporter] = []
    for name in _exporter_names(environ):
        if name == OTLP_EXPORTER:
            exporters.append(_otlp_exporter(environ))
        elif name == CONSOLE_EXPORTER:
            exporters.append(ConsoleSpanExporter())
        elif name != NO_EXPORTER:
            raise TelemetryConfigError(
                f"{OTEL_TRACES_EXPORTER} takes {OTLP_EXPORTER}, {CONSOLE_EXPORTER} or "
                f"{NO_EXPORTER}, got {name!r}"
            )
    return exporters


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = (
        _value(environ, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
        or _value(environ, OTEL_EXPORTER_OTLP_PROTOCOL)
        or HTTP_PROTOBUF
    )
    # Imported when chosen: each exporter brings its own transport (requests, grpcio).
    if protocol == HTTP_PROTOBUF:
        from mnist_serving_server.otlp_spans import OtlpHttpSpanExporter

        return OtlpHttpSpanExporter()
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    variable = (
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
        if _value(environ, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
        else OTEL_EXPORTER_OTLP_PROTOCOL
    )
    raise TelemetryConfigError(
        f"{variable} must be {' or '.join(PROTOCOLS)} (http/json is not supported), "
        f"got {protocol!r}"
    )


def service_resource() -> Resource:
    """The SDK's resource (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, the process's
    instance id), with this server's name and version where those set none."""
    detected = Resource.create()
    defaults: dict[str, str] = {}
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith(UNKNOWN_SERVICE):
        defaults[SERVICE_NAME] = SERVER_NAME
    if SERVICE_VERSION not in detected.attributes:
        defaults[SERVICE_VERSION] = server_version()
    return detected.merge(Resource(defaults)) if defaults else detected


class Telemetry:
    """This process's tracing, on: the SDK's provider, installed as the core's tracer."""

    def __init__(self, provider: TracerProvider, sampler: Sampler, exporters: int) -> None:
        self.provider = provider
        self.sampler = sampler
        self.exporters = exporters

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Stop tracing and export what is queued, for `timeout_s` at most (a blocking call:
        run it off the event loop); False when the export did not finish in time."""
        tracing.install(None)
        finished = threading.Event()

        def close() -> None:
            try:
                self.provider.shutdown()
            except Exception:  # the SDK's own failure must not fail the server's stop
                logger.exception("tracing shutdown failed")
            finally:
                finished.set()

        # A daemon thread: an export stuck on a dead collector must not hold the exit.
        threading.Thread(target=close, name="mnist-otel-shutdown", daemon=True).start()
        if finished.wait(timeout_s):
            return True
        logger.warning(
            "tracing: spans still queued after %.1f s at shutdown are dropped", timeout_s
        )
        return False


def start_tracing(mode: str, environ: Mapping[str, str]) -> Telemetry | None:
    """Set up tracing for this process as `--tracing mode` and the variables say; None when
    it stays off. Raises TelemetryConfigError for a variable it cannot use."""
    if not tracing_wanted(mode, environ):
        return None
    sampler = sampler_from(environ)
    exporters = exporters_from(environ)
    provider = TracerProvider(sampler=sampler, resource=service_resource(), shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    logging.getLogger(QUIET_SDK_LOGGER).setLevel(logging.ERROR)
    tracing.install(provider.get_tracer(TRACER_NAME, server_version()))
    return Telemetry(provider, sampler, len(exporters))
