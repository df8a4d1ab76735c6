"""Classify and ClassifyStream against a real in-process server with the session's model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_server.app import ServingApp
from mnist_serving_server.core.images import decode_image
from tests.integration.conftest import StartApp
from tests.integration.server.classify_support import (
    PARITY_ATOL,
    ReferenceModel,
    png_bytes,
    raw_request,
    served_probabilities,
)
from tests.support.metrics import app_metric

ACCURACY_REQUEST_IMAGES = 100
CONCURRENT_CALLS = 64
# Rounds of 64 concurrent calls before giving up on seeing a batch larger than one.
MAX_BATCHING_ROUNDS = 10
STREAM_REQUESTS = 40
INVALID_EVERY = 7
INVALID_ARGUMENT_NUMBER = 3
CLASS_COUNT = 10

Digits = tuple[Any, Any]


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> ReferenceModel:
    return ReferenceModel(model_dir)


async def test_raw_pixels_match_onnxruntime(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
    reference: ReferenceModel,
    sample_digits: Digits,
) -> None:
    images, _ = sample_digits
    digits = images[:16]
    response = await classifier_stub.Classify(raw_request(digits))
    served = served_probabilities(response)
    expected = reference.probabilities(digits)
    assert served.shape == (16, CLASS_COUNT)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, expected, rtol=0, atol=PARITY_ATOL)
    labels = [p.label for p in response.predictions]
    assert labels == expected.argmax(axis=1).tolist()
    for prediction, row in zip(response.predictions, expected, strict=True):
        assert prediction.probability == pytest.approx(row.max(), abs=PARITY_ATOL)


async def test_png_of_a_real_digit_matches_onnxruntime_on_decoded_pixels(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
    reference: ReferenceModel,
    sample_digits: Digits,
) -> None:
    images, _ = sample_digits
    encoded = png_bytes(images[0])
    request = classifier_pb2.ClassifyRequest(images=[classifier_pb2.Image(encoded=encoded)])
    response = await classifier_stub.Classify(request)
    decoded = decode_image(encoded)
    expected = reference.probabilities(decoded[np.newaxis])
    np.testing.assert_allclose(served_probabilities(response), expected, rtol=0, atol=PARITY_ATOL)
    assert response.predictions[0].label == int(expected.argmax())


async def test_mixed_raw_and_encoded_images_keep_their_order(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
    reference: ReferenceModel,
    sample_digits: Digits,
) -> None:
    images, _ = sample_digits
    request = classifier_pb2.ClassifyRequest(
        images=[
            classifier_pb2.Image(pixels=images[1].tobytes()),
            classifier_pb2.Image(encoded=png_bytes(images[2])),
            classifier_pb2.Image(pixels=images[3].tobytes()),
        ]
    )
    response = await classifier_stub.Classify(request)
    expected = reference.probabilities(
        np.stack([images[1], decode_image(png_bytes(images[2])), images[3]])
    )
    np.testing.assert_allclose(served_probabilities(response), expected, rtol=0, atol=PARITY_ATOL)


async def test_served_accuracy_equals_the_training_report(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
    sample_digits: Digits,
    training_report: dict[str, Any],
) -> None:
    images, labels = sample_digits
    chunks = range(0, len(images), ACCURACY_REQUEST_IMAGES)
    responses = await asyncio.gather(
        *(
            classifier_stub.Classify(raw_request(images[start : start + ACCURACY_REQUEST_IMAGES]))
            for start in chunks
        )
    )
    served = np.array([p.label for response in responses for p in response.predictions])
    assert len(served) == len(images)
    correct = int((served == np.asarray(labels)).sum())
    assert correct == round(training_report["test_accuracy"] * len(images))


async def test_reply_names_the_model_and_echoes_the_request_id(
    server: ServingApp, classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub, model_dir: Path
) -> None:
    images = np.zeros((1, 28, 28), dtype=np.uint8)
    response = await classifier_stub.Classify(
        raw_request(images, request_id="abc-1", model_name="mnist", model_version=model_dir.name)
    )
    assert response.model_name == "mnist"
    assert response.model_version == model_dir.name
    assert response.request_id == "abc-1"
    assert not response.HasField("error")


async def test_top_k_lists_the_most_probable_classes_in_order(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub, sample_digits: Digits
) -> None:
    images, _ = sample_digits
    response = await classifier_stub.Classify(raw_request(images[:4], top_k=3))
    for prediction in response.predictions:
        probabilities = np.array(prediction.probabilities)
        expected = np.argsort(-probabilities, kind="stable")[:3].tolist()
        assert [score.label for score in prediction.top_k] == expected
        assert prediction.top_k[0].label == prediction.label
        assert [s.probability for s in prediction.top_k] == pytest.approx(
            probabilities[expected].tolist()
        )
    no_top_k = await classifier_stub.Classify(raw_request(images[:1]))
    assert len(no_top_k.predictions[0].top_k) == 0


async def test_concurrent_single_image_calls_are_batched_without_mix_ups(
    server: ServingApp,
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
    reference: ReferenceModel,
    sample_digits: Digits,
) -> None:
    images, _ = sample_digits
    batched = False
    for round_index in range(MAX_BATCHING_ROUNDS):
        digits = images[round_index * CONCURRENT_CALLS : (round_index + 1) * CONCURRENT_CALLS]
        responses = await asyncio.gather(
            *(classifier_stub.Classify(raw_request(digit[np.newaxis])) for digit in digits)
        )
        # Each caller gets the answer for its own image: compare with ORT run on it alone.
        for digit, response in zip(digits, responses, strict=True):
            alone = reference.probabilities(digit[np.newaxis])
            np.testing.assert_allclose(
                served_probabilities(response), alone, rtol=0, atol=PARITY_ATOL
            )
            assert response.predictions[0].label == int(alone.argmax())
        batches = app_metric(server, "mnist_serving_batch_size_count")
        single_image_batches = app_metric(server, "mnist_serving_batch_size_bucket", le="1.0")
        if batches > single_image_batches:
            batched = True
            break
    assert batched, "64 concurrent calls never shared a batch"
    assert app_metric(server, "mnist_serving_batch_size_sum") >= CONCURRENT_CALLS


async def test_stream_replies_in_order_with_ids_and_per_request_errors(
    server: ServingApp,
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
    reference: ReferenceModel,
    sample_digits: Digits,
) -> None:
    images, _ = sample_digits
    requests = []
    for index in range(STREAM_REQUESTS):
        if index % INVALID_EVERY == INVALID_EVERY - 1:
            bad = classifier_pb2.Image(pixels=b"\x00" * 100)
            requests.append(classifier_pb2.ClassifyRequest(images=[bad], request_id=f"r{index}"))
        else:
            digits = images[index * 2 : index * 2 + 1 + index % 3]
            requests.append(raw_request(digits, request_id=f"r{index}"))

    call = classifier_stub.ClassifyStream(iter(requests))
    replies = [reply async for reply in call]

    assert [reply.request_id for reply in replies] == [f"r{i}" for i in range(STREAM_REQUESTS)]
    for index, (request, reply) in enumerate(zip(requests, replies, strict=True)):
        if index % INVALID_EVERY == INVALID_EVERY - 1:
            assert reply.error.code == INVALID_ARGUMENT_NUMBER
            assert "images[0].pixels has 100 bytes; expected 784" in reply.error.message
            assert len(reply.predictions) == 0
        else:
            digits = np.stack(
                [np.frombuffer(i.pixels, np.uint8).reshape(28, 28) for i in request.images]
            )
            np.testing.assert_allclose(
                served_probabilities(reply),
                reference.probabilities(digits),
                rtol=0,
                atol=PARITY_ATOL,
            )
            assert not reply.HasField("error")
    assert (
        app_metric(server, "mnist_serving_requests_total", method="ClassifyStream", code="OK") == 1
    )


async def test_a_large_request_is_split_across_batches_and_reassembled(
    start_app: StartApp, reference: ReferenceModel, sample_digits: Digits
) -> None:
    from grpc import aio

    app = await start_app(max_batch_size=8)
    images, _ = sample_digits
    async with aio.insecure_channel(app.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        response = await stub.Classify(raw_request(images[:50]))
    np.testing.assert_allclose(
        served_probabilities(response), reference.probabilities(images[:50]), atol=PARITY_ATOL
    )
    assert app_metric(app, "mnist_serving_batch_size_bucket", le="8.0") == app_metric(
        app, "mnist_serving_batch_size_count"
    )
