"""`Prediction`: built from the wire, checked, readable, comparable."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_serving_client.errors import MnistServingError
from mnist_serving_client.prediction import prediction_from_proto, predictions_from_response
from mnist_serving_proto import classifier_pb2

PROBABILITIES = [0.01, 0.02, 0.9, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01]


def wire_prediction(top_k: int = 0) -> classifier_pb2.Prediction:
    order = np.argsort(PROBABILITIES)[::-1][:top_k]
    return classifier_pb2.Prediction(
        label=2,
        probability=0.9,
        probabilities=PROBABILITIES,
        top_k=[
            classifier_pb2.ClassScore(label=int(i), probability=PROBABILITIES[i]) for i in order
        ],
    )


def test_fields_and_read_only_probabilities():
    prediction = prediction_from_proto(wire_prediction(top_k=2))
    assert prediction.label == 2
    assert prediction.confidence == pytest.approx(0.9)
    assert prediction.probabilities.dtype == np.float32
    assert prediction.top_k[0][0] == 2
    assert len(prediction.top_k) == 2
    with pytest.raises(ValueError, match="read-only"):
        prediction.probabilities[0] = 1.0


def test_repr_is_short_and_readable():
    assert (
        repr(prediction_from_proto(wire_prediction())) == "Prediction(label=2, confidence=0.9000)"
    )
    assert "top_k=((2, 0.9000), (1, 0.0200))" in repr(prediction_from_proto(wire_prediction(2)))


def test_equal_by_value_not_hashable():
    assert prediction_from_proto(wire_prediction()) == prediction_from_proto(wire_prediction())
    assert prediction_from_proto(wire_prediction()) != prediction_from_proto(wire_prediction(1))
    with pytest.raises(TypeError):
        hash(prediction_from_proto(wire_prediction()))


def test_malformed_replies_are_errors():
    with pytest.raises(MnistServingError, match="3 class probabilities"):
        prediction_from_proto(classifier_pb2.Prediction(probabilities=[0.5, 0.25, 0.25]))
    response = classifier_pb2.ClassifyResponse(predictions=[wire_prediction()])
    with pytest.raises(MnistServingError, match="1 predictions for 2 images"):
        predictions_from_response(response, expected_count=2)


def test_to_dict_is_json_ready():
    as_dict = prediction_from_proto(wire_prediction(1)).to_dict()
    assert as_dict["label"] == 2
    assert as_dict["top_k"] == [{"label": 2, "probability": pytest.approx(0.9)}]
    assert len(as_dict["probabilities"]) == 10


def test_class_name_from_the_wire():
    message = wire_prediction()
    assert prediction_from_proto(message).class_name == ""  # a server that sends none
    message.class_name = "Pullover"
    prediction = prediction_from_proto(message)
    assert prediction.class_name == "Pullover"
    assert repr(prediction) == "Prediction(label=2, class_name='Pullover', confidence=0.9000)"
    assert prediction.to_dict()["class_name"] == "Pullover"
    assert prediction != prediction_from_proto(wire_prediction())
    # A class name that only repeats the digit is not shown twice.
    message.class_name = "2"
    assert repr(prediction_from_proto(message)) == "Prediction(label=2, confidence=0.9000)"


def test_no_class_name_key_when_the_server_sends_none():
    assert "class_name" not in prediction_from_proto(wire_prediction()).to_dict()
