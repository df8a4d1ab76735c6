"""`ServingStatus`: the answer of the standard `grpc.health.v1` health check."""

from __future__ import annotations

import enum
from typing import Any

from mnist_serving_client import wire_messages
from mnist_serving_proto import classifier_pb2

# The services the server reports on (docs/architecture.md, "Health"); "" is the whole server.
OVERALL_SERVICE = ""
CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name


class ServingStatus(enum.Enum):
    """grpc.health.v1 `HealthCheckResponse.ServingStatus`; the values are the wire numbers."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3

    @property
    def is_serving(self) -> bool:
        return self is ServingStatus.SERVING


def health_request(service: str) -> Any:
    return wire_messages.HealthCheckRequest(service=service)


def serving_status_from_response(response: Any) -> ServingStatus:
    try:
        return ServingStatus(int(response.status))
    except ValueError:
        # A newer server may add states; anything unknown is not "serving".
        return ServingStatus.UNKNOWN
