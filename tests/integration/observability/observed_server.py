"""Helpers the observability tests share: a server exposing every documented metric,
Classify traffic and documented metric names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.metrics_core import Metric

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from tests.conftest import REFERENCE_MODEL_DIR
from tests.support.metrics import metrics_text
from tests.support.waiting import wait_for

RPC_TIMEOUT_S = 30.0
OBSERVED_MODEL = "mnist"
PROFILE_FILE = "reference_profile.json"
# Small enough that the observability tests' few calls fill it: the drift gauges then exist.
OBSERVED_DRIFT_WINDOW = 3
# The supervising parent (its worker metrics) and a drift window the tests' calls fill.
OBSERVED_SERVER_ARGS = ("--supervise", "on", "--drift-window", str(OBSERVED_DRIFT_WINDOW))


def observed_repository(model_repository: Path, target: Path) -> Path:
    """The session's repository, with mnist/2 (a copy of mnist/1) as mnist's shadow: a server
    on it exposes every metric of the contract (docs/architecture.md) once it has answered
    OBSERVED_DRIFT_WINDOW images, the shadow outcomes among them."""
    shutil.copytree(model_repository, target)
    version = target / OBSERVED_MODEL / "1"
    if not (version / PROFILE_FILE).exists():  # the session's copy of the shipped model
        shutil.copy2(REFERENCE_MODEL_DIR / PROFILE_FILE, version / PROFILE_FILE)
    shutil.copytree(version, target / OBSERVED_MODEL / "2")
    (target / OBSERVED_MODEL / "config.pbtxt").write_text(
        f'name: "{OBSERVED_MODEL}"\n'
        "version_policy { specific { versions: [1, 2] } }\n"
        'parameters { key: "shadow_version" value: { string_value: "2" } }\n',
        encoding="utf-8",
    )
    return target


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


def wait_for_model_quality_series(metrics_port: int | None) -> None:
    """Until the drift gauges and the shadow's counter exist: the monitor and the shadow see
    answered images a moment after their callers (core/shadow.py gathers them briefly)."""
    wanted = ("mnist_serving_drift_psi", "mnist_serving_shadow_images_total")
    try:
        wait_for(
            lambda: True if all(name in metrics_text(metrics_port) for name in wanted) else None,
            what="the drift and shadow series",
        )
    except TimeoutError as exc:
        text = metrics_text(metrics_port)
        raise AssertionError(f"{exc}: /metrics has {[n for n in wanted if n in text]}") from None
