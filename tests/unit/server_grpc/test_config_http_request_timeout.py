"""--http-request-timeout-s: its default, its flag over its variable, its bound."""

from __future__ import annotations

import pytest

from mnist_serving_server.config import ConfigError, load_config

pytestmark = pytest.mark.unit

VARIABLE = "MNIST_SERVING_HTTP_REQUEST_TIMEOUT_S"


def test_default_is_thirty_seconds() -> None:
    assert load_config([], {}).http_request_timeout_s == 30.0


def test_flag_overrides_the_variable() -> None:
    assert load_config([], {VARIABLE: "2.5"}).http_request_timeout_s == 2.5
    config = load_config(["--http-request-timeout-s", "0.5"], {VARIABLE: "2.5"})
    assert config.http_request_timeout_s == 0.5


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_timeout_must_be_positive(value: str) -> None:
    with pytest.raises(ConfigError, match=rf"--http-request-timeout-s \({VARIABLE}\) must be > 0"):
        load_config([], {VARIABLE: value})
