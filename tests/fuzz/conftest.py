"""One real server (in a background thread) per fuzz module, and the checks after each test.

The number of hypothesis examples per test comes from MNIST_SERVING_FUZZ_EXAMPLES: a few
hundred cases in all by default (`make test`), `make fuzz` sets it so that one run sends
more than 10,000. After every test the server must still be alive, must never have
answered INTERNAL or UNKNOWN, and must still classify real digits exactly like ONNX
Runtime run directly on the model file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from mnist_serving_proto import classifier_pb2
from tests.fuzz.threaded_server import ThreadedServer
from tests.fuzz.wire import CLASSIFY, FORBIDDEN, RawCaller
from tests.integration.server.classify_support import (
    PARITY_ATOL,
    ReferenceModel,
    raw_request,
    served_probabilities,
)
from tests.support.metrics import sample_sum

EXAMPLES_ENV = "MNIST_SERVING_FUZZ_EXAMPLES"
DEFAULT_EXAMPLES_PER_TEST = 100
FUZZ_EXAMPLES = int(os.environ.get(EXAMPLES_ENV, str(DEFAULT_EXAMPLES_PER_TEST)))
# Hypothesis settings for every fuzz test: the count above, no per-example deadline (the
# machine is shared and slow; hangs are bounded by the call timeout and pytest-timeout).
# The function-scoped fixture is the after-test check below: once per test, on purpose.
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
# Real digits classified after each test: enough to catch a server that answers wrongly.
CHECK_DIGITS = 32
CHECK_TIMEOUT_S = 60.0

# Cases sent by all fuzz tests of this session, per method (for the summary line).
SESSION_CASES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(model_repository: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(model_repository) as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_server: ThreadedServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def caller(fuzz_channel: grpc.Channel) -> Iterator[RawCaller]:
    raw_caller = RawCaller(fuzz_channel)
    yield raw_caller
    SESSION_CASES.update(raw_caller.cases)


@pytest.fixture(scope="session")
def reference_model(model_dir: Path) -> ReferenceModel:
    return ReferenceModel(model_dir)


@pytest.fixture(autouse=True)
def still_serving_correctly(
    fuzz_server: ThreadedServer,
    fuzz_channel: grpc.Channel,
    caller: RawCaller,
    reference_model: ReferenceModel,
    sample_digits: tuple[Any, Any],
) -> Iterator[None]:
    """After the test: no forbidden status was sent, and real digits are served exactly."""
    yield
    forbidden = {code.name: caller.codes[code] for code in FORBIDDEN if caller.codes[code]}
    assert not forbidden, f"the server answered fuzz input with {forbidden}"
    app = fuzz_server.app
    for code in FORBIDDEN:
        for method in ("Classify", "ClassifyStream", "ModelInfer", "ModelStreamInfer"):
            counted = sample_sum(
                app.registry, "mnist_serving_requests_total", {"method": method, "code": code.name}
            )
            assert not counted, f"{method} counted {counted} {code.name} replies"
    digits = np.asarray(sample_digits[0][:CHECK_DIGITS], dtype=np.uint8)
    checker = RawCaller(fuzz_channel)  # its own counts: the check is not a fuzz case
    reply = checker.unary(CLASSIFY, raw_request(digits).SerializeToString())
    assert reply.code is grpc.StatusCode.OK, reply.details
    assert reply.payload is not None
    served = served_probabilities(classifier_pb2.ClassifyResponse.FromString(reply.payload))
    np.testing.assert_allclose(
        served, reference_model.probabilities(digits), rtol=0, atol=PARITY_ATOL
    )
    assert fuzz_server.app.ready


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SESSION_CASES:
        per_method = ", ".join(f"{m.rsplit('/', 1)[-1]} {n}" for m, n in SESSION_CASES.items())
        terminalreporter.write_line(
            f"fuzz: {sum(SESSION_CASES.values())} cases sent ({per_method}); "
            f"{EXAMPLES_ENV}={FUZZ_EXAMPLES} examples per test"
        )
