"""The SDK's private health/metadata messages are byte-compatible with the real ones,
and importing the SDK registers nothing in protobuf's default pool."""

from __future__ import annotations

import subprocess
import sys

from grpc_health.v1 import health_pb2

from mnist_serving_client import wire_messages
from mnist_serving_client.health import ServingStatus, serving_status_from_response
from mnist_serving_client.model_metadata import model_metadata_from_response
from mnist_serving_proto import open_inference_pb2


def test_health_request_bytes_match_grpc_health():
    ours = wire_messages.HealthCheckRequest(service="mnist_serving.v1.Classifier")
    real = health_pb2.HealthCheckRequest(service="mnist_serving.v1.Classifier")
    assert ours.SerializeToString() == real.SerializeToString()


def test_every_health_status_parses():
    for status in ServingStatus:
        data = health_pb2.HealthCheckResponse(status=status.value).SerializeToString()
        assert serving_status_from_response(wire_messages.parse_health_response(data)) is status


def test_model_metadata_round_trips_with_the_v2_stubs():
    request = wire_messages.ModelMetadataRequest(name="mnist", version="2")
    parsed = open_inference_pb2.ModelMetadataRequest.FromString(request.SerializeToString())
    assert (parsed.name, parsed.version) == ("mnist", "2")

    tensor = open_inference_pb2.ModelMetadataResponse.TensorMetadata
    response = open_inference_pb2.ModelMetadataResponse(
        name="mnist",
        versions=["1", "2"],
        platform="onnxruntime_onnx",
        inputs=[tensor(name="pixels", datatype="UINT8", shape=[-1, 1, 28, 28])],
        outputs=[tensor(name="probabilities", datatype="FP32", shape=[-1, 10])],
    )
    metadata = model_metadata_from_response(
        wire_messages.parse_model_metadata_response(response.SerializeToString())
    )
    assert metadata.versions == ("1", "2")
    assert metadata.inputs[0].shape == (-1, 1, 28, 28)
    assert metadata.outputs[0].datatype == "FP32"


def test_importing_the_sdk_registers_no_global_messages():
    # A fresh interpreter: this test process has already loaded the real stubs.
    probe = (
        "import mnist_serving_client, sys\n"
        "from google.protobuf import descriptor_pool\n"
        "pool = descriptor_pool.Default()\n"
        "for name in ('inference.ModelMetadataRequest', 'grpc.health.v1.HealthCheckRequest'):\n"
        "    try:\n"
        "        pool.FindMessageTypeByName(name)\n"
        "        sys.exit(name + ' registered')\n"
        "    except KeyError:\n"
        "        pass\n"
        "assert 'mnist_serving_proto.open_inference_pb2' not in sys.modules\n"
        "assert 'grpc_health.v1.health_pb2' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
