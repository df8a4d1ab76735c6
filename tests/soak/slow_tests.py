"""Tests marked `slow` (soak, the full overload run) run only when asked for.

`make test` runs every test under tests/; the long ones are selected explicitly, by
`-m slow` (what `make soak` and `make overload` pass) or MNIST_SERVING_SLOW_TESTS=1.
"""

from __future__ import annotations

import os

import pytest

SLOW_ENV = "MNIST_SERVING_SLOW_TESTS"
SLOW_MARKER = "slow"


def skip_unless_selected(item: pytest.Item) -> None:
    """Skip `item` if it is marked slow and slow tests were not asked for."""
    if item.get_closest_marker(SLOW_MARKER) is None:
        return
    markexpr = str(item.config.getoption("markexpr", "") or "")
    if SLOW_MARKER in markexpr.replace("not slow", "") or os.environ.get(SLOW_ENV) == "1":
        return
    pytest.skip(f"slow: run with `-m slow` (make soak / make overload) or {SLOW_ENV}=1")
