"""`pip install ./client` into a fresh virtual environment works on its own: only grpcio,
protobuf and numpy come with it (no torch, no onnxruntime, no Pillow), and both the SDK
and the `mnist-client` script classify a real digit against a running server.

Slow (~1 minute): pip resolves the three dependencies from the configured package
indexes (offline here: the local wheel mirror and pip's cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server_process import REPO_ROOT, start_server_process

CLIENT_DIR = REPO_ROOT / "client"
DIGIT_FILE = CLIENT_DIR / "examples" / "digits" / "digit_7.png"
INSTALL_TIMEOUT_S = 600
RUN_TIMEOUT_S = 120
# Ours, our three dependencies, what grpcio itself needs, and what venv itself brings.
ALLOWED_DISTRIBUTIONS = {
    "mnist-serving-client",
    "grpcio",
    "protobuf",
    "numpy",
    "typing-extensions",
    "pip",
    "setuptools",
}
# Build outputs a developer's checkout may hold; a clean copy must not depend on them.
IGNORED_IN_COPY = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc")

SDK_PROBE = """
import importlib.util, json, sys
import numpy as np
from mnist_serving_client import Client
missing = {name: importlib.util.find_spec(name) is None for name in ("torch", "onnxruntime", "PIL")}
with Client(sys.argv[1]) as client:
    from_file = client.classify_one(sys.argv[2])
    blank = client.classify(np.zeros((3, 28, 28), np.uint8))
print(json.dumps({"missing": missing, "label": from_file.label, "blank": len(blank)}))
"""


def run(
    command: list[str], timeout: float, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    workdir = tmp_path_factory.mktemp("fresh_client_venv")
    source = workdir / "client"
    shutil.copytree(CLIENT_DIR, source, ignore=IGNORED_IN_COPY)
    venv = workdir / "venv"
    # Nothing of this test's environment may leak into the new one.
    env = {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    }
    run([sys.executable, "-m", "venv", str(venv)], RUN_TIMEOUT_S, env)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(source)], INSTALL_TIMEOUT_S, env)
    return venv, env


def test_only_the_three_dependencies_are_installed(fresh_venv):
    venv, env = fresh_venv
    listing = run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], RUN_TIMEOUT_S, env
    )
    names = {package["name"].lower().replace("_", "-") for package in json.loads(listing.stdout)}
    assert {"mnist-serving-client", "grpcio", "protobuf", "numpy"} <= names
    assert names <= ALLOWED_DISTRIBUTIONS, names - ALLOWED_DISTRIBUTIONS
    assert not names & {"torch", "onnxruntime", "pillow"}


def test_sdk_and_cli_classify_a_digit_without_torch_or_onnxruntime(fresh_venv, model_repository):
    venv, env = fresh_venv
    with start_server_process(model_repository) as server:
        probe = run(
            [str(venv / "bin" / "python"), "-c", SDK_PROBE, server.target, str(DIGIT_FILE)],
            RUN_TIMEOUT_S,
            env,
        )
        cli = run(
            [
                str(venv / "bin" / "mnist-client"),
                "--target",
                server.target,
                "classify",
                "--json",
                str(DIGIT_FILE),
            ],
            RUN_TIMEOUT_S,
            env,
        )
    report = json.loads(probe.stdout)
    assert report["missing"] == {"torch": True, "onnxruntime": True, "PIL": True}
    assert report["label"] == 7
    assert report["blank"] == 3
    assert json.loads(cli.stdout)[0]["label"] == 7
