"""The repository calls' messages, records and per-call model choice, without a server.

The SDK's private repository messages are checked byte for byte against the generated
`open_inference_pb2` classes (Triton's field names and numbers).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from mnist_serving_client import (
    AsyncClient,
    Client,
    FailedPreconditionError,
    InvalidInputError,
    RepositoryModel,
    errors,
    wire_messages,
)
from mnist_serving_client.client_base import ModelTarget, StreamRequestBuilder
from mnist_serving_client.repository import (
    repository_index_request,
    repository_model_request,
    repository_models_from_response,
)
from mnist_serving_proto import open_inference_pb2

ONE_IMAGE = np.zeros((28, 28), np.uint8)
# Nothing listens here: the clients below never connect (gRPC channels connect lazily).
NOWHERE = "127.0.0.1:9"


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(NOWHERE, model_name="mnist", model_version="2") as opened:
        yield opened


def test_index_request_bytes_match_the_v2_stubs():
    for ready_only in (False, True):
        ours = repository_index_request(ready_only).SerializeToString()
        real = open_inference_pb2.RepositoryIndexRequest(ready=ready_only).SerializeToString()
        assert ours == real


def test_index_response_parses_into_records():
    entry = open_inference_pb2.RepositoryIndexResponse.ModelIndex
    response = open_inference_pb2.RepositoryIndexResponse(
        models=[
            entry(name="mnist", version="1", state="READY"),
            entry(name="fashion", version="3", state="UNAVAILABLE", reason="unloaded"),
            entry(name="big", state="LOADING"),
        ]
    )
    parsed = wire_messages.parse_repository_index_response(response.SerializeToString())
    models = repository_models_from_response(parsed)
    assert models == [
        RepositoryModel("mnist", "1", "READY", ""),
        RepositoryModel("fashion", "3", "UNAVAILABLE", "unloaded"),
        RepositoryModel("big", "", "LOADING", ""),
    ]
    assert [m.is_ready for m in models] == [True, False, False]
    assert models[1].to_dict() == {
        "name": "fashion",
        "version": "3",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    }


def test_load_and_unload_requests_match_the_v2_stubs():
    ours = repository_model_request("fashion").SerializeToString()
    for real_class in (
        open_inference_pb2.RepositoryModelLoadRequest,
        open_inference_pb2.RepositoryModelUnloadRequest,
    ):
        assert ours == real_class(model_name="fashion").SerializeToString()
        assert real_class.FromString(ours).model_name == "fashion"
    for reply_class in (
        open_inference_pb2.RepositoryModelLoadResponse,
        open_inference_pb2.RepositoryModelUnloadResponse,
    ):
        wire_messages.parse_empty_response(reply_class().SerializeToString())


@pytest.mark.parametrize("name", ["", None, 3])
def test_a_load_needs_a_model_name(client: Client, name: object):
    with pytest.raises(InvalidInputError, match="non-empty model name") as caught:
        client.load_model(name)  # type: ignore[arg-type]
    assert caught.value.code is None  # found before sending: a usage error
    with pytest.raises(InvalidInputError):
        client.unload_model(name)  # type: ignore[arg-type]


def test_failed_precondition_has_its_own_class():
    error = errors.error_for_status(grpc.StatusCode.FAILED_PRECONDITION, "model control is off")
    assert type(error) is FailedPreconditionError
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("model", "model_version", "expected"),
    [
        (None, None, ModelTarget("mnist", "2")),  # the client's defaults
        (None, "1", ModelTarget("mnist", "1")),
        (None, "", ModelTarget("mnist", "")),  # "" = latest
        ("mnist", None, ModelTarget("mnist", "2")),  # the client's model keeps its version
        ("fashion", None, ModelTarget("fashion", "")),  # another model: its latest
        ("fashion", "4", ModelTarget("fashion", "4")),
        ("", None, ModelTarget("", "")),  # the server's default model
    ],
)
def test_per_call_model_choice(
    client: Client, model: str | None, model_version: str | None, expected: ModelTarget
):
    target = client._model_target(model, model_version)
    assert target == expected
    (request,) = client._classify_requests(ONE_IMAGE, None, target)
    assert (request.model_name, request.model_version) == (expected.name, expected.version)


def test_a_client_without_defaults_asks_for_the_servers_model():
    with Client(NOWHERE) as plain:
        assert plain._model_target(None, None) == ModelTarget("", "")
        # ModelMetadata needs a name: the server's default model is "mnist".
        assert plain._model_metadata_target(None, None) == ModelTarget("mnist", "")
        assert plain._model_metadata_target("fashion", None) == ModelTarget("fashion", "")


def test_model_arguments_must_be_strings(client: Client):
    with pytest.raises(InvalidInputError, match="model must be a string"):
        client.classify_one(ONE_IMAGE, model=7)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="model_version must be a string"):
        client.classify(ONE_IMAGE, model_version=2)  # type: ignore[arg-type]


def test_stream_requests_carry_the_calls_model(client: Client):
    builder = StreamRequestBuilder(client, None, 2, ModelTarget("fashion", "3"))
    assert builder.add(ONE_IMAGE) is None
    ready = builder.add(ONE_IMAGE)
    assert ready is not None
    pending, request = ready
    assert (request.model_name, request.model_version) == ("fashion", "3")
    assert (pending.request_id, pending.image_count) == ("0", 2)


async def test_async_client_has_the_same_repository_methods():
    async with AsyncClient(NOWHERE) as client:
        for method in ("models", "load_model", "unload_model"):
            assert callable(getattr(client, method))
        with pytest.raises(InvalidInputError):
            await client.load_model("")
        assert client._model_target("fashion", None) == ModelTarget("fashion", "")
