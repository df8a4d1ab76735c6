"""Shared pieces of the security tests: tokens, certificate sets, calls."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import numpy as np
from grpc import aio

from mnist_serving_proto import classifier_pb2_grpc
from tests.integration.client.certificates import CertificateFiles, make_certificates
from tests.integration.server.classify_support import raw_request

RPC_TIMEOUT_S = 10
ONE_DIGIT = np.zeros((1, 28, 28), dtype=np.uint8)
# 32 random bytes as hex: what `openssl rand -hex 32` gives, and what docs/security.md advises.
TOKEN_BYTES = 32
# Every refusal must carry exactly this message, whatever was wrong.
GENERIC_DETAILS = "authentication required"


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def write_token_file(path: Path, *tokens: str) -> Path:
    """One token per line, with a comment and a blank line (both must be skipped)."""
    path.write_text("# accepted bearer tokens\n\n" + "".join(f"{t}\n" for t in tokens))
    return path


def certificate_set(folder: Path) -> CertificateFiles:
    """A fresh CA with a server (127.0.0.1) and a client certificate, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return make_certificates(folder)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def classify_code(
    channel: aio.Channel, metadata: tuple[tuple[str, str], ...] | None = None
) -> tuple[grpc.StatusCode, str]:
    """Call Classify with one digit; the status code and details (OK, "" on success)."""
    stub = classifier_pb2_grpc.ClassifierStub(channel)
    try:
        response = await stub.Classify(
            raw_request(ONE_DIGIT), metadata=metadata, timeout=RPC_TIMEOUT_S
        )
    except aio.AioRpcError as error:
        return error.code(), error.details() or ""
    assert len(response.predictions) == 1
    return grpc.StatusCode.OK, ""


def expect_refused(code_and_details: tuple[grpc.StatusCode, str]) -> None:
    code, details = code_and_details
    assert code is grpc.StatusCode.UNAUTHENTICATED, (code, details)
    assert details == GENERIC_DETAILS


__all__ = [
    "GENERIC_DETAILS",
    "ONE_DIGIT",
    "RPC_TIMEOUT_S",
    "CertificateFiles",
    "bearer",
    "certificate_set",
    "classify_code",
    "expect_refused",
    "new_token",
    "write_token_file",
]
