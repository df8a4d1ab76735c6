"""What a test needs from the machine (a program, a Debian package's files, root, an image).

Without it a test skips on a developer's machine, but fails under CI=true: there `make test`
has installed everything (make system-deps, as root; make test-docker builds the image), so
a missing requirement is a broken setup, and a skip would hide that the test never ran.
The one requirement CI cannot meet is a GPU: CUDA-only tests keep their own skipif.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

CI_VARIABLE = "CI"


def in_ci() -> bool:
    """Whether the tests run under CI (CI=true, as GitHub Actions, GitLab and others set)."""
    return os.environ.get(CI_VARIABLE, "").strip().lower() == "true"


def requirement_missing(what: str, why: str) -> NoReturn:
    """Fail under CI, skip elsewhere: `what` is missing, and `why` says who provides it."""
    message = f"{what} is missing: {why}"
    if in_ci():
        pytest.fail(f"{message} ({CI_VARIABLE}=true: not skipped under CI)", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, why: str) -> str:
    """The path of program `name` on PATH; without it, fail under CI and skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        requirement_missing(f"the program {name!r}", why)
    return path


def require_path(path: Path, why: str) -> Path:
    """`path`, which must exist; without it, fail under CI and skip elsewhere."""
    if not path.exists():
        requirement_missing(str(path), why)
    return path
