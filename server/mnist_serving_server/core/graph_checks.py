"""A loaded graph checked against what serving it needs, before it is warmed up or served.

The batcher concatenates requests along the first dimension, so every tensor must have a
dynamic batch dimension; a config.pbtxt that declares inputs or outputs must match the
graph (name, datatype, dims without the batch dimension, -1 matching any size).
"""

from __future__ import annotations

from collections.abc import Iterable

from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.core.model_config import CONFIG_FILE_NAME, ModelConfig, TensorConfig
from mnist_serving_server.core.runtime import DYNAMIC_DIM, ModelInfo, TensorSpec


def check_contract(info: ModelInfo, config: ModelConfig) -> None:
    """ModelLoadError unless the batcher can serve the graph as config.pbtxt describes it."""
    for spec in (*info.inputs, *info.outputs):
        if not spec.shape or spec.shape[0] != DYNAMIC_DIM:
            raise ModelLoadError(
                f"{info.path}: tensor {spec.name!r} has shape {list(spec.shape)}; the server "
                "batches requests, so its first dimension must be a dynamic batch dimension"
            )
    for declared, actual, kind in (
        (config.inputs, info.inputs, "input"),
        (config.outputs, info.outputs, "output"),
    ):
        if declared is not None:
            _check_declared(declared, actual, kind, info)


def _check_declared(
    declared: Iterable[TensorConfig], actual: tuple[TensorSpec, ...], kind: str, info: ModelInfo
) -> None:
    by_name = {spec.name: spec for spec in actual}
    for tensor in declared:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise ModelLoadError(
                f"{CONFIG_FILE_NAME} of {info.name!r} declares {kind} {tensor.name!r}, which the "
                f"graph does not have (its {kind}s: {', '.join(by_name)})"
            )
        graph_dims = spec.shape[1:]
        dims_match = len(graph_dims) == len(tensor.dims) and all(
            d in (DYNAMIC_DIM, g) or g == DYNAMIC_DIM
            for d, g in zip(tensor.dims, graph_dims, strict=True)
        )
        if tensor.datatype != spec.datatype or not dims_match:
            raise ModelLoadError(
                f"{CONFIG_FILE_NAME} of {info.name!r}: {kind} {tensor.name!r} is declared "
                f"{tensor.datatype} {list(tensor.dims)} but the graph has {spec.datatype} "
                f"{list(graph_dims)} (dims exclude the batch dimension)"
            )
