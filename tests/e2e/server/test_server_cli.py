"""`python -m mnist_serving_server` as a user runs it: --help, serve + classify, bad starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_server.config import ServerConfig, env_name, flag_name
from tests.support.server_process import REPO_ROOT, start_server_process

COMMAND_TIMEOUT_S = 120
EXIT_START_FAILED = 1
EXIT_BAD_CONFIG = 2
RPC_TIMEOUT_S = 30
DIGITS_TO_SEND = 20


def run_server_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mnist_serving_server", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_help_lists_every_option_with_its_environment_variable() -> None:
    result = run_server_command("--help")
    assert result.returncode == 0
    for name in ServerConfig.model_fields:
        assert flag_name(name) in result.stdout, name
        assert env_name(name) in result.stdout, name
    assert "default: 8001" in result.stdout


def test_serve_and_classify_real_digits(
    model_repository: Path, model_dir: Path, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    digits = images[:DIGITS_TO_SEND]
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(["probabilities"], {"pixels": digits.reshape(-1, 1, 28, 28)})
    with start_server_process(model_repository, "--log-format", "json") as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            request = classifier_pb2.ClassifyRequest(
                images=[classifier_pb2.Image(pixels=digit.tobytes()) for digit in digits]
            )
            response = stub.Classify(request, timeout=RPC_TIMEOUT_S)
        assert server.stop() == 0
    labels = [prediction.label for prediction in response.predictions]
    assert labels == np.asarray(expected).argmax(axis=1).tolist()
    log_lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    started = [line for line in log_lines if line.get("message") == "serving (loading models)"]
    assert started, server.output()
    assert started[0]["grpc_port"] == server.grpc_port
    assert started[0]["default_model"] == "mnist"
    assert any(line.get("message", "").startswith("model ready: mnist") for line in log_lines)
    assert any(line.get("message") == "stopped" for line in log_lines)


def test_missing_model_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    result = run_server_command("--model-repository", str(tmp_path), "--port", "0")
    assert result.returncode == EXIT_START_FAILED
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("mnist-serving: error: no models in the repository")
    assert str(tmp_path) in last_line


def test_bad_setting_exits_2_naming_the_flag_and_variable() -> None:
    result = run_server_command("--max-batch-size", "0")
    assert result.returncode == EXIT_BAD_CONFIG
    assert "--max-batch-size (MNIST_SERVING_MAX_BATCH_SIZE) must be >= 1, got 0" in result.stderr
