"""Session fixtures shared by every test folder.

The model under test is the reference model that ships in model_repository/mnist/1
(trained by `make reference-model` from the real MNIST sample; tests/unit/training/
test_training_reference_model.py proves it is what today's export writes), copied into a
temporary repository so that tests never touch, nor depend on, what a developer adds to
./model_repository. Only if it is missing is a model trained for the session (~10 s on
two cores); the training tests train their own models either way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
MODEL_NAME = "mnist"
REFERENCE_MODEL_DIR = REPO_ROOT / "model_repository" / MODEL_NAME / "1"
REFERENCE_MODEL_FILES = ("model.onnx", "training_report.json")
FOLDER_MARKERS = ("unit", "integration", "e2e", "interop")

# Servers the tests start run one process unless a test asks for more (`--workers`, which
# beats this variable): the default, auto, starts one worker per core, which multiplies
# start-up time and memory for tests about something else. tests/e2e/workers tests auto.
os.environ.setdefault("MNIST_SERVING_WORKERS", "1")
# ... and that one process is the server itself (its pid in the ready file, its memory and
# threads what tests measure), not a supervised child: tests/e2e/workers and the hostile-
# payload tests exercise the supervising parent (`--supervise on`, the product's default).
os.environ.setdefault("MNIST_SERVING_SUPERVISE", "off")


def load_script(name: str, path: Path) -> ModuleType:
    """A repository script that is no package module (proto/generate.py,
    requirements/lock.py), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


GRPC_FRONTS = ("native", "grpcio")
BOTH_FRONTS_MARKER = "both_grpc_fronts"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{BOTH_FRONTS_MARKER}: run each test that uses `grpc_front` once per gRPC front",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked both_grpc_fronts run on the native front and on grpcio's."""
    marked = metafunc.definition.get_closest_marker(BOTH_FRONTS_MARKER) is not None
    if marked and "grpc_front" in metafunc.fixturenames:
        metafunc.parametrize("grpc_front", GRPC_FRONTS, indirect=True)


@pytest.fixture
def grpc_front(request: pytest.FixtureRequest) -> str:
    """The --grpc-front a test's server runs: "native" unless the test is marked
    both_grpc_fronts (the error, stream and drain suites), then "native" and "grpcio"."""
    return str(getattr(request, "param", "native"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the folder it lives in (tests/unit -> @pytest.mark.unit, ...)."""
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(TESTS_DIR).parts
        if parts and parts[0] in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


def metrics_server_threads() -> set[threading.Thread]:
    """Live threads serving a prometheus_client /metrics endpoint (a ServingApp's, a worker
    group's): `serve_forever` of a server class defined in prometheus_client.exposition."""
    found = set()
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)  # Thread.run drops it when it returns
        owner = getattr(target, "__self__", None)
        if (
            getattr(target, "__name__", "") == "serve_forever"
            and type(owner).__module__ == "prometheus_client.exposition"
        ):
            found.add(thread)
    return found


@pytest.fixture(autouse=True)
def no_metrics_server_left_running() -> Iterator[None]:
    """Fail a test that leaves a /metrics server running: the ServingApp (or worker group) it
    started was never stopped, and its gRPC server goes with it. Garbage collected late, such
    a leftover grpc.aio server deadlocks grpc's shutdown in whatever test runs then (a 300 s
    timeout, then a pass, far from the cause). Fixtures of a wider scope start theirs first.
    """
    before = metrics_server_threads()
    yield
    left = metrics_server_threads() - before
    if left:
        pytest.fail(
            f"{len(left)} /metrics server(s) still running after the test: stop every "
            "ServingApp it started, also when start() raises (a failed warm-up leaves it up)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding `mnist/1/model.onnx`: a copy of the shipped reference model."""
    preset = os.environ.get("MNIST_SERVING_TEST_MODEL_REPOSITORY")
    if preset:
        return Path(preset)
    repository = tmp_path_factory.mktemp("model_repository")
    if all((REFERENCE_MODEL_DIR / name).is_file() for name in REFERENCE_MODEL_FILES):
        version_dir = repository / MODEL_NAME / "1"
        version_dir.mkdir(parents=True)
        for name in REFERENCE_MODEL_FILES:
            shutil.copy2(REFERENCE_MODEL_DIR / name, version_dir / name)
        return repository
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_serving_training",
            "--dataset",
            "mnist-sample",
            "--epochs",
            "5",
            "--seed",
            "0",
            "--output-dir",
            str(repository),
            "--model-name",
            MODEL_NAME,
            "--no-plots",
        ],
        check=True,
        cwd=REPO_ROOT,
        timeout=600,
    )
    return repository


@pytest.fixture(scope="session")
def model_dir(model_repository: Path) -> Path:
    """The folder of the highest version of the session's model."""
    versions = sorted(
        (p for p in (model_repository / MODEL_NAME).iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    return versions[-1]


@pytest.fixture(scope="session")
def training_report(model_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((model_dir / "training_report.json").read_text())
    return report


@pytest.fixture(scope="session")
def sample_digits() -> tuple[Any, Any]:
    """The 1,000 held-out digits of the mnist-sample split: (uint8 [1000,28,28], labels)."""
    from mnist_serving_training.data import load_mnist_sample

    split = load_mnist_sample()
    return split.test_images, split.test_labels
