"""Wire compatibility with Triton's own generated protobuf classes.

A request built with tritonclient's `service_pb2` is serialised to bytes, sent over a plain
gRPC channel to our server, and the reply bytes are parsed with tritonclient's classes. And
our `proto/open_inference.proto` declares, for every message it has, exactly the fields of
Triton's `grpc_service.proto` (names, numbers, types, labels) and the same RPC signatures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc_tools import protoc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.server_process import REPO_ROOT, ServerProcess

OUR_PROTO = REPO_ROOT / "proto" / "open_inference.proto"
SERVICE = "inference.GRPCInferenceService"
MODEL_NAME = "mnist"
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def channel(v2_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(v2_server.target) as open_channel:
        yield open_channel


def triton_request(images: np.ndarray, request_id: str) -> Any:
    request = service_pb2.ModelInferRequest(model_name=MODEL_NAME, id=request_id)
    tensor = request.inputs.add()
    tensor.name = "pixels"
    tensor.datatype = "UINT8"
    tensor.shape.extend([len(images), 1, 28, 28])
    request.raw_input_contents.append(images.tobytes())
    request.outputs.add().name = "probabilities"
    return request


def test_raw_bytes_built_and_parsed_with_tritons_classes(
    channel: grpc.Channel, sample_digits: tuple[Any, Any]
) -> None:
    images = np.ascontiguousarray(sample_digits[0][:3], dtype=np.uint8)
    # No serializer on either side: bytes in, bytes out.
    model_infer: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/{SERVICE}/ModelInfer"
    )
    reply_bytes = model_infer(triton_request(images, "wire-1").SerializeToString())
    reply = service_pb2.ModelInferResponse.FromString(reply_bytes)
    assert reply.id == "wire-1"
    assert reply.model_name == MODEL_NAME
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.outputs] == [
        ("probabilities", "FP32", [3, 10])
    ]
    probabilities = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=TOLERANCE)
    # Every field of the reply is one Triton's schema knows.
    assert len(UnknownFieldSet(reply)) == 0
    assert all(len(UnknownFieldSet(tensor)) == 0 for tensor in reply.outputs)


def test_tritons_generated_stub_for_every_rpc(
    channel: grpc.Channel, sample_digits: tuple[Any, Any]
) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
    assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
    assert stub.ModelReady(service_pb2.ModelReadyRequest(name=MODEL_NAME)).ready
    assert stub.ServerMetadata(service_pb2.ServerMetadataRequest()).name == "mnist-serving"
    metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=MODEL_NAME))
    assert metadata.platform == "onnxruntime_onnx"
    images = np.ascontiguousarray(sample_digits[0][:2], dtype=np.uint8)
    replies = list(
        stub.ModelStreamInfer(iter([triton_request(images[:1], "a"), triton_request(images, "b")]))
    )
    assert [r.error_message for r in replies] == ["", ""]
    assert [r.infer_response.id for r in replies] == ["a", "b"]
    assert [list(r.infer_response.outputs[0].shape) for r in replies] == [[1, 10], [2, 10]]


def test_unserved_triton_rpcs_are_unimplemented(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryIndex(service_pb2.RepositoryIndexRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def compiled_proto(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    """Our .proto compiled by protoc into a descriptor set (not into any descriptor pool)."""
    out = tmp_path / "open_inference.pb"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={OUR_PROTO.parent}",
            f"--descriptor_set_out={out}",
            OUR_PROTO.name,
        ]
    )
    assert status == 0
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (ours,) = descriptor_set.file
    return ours


def messages_by_name(
    prefix: str, messages: Any
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield name, message
        yield from messages_by_name(name, message.nested_type)


def field_signature(message: descriptor_pb2.DescriptorProto) -> set[tuple[Any, ...]]:
    return {
        (
            f.name,
            f.number,
            f.type,
            f.label,
            f.type_name,
            f.oneof_index if f.HasField("oneof_index") else None,
        )
        for f in message.field
    }


def test_our_proto_matches_tritons_field_for_field(tmp_path: Path) -> None:
    ours = compiled_proto(tmp_path)
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)
    assert ours.package == theirs.package == "inference"

    their_messages = dict(messages_by_name(f".{theirs.package}", theirs.message_type))
    our_messages = dict(messages_by_name(f".{ours.package}", ours.message_type))
    assert len(our_messages) >= 20
    for name, message in our_messages.items():
        assert name in their_messages, f"{name} is not a Triton message"
        assert field_signature(message) == field_signature(their_messages[name]), name

    (our_service,) = ours.service
    (their_service,) = (s for s in theirs.service if s.name == our_service.name)
    their_methods = {m.name: m for m in their_service.method}
    for method in our_service.method:
        theirs_method = their_methods[method.name]
        assert (method.input_type, method.output_type) == (
            theirs_method.input_type,
            theirs_method.output_type,
        )
        assert (method.client_streaming, method.server_streaming) == (
            theirs_method.client_streaming,
            theirs_method.server_streaming,
        )
    assert {m.name for m in our_service.method} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
    }
