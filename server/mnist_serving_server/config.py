"""The server's one typed settings object, read from flags and `MNIST_SERVING_*` variables.

Precedence: a command-line flag beats its environment variable, which beats the default.
Every field's flag is `--` + the field name with dashes, its variable `MNIST_SERVING_` +
the field name upper-cased (`max_batch_size` -> `--max-batch-size`,
`MNIST_SERVING_MAX_BATCH_SIZE`), so an error can always name both.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "MNIST_SERVING_"
PROG = "mnist-serving"

DEFAULT_MODEL_REPOSITORY = Path("model_repository")
DEFAULT_MODEL_NAME = "mnist"
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8001
DEFAULT_METRICS_PORT = 8002
METRICS_OFF = -1
MAX_PORT = 65535
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_SIZE = 4096
DEFAULT_MAX_IMAGES_PER_REQUEST = 1024
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_DECODED_PIXELS = 16 * 1024 * 1024
DEFAULT_DRAIN_DELAY_S = 2.0
DEFAULT_GRACE_PERIOD_S = 20.0
PROVIDERS = ("auto", "cpu", "cuda")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
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


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to start; validated on construction."""

    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    """Folder holding `<model>/<version>/model.onnx`."""
    default_model: str | None = None
    """The model an empty model name means; unset = mnist when present, else the only model."""
    model_control_mode: str = "explicit"
    """none (fixed at start), explicit (repository API; all loaded at start), or poll."""
    repository_poll_secs: float = 5.0
    """In poll mode, seconds between repository scans."""
    host: str = DEFAULT_HOST
    """gRPC bind address."""
    port: int = DEFAULT_PORT
    """gRPC port; 0 picks a free one (the chosen port is logged and written to the ready file)."""
    metrics_host: str = DEFAULT_HOST
    """Prometheus /metrics bind address."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """Prometheus /metrics port; 0 picks a free one, -1 turns the metrics server off."""
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    """Images per ONNX Runtime call."""
    max_queue_delay_ms: float = 0.0
    """How long the batcher may wait to fill a batch; 0 = never wait."""
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    """Images queued before new requests get RESOURCE_EXHAUSTED."""
    max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST
    """Images allowed in one request."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """gRPC receive and send message size limit."""
    max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS
    """Largest PNG/JPEG (width x height) the server decodes (image bombs are refused)."""
    intra_op_threads: int = 0
    """ONNX Runtime intra-op threads; 0 = the cores this process may use."""
    provider: str = "auto"
    """Execution provider: auto (CUDA when available), cpu or cuda."""
    drain_delay_s: float = DEFAULT_DRAIN_DELAY_S
    """After SIGTERM, health is NOT_SERVING this long before new calls are refused."""
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S
    """After the drain delay, in-flight calls get this long to finish."""
    tls_cert: Path | None = None
    """PEM server certificate chain; with --tls-key turns TLS on."""
    tls_key: Path | None = None
    """PEM private key of --tls-cert."""
    tls_client_ca: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""
    auth_token_file: Path | None = None
    """Bearer tokens, one per line (or env MNIST_SERVING_AUTH_TOKEN); turns token auth on."""
    auth_exempt_services: tuple[str, ...] = DEFAULT_AUTH_EXEMPT_SERVICES
    """Comma-separated gRPC services callable without a token when auth is on ("none" = none)."""
    ready_file: Path | None = None
    """Once warm, write JSON {"grpc_port", "metrics_port", "pid"} here (atomically)."""
    log_format: str = "text"
    """Log format: text or json (one JSON object per line)."""
    log_level: str = "INFO"
    """Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL."""
    workers: int = 1
    """Server processes sharing the gRPC port (SO_REUSEPORT), each with its own model session."""

    def __post_init__(self) -> None:
        _check_port("port", self.port, minimum=0)
        _check_port("metrics_port", self.metrics_port, minimum=METRICS_OFF)
        for name in (
            "max_batch_size",
            "max_queue_size",
            "max_images_per_request",
            "max_message_bytes",
            "max_decoded_pixels",
            "workers",
        ):
            _check_at_least(name, getattr(self, name), 1)
        for name in ("intra_op_threads", "max_queue_delay_ms", "drain_delay_s", "grace_period_s"):
            _check_at_least(name, getattr(self, name), 0)
        _check_choice("provider", self.provider, PROVIDERS)
        _check_choice("log_format", self.log_format, LOG_FORMATS)
        _check_choice("log_level", self.log_level, LOG_LEVELS)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                f"{_setting('tls_cert')} and {_setting('tls_key')} must be given together"
            )
        for service in self.auth_exempt_services:
            if not service or "/" in service or service != service.strip():
                raise ConfigError(
                    f"{_setting('auth_exempt_services')} takes full gRPC service names "
                    f"(e.g. grpc.health.v1.Health), got {service!r}"
                )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                f"{_setting('tls_client_ca')} needs {_setting('tls_cert')} and "
                f"{_setting('tls_key')} (mTLS is on top of TLS)"
            )

    @property
    def max_queue_delay_s(self) -> float:
        """`max_queue_delay_ms` in seconds, as the batcher takes it."""
        return self.max_queue_delay_ms / 1000.0

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None


def _check_port(name: str, value: int, *, minimum: int) -> None:
    if not minimum <= value <= MAX_PORT:
        raise ConfigError(f"{_setting(name)} must be in [{minimum}, {MAX_PORT}], got {value}")


def _check_at_least(name: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{_setting(name)} must be >= {minimum}, got {value}")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{_setting(name)} must be one of {', '.join(choices)}, got {value!r}")


def _normalise_level(text: str) -> str:
    return text.strip().upper()


def _service_names(text: str) -> tuple[str, ...]:
    """`a.B, c.D` -> ("a.B", "c.D"); "none" or "" -> ()."""
    if text.strip().lower() == NO_SERVICES:
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


_CONVERTERS: Mapping[str, Callable[[str], Any]] = {
    "model_repository": Path,
    "tls_cert": Path,
    "tls_key": Path,
    "tls_client_ca": Path,
    "ready_file": Path,
    "auth_token_file": Path,
    "auth_exempt_services": _service_names,
    "log_level": _normalise_level,
}


def _converter(field: dataclasses.Field[Any]) -> Callable[[str], Any]:
    if field.name in _CONVERTERS:
        return _CONVERTERS[field.name]
    if field.type in ("int", int):
        return int
    if field.type in ("float", float):
        return float
    return str


def _help_text(field: dataclasses.Field[Any]) -> str:
    doc = _FIELD_DOCS.get(field.name, "")
    default = "unset" if field.default is None else field.default
    return f"{doc} [env {env_name(field.name)}; default: {default}]".replace("%", "%%")


def _field_docs() -> dict[str, str]:
    """The one-line docstrings under each field above, so --help and the code never drift."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(ServerConfig))
    except (OSError, TypeError):  # no source shipped (e.g. a zipapp): help without docs
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = following.value.value
    return docs


_FIELD_DOCS = _field_docs()


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
    for field in dataclasses.fields(ServerConfig):
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            type=_converter(field),
            default=None,
            metavar=field.name.upper(),
            help=_help_text(field),
        )
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Flags over `MNIST_SERVING_*` variables over defaults.

    argv None = this process's arguments, environ None = `os.environ`. Raises ConfigError for
    a bad variable or value; a bad flag exits via argparse (code 2) as usual.
    """
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(None if argv is None else list(argv))
    values: dict[str, Any] = {}
    for field in dataclasses.fields(ServerConfig):
        from_flag = getattr(args, field.name)
        if from_flag is not None:
            values[field.name] = from_flag
            continue
        raw = environ.get(env_name(field.name))
        if raw is None or raw == "":
            continue
        try:
            values[field.name] = _converter(field)(raw)
        except ValueError as exc:
            raise ConfigError(f"{env_name(field.name)}={raw!r} is not valid: {exc}") from None
    return ServerConfig(**values)
