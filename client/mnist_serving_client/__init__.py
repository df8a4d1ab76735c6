"""Python SDK for mnist-serving: classify handwritten digits over gRPC.

>>> from mnist_serving_client import Client
>>> with Client("localhost:8001") as client:
...     print(client.classify_one("digit.png"))
Prediction(label=7, confidence=0.9990)

`Client` blocks, `AsyncClient` is its asyncio twin. Every error is a `MnistServingError`;
its subclass follows the gRPC status code (see `mnist_serving_client.errors`).
"""

from mnist_serving_client.async_client import AsyncClient
from mnist_serving_client.connection import DEFAULT_TARGET, RetryPolicy, TlsConfig
from mnist_serving_client.errors import (
    CallCancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidInputError,
    MnistServingError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
)
from mnist_serving_client.health import ServingStatus
from mnist_serving_client.inputs import ImageInput, ImagesInput
from mnist_serving_client.model_metadata import ModelMetadata, TensorMetadata
from mnist_serving_client.prediction import Prediction
from mnist_serving_client.repository import RepositoryModel
from mnist_serving_client.sync_client import Client

__all__ = [
    "DEFAULT_TARGET",
    "AsyncClient",
    "CallCancelledError",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "ImageInput",
    "ImagesInput",
    "InvalidInputError",
    "MnistServingError",
    "ModelMetadata",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "Prediction",
    "RepositoryModel",
    "RetryPolicy",
    "ServerError",
    "ServingStatus",
    "TensorMetadata",
    "TlsConfig",
    "UnauthenticatedError",
    "UnavailableError",
]
