"""Channel options: deadline, retry policy, keepalive, round robin, credentials."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from mnist_serving_client import Client, RetryPolicy, TlsConfig
from mnist_serving_client.connection import ClientSettings


def options_of(settings: ClientSettings) -> dict[str, Any]:
    return dict(settings.channel_options_list())


def test_retry_policy_in_the_service_config():
    settings = ClientSettings(
        target="localhost:8001",
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.2, max_backoff_s=1.5),
    )
    options = options_of(settings)
    assert options["grpc.enable_retries"] == 1
    config = json.loads(options["grpc.service_config"])
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy == {
        "maxAttempts": 3,
        "initialBackoff": "0.2s",
        "maxBackoff": "1.5s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
    }
    assert config["methodConfig"][0]["name"] == [{}]
    assert "loadBalancingConfig" not in config


def test_one_attempt_disables_retries():
    options = options_of(ClientSettings(target="h:1", retry=RetryPolicy(max_attempts=1)))
    assert options["grpc.enable_retries"] == 0
    assert "methodConfig" not in json.loads(options["grpc.service_config"])


def test_dns_targets_use_round_robin():
    config = json.loads(
        options_of(ClientSettings(target="dns:///mnist.svc:8001"))["grpc.service_config"]
    )
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]


def test_keepalive_and_message_limits():
    options = options_of(ClientSettings(target="h:1", keepalive_time_s=45, max_message_bytes=1000))
    assert options["grpc.keepalive_time_ms"] == 45_000
    assert options["grpc.max_send_message_length"] == 1000
    assert options["grpc.max_receive_message_length"] == 1000


def test_caller_channel_options_win():
    settings = ClientSettings(target="h:1", channel_options=(("grpc.keepalive_time_ms", 5),))
    assert options_of(settings)["grpc.keepalive_time_ms"] == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 6},
        {"initial_backoff_s": 0},
        {"initial_backoff_s": 2, "max_backoff_s": 1},
        {"backoff_multiplier": 0},
    ],
)
def test_bad_retry_policies_are_refused(kwargs: dict[str, Any]):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout_s": 0},
        {"max_images_per_request": 0},
        {"stream_window": 0},
        {"token": "two\nlines"},
        {"token": ""},
        {"stream_timeout_s": -1},
    ],
)
def test_bad_client_settings_are_refused(kwargs: dict[str, Any]):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        ClientSettings(target="h:1", **kwargs)


def test_token_is_metadata_on_plaintext_and_call_credentials_on_tls():
    plaintext = ClientSettings(target="h:1", token="s3cret")
    assert plaintext.call_metadata() == (("authorization", "Bearer s3cret"),)
    assert plaintext.channel_credentials() is None
    secure = ClientSettings(target="h:1", token="s3cret", tls=TlsConfig())
    assert secure.call_metadata() == ()
    assert isinstance(secure.channel_credentials(), grpc.ChannelCredentials)


def test_mtls_needs_both_files():
    with pytest.raises(ValueError, match="both"):
        TlsConfig(client_cert_file="cert.pem")


def test_token_file_is_read_and_stripped(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("abc123\n")
    with Client("127.0.0.1:1", token_file=token_file) as client:
        assert client.settings.token == "abc123"
    with pytest.raises(ValueError, match="not both"):
        Client("127.0.0.1:1", token="x", token_file=token_file)


def test_closed_client_refuses_calls():
    client = Client("127.0.0.1:1")
    client.close()
    client.close()
    with pytest.raises(Exception, match="is closed"):
        client.health()
