"""How the SDK talks to a server: settings, channel options, retry policy, credentials.

Shared by `Client` and `AsyncClient`, so both connect the same way:

* every call has a deadline (`timeout_s`, 30 s by default);
* retries are gRPC's own (the service-config `retryPolicy`): UNAVAILABLE and
  RESOURCE_EXHAUSTED are retried with exponential backoff and jitter, at most
  `RetryPolicy.max_attempts` attempts in all, within the call's deadline. gRPC only
  retries a call that has not received any reply yet, so retries never duplicate results;
* keepalive pings detect dead connections (a silently dropped pod) within about a minute;
* `dns:///` targets use the `round_robin` policy, so the calls spread over every address
  the name resolves to (a headless Kubernetes Service lists each pod);
* TLS and mTLS from PEM files; a bearer token is sent as call credentials over TLS. gRPC
  refuses call credentials on plaintext channels, so without TLS the token goes as the
  same `authorization: Bearer <token>` metadata (only sensible on a trusted network).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

DEFAULT_TARGET = "localhost:8001"
DEFAULT_TIMEOUT_S = 30.0
# The server's default --max-images-per-request.
DEFAULT_MAX_IMAGES_PER_REQUEST = 1024
# Requests a stream keeps in flight before waiting for replies: enough to keep the
# server's batcher fed, small enough that memory stays bounded.
DEFAULT_STREAM_WINDOW = 32
# gRPC core caps maxAttempts at 5 whatever the service config says; we refuse more
# instead of silently doing fewer.
MAX_RETRY_ATTEMPTS = 5
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_INITIAL_BACKOFF_S = 0.1
DEFAULT_MAX_BACKOFF_S = 2.0
DEFAULT_BACKOFF_MULTIPLIER = 2.0
RETRYABLE_STATUS_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
# Ping an idle-looking connection after this long; at least the server's minimum ping
# interval for active calls, so servers with default settings do not send GOAWAY.
DEFAULT_KEEPALIVE_TIME_S = 60.0
KEEPALIVE_TIMEOUT_S = 20.0
# The server's default --max-message-bytes.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# gRPC keeps a copy of each request to be able to retry it, but only up to this size
# (256 KiB by default, less than one 1,024-image request): make every request retryable.
RETRY_BUFFER_BYTES = DEFAULT_MAX_MESSAGE_BYTES
MS_PER_S = 1000
USER_AGENT = "mnist-serving-client"


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retry policy for UNAVAILABLE and RESOURCE_EXHAUSTED.

    `max_attempts` counts every attempt (1 = no retries; at most 5, gRPC's own cap). The
    n-th retry waits a random time up to min(initial * multiplier^(n-1), max) seconds.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff_s: float = DEFAULT_INITIAL_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    backoff_multiplier: float = DEFAULT_BACKOFF_MULTIPLIER

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_RETRY_ATTEMPTS:
            raise ValueError(
                f"max_attempts must be 1..{MAX_RETRY_ATTEMPTS} (gRPC's own cap), "
                f"got {self.max_attempts}"
            )
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("backoffs must satisfy 0 < initial_backoff_s <= max_backoff_s")
        if self.backoff_multiplier <= 0:
            raise ValueError("backoff_multiplier must be > 0")


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings. All paths are PEM files.

    Attributes:
        ca_file: CA bundle to verify the server; None uses the system's roots.
        client_cert_file, client_key_file: the client's certificate and key, for mTLS.
        server_name_override: the name to verify in the server's certificate when it
            differs from the target's host (tests, or addressing a pod by IP).
    """

    ca_file: str | Path | None = None
    client_cert_file: str | Path | None = None
    client_key_file: str | Path | None = None
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("mTLS needs both client_cert_file and client_key_file")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read_optional(self.ca_file),
            private_key=_read_optional(self.client_key_file),
            certificate_chain=_read_optional(self.client_cert_file),
        )


@dataclass(frozen=True)
class ClientSettings:
    """Everything both clients share; built from their keyword arguments and validated."""

    target: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    stream_timeout_s: float | None = None
    model_name: str = ""
    model_version: str = ""
    max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST
    stream_window: int = DEFAULT_STREAM_WINDOW
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    tls: TlsConfig | None = None
    token: str | None = None
    keepalive_time_s: float = DEFAULT_KEEPALIVE_TIME_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    channel_options: Sequence[tuple[str, Any]] = ()

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target must be a gRPC address such as 'localhost:8001'")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.stream_timeout_s is not None and self.stream_timeout_s <= 0:
            raise ValueError(f"stream_timeout_s must be > 0 or None, got {self.stream_timeout_s}")
        if self.max_images_per_request < 1:
            raise ValueError(
                f"max_images_per_request must be >= 1, got {self.max_images_per_request}"
            )
        if self.stream_window < 1:
            raise ValueError(f"stream_window must be >= 1, got {self.stream_window}")
        if self.keepalive_time_s <= 0 or self.max_message_bytes <= 0:
            raise ValueError("keepalive_time_s and max_message_bytes must be > 0")
        if self.token is not None and (not self.token or any(c in self.token for c in "\r\n")):
            raise ValueError("token must be a non-empty single line")

    def service_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.retry.max_attempts > 1:
            retry = self.retry
            config["methodConfig"] = [
                {
                    # An empty name is the default for every method of every service.
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": retry.max_attempts,
                        "initialBackoff": f"{retry.initial_backoff_s}s",
                        "maxBackoff": f"{retry.max_backoff_s}s",
                        "backoffMultiplier": retry.backoff_multiplier,
                        "retryableStatusCodes": list(RETRYABLE_STATUS_CODES),
                    },
                }
            ]
        if self.target.startswith("dns:"):
            config["loadBalancingConfig"] = [{"round_robin": {}}]
        return config

    def channel_options_list(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1 if self.retry.max_attempts > 1 else 0),
            ("grpc.service_config", json.dumps(self.service_config())),
            ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * MS_PER_S)),
            ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * MS_PER_S)),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.primary_user_agent", USER_AGENT),
        ]
        if self.tls is not None and self.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name_override))
        # The caller's own options come last, so they win.
        options.extend(self.channel_options)
        return options

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials for a secure channel, or None for plaintext."""
        if self.tls is None:
            return None
        credentials = self.tls.channel_credentials()
        if self.token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token)
            )
        return credentials

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with every call: the bearer token on plaintext channels."""
        if self.token is not None and self.tls is None:
            return (("authorization", f"Bearer {self.token}"),)
        return ()


def _read_optional(path: str | Path | None) -> bytes | None:
    if path is None:
        return None
    return Path(path).read_bytes()
