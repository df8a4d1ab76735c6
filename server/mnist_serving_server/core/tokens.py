"""Bearer tokens: where they come from and how a presented one is compared (docs/security.md).

Shared by every transport (the gRPC interceptor and the HTTP front), so both accept exactly
the same tokens the same way. Tokens come from `--auth-token-file` (one per line, so an old
and a new token can both be accepted while clients rotate) and from MNIST_SERVING_AUTH_TOKEN.
Every configured token is compared with `hmac.compare_digest`, with no early exit, so the
timing does not tell which one matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

AUTH_TOKEN_ENV: Final = "MNIST_SERVING_AUTH_TOKEN"
BEARER_PREFIX: Final = "Bearer "
# Long enough that guessing is hopeless and that compare_digest revealing a token's length
# (it returns early on a length mismatch) gives nothing away; `openssl rand -hex 32` is 64.
MIN_TOKEN_LENGTH: Final = 16
COMMENT_PREFIX: Final = "#"
# The one answer to every refused call: it must not say which part of the credentials failed.
UNAUTHENTICATED_DETAILS: Final = "authentication required"
REASON_UNAUTHENTICATED: Final = "unauthenticated"


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


class BearerTokens:
    """The accepted tokens, ready to compare against an `authorization` value."""

    __slots__ = ("_expected",)

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("BearerTokens needs at least one token")
        self._expected = tuple(BEARER_PREFIX + token for token in tokens)

    def matches(self, value: str | bytes | None) -> bool:
        """Whether `value` is `Bearer <one of the tokens>` (scheme case-insensitive)."""
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                return False
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
