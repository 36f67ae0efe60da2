"""The NIC's real socket once the peer has half-closed, reset, or stopped reading
(runtime/wire.py, runtime/acks.py), on loopback sockets.

After the peer's FIN uvloop reads no more, and while an owner's buffers are full it reads
nothing: in both cases the kernel knows things the transport does not (an RST, bytes it never
took). What the wire reports must still be what the kernel knows: a send completes only on
the peer's acknowledgement (spec §4.1), a graceful disconnect only when our FIN was sent and
acknowledged (§4.5), a peer's RST is told (§5.1), each event once.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from chimneyd.runtime.acks import AckWatcher
from chimneyd.runtime.wire import WireSocket
from tests.integration.support import eventually

TCP_CLOSE = 7


class Owner:
    """Stands for the layer that owns the socket: records every event it is posted."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def WireData(self, ctx: Any, offset: int, data: bytes) -> None:
        self.events.append(("WireData", (offset, len(data))))

    def WireEof(self, ctx: Any, offset: int) -> None:
        self.events.append(("WireEof", (offset,)))

    def WireReset(self, ctx: Any, reason: str) -> None:
        self.events.append(("WireReset", (reason,)))

    def WireTimeout(self, ctx: Any, reason: str) -> None:
        self.events.append(("WireTimeout", (reason,)))

    def WireAcked(self, ctx: Any, acked: int) -> None:
        self.events.append(("WireAcked", (acked,)))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


async def pair(
    watcher: AckWatcher | None = None,
) -> tuple[WireSocket, socket.socket, Owner]:
    """Our socket (a uvloop transport) and the peer's, a plain blocking socket."""
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        owner = Owner()
        watch = watcher or AckWatcher(loop)

        def post(layer: Any, method: Any, args: tuple[Any, ...]) -> None:
            loop.call_soon(method, *args)  # the layer's inbox, one hop later

        _, wire = await loop.create_connection(
            lambda: WireSocket(post, watch), "127.0.0.1", listener.getsockname()[1]
        )
        peer, _ = listener.accept()
    finally:
        listener.close()
    wire.set_home(owner, "ctx")
    return wire, peer, owner


def reset(peer: socket.socket) -> None:
    """The peer closes with RST (SO_LINGER {1, 0})."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


async def fin_then_reset(wire: WireSocket, peer: socket.socket) -> None:
    """The peer half-closes (we read its FIN, and uvloop reads no more), then resets: the
    kernel's socket is CLOSE and nothing in the transport has noticed."""
    peer.shutdown(socket.SHUT_WR)
    await eventually(lambda: wire.eof_seen, "the peer's FIN read")
    reset(peer)
    await eventually(lambda: wire._tcp_state() == TCP_CLOSE, "our socket CLOSE (the RST)")


@pytest.mark.asyncio
async def test_the_peers_fin_is_told_once_across_a_pause_and_a_resume() -> None:
    """Reading paused and resumed after the peer's FIN (an owner's flow control, an initiate
    taking the socket stopped and reading again) must not read the end of stream a second
    time: libuv forgets it saw EOF when reading starts again."""
    wire, peer, owner = await pair()
    try:
        peer.sendall(b"hello")
        peer.shutdown(socket.SHUT_WR)
        await eventually(lambda: "WireEof" in owner.names(), "the peer's FIN")
        wire.pause_reading()
        wire.resume_reading()
        await asyncio.sleep(0.05)
        assert owner.events == [("WireData", (0, 5)), ("WireEof", (5,))]
    finally:
        wire.close()
        peer.close()
