"""Triton's model configuration and statistics as plain records (dicts in Triton's JSON shape).

Built once here from the core's state; each transport renders them: the HTTP front as JSON
(`GET /v2/models/{m}/config`, `/stats`), the gRPC servicer as the protobuf messages
(`json_format.ParseDict` into `ModelConfig` / `ModelStatistics`). Numbers stay numbers
(Triton's HTTP JSON writes int64 fields as numbers, not protobuf-JSON strings).
"""

from __future__ import annotations

from typing import Any

from mnist_serving_server.core.model_config import (
    BACKEND,
    MICROSECONDS_PER_SECOND,
    PLATFORM,
    SHADOW_VERSION_PARAMETER,
    ModelConfig,
    VersionPolicy,
    triton_type_name,
)
from mnist_serving_server.core.registry import ServedVersion
from mnist_serving_server.core.repository import MODEL_FILE_NAME
from mnist_serving_server.core.runtime import ModelInfo, TensorSpec
from mnist_serving_server.core.statistics import Duration

Record = dict[str, Any]


def model_config_record(config: ModelConfig, info: ModelInfo) -> Record:
    """The effective configuration, completed from the graph as Triton's auto-complete does."""
    return {
        "name": config.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": _version_policy(config.version_policy),
        "max_batch_size": config.max_batch_size,
        "input": [_tensor(spec) for spec in info.inputs],
        "output": [_tensor(spec) for spec in info.outputs],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(
                config.max_queue_delay_s * MICROSECONDS_PER_SECOND
            )
        },
        "instance_group": [
            {
                "name": f"{config.name}_0",
                "kind": "KIND_GPU" if info.provider.startswith("CUDA") else "KIND_CPU",
                "count": 1,
            }
        ],
        "default_model_filename": MODEL_FILE_NAME,
        # The CUDA provider's options from config.pbtxt, as ONNX Runtime takes them, and
        # the shadow version (core/shadow.py).
        **({"parameters": _parameters(config)} if _parameters(config) else {}),
    }


def _parameters(config: ModelConfig) -> Record:
    parameters: Record = {key: {"string_value": value} for key, value in config.cuda_options}
    if config.shadow_version:
        parameters[SHADOW_VERSION_PARAMETER] = {"string_value": config.shadow_version}
    return parameters


def _tensor(spec: TensorSpec) -> Record:
    return {
        "name": spec.name,
        "data_type": triton_type_name(spec.datatype),
        "dims": list(spec.shape[1:]),
    }


def _version_policy(policy: VersionPolicy) -> Record:
    if policy.specific is not None:
        return {"specific": {"versions": list(policy.specific)}}
    if policy.latest is not None:
        return {"latest": {"num_versions": policy.latest}}
    return {"all": {}}


def _duration(duration: Duration) -> Record:
    return {"count": duration.count, "ns": duration.ns}


_EMPTY: Record = {"count": 0, "ns": 0}


def statistics_record(served: ServedVersion) -> Record:
    """One version's statistics (Triton's ModelStatistics)."""
    stats = served.statistics
    return {
        "name": served.name,
        "version": served.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": dict(_EMPTY),
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": dict(_EMPTY),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": {"count": batch.count, "ns": 0},
                "compute_infer": {"count": batch.count, "ns": batch.compute_ns},
                "compute_output": {"count": batch.count, "ns": 0},
            }
            for size, batch in sorted(stats.batches.items())
        ],
    }
