"""A test-only stand-in for the server's HTTP front, used until the real one is in this branch.

It answers what the drawing page uses, the way KServe V2 REST and Triton's extensions do:
`GET /` and `/static/<file>` (the page's folder), `POST /v2/repository/index`,
`GET /v2/models/{m}/versions/{v}` and `POST /v2/models/{m}/versions/{v}/infer` (UINT8
JSON inputs; the classification extension; Triton's binary output extension), each from a
real ONNX Runtime session of the repository's models. Errors are `{"error": "..."}`.
The browser test prefers the real server (`ServingApp` with an HTTP port) when it has one.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

STATIC_DIR = (
    Path(__file__).resolve().parents[3] / "server" / "mnist_serving_server" / "http_api" / "static"
)
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
ONNX_TYPES = {"tensor(uint8)": "UINT8", "tensor(float)": "FP32"}
MODEL_PATH = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)(/infer)?$")


class StubModel:
    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        self.labels: list[str] = json.loads(metadata.get("labels", "[]"))

    def tensors(self, values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": value.name,
                "datatype": ONNX_TYPES[value.type],
                "shape": [d if isinstance(d, int) else -1 for d in value.shape],
            }
            for value in values
        ]


class StubServer:
    def __init__(self, repository: Path) -> None:
        self.models: dict[tuple[str, str], StubModel] = {}
        for path in sorted(repository.glob("*/*/model.onnx")):
            self.models[(path.parent.parent.name, path.parent.name)] = StubModel(path)
        self.inferences = 0
        self.lock = threading.Lock()


def _handler(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(
            self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        def do_GET(self) -> None:
            if self.path == "/":
                self._static("index.html")
            elif self.path.startswith("/static/"):
                self._static(self.path.removeprefix("/static/"))
            elif match := MODEL_PATH.match(self.path):
                model = stub.models.get((match[1], match[2]))
                if model is None or match[3]:
                    self._error(HTTPStatus.NOT_FOUND, f"unknown model {match[1]!r}")
                    return
                self._json(
                    HTTPStatus.OK,
                    {
                        "name": match[1],
                        "versions": [match[2]],
                        "platform": "onnxruntime_onnx",
                        "inputs": model.tensors(model.session.get_inputs()),
                        "outputs": model.tensors(model.session.get_outputs()),
                    },
                )
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}")

        def _static(self, name: str) -> None:
            path = STATIC_DIR / name
            if "/" in name or not path.is_file():
                self._error(HTTPStatus.NOT_FOUND, f"no file {name}")
                return
            self._send(HTTPStatus.OK, path.read_bytes(), CONTENT_TYPES[path.suffix])

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/v2/repository/index":
                index = [
                    {"name": name, "version": version, "state": "READY", "reason": ""}
                    for name, version in stub.models
                ]
                self._json(HTTPStatus.OK, index)
                return
            match = MODEL_PATH.match(self.path)
            model = stub.models.get((match[1], match[2])) if match and match[3] else None
            if match is None or model is None:
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}")
                return
            try:
                self._infer(match[1], match[2], model, json.loads(body))
            except (KeyError, ValueError, IndexError) as error:
                self._error(HTTPStatus.BAD_REQUEST, f"bad request: {error}")

        def _infer(self, name: str, version: str, model: StubModel, request: Any) -> None:
            (tensor,) = request["inputs"]
            pixels = np.asarray(tensor["data"], dtype=np.uint8).reshape(tensor["shape"])
            wanted = request.get("outputs") or [
                {"name": o.name} for o in model.session.get_outputs()
            ]
            results = model.session.run([o["name"] for o in wanted], {tensor["name"]: pixels})
            with stub.lock:
                stub.inferences += 1
            outputs: list[dict[str, Any]] = []
            binary: list[bytes] = []
            for spec, value in zip(wanted, results, strict=True):
                parameters = spec.get("parameters", {})
                count = int(parameters.get("classification", 0))
                if count:
                    order = np.argsort(-value[0], kind="stable")[:count]
                    data = [f"{value[0][i]:f}:{i}:{model.labels[i]}" for i in order]
                    outputs.append(
                        {
                            "name": spec["name"],
                            "datatype": "BYTES",
                            "shape": [1, count],
                            "data": data,
                        }
                    )
                elif parameters.get("binary_data"):
                    raw = np.ascontiguousarray(value, dtype="<f4").tobytes()
                    binary.append(raw)
                    outputs.append(
                        {
                            "name": spec["name"],
                            "datatype": "FP32",
                            "shape": list(value.shape),
                            "parameters": {"binary_data_size": len(raw)},
                        }
                    )
                else:
                    outputs.append(
                        {
                            "name": spec["name"],
                            "datatype": "FP32",
                            "shape": list(value.shape),
                            "data": value.ravel().tolist(),
                        }
                    )
            header = json.dumps(
                {
                    "model_name": name,
                    "model_version": version,
                    "id": request.get("id", ""),
                    "outputs": outputs,
                }
            ).encode()
            if not binary:
                self._send(HTTPStatus.OK, header, "application/json")
                return
            self._send(
                HTTPStatus.OK,
                header + b"".join(binary),
                "application/octet-stream",
                {"Inference-Header-Content-Length": str(len(header))},
            )

    return Handler


@contextmanager
def serve_stub(repository: Path) -> Iterator[tuple[str, StubServer]]:
    """Serve `repository` on 127.0.0.1 (a free port); yield the base URL and the stub."""
    stub = StubServer(repository)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    thread = threading.Thread(target=httpd.serve_forever, name="v2-stub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", stub
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


__all__ = ["STATIC_DIR", "StubServer", "serve_stub"]
