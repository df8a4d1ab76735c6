"""The INT8 model (static QDQ) runs and stays within a point of FP32 on the held-out digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mnist_serving_training.data import NUM_CLASSES, DatasetSplit
from mnist_serving_training.inference import create_session
from mnist_serving_training.quantize import compare_with_fp32, quantize_int8

MAX_ACCURACY_DROP_POINTS = 1.0
BATCH = 64


def test_int8_model_runs_and_keeps_accuracy(
    model_dir: Path,
    mnist_sample: DatasetSplit,
    sample_digits: tuple[Any, Any],
    tmp_path: Path,
) -> None:
    fp32_path = model_dir / "model.onnx"
    int8_path = tmp_path / "model.onnx"
    details = quantize_int8(fp32_path, int8_path, mnist_sample.train_images)

    model = onnx.load(str(int8_path))
    op_types = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in op_types
    assert "DequantizeLinear" in op_types
    # conv1 and pool1 stay FP32: the first Conv reads the normalized float input directly.
    producers = {output: node for node in model.graph.node for output in node.output}
    first_conv = next(node for node in model.graph.node if node.op_type == "Conv")
    assert first_conv.name in details["nodes_kept_fp32"]
    assert producers[first_conv.input[0]].op_type != "DequantizeLinear"
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata["ort_disabled_optimizers"] == "QDQPropagationTransformer"

    images, labels = sample_digits
    probabilities = create_session(int8_path).run(
        ["probabilities"], {"pixels": images[:BATCH, np.newaxis]}
    )[0]
    assert probabilities.shape == (BATCH, NUM_CLASSES)

    comparison = compare_with_fp32(fp32_path, int8_path, images, labels)
    assert comparison["images"] == len(labels)
    assert abs(comparison["accuracy_difference_points"]) <= MAX_ACCURACY_DROP_POINTS
