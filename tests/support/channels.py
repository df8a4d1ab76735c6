"""gRPC channels for tests against a server process, and what a failed call was."""

from __future__ import annotations

import grpc
from grpc import aio

from mnist_serving_server.core.drain import SHUTTING_DOWN

CONNECT_TIMEOUT_S = 30.0


def open_channels(target: str, count: int) -> list[grpc.Channel]:
    """`count` ready channels, each on a connection of its own (so workers can share them)."""
    # A local subchannel pool: otherwise channels in one process share one connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(target, options=options) for _ in range(count)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
    return channels


SERVED = "OK"
REFUSED = "refused by the server"
NOT_CONNECTED = "no connection (port closed)"
# grpc-core's words for a call that never got a connection: nothing reached the server.
CONNECT_FAILURES = ("failed to connect", "connection refused", "connections to all backends")


def outcome(error: aio.AioRpcError) -> str:
    """What a failed call was: REFUSED or NOT_CONNECTED (safe to retry, its work was not
    done), or anything else ("CODE: details"), such as a call dropped after it was accepted."""
    details = str(error.details())
    if error.code() is grpc.StatusCode.UNAVAILABLE:
        if details == SHUTTING_DOWN:
            return REFUSED
        if any(words in details.lower() for words in CONNECT_FAILURES):
            return NOT_CONNECTED
    return f"{error.code().name}: {details}"
