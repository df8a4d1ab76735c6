"""The HTTP server: uvicorn (httptools parser) on the server's own event loop.

Not `uvicorn.run` or `Server.serve`: those own the loop and the signal handlers. Here the
process (app.py) keeps both: `HttpFront.start()` binds our own socket (SO_REUSEPORT for
`--workers`, port 0 = a free port) and starts uvicorn's listener with `startup()`, a
small task keeps uvicorn's once-a-second housekeeping (the Date header), and `stop()`
refuses new requests (503 + Connection: close), lets the in-flight ones finish, then
closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

import uvicorn

from mnist_serving_server.http_api.asgi import V2HttpApp

logger = logging.getLogger(__name__)

DRAIN_POLL_S = 0.02


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound, listening TCP socket (IPv6 literal or IPv4 host; port 0 = a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpFront:
    """One uvicorn server for `app` on host:port; `port` is the bound port once started."""

    def __init__(
        self,
        app: V2HttpApp,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
        keep_alive_s: float = 75.0,
    ) -> None:
        self.app = app
        self._host = host
        self._requested_port = port
        self._reuse_port = reuse_port
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="none",
            http="httptools",
            ws="none",
            lifespan="off",
            interface="asgi3",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_keep_alive=int(keep_alive_s),
            ssl_certfile=None if tls_cert is None else str(tls_cert),
            ssl_keyfile=None if tls_key is None else str(tls_key),
            ssl_ca_certs=None if tls_client_ca is None else str(tls_client_ca),
            ssl_cert_reqs=2 if tls_client_ca is not None else 0,  # ssl.CERT_REQUIRED / NONE
        )
        self._server = uvicorn.Server(self._config)
        self._socket: socket.socket | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and listen (OSError if the port is taken)."""
        self._socket = bind_socket(self._host, self._requested_port, reuse_port=self._reuse_port)
        self.port = int(self._socket.getsockname()[1])
        config = self._config
        if not config.loaded:
            config.load()
        server = self._server
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._socket])
        self._housekeeping = asyncio.create_task(server.main_loop(), name="mnist-http")

    async def stop(self, grace_period_s: float) -> None:
        """Refuse new requests, wait (up to the grace period) for in-flight ones, close."""
        self.app.refusing = True
        if self._housekeeping is None:
            if self._socket is not None:
                self._socket.close()
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + grace_period_s
        # A counter, not an Event: the request path pays nothing for the drain.
        while self.app.inflight > 0 and loop.time() < give_up:  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL_S)
        server = self._server
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._housekeeping
        self._housekeeping = None
        server.config.timeout_graceful_shutdown = max(1, int(give_up - loop.time()))
        await server.shutdown(sockets=[self._socket] if self._socket is not None else None)
