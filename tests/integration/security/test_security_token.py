"""Bearer-token auth on a real server: refusals, exemptions, rotation, metrics, both APIs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mnist_serving_proto import classifier_pb2_grpc, open_inference_pb2, open_inference_pb2_grpc
from mnist_serving_server.app import ServerStartError
from mnist_serving_server.grpc_api.auth import AUTH_TOKEN_ENV, REASON_UNAUTHENTICATED
from mnist_serving_server.grpc_api.health import CLASSIFIER_SERVICE
from mnist_serving_server.grpc_api.native_front import NativeFront
from tests.integration.conftest import StartApp
from tests.integration.security.security_support import (
    ONE_DIGIT,
    RPC_TIMEOUT_S,
    bearer,
    classify_code,
    expect_refused,
    new_token,
    write_token_file,
)
from tests.integration.server.classify_support import raw_request
from tests.integration.v2.v2_helpers import raw_infer_request
from tests.support.metrics import app_metric

STREAM_REQUESTS = 3
UNAUTHENTICATED = "UNAUTHENTICATED"


@pytest.fixture
def token() -> str:
    return new_token()


@pytest.fixture
def token_file(tmp_path: Path, token: str) -> Path:
    return write_token_file(tmp_path / "tokens", token)


async def test_every_wrong_credential_gets_the_same_generic_refusal(
    start_app: StartApp, token_file: Path, token: str
) -> None:
    app = await start_app(auth_token_file=token_file)
    wrong_credentials = {
        "no header": None,
        "other header": (("x-api-key", token),),
        "wrong scheme": (("authorization", f"Basic {token}"),),
        "no scheme": (("authorization", token),),
        "wrong token": bearer(new_token()),
        "token prefix": bearer(token[:-1]),
        "token plus a character": bearer(token + "0"),
        "empty bearer": (("authorization", "Bearer "),),
    }
    async with aio.insecure_channel(app.target) as channel:
        for what, metadata in wrong_credentials.items():
            code, details = await classify_code(channel, metadata)
            assert code is grpc.StatusCode.UNAUTHENTICATED, what
            expect_refused((code, details))
        assert await classify_code(channel, bearer(token)) == (grpc.StatusCode.OK, "")
        # The scheme is case-insensitive (RFC 7235); the token is not.
        lower_scheme = (("authorization", f"bearer {token}"),)
        assert await classify_code(channel, lower_scheme) == (grpc.StatusCode.OK, "")
        expect_refused(await classify_code(channel, bearer(token.upper())))
    refused = len(wrong_credentials) + 1
    assert (
        app_metric(app, "mnist_serving_rejections_total", reason=REASON_UNAUTHENTICATED) == refused
    )
    assert app_metric(
        app, "mnist_serving_requests_total", method="Classify", code=UNAUTHENTICATED
    ) == (refused)
    assert app_metric(app, "mnist_serving_requests_total", method="Classify", code="OK") == 2


async def test_streams_and_the_v2_api_are_protected_too(
    start_app: StartApp, token_file: Path, token: str
) -> None:
    app = await start_app(auth_token_file=token_file)
    async with aio.insecure_channel(app.target) as channel:
        classifier = classifier_pb2_grpc.ClassifierStub(channel)
        v2 = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        for metadata in (None, bearer(new_token())):
            expect_refused(await asyncio.to_thread(_stream_status, app.target, metadata))
            with pytest.raises(aio.AioRpcError) as infer_refused:
                await v2.ModelInfer(
                    raw_infer_request(ONE_DIGIT), metadata=metadata, timeout=RPC_TIMEOUT_S
                )
            expect_refused((infer_refused.value.code(), infer_refused.value.details() or ""))
            with pytest.raises(aio.AioRpcError) as live_refused:
                await v2.ServerLive(
                    open_inference_pb2.ServerLiveRequest(), metadata=metadata, timeout=RPC_TIMEOUT_S
                )
            expect_refused((live_refused.value.code(), live_refused.value.details() or ""))

        replies = [
            reply
            async for reply in classifier.ClassifyStream(
                iter([raw_request(ONE_DIGIT)] * STREAM_REQUESTS),
                metadata=bearer(token),
                timeout=RPC_TIMEOUT_S,
            )
        ]
        assert len(replies) == STREAM_REQUESTS
        inferred = await v2.ModelInfer(
            raw_infer_request(ONE_DIGIT), metadata=bearer(token), timeout=RPC_TIMEOUT_S
        )
        assert "probabilities" in {output.name for output in inferred.outputs}
        live = await v2.ServerLive(
            open_inference_pb2.ServerLiveRequest(), metadata=bearer(token), timeout=RPC_TIMEOUT_S
        )
        assert live.live
    for method in ("ClassifyStream", "ModelInfer", "ServerLive"):
        assert (
            app_metric(app, "mnist_serving_requests_total", method=method, code=UNAUTHENTICATED)
            == 2
        ), method


async def test_health_and_reflection_are_exempt_by_default(
    start_app: StartApp, token_file: Path
) -> None:
    app = await start_app(auth_token_file=token_file)
    async with aio.insecure_channel(app.target) as channel:
        expect_refused(await classify_code(channel))
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", CLASSIFIER_SERVICE):
            answer = await health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert CLASSIFIER_SERVICE in await _reflected_services(channel)


async def test_exempting_nothing_protects_health_and_reflection(
    start_app: StartApp, token_file: Path, token: str
) -> None:
    app = await start_app(auth_token_file=token_file, auth_exempt_services=())
    async with aio.insecure_channel(app.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(aio.AioRpcError) as refused:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
        expect_refused((refused.value.code(), refused.value.details() or ""))
        expect_refused(await asyncio.to_thread(_reflection_status, app.target))
        answer = await health.Check(
            health_pb2.HealthCheckRequest(), metadata=bearer(token), timeout=RPC_TIMEOUT_S
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    if isinstance(app._grpc, NativeFront):
        # Nothing exempt: pygrpc-native refuses at the headers, forwarded methods too; its
        # counters do not name a forwarded method, so those count as refusals only (the
        # Check and the reflection stream), added up when the front stops at the latest.
        assert app._grpc.header_auth
        await app.stop()
        assert app_metric(app, "mnist_serving_rejections_total", reason="unauthenticated") == 2
        return
    assert (
        app_metric(app, "mnist_serving_requests_total", method="Check", code=UNAUTHENTICATED) == 1
    )


async def test_a_service_can_be_exempted_on_purpose(start_app: StartApp, token_file: Path) -> None:
    app = await start_app(
        auth_token_file=token_file,
        auth_exempt_services=("grpc.health.v1.Health", CLASSIFIER_SERVICE),
    )
    async with aio.insecure_channel(app.target) as channel:
        assert await classify_code(channel) == (grpc.StatusCode.OK, "")
        with pytest.raises(aio.AioRpcError) as refused:
            await open_inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                raw_infer_request(ONE_DIGIT), timeout=RPC_TIMEOUT_S
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_methods_are_refused_without_growing_the_metric_labels(
    start_app: StartApp, token_file: Path
) -> None:
    """An unauthenticated caller learns nothing about which methods exist."""
    app = await start_app(auth_token_file=token_file)
    async with aio.insecure_channel(app.target) as channel:
        invented: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/mnist_serving.v1.Classifier/NoSuchMethod"
        )
        with pytest.raises(aio.AioRpcError) as refused:
            await invented(b"", timeout=RPC_TIMEOUT_S)
    expect_refused((refused.value.code(), refused.value.details() or ""))
    assert app_metric(app, "mnist_serving_rejections_total", reason=REASON_UNAUTHENTICATED) == 1
    methods = {
        sample.labels["method"]
        for family in app.registry.collect()
        if family.name == "mnist_serving_requests"
        for sample in family.samples
    }
    assert "NoSuchMethod" not in methods


async def test_rotation_accepts_every_listed_token_and_the_environment_token(
    start_app: StartApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, from_env = new_token(), new_token(), new_token()
    monkeypatch.setenv(AUTH_TOKEN_ENV, from_env)
    app = await start_app(auth_token_file=write_token_file(tmp_path / "tokens", old, new))
    async with aio.insecure_channel(app.target) as channel:
        for accepted in (old, new, from_env):
            assert await classify_code(channel, bearer(accepted)) == (grpc.StatusCode.OK, "")
        expect_refused(await classify_code(channel, bearer(new_token())))


async def test_the_environment_token_alone_turns_auth_on(
    start_app: StartApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = new_token()
    monkeypatch.setenv(AUTH_TOKEN_ENV, token)
    app = await start_app()
    async with aio.insecure_channel(app.target) as channel:
        expect_refused(await classify_code(channel))
        assert await classify_code(channel, bearer(token)) == (grpc.StatusCode.OK, "")


async def test_auth_is_off_without_tokens(start_app: StartApp) -> None:
    app = await start_app()
    async with aio.insecure_channel(app.target) as channel:
        assert await classify_code(channel) == (grpc.StatusCode.OK, "")
        assert await classify_code(channel, bearer(new_token())) == (grpc.StatusCode.OK, "")
    # Without auth the reason is never created, so dashboards show no auth series.
    assert (
        app.registry.get_sample_value(
            "mnist_serving_rejections_total", {"reason": REASON_UNAUTHENTICATED}
        )
        is None
    )


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("", "holds no token"),
        ("# only a comment\n\n", "holds no token"),
        ("short\n", "at least"),
        ("two words-and-more-characters\n", "without spaces"),
    ],
)
async def test_unusable_token_files_stop_the_start(
    start_app: StartApp, tmp_path: Path, content: str, complaint: str
) -> None:
    """Fail closed: a token file that gives no usable token never means "auth off"."""
    token_file = tmp_path / "tokens"
    token_file.write_text(content)
    with pytest.raises(ServerStartError, match=complaint) as error:
        await start_app(auth_token_file=token_file)
    line = content.strip()
    if line and not line.startswith("#"):
        assert line not in str(error.value)  # the message never quotes a token


async def test_a_missing_token_file_or_unknown_exempt_service_stops_the_start(
    start_app: StartApp, tmp_path: Path, token_file: Path
) -> None:
    with pytest.raises(ServerStartError, match="cannot read the auth token file"):
        await start_app(auth_token_file=tmp_path / "missing")
    with pytest.raises(ServerStartError, match=re.escape("grpc.health.v1.Helth")):
        await start_app(auth_token_file=token_file, auth_exempt_services=("grpc.health.v1.Helth",))


def _stream_status(
    target: str, metadata: tuple[tuple[str, str], ...] | None
) -> tuple[grpc.StatusCode, str]:
    """ClassifyStream's status, from the blocking API (in a thread: the server shares our loop).

    The blocking API because grpc.aio's client reports INTERNAL instead of the server's
    status when the server ends a request stream before the client has finished writing
    it (https://github.com/grpc/grpc/issues/36066): a client bug this test must not hit.
    """
    with grpc.insecure_channel(target) as channel:
        replies = classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream(
            iter([raw_request(ONE_DIGIT)] * STREAM_REQUESTS),
            metadata=metadata,
            timeout=RPC_TIMEOUT_S,
        )
        try:
            for _ in replies:
                return grpc.StatusCode.OK, "a refused stream yielded a reply"
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _reflection_status(target: str) -> tuple[grpc.StatusCode, str]:
    """A reflection call's status, from the blocking API (see _stream_status for why)."""
    with grpc.insecure_channel(target) as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=RPC_TIMEOUT_S,
        )
        try:
            for _ in replies:
                pass
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def _reflected_services(channel: aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names: set[str] = set()
    async for reply in stub.ServerReflectionInfo(iter([request]), timeout=RPC_TIMEOUT_S):
        names.update(service.name for service in reply.list_services_response.service)
    return names
