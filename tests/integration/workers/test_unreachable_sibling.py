"""A real server (worker 0 of 2) whose sibling worker never listens: every call that needs
the sibling is UNAVAILABLE / 503 with a caller-safe message, never gRPC's UNKNOWN, and the
metrics count the code the caller got. A sibling that answers out of schema is INTERNAL /
500 with the generic message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc import aio

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.app import ServingApp
from mnist_serving_server.core.errors import INTERNAL_MESSAGE
from mnist_serving_server.peers import WorkerGroup
from tests.integration.conftest import app_config
from tests.integration.http.http_support import call
from tests.support.metrics import sample_sum

MODEL = "mnist"
# Long enough for a local reload of the small reference model to finish first (the leader
# applies a change locally and in the siblings at once), short enough to keep the test fast.
PEER_TIMEOUT_S = 1.0
# What an exception's text or the link's internals look like; none may reach a caller.
LEAKS = ("Error", "Errno", "refused", "Unexpected", "Traceback", ".sock", "/")

if TYPE_CHECKING:  # the async stub's type exists in the .pyi only
    Rpc = Callable[[pb_grpc.GRPCInferenceServiceAsyncStub], Awaitable[object]]

GRPC_CALLS: list[tuple[str, Rpc]] = [
    ("RepositoryIndex", lambda stub: stub.RepositoryIndex(pb.RepositoryIndexRequest())),
    ("ModelStatistics", lambda stub: stub.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL))),
    (
        "RepositoryModelLoad",
        lambda stub: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL)),
    ),
    (
        "RepositoryModelUnload",
        lambda stub: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL)),
    ),
]
HTTP_CALLS: list[tuple[str, str, str]] = [
    ("RepositoryIndex", "POST", "/v2/repository/index"),
    ("ModelStatistics", "GET", f"/v2/models/{MODEL}/stats"),
    ("RepositoryModelLoad", "POST", f"/v2/repository/models/{MODEL}/load"),
    ("RepositoryModelUnload", "POST", f"/v2/repository/models/{MODEL}/unload"),
]


@contextlib.asynccontextmanager
async def worker_zero(model_repository: Path, sibling: Path) -> AsyncIterator[ServingApp]:
    """Worker 0 (the leader) of a two-worker group whose worker 1 listens at `sibling`."""
    group = WorkerGroup(
        index=0,
        sockets=(sibling.with_name("worker-0.sock"), sibling),
        call_timeout_s=PEER_TIMEOUT_S,
    )
    app = ServingApp(app_config(model_repository), group=group)
    try:
        await app.start()
        yield app
    finally:
        await app.stop(drain_delay_s=0)


def requests_counted(app: ServingApp, protocol: str, method: str, code: str) -> float:
    labels = {"protocol": protocol, "method": method, "code": code}
    return sample_sum(app.registry, "mnist_serving_requests_total", labels)


def assert_caller_safe(message: str, sibling: Path) -> None:
    assert message, "an error needs a message"
    for leak in (*LEAKS, str(sibling)):
        assert leak not in message, (leak, message)


async def test_grpc_calls_needing_an_unreachable_sibling_are_unavailable(
    model_repository: Path, tmp_path: Path
) -> None:
    sibling = tmp_path / "worker-1.sock"  # nobody ever listens here
    async with (
        worker_zero(model_repository, sibling) as app,
        aio.insecure_channel(app.target) as channel,
    ):
        stub: pb_grpc.GRPCInferenceServiceAsyncStub = pb_grpc.GRPCInferenceServiceStub(channel)
        for method, rpc in GRPC_CALLS:
            with pytest.raises(aio.AioRpcError) as caught:
                await rpc(stub)
            error = caught.value
            assert error.code() is grpc.StatusCode.UNAVAILABLE, (method, error)
            assert "worker process 1 of 2" in (error.details() or "")
            assert_caller_safe(error.details() or "", sibling)
            assert requests_counted(app, "grpc", method, "UNAVAILABLE") == 1, method
            assert requests_counted(app, "grpc", method, "UNKNOWN") == 0, method
            assert requests_counted(app, "grpc", method, "INTERNAL") == 0, method


async def test_http_routes_needing_an_unreachable_sibling_are_503(
    model_repository: Path, tmp_path: Path
) -> None:
    sibling = tmp_path / "worker-1.sock"
    async with worker_zero(model_repository, sibling) as app:
        for method, verb, path in HTTP_CALLS:
            body: dict[str, object] | None = {} if verb == "POST" else None
            answer = await call(app.http_base, verb, path, body)
            assert answer.status == 503, (method, answer)
            message = answer.json()["error"]
            assert "worker process 1 of 2" in message
            assert_caller_safe(message, sibling)
            assert requests_counted(app, "http", method, "UNAVAILABLE") == 1, method
            assert requests_counted(app, "http", method, "INTERNAL") == 0, method


async def answer_every_request_with(line: bytes, path: Path) -> asyncio.Server:
    """A sibling that reads each request and answers `line` (out of the peers' schema)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(line)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, path=str(path))


async def test_a_sibling_answering_out_of_schema_is_internal_with_the_generic_message(
    model_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sibling = tmp_path / "worker-1.sock"
    broken = await answer_every_request_with(b'{"result": 5}\n', sibling)
    try:
        async with (
            worker_zero(model_repository, sibling) as app,
            aio.insecure_channel(app.target) as channel,
        ):
            stub: pb_grpc.GRPCInferenceServiceAsyncStub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(aio.AioRpcError) as caught:
                await stub.RepositoryIndex(pb.RepositoryIndexRequest())
            assert caught.value.code() is grpc.StatusCode.INTERNAL
            assert caught.value.details() == INTERNAL_MESSAGE
            assert requests_counted(app, "grpc", "RepositoryIndex", "INTERNAL") == 1
            answer = await call(app.http_base, "GET", f"/v2/models/{MODEL}/stats")
            assert (answer.status, answer.json()) == (500, {"error": INTERNAL_MESSAGE})
            assert requests_counted(app, "http", "ModelStatistics", "INTERNAL") == 1
    finally:
        broken.close()
        await broken.wait_closed()
    # The details went to the log, with what the sibling said.
    logged = [r for r in caplog.records if r.exc_info and "worker process 1" in str(r.exc_info[1])]
    assert len(logged) == 2
