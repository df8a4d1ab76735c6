"""Triton's extension messages (model configuration, statistics) as protobuf: the records
are built once in `core.triton_records` (the HTTP front renders the same records as JSON)."""

from __future__ import annotations

from google.protobuf import json_format

from mnist_serving_proto import model_config_pb2 as mc
from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_server.core.model_config import ModelConfig
from mnist_serving_server.core.replicas import StatisticsRecord
from mnist_serving_server.core.runtime import ModelInfo
from mnist_serving_server.core.triton_records import model_config_record


def model_config_response(config: ModelConfig, info: ModelInfo) -> pb.ModelConfigResponse:
    """The effective configuration, completed from the graph as Triton's auto-complete does."""
    message = json_format.ParseDict(model_config_record(config, info), mc.ModelConfig())
    return pb.ModelConfigResponse(config=message)


def model_statistics(record: StatisticsRecord) -> pb.ModelStatistics:
    """One version's statistics (`core.triton_records.statistics_record`) in Triton's message."""
    return json_format.ParseDict(record, pb.ModelStatistics())
