"""The usage example in client/README.md runs as written (only the address differs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.server_process import REPO_ROOT, start_server_process

README = REPO_ROOT / "client" / "README.md"
README_TARGET = "localhost:8001"
RUN_TIMEOUT_S = 60
MAX_EXAMPLE_LINES = 10


def usage_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "no python example in client/README.md"
    return str(blocks[0])


def test_readme_example_is_short_and_runs(model_repository: Path):
    example = usage_example()
    assert len(example.strip().splitlines()) <= MAX_EXAMPLE_LINES
    assert README_TARGET in example
    with start_server_process(model_repository) as server:
        result = subprocess.run(
            [sys.executable, "-c", example.replace(README_TARGET, server.target)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            cwd=REPO_ROOT,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ServingStatus.SERVING"
    assert lines[1].startswith("Prediction(label=7, confidence=")
    assert len(lines) == 5
