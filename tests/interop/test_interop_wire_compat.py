"""Wire compatibility with Triton's own generated protobuf classes.

A request built with tritonclient's `service_pb2` is serialised to bytes, sent over a plain
gRPC channel to our server, and the reply bytes are parsed with tritonclient's classes. And
our `proto/open_inference.proto` declares, for every message it has, exactly the fields of
Triton's `grpc_service.proto` (names, numbers, types, labels) and the same RPC signatures;
our `proto/model_config.proto` keeps a subset of Triton's `model_config.proto` with the same
names, numbers and types, so a Triton config.pbtxt and Triton's ModelConfigResponse bytes read
the same with either set of classes.

Our generated modules are never imported here (their `inference.*` names would clash with
tritonclient's in protobuf's default pool): our .proto files are compiled by protoc into a
descriptor set, and the messages built from it live in a private descriptor pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc_tools import protoc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from tests.support.server_process import REPO_ROOT, ServerProcess

PROTO_DIR = REPO_ROOT / "proto"
# protoc's virtual path for our files, as proto/generate.py compiles them.
VIRTUAL_DIR = "mnist_serving_proto"
OUR_SERVICE_FILE = f"{VIRTUAL_DIR}/open_inference.proto"
OUR_CONFIG_FILE = f"{VIRTUAL_DIR}/model_config.proto"
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
        stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as caught:
        stub.TraceSetting(service_pb2.TraceSettingRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- the .proto files against Triton's descriptors (no server) -----------------------------

# The RPCs of our GRPCInferenceService: Triton's, less shared memory, trace and log settings.
OUR_RPCS = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
}
# Every message that Triton's grpc_service.proto has for those RPCs, nested ones included.
OUR_SERVICE_MESSAGES = {
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelMetadataResponse.TensorMetadata",
    "InferParameter",
    "InferTensorContents",
    "ModelInferRequest",
    "ModelInferRequest.InferInputTensor",
    "ModelInferRequest.InferRequestedOutputTensor",
    "ModelInferResponse",
    "ModelInferResponse.InferOutputTensor",
    "ModelStreamInferResponse",
    "ModelConfigRequest",
    "ModelConfigResponse",
    "ModelStatisticsRequest",
    "StatisticDuration",
    "InferStatistics",
    "InferResponseStatistics",
    "InferBatchStatistics",
    "MemoryUsage",
    "ModelStatistics",
    "ModelStatisticsResponse",
    "ModelRepositoryParameter",
    "RepositoryIndexRequest",
    "RepositoryIndexResponse",
    "RepositoryIndexResponse.ModelIndex",
    "RepositoryModelLoadRequest",
    "RepositoryModelLoadResponse",
    "RepositoryModelUnloadRequest",
    "RepositoryModelUnloadResponse",
}
# What model_config.proto keeps of Triton's: every message complete except ModelConfig.
OUR_CONFIG_MESSAGES = {
    "ModelRateLimiter",
    "ModelRateLimiter.Resource",
    "ModelInstanceGroup",
    "ModelInstanceGroup.SecondaryDevice",
    "ModelTensorReshape",
    "ModelInput",
    "ModelOutput",
    "ModelVersionPolicy",
    "ModelVersionPolicy.Latest",
    "ModelVersionPolicy.All",
    "ModelVersionPolicy.Specific",
    "ModelQueuePolicy",
    "ModelDynamicBatching",
    "ModelParameter",
    "ModelWarmup",
    "ModelWarmup.Input",
    "ModelOperations",
    "ModelTransactionPolicy",
    "ModelResponseCache",
    "ModelConfig",
}
PARTIAL_CONFIG_MESSAGES = {"ModelConfig"}
# The fields of Triton's ModelConfig that ours must have (the repository work's brief and the
# fields a config.pbtxt for an ONNX classifier uses).
REQUIRED_MODEL_CONFIG_FIELDS = {
    "name",
    "platform",
    "backend",
    "runtime",
    "version_policy",
    "max_batch_size",
    "input",
    "output",
    "instance_group",
    "default_model_filename",
    "dynamic_batching",
    "parameters",
}


@pytest.fixture(scope="module")
def our_files(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Our .proto files compiled by protoc into a descriptor set (not into any pool)."""
    out = tmp_path_factory.mktemp("descriptors") / "ours.pb"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={VIRTUAL_DIR}={PROTO_DIR}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            OUR_SERVICE_FILE,
            OUR_CONFIG_FILE,
        ]
    )
    assert status == 0
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {file.name: file for file in descriptor_set.file}


@pytest.fixture(scope="module")
def our_pool(
    our_files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for name in (OUR_CONFIG_FILE, OUR_SERVICE_FILE):  # dependencies first
        pool.Add(our_files[name])
    return pool


def our_class(pool: descriptor_pool.DescriptorPool, name: str) -> Any:
    """One of our messages' class (typed Any: its fields are known only at run time)."""
    message_class: type[Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"inference.{name}")
    )
    return message_class


def triton_file(module: Any) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    return proto


def messages_by_name(
    prefix: str, messages: Any
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    """Every message, nested ones included, by its name relative to the package."""
    for message in messages:
        name = f"{prefix}{message.name}"
        if not message.options.map_entry:
            yield name, message
        yield from messages_by_name(f"{name}.", message.nested_type)


def enums_by_name(prefix: str, messages: Any, enums: Any) -> Iterator[tuple[str, dict[str, int]]]:
    for enum in enums:
        yield f"{prefix}{enum.name}", {value.name: value.number for value in enum.value}
    for message in messages:
        yield from enums_by_name(f"{prefix}{message.name}.", message.nested_type, message.enum_type)


def field_signatures(message: descriptor_pb2.DescriptorProto) -> dict[str, tuple[Any, ...]]:
    """name -> (number, type, label, type name, oneof name, proto3 optional)."""
    return {
        f.name: (
            f.number,
            f.type,
            f.label,
            f.type_name,
            message.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
            f.proto3_optional,
        )
        for f in message.field
    }


def map_entries(message: descriptor_pb2.DescriptorProto) -> dict[str, dict[str, tuple[Any, ...]]]:
    """The key and value fields of each map field (a map's entry is a nested message)."""
    return {n.name: field_signatures(n) for n in message.nested_type if n.options.map_entry}


def test_our_service_matches_tritons_field_for_field(
    our_files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> None:
    ours = our_files[OUR_SERVICE_FILE]
    theirs = triton_file(service_pb2)
    assert ours.package == theirs.package == "inference"
    assert list(ours.dependency) == [OUR_CONFIG_FILE]

    their_messages = dict(messages_by_name("", theirs.message_type))
    our_messages = dict(messages_by_name("", ours.message_type))
    assert set(our_messages) == OUR_SERVICE_MESSAGES
    for name, message in our_messages.items():
        assert name in their_messages, f"{name} is not a Triton message"
        assert field_signatures(message) == field_signatures(their_messages[name]), name
        assert map_entries(message) == map_entries(their_messages[name]), name
    assert dict(enums_by_name("", ours.message_type, ours.enum_type)) == {}

    (our_service,) = ours.service
    (their_service,) = (s for s in theirs.service if s.name == our_service.name)
    assert (ours.package, our_service.name) == ("inference", "GRPCInferenceService")
    their_methods = {m.name: m for m in their_service.method}
    assert {m.name for m in our_service.method} == OUR_RPCS
    for method in our_service.method:
        theirs_method = their_methods[method.name]
        assert (method.input_type, method.output_type) == (
            theirs_method.input_type,
            theirs_method.output_type,
        ), method.name
        assert (method.client_streaming, method.server_streaming) == (
            theirs_method.client_streaming,
            theirs_method.server_streaming,
        ), method.name


def test_our_model_config_is_a_subset_of_tritons(
    our_files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> None:
    ours = our_files[OUR_CONFIG_FILE]
    theirs = triton_file(model_config_pb2)
    assert ours.package == theirs.package == "inference"

    their_messages = dict(messages_by_name("", theirs.message_type))
    our_messages = dict(messages_by_name("", ours.message_type))
    assert set(our_messages) == OUR_CONFIG_MESSAGES
    for name, message in our_messages.items():
        assert name in their_messages, f"{name} is not a Triton message"
        our_fields = field_signatures(message)
        their_fields = field_signatures(their_messages[name])
        if name in PARTIAL_CONFIG_MESSAGES:
            # A subset: what we keep is Triton's field exactly, and each number we leave
            # out is reserved so that it can never be reused with another meaning.
            assert our_fields.items() <= their_fields.items(), name
            left_out = {their_fields[f][0] for f in their_fields.keys() - our_fields.keys()}
            reserved = {n for r in message.reserved_range for n in range(r.start, r.end)}
            assert left_out == reserved, name
        else:
            assert our_fields == their_fields, name
        our_maps = map_entries(message)
        assert our_maps.items() <= map_entries(their_messages[name]).items(), name
    assert field_signatures(our_messages["ModelConfig"]).keys() >= REQUIRED_MODEL_CONFIG_FIELDS

    # Enums complete, DataType above all.
    their_enums = dict(enums_by_name("", theirs.message_type, theirs.enum_type))
    our_enums = dict(enums_by_name("", ours.message_type, ours.enum_type))
    assert "DataType" in our_enums
    assert "ModelInput.Format" in our_enums
    assert "ModelInstanceGroup.Kind" in our_enums
    for name, values in our_enums.items():
        assert values == their_enums[name], name


TRITON_CONFIG_PBTXT = """
name: "mnist"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 64
version_policy: { latest: { num_versions: 2 } }
input [
  {
    name: "pixels"
    data_type: TYPE_UINT8
    format: FORMAT_NCHW
    dims: [ 1, 28, 28 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
    label_filename: "labels.txt"
  },
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 16, 32 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 1024 }
}
instance_group [ { name: "mnist_cpu" count: 2 kind: KIND_CPU } ]
default_model_filename: "model.onnx"
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
model_warmup [
  {
    name: "zeros"
    batch_size: 1
    inputs { key: "pixels" value: { data_type: TYPE_UINT8 dims: [ 1, 28, 28 ] zero_data: true } }
  }
]
"""


def test_a_triton_config_pbtxt_reads_the_same_with_our_classes(
    our_pool: descriptor_pool.DescriptorPool,
) -> None:
    our_config = text_format.Parse(TRITON_CONFIG_PBTXT, our_class(our_pool, "ModelConfig")())
    their_config = text_format.Parse(TRITON_CONFIG_PBTXT, model_config_pb2.ModelConfig())
    assert our_config.SerializeToString(deterministic=True) == their_config.SerializeToString(
        deterministic=True
    )
    assert text_format.MessageToString(our_config) == text_format.MessageToString(their_config)
    assert our_config.dynamic_batching.default_queue_policy.max_queue_size == 1024
    assert list(our_config.input[0].dims) == [1, 28, 28]


def test_our_model_config_response_decodes_with_tritons_classes(
    our_pool: descriptor_pool.DescriptorPool,
) -> None:
    response = our_class(our_pool, "ModelConfigResponse")()
    text_format.Parse(TRITON_CONFIG_PBTXT, response.config)
    theirs = service_pb2.ModelConfigResponse.FromString(response.SerializeToString())
    assert len(UnknownFieldSet(theirs)) == 0
    assert theirs.config.name == "mnist"
    assert theirs.config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert theirs.config.output[0].label_filename == "labels.txt"
    assert theirs.config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert theirs.config.version_policy.latest.num_versions == 2
    assert theirs.config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_repository_and_statistics_messages_round_trip_with_tritons_classes(
    our_pool: descriptor_pool.DescriptorPool,
) -> None:
    """Bytes of every new message built with Triton's classes parse with ours, and back."""
    samples = [
        service_pb2.RepositoryIndexRequest(repository_name="", ready=True),
        service_pb2.RepositoryIndexResponse(
            models=[
                service_pb2.RepositoryIndexResponse.ModelIndex(
                    name="mnist", version="1", state="READY", reason=""
                ),
                service_pb2.RepositoryIndexResponse.ModelIndex(
                    name="fashion", state="UNAVAILABLE", reason="unloaded"
                ),
            ]
        ),
        service_pb2.RepositoryModelLoadRequest(
            model_name="fashion",
            parameters={"config": service_pb2.ModelRepositoryParameter(string_param="{}")},
        ),
        service_pb2.RepositoryModelUnloadRequest(
            model_name="fashion",
            parameters={"unload_dependents": service_pb2.ModelRepositoryParameter(bool_param=True)},
        ),
        service_pb2.RepositoryModelLoadResponse(),
        service_pb2.RepositoryModelUnloadResponse(),
        service_pb2.ModelConfigRequest(name="mnist", version="1"),
        service_pb2.ModelStatisticsRequest(name="mnist"),
        service_pb2.ModelStatisticsResponse(
            model_stats=[
                service_pb2.ModelStatistics(
                    name="mnist",
                    version="1",
                    last_inference=1_700_000_000_000,
                    inference_count=12,
                    execution_count=3,
                    inference_stats=service_pb2.InferStatistics(
                        success=service_pb2.StatisticDuration(count=5, ns=1000),
                        queue=service_pb2.StatisticDuration(count=5, ns=200),
                        cache_miss=service_pb2.StatisticDuration(count=1, ns=3),
                    ),
                    batch_stats=[
                        service_pb2.InferBatchStatistics(
                            batch_size=4,
                            compute_infer=service_pb2.StatisticDuration(count=3, ns=900),
                        )
                    ],
                    memory_usage=[service_pb2.MemoryUsage(type="CPU", id=0, byte_size=4096)],
                    response_stats={
                        "0": service_pb2.InferResponseStatistics(
                            success=service_pb2.StatisticDuration(count=1, ns=7)
                        )
                    },
                )
            ]
        ),
    ]
    for sample in samples:
        name = sample.DESCRIPTOR.name
        data = sample.SerializeToString(deterministic=True)
        ours = our_class(our_pool, name).FromString(data)
        assert len(UnknownFieldSet(ours)) == 0, name
        assert ours.SerializeToString(deterministic=True) == data, name
        assert text_format.MessageToString(ours) == text_format.MessageToString(sample), name


def test_requested_output_carries_the_classification_parameter(
    our_pool: descriptor_pool.DescriptorPool,
) -> None:
    """Triton's classification extension: `classification` (int64) on a requested output."""
    request = service_pb2.ModelInferRequest(model_name="mnist")
    output = request.outputs.add(name="probabilities")
    output.parameters["classification"].int64_param = 3
    ours = our_class(our_pool, "ModelInferRequest").FromString(request.SerializeToString())
    assert ours.outputs[0].parameters["classification"].int64_param == 3
