"""ServerConfig and load_config: precedence, validation messages, every field documented."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from mnist_serving_server.config import (
    DEFAULT_AUTH_EXEMPT_SERVICES,
    ConfigError,
    ServerConfig,
    build_parser,
    env_name,
    flag_name,
    load_config,
)
from mnist_serving_server.core.cores import available_cores


def one_line(text: str) -> str:
    """Whitespace runs (argparse's column alignment) as one space."""
    return " ".join(text.split())


def test_defaults_match_the_documented_contract() -> None:
    config = load_config([], {})
    assert config == ServerConfig()
    assert (config.port, config.metrics_port, config.max_batch_size) == (8001, 8002, 64)
    assert config.max_queue_size == 4096
    assert config.max_message_bytes == 16 * 1024 * 1024
    assert config.drain_delay_s == 2.0
    assert config.grace_period_s == 20.0
    assert config.auth_exempt_services == DEFAULT_AUTH_EXEMPT_SERVICES
    assert not config.tls_enabled


def test_flags_override_environment_which_overrides_defaults() -> None:
    environ = {
        "MNIST_SERVING_PORT": "9001",
        "MNIST_SERVING_MAX_BATCH_SIZE": "16",
        "MNIST_SERVING_MODEL_REPOSITORY": "/models",
        "MNIST_SERVING_LOG_LEVEL": "debug",
        "MNIST_SERVING_MAX_QUEUE_DELAY_MS": "2.5",
    }
    config = load_config(["--port", "0", "--ready-file", "/tmp/r.json"], environ)
    assert config.port == 0  # flag beats variable
    assert config.max_batch_size == 16  # variable beats default
    assert config.model_repository == Path("/models")
    assert config.ready_file == Path("/tmp/r.json")
    assert config.log_level == "DEBUG"  # normalised
    assert config.max_queue_delay_s == 0.0025


def test_batch_latency_target_is_off_by_default_and_read_in_seconds() -> None:
    assert load_config([], {}).batch_latency_target_s == 0.0
    config = load_config(
        ["--batch-latency-target-ms", "20"], {"MNIST_SERVING_BATCH_LATENCY_TARGET_MS": "5"}
    )
    assert config.batch_latency_target_s == 0.02
    with pytest.raises(ConfigError, match="--batch-latency-target-ms"):
        load_config(["--batch-latency-target-ms", "-1"], {})


def test_os_environ_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_SERVING_WORKERS", "3")
    assert load_config([]).workers == 3
    assert load_config([], {}).workers == "auto"  # an explicit mapping replaces os.environ
    assert ServerConfig().workers == "auto"  # constructing directly never reads the environment


def test_empty_variables_count_as_unset_and_other_variables_are_ignored() -> None:
    environ = {
        "MNIST_SERVING_TLS_CERT": "",
        "MNIST_SERVING_PORT": "",
        "MNIST_SERVING_AUTH_TOKEN": "secret",  # read by auth.py, not a field
        "OTHER_PORT": "1",
    }
    assert load_config([], environ) == ServerConfig()


def test_auth_exempt_services_are_comma_separated_text_from_flag_or_variable() -> None:
    environ = {"MNIST_SERVING_AUTH_EXEMPT_SERVICES": " a.B , c.D,"}
    assert load_config([], environ).auth_exempt_services == ("a.B", "c.D")
    flag = ["--auth-exempt-services", "grpc.health.v1.Health"]
    assert load_config(flag, environ).auth_exempt_services == ("grpc.health.v1.Health",)
    assert load_config(["--auth-exempt-services", "none"], {}).auth_exempt_services == ()
    assert load_config(["--auth-exempt-services", ""], {}).auth_exempt_services == ()


def test_model_repository_fields_and_their_defaults() -> None:
    config = load_config([], {})
    assert (config.default_model, config.model_control_mode) == (None, "explicit")
    assert config.repository_poll_secs == 5.0
    environ = {
        "MNIST_SERVING_DEFAULT_MODEL": "fashion",
        "MNIST_SERVING_MODEL_CONTROL_MODE": "poll",
        "MNIST_SERVING_REPOSITORY_POLL_SECS": "0.5",
    }
    config = load_config(["--model-control-mode", "none"], environ)
    assert (config.default_model, config.model_control_mode) == ("fashion", "none")
    assert config.repository_poll_secs == 0.5


@pytest.mark.parametrize("removed", ["--model-name", "--model-version"])
def test_single_model_flags_are_gone(removed: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config([removed, "mnist"], {})
    assert exit_info.value.code == 2
    with pytest.raises(ConfigError, match="unknown setting 'model_name'"):
        ServerConfig(model_name="mnist")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--max-batch-size", "0"],
            "--max-batch-size (MNIST_SERVING_MAX_BATCH_SIZE) must be >= 1, got 0",
        ),
        (["--port", "70000"], "--port (MNIST_SERVING_PORT) must be in [0, 65535], got 70000"),
        (
            ["--metrics-port", "-2"],
            "--metrics-port (MNIST_SERVING_METRICS_PORT) must be in [-1, 65535], got -2",
        ),
        (
            ["--provider", "tpu"],
            "--provider (MNIST_SERVING_PROVIDER) must be one of auto, cpu, cuda, got 'tpu'",
        ),
        (["--log-format", "xml"], "must be one of text, json, got 'xml'"),
        (["--log-level", "loud"], "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        (
            ["--drain-delay-s", "-1"],
            "--drain-delay-s (MNIST_SERVING_DRAIN_DELAY_S) must be >= 0, got -1.0",
        ),
        (
            ["--tls-cert", "c.pem"],
            "--tls-cert (MNIST_SERVING_TLS_CERT) and --tls-key (MNIST_SERVING_TLS_KEY) "
            "must be given together",
        ),
        (["--tls-client-ca", "ca.pem"], "needs --tls-cert (MNIST_SERVING_TLS_CERT)"),
        (
            ["--auth-exempt-services", "/grpc.health.v1.Health/Check"],
            "--auth-exempt-services (MNIST_SERVING_AUTH_EXEMPT_SERVICES) takes full gRPC "
            "service names",
        ),
        (
            ["--model-control-mode", "auto"],
            "--model-control-mode (MNIST_SERVING_MODEL_CONTROL_MODE) must be one of none, "
            "explicit, poll, got 'auto'",
        ),
        (
            ["--repository-poll-secs", "0"],
            "--repository-poll-secs (MNIST_SERVING_REPOSITORY_POLL_SECS) must be > 0, got 0.0",
        ),
        (
            ["--default-model", ""],
            "--default-model (MNIST_SERVING_DEFAULT_MODEL) must be a model's folder name",
        ),
        (["--default-model", "a/b"], "must be a model's folder name, got 'a/b'"),
    ],
)
def test_invalid_values_name_the_flag_and_variable(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(argv, {})
    assert message in str(error.value)


def test_a_variable_out_of_range_names_the_flag_and_variable() -> None:
    with pytest.raises(ConfigError) as error:
        load_config([], {"MNIST_SERVING_WORKERS": "0"})
    assert str(error.value) == "--workers (MNIST_SERVING_WORKERS) must be >= 1 or auto, got 0"


def test_workers_auto_is_the_default_and_resolves_to_the_usable_cores() -> None:
    assert load_config([], {}).workers == "auto"
    assert load_config([], {}).worker_count == available_cores()
    assert load_config(["--workers", "auto"], {"MNIST_SERVING_WORKERS": "3"}).workers == "auto"
    assert load_config([], {"MNIST_SERVING_WORKERS": "3"}).worker_count == 3
    with pytest.raises(ConfigError, match="must be one of auto, got 'many'"):
        load_config(["--workers", "many"], {})


def test_malformed_environment_variable_is_named_with_its_text() -> None:
    with pytest.raises(ConfigError) as error:
        load_config([], {"MNIST_SERVING_MAX_QUEUE_SIZE": "lots"})
    message = str(error.value)
    assert message.startswith("--max-queue-size (MNIST_SERVING_MAX_QUEUE_SIZE) is not valid")
    assert message.endswith("got 'lots'")


def test_every_problem_is_reported_at_once() -> None:
    environ = {"MNIST_SERVING_PORT": "-5", "MNIST_SERVING_PROVIDER": "tpu"}
    with pytest.raises(ConfigError) as error:
        load_config([], environ)
    assert "--port (MNIST_SERVING_PORT)" in str(error.value)
    assert "--provider (MNIST_SERVING_PROVIDER)" in str(error.value)


def test_a_request_may_not_be_larger_than_the_queue() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(["--max-queue-size", "10"], {})
    assert str(error.value) == (
        "--max-images-per-request (MNIST_SERVING_MAX_IMAGES_PER_REQUEST) must be <= "
        "--max-queue-size (MNIST_SERVING_MAX_QUEUE_SIZE) (a larger request could never be "
        "queued), got 1024 > 10"
    )
    config = load_config(["--max-queue-size", "10", "--max-images-per-request", "10"], {})
    assert (config.max_queue_size, config.max_images_per_request) == (10, 10)
    with pytest.raises(ConfigError, match="must be <="):
        config.with_changes(max_images_per_request=11)


def test_malformed_flag_exits_with_usage() -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--port", "eighty"], {})
    assert exit_info.value.code == 2


def test_flags_are_never_abbreviated() -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--auth-token", "SECRET"], {})
    assert exit_info.value.code == 2


def test_config_is_frozen_and_with_changes_validates() -> None:
    config = ServerConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1  # type: ignore[misc]
    changed = config.with_changes(workers=2, port=0, ready_file=Path("r.json"))
    assert (changed.workers, changed.port, changed.ready_file) == (2, 0, Path("r.json"))
    assert config.workers == "auto"  # the original is untouched
    with pytest.raises(ConfigError, match=r"--port \(MNIST_SERVING_PORT\) must be in"):
        config.with_changes(port=-3)
    with pytest.raises(ConfigError, match="unknown setting 'model_version'"):
        config.with_changes(model_version=2)


def test_config_survives_pickling_for_worker_processes() -> None:
    config = load_config(["--workers", "2", "--auth-exempt-services", "none"], {})
    assert pickle.loads(pickle.dumps(config)) == config


def test_direct_construction_validates_like_load_config() -> None:
    with pytest.raises(ConfigError, match=r"--max-batch-size \(MNIST_SERVING_MAX_BATCH_SIZE\)"):
        ServerConfig(max_batch_size=0)
    assert ServerConfig(log_level="warning").log_level == "WARNING"


def test_every_field_is_documented_and_its_help_shows_doc_variable_and_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps help to the terminal: don't
    help_text = one_line(build_parser().format_help())
    for name, field in ServerConfig.model_fields.items():
        assert field.description, name
        assert "\n" not in field.description, name
        assert one_line(field.description) in help_text, name
        assert flag_name(name) in help_text
        assert env_name(name) in help_text
    assert (
        "Images queued before new requests get RESOURCE_EXHAUSTED. "
        "[env MNIST_SERVING_MAX_QUEUE_SIZE; default: 4096]"
    ) in help_text
    assert "[env MNIST_SERVING_DEFAULT_MODEL; default: unset]" in help_text
    assert "[env MNIST_SERVING_MODEL_CONTROL_MODE; default: explicit]" in help_text
    assert (
        "[env MNIST_SERVING_AUTH_EXEMPT_SERVICES; default: "
        "grpc.health.v1.Health,grpc.reflection.v1alpha.ServerReflection]"
    ) in help_text
