"""The server's one typed settings object, read from flags and `MNIST_SERVING_*` variables.

Precedence: a command-line flag beats its environment variable, which beats the default.
Every field's flag is `--` + the field name with dashes, its variable `MNIST_SERVING_` +
the field name upper-cased (`max_batch_size` -> `--max-batch-size`,
`MNIST_SERVING_MAX_BATCH_SIZE`), so an error can always name both.

`ServerConfig` is a pydantic-settings model: its field types, bounds and descriptions are the
one source of validation, of environment parsing and of `--help`. The command line is plain
argparse built from those fields rather than pydantic-settings' CLI mode, which would
neither keep `allow_abbrev=False` and argparse's usage errors (exit 2) for malformed values,
nor read an `argv` and an environment given by the caller instead of the process's own.
"""

from __future__ import annotations

import argparse
import os
import types
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Self, Union, get_args, get_origin

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mnist_serving_server.core.batcher import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_SIZE
from mnist_serving_server.core.cores import available_cores
from mnist_serving_server.core.dataplane import ModelControlMode
from mnist_serving_server.core.images import DEFAULT_MAX_DECODED_PIXELS
from mnist_serving_server.core.monitoring import DEFAULT_WINDOW as DEFAULT_DRIFT_WINDOW
from mnist_serving_server.core.registry import DEFAULT_LOAD_TIMEOUT_S

ENV_PREFIX = "MNIST_SERVING_"
PROG = "mnist-serving"

Provider = Literal["auto", "cpu", "cuda"]
LogFormat = Literal["text", "json"]
GrpcFrontChoice = Literal["auto", "native", "grpcio"]
SuperviseChoice = Literal["on", "off"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
TracingMode = Literal["auto", "on", "off"]

DEFAULT_MODEL_REPOSITORY = Path("model_repository")
DEFAULT_MODEL_CONTROL_MODE = ModelControlMode.EXPLICIT
DEFAULT_REPOSITORY_POLL_SECS = 5.0
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_HTTP_PORT = 8000
DEFAULT_HTTP_REQUEST_TIMEOUT_S = 30.0
WORKERS_AUTO: Final = "auto"
METRICS_OFF = -1
HTTP_OFF = -1
MAX_PORT = 65535
DEFAULT_MAX_IMAGES_PER_REQUEST = 1024
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_DRAIN_DELAY_S = 2.0
DEFAULT_GRACE_PERIOD_S = 20.0
PROVIDERS: tuple[str, ...] = get_args(Provider)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
TRACING_MODES: tuple[str, ...] = get_args(TracingMode)
MODEL_CONTROL_MODES: tuple[str, ...] = tuple(mode.value for mode in ModelControlMode)
# Callable without a bearer token unless configured otherwise: health, so Kubernetes probes
# (which cannot send metadata) work, and reflection (the API's schema is public anyway).
DEFAULT_AUTH_EXEMPT_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
)
# `--auth-exempt-services none` (or "") exempts nothing.
NO_SERVICES = "none"


class ConfigError(ValueError):
    """A setting is out of range or malformed; the message names its flag and variable."""


def flag_name(field_name: str) -> str:
    """`max_batch_size` -> `--max-batch-size`."""
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    """`max_batch_size` -> `MNIST_SERVING_MAX_BATCH_SIZE`."""
    return ENV_PREFIX + field_name.upper()


def _setting(field_name: str) -> str:
    return f"{flag_name(field_name)} ({env_name(field_name)})"


def _service_names(text: str) -> tuple[str, ...]:
    """`a.B, c.D` -> ("a.B", "c.D"); "none" or "" -> ()."""
    if text.strip().lower() == NO_SERVICES:
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


class ServerConfig(BaseSettings):
    """Everything the server needs to start; validated on construction, then frozen.

    `ServerConfig(...)` is its arguments over the defaults, like a dataclass: only
    `load_config` reads flags and variables. Invalid values raise ConfigError.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        # `MNIST_SERVING_X=` (empty) counts as unset.
        env_ignore_empty=True,
        # Variables are plain text, never JSON: lists are comma-separated (a validator splits).
        enable_decoding=False,
        frozen=True,
        extra="forbid",
        protected_namespaces=(),
    )

    model_repository: Path = Field(
        DEFAULT_MODEL_REPOSITORY, description="Folder holding `<model>/<version>/model.onnx`."
    )
    default_model: str | None = Field(
        None,
        description=(
            "The model an empty model name in a request means; unset = `mnist` when the "
            "repository has it, else its only model."
        ),
    )
    model_control_mode: ModelControlMode = Field(
        DEFAULT_MODEL_CONTROL_MODE,
        description=(
            "How the repository may change while serving: none (fixed at start), explicit "
            "(repository API load/unload; every model loaded at start), poll (re-read every "
            "--repository-poll-secs)."
        ),
    )
    repository_poll_secs: float = Field(
        DEFAULT_REPOSITORY_POLL_SECS,
        gt=0,
        description="In poll mode, seconds between repository scans.",
    )
    host: str = Field(DEFAULT_HOST, description="gRPC bind address.")
    port: int = Field(
        DEFAULT_PORT,
        ge=0,
        le=MAX_PORT,
        description=(
            "gRPC port; 0 picks a free one (the chosen port is logged and written to the "
            "ready file)."
        ),
    )
    http_host: str = Field(
        DEFAULT_HOST, description="HTTP/REST (KServe V2, the page) bind address."
    )
    http_port: int = Field(
        DEFAULT_HTTP_PORT,
        ge=HTTP_OFF,
        le=MAX_PORT,
        description="HTTP/REST port; 0 picks a free one, -1 turns HTTP off.",
    )
    grpc_front: GrpcFrontChoice = Field(
        "auto",
        description=(
            "Which transport serves gRPC: native (pygrpc-native: HTTP/2 outside the GIL, "
            "ModelInfer in batches, everything else through grpc.aio behind it), grpcio "
            "(grpc.aio alone), or auto: native where its receive is bounded (bearer tokens on "
            "and --auth-exempt-services none: pygrpc-native refuses unknown callers at their "
            "headers), else grpcio, which refuses an oversize message at its length prefix."
        ),
    )
    http_request_timeout_s: float = Field(
        DEFAULT_HTTP_REQUEST_TIMEOUT_S,
        gt=0,
        description=(
            "An HTTP request's headers and body must all arrive within this many seconds of "
            "its first byte (of the connection's opening, for its first request), else it is "
            "answered 408 and the connection closed. Computing the answer and idle keep-alive "
            "time do not count."
        ),
    )
    metrics_host: str = Field(DEFAULT_HOST, description="Prometheus /metrics bind address.")
    metrics_port: int = Field(
        DEFAULT_METRICS_PORT,
        ge=METRICS_OFF,
        le=MAX_PORT,
        description=(
            "Prometheus /metrics port; 0 picks a free one, -1 turns the metrics server off."
        ),
    )
    max_batch_size: int = Field(
        DEFAULT_MAX_BATCH_SIZE, ge=1, description="Images per ONNX Runtime call."
    )
    max_queue_delay_ms: float = Field(
        0.0, ge=0, description="How long the batcher may wait to fill a batch; 0 = never wait."
    )
    batch_latency_target_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "Adaptive batching: the batcher lengthens its queue delay while that fills "
            "batches and requests spend less than this in the batcher (queued + computed), "
            "and shortens it when they spend more or the wait brings nothing; at most a "
            "quarter of the target. Replaces --max-queue-delay-ms (and config.pbtxt's "
            "delay). Less CPU per request under load, not a lower p99 "
            "(docs/performance.md). 0 = off."
        ),
    )
    drift_window: int = Field(
        DEFAULT_DRIFT_WINDOW,
        ge=0,
        description=(
            "Images in each classifier version's drift window: the PSI of the last this many "
            "images against the version's reference profile (per worker; docs/operations.md). "
            "0 turns prediction monitoring off (no predictions, confidence or drift metrics)."
        ),
    )
    max_queue_size: int = Field(
        DEFAULT_MAX_QUEUE_SIZE,
        ge=1,
        description="Images queued before new requests get RESOURCE_EXHAUSTED.",
    )
    max_images_per_request: int = Field(
        DEFAULT_MAX_IMAGES_PER_REQUEST,
        ge=1,
        description="Images allowed in one request (at most --max-queue-size).",
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, ge=1, description="gRPC receive and send message size limit."
    )
    max_decoded_pixels: int = Field(
        DEFAULT_MAX_DECODED_PIXELS,
        ge=1,
        description=(
            "Largest PNG/JPEG (width x height) the server decodes (image bombs are refused)."
        ),
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description=(
            "ONNX Runtime intra-op threads per server process; 0 = the cores this process may "
            "use, shared out among the --workers processes (one each with --workers auto). "
            "A value is per worker: N workers run N times as many."
        ),
    )
    provider: Provider = Field(
        "auto",
        description=(
            "Execution provider: auto (CUDA where onnxruntime-gpu and a GPU are, else the CPU), "
            "cpu or cuda (refuses to start without a usable GPU)."
        ),
    )
    drain_delay_s: float = Field(
        DEFAULT_DRAIN_DELAY_S,
        ge=0,
        description="After SIGTERM, health is NOT_SERVING this long before new calls are refused.",
    )
    grace_period_s: float = Field(
        DEFAULT_GRACE_PERIOD_S,
        ge=0,
        description="After the drain delay, in-flight calls get this long to finish.",
    )
    model_load_timeout_s: float = Field(
        DEFAULT_LOAD_TIMEOUT_S,
        gt=0,
        description=(
            "One model version's load (ONNX Runtime session and warm-up) may take this long; "
            "then it fails with that reason and the versions already served keep serving."
        ),
    )
    tls_cert: Path | None = Field(
        None, description="PEM server certificate chain; with --tls-key turns TLS on."
    )
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert.")
    tls_client_ca: Path | None = Field(
        None,
        description="PEM CA bundle; when set, clients must present a certificate it signed (mTLS).",
    )
    auth_token_file: Path | None = Field(
        None,
        description=(
            "Bearer tokens, one per line (or env MNIST_SERVING_AUTH_TOKEN); turns token auth on."
        ),
    )
    auth_exempt_services: tuple[str, ...] = Field(
        DEFAULT_AUTH_EXEMPT_SERVICES,
        description=(
            'Comma-separated gRPC services callable without a token when auth is on ("none" = '
            "none)."
        ),
    )
    ready_file: Path | None = Field(
        None,
        description=(
            'Once warm, write JSON {"grpc_port", "http_port", "metrics_port", "pid"} here '
            "(atomically)."
        ),
    )
    log_format: LogFormat = Field(
        "text", description="Log format: text or json (one JSON object per line)."
    )
    log_level: LogLevel = Field(
        "INFO", description="Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)."
    )
    tracing: TracingMode = Field(
        "auto",
        description=(
            "OpenTelemetry traces, exported by OTLP and configured by the standard OTEL_* "
            "variables (docs/operations.md, Tracing): on, off, or auto: on when "
            "OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set."
        ),
    )
    workers: int | Literal["auto"] = Field(
        WORKERS_AUTO,
        description=(
            "Server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each with its "
            "own model sessions and a share of the cores; auto = the cores this process may "
            "use (CPU affinity and cgroup quota)."
        ),
    )

    supervise: SuperviseChoice = Field(
        "on",
        description=(
            "on: a supervising parent process serves /metrics and replaces a worker process "
            "that dies, --workers 1 included; off: --workers 1 serves in this one process "
            "(for debuggers and profilers), and a dead worker of several stops the server."
        ),
    )

    if not TYPE_CHECKING:
        # Hidden from mypy, so that the pydantic plugin still types the keyword arguments.
        def __init__(self, **values: Any) -> None:
            try:
                super().__init__(**values)
            except ValidationError as exc:
                raise _config_error(exc) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the arguments: the environment is read by load_config (the one it is given)."""
        return (init_settings,)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("tracing", mode="before")
    @classmethod
    def _lower_case_tracing(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("auth_exempt_services", mode="before")
    @classmethod
    def _split_services(cls, value: object) -> object:
        return _service_names(value) if isinstance(value, str) else value

    @field_validator("auth_exempt_services")
    @classmethod
    def _full_service_names(cls, services: tuple[str, ...]) -> tuple[str, ...]:
        for service in services:
            if not service or "/" in service or service != service.strip():
                raise ValueError(
                    f"takes full gRPC service names (e.g. grpc.health.v1.Health), got {service!r}"
                )
        return services

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, workers: int | str) -> int | str:
        if isinstance(workers, int) and workers < 1:
            raise ValueError(f"must be >= 1 or {WORKERS_AUTO}, got {workers}")
        return workers

    @field_validator("default_model")
    @classmethod
    def _model_folder_name(cls, name: str | None) -> str | None:
        if name is not None and (not name or name != name.strip() or "/" in name):
            raise ValueError(f"must be a model's folder name, got {name!r}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                f"{_setting('tls_cert')} and {_setting('tls_key')} must be given together"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                f"{_setting('tls_client_ca')} needs {_setting('tls_cert')} and "
                f"{_setting('tls_key')} (mTLS is on top of TLS)"
            )
        if self.max_images_per_request > self.max_queue_size:
            raise ValueError(
                f"{_setting('max_images_per_request')} must be <= "
                f"{_setting('max_queue_size')} (a larger request could never be queued), "
                f"got {self.max_images_per_request} > {self.max_queue_size}"
            )
        return self

    def with_changes(self, **changes: Any) -> Self:
        """A copy with `changes`, validated like a new config (unlike pydantic's model_copy)."""
        return type(self)(**{**dict(self), **changes})

    @property
    def worker_count(self) -> int:
        """`workers` as a number (auto resolved now, from this process's cores)."""
        return available_cores() if self.workers == WORKERS_AUTO else int(self.workers)

    @property
    def max_queue_delay_s(self) -> float:
        """`max_queue_delay_ms` in seconds, as the batcher takes it."""
        return self.max_queue_delay_ms / 1000.0

    @property
    def batch_latency_target_s(self) -> float:
        """`batch_latency_target_ms` in seconds, as the batcher takes it."""
        return self.batch_latency_target_ms / 1000.0

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' `MNIST_SERVING_*` parsing, over a given mapping, not os.environ."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(ServerConfig)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Lower-cased keys: pydantic-settings matches names case-insensitively by default.
        return {name.lower(): value for name, value in self._environ.items() if value}


def _config_error(error: ValidationError) -> ConfigError:
    """One message per problem, each naming the flag and the variable."""
    return ConfigError("; ".join(_describe(detail) for detail in error.errors()))


def _describe(detail: ErrorDetails) -> str:
    context = detail.get("ctx", {})
    if not detail["loc"]:  # a check across fields, whose message names its settings
        return str(context.get("error", detail["msg"]))
    name = str(detail["loc"][0])
    field = ServerConfig.model_fields.get(name)
    if field is None:
        return f"unknown setting {name!r}"
    kind, value = detail["type"], detail["input"]
    bounds = _bounds(field)
    lowest, highest = bounds.get("ge"), bounds.get("le")
    if kind == "value_error":
        says = str(context["error"])
    elif kind in ("greater_than_equal", "less_than_equal") and None not in (lowest, highest):
        says = f"must be in [{lowest}, {highest}], got {value}"
    elif kind == "greater_than_equal":
        says = f"must be >= {lowest}, got {value}"
    elif kind == "less_than_equal":
        says = f"must be <= {highest}, got {value}"
    elif kind == "greater_than":
        says = f"must be > {bounds.get('gt')}, got {value}"
    elif kind in ("literal_error", "enum"):
        says = f"must be one of {', '.join(_choices(field))}, got {value!r}"
    else:  # malformed text (flags for numbers are parsed by argparse: from a variable)
        says = f"is not valid: {detail['msg']}, got {value!r}"
    return f"{_setting(name)} {says}"


def _bounds(field: FieldInfo) -> dict[str, Any]:
    """{"ge": 1, "le": 65535, ...} as declared (the error's own context has them as floats)."""
    return {
        bound: getattr(constraint, bound)
        for constraint in field.metadata
        for bound in ("ge", "gt", "le")
        if hasattr(constraint, bound)
    }


def _options(annotation: Any) -> tuple[Any, ...]:
    """`X | None` -> (X, NoneType); anything else -> (annotation,)."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _choices(field: FieldInfo) -> tuple[str, ...]:
    choices: list[str] = []
    for option in _options(field.annotation):
        if get_origin(option) is Literal:
            choices.extend(str(choice) for choice in get_args(option))
        elif isinstance(option, type) and issubclass(option, StrEnum):
            choices.extend(member.value for member in option)
    return tuple(choices)


def _flag_type(field: FieldInfo) -> Callable[[str], Any]:
    """Numbers are parsed by argparse, so `--port eighty` is a usage error (exit 2); other
    values reach the model as text, which checks and converts them like a variable's."""
    options = _options(field.annotation)
    if int in options and not _choices(field):  # `--workers auto` is text for the model
        return int
    if float in options:
        return float
    return str


def _help_text(name: str, field: FieldInfo) -> str:
    default = field.default
    if default is None:
        shown: object = "unset"
    elif isinstance(default, tuple):
        shown = ",".join(default) or NO_SERVICES
    else:
        shown = default
    return f"{field.description} [env {env_name(name)}; default: {shown}]".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per ServerConfig field, each documenting its variable."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        # No prefix matching: `--auth-token SECRET` must be an error, not an abbreviation of
        # --auth-token-file that then reads (and quotes in its error) a file named SECRET.
        allow_abbrev=False,
        description=(
            "Serve the MNIST CNN over gRPC (mnist_serving.v1.Classifier and the KServe V2 "
            "inference.GRPCInferenceService), with grpc.health.v1 health, reflection and "
            "Prometheus metrics. Flags override MNIST_SERVING_* environment variables, which "
            "override the defaults."
        ),
    )
    for name, field in ServerConfig.model_fields.items():
        parser.add_argument(
            flag_name(name),
            dest=name,
            type=_flag_type(field),
            default=None,
            metavar=name.upper(),
            help=_help_text(name, field),
        )
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Flags over `MNIST_SERVING_*` variables over defaults.

    argv None = this process's arguments, environ None = `os.environ`. Raises ConfigError for
    a bad variable or value; a bad flag exits via argparse (code 2) as usual.
    """
    args = build_parser().parse_args(None if argv is None else list(argv))
    flags = {name: value for name, value in vars(args).items() if value is not None}
    from_env = _EnvironSource(os.environ if environ is None else environ)()
    return ServerConfig(**{**from_env, **flags})
