"""A bare ASGI app that answers each request with its own body, on the HTTP stack the
server uses (uvicorn + httptools on uvloop, started the way `http_api/front.py` starts it):
the HTTP per-request floor, as `echo_server.py` is the gRPC one.

It counts the replies it echoes; `GET /replies` answers the count as ASCII digits (and is
not counted), so a bench can prove every request it sent was echoed.

`python -m bench.asgi_echo --ready-file F` writes {"http_port", "pid"} to F once it
listens, and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from mnist_serving_server import event_loop
from mnist_serving_server.http_api.front import HttpFront

Message = MutableMapping[str, Any]
REPLIES_PATH = "/replies"


class Echo:
    """Raw ASGI: the request body back, application/octet-stream; GET /replies: the count."""

    refusing = False
    inflight = 0

    def __init__(self) -> None:
        self.replies = 0

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if scope["method"] == "GET" and scope["path"] == REPLIES_PATH:
            body = str(self.replies).encode()
        else:
            self.replies += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def serve(port: int, ready_file: Path | None) -> None:
    front = HttpFront(Echo(), "127.0.0.1", port)  # type: ignore[arg-type]
    await front.start()
    if ready_file is not None:
        content = json.dumps({"http_port": front.port, "pid": os.getpid()})
        await asyncio.to_thread(ready_file.write_text, content)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await front.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)
    event_loop.run(serve(args.port, args.ready_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
