"""gRPC channels for tests against a server process."""

from __future__ import annotations

import grpc

CONNECT_TIMEOUT_S = 30.0


def open_channels(target: str, count: int) -> list[grpc.Channel]:
    """`count` ready channels, each on a connection of its own (so workers can share them)."""
    # A local subchannel pool: otherwise channels in one process share one connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(target, options=options) for _ in range(count)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
    return channels
