"""How the worker processes of one server keep one repository state (`--workers N`).

Every worker listens on a Unix socket in the server's private folder (mode 0700, made by
the parent) and answers one JSON request per connection: apply a change locally (load,
unload, poll) or report its index or statistics. Repository changes are ordered by one
worker, the leader (worker 0): a worker that receives a load or unload forwards it there;
the leader takes its change lock, applies the change in every worker at once (its own
registry and each peer's) and answers when all are done. So every worker applies the same
changes in the same order, and a call returns only once the whole server serves the
result. Reads (index, statistics) ask every peer directly and are merged by the caller
(`core.replicas`). Polling runs in the leader alone, through the same path.

The messages and their schemas are in `peer_messages.py`. A peer that fails a request
answers with its error's kind and the caller raises that kind again (the transports then
answer as for a local failure). A peer that cannot be reached within the call timeout
makes the call UNAVAILABLE (`PeerUnreachableError`, a caller-safe message; the cause goes
to the log): workers are supervised together, so an unreachable one means the server is
restarting. A peer that failed unexpectedly makes it INTERNAL (`PeerFailedError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mnist_serving_server.core.errors import ModelNotFoundError, ServingError
from mnist_serving_server.core.registry import IndexEntry, ModelRegistry, ModelState
from mnist_serving_server.core.replicas import StatisticsRecord
from mnist_serving_server.core.triton_records import statistics_record
from mnist_serving_server.peer_messages import (
    ChangeDone,
    ChangeRequest,
    ErrorReply,
    IndexReply,
    IndexRequest,
    MalformedMessageError,
    Operation,
    PeerFailedError,
    PeerReply,
    PeerRequest,
    PeerUnreachableError,
    ReplyT,
    StatisticsReply,
    StatisticsRequest,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    operation_of,
)

logger = logging.getLogger(__name__)

# Replies carry a whole index or statistics: well above asyncio's 64 KiB line default.
LINE_LIMIT_BYTES: Final = 64 * 1024 * 1024
# While a sibling is still starting, its socket may not exist yet.
CONNECT_RETRY_S: Final = 0.05
LEADER_INDEX: Final = 0
FORWARD_TIMEOUT_FACTOR: Final = 2.0


@dataclass(frozen=True)
class WorkerGroup:
    """Which worker this is and where its siblings listen (picklable: sent to each worker)."""

    index: int
    sockets: tuple[Path, ...]
    call_timeout_s: float
    """How long one peer call may take: a load includes the peer's model loading."""
    rejoining: bool = False
    """A replacement for a worker that died: it takes its siblings' models (`PeerLink.join`)."""

    @property
    def leader(self) -> bool:
        return self.index == LEADER_INDEX

    @property
    def size(self) -> int:
        return len(self.sockets)


class PeerLink:
    """This worker's side of the group: serves its siblings, and is the dataplane's Replicas."""

    def __init__(self, group: WorkerGroup, registry: ModelRegistry) -> None:
        self._group = group
        self._registry = registry
        self._server: asyncio.Server | None = None
        # The leader applies one change at a time, so every worker sees the same order.
        self._change_lock = asyncio.Lock()
        # A replacement follower applies the leader's changes only once it has joined their
        # state (a replacement leader orders them with its change lock instead).
        self._joined = asyncio.Event()
        if group.leader or not group.rejoining:
            self._joined.set()

    @property
    def group(self) -> WorkerGroup:
        return self._group

    async def start(self) -> None:
        """Listen for the siblings (before the models load, so they never wait on us long)."""
        path = self._group.sockets[self._group.index]
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve_peer, path=str(path), limit=LINE_LIMIT_BYTES
        )

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    # --- Replicas: what the dataplane calls ----------------------------------------------

    async def load(self, name: str) -> None:
        await self._change(Operation.LOAD, name)

    async def unload(self, name: str) -> None:
        await self._change(Operation.UNLOAD, name)

    async def poll(self) -> None:
        await self._change(Operation.POLL, "")

    async def other_indexes(self) -> list[list[IndexEntry]]:
        replies = await self._ask_others(IndexRequest(), IndexReply)
        return [list(reply.entries) for reply in replies]

    async def other_statistics(self, name: str, version: str) -> list[list[StatisticsRecord]]:
        replies = await self._ask_others(StatisticsRequest(name, version), StatisticsReply)
        return [list(reply.records) for reply in replies]

    async def join(self) -> None:
        """A replacement worker, its startup models loaded: serve the models its siblings
        serve (by name; each loads the versions its folder holds, as a load call does).

        Ordered with the changes: the leader holds its change lock meanwhile; a follower
        reads the leader's index and applies the changes the leader sends it only after."""
        if not self._group.rejoining or self._group.size == 1:
            return
        if self._group.leader:
            async with self._change_lock:
                await self._take_models_of(self._others()[0])
        else:
            await self._take_models_of(LEADER_INDEX)
            self._joined.set()

    async def _take_models_of(self, peer: int) -> None:
        reply = await self._call(peer, IndexRequest(), IndexReply)
        wanted = _serving_names(reply.entries)
        serving = _serving_names(self._registry.index())
        for name in sorted(serving - wanted):
            await self._registry.unload(name)
        for name in sorted(wanted - serving):
            await self._registry.load(name)
        logger.info("replacement worker joined its siblings", extra={"models": sorted(wanted)})

    # --- changes, ordered by the leader ----------------------------------------------------

    async def _change(self, operation: Operation, name: str) -> None:
        if not self._group.leader:
            # The leader's own calls to the workers happen within this one.
            forward = ChangeRequest(operation, name, everywhere=True)
            await self._call(LEADER_INDEX, forward, ChangeDone, FORWARD_TIMEOUT_FACTOR)
            return
        async with self._change_lock:
            request = ChangeRequest(operation, name)
            others = [self._call(peer, request, ChangeDone) for peer in self._others()]
            outcomes = await asyncio.gather(
                self._apply_locally(request), *others, return_exceptions=True
            )
        for outcome in outcomes:  # this worker's error first: it names the same problem
            if isinstance(outcome, BaseException):
                raise outcome

    async def _apply_locally(self, request: ChangeRequest) -> ChangeDone:
        await self._joined.wait()
        if request.operation is Operation.LOAD:
            await self._registry.load(request.name)
        elif request.operation is Operation.UNLOAD:
            await self._registry.unload(request.name)
        else:
            await self._registry.poll()
        return ChangeDone()

    # --- the client side -------------------------------------------------------------------

    def _others(self) -> list[int]:
        return [peer for peer in range(self._group.size) if peer != self._group.index]

    async def _ask_others(self, request: PeerRequest, expected: type[ReplyT]) -> list[ReplyT]:
        calls = (self._call(peer, request, expected) for peer in self._others())
        return list(await asyncio.gather(*calls))

    async def _call(
        self,
        peer: int,
        request: PeerRequest,
        expected: type[ReplyT],
        timeout_factor: float = 1.0,
    ) -> ReplyT:
        """One request to worker `peer`; its reply, or its error raised here."""
        operation = operation_of(request).value
        where = f"worker process {peer} of {self._group.size}"
        try:
            async with asyncio.timeout(self._group.call_timeout_s * timeout_factor):
                reader, writer = await self._connect(peer)
                try:
                    writer.write(encode_request(request))
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (TimeoutError, OSError, ValueError):
            # The cause (errno, socket path) is for the log; the caller learns what to do.
            logger.warning("%s did not answer the %s request", where, operation, exc_info=True)
            raise PeerUnreachableError(
                f"{where} did not answer the {operation} request; the server may be restarting"
            ) from None
        if not line:
            raise PeerUnreachableError(
                f"{where} closed the connection during the {operation} request; the server "
                "may be restarting"
            )
        try:
            reply = decode_reply(line, expected)
        except MalformedMessageError as exc:
            raise PeerFailedError(f"{where} answered the {operation} request with {exc}") from None
        if isinstance(reply, ErrorReply):
            raise reply.error(f"{where} failed the {operation} request (see its log)")
        return reply

    async def _connect(self, peer: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect, waiting for a sibling that is still starting (within the caller's timeout)."""
        path = str(self._group.sockets[peer])
        while True:
            try:
                return await asyncio.open_unix_connection(path, limit=LINE_LIMIT_BYTES)
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(CONNECT_RETRY_S)

    # --- the server side ---------------------------------------------------------------------

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.monotonic()
        try:
            line = await reader.readline()
            if not line:
                return
            reply: PeerReply | ErrorReply
            try:
                request = decode_request(line)
                reply = await self._answer(request)
            except ServingError as exc:
                if exc.status.grpc_code == "INTERNAL":  # not meant for the caller: log it
                    logger.error("a peer request failed: %s", exc, extra={"request": line})
                reply = ErrorReply.of(exc)
            except Exception:
                logger.exception("a peer request failed", extra={"request": line})
                reply = ErrorReply.of(PeerFailedError())
            writer.write(encode_reply(reply))
            await writer.drain()
        except (OSError, ValueError):
            logger.warning(
                "a peer connection broke after %.3f s", time.monotonic() - started, exc_info=True
            )
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, request: PeerRequest) -> PeerReply:
        if isinstance(request, ChangeRequest):
            if request.everywhere:
                await self._change(request.operation, request.name)  # a sibling forwarded it
                return ChangeDone()
            return await self._apply_locally(request)
        if isinstance(request, IndexRequest):
            return IndexReply(tuple(self._registry.index()))
        try:
            served = self._registry.served_versions(request.name, request.version)
        except ModelNotFoundError:
            return StatisticsReply(())  # the caller's own lookup decides what is not found
        return StatisticsReply(tuple(statistics_record(version) for version in served))


def _serving_names(entries: Iterable[IndexEntry]) -> set[str]:
    return {entry.name for entry in entries if entry.state is ModelState.READY}
