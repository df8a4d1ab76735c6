"""A server for the drawing page, and headless Chromium driven by Selenium.

- `page_repository`: the shipped reference model and its companion features model
  (model_repository/mnist/1 and mnist_features/1), copied;
- `page_server`: the real `ServingApp` with its HTTP front on 127.0.0.1, run on an event
  loop of its own thread (Selenium's calls block; the server must keep serving meanwhile).
  There is no stand-in: what the page is tested against is what `make serve` runs;
- `browser`: Debian's chromium and chromedriver, paths given explicitly (Selenium Manager
  never runs, nothing is downloaded), console messages collected. Without them the page
  tests skip on a developer's machine and fail under CI=true (tests/requirements_support.py).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.requirements_support import require_path
from tests.support.metrics import scrape, total

REPO_ROOT = Path(__file__).resolve().parents[3]
SHIPPED_MODELS = (("mnist", "1"), ("mnist_features", "1"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60.0
METRIC = "mnist_serving_requests_total"
WINDOW_SIZE = "1280,1100"

BROWSER_PACKAGES = "Debian's chromium and chromium-driver (make system-deps installs them)"


@dataclass
class PageServer:
    base_url: str
    # The HTTP ModelInfer requests /metrics counts so far.
    http_inferences: Callable[[], float]


@pytest.fixture(scope="module")
def page_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("page_repository")
    for model, version in SHIPPED_MODELS:
        source = REPO_ROOT / "model_repository" / model / version / "model.onnx"
        target = repository / model / version
        target.mkdir(parents=True)
        shutil.copy2(source, target / "model.onnx")
    return repository


def http_requests_counted(metrics_port: int | None) -> float:
    """Sum of mnist_serving_requests_total{protocol="http",method="ModelInfer"} on /metrics."""
    return total(scrape(metrics_port), METRIC, protocol="http", method="ModelInfer")


class ThreadedApp:
    """A ServingApp started and stopped on an event loop running in a thread of its own."""

    def __init__(self, repository: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="page-server")
        self.thread.start()
        self.app: Any = None
        self.repository = repository

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=START_TIMEOUT_S)

    def start(self) -> Any:
        from mnist_serving_server.app import ServingApp
        from tests.integration.conftest import app_config

        async def start() -> Any:
            app = ServingApp(app_config(self.repository, http_port=0, http_host=LOOPBACK))
            await app.start()
            return app

        self.app = self._run(start())
        return self.app

    def close(self) -> None:
        try:
            if self.app is not None:
                self._run(self.app.stop(drain_delay_s=0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=START_TIMEOUT_S)
            self.loop.close()


@pytest.fixture(scope="module")
def chromium_installed() -> None:
    """The browser and its driver, checked before any server starts for the page tests."""
    require_path(CHROMIUM, BROWSER_PACKAGES)
    require_path(CHROMEDRIVER, BROWSER_PACKAGES)


@pytest.fixture(scope="module")
def page_server(page_repository: Path) -> Iterator[PageServer]:
    threaded = ThreadedApp(page_repository)
    try:
        app = threaded.start()
        yield PageServer(
            base_url=f"http://{LOOPBACK}:{app.http_port}",
            http_inferences=lambda: http_requests_counted(app.metrics_port),
        )
    finally:
        threaded.close()


@pytest.fixture
def browser(chromium_installed: None) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WINDOW_SIZE}",
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver's path is given: Selenium Manager never runs, nothing is downloaded.
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
