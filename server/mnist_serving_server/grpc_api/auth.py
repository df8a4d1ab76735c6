"""Optional bearer-token authentication: a grpc.aio server interceptor (docs/security.md).

Tokens come from `--auth-token-file` and the MNIST_SERVING_AUTH_TOKEN variable, loaded and
compared by `core.tokens` (the HTTP front uses the same code). There is no
flag for a token value on purpose: a command line is visible to every user through `ps`.
With no token configured the interceptor is not installed at all, so auth costs nothing.

A call is accepted when its service is exempt (by default health, so Kubernetes probes
work, and reflection) or its first `authorization` metadata value is `Bearer <token>` for
one of the configured tokens. Every configured token is compared with
`hmac.compare_digest`, with no early exit, so the timing does not tell which one matched.
Every refusal gets UNAUTHENTICATED with one message, whatever was wrong (no header, another
scheme, a wrong token), so a caller learns nothing about which part to fix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import descriptor_pool
from grpc import aio

from mnist_serving_server.core.tokens import (
    AUTH_TOKEN_ENV,
    MIN_TOKEN_LENGTH,
    REASON_UNAUTHENTICATED,
    UNAUTHENTICATED_DETAILS,
    AuthConfigError,
    BearerTokens,
    load_tokens,
    read_token_file,
)
from mnist_serving_server.grpc_api.call_metrics import PROTOCOL
from mnist_serving_server.metrics import ServerMetrics

AUTHORIZATION_KEY = "authorization"
UNAUTHENTICATED_CODE = grpc.StatusCode.UNAUTHENTICATED.name

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


def rpc_method_names(service_names: Iterable[str]) -> dict[str, str]:
    """`/package.Service/Method` -> `Method` for every method of the given services.

    The services must be in the default descriptor pool (their `_pb2` module imported).
    """
    pool = descriptor_pool.Default()
    names: dict[str, str] = {}
    for service_name in service_names:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            names[f"/{service_name}/{method.name}"] = method.name
    return names


async def _refuse(
    request_iterator: AsyncIterator[bytes], context: aio.ServicerContext[Any, Any]
) -> None:
    """The handler of every refused call.

    Registered as stream-stream whatever the method is (the wire format is the same), so the
    request is never read, let alone parsed, for a caller that has not authenticated.
    """
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)


class BearerTokenInterceptor(aio.ServerInterceptor):
    """Refuses calls without a valid `authorization: Bearer <token>`, except exempt services.

    Everything a call needs is built here, once: the expected header values, the exempt
    path prefixes, the refusal handler and the metric children, so a call costs a prefix
    check, a scan of its metadata and the comparisons.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        exempt_services: Iterable[str],
        protected_methods: Mapping[str, str],
        metrics: ServerMetrics,
    ) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._tokens = BearerTokens(tokens)
        self._exempt_prefixes = tuple(f"/{service}/" for service in exempt_services)
        self._refusal: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_stream_rpc_method_handler(
            _refuse
        )
        self._metrics = metrics
        # Counted by RPC name only for the methods this server has, so a caller inventing
        # method paths cannot grow the label set.
        self._method_names = dict(protected_methods)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[RequestT, ResponseT] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        method = handler_call_details.method
        if method.startswith(self._exempt_prefixes) or self.authorized(
            handler_call_details.invocation_metadata
        ):
            return await continuation(handler_call_details)
        self._metrics.on_rejected(REASON_UNAUTHENTICATED)
        name = self._method_names.get(method)
        if name is not None:
            self._metrics.count_request(PROTOCOL, name, "", "", UNAUTHENTICATED_CODE, 0.0)
        # Raw bytes in, nothing out: the refusal never touches a message, whatever the method.
        return cast("grpc.RpcMethodHandler[RequestT, ResponseT]", self._refusal)

    def authorized(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        """Whether the first `authorization` value carries one of the tokens."""
        if metadata is None:
            return False
        for key, value in metadata:
            if key == AUTHORIZATION_KEY:
                return self._matches(value)
        return False

    def _matches(self, value: str | bytes) -> bool:
        # Metadata values arrive as str (bytes only for `-bin` keys, never a token of ours).
        return isinstance(value, str) and self._tokens.matches(value)


def build_auth_interceptor(
    token_file: Path | None,
    environ: Mapping[str, str],
    *,
    exempt_services: Sequence[str],
    served_services: Sequence[str],
    metrics: ServerMetrics,
) -> BearerTokenInterceptor | None:
    """The interceptor for these settings, or None when no token is configured (auth off).

    `served_services`: every service on the port (health and reflection included); an
    exempt name must be one of them (checked with auth on or off), so a typo cannot leave a
    service open or closed by surprise. Raises AuthConfigError.
    """
    unknown = sorted(set(exempt_services) - set(served_services))
    if unknown:
        raise AuthConfigError(
            f"--auth-exempt-services names services this server does not serve: "
            f"{', '.join(unknown)} (served: {', '.join(served_services)})"
        )
    tokens = load_tokens(token_file, environ)
    if not tokens:
        return None
    protected = [name for name in served_services if name not in exempt_services]
    return BearerTokenInterceptor(
        tokens,
        exempt_services=exempt_services,
        protected_methods=rpc_method_names(protected),
        metrics=metrics,
    )


__all__ = [
    "AUTH_TOKEN_ENV",
    "MIN_TOKEN_LENGTH",
    "REASON_UNAUTHENTICATED",
    "UNAUTHENTICATED_DETAILS",
    "AuthConfigError",
    "BearerTokenInterceptor",
    "build_auth_interceptor",
    "load_tokens",
    "read_token_file",
    "rpc_method_names",
]
