"""Token loading, header matching and the auth settings, without a server."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from mnist_serving_proto import classifier_pb2
from mnist_serving_server.config import (
    DEFAULT_AUTH_EXEMPT_SERVICES,
    ConfigError,
    ServerConfig,
    load_config,
)
from mnist_serving_server.grpc_api.auth import (
    AUTH_TOKEN_ENV,
    MIN_TOKEN_LENGTH,
    AuthConfigError,
    BearerTokenInterceptor,
    build_auth_interceptor,
    load_tokens,
    rpc_method_names,
)
from mnist_serving_server.metrics import ServerMetrics

TOKEN_BYTES = 32
# Importing the messages puts the service in the descriptor pool, as the server's imports do.
CLASSIFIER = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
HEALTH = "grpc.health.v1.Health"


def token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def interceptor(*tokens: str) -> BearerTokenInterceptor:
    return BearerTokenInterceptor(
        tokens,
        exempt_services=(),
        protected_methods=rpc_method_names([CLASSIFIER]),
        metrics=ServerMetrics(CollectorRegistry()),
    )


def test_tokens_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    first, second, from_env = token(), token(), token()
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# rotation\n{first}\n\n  {second}  \n{first}\n")
    loaded = load_tokens(token_file, {AUTH_TOKEN_ENV: f" {from_env}\n"})
    assert loaded == (from_env, first, second)  # stripped, duplicates removed
    assert load_tokens(None, {}) == ()
    assert load_tokens(None, {AUTH_TOKEN_ENV: ""}) == ()


def test_a_weak_environment_token_is_refused_without_being_quoted() -> None:
    weak = "x" * (MIN_TOKEN_LENGTH - 1)
    with pytest.raises(AuthConfigError, match=AUTH_TOKEN_ENV) as error:
        load_tokens(None, {AUTH_TOKEN_ENV: weak})
    assert weak not in str(error.value)
    with pytest.raises(AuthConfigError, match="printable ASCII"):
        load_tokens(None, {AUTH_TOKEN_ENV: "é" * MIN_TOKEN_LENGTH})


def test_no_token_means_no_interceptor() -> None:
    """Auth off costs nothing: there is no interceptor to run."""
    built = build_auth_interceptor(
        None,
        {},
        exempt_services=DEFAULT_AUTH_EXEMPT_SERVICES,
        served_services=[CLASSIFIER, *DEFAULT_AUTH_EXEMPT_SERVICES],
        metrics=ServerMetrics(CollectorRegistry()),
    )
    assert built is None


def test_a_misspelt_exempt_service_is_an_error_even_with_auth_off() -> None:
    with pytest.raises(AuthConfigError, match=r"does not serve: grpc\.health\.v1\.Helth"):
        build_auth_interceptor(
            None,
            {},
            exempt_services=("grpc.health.v1.Helth",),
            served_services=[CLASSIFIER, HEALTH],
            metrics=ServerMetrics(CollectorRegistry()),
        )


@pytest.mark.parametrize(
    ("metadata", "accepted"),
    [
        (None, False),
        ((), False),
        ((("user-agent", "x"),), False),
        ((("authorization", "Bearer {a}"),), True),
        ((("authorization", "Bearer {b}"),), True),
        ((("authorization", "BEARER {b}"),), True),
        ((("authorization", "Bearer  {a}"),), False),
        ((("authorization", "Bearer {a} "),), False),
        ((("authorization", "Token {a}"),), False),
        ((("authorization", "{a}"),), False),
        ((("authorization", "Bearer é{a}"),), False),
        ((("authorization", b"Bearer {a}"),), False),
        # Only the first authorization header counts.
        ((("authorization", "Bearer nope"), ("authorization", "Bearer {a}")), False),
        ((("x-other", "1"), ("authorization", "Bearer {a}")), True),
    ],
)
def test_header_matching(
    metadata: tuple[tuple[str, str | bytes], ...] | None, accepted: bool
) -> None:
    a, b = token(), token()

    def fill(value: str | bytes) -> str | bytes:
        if isinstance(value, bytes):
            return value.replace(b"{a}", a.encode())
        return value.format(a=a, b=b)

    filled = None if metadata is None else tuple((k, fill(v)) for k, v in metadata)
    assert interceptor(a, b).authorized(filled) is accepted


def test_an_interceptor_needs_a_token() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        interceptor()


def test_method_names_come_from_the_service_descriptors() -> None:
    names = rpc_method_names([CLASSIFIER])
    assert names == {
        f"/{CLASSIFIER}/Classify": "Classify",
        f"/{CLASSIFIER}/ClassifyStream": "ClassifyStream",
    }


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, DEFAULT_AUTH_EXEMPT_SERVICES),
        (["--auth-exempt-services", "none"], {}, ()),
        (["--auth-exempt-services", ""], {}, ()),
        ([], {"MNIST_SERVING_AUTH_EXEMPT_SERVICES": "NONE"}, ()),
        (
            ["--auth-exempt-services", f" {HEALTH} , {CLASSIFIER} "],
            {},
            (HEALTH, CLASSIFIER),
        ),
        ([], {"MNIST_SERVING_AUTH_EXEMPT_SERVICES": HEALTH}, (HEALTH,)),
    ],
)
def test_exempt_services_setting(
    argv: list[str], environ: dict[str, str], expected: tuple[str, ...]
) -> None:
    assert load_config(argv, environ).auth_exempt_services == expected


def test_token_file_setting_and_no_token_flag(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    config = load_config([], {"MNIST_SERVING_AUTH_TOKEN_FILE": str(path)})
    assert config.auth_token_file == path
    # The token itself has no flag: a command line is visible to every user via `ps`.
    with pytest.raises(SystemExit):
        load_config(["--auth-token", token()], {})


def test_exempt_services_must_be_service_names() -> None:
    with pytest.raises(ConfigError, match="--auth-exempt-services"):
        ServerConfig(auth_exempt_services=(f"/{HEALTH}/Check",))
