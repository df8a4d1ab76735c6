"""Container HEALTHCHECK: ask the server's grpc.health.v1 service whether it is SERVING.

Exit 0 when the service answers SERVING, 1 otherwise (NOT_SERVING, unreachable, timeout),
as Docker's HEALTHCHECK expects. Uses only what the server image already has (grpcio and
grpcio-health-checking), so no probe binary has to be downloaded into the image.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 8001
DEFAULT_SERVICE = "mnist_serving.v1.Classifier"
DEFAULT_TIMEOUT_S = 3.0
EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    port = int(os.environ.get("MNIST_SERVING_PORT", DEFAULT_PORT))
    parser.add_argument(
        "--target",
        default=f"127.0.0.1:{port}",
        help="host:port of the gRPC server (default: 127.0.0.1:$MNIST_SERVING_PORT or 8001)",
    )
    parser.add_argument(
        "--service",
        default=DEFAULT_SERVICE,
        help=f'health service name; "" is the whole server (default: {DEFAULT_SERVICE})',
    )
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    return parser.parse_args(argv)


def check(target: str, service: str, timeout_s: float) -> tuple[bool, str]:
    """(healthy, what the server said or why it could not be asked)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return False, f"health check failed: {code.name if code else error}"
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status_name


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    healthy, detail = check(args.target, args.service, args.timeout_s)
    print(f"{args.target} {args.service or '(server)'}: {detail}")
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
