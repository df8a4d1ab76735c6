"""A repository of several models for the registry's integration tests.

`repository`: a fresh folder per test holding `mnist/1` (the session's model),
`fashion/1` (the same network under Fashion-MNIST's class names) and `regressor/1` (a
non-classifier), so each test may add, break or remove versions without affecting others.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.repository_models import FASHION_LABELS, MODEL_FILE, add_version, write_regressor


@pytest.fixture
def session_model(model_dir: Path) -> Path:
    """The session's trained model file."""
    return model_dir / MODEL_FILE


@pytest.fixture
def repository(tmp_path: Path, session_model: Path) -> Path:
    root = tmp_path / "repository"
    add_version(session_model, root, "mnist", 1)
    add_version(session_model, root, "fashion", 1, labels=FASHION_LABELS)
    write_regressor(root)
    return root
