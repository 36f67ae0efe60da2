"""The connections' real sockets: opening, listening, accepting, and finding them again.

Every connection the host stack carries has one `WireSocket` from its first byte to its close;
the NIC finds it again at initiate by its 4-tuple (`find_wire`), as a real TOE would by the
addresses and ports in the offloaded state.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import is_loopback

from .acks import AckWatcher
from .wire import Post, WireSocket

Key = tuple[bytes, int, bytes, int]
#: perf-notes: past about 4096 unaccepted connects the accept queue overflows
BACKLOG = 4096
#: connections a listener holds accepted but not yet taken by `tcp.accept` (each is a socket, a
#: TCB and maybe an offloaded context); past it new ones are reset (`engine.max_pending_accepts`)
MAX_PENDING_ACCEPTS = 1024
CONNECT_TIMEOUT_S = 10.0
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


@functools.lru_cache(maxsize=256)
def _packed(host: str) -> bytes:
    """The address in network byte order, one bytes object per address: each connection's
    key holds two, and ten thousand copies of 127.0.0.1 add up."""
    return ipaddress.ip_address(host).packed


def _key(wire: WireSocket) -> Key:
    return (_packed(wire.local[0]), wire.local[1], _packed(wire.remote[0]), wire.remote[1])


@dataclass
class Listener:
    id: int
    server: asyncio.AbstractServer
    host: str
    port: int
    offload: bool
    pending: deque[int] = field(default_factory=deque)
    waiters: deque[asyncio.Future[int]] = field(default_factory=deque)


Attach = Callable[[WireSocket, "Listener | None"], int]


def _limit_or(exc: OSError, code: ErrorCode, detail: str) -> EngineError:
    """EMFILE/ENFILE answer LIMIT (an operator can raise it); anything else `code`."""
    if exc.errno in _OUT_OF_FDS:
        return EngineError(ErrorCode.LIMIT, f"open-file limit reached: {exc.strerror}")
    return EngineError(code, detail)


class Sockets:
    """The wires of every open connection and the listeners that make new ones."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        post: Post,
        attach: Attach,
        max_pending: int = MAX_PENDING_ACCEPTS,
        id_base: int = 0,
    ) -> None:
        self.loop = loop
        self.post = post
        self.watcher = AckWatcher(loop)
        self.attach = attach  # registers a new wire with the host stack, returns its conn id
        self.max_pending = max_pending
        self.wires: dict[Key, WireSocket] = {}
        self.by_conn: dict[int, WireSocket] = {}
        self.listeners: dict[int, Listener] = {}
        self._listener_ids = id_base  # a shard's own range (design: scale)
        self.pending_overflows = 0  # connections reset because their listener's queue was full

    # -- the registry ----------------------------------------------------------------------------
    def add(self, conn_id: int, wire: WireSocket) -> None:
        # the ordinary path finds a wire by its 4-tuple; a closed socket's tuple may come again
        # for a new connection while the old one is still open in the engine: the newest wins
        # the tuple, and each connection keeps its own wire
        self.wires[_key(wire)] = wire
        self.by_conn[conn_id] = wire

    def find_wire(self, src: bytes, lport: int, dst: bytes, rport: int) -> WireSocket | None:
        return self.wires.get((src, lport, dst, rport))

    def wire_of(self, conn_id: int) -> WireSocket:
        wire = self.by_conn.get(conn_id)
        if wire is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn_id}")
        return wire

    def forget(self, conn_id: int) -> WireSocket | None:
        wire = self.by_conn.pop(conn_id, None)
        if wire is not None:
            key = _key(wire)
            if self.wires.get(key) is wire:  # not a newer connection's that took the tuple
                del self.wires[key]
            self.watcher.discard(wire)
        return wire

    # -- connect ---------------------------------------------------------------------------------
    async def connect(self, host: str, port: int) -> WireSocket:
        if not is_loopback(host):
            raise EngineError(ErrorCode.INVALID_PARAMS, f"host {host!r} is not a loopback address")
        wire = WireSocket(self.post, self.watcher)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: wire, host, port), CONNECT_TIMEOUT_S
            )
        except TimeoutError:
            raise EngineError(ErrorCode.CONNECT_FAILED, f"{host}:{port}: timed out") from None
        except OSError as exc:
            raise _limit_or(exc, ErrorCode.CONNECT_FAILED, f"{host}:{port}: {exc}") from None
        return wire

    # -- listen and accept ----------------------------------------------------------------------
    async def listen(self, host: str, port: int, offload: bool) -> Listener:
        if not is_loopback(host):
            raise EngineError(ErrorCode.INVALID_PARAMS, f"host {host!r} is not a loopback address")
        self._listener_ids += 1
        lid = self._listener_ids

        def made(wire: WireSocket) -> None:
            listener = self.listeners.get(lid)
            if listener is None:
                wire.close()
                return
            if len(listener.pending) >= self.max_pending and not _anyone_waiting(listener):
                # nobody takes them: bounded, the peer learns at once (RST), and it is counted
                self.pending_overflows += 1
                wire.abort()
                return
            conn_id = self.attach(wire, listener)
            if not _hand_to_waiter(listener, conn_id):
                listener.pending.append(conn_id)

        try:
            server = await self.loop.create_server(
                lambda: WireSocket(self.post, self.watcher, made),
                host,
                port,
                backlog=BACKLOG,
                reuse_address=True,
            )
        except OSError as exc:
            detail = f"cannot listen on {host}:{port}: {exc.strerror}"
            raise _limit_or(exc, ErrorCode.INVALID_PARAMS, detail) from None
        if not server.sockets:
            # uvloop gives a server with no socket when it could not open one (out of fds)
            server.close()
            raise _no_socket(host, port)
        bound = server.sockets[0].getsockname()
        listener = Listener(lid, server, bound[0], bound[1], offload)
        self.listeners[lid] = listener
        return listener

    def listener(self, listener_id: int) -> Listener:
        listener = self.listeners.get(listener_id)
        if listener is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no listener {listener_id}")
        return listener

    async def accept(self, listener_id: int, timeout: float | None) -> int:
        """The listener's next connection. Cancelled (its client left), it stops waiting at
        once, and a connection handed to it meanwhile goes to the next accept (`give_back`)."""
        listener = self.listener(listener_id)
        if listener.pending:
            return listener.pending.popleft()
        fut: asyncio.Future[int] = self.loop.create_future()
        listener.waiters.append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            if _accepted(fut):
                return fut.result()  # accepted just as the timeout fired: not lost
            fut.cancel()
            raise EngineError(
                ErrorCode.TIMEOUT, f"no connection on listener {listener_id}"
            ) from None
        except asyncio.CancelledError:
            if _accepted(fut):
                self.give_back(listener_id, fut.result())
            fut.cancel()
            raise
        finally:
            # a waiter that stopped waiting leaves the queue now, not when the next connection
            # comes: accepts that time out on a quiet listener must not pile up
            with contextlib.suppress(ValueError):
                listener.waiters.remove(fut)

    def give_back(self, listener_id: int, conn_id: int) -> bool:
        """A connection taken for an accept that was then cancelled: to the next accept
        waiting, else first in the listener's queue. False if the listener is closed (the
        caller closes the connection)."""
        listener = self.listeners.get(listener_id)
        if listener is None:
            return False
        if not _hand_to_waiter(listener, conn_id):
            listener.pending.appendleft(conn_id)
        return True

    def accept_waiters(self) -> int:
        """Accepts waiting on every listener (0 once nobody waits: `stack.stats`)."""
        return sum(len(listener.waiters) for listener in self.listeners.values())

    def close_listener(self, listener_id: int) -> list[int]:
        """Stop listening; accepts still waiting fail (NOT_FOUND, "listener closed"). Returns
        the connections accepted but never handed out."""
        listener = self.listeners.pop(listener_id, None)
        if listener is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no listener {listener_id}")
        listener.server.close()
        for waiter in listener.waiters:
            if not waiter.done():
                waiter.set_exception(
                    EngineError(ErrorCode.NOT_FOUND, f"listener closed (listener {listener_id})")
                )
        listener.waiters.clear()
        return list(listener.pending)


def _hand_to_waiter(listener: Listener, conn_id: int) -> bool:
    """Give `conn_id` to the oldest accept still waiting on `listener`; False if none is."""
    while listener.waiters:
        waiter = listener.waiters.popleft()
        if not waiter.done():
            waiter.set_result(conn_id)
            return True
    return False


def _accepted(fut: asyncio.Future[int]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _anyone_waiting(listener: Listener) -> bool:
    return any(not w.done() for w in listener.waiters)


def _no_socket(host: str, port: int) -> EngineError:
    """Why no listening socket came: out of file descriptors (LIMIT) if a probe says so."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    except OSError as exc:
        return _limit_or(exc, ErrorCode.INTERNAL, f"cannot listen on {host}:{port}: {exc}")
    return EngineError(
        ErrorCode.LIMIT, f"cannot listen on {host}:{port}: no socket could be opened"
    )
