"""Triton's extension messages built from the core's records: model configuration and
statistics (protobuf here; the HTTP front renders the same messages as JSON)."""

from __future__ import annotations

from mnist_serving_proto import model_config_pb2 as mc
from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_server.core.model_config import (
    BACKEND,
    MICROSECONDS_PER_SECOND,
    PLATFORM,
    ModelConfig,
    VersionPolicy,
    triton_type_name,
)
from mnist_serving_server.core.registry import ServedVersion
from mnist_serving_server.core.repository import MODEL_FILE_NAME
from mnist_serving_server.core.runtime import ModelInfo, TensorSpec
from mnist_serving_server.core.statistics import Duration


def model_config_response(config: ModelConfig, info: ModelInfo) -> pb.ModelConfigResponse:
    """The effective configuration, completed from the graph as Triton's auto-complete does."""
    message = mc.ModelConfig(
        name=config.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=config.max_batch_size,
        version_policy=_version_policy(config.version_policy),
        input=[
            mc.ModelInput(name=s.name, data_type=_data_type(s), dims=s.shape[1:])
            for s in info.inputs
        ],
        output=[
            mc.ModelOutput(name=s.name, data_type=_data_type(s), dims=s.shape[1:])
            for s in info.outputs
        ],
        dynamic_batching=mc.ModelDynamicBatching(
            max_queue_delay_microseconds=round(config.max_queue_delay_s * MICROSECONDS_PER_SECOND)
        ),
        instance_group=[mc.ModelInstanceGroup(name=f"{config.name}_0", count=1, kind=_kind(info))],
        default_model_filename=MODEL_FILE_NAME,
    )
    return pb.ModelConfigResponse(config=message)


def _data_type(spec: TensorSpec) -> mc.DataType.ValueType:
    return mc.DataType.Value(triton_type_name(spec.datatype))


def _kind(info: ModelInfo) -> mc.ModelInstanceGroup.Kind.ValueType:
    if info.provider.startswith("CUDA"):
        return mc.ModelInstanceGroup.KIND_GPU
    return mc.ModelInstanceGroup.KIND_CPU


def _version_policy(policy: VersionPolicy) -> mc.ModelVersionPolicy:
    if policy.specific is not None:
        return mc.ModelVersionPolicy(
            specific=mc.ModelVersionPolicy.Specific(versions=policy.specific)
        )
    if policy.latest is not None:
        return mc.ModelVersionPolicy(
            latest=mc.ModelVersionPolicy.Latest(num_versions=policy.latest)
        )
    return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def model_statistics(served: ServedVersion) -> pb.ModelStatistics:
    """One version's statistics in Triton's message."""
    stats = served.statistics
    return pb.ModelStatistics(
        name=served.name,
        version=served.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_input=pb.StatisticDuration(),
            compute_infer=_duration(stats.compute_infer),
            compute_output=pb.StatisticDuration(),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=pb.StatisticDuration(count=batch.count),
                compute_infer=pb.StatisticDuration(count=batch.count, ns=batch.compute_ns),
                compute_output=pb.StatisticDuration(count=batch.count),
            )
            for size, batch in sorted(stats.batches.items())
        ],
    )
