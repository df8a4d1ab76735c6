"""Request tensors checked against a model's own input (any graph, not only 28x28), their
conversion to the model's array, and Triton's classification strings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.runtime import DYNAMIC_DIM, TensorSpec
from mnist_serving_server.core.tensors import (
    classification,
    describe_input,
    plan_input,
    to_model_array,
)

MAX_ROWS = 16
IMAGE = TensorSpec("pixels", "UINT8", np.dtype(np.uint8), (DYNAMIC_DIM, 1, 28, 28))
FLAT_IMAGE = TensorSpec("image", "UINT8", np.dtype(np.uint8), (DYNAMIC_DIM, 28, 28))
FEATURES = TensorSpec("features", "FP32", np.dtype(np.float32), (DYNAMIC_DIM, 4))
SEQUENCE = TensorSpec("tokens", "INT64", np.dtype(np.int64), (DYNAMIC_DIM, DYNAMIC_DIM, 3))
SMALL_INTS = TensorSpec("codes", "INT8", np.dtype(np.int8), (DYNAMIC_DIM, 2))


def plan(spec: TensorSpec, shape: list[int], datatype: str | None = None, name: str | None = None):
    return plan_input(
        spec,
        spec.name if name is None else name,
        spec.datatype if datatype is None else datatype,
        shape,
        max_rows=MAX_ROWS,
    )


def test_a_request_in_the_models_own_terms_is_planned() -> None:
    planned = plan(IMAGE, [3, 1, 28, 28])
    assert planned.shape == (3, 1, 28, 28)
    assert planned.rows == 3
    assert planned.values == 3 * 28 * 28
    assert planned.wire_dtype == np.dtype(np.uint8)
    features = plan(FEATURES, [2, 4])
    assert (features.shape, features.wire_dtype) == ((2, 4), np.dtype("<f4"))


def test_an_unknown_input_name_is_refused_naming_the_models_input() -> None:
    with pytest.raises(InvalidInputError) as raised:
        plan(IMAGE, [1, 1, 28, 28], name="images")
    message = str(raised.value)
    assert "unknown input 'images'" in message
    assert "'pixels'" in message
    assert describe_input(IMAGE) in message


@pytest.mark.parametrize(
    ("spec", "datatype"),
    [
        (IMAGE, "INT32"),
        (IMAGE, "FP64"),
        (FEATURES, "FP64"),
        (FEATURES, "UINT8"),
        (SEQUENCE, "FP32"),
    ],
)
def test_a_datatype_other_than_the_models_is_refused(spec: TensorSpec, datatype: str) -> None:
    shape = [1, *(2 if d == DYNAMIC_DIM else d for d in spec.shape[1:])]
    with pytest.raises(InvalidInputError, match=f"datatype '{datatype}' is not accepted"):
        plan(spec, shape, datatype=datatype)


def test_fp32_is_accepted_for_a_uint8_input_only() -> None:
    assert plan(IMAGE, [1, 1, 28, 28], datatype="FP32").wire_dtype == np.dtype("<f4")
    assert "FP32 in [0,1]" in describe_input(IMAGE)
    assert "FP32 in [0,1]" not in describe_input(FEATURES)


def test_fp32_pixels_k_over_255_become_exactly_k() -> None:
    levels = np.arange(256)
    flat = (levels.astype(np.float32) / np.float32(255)).astype(np.float32)
    spec = TensorSpec("pixels", "UINT8", np.dtype(np.uint8), (DYNAMIC_DIM, 256))
    array = to_model_array(flat, plan(spec, [1, 256], datatype="FP32"))
    assert array.dtype == np.uint8
    assert array.shape == (1, 256)
    np.testing.assert_array_equal(array[0], levels)


@pytest.mark.parametrize("bad", [-0.001, 1.001, math.nan, math.inf, -math.inf])
def test_fp32_pixels_out_of_range_are_refused_naming_the_element(bad: float) -> None:
    flat = np.full(4, 0.5, dtype=np.float32)
    flat[2] = bad
    spec = TensorSpec("pixels", "UINT8", np.dtype(np.uint8), (DYNAMIC_DIM, 4))
    with pytest.raises(InvalidInputError) as raised:
        to_model_array(flat, plan(spec, [1, 4], datatype="FP32"))
    assert "must be finite and in [0,1]" in str(raised.value)
    assert "at element 2" in str(raised.value)


def test_size_one_dimensions_may_be_left_out() -> None:
    planned = plan(IMAGE, [2, 28, 28])
    assert planned.shape == (2, 1, 28, 28)
    pixels = np.arange(2 * 28 * 28, dtype=np.uint8)
    array = to_model_array(pixels, planned)
    assert array.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(array.reshape(-1), pixels)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (IMAGE, [2, 3, 28, 28]),  # a fixed dimension differs
        (IMAGE, [2, 784]),  # flattened: not the graph's dims
        (IMAGE, [2, 28, 28, 1]),  # size-1 dimension in another place
        (FLAT_IMAGE, [2, 1, 28, 28]),  # an extra dimension
        (IMAGE, [2, -1, 28, 28]),  # negative
        (IMAGE, []),  # no batch dimension at all
        (FEATURES, [4]),
        (SEQUENCE, [2, 5]),  # size-1 dims may not be left out when a dim is dynamic
    ],
)
def test_a_shape_that_does_not_fit_the_graph_is_refused(spec: TensorSpec, shape: list[int]) -> None:
    with pytest.raises(InvalidInputError) as raised:
        plan(spec, shape)
    assert "is not accepted" in str(raised.value)
    assert describe_input(spec) in str(raised.value)


def test_dynamic_dimensions_take_any_size() -> None:
    for length in (1, 7, 50):
        planned = plan(SEQUENCE, [2, length, 3])
        assert planned.shape == (2, length, 3)
        assert planned.values == 2 * length * 3
    with pytest.raises(InvalidInputError, match="is not accepted"):
        plan(SEQUENCE, [2, 7, 4])
    assert describe_input(SEQUENCE) == "INT64 [N,?,3]"


def test_the_batch_must_hold_at_least_one_row_and_at_most_max_rows() -> None:
    with pytest.raises(InvalidInputError, match="holds no batch entry"):
        plan(FEATURES, [0, 4])
    assert plan(FEATURES, [MAX_ROWS, 4]).rows == MAX_ROWS
    with pytest.raises(InvalidInputError) as raised:
        plan(FEATURES, [MAX_ROWS + 1, 4])
    assert f"batch of {MAX_ROWS + 1} is too large; at most {MAX_ROWS}" in str(raised.value)


def test_typed_integers_are_narrowed_to_the_models_type() -> None:
    # V2's typed contents carry UINT8 in uint32 and INT8 in int32: every value must fit.
    pixels = np.array([0, 17, 255, 128], dtype=np.uint32)
    spec = TensorSpec("pixels", "UINT8", np.dtype(np.uint8), (DYNAMIC_DIM, 2))
    array = to_model_array(pixels, plan(spec, [2, 2]))
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, pixels.reshape(2, 2))
    codes = np.array([-128, 127], dtype=np.int32)
    narrowed = to_model_array(codes, plan(SMALL_INTS, [1, 2]))
    assert narrowed.dtype == np.int8
    np.testing.assert_array_equal(narrowed[0], codes)


@pytest.mark.parametrize(
    ("spec", "values", "index", "limits"),
    [
        (TensorSpec("p", "UINT8", np.dtype(np.uint8), (DYNAMIC_DIM, 2)), [3, 256], 1, "[0, 255]"),
        (SMALL_INTS, [-129, 0], 0, "[-128, 127]"),
        (SMALL_INTS, [5, 128], 1, "[-128, 127]"),
    ],
)
def test_typed_integers_that_do_not_fit_are_refused(
    spec: TensorSpec, values: list[int], index: int, limits: str
) -> None:
    flat = np.array(values, dtype=np.int64)
    with pytest.raises(InvalidInputError) as raised:
        to_model_array(flat, plan(spec, [1, 2]))
    message = str(raised.value)
    assert f"values must be in {limits}" in message
    assert f"got {values[index]} at element {index}" in message


def test_values_of_the_models_own_type_are_only_reshaped() -> None:
    flat = np.arange(8, dtype=np.float32)
    array = to_model_array(flat, plan(FEATURES, [2, 4]))
    assert array.shape == (2, 4)
    assert np.shares_memory(array, flat)


def parse(entry: bytes) -> tuple[float, int, str | None]:
    parts = entry.decode().split(":")
    return float(parts[0]), int(parts[1]), parts[2] if len(parts) == 3 else None


def test_classification_returns_the_best_classes_as_score_index_label() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random((5, 6)).astype(np.float32)
    labels = [f"class-{i}" for i in range(6)]
    result = classification(scores, 3, labels)
    assert result.dtype == np.object_
    assert result.shape == (5, 3)
    for row, entries in zip(scores, result, strict=True):
        parsed = [parse(entry) for entry in entries]
        indices = [index for _, index, _ in parsed]
        assert indices == list(np.argsort(-row)[:3])
        for score, index, label in parsed:
            assert score == pytest.approx(float(row[index]), abs=1e-6)
            assert label == labels[index]


def test_classification_ties_keep_the_lower_index_first_and_count_is_capped() -> None:
    scores = np.array([[0.25, 0.5, 0.25]], dtype=np.float32)
    result = classification(scores, 10, ["a", "b", "c"])
    assert result.shape == (1, 3)
    assert [parse(entry)[1:] for entry in result[0]] == [(1, "b"), (0, "a"), (2, "c")]


def test_classification_without_a_label_gives_score_and_index() -> None:
    scores = np.array([[0.1, 0.2, 0.7]], dtype=np.float32)
    result = classification(scores, 2, ["only-zero"])
    (best_score, best, best_label), (next_score, second, second_label) = (
        parse(entry) for entry in result[0]
    )
    assert (best, best_label, second, second_label) == (2, None, 1, None)
    assert best_score == pytest.approx(float(scores[0, 2]))
    assert next_score == pytest.approx(float(scores[0, 1]))


def test_classification_needs_a_two_dimensional_output() -> None:
    with pytest.raises(InvalidInputError, match=r"shape \[N, classes\], this one is \[2,3,4\]"):
        classification(np.zeros((2, 3, 4), dtype=np.float32), 1, [])
