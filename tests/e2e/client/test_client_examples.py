"""The scripts in client/examples run as written against a server process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server_process import REPO_ROOT, ServerProcess, start_server_process

EXAMPLES_DIR = REPO_ROOT / "client" / "examples"
EXAMPLE_TIMEOUT_S = 120
STREAM_COUNT = 500
DIGIT_COUNT = 10


@pytest.fixture(scope="module")
def server_process(model_repository: Path) -> Iterator[ServerProcess]:
    with start_server_process(model_repository) as process:
        yield process


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / name), *args],
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
    )


def correct_count(output: str, total: int) -> int:
    last = output.strip().splitlines()[-1]
    assert last.endswith(f"/{total} correct"), output
    return int(last.split("/")[0])


def test_shipped_digits_are_one_per_class():
    assert sorted(p.name for p in (EXAMPLES_DIR / "digits").glob("*.png")) == [
        f"digit_{d}.png" for d in range(DIGIT_COUNT)
    ]


def test_classify_digits(server_process):
    result = run_example("classify_digits.py", "--target", server_process.target)
    assert result.returncode == 0, result.stderr
    assert correct_count(result.stdout, DIGIT_COUNT) >= DIGIT_COUNT - 1


def test_async_usage(server_process):
    result = run_example("async_usage.py", "--target", server_process.target)
    assert result.returncode == 0, result.stderr
    assert "health: SERVING" in result.stdout
    assert "model: mnist versions 1 (onnxruntime_onnx)" in result.stdout
    assert result.stdout.count(".png: ") == DIGIT_COUNT


def test_streaming(server_process):
    result = run_example(
        "streaming.py", "--target", server_process.target, "--count", str(STREAM_COUNT)
    )
    assert result.returncode == 0, result.stderr
    assert correct_count(result.stdout, STREAM_COUNT) >= STREAM_COUNT * 0.9


def test_examples_report_an_unreachable_server(model_repository):
    with start_server_process(model_repository) as process:
        target = process.target
        process.stop()
    result = run_example("classify_digits.py", "--target", target)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
