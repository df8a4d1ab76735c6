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
# After the in-flight requests: how long no open connection may have sent a request before
# the idle ones are closed, and the most this phase may take (within the grace period).
QUIET_S = 0.1
QUIET_LIMIT_S = 2.0


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
        """Refuse new requests, let in-flight ones finish, then close, dropping none.

        In this order: (1) new requests get 503 + Connection: close; (2) the in-flight ones
        finish (up to the grace period); (3) the listener closes, so a new connection is
        refused at connect time (it never reached the server); (4) every open keep-alive
        connection learns of the shutdown on its next request (503 + close) until none is
        left or none has sent anything for QUIET_S; (5) only then are the idle ones closed.
        Closing a keep-alive connection while its client is sending drops that request
        (HTTP's CANCELLED); step 4 makes that window as small as HTTP/1.1 allows.
        """
        app = self.app
        app.refusing = True
        loop = asyncio.get_running_loop()
        app.last_refusal_at = loop.time()  # the quiet period counts from here at the latest
        if self._housekeeping is None:
            if self._socket is not None:
                self._socket.close()
            return
        give_up = loop.time() + grace_period_s
        # A counter, not an Event: the request path pays nothing for the drain.
        while app.inflight > 0 and loop.time() < give_up:  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL_S)
        server = self._server
        for listener in server.servers:
            listener.close()
        quiet_until = min(give_up, loop.time() + QUIET_LIMIT_S)
        while (  # noqa: ASYNC110 - uvicorn offers no event for "a connection closed"
            server.server_state.connections
            and loop.time() < quiet_until
            and loop.time() - app.last_refusal_at < QUIET_S
        ):
            await asyncio.sleep(DRAIN_POLL_S)
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._housekeeping
        self._housekeeping = None
        server.config.timeout_graceful_shutdown = max(1, int(give_up - loop.time()))
        await server.shutdown(sockets=[self._socket] if self._socket is not None else None)
