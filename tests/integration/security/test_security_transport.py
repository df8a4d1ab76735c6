"""TLS, mTLS and tokens through the client SDK, and a /metrics bound to localhost only.

Certificates are made per test (tests/integration/client/certificates.py); a second,
unrelated CA stands for "someone else's" certificates.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from mnist_serving_client import (
    AsyncClient,
    RetryPolicy,
    ServingStatus,
    TlsConfig,
    UnauthenticatedError,
    UnavailableError,
)
from mnist_serving_server.app import ServingApp
from mnist_serving_server.grpc_api.auth import REASON_UNAUTHENTICATED
from tests.integration.conftest import StartApp
from tests.integration.security.security_support import (
    RPC_TIMEOUT_S,
    CertificateFiles,
    certificate_set,
    classify_code,
    new_token,
    write_token_file,
)
from tests.integration.server.classify_support import ReferenceModel
from tests.support.metrics import metrics_text

DIGITS = 4
# Connection failures are what these tests expect: one attempt, no retry backoff.
NO_RETRY = RetryPolicy(max_attempts=1)
# 127.0.0.0/8 is all loopback on Linux, but a socket bound to 127.0.0.1 only answers there.
OTHER_LOOPBACK_ADDRESS = "127.0.0.2"
METRICS_TIMEOUT_S = 10


@pytest.fixture
def ours(tmp_path: Path) -> CertificateFiles:
    return certificate_set(tmp_path / "ours")


@pytest.fixture
def theirs(tmp_path: Path) -> CertificateFiles:
    """Certificates from another CA: valid, but not trusted by anyone here."""
    return certificate_set(tmp_path / "theirs")


def digits(sample_digits: tuple[Any, Any]) -> np.ndarray:
    images, _ = sample_digits
    return np.asarray(images[:DIGITS])


async def classify_with(app: ServingApp, images: np.ndarray, **client_options: Any) -> list[int]:
    async with AsyncClient(app.target, retry=NO_RETRY, **client_options) as client:
        return [prediction.label for prediction in await client.classify(images)]


async def test_tls_client_must_trust_the_servers_ca(
    start_app: StartApp,
    ours: CertificateFiles,
    theirs: CertificateFiles,
    sample_digits: Any,
    model_dir: Path,
) -> None:
    app = await start_app(tls_cert=ours.server_cert, tls_key=ours.server_key)
    images = digits(sample_digits)
    labels = await classify_with(app, images, tls=TlsConfig(ca_file=ours.ca_cert))
    expected = ReferenceModel(model_dir).probabilities(images).argmax(axis=1)
    assert labels == expected.tolist()
    with pytest.raises(UnavailableError):
        await classify_with(app, images, tls=TlsConfig(ca_file=theirs.ca_cert))
    with pytest.raises(UnavailableError):
        await classify_with(app, images)  # plaintext to a TLS port


async def test_mtls_needs_a_client_certificate_from_the_trusted_ca(
    start_app: StartApp, ours: CertificateFiles, theirs: CertificateFiles, sample_digits: Any
) -> None:
    app = await start_app(
        tls_cert=ours.server_cert, tls_key=ours.server_key, tls_client_ca=ours.ca_cert
    )
    images = digits(sample_digits)
    right = TlsConfig(
        ca_file=ours.ca_cert, client_cert_file=ours.client_cert, client_key_file=ours.client_key
    )
    assert len(await classify_with(app, images, tls=right)) == DIGITS
    refused = {
        "no client certificate": TlsConfig(ca_file=ours.ca_cert),
        "client certificate from another CA": TlsConfig(
            ca_file=ours.ca_cert,
            client_cert_file=theirs.client_cert,
            client_key_file=theirs.client_key,
        ),
    }
    for tls in refused.values():
        with pytest.raises(UnavailableError):
            await classify_with(app, images, tls=tls)


async def test_token_as_call_credentials_over_tls_and_mtls(
    start_app: StartApp, ours: CertificateFiles, tmp_path: Path, sample_digits: Any
) -> None:
    token = new_token()
    app = await start_app(
        tls_cert=ours.server_cert,
        tls_key=ours.server_key,
        tls_client_ca=ours.ca_cert,
        auth_token_file=write_token_file(tmp_path / "tokens", token),
    )
    images = digits(sample_digits)
    mtls = TlsConfig(
        ca_file=ours.ca_cert, client_cert_file=ours.client_cert, client_key_file=ours.client_key
    )
    assert len(await classify_with(app, images, tls=mtls, token=token)) == DIGITS
    token_file = tmp_path / "client-token"  # the SDK's token file holds just the token
    token_file.write_text(token + "\n")
    async with AsyncClient(app.target, tls=mtls, token_file=token_file, retry=NO_RETRY) as client:
        metadata = await client.metadata()  # the KServe V2 ModelMetadata RPC
        assert metadata.name == "mnist"
        assert await client.health() is ServingStatus.SERVING
    # A valid client certificate is not enough once tokens are on: both are required.
    with pytest.raises(UnauthenticatedError):
        await classify_with(app, images, tls=mtls)
    with pytest.raises(UnauthenticatedError):
        await classify_with(app, images, tls=mtls, token=new_token())


async def test_token_as_plaintext_metadata(
    start_app: StartApp, tmp_path: Path, sample_digits: Any
) -> None:
    """The SDK's path for a trusted network without TLS: the same header, sent as metadata."""
    token = new_token()
    app = await start_app(auth_token_file=write_token_file(tmp_path / "tokens", token))
    images = digits(sample_digits)
    assert len(await classify_with(app, images, token=token)) == DIGITS
    for wrong in ({}, {"token": new_token()}):
        with pytest.raises(UnauthenticatedError) as refused:
            await classify_with(app, images, **wrong)
        assert "authentication required" in str(refused.value)
    async with AsyncClient(app.target, retry=NO_RETRY) as anonymous:
        # Health stays open for probes and load balancers.
        assert await anonymous.health() is ServingStatus.SERVING


async def test_metrics_bound_to_localhost_only(start_app: StartApp, tmp_path: Path) -> None:
    app = await start_app(
        metrics_host="127.0.0.1", auth_token_file=write_token_file(tmp_path / "t", new_token())
    )
    async with aio.insecure_channel(app.target) as channel:
        code, _ = await classify_code(channel)
    assert code is grpc.StatusCode.UNAUTHENTICATED
    port = app.metrics_port
    assert port is not None
    text = await asyncio.to_thread(metrics_text, port)
    assert f'mnist_serving_rejections_total{{reason="{REASON_UNAUTHENTICATED}"}} 1.0' in text
    refused = (
        'mnist_serving_requests_total{code="UNAUTHENTICATED",method="Classify",model="",'
        'protocol="grpc",version=""} 1.0'
    )
    assert refused in text
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((OTHER_LOOPBACK_ADDRESS, port), timeout=METRICS_TIMEOUT_S)


async def test_grpc_host_binding_is_honoured_too(start_app: StartApp) -> None:
    """--host 127.0.0.1 (the tests' setting) does not listen on other addresses either."""
    app = await start_app()
    async with aio.insecure_channel(f"{OTHER_LOOPBACK_ADDRESS}:{app.grpc_port}") as channel:
        check: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/grpc.health.v1.Health/Check"
        )
        with pytest.raises(aio.AioRpcError) as refused:
            await check(b"", timeout=RPC_TIMEOUT_S)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
