"""Which ONNX Runtime build `make serve` installs and runs (ORT=auto|cpu|gpu, the Makefile).

`make -n` prints what `make serve` would run without running it; an `nvidia-smi` on the
PATH is what makes `make` believe in a GPU (the same test as training's TORCH=auto).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

GPU_SERVER = ".venv-gpu/bin/python -m mnist_serving_server"
CPU_SERVER = ".venv/bin/python -m mnist_serving_server"
HAS_NVIDIA = shutil.which("nvidia-smi") is not None or os.path.exists("/proc/driver/nvidia")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str, gpu: bool) -> subprocess.CompletedProcess[str]:
    path = os.environ["PATH"]
    if gpu:
        fake = Path(os.environ["FAKE_NVIDIA_DIR"])
        path = f"{fake}{os.pathsep}{path}"
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(autouse=True)
def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    monkeypatch.setenv("FAKE_NVIDIA_DIR", str(tool.parent))


def served_by(*args: str, gpu: bool) -> str:
    """The Python `make serve` would exec, as `make -n` prints it."""
    result = make("-n", "serve", *args, gpu=gpu)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("exec ")]
    return GPU_SERVER if GPU_SERVER in line else CPU_SERVER if CPU_SERVER in line else line


def said(*args: str, gpu: bool) -> str:
    result = make("ort-choice", *args, gpu=gpu)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_gpu_gets_onnxruntime_gpu_and_is_told_so() -> None:
    assert served_by(gpu=True) == GPU_SERVER
    assert said(gpu=True) == (
        "onnxruntime: NVIDIA GPU found: serving with onnxruntime-gpu (CUDA) from .venv-gpu "
        "(requirements/serve-gpu.txt; ORT=cpu for the CPU build)"
    )
    assert "requirements/serve-gpu.txt" in make("-n", "serve", gpu=True).stdout


@pytest.mark.skipif(HAS_NVIDIA, reason="an NVIDIA GPU is here")
def test_no_gpu_gets_the_cpu_build() -> None:
    assert served_by(gpu=False) == CPU_SERVER
    assert said(gpu=False).startswith("onnxruntime: no NVIDIA GPU: serving with the CPU build")


def test_ort_overrides_the_detection_both_ways() -> None:
    assert served_by("ORT=cpu", gpu=True) == CPU_SERVER
    assert served_by("ORT=gpu", gpu=True) == GPU_SERVER
    assert said("ORT=cpu", gpu=True).startswith("onnxruntime: ORT=cpu: serving with the CPU build")


@pytest.mark.skipif(HAS_NVIDIA, reason="an NVIDIA GPU is here")
def test_ort_gpu_without_a_gpu_says_it_falls_back_to_the_cpu() -> None:
    assert served_by("ORT=gpu", gpu=False) == GPU_SERVER
    assert said("ORT=gpu", gpu=False).endswith(
        "although no NVIDIA GPU was found: it falls back to the CPU"
    )


@pytest.mark.parametrize("value", ["cuda", "", "cpu gpu"])
def test_any_other_value_stops_with_the_choices(value: str) -> None:
    result = make("-n", "serve", f"ORT={value}", gpu=False)
    assert result.returncode == 2
    assert f"ORT={value}: expected one of auto cpu gpu" in result.stderr
