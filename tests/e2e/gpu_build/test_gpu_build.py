"""The real onnxruntime-gpu build (requirements/serve-gpu.txt, `.venv-gpu`) on this machine.

`make test-gpu-build` installs it and runs these with MNIST_SERVING_GPU_PYTHON naming its
Python; without that variable they are skipped (`make test` does not install the 255 MB
wheel and its ~2.3 GB of CUDA libraries). Without a GPU the build must still serve: on the
CPU, with one warning that says so, `/metrics` naming CPUExecutionProvider; `--provider
cuda` must refuse to start, saying what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.server_process import REPO_ROOT, server_command

GPU_PYTHON = os.environ.get("MNIST_SERVING_GPU_PYTHON", "")
FALLBACK = "onnxruntime-gpu is installed but "
READY_TIMEOUT_S = 120
HAS_GPU = os.path.exists("/proc/driver/nvidia")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not GPU_PYTHON, reason="make test-gpu-build sets MNIST_SERVING_GPU_PYTHON"),
]


def gpu_python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GPU_PYTHON, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
        check=False,
    )


def serve_args(ready_file: Path, *extra: str) -> list[str]:
    """The server's arguments as tests/support starts it (its interpreter left out: the GPU
    build's runs them), two workers, the shipped model."""
    command = server_command(REPO_ROOT / "model_repository", ready_file, "--workers", "2", *extra)
    return command[1:]


def test_the_environment_holds_the_gpu_build_and_not_the_cpu_one() -> None:
    result = gpu_python(
        "-c",
        "import importlib.metadata as m, json, onnxruntime as ort; "
        "names = {d.metadata['Name'].lower() for d in m.distributions()}; "
        "print(json.dumps([ort.__version__, ort.get_available_providers(), "
        "'onnxruntime' in names, sorted(n for n in names if n.startswith('nvidia'))]))",
    )
    assert result.returncode == 0, result.stderr
    version, providers, cpu_build, nvidia = json.loads(result.stdout)
    assert version.startswith("1.31.")
    assert "CUDAExecutionProvider" in providers
    assert not cpu_build
    assert "nvidia-cudnn-cu13" in nvidia


@pytest.mark.skipif(HAS_GPU, reason="an NVIDIA GPU is here: it serves on CUDA")
def test_auto_serves_on_the_cpu_with_one_warning_and_says_so_in_metrics() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mnist-serving-gpu-build-"))
    ready_file = workdir / "ready.json"
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [GPU_PYTHON, *serve_args(ready_file, "--provider", "auto")],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready_file.exists():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        ready = json.loads(ready_file.read_text())
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{ready['metrics_port']}/metrics", timeout=10)
            .read()
            .decode()
        )
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [3, 1, 28, 28],
                        "datatype": "UINT8",
                        "data": [0] * (3 * 28 * 28),
                    }
                ]
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{ready['http_port']}/v2/models/mnist/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=10).read())
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = log_path.read_text()
    info = [line for line in metrics.splitlines() if line.startswith("mnist_serving_model_info{")]
    assert info, metrics
    assert all('provider="CPUExecutionProvider"' in line for line in info), info
    warnings = [line for line in output.splitlines() if FALLBACK in line]
    assert len(warnings) == 1, output  # two workers, two models each: one warning
    assert "WARNING" in warnings[0]
    assert "serving on CPUExecutionProvider" in warnings[0]
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, 10]


@pytest.mark.skipif(HAS_GPU, reason="an NVIDIA GPU is here: it serves on CUDA")
def test_cuda_refuses_to_start_saying_what_to_do(tmp_path: Path) -> None:
    result = gpu_python(*serve_args(tmp_path / "ready.json", "--provider", "cuda"))
    assert result.returncode != 0
    assert not (tmp_path / "ready.json").exists()
    error = result.stderr
    assert "provider 'cuda' requested but onnxruntime-gpu is installed but" in error
    for advice in ("--provider auto", "--provider cpu", "make serve ORT=cpu"):
        assert advice in error, error
