"""What one benchmark scenario is: the RPC, the load shape and its bounds.

A Scenario is a frozen, picklable value: the load generator ships it to its client
processes unchanged. An H2loadScenario is a unary load that h2load (a C client) drives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """The RPC a scenario drives."""

    CLASSIFY_UNARY = "classify_unary"
    CLASSIFY_STREAM = "classify_stream"
    V2_UNARY = "v2_unary"


class Mode(StrEnum):
    """Closed loop: a fixed number of callers. Open loop: a fixed arrival rate."""

    CLOSED = "closed"
    OPEN = "open"


class Arrival(StrEnum):
    """How open-loop send times are spaced."""

    POISSON = "poisson"
    UNIFORM = "uniform"


DEFAULT_DURATION_S = 8.0
DEFAULT_WARMUP_S = 1.0
# Generous enough never to cut a healthy run short, small enough that a wedged server
# cannot hold a scenario for long.
DEFAULT_RPC_TIMEOUT_S = 10.0
# Bounds the request count of a scenario even if the server is far faster than expected.
DEFAULT_MAX_REQUESTS = 2_000_000
DEFAULT_CHANNELS_PER_PROCESS = 2
# Open loop: requests in flight per client process before the sender waits (latency still
# counts from the scheduled send time, so the wait is not hidden). Measured here: with
# thousands in flight on a connection, grpc.aio servers (ours and the bare echo server
# alike) answer some calls CANCELLED at the transport level; 128 per process keeps an
# overloaded run measuring queueing rather than that.
DEFAULT_MAX_OUTSTANDING = 128
DEFAULT_MODEL_NAME = "mnist"


@dataclass(frozen=True)
class Scenario:
    """One measured load: which RPC, how much load, for how long."""

    name: str
    kind: Kind
    mode: Mode = Mode.CLOSED
    # Closed-loop unary: callers. Stream: streams. Open loop: unused.
    concurrency: int = 1
    # Stream only: messages in flight per stream.
    window: int = 1
    images_per_request: int = 1
    # Open loop only: requests per second over all client processes.
    rate: float = 0.0
    arrival: Arrival = Arrival.POISSON
    duration_s: float = DEFAULT_DURATION_S
    warmup_s: float = DEFAULT_WARMUP_S
    max_requests: int = DEFAULT_MAX_REQUESTS
    client_processes: int = 1
    channels_per_process: int = DEFAULT_CHANNELS_PER_PROCESS
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING
    rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S
    model_name: str = DEFAULT_MODEL_NAME
    # Parse stream replies for per-message errors; off for the echo server, whose replies
    # are the request bytes.
    verify_replies: bool = True

    def __post_init__(self) -> None:
        checks = (
            (self.concurrency >= 1, "concurrency must be >= 1"),
            (self.window >= 1, "window must be >= 1"),
            (self.images_per_request >= 1, "images_per_request must be >= 1"),
            (self.duration_s > 0, "duration_s must be > 0"),
            (self.warmup_s >= 0, "warmup_s must be >= 0"),
            (self.max_requests >= 1, "max_requests must be >= 1"),
            (self.client_processes >= 1, "client_processes must be >= 1"),
            (self.channels_per_process >= 1, "channels_per_process must be >= 1"),
            (self.max_outstanding >= 1, "max_outstanding must be >= 1"),
            (self.rpc_timeout_s > 0, "rpc_timeout_s must be > 0"),
            (self.mode is not Mode.OPEN or self.rate > 0, "open loop needs rate > 0"),
            (
                self.mode is not Mode.OPEN or self.kind is not Kind.CLASSIFY_STREAM,
                "streams run closed-loop only",
            ),
            (
                self.client_processes <= self.concurrency or self.mode is Mode.OPEN,
                "client_processes must be <= concurrency",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"scenario {self.name!r}: {message}")

    @property
    def in_flight(self) -> int:
        """Requests outstanding at once in closed loop (streams x window for streams)."""
        if self.kind is Kind.CLASSIFY_STREAM:
            return self.concurrency * self.window
        return self.concurrency

    def to_dict(self) -> dict[str, Any]:
        return {
            key: str(value) if isinstance(value, StrEnum) else value
            for key, value in asdict(self).items()
        }


class Api(StrEnum):
    """The single-call API an h2load scenario drives."""

    GRPC_V2 = "grpc_v2"  # inference.GRPCInferenceService/ModelInfer, raw UINT8 contents
    GRPC_CLASSIFY = "grpc_classify"  # mnist_serving.v1.Classifier/Classify
    HTTP_BINARY_V2 = "http_binary_v2"  # POST /v2/models/<m>/infer, Triton's binary tensors
    HTTP_JSON_V2 = "http_json_v2"  # POST /v2/models/<m>/infer, a JSON `data` list

    @property
    def is_grpc(self) -> bool:
        return self in (Api.GRPC_V2, Api.GRPC_CLASSIFY)


H2LOAD = "h2load"


@dataclass(frozen=True)
class H2loadScenario:
    """One closed-loop unary load from h2load: `connections` x `streams` calls in flight.

    gRPC runs over HTTP/2 (`streams` concurrent calls per connection, as a gRPC client
    multiplexes); HTTP runs over HTTP/1.1 (`--h1`, one call at a time per connection).
    """

    name: str
    api: Api
    connections: int
    streams: int = 1
    duration_s: float = DEFAULT_DURATION_S
    warmup_s: float = DEFAULT_WARMUP_S
    images_per_request: int = 1
    model_name: str = DEFAULT_MODEL_NAME

    def __post_init__(self) -> None:
        checks = (
            (self.connections >= 1, "connections must be >= 1"),
            (self.streams >= 1, "streams must be >= 1"),
            (self.api.is_grpc or self.streams == 1, "HTTP/1.1 carries one call at a time"),
            (self.images_per_request >= 1, "images_per_request must be >= 1"),
            (self.duration_s > 0, "duration_s must be > 0"),
            (self.warmup_s >= 0, "warmup_s must be >= 0"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"scenario {self.name!r}: {message}")

    @property
    def in_flight(self) -> int:
        return self.connections * self.streams

    def load_args(self) -> list[str]:
        """h2load's options for the load's shape."""
        http1 = [] if self.api.is_grpc else ["--h1"]
        return [*http1, "-c", str(self.connections), "-m", str(self.streams)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "load_generator": H2LOAD,
            "kind": str(self.api),
            "mode": str(Mode.CLOSED),
            "concurrency": self.in_flight,
            "connections": self.connections,
            "streams": self.streams,
            "http1": not self.api.is_grpc,
            "images_per_request": self.images_per_request,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "model_name": self.model_name,
        }
