"""What `WireSocket.abort` does with the peer's bytes the kernel holds and the event loop has
not read yet, on loopback sockets (runtime/wire.py). An abort is the owner ending the
connection: the RST drops them, and the owner is told nothing (spec §4.5: nothing is
processed after an abortive disconnect). Only the RST a FIN_WAIT_2 timeout owes the peer
(`abort_after_reading`, spec §8) reads them first, with reading on, and tells them."""

from __future__ import annotations

import asyncio
import select
import socket

import pytest

from chimneyd.runtime.wire import WireSocket
from tests.integration.support import eventually
from tests.integration.test_wire_after_the_peer import Owner, pair

SENT = 3000


def _queued_unread(wire: WireSocket, peer: socket.socket) -> None:
    """The peer sends SENT bytes and the kernel has them: our socket is readable. Nothing here
    gives the event loop a turn, so uvloop has read none of them."""
    peer.sendall(b"k" * SENT)
    readable, _, _ = select.select([wire.fd], [], [], 5.0)
    assert readable, "the kernel never had the peer's bytes"


async def _told(owner: Owner) -> int:
    """The bytes told in `WireData`, once every event posted so far has run: `pair` posts
    with call_soon, which runs callbacks in the order they were queued."""
    loop = asyncio.get_running_loop()
    behind: asyncio.Future[None] = loop.create_future()
    loop.call_soon(behind.set_result, None)
    await behind
    return sum(args[1] for name, args in owner.events if name == "WireData")


async def _peer_reset(peer: socket.socket) -> None:
    peer.setblocking(False)

    def reset_seen() -> bool:
        try:
            peer.recv(1)  # nothing was sent to it: b"" would be a FIN, not the RST
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        return False

    await eventually(reset_seen, "the RST at the peer")


@pytest.mark.asyncio
async def test_abort_drops_what_the_kernel_holds_unread_and_tells_nothing() -> None:
    wire, peer, owner = await pair()
    try:
        _queued_unread(wire, peer)
        wire.abort()
        assert await _told(owner) == 0, owner.events
        assert wire.bytes_read == 0
        await _peer_reset(peer)
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
async def test_abort_after_reading_tells_what_the_kernel_holds_then_resets() -> None:
    wire, peer, owner = await pair()
    try:
        _queued_unread(wire, peer)
        wire.abort_after_reading()
        assert await _told(owner) == SENT, owner.events
        assert wire.bytes_read == SENT and wire.closed
        await _peer_reset(peer)
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
async def test_abort_after_reading_with_reading_stopped_drops_them() -> None:
    """Reading stopped (back-pressure): the bytes are lost with the connection, as
    `pause_reading` says; the owed RST waits for the application instead (spec §8)."""
    wire, peer, owner = await pair()
    try:
        wire.pause_reading()
        _queued_unread(wire, peer)
        wire.abort_after_reading()
        assert await _told(owner) == 0, owner.events
        await _peer_reset(peer)
    finally:
        wire.close()
        peer.close()
