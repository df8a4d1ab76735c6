"""The HTTP server: uvicorn (httptools parser) on the server's own event loop.

Not `uvicorn.run` or `Server.serve`: those own the loop and the signal handlers. Here the
process (app.py) keeps both: `HttpFront.start()` binds our own socket (SO_REUSEPORT for
`--workers`, port 0 = a free port) and starts uvicorn's listener with `startup()`, a
small task keeps uvicorn's once-a-second housekeeping (the Date header), and `stop()`
refuses new requests (503 + Connection: close), lets the in-flight ones finish, then
closes the connections. uvicorn's own protocol is subclassed (`RequestTimeoutProtocol`) so
that a request whose headers or body stop arriving is answered 408 and its connection
closed, instead of being held open for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any, ClassVar, Final

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from mnist_serving_server.config import DEFAULT_HTTP_REQUEST_TIMEOUT_S
from mnist_serving_server.core.drain import POLL_S, wait_quiet
from mnist_serving_server.http_api.asgi import JSON_TYPE, V2HttpApp
from mnist_serving_server.logs import log_fields

logger = logging.getLogger(__name__)

# The 408 answer's message ({timeout_s} is --http-request-timeout-s); it stays here until
# the HTTP error kinds are one table (http_errors.py).
REQUEST_TIMEOUT_MESSAGE: Final = (
    "the request's headers and body did not all arrive within {timeout_s:g} s of its start "
    "(--http-request-timeout-s), so the server closed the connection; send each request "
    "whole, without pausing, on a new connection"
)


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


class RequestTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for receiving each request.

    A request's deadline runs from its first byte (from the connection's opening, for the
    first request) and is cleared once its last byte is parsed, so the time an answer is
    computed and idle keep-alive time (uvicorn's timeout_keep_alive) never count. When it
    passes, the request gets 408 with a JSON error and `Connection: close`, and the
    connection is closed. `request_timeout_s` is set by the subclass `HttpFront` makes.

    A request only stores its deadline: one timer per connection checks it, re-armed when
    it fires early (for a deadline moved on, or none), so the request path schedules and
    cancels no timer (measured: scheduling and cancelling one costs about half of what
    parsing a small request does).
    """

    request_timeout_s: ClassVar[float]

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: float | None = None
        """loop time by which the request being received must be complete; None: none is."""
        self._deadline_timer: asyncio.TimerHandle | None = None
        # `self.cycle` when the current request began: while it is still that one, the
        # request's headers are incomplete (uvicorn makes a new cycle once they are in).
        self._cycle_before: RequestResponseCycle | None = None

    def connection_made(  # type: ignore[override]  # uvicorn's own signature
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self._deadline = self.loop.time() + self.request_timeout_s
        self._deadline_timer = self.loop.call_at(self._deadline, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        # The first request's deadline runs from the connection's opening already.
        if self._deadline is None:
            self._deadline = self.loop.time() + self.request_timeout_s
        self._cycle_before = self.cycle
        HttpToolsProtocol.on_message_begin(self)  # not super(): per request, this is cheaper

    def on_message_complete(self) -> None:
        self._deadline = None
        HttpToolsProtocol.on_message_complete(self)

    def _check_deadline(self) -> None:
        self._deadline_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        deadline = self._deadline
        if deadline is None:  # between requests: none can be due before a timeout from now
            self._arm(now + self.request_timeout_s)
        elif deadline > now:  # a later request began since the timer was armed
            self._arm(deadline)
        else:
            self._on_request_timeout(now)

    def _arm(self, when: float) -> None:
        self._deadline_timer = self.loop.call_at(when, self._check_deadline)

    def _defer(self, now: float) -> None:
        """The server, not the client, holds the request up: it gets another full timeout."""
        self._deadline = now + self.request_timeout_s
        self._arm(self._deadline)

    def _on_request_timeout(self, now: float) -> None:
        # uvicorn types `cycle` as never None; it is None until a first request's headers.
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is self._cycle_before:  # this request's headers are incomplete
            if cycle is not None and not cycle.response_complete:
                # Pipelined behind a request still being answered: that answer comes first.
                self._defer(now)
                return
        elif cycle is not None:  # the headers are in, the body is not
            if self.pipeline or self.flow.read_paused:
                # The server stopped reading (the body waits for an earlier answer, or the
                # app has not taken what was read yet).
                self._defer(now)
                return
            if cycle.response_started:
                # The app answered before reading the whole body (e.g. 413 or 401).
                if cycle.response_complete:
                    self.transport.close()  # nothing is left to answer, the rest unneeded
                else:
                    cycle.keep_alive = False  # never cut an answer: close once it is sent
                return
            # The app waits for the body: it now reads a disconnect and its answer, if any,
            # is dropped (as after connection_lost), so that only the 408 is written.
            cycle.disconnected = True
            cycle.message_event.set()
        logger.debug(
            "HTTP request not received in time: 408, connection closed",
            extra=log_fields(client=self.client, request_timeout_s=self.request_timeout_s),
        )
        self._send_408()

    def _send_408(self) -> None:
        body = orjson.dumps(
            {"error": REQUEST_TIMEOUT_MESSAGE.format(timeout_s=self.request_timeout_s)}
        )
        content = [STATUS_LINE[408]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: " + JSON_TYPE + b"\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


def _protocol_with_timeout(timeout_s: float) -> type[RequestTimeoutProtocol]:
    """The protocol class uvicorn builds for each connection, with this deadline."""

    class Protocol(RequestTimeoutProtocol):
        request_timeout_s = timeout_s

    return Protocol


class HttpFront:
    """One uvicorn server for `app` on host:port; `port` is the bound port once started.

    A request whose headers and body are not all in `request_timeout_s` after its first
    byte (after the connection opened, for the first request) is answered 408 and closed.
    """

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
        request_timeout_s: float = DEFAULT_HTTP_REQUEST_TIMEOUT_S,
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
            http=_protocol_with_timeout(request_timeout_s),
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

        The phases of core/drain.py, in this order: (1) new requests get 503 +
        Connection: close; (2) the in-flight ones finish (up to the grace period); (3) the
        listener closes, so a new connection is refused at connect time (it never reached
        the server); (4) every open keep-alive connection learns of the shutdown on its
        next request (503 + close) until none is left or none has sent anything for
        core.drain.QUIET_S; (5) only then are the idle ones closed. Closing a keep-alive
        connection while its client is sending drops that request (HTTP's CANCELLED);
        step 4 makes that window as small as HTTP/1.1 allows.
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
            await asyncio.sleep(POLL_S)
        server = self._server
        for listener in server.servers:
            listener.close()
        # Polled: uvicorn offers no event for "a connection closed".
        await wait_quiet(
            lambda: app.last_refusal_at,
            give_up,
            settled=lambda: not server.server_state.connections,
        )
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._housekeeping
        self._housekeeping = None
        server.config.timeout_graceful_shutdown = max(1, int(give_up - loop.time()))
        await server.shutdown(sockets=[self._socket] if self._socket is not None else None)
