"""Fixtures for the KServe V2 tests: our own open_inference stubs and a reference ORT session."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from grpc import aio

from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc


@pytest.fixture
def v2_stub(channel: aio.Channel) -> pb_grpc.GRPCInferenceServiceAsyncStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="session")
def reference_session(model_dir: Path) -> ort.InferenceSession:
    """ONNX Runtime on the served model file, without the server: the expected answers."""
    return ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
