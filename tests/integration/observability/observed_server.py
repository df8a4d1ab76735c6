"""Helpers the observability tests share: Classify traffic and documented metric names."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from prometheus_client.metrics_core import Metric

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc

RPC_TIMEOUT_S = 30.0


def send_classify_calls(target: str, images: np.ndarray[Any, Any], count: int) -> None:
    """`count` unary Classify calls of one raw 28x28 image each; every one must succeed."""
    with grpc.insecure_channel(target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        for index in range(count):
            pixels = images[index % len(images)].astype(np.uint8).tobytes()
            request = classifier_pb2.ClassifyRequest(images=[classifier_pb2.Image(pixels=pixels)])
            reply = stub.Classify(request, timeout=RPC_TIMEOUT_S)
            assert len(reply.predictions) == 1


def exposed_name(family: Metric) -> str:
    """The name docs/architecture.md uses: the parser drops a counter's `_total`."""
    if family.type == "counter" and not family.name.endswith("_total"):
        return family.name + "_total"
    return family.name
