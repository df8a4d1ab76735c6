"""ServerConfig and load_config: precedence, validation messages, every field documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mnist_serving_server.config import (
    ConfigError,
    ServerConfig,
    build_parser,
    env_name,
    flag_name,
    load_config,
)


def test_defaults_match_the_documented_contract() -> None:
    config = load_config([], {})
    assert config == ServerConfig()
    assert (config.port, config.metrics_port, config.max_batch_size) == (8001, 8002, 64)
    assert config.max_queue_size == 4096
    assert config.max_message_bytes == 16 * 1024 * 1024
    assert config.drain_delay_s == 2.0
    assert config.grace_period_s == 20.0


def test_flags_override_environment_which_overrides_defaults() -> None:
    environ = {
        "MNIST_SERVING_PORT": "9001",
        "MNIST_SERVING_MAX_BATCH_SIZE": "16",
        "MNIST_SERVING_MODEL_REPOSITORY": "/models",
        "MNIST_SERVING_LOG_LEVEL": "debug",
    }
    config = load_config(["--port", "0", "--ready-file", "/tmp/r.json"], environ)
    assert config.port == 0  # flag beats variable
    assert config.max_batch_size == 16  # variable beats default
    assert config.model_repository == Path("/models")
    assert config.ready_file == Path("/tmp/r.json")
    assert config.log_level == "DEBUG"
    assert config.max_queue_delay_s == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-batch-size", "0"], "--max-batch-size (MNIST_SERVING_MAX_BATCH_SIZE) must be >= 1"),
        (["--port", "70000"], "--port (MNIST_SERVING_PORT) must be in [0, 65535], got 70000"),
        (["--metrics-port", "-2"], "--metrics-port (MNIST_SERVING_METRICS_PORT) must be in [-1,"),
        (["--provider", "tpu"], "--provider (MNIST_SERVING_PROVIDER) must be one of auto, cpu"),
        (["--log-format", "xml"], "must be one of text, json, got 'xml'"),
        (["--drain-delay-s", "-1"], "--drain-delay-s (MNIST_SERVING_DRAIN_DELAY_S) must be >= 0"),
        (["--tls-cert", "c.pem"], "must be given together"),
        (["--tls-client-ca", "ca.pem"], "needs --tls-cert"),
    ],
)
def test_invalid_values_name_the_flag_and_variable(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(argv, {})
    assert message in str(error.value)


def test_malformed_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="MNIST_SERVING_MAX_QUEUE_SIZE='lots' is not valid"):
        load_config([], {"MNIST_SERVING_MAX_QUEUE_SIZE": "lots"})


def test_malformed_flag_exits_with_usage() -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--port", "eighty"], {})
    assert exit_info.value.code == 2


def test_every_field_has_a_flag_with_help_naming_its_variable() -> None:
    help_text = build_parser().format_help()
    for field in dataclasses.fields(ServerConfig):
        assert flag_name(field.name) in help_text
        assert env_name(field.name) in help_text
    # The one-line field docs reach --help (no option is left undocumented).
    assert "Images queued before new requests get RESOURCE_EXHAUSTED." in " ".join(
        help_text.split()
    )
