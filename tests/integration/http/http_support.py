"""A small HTTP/1.1 client for the HTTP tests (http.client in a worker thread)."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

TIMEOUT_S = 30.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)


class Connection:
    """One keep-alive connection to a server's HTTP port."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        assert parts.hostname is not None
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT_S)

    def request_sync(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        self._connection.request(method, path, body=body, headers=headers or {})
        response = self._connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        return await asyncio.to_thread(self.request_sync, method, path, body, headers)

    def close(self) -> None:
        self._connection.close()


async def call(
    base: str,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request on a fresh connection; a dict/list body is sent as JSON."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    connection = Connection(base)
    try:
        return await connection.request(method, path, body, headers)
    finally:
        connection.close()


def binary_request(
    images: np.ndarray, *, outputs: list[dict[str, Any]] | None = None, binary_output: bool = True
) -> tuple[bytes, dict[str, str]]:
    """Triton's binary tensor data form of uint8 images [n,28,28]."""
    data = np.ascontiguousarray(images, dtype=np.uint8).tobytes()
    document: dict[str, Any] = {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": [len(images), 1, 28, 28],
                "parameters": {"binary_data_size": len(data)},
            }
        ],
    }
    if outputs is not None:
        document["outputs"] = outputs
    elif binary_output:
        document["parameters"] = {"binary_data_output": True}
    header = json.dumps(document).encode()
    return header + data, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def split_binary(answer: Answer) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the JSON part, output name -> its binary bytes) of a binary response."""
    length = int(answer.headers["inference-header-content-length"])
    document = json.loads(answer.body[:length])
    blobs: dict[str, bytes] = {}
    offset = length
    for output in document["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[output["name"]] = answer.body[offset : offset + size]
            offset += size
    assert offset == len(answer.body)
    return document, blobs


def png_of(image: np.ndarray) -> bytes:
    """A uint8 [28,28] MNIST digit (white on black) as a PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def bytes_elements(items: list[bytes]) -> bytes:
    """V2's binary BYTES form: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)
