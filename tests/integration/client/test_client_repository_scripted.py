"""The SDK's repository calls, per-call model choice and class names, against a real gRPC
server of our own that plays a Triton-style model repository (scripted_repository.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from mnist_serving_client import (
    AsyncClient,
    Client,
    FailedPreconditionError,
    NotFoundError,
    RepositoryModel,
    RetryPolicy,
)
from mnist_serving_client.cli import EXIT_OK, EXIT_SERVER_ERROR, main
from tests.integration.client.scripted_repository import RepositoryServer

NO_RETRY = RetryPolicy(max_attempts=1)
SNEAKER = np.full((28, 28), 7, np.uint8)  # the scripted model answers pixel[0] % 10 = 7

MNIST_READY = [
    RepositoryModel("mnist", "1", "READY", ""),
    RepositoryModel("mnist", "2", "READY", ""),
]
FASHION_UNLOADED = RepositoryModel("fashion", "", "UNAVAILABLE", "unloaded")


@pytest.fixture
def server() -> Iterator[RepositoryServer]:
    running = RepositoryServer()
    yield running
    running.stop()


@pytest.fixture
def locked_server() -> Iterator[RepositoryServer]:
    running = RepositoryServer(control_mode="none")
    yield running
    running.stop()


@pytest.fixture
def client(server: RepositoryServer) -> Iterator[Client]:
    with Client(server.target, retry=NO_RETRY) as opened:
        yield opened


def test_models_lists_every_version_with_its_state(client: Client):
    assert client.models() == [FASHION_UNLOADED, *MNIST_READY]
    assert client.models(ready_only=True) == MNIST_READY


def test_load_classify_unload(client: Client, server: RepositoryServer):
    with pytest.raises(NotFoundError):
        client.classify_one(SNEAKER, model="fashion")
    client.load_model("fashion")
    assert RepositoryModel("fashion", "1", "READY", "") in client.models(ready_only=True)

    prediction = client.classify_one(SNEAKER, model="fashion")
    assert (prediction.label, prediction.class_name) == (7, "Sneaker")
    # The client's own model is untouched by a per-call choice.
    assert client.classify_one(SNEAKER).class_name == "7"

    client.unload_model("fashion")
    with pytest.raises(NotFoundError):
        client.classify_one(SNEAKER, model="fashion")
    assert FASHION_UNLOADED in client.models()
    assert server.repository.classify_targets == [
        ("fashion", ""),
        ("fashion", ""),
        ("", ""),
        ("fashion", ""),
    ]


def test_loading_an_unknown_model_is_not_found(client: Client):
    with pytest.raises(NotFoundError, match="nope"):
        client.load_model("nope")


def test_model_control_off_refuses_load_and_unload(locked_server: RepositoryServer):
    with Client(locked_server.target, retry=NO_RETRY) as client:
        with pytest.raises(FailedPreconditionError, match="model-control-mode none"):
            client.load_model("fashion")
        with pytest.raises(FailedPreconditionError):
            client.unload_model("mnist")
        assert client.models(ready_only=True) == MNIST_READY


def test_model_and_version_reach_every_call(client: Client, server: RepositoryServer):
    client.classify([SNEAKER, SNEAKER], model="mnist", model_version="1")
    list(client.classify_stream([SNEAKER] * 3, model="mnist", model_version="2"))
    assert client.model_metadata(model="mnist", model_version="2").versions == ("1", "2")
    # `metadata` is the earlier name of the same call.
    assert client.metadata(model="mnist", model_version="2") == client.model_metadata(
        model="mnist", model_version="2"
    )
    with pytest.raises(NotFoundError):
        client.metadata(model="mnist", model_version="9")
    assert server.repository.classify_targets == [("mnist", "1")] + [("mnist", "2")] * 3


def test_client_defaults_apply_without_per_call_arguments(server: RepositoryServer):
    with Client(server.target, model_name="mnist", model_version="1", retry=NO_RETRY) as client:
        client.classify_one(SNEAKER)
        client.classify_one(SNEAKER, model_version="2")
        with pytest.raises(NotFoundError):
            client.classify_one(SNEAKER, model="fashion")  # not loaded; no version "1" sent
    assert server.repository.classify_targets == [
        ("mnist", "1"),
        ("mnist", "2"),
        ("fashion", ""),
    ]


async def test_async_client_twins(server: RepositoryServer):
    async with AsyncClient(server.target, retry=NO_RETRY) as client:
        assert await client.models() == [FASHION_UNLOADED, *MNIST_READY]
        await client.load_model("fashion")
        prediction = await client.classify_one(SNEAKER, model="fashion")
        assert prediction.class_name == "Sneaker"
        predictions = await client.classify([SNEAKER], model="fashion", model_version="1")
        assert predictions[0].class_name == "Sneaker"
        streamed = [p async for p in client.classify_stream([SNEAKER] * 2, model="fashion")]
        assert [p.class_name for p in streamed] == ["Sneaker", "Sneaker"]
        assert (await client.metadata(model="fashion")).name == "fashion"
        await client.unload_model("fashion")
        with pytest.raises(NotFoundError):
            await client.classify_one(SNEAKER, model="fashion")
        with pytest.raises(NotFoundError):
            await client.load_model("nope")


async def test_async_client_model_control_off(locked_server: RepositoryServer):
    async with AsyncClient(locked_server.target, retry=NO_RETRY) as client:
        with pytest.raises(FailedPreconditionError):
            await client.unload_model("mnist")


def test_cli_models_table_and_json(server: RepositoryServer, capsys: pytest.CaptureFixture[str]):
    assert main(["--target", server.target, "models"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "STATE", "REASON"]
    assert [line.split() for line in lines[1:]] == [
        ["fashion", "UNAVAILABLE", "unloaded"],
        ["mnist", "1", "READY"],
        ["mnist", "2", "READY"],
    ]
    assert main(["models", "--json", "--ready", "--target", server.target]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == [m.to_dict() for m in MNIST_READY]


def test_cli_load_unload(server: RepositoryServer, capsys: pytest.CaptureFixture[str]):
    fashion = server.repository.models["fashion"]
    assert main(["--target", server.target, "load", "fashion"]) == EXIT_OK
    assert capsys.readouterr().out == "loaded fashion\n"
    assert [fashion.loaded] == [True]
    assert main(["--target", server.target, "unload", "fashion"]) == EXIT_OK
    assert capsys.readouterr().out == "unloaded fashion\n"
    assert [fashion.loaded] == [False]

    assert main(["--target", server.target, "load", "nope"]) == EXIT_SERVER_ERROR
    assert capsys.readouterr().err.startswith("mnist-client: NOT_FOUND: ")


def test_cli_model_control_off_exits_1(
    locked_server: RepositoryServer, capsys: pytest.CaptureFixture[str]
):
    assert main(["--target", locked_server.target, "unload", "mnist"]) == EXIT_SERVER_ERROR
    assert capsys.readouterr().err.startswith("mnist-client: FAILED_PRECONDITION: ")


def test_cli_classify_with_model_shows_class_names(
    server: RepositoryServer, tmp_path, capsys: pytest.CaptureFixture[str]
):
    # A PNG whose first encoded byte is 0x89: the scripted model answers 0x89 % 10 = 7.
    path = tmp_path / "sneaker.png"
    Image.fromarray(SNEAKER).save(path)
    server.repository.models["fashion"].loaded = True
    argv = ["--target", server.target, "classify", "--model", "fashion", str(path)]
    assert main(argv) == EXIT_OK
    assert capsys.readouterr().out.startswith(f"{path}: 7 Sneaker (confidence 1.0000)")
    assert main([*argv, "--json"]) == EXIT_OK
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["label"], row["class_name"]) == (7, "Sneaker")
    assert server.repository.classify_targets == [("fashion", ""), ("fashion", "")]
