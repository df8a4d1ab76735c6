"""TLS and mutual TLS on the gRPC port, with certificates made for the test (cryptography)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc import aio

from mnist_serving_proto import classifier_pb2_grpc
from tests.integration.conftest import StartApp
from tests.integration.server.classify_support import raw_request

CERT_VALIDITY = datetime.timedelta(days=1)
RPC_TIMEOUT_S = 10
ONE_DIGIT = np.zeros((1, 28, 28), dtype=np.uint8)


def make_certificate(
    common_name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA (issuer None) or a leaf signed by `issuer`, valid for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    signing_key = key if issuer is None else issuer[1]
    return builder.sign(signing_key, hashes.SHA256()), key


def write_pem(
    folder: Path, stem: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(pair[0].public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        pair[1].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_serves_a_client_that_trusts_the_ca(start_app: StartApp, tmp_path: Path) -> None:
    ca = make_certificate("test CA", None)
    ca_cert, _ = write_pem(tmp_path, "ca", ca)
    server_cert, server_key = write_pem(tmp_path, "server", make_certificate("server", ca))
    app = await start_app(tls_cert=server_cert, tls_key=server_key)

    credentials = grpc.ssl_channel_credentials(root_certificates=ca_cert.read_bytes())
    async with aio.secure_channel(app.target, credentials) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        response = await stub.Classify(raw_request(ONE_DIGIT), timeout=RPC_TIMEOUT_S)
    assert len(response.predictions) == 1
    async with aio.insecure_channel(app.target) as plaintext:
        with pytest.raises(aio.AioRpcError) as refused:
            await classifier_pb2_grpc.ClassifierStub(plaintext).Classify(
                raw_request(ONE_DIGIT), timeout=RPC_TIMEOUT_S
            )
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(
    start_app: StartApp, tmp_path: Path
) -> None:
    ca = make_certificate("test CA", None)
    ca_cert, _ = write_pem(tmp_path, "ca", ca)
    server_cert, server_key = write_pem(tmp_path, "server", make_certificate("server", ca))
    client_cert, client_key = write_pem(tmp_path, "client", make_certificate("client", ca))
    app = await start_app(tls_cert=server_cert, tls_key=server_key, tls_client_ca=ca_cert)

    with_identity = grpc.ssl_channel_credentials(
        root_certificates=ca_cert.read_bytes(),
        private_key=client_key.read_bytes(),
        certificate_chain=client_cert.read_bytes(),
    )
    async with aio.secure_channel(app.target, with_identity) as channel:
        response = await classifier_pb2_grpc.ClassifierStub(channel).Classify(
            raw_request(ONE_DIGIT), timeout=RPC_TIMEOUT_S
        )
    assert len(response.predictions) == 1

    anonymous = grpc.ssl_channel_credentials(root_certificates=ca_cert.read_bytes())
    async with aio.secure_channel(app.target, anonymous) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await classifier_pb2_grpc.ClassifierStub(channel).Classify(
                raw_request(ONE_DIGIT), timeout=RPC_TIMEOUT_S
            )
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
