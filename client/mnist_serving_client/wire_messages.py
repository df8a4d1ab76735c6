"""The few foreign protobuf messages the SDK sends: health checks, V2 model metadata and
Triton's model repository extension (RepositoryIndex, RepositoryModelLoad/Unload).

They are built in a PRIVATE descriptor pool instead of importing `grpc_health` (not a
dependency of the SDK) or our generated `open_inference_pb2`: the latter registers
`inference.*` in protobuf's default pool, which clashes with tritonclient's identical
names in one process. A private pool never registers anything globally, so the SDK can be
imported next to tritonclient, grpc_health or the server itself.

Field names and numbers are those of `grpc/health/v1/health.proto`, of the KServe V2
(Open Inference Protocol) `ModelMetadata` messages and of Triton's repository messages
(proto/open_inference.proto); tests/unit/client checks the bytes against the real generated
classes. The repository requests leave out Triton's `parameters` map, which the SDK never
sends (a message without a field is the same bytes as one with the field unset).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
MODEL_METADATA_METHOD = "/inference.GRPCInferenceService/ModelMetadata"
REPOSITORY_INDEX_METHOD = "/inference.GRPCInferenceService/RepositoryIndex"
REPOSITORY_MODEL_LOAD_METHOD = "/inference.GRPCInferenceService/RepositoryModelLoad"
REPOSITORY_MODEL_UNLOAD_METHOD = "/inference.GRPCInferenceService/RepositoryModelUnload"

_FIELD = descriptor_pb2.FieldDescriptorProto
_OPTIONAL = _FIELD.LABEL_OPTIONAL
_REPEATED = _FIELD.LABEL_REPEATED
# A file name of our own, so nothing can collide with the real .proto files' names.
_FILE_NAME = "mnist_serving_client/private_wire_messages.proto"


def _field(
    name: str,
    number: int,
    kind: descriptor_pb2.FieldDescriptorProto.Type.ValueType,
    label: descriptor_pb2.FieldDescriptorProto.Label.ValueType = _OPTIONAL,
    type_name: str | None = None,
) -> descriptor_pb2.FieldDescriptorProto:
    return _FIELD(name=name, number=number, type=kind, label=label, type_name=type_name)


def _build_pool() -> descriptor_pool.DescriptorPool:
    # Both message families live in one file whose package is "private": the names on the
    # wire are the method paths above, the message names never travel.
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=_FILE_NAME, package="mnist_serving_client.private", syntax="proto3"
    )
    file_proto.message_type.add(
        name="HealthCheckRequest", field=[_field("service", 1, _FIELD.TYPE_STRING)]
    )
    file_proto.message_type.add(
        name="HealthCheckResponse", field=[_field("status", 1, _FIELD.TYPE_INT32)]
    )
    file_proto.message_type.add(
        name="ModelMetadataRequest",
        field=[_field("name", 1, _FIELD.TYPE_STRING), _field("version", 2, _FIELD.TYPE_STRING)],
    )
    file_proto.message_type.add(
        name="TensorMetadata",
        field=[
            _field("name", 1, _FIELD.TYPE_STRING),
            _field("datatype", 2, _FIELD.TYPE_STRING),
            _field("shape", 3, _FIELD.TYPE_INT64, _REPEATED),
        ],
    )
    tensor_type = ".mnist_serving_client.private.TensorMetadata"
    file_proto.message_type.add(
        name="ModelMetadataResponse",
        field=[
            _field("name", 1, _FIELD.TYPE_STRING),
            _field("versions", 2, _FIELD.TYPE_STRING, _REPEATED),
            _field("platform", 3, _FIELD.TYPE_STRING),
            _field("inputs", 4, _FIELD.TYPE_MESSAGE, _REPEATED, type_name=tensor_type),
            _field("outputs", 5, _FIELD.TYPE_MESSAGE, _REPEATED, type_name=tensor_type),
        ],
    )
    file_proto.message_type.add(
        name="RepositoryIndexRequest",
        field=[
            _field("repository_name", 1, _FIELD.TYPE_STRING),
            _field("ready", 2, _FIELD.TYPE_BOOL),
        ],
    )
    file_proto.message_type.add(
        name="ModelIndex",
        field=[
            _field("name", 1, _FIELD.TYPE_STRING),
            _field("version", 2, _FIELD.TYPE_STRING),
            _field("state", 3, _FIELD.TYPE_STRING),
            _field("reason", 4, _FIELD.TYPE_STRING),
        ],
    )
    index_type = ".mnist_serving_client.private.ModelIndex"
    file_proto.message_type.add(
        name="RepositoryIndexResponse",
        field=[_field("models", 1, _FIELD.TYPE_MESSAGE, _REPEATED, type_name=index_type)],
    )
    # RepositoryModelLoadRequest and RepositoryModelUnloadRequest have the same fields.
    file_proto.message_type.add(
        name="RepositoryModelRequest",
        field=[
            _field("repository_name", 1, _FIELD.TYPE_STRING),
            _field("model_name", 2, _FIELD.TYPE_STRING),
        ],
    )
    # ... and both replies are empty.
    file_proto.message_type.add(name="Empty")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return pool


_POOL = _build_pool()


def _message_class(name: str) -> type[Message]:
    descriptor = _POOL.FindMessageTypeByName(f"mnist_serving_client.private.{name}")
    return message_factory.GetMessageClass(descriptor)


HealthCheckRequest = _message_class("HealthCheckRequest")
HealthCheckResponse = _message_class("HealthCheckResponse")
ModelMetadataRequest = _message_class("ModelMetadataRequest")
ModelMetadataResponse = _message_class("ModelMetadataResponse")
RepositoryIndexRequest = _message_class("RepositoryIndexRequest")
RepositoryIndexResponse = _message_class("RepositoryIndexResponse")
RepositoryModelRequest = _message_class("RepositoryModelRequest")
Empty = _message_class("Empty")


def serialize(message: Message) -> bytes:
    """Request serializer for the generic calls (typed for grpc's callables)."""
    return message.SerializeToString()


def parse_health_response(data: bytes) -> Any:
    return HealthCheckResponse.FromString(data)


def parse_model_metadata_response(data: bytes) -> Any:
    return ModelMetadataResponse.FromString(data)


def parse_repository_index_response(data: bytes) -> Any:
    return RepositoryIndexResponse.FromString(data)


def parse_empty_response(data: bytes) -> Any:
    """RepositoryModelLoadResponse / RepositoryModelUnloadResponse (no fields)."""
    return Empty.FromString(data)
