"""A bare grpc.aio server that answers each request with its own bytes: the RPC floor.

It serves the Classify, ClassifyStream and V2 `inference.GRPCInferenceService/ModelInfer`
method paths with raw-bytes handlers (no protobuf, no model, no batching), so the load
generators (bench.loadgen, h2load) drive it exactly as they drive the real server; what
the real server reaches relative to this is what our per-request path costs. One
process, one event loop (uvloop when installed, as the server runs), the same server
options as the real server.

It counts the replies it sends: `/bench.EchoStats/Replies` answers the count as ASCII
digits, so a bench that cannot see gRPC statuses (h2load) can prove every call was echoed.

`python -m bench.echo_server --port 0 --ready-file F` writes {"grpc_port", "pid"} to F
once it listens, and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from mnist_serving_proto import classifier_pb2, open_inference_pb2
from mnist_serving_server import event_loop

CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
V2_SERVICE = open_inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
UNARY_METHOD = "Classify"
STREAM_METHOD = "ClassifyStream"
V2_METHOD = "ModelInfer"
STATS_SERVICE = "bench.EchoStats"
REPLIES_METHOD = "Replies"
REPLIES_PATH = f"/{STATS_SERVICE}/{REPLIES_METHOD}"
MESSAGE_LIMIT_BYTES = 16 * 1024 * 1024
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
    ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
    # Fail loudly on a port clash instead of silently sharing the port.
    ("grpc.so_reuseport", 0),
)
STOP_GRACE_S = 1.0


class ReplyCount:
    """Replies sent (unary replies and stream messages alike)."""

    value = 0


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    ReplyCount.value += 1
    return request


async def _echo_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    async for request in requests:
        ReplyCount.value += 1
        yield request


async def _replies(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return str(ReplyCount.value).encode()


def echo_handlers() -> tuple[grpc.GenericRpcHandler, ...]:
    """Raw-bytes handlers (no (de)serializers) for the Classifier's and V2's method paths,
    and the reply count."""
    unary: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_echo)
    return (
        grpc.method_handlers_generic_handler(
            CLASSIFIER_SERVICE,
            {
                UNARY_METHOD: unary,
                STREAM_METHOD: grpc.stream_stream_rpc_method_handler(_echo_stream),
            },
        ),
        grpc.method_handlers_generic_handler(V2_SERVICE, {V2_METHOD: unary}),
        grpc.method_handlers_generic_handler(
            STATS_SERVICE, {REPLIES_METHOD: grpc.unary_unary_rpc_method_handler(_replies)}
        ),
    )


def write_ready_file(path: Path, grpc_port: int) -> None:
    """Write {"grpc_port", "pid"} atomically (tmp + rename): readers never see half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"grpc_port": grpc_port, "pid": os.getpid()}))
    temporary.replace(path)


async def serve(host: str, port: int, ready_file: Path | None) -> int:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(echo_handlers())
    bound_port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"echo server listening on {host}:{bound_port}", file=sys.stderr, flush=True)
    if ready_file is not None:
        write_ready_file(ready_file, bound_port)
    await stop.wait()
    await server.stop(STOP_GRACE_S)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ready-file", type=Path, help="write {grpc_port, pid} here when up")
    args = parser.parse_args(argv)
    return event_loop.run(serve(args.host, args.port, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
