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

A peer that fails a change answers with its error's kind; the caller raises the same
exception class (the transports' error tables then answer as for a local failure). A
peer that cannot be reached within the call timeout makes the call UNAVAILABLE: workers
are supervised together, so an unreachable one means the server is restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mnist_serving_server.core import errors
from mnist_serving_server.core.errors import NotReadyError, ServingError
from mnist_serving_server.core.registry import IndexEntry, ModelRegistry, ModelState
from mnist_serving_server.core.replicas import StatisticsRecord
from mnist_serving_server.core.triton_records import statistics_record

logger = logging.getLogger(__name__)

# Replies carry a whole index or statistics: well above asyncio's 64 KiB line default.
LINE_LIMIT_BYTES: Final = 64 * 1024 * 1024
# While a sibling is still starting, its socket may not exist yet.
CONNECT_RETRY_S: Final = 0.05
LEADER_INDEX: Final = 0
FORWARD_TIMEOUT_FACTOR: Final = 2.0

# The errors a peer may answer with, by kind (never by message text).
_ERROR_KINDS: Final[dict[str, type[ServingError]]] = {
    cls.__name__: cls
    for cls in (
        errors.InvalidInputError,
        errors.ModelNotFoundError,
        errors.FailedPreconditionError,
        errors.QueueFullError,
        errors.NotReadyError,
        errors.DeadlineExceededError,
    )
}
_INTERNAL: Final = "internal"


class PeerError(Exception):
    """A peer failed unexpectedly (its log has the traceback); the caller answers INTERNAL."""


@dataclass(frozen=True)
class WorkerGroup:
    """Which worker this is and where its siblings listen (picklable: sent to each worker)."""

    index: int
    sockets: tuple[Path, ...]
    call_timeout_s: float
    """How long one peer call may take: a load includes the peer's model loading."""

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

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    # --- Replicas: what the dataplane calls ----------------------------------------------

    async def load(self, name: str) -> None:
        await self._change("load", name)

    async def unload(self, name: str) -> None:
        await self._change("unload", name)

    async def poll(self) -> None:
        await self._change("poll", "")

    async def other_indexes(self) -> list[list[IndexEntry]]:
        replies = await self._ask_others({"op": "index"})
        return [[_index_entry(row) for row in reply] for reply in replies]

    async def other_statistics(self, name: str, version: str) -> list[list[StatisticsRecord]]:
        replies = await self._ask_others({"op": "statistics", "name": name, "version": version})
        return [list(reply) for reply in replies]

    # --- changes, ordered by the leader ----------------------------------------------------

    async def _change(self, op: str, name: str) -> None:
        if not self._group.leader:
            # The leader's own calls to the workers happen within this one.
            forward = {"op": op, "name": name, "everywhere": True}
            await self._call(LEADER_INDEX, forward, FORWARD_TIMEOUT_FACTOR)
            return
        async with self._change_lock:
            request = {"op": op, "name": name}
            others = [self._call(peer, request) for peer in self._others()]
            outcomes = await asyncio.gather(
                self._apply_locally(op, name), *others, return_exceptions=True
            )
        for outcome in outcomes:  # this worker's error first: it names the same problem
            if isinstance(outcome, BaseException):
                raise outcome

    async def _apply_locally(self, op: str, name: str) -> None:
        if op == "load":
            await self._registry.load(name)
        elif op == "unload":
            await self._registry.unload(name)
        elif op == "poll":
            await self._registry.poll()
        else:
            raise PeerError(f"unknown change {op!r}")

    # --- the client side -------------------------------------------------------------------

    def _others(self) -> list[int]:
        return [peer for peer in range(self._group.size) if peer != self._group.index]

    async def _ask_others(self, request: dict[str, Any]) -> list[Any]:
        return list(await asyncio.gather(*(self._call(peer, request) for peer in self._others())))

    async def _call(self, peer: int, request: dict[str, Any], timeout_factor: float = 1.0) -> Any:
        """One request to worker `peer`; its answer, or its error raised here."""
        try:
            async with asyncio.timeout(self._group.call_timeout_s * timeout_factor):
                reader, writer = await self._connect(peer)
                try:
                    writer.write(json.dumps(request).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (TimeoutError, OSError, ValueError) as exc:
            raise NotReadyError(
                f"worker process {peer} of {self._group.size} did not answer the "
                f"{request['op']} request ({type(exc).__name__}); the server may be restarting"
            ) from None
        if not line:
            raise NotReadyError(
                f"worker process {peer} of {self._group.size} closed the connection during "
                f"the {request['op']} request; the server may be restarting"
            )
        reply = json.loads(line)
        if "error" in reply:
            kind, message = reply["error"], reply.get("message", "")
            cls = _ERROR_KINDS.get(kind)
            if cls is None:
                raise PeerError(f"worker process {peer} failed the {request['op']} request")
            raise cls(message)
        return reply["result"]

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
            request = json.loads(line)
            try:
                reply: dict[str, Any] = {"result": await self._answer(request)}
            except ServingError as exc:
                reply = {"error": type(exc).__name__, "message": str(exc)}
            except Exception:
                logger.exception("a peer request failed", extra={"request": request})
                reply = {"error": _INTERNAL}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError):
            logger.warning(
                "a peer connection broke after %.3f s", time.monotonic() - started, exc_info=True
            )
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        name = str(request.get("name", ""))
        if op in ("load", "unload", "poll"):
            if request.get("everywhere"):
                await self._change(op, name)  # a sibling forwarded a caller's change to us
            else:
                await self._apply_locally(op, name)
            return None
        if op == "index":
            return [_index_row(entry) for entry in self._registry.index()]
        if op == "statistics":
            try:
                served = self._registry.served_versions(name, str(request.get("version", "")))
            except errors.ModelNotFoundError:
                return []  # the caller's own lookup decides what is not found
            return [statistics_record(version) for version in served]
        raise PeerError(f"unknown peer request {op!r}")


def _index_row(entry: IndexEntry) -> dict[str, str]:
    return {
        "name": entry.name,
        "version": entry.version,
        "state": entry.state.value,
        "reason": entry.reason,
    }


def _index_entry(row: dict[str, str]) -> IndexEntry:
    return IndexEntry(row["name"], row["version"], ModelState(row["state"]), row["reason"])
