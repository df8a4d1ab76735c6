"""The soak runs only when asked for (see slow_tests.py)."""

from __future__ import annotations

import pytest

from tests.soak.slow_tests import skip_unless_selected


def pytest_runtest_setup(item: pytest.Item) -> None:
    skip_unless_selected(item)
