"""The HTTP tests use the in-process server of tests/integration/conftest.py (HTTP on port 0)."""

from __future__ import annotations

import pytest

from mnist_serving_server.app import ServingApp
from tests.integration.conftest import StartApp


@pytest.fixture
async def http_server(start_app: StartApp) -> ServingApp:
    return await start_app()


@pytest.fixture
def base(http_server: ServingApp) -> str:
    return http_server.http_base
