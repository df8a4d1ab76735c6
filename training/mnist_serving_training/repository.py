"""Version folders in a Triton-style model repository: ``<output>/<model>/<version>/``.

A version is assembled in a hidden staging folder and renamed into place at the end, so a
server scanning the repository never sees a half-written version.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mnist_serving_server.core.repository import MODEL_FILE_NAME, is_version_name

STAGING_PREFIX = ".staging-"
MODEL_FILENAME = MODEL_FILE_NAME


def existing_versions(model_dir: Path) -> list[int]:
    """The version folders the server would see as versions (its rule: is_version_name)."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and is_version_name(p.name)
    )


def next_free_version(model_dir: Path) -> int:
    """One more than the highest existing version (1 for a new model)."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


@contextmanager
def staged_version(model_dir: Path, version: int) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``model_dir/<version>``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = model_dir / str(version)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
