"""--grpc-front auto|native|grpcio: which transport serves gRPC for which settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_serving_server import app
from mnist_serving_server.app import ServerStartError, native_wanted
from mnist_serving_server.config import load_config
from mnist_serving_server.grpc_api.native_front import UNBOUNDED_NATIVE_RECEIVE


def config(tmp_path: Path, *flags: str, tls: bool = False):
    argv = ["--model-repository", str(tmp_path), *flags]
    if tls:
        (tmp_path / "cert.pem").write_text("x")
        (tmp_path / "key.pem").write_text("x")
        argv += ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    return load_config(argv, environ={})


TOKENS = ("a-token-of-sixteen-chars",)
NOTHING_EXEMPT = ("--auth-exempt-services", "none")


def test_auto_is_native_only_where_its_receive_is_bounded(tmp_path: Path) -> None:
    """pygrpc-native holds a whole message before Python sees it: auto picks it only when
    it refuses unknown callers at their headers (tokens on, no service exempt)."""
    assert config(tmp_path).grpc_front == "auto"
    assert native_wanted(config(tmp_path, *NOTHING_EXEMPT), TOKENS) is True
    assert native_wanted(config(tmp_path), ()) is False  # no tokens
    assert native_wanted(config(tmp_path), TOKENS) is False  # health and reflection exempt
    assert native_wanted(config(tmp_path, *NOTHING_EXEMPT), ()) is False


def test_native_by_name_serves_unbounded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        assert native_wanted(config(tmp_path, "--grpc-front", "native"), ()) is True
    assert [r.getMessage() for r in caplog.records] == [
        UNBOUNDED_NATIVE_RECEIVE + "; serve it only to trusted clients"
    ]
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert native_wanted(config(tmp_path, "--grpc-front", "native", *NOTHING_EXEMPT), TOKENS)
    assert caplog.records == []


def test_grpcio_is_chosen_by_name_or_by_tls(tmp_path: Path) -> None:
    assert (
        native_wanted(config(tmp_path, "--grpc-front", "grpcio", *NOTHING_EXEMPT), TOKENS) is False
    )
    assert native_wanted(config(tmp_path, *NOTHING_EXEMPT, tls=True), TOKENS) is False


def test_native_with_tls_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="does not serve TLS; use --grpc-front auto"):
        native_wanted(config(tmp_path, "--grpc-front", "native", tls=True), ())


def test_auto_without_the_wheel_falls_back_to_grpcio_with_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The one fault that cannot be caused for real here: the wheel is in every lock.
    monkeypatch.setattr(app, "NATIVE_FRONT_AVAILABLE", False)
    with caplog.at_level("WARNING"):
        assert native_wanted(config(tmp_path, *NOTHING_EXEMPT), TOKENS) is False
    assert [r.getMessage() for r in caplog.records] == [
        "pygrpc-native cannot be imported: serving gRPC with grpcio"
    ]
    with pytest.raises(ServerStartError, match="pygrpc-native cannot be imported"):
        native_wanted(config(tmp_path, "--grpc-front", "native"), ())


def test_the_environment_variable_chooses_too(tmp_path: Path) -> None:
    chosen = load_config(
        ["--model-repository", str(tmp_path)], {"MNIST_SERVING_GRPC_FRONT": "grpcio"}
    )
    assert chosen.grpc_front == "grpcio"
