"""A bare grpc.aio server that answers each request with its own bytes: the RPC ceiling.

It serves the Classify and ClassifyStream method paths, and the V2
`inference.GRPCInferenceService/ModelInfer` path, with raw-bytes handlers (no protobuf,
no model, no batching), so the load generator drives it exactly as it drives the real
server; what the real server reaches relative to this is what our per-request path costs.
One process, one event loop, the same server options as the real server.

`python -m bench.echo_server --port 0 --ready-file F` writes {"grpc_port", "pid"} to F
once it listens, and exits 0 on SIGTERM or SIGINT. `--loop uvloop` runs it on uvloop (the
server's own loop), the floor for per-request CPU comparisons (bench/h2load_compare.py).
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

CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
UNARY_METHOD = "Classify"
STREAM_METHOD = "ClassifyStream"
V2_SERVICE = open_inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
V2_UNARY_METHOD = "ModelInfer"
LOOPS = ("asyncio", "uvloop")
MESSAGE_LIMIT_BYTES = 16 * 1024 * 1024
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
    ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
    # Fail loudly on a port clash instead of silently sharing the port.
    ("grpc.so_reuseport", 0),
)
STOP_GRACE_S = 1.0


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _echo_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def echo_handler() -> grpc.GenericRpcHandler:
    """Raw-bytes handlers (no (de)serializers) for the Classifier's method paths."""
    return grpc.method_handlers_generic_handler(
        CLASSIFIER_SERVICE,
        {
            UNARY_METHOD: grpc.unary_unary_rpc_method_handler(_echo),
            STREAM_METHOD: grpc.stream_stream_rpc_method_handler(_echo_stream),
        },
    )


def v2_echo_handler() -> grpc.GenericRpcHandler:
    """A raw-bytes handler for the V2 ModelInfer path (it answers with the request's bytes)."""
    return grpc.method_handlers_generic_handler(
        V2_SERVICE, {V2_UNARY_METHOD: grpc.unary_unary_rpc_method_handler(_echo)}
    )


def write_ready_file(path: Path, grpc_port: int) -> None:
    """Write {"grpc_port", "pid"} atomically (tmp + rename): readers never see half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"grpc_port": grpc_port, "pid": os.getpid()}))
    temporary.replace(path)


async def serve(host: str, port: int, ready_file: Path | None) -> int:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((echo_handler(), v2_echo_handler()))
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
    parser.add_argument(
        "--loop", choices=LOOPS, default="asyncio", help="the event loop (default: asyncio)"
    )
    args = parser.parse_args(argv)
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(args.host, args.port, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
