"""Optional bearer-token authentication: a grpc.aio server interceptor (docs/security.md).

Tokens come from `--auth-token-file` (one per line, so an old and a new token can both be
accepted while clients rotate) and from the MNIST_SERVING_AUTH_TOKEN variable. There is no
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

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import descriptor_pool
from grpc import aio

from mnist_serving_server.grpc_api.call_metrics import PROTOCOL
from mnist_serving_server.metrics import ServerMetrics

AUTH_TOKEN_ENV = "MNIST_SERVING_AUTH_TOKEN"
AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "Bearer "
# Long enough that guessing is hopeless and that compare_digest revealing a token's length
# (it returns early on a length mismatch) gives nothing away; `openssl rand -hex 32` is 64.
MIN_TOKEN_LENGTH = 16
COMMENT_PREFIX = "#"
# The one answer to every refused call: it must not say which part of the credentials failed.
UNAUTHENTICATED_DETAILS = "authentication required"
REASON_UNAUTHENTICATED = "unauthenticated"
UNAUTHENTICATED_CODE = grpc.StatusCode.UNAUTHENTICATED.name

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class AuthConfigError(ValueError):
    """The token settings are unusable (unreadable file, no token in it, a weak token)."""


def _check_token(token: str, source: str) -> None:
    """Refuse tokens that cannot travel as a header value or are too short to be secret.

    The message names where the token came from, never the token itself.
    """
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise AuthConfigError(f"{source}: a token must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        raise AuthConfigError(
            f"{source}: a token must be at least {MIN_TOKEN_LENGTH} characters "
            "(e.g. `openssl rand -hex 32`)"
        )


def read_token_file(path: Path) -> tuple[str, ...]:
    """The tokens in `path`: one per line; blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"cannot read the auth token file {path}: {exc}") from None
    tokens: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith(COMMENT_PREFIX):
            continue
        _check_token(token, f"{path} line {number}")
        tokens.append(token)
    if not tokens:
        # Fail closed: an empty file must not quietly turn authentication off.
        raise AuthConfigError(f"the auth token file {path} holds no token")
    return tuple(tokens)


def load_tokens(token_file: Path | None, environ: Mapping[str, str]) -> tuple[str, ...]:
    """Every accepted token (file and environment, duplicates removed); () = auth off."""
    tokens: list[str] = []
    from_env = environ.get(AUTH_TOKEN_ENV, "").strip()
    if from_env:
        _check_token(from_env, AUTH_TOKEN_ENV)
        tokens.append(from_env)
    if token_file is not None:
        tokens.extend(read_token_file(token_file))
    return tuple(dict.fromkeys(tokens))


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
        self._expected = tuple(BEARER_PREFIX + token for token in tokens)
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
        # compare_digest takes str only when it is ASCII; anything else is no token of ours.
        if not isinstance(value, str) or not value.isascii():
            return False
        if not value.startswith(BEARER_PREFIX) and value[: len(BEARER_PREFIX)].lower() == (
            BEARER_PREFIX.lower()
        ):
            # The scheme name is case-insensitive (RFC 7235); the rare other spelling pays
            # for one new string.
            value = BEARER_PREFIX + value[len(BEARER_PREFIX) :]
        matched = False
        for expected in self._expected:  # no early exit: every token is compared
            matched |= hmac.compare_digest(value, expected)
        return matched


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
