"""`mnist-client` as a user runs it: a real server process, the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server_process import REPO_ROOT, ServerProcess, start_server_process

DIGITS_DIR = REPO_ROOT / "client" / "examples" / "digits"
DIGIT_FILES = sorted(DIGITS_DIR.glob("digit_*.png"))
CLI_TIMEOUT_S = 60
EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE = 0, 1, 2


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "mnist-client"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mnist_serving_client"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def server_process(model_repository: Path) -> Iterator[ServerProcess]:
    with start_server_process(model_repository) as process:
        yield process


def test_classify_json(server_process):
    result = run_cli(
        "--target", server_process.target, "classify", "--json", *map(str, DIGIT_FILES)
    )
    assert result.returncode == EXIT_OK, result.stderr
    rows = json.loads(result.stdout)
    assert [row["file"] for row in rows] == [str(f) for f in DIGIT_FILES]
    labels = [row["label"] for row in rows]
    # The shipped digits are real held-out MNIST digits, one per class.
    assert sum(label == digit for digit, label in enumerate(labels)) >= 9
    for row in rows:
        assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert "top_k" not in row


def test_classify_text_with_top_k_and_options_after_the_command(server_process):
    result = run_cli(
        "classify", str(DIGIT_FILES[3]), "--top-k", "3", "--target", server_process.target
    )
    assert result.returncode == EXIT_OK, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"{DIGIT_FILES[3]}: 3 (confidence ")
    assert line.count("=") == 3


def test_target_from_the_environment(server_process):
    result = run_cli("health", env={"MNIST_SERVING_TARGET": server_process.target})
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.strip() == "SERVING"


def test_metadata_prints_json(server_process):
    result = run_cli("--target", server_process.target, "metadata")
    assert result.returncode == EXIT_OK, result.stderr
    metadata = json.loads(result.stdout)
    assert metadata["name"] == "mnist"
    assert metadata["inputs"][0]["shape"] == [-1, 1, 28, 28]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "required"),
        (("classify",), "FILE"),
        (("classify", "--top-k", "11", "x.png"), "--top-k"),
        (("frobnicate",), "invalid choice"),
        (("--timeout", "0", "health"), "timeout_s must be > 0"),
        (("classify", "/no/such/file.png"), "cannot read image file /no/such/file.png"),
        (("classify", __file__), "is not a PNG or JPEG"),
        (("--client-cert", "c.pem", "health"), "both client_cert_file and client_key_file"),
    ],
)
def test_usage_errors_exit_2(args, message, server_process):
    result = run_cli("--target", server_process.target, *args)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_server_errors_exit_1_with_the_server_message(server_process):
    result = run_cli(
        "--target", server_process.target, "--model-name", "nope", "classify", str(DIGIT_FILES[0])
    )
    assert result.returncode == EXIT_SERVER_ERROR
    assert result.stderr.startswith("mnist-client: NOT_FOUND: ")
    assert "nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_health_service_exits_1(server_process):
    result = run_cli("--target", server_process.target, "health", "--service", "no.such.Service")
    assert result.returncode == EXIT_SERVER_ERROR
    assert "NOT_FOUND" in result.stderr


def test_unreachable_server_exits_1(model_repository):
    with start_server_process(model_repository) as process:
        target = process.target
        process.stop()
    result = run_cli("--target", target, "--timeout", "5", "health")
    assert result.returncode == EXIT_SERVER_ERROR
    assert result.stderr.startswith("mnist-client: UNAVAILABLE: ")


def test_help_lists_commands_and_flags():
    result = run_cli("--help")
    assert result.returncode == EXIT_OK
    for word in (
        "classify",
        "health",
        "metadata",
        "models",
        "load",
        "unload",
        "--target",
        "--model",
        "--model-version",
        "--token-file",
        "--ca-file",
    ):
        assert word in result.stdout


# --- the model repository (Triton's repository extension) ----------------------------


@pytest.fixture(scope="module")
def explicit_server(model_repository: Path) -> Iterator[ServerProcess]:
    """A server whose models clients may load and unload."""
    with start_server_process(model_repository, "--model-control-mode", "explicit") as process:
        yield process


def test_models_table_and_json(explicit_server):
    assert run_cli("--target", explicit_server.target, "load", "mnist").returncode == EXIT_OK
    result = run_cli("--target", explicit_server.target, "models")
    assert result.returncode == EXIT_OK, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "STATE", "REASON"]
    assert ["mnist", "1", "READY"] in [row.split() for row in rows]

    result = run_cli("models", "--json", "--target", explicit_server.target)
    assert result.returncode == EXIT_OK, result.stderr
    entries = json.loads(result.stdout)
    assert {"name": "mnist", "version": "1", "state": "READY", "reason": ""} in entries


def test_unload_classify_load(explicit_server):
    target = ("--target", explicit_server.target)
    digit = str(DIGIT_FILES[3])
    result = run_cli(*target, "unload", "mnist")
    assert (result.returncode, result.stdout) == (EXIT_OK, "unloaded mnist\n"), result.stderr
    result = run_cli(*target, "classify", "--model", "mnist", digit)
    assert result.returncode == EXIT_SERVER_ERROR
    assert result.stderr.startswith("mnist-client: NOT_FOUND: ")
    ready = json.loads(run_cli(*target, "models", "--json", "--ready").stdout)
    assert all(entry["name"] != "mnist" for entry in ready)

    result = run_cli(*target, "load", "mnist")
    assert (result.returncode, result.stdout) == (EXIT_OK, "loaded mnist\n"), result.stderr
    result = run_cli(*target, "classify", "--model", "mnist", "--model-version", "1", digit)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.startswith(f"{digit}: 3 (confidence ")


def test_loading_an_unknown_model_exits_1(explicit_server):
    result = run_cli("--target", explicit_server.target, "load", "no-such-model")
    assert result.returncode == EXIT_SERVER_ERROR
    assert result.stderr.startswith("mnist-client: NOT_FOUND: ")
    assert "Traceback" not in result.stderr


def test_model_control_none_exits_1(model_repository):
    with start_server_process(model_repository, "--model-control-mode", "none") as process:
        result = run_cli("--target", process.target, "unload", "mnist")
    assert result.returncode == EXIT_SERVER_ERROR
    assert result.stderr.startswith("mnist-client: FAILED_PRECONDITION: ")


def test_load_without_a_name_exits_2():
    result = run_cli("load")
    assert result.returncode == EXIT_USAGE
    assert "NAME" in result.stderr
