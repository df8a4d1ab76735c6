"""The SDK's repository calls against the real server (a `python -m mnist_serving_server`
process) with Triton's semantics: `--model-control-mode explicit` lets clients load and
unload models, `none` refuses it with FAILED_PRECONDITION; a model that is unloaded
answers NOT_FOUND until it is loaded again; predictions carry the class names of the
model's metadata (MNIST's are the digits "0".."9")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mnist_serving_client import (
    AsyncClient,
    Client,
    FailedPreconditionError,
    NotFoundError,
    RepositoryModel,
    RetryPolicy,
)
from tests.support.server_process import ServerProcess, start_server_process

MODEL_NAME = "mnist"
MODEL_VERSION = "1"
STATES = {"READY", "UNAVAILABLE", "LOADING", "UNLOADING"}
NO_RETRY = RetryPolicy(max_attempts=1)


@pytest.fixture(scope="module")
def explicit_server(model_repository: Path) -> Iterator[ServerProcess]:
    with start_server_process(model_repository, "--model-control-mode", "explicit") as process:
        yield process


@pytest.fixture(scope="module")
def locked_server(model_repository: Path) -> Iterator[ServerProcess]:
    with start_server_process(model_repository, "--model-control-mode", "none") as process:
        yield process


@pytest.fixture
def client(explicit_server: ServerProcess) -> Iterator[Client]:
    with Client(explicit_server.target, retry=NO_RETRY) as opened:
        # Each test starts with the model loaded, whatever the one before it did.
        opened.load_model(MODEL_NAME)
        yield opened


def one_digit(sample_digits) -> np.ndarray:
    images, _ = sample_digits
    return np.ascontiguousarray(images[0], dtype=np.uint8)


def test_models_lists_the_served_model(client: Client):
    models = client.models()
    assert RepositoryModel(MODEL_NAME, MODEL_VERSION, "READY", "") in models
    assert all(model.state in STATES for model in models)
    assert all(model.reason == "" for model in models if model.is_ready)
    assert client.models(ready_only=True) == [m for m in models if m.is_ready]


def test_unload_then_infer_is_not_found_then_load_again(client: Client, sample_digits):
    digit = one_digit(sample_digits)
    before = client.classify_one(digit)
    client.unload_model(MODEL_NAME)
    with pytest.raises(NotFoundError):
        client.classify_one(digit)
    with pytest.raises(NotFoundError):
        client.classify_one(digit, model=MODEL_NAME, model_version=MODEL_VERSION)
    unloaded = [m for m in client.models() if m.name == MODEL_NAME]
    assert unloaded
    assert not any(m.is_ready for m in unloaded)
    assert all(m.reason for m in unloaded)
    assert client.models(ready_only=True) == []

    client.load_model(MODEL_NAME)
    after = client.classify_one(digit)
    assert after.label == before.label
    assert RepositoryModel(MODEL_NAME, MODEL_VERSION, "READY", "") in client.models()


def test_loading_an_unknown_model_is_not_found(client: Client):
    with pytest.raises(NotFoundError):
        client.load_model("no-such-model")


def test_per_call_model_and_version(client: Client, sample_digits):
    digit = one_digit(sample_digits)
    prediction = client.classify_one(digit, model=MODEL_NAME, model_version=MODEL_VERSION)
    assert prediction == client.classify_one(digit)
    with pytest.raises(NotFoundError):
        client.classify_one(digit, model="no-such-model")
    with pytest.raises(NotFoundError):
        client.classify([digit], model=MODEL_NAME, model_version="999")
    assert client.metadata(model=MODEL_NAME, model_version=MODEL_VERSION).name == MODEL_NAME


def test_predictions_carry_the_class_name(client: Client, sample_digits):
    images, _ = sample_digits
    for prediction in client.classify(images[:20]):
        assert prediction.class_name == str(prediction.label)


def test_model_control_none_refuses_load_and_unload(locked_server: ServerProcess):
    with Client(locked_server.target, retry=NO_RETRY) as client:
        with pytest.raises(FailedPreconditionError):
            client.load_model(MODEL_NAME)
        with pytest.raises(FailedPreconditionError):
            client.unload_model(MODEL_NAME)


async def test_async_twins(explicit_server: ServerProcess, sample_digits):
    digit = one_digit(sample_digits)
    async with AsyncClient(explicit_server.target, retry=NO_RETRY) as client:
        await client.load_model(MODEL_NAME)
        assert RepositoryModel(MODEL_NAME, MODEL_VERSION, "READY", "") in await client.models()
        await client.unload_model(MODEL_NAME)
        with pytest.raises(NotFoundError):
            await client.classify_one(digit, model=MODEL_NAME)
        await client.load_model(MODEL_NAME)
        prediction = await client.classify_one(digit, model=MODEL_NAME)
        assert prediction.class_name == str(prediction.label)
        with pytest.raises(NotFoundError):
            await client.load_model("no-such-model")
