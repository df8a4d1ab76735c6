"""A bare pygrpc-native server that answers each request with its own bytes: the native floor.

Beside bench/echo_server.py (the grpc.aio floor): the same method paths (Classify, V2
`ModelInfer`) and the same reply counter (`/bench.EchoStats/Replies`, ASCII digits), served
the way the server's native front serves ModelInfer: one thread takes the calls in batches
(`recv_batch`) and answers each with `respond`, no event loop, no protobuf, no model. What
the server's native front costs above this is our per-request path.

`python -m bench.native_echo --port 0 --ready-file F` writes {"grpc_port", "pid"} to F once
it listens, and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pygrpc_native import EVENT_CALL, NativeGrpcFront

from bench.echo_server import (
    CLASSIFIER_SERVICE,
    REPLIES_PATH,
    UNARY_METHOD,
    V2_METHOD,
    V2_SERVICE,
    write_ready_file,
)

METHODS = (f"/{CLASSIFIER_SERVICE}/{UNARY_METHOD}", f"/{V2_SERVICE}/{V2_METHOD}", REPLIES_PATH)
REPLIES_ID = METHODS.index(REPLIES_PATH)
MAX_EVENTS = 1024
POLL_MS = 200  # how often the loop looks at the stop flag while no call arrives


def answer(front: Any, stop: threading.Event) -> None:
    replies = 0
    while not stop.is_set():
        events = front.recv_batch(MAX_EVENTS, POLL_MS)
        if events is None:
            return
        for kind, call_id, method_id, payload, _key in events:
            if kind != EVENT_CALL:
                continue
            if method_id == REPLIES_ID:
                front.respond(call_id, str(replies).encode())
            else:
                replies += 1
                front.respond(call_id, payload)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.native_echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ready-file", type=Path, help="write {grpc_port, pid} here when up")
    args = parser.parse_args(argv)
    front = NativeGrpcFront(f"{args.host}:{args.port}", [(path, False) for path in METHODS])
    front.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker = threading.Thread(target=answer, args=(front, stop), name="native-echo")
    worker.start()
    print(f"native echo listening on {args.host}:{front.bound_port}", file=sys.stderr, flush=True)
    if args.ready_file is not None:
        write_ready_file(args.ready_file, int(front.bound_port))
    while worker.is_alive():
        worker.join(POLL_MS / 1000)
    front.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
