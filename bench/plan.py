"""Which scenarios `make bench` runs, and their names (the report finds them by name)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.scenarios import (
    DEFAULT_DURATION_S,
    DEFAULT_WARMUP_S,
    Api,
    H2loadScenario,
    Kind,
    Mode,
    Scenario,
)

UNARY_CONCURRENCIES = (1, 16, 64)
# The load at which the performance targets compare the server with its ceilings.
REFERENCE_CONCURRENCY = 64
STREAMS = 4
STREAM_WINDOW = 16  # 4 streams x 16 messages = 64 in flight, as unary at 64
BATCH_IMAGES = 64
BATCH_CONCURRENCY = 4  # enough 64-image requests in flight to keep the runtime busy
OPEN_LOOP_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0)
QUICK_OPEN_LOOP_FRACTIONS = (0.5, 0.9)
QUICK_DURATION_S = 2.0
QUICK_WARMUP_S = 0.5
# Below this the open-loop sweep is not worth running (the server is broken or absent).
MIN_OPEN_LOOP_RATE = 10.0
# h2load's unary rows: gRPC as 4 connections x 16 streams (64 in flight, multiplexed as a
# gRPC client does), HTTP/1.1 as 64 connections (64 in flight).
H2LOAD_GRPC_CONNECTIONS = 4
H2LOAD_GRPC_STREAMS = 16
H2LOAD_HTTP_CONNECTIONS = 64


def unary_name(concurrency: int) -> str:
    return f"unary c={concurrency}"


REFERENCE_UNARY = unary_name(REFERENCE_CONCURRENCY)
STREAM_NAME = f"stream {STREAMS}x{STREAM_WINDOW}"
BATCH_NAME = f"{BATCH_IMAGES}-image c={BATCH_CONCURRENCY}"
V2_NAME = f"v2 unary c={REFERENCE_CONCURRENCY}"
OPEN_LOOP_PREFIX = "open-loop"
H2LOAD_GRPC_LOAD = f"{H2LOAD_GRPC_CONNECTIONS}x{H2LOAD_GRPC_STREAMS}"
H2LOAD_V2_NAME = f"h2load v2 {H2LOAD_GRPC_LOAD}"
H2LOAD_CLASSIFY_NAME = f"h2load classify {H2LOAD_GRPC_LOAD}"
H2LOAD_HTTP_NAME = f"h2load http binary v2 c={H2LOAD_HTTP_CONNECTIONS}"


def open_loop_name(fraction: float) -> str:
    return f"{OPEN_LOOP_PREFIX} {fraction:.0%}"


@dataclass(frozen=True)
class BenchSettings:
    """The knobs of one `make bench` run."""

    duration_s: float = DEFAULT_DURATION_S
    warmup_s: float = DEFAULT_WARMUP_S
    open_loop_fractions: tuple[float, ...] = OPEN_LOOP_FRACTIONS
    # Client processes per scenario; 0 = one per core (never more than in-flight requests).
    client_processes: int = 0
    cores: int = 1
    model_name: str = "mnist"

    @classmethod
    def quick(cls, **overrides: object) -> BenchSettings:
        values: dict[str, object] = {
            "duration_s": QUICK_DURATION_S,
            "warmup_s": QUICK_WARMUP_S,
            "open_loop_fractions": QUICK_OPEN_LOOP_FRACTIONS,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def processes_for(self, in_flight: int) -> int:
        wanted = self.client_processes or self.cores
        return max(1, min(wanted, in_flight))


def _scenario(
    settings: BenchSettings,
    name: str,
    kind: Kind,
    *,
    mode: Mode = Mode.CLOSED,
    concurrency: int = 1,
    window: int = 1,
    images_per_request: int = 1,
    rate: float = 0.0,
    verify_replies: bool = True,
) -> Scenario:
    in_flight = settings.cores if mode is Mode.OPEN else concurrency * window
    return Scenario(
        name=name,
        kind=kind,
        mode=mode,
        concurrency=concurrency,
        window=window,
        images_per_request=images_per_request,
        rate=rate,
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        client_processes=settings.processes_for(in_flight),
        model_name=settings.model_name,
        verify_replies=verify_replies,
    )


def echo_scenarios(settings: BenchSettings) -> list[Scenario]:
    """The RPC ceiling: the same unary and stream loads against the echo server."""
    unary = [
        _scenario(settings, unary_name(c), Kind.CLASSIFY_UNARY, concurrency=c, verify_replies=False)
        for c in UNARY_CONCURRENCIES
    ]
    stream = _scenario(
        settings,
        STREAM_NAME,
        Kind.CLASSIFY_STREAM,
        concurrency=STREAMS,
        window=STREAM_WINDOW,
        verify_replies=False,
    )
    return [*unary, stream]


def server_scenarios(settings: BenchSettings, *, with_v2: bool = True) -> list[Scenario]:
    """The closed-loop scenarios run against each server configuration."""
    scenarios = [
        _scenario(settings, unary_name(c), Kind.CLASSIFY_UNARY, concurrency=c)
        for c in UNARY_CONCURRENCIES
    ]
    scenarios.append(
        _scenario(
            settings, STREAM_NAME, Kind.CLASSIFY_STREAM, concurrency=STREAMS, window=STREAM_WINDOW
        )
    )
    scenarios.append(
        _scenario(
            settings,
            BATCH_NAME,
            Kind.CLASSIFY_UNARY,
            concurrency=BATCH_CONCURRENCY,
            images_per_request=BATCH_IMAGES,
        )
    )
    if with_v2:
        scenarios.append(
            _scenario(settings, V2_NAME, Kind.V2_UNARY, concurrency=REFERENCE_CONCURRENCY)
        )
    return scenarios


def open_loop_scenarios(settings: BenchSettings, peak_requests_per_s: float) -> list[Scenario]:
    """Fixed-rate single-image unary loads at fractions of the closed-loop peak."""
    scenarios = []
    for fraction in settings.open_loop_fractions:
        rate = peak_requests_per_s * fraction
        if rate < MIN_OPEN_LOOP_RATE:
            continue
        scenarios.append(
            _scenario(
                settings,
                open_loop_name(fraction),
                Kind.CLASSIFY_UNARY,
                mode=Mode.OPEN,
                rate=round(rate, 1),
            )
        )
    return scenarios


def h2load_scenario(settings: BenchSettings, name: str, api: Api) -> H2loadScenario:
    """A single-image row of `api` at the bench's load: 4 x 16 for gRPC, 64 for HTTP/1.1."""
    grpc = api.is_grpc
    return H2loadScenario(
        name=name,
        api=api,
        connections=H2LOAD_GRPC_CONNECTIONS if grpc else H2LOAD_HTTP_CONNECTIONS,
        streams=H2LOAD_GRPC_STREAMS if grpc else 1,
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        model_name=settings.model_name,
    )


def h2load_server_scenarios(
    settings: BenchSettings, *, with_v2: bool = True
) -> list[H2loadScenario]:
    """The single-image unary rows h2load drives against each server configuration."""
    v2 = [h2load_scenario(settings, H2LOAD_V2_NAME, Api.GRPC_V2)] if with_v2 else []
    return [
        *v2,
        h2load_scenario(settings, H2LOAD_CLASSIFY_NAME, Api.GRPC_CLASSIFY),
        h2load_scenario(settings, H2LOAD_HTTP_NAME, Api.HTTP_BINARY_V2),
    ]


def h2load_echo_scenarios(settings: BenchSettings) -> list[H2loadScenario]:
    """The gRPC floor: the V2 row against the bare grpc.aio echo server."""
    return [h2load_scenario(settings, H2LOAD_V2_NAME, Api.GRPC_V2)]


def h2load_http_echo_scenarios(settings: BenchSettings) -> list[H2loadScenario]:
    """The HTTP floor: the binary V2 row against the bare ASGI echo."""
    return [h2load_scenario(settings, H2LOAD_HTTP_NAME, Api.HTTP_BINARY_V2)]
