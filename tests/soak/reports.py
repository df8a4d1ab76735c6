"""The figures of a long run: one line on stdout, and a JSON file when asked for."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def publish(name: str, report: dict[str, Any], path_env: str) -> None:
    """Print `name: {json}`; also write it to the file named by `path_env`, if set."""
    print(f"{name}:", json.dumps(report))
    path = os.environ.get(path_env)
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
