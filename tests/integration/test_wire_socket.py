"""The NIC's real socket: acknowledgement reports from the kernel (runtime/wire.py).

A graceful disconnect completes when the peer has acknowledged our FIN. `write_eof` only asks for
the FIN (libuv sends it on a later loop turn), so "nothing left in the send queue" right after it
must not read as "FIN acknowledged": a watcher that reported so once would never report the real
acknowledgement, and the disconnect would wait for ever.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.runtime.acks import AckWatcher
from chimneyd.runtime.wire import WireSocket


class Peer(asyncio.Protocol):
    """Answers our FIN with its own, as the echo peer does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def eof_received(self) -> bool:
        self.transport.close()
        return False


class Owner:
    """Stands for the layer that carries the connection: it re-arms the watcher while it still
    waits for the FIN's acknowledgement, exactly as the target's `WireAcked` does."""

    def __init__(self) -> None:
        self.acked_events: list[int] = []
        self.fin_done = asyncio.Event()
        self.wire: WireSocket | None = None

    def WireAcked(self, ctx: Any, acked: int) -> None:
        assert self.wire is not None
        self.acked_events.append(acked)
        if self.wire.fin_acked():
            self.fin_done.set()
        else:
            self.wire.watch_acks()

    def WireData(self, ctx: Any, offset: int, data: bytes) -> None:
        pass

    def WireEof(self, ctx: Any, offset: int) -> None:
        pass

    def WireReset(self, ctx: Any, reason: str) -> None:
        pass


async def connected_wire(owner: Owner) -> tuple[WireSocket, asyncio.AbstractServer]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    watcher = AckWatcher(loop)

    def post(layer: Any, method: Any, args: tuple[Any, ...]) -> None:
        loop.call_soon(method, *args)  # the layer's inbox, one hop later

    _, wire = await loop.create_connection(lambda: WireSocket(post, watcher), "127.0.0.1", port)
    wire.set_home(owner, "ctx")
    owner.wire = wire
    return wire, server


@pytest.mark.asyncio
@pytest.mark.parametrize("payload", [b"", b"x" * 100_000])
async def test_fin_is_not_acknowledged_before_it_is_sent(payload: bytes) -> None:
    owner = Owner()
    wire, server = await connected_wire(owner)
    try:
        if payload:
            wire.write([memoryview(payload)])
        wire.write_eof()
        # same loop turn: libuv has not called shutdown(2) yet
        assert not wire.fin_acked()
        assert wire.acked() <= len(payload)
        wire.watch_acks()
        await asyncio.wait_for(owner.fin_done.wait(), 5.0)
        assert wire.fin_acked()
        assert wire.acked() == len(payload)
        assert owner.acked_events[-1] == len(payload)
    finally:
        wire.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_many_disconnects_all_see_their_fin_acknowledged() -> None:
    """Many connections closing in the same loop turn: each one hears its FIN acknowledged."""
    owners = [Owner() for _ in range(50)]
    pairs = [await connected_wire(o) for o in owners]
    try:
        for wire, _ in pairs:
            wire.write_eof()
            wire.watch_acks()
        await asyncio.wait_for(asyncio.gather(*(o.fin_done.wait() for o in owners)), 10.0)
    finally:
        for wire, server in pairs:
            wire.close()
            server.close()
            await server.wait_closed()
