"""Helpers the observability tests share: Classify traffic and reading /metrics."""

from __future__ import annotations

import urllib.request
from typing import Any

import grpc
import numpy as np
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc

RPC_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0


def send_classify_calls(target: str, images: np.ndarray[Any, Any], count: int) -> None:
    """`count` unary Classify calls of one raw 28x28 image each; every one must succeed."""
    with grpc.insecure_channel(target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        for index in range(count):
            pixels = images[index % len(images)].astype(np.uint8).tobytes()
            request = classifier_pb2.ClassifyRequest(images=[classifier_pb2.Image(pixels=pixels)])
            reply = stub.Classify(request, timeout=RPC_TIMEOUT_S)
            assert len(reply.predictions) == 1


def scrape(metrics_port: int) -> list[Metric]:
    """The server's /metrics, parsed into metric families."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        text = response.read().decode("utf-8")
    return list(text_string_to_metric_families(text))


def exposed_name(family: Metric) -> str:
    """The name docs/architecture.md uses: the parser drops a counter's `_total`."""
    if family.type == "counter" and not family.name.endswith("_total"):
        return family.name + "_total"
    return family.name
