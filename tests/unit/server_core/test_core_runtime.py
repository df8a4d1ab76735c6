"""ModelRuntime against the session's trained model: real ONNX Runtime, real digits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.core.runtime import ModelRuntime, default_intra_op_threads

PROBABILITY_SUM_TOLERANCE = 1e-5
ODD_BATCH = 37
# The served model must agree with the accuracy the training report claims for the
# same 1,000 digits; allow for the argmax flips that export parity reports.
ACCURACY_SLACK = 0.002


@pytest.fixture(scope="module")
def model_path(model_dir: Path) -> Path:
    return model_dir / "model.onnx"


@pytest.fixture(scope="module")
def loaded(model_path: Path) -> ModelRuntime:
    return ModelRuntime.load(model_path, name="mnist", version="1", provider="cpu")


def as_pixels(digits: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(digits[:, np.newaxis, :, :], dtype=np.uint8)


def test_specs_are_read_from_the_model(loaded: ModelRuntime, model_path: Path) -> None:
    info = loaded.info
    assert loaded.input_name == "pixels"
    (pixels,) = info.inputs
    assert (pixels.name, pixels.datatype, pixels.shape) == ("pixels", "UINT8", (-1, 1, 28, 28))
    assert pixels.numpy_dtype == np.dtype(np.uint8)
    outputs = {spec.name: spec for spec in info.outputs}
    assert outputs["probabilities"].datatype == "FP32"
    assert outputs["probabilities"].shape == (-1, 10)
    assert outputs["probabilities"].numpy_dtype == np.dtype(np.float32)
    assert (info.name, info.version, info.path) == ("mnist", "1", model_path)
    assert info.sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert info.provider == "CPUExecutionProvider"
    assert info.intra_op_threads == len(os.sched_getaffinity(0))
    assert info.labels == tuple(str(digit) for digit in range(10))
    assert "normalization" in info.metadata
    with pytest.raises(TypeError):
        info.metadata["labels"] = "[]"  # type: ignore[index]


@pytest.mark.parametrize("batch_size", [1, ODD_BATCH])
def test_run_returns_probabilities_per_image(
    loaded: ModelRuntime, sample_digits: tuple[Any, Any], batch_size: int
) -> None:
    digits, labels = sample_digits
    outputs = loaded.run(as_pixels(digits[:batch_size]))
    assert set(outputs) == {spec.name for spec in loaded.info.outputs}
    probabilities = outputs["probabilities"]
    assert probabilities.shape == (batch_size, 10)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE)
    assert (probabilities >= 0).all()
    # Most of even a short run of digits is recognised (a random model gets ~10 %).
    assert (probabilities.argmax(axis=1) == labels[:batch_size]).mean() >= 0.5


def test_accuracy_matches_the_training_report(
    loaded: ModelRuntime, sample_digits: tuple[Any, Any], training_report: dict[str, Any]
) -> None:
    digits, labels = sample_digits
    predictions = loaded.run(as_pixels(digits))["probabilities"].argmax(axis=1)
    accuracy = float((predictions == labels).mean())
    assert accuracy == pytest.approx(training_report["test_accuracy"], abs=ACCURACY_SLACK)


def test_batches_agree_with_single_images(
    loaded: ModelRuntime, sample_digits: tuple[Any, Any]
) -> None:
    pixels = as_pixels(sample_digits[0][:ODD_BATCH])
    batched = loaded.run(pixels)["probabilities"]
    one_by_one = np.concatenate([loaded.run(pixels[i : i + 1])["probabilities"] for i in range(8)])
    np.testing.assert_allclose(batched[:8], one_by_one, atol=1e-6)


def test_warm_up_runs_batch_one_and_the_largest_batch(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = ModelRuntime.load(model_path, name="mnist", version="1", provider="cpu")
    shapes: list[tuple[int, ...]] = []
    real_run = ModelRuntime.run

    def run(self: ModelRuntime, pixels: np.ndarray) -> dict[str, np.ndarray]:
        shapes.append(pixels.shape)
        return real_run(self, pixels)

    monkeypatch.setattr(ModelRuntime, "run", run)
    runtime.warm_up(64)
    assert shapes == [(1, 1, 28, 28), (64, 1, 28, 28)]
    shapes.clear()
    runtime.warm_up(1)
    assert shapes == [(1, 1, 28, 28)]


def test_thread_count_reaches_the_session(model_path: Path) -> None:
    single = ModelRuntime.load(model_path, name="mnist", version="1", intra_op_threads=1)
    assert single._session.get_session_options().intra_op_num_threads == 1
    default = ModelRuntime.load(model_path, name="mnist", version="1")
    threads = default._session.get_session_options().intra_op_num_threads
    assert threads == default.info.intra_op_threads == default_intra_op_threads()


def test_auto_provider_reports_what_the_session_runs_on(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auto = ModelRuntime.load(model_path, name="mnist", version="1", provider="auto")
    assert auto.info.provider == auto._session.get_providers()[0]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert auto.info.provider == "CPUExecutionProvider"
    elif auto.info.provider == "CPUExecutionProvider":
        # CUDA is offered but did not initialise: the fall-back to CPU is said, not silent.
        assert "did not initialise; running on CPU" in caplog.text


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here"
)
def test_cuda_without_cuda_names_what_is_missing(model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider") as raised:
        ModelRuntime.load(model_path, name="mnist", version="1", provider="cuda")
    assert "onnxruntime-gpu" in str(raised.value)


def test_unknown_provider_is_refused(model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown execution provider 'tpu'"):
        ModelRuntime.load(model_path, name="mnist", version="1", provider="tpu")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "mnist" / "1" / "model.onnx"
    with pytest.raises(ModelLoadError, match="model file not found") as raised:
        ModelRuntime.load(missing, name="mnist", version="1")
    assert str(missing) in str(raised.value)


def test_corrupt_file_names_the_path(tmp_path: Path, model_path: Path) -> None:
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(model_path.read_bytes()[:1000])  # a truncated download
    with pytest.raises(ModelLoadError, match="cannot load ONNX model") as raised:
        ModelRuntime.load(corrupt, name="mnist", version="1")
    assert str(corrupt) in str(raised.value)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        ModelRuntime.load(garbage, name="mnist", version="1")


def with_metadata(source: Path, target: Path, metadata: dict[str, str]) -> Path:
    """A copy of the model with extra metadata_props (onnx is a dev/train dependency)."""
    proto = onnx.load(str(source))
    kept = [prop for prop in proto.metadata_props if prop.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(target))
    return target


def test_disabled_optimizers_from_metadata_reach_the_session(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = with_metadata(
        model_path,
        tmp_path / "model.onnx",
        {"ort_disabled_optimizers": "ConstantFolding, ConvAddFusion"},
    )
    seen: list[dict[str, Any]] = []
    real_session = ort.InferenceSession

    def spy(*args: Any, **kwargs: Any) -> Any:  # records, then builds the real session
        seen.append(kwargs)
        return real_session(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    loaded = ModelRuntime.load(path, name="mnist", version="1", provider="cpu")
    assert seen[-1]["disabled_optimizers"] == ["ConstantFolding", "ConvAddFusion"]
    assert loaded.info.metadata["ort_disabled_optimizers"] == "ConstantFolding, ConvAddFusion"
    assert loaded.run(np.zeros((2, 1, 28, 28), np.uint8))["probabilities"].shape == (2, 10)


def test_labels_come_from_metadata(tmp_path: Path, model_path: Path) -> None:
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    path = with_metadata(
        model_path, tmp_path / "model.onnx", {"labels": str(names).replace("'", '"')}
    )
    assert ModelRuntime.load(path, name="m", version="2").info.labels == tuple(names)


def test_malformed_labels_are_refused(tmp_path: Path, model_path: Path) -> None:
    path = with_metadata(model_path, tmp_path / "model.onnx", {"labels": "not json"})
    with pytest.raises(ModelLoadError, match="labels"):
        ModelRuntime.load(path, name="m", version="2")
