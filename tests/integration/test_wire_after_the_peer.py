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
import os
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


# ================================================================================================
# bytes the kernel refused are not acknowledged (spec §4.1)
# ================================================================================================
# send(2) fails (EPIPE) on a socket the peer reset: uvloop drops the bytes it held and only
# queues connection_lost. Until that runs, "written minus buffered minus the kernel's queue"
# counted the dropped bytes as acknowledged.


@pytest.mark.asyncio
async def test_bytes_the_kernel_refused_are_not_acknowledged() -> None:
    wire, peer, _ = await pair()
    try:
        wire.write([memoryview(b"a" * 300)])
        await eventually(lambda: wire.acked() == 300, "the first bytes acknowledged")
        await fin_then_reset(wire, peer)
        wire.write([memoryview(b"x" * 1000)])  # EPIPE: not one byte reaches the kernel
        assert wire.transport is not None and wire.transport.is_closing()
        assert wire.acked() == 300
        await eventually(lambda: wire.closed, "connection_lost")
        assert wire.acked() == 300  # and so it stays
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
async def test_the_watcher_does_not_report_refused_bytes_before_the_reset() -> None:
    """In a daemon's order: the watcher's poll is already queued when a layer's step writes;
    the owner must hear the reset and never an acknowledgement of those bytes."""
    loop = asyncio.get_running_loop()
    wire, peer, owner = await pair()
    try:
        await fin_then_reset(wire, peer)
        loop.call_soon(wire.write, [memoryview(b"x" * 1000)])  # a layer's step
        wire.watch_acks()  # the watcher's poll, queued after it
        await eventually(lambda: "WireReset" in owner.names(), "the reset")
        assert [a for n, a in owner.events if n == "WireAcked" and a != (0,)] == []
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
async def test_abort_keeps_what_the_peer_really_acknowledged() -> None:
    """`abort` reads the acknowledged offset one last time; what it read stands after."""
    wire, peer, _ = await pair()
    try:
        await fin_then_reset(wire, peer)
        wire.write([memoryview(b"x" * 1000)])
        wire.abort()
        assert wire.acked() == 0
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("side", ["connecting", "accepted"])
async def test_acknowledged_bytes_are_counted_from_the_first_data_byte(side: str) -> None:
    """The kernel's count of acknowledged bytes includes our SYN on a connecting socket and not
    on an accepted one (Linux 6.x), and our FIN once acknowledged: neither is a data byte."""
    loop = asyncio.get_running_loop()
    watcher = AckWatcher(loop)
    owner = Owner()
    made: asyncio.Future[WireSocket] = loop.create_future()

    def post(layer: Any, method: Any, args: tuple[Any, ...]) -> None:
        loop.call_soon(method, *args)

    peer: socket.socket
    if side == "connecting":
        wire, peer, owner = await pair(watcher)
    else:
        server = await loop.create_server(
            lambda: WireSocket(post, watcher, made.set_result), "127.0.0.1", 0
        )
        peer = socket.create_connection(server.sockets[0].getsockname()[:2])
        wire = await made
        wire.set_home(owner, "ctx")
        server.close()
    try:
        peer.setblocking(False)
        wire.write([memoryview(b"d" * 700)])
        await eventually(lambda: wire.acked() == 700, "700 bytes acknowledged")
        wire.write_eof()
        await eventually(lambda: wire.fin_acked(), "our FIN acknowledged")
        assert wire.acked() == 700
        reset(peer)
        await eventually(lambda: wire.closed, "the reset read")
        assert wire.acked() == 700 and wire.fin_acked()
    finally:
        wire.close()
        peer.close()


# ================================================================================================
# a FIN is acknowledged only if it was sent (spec §4.5)
# ================================================================================================


@pytest.mark.asyncio
async def test_no_fin_is_acknowledged_on_a_socket_the_peer_reset() -> None:
    """After the peer's FIN and RST our FIN cannot go out (shutdown(2): ENOTCONN): the
    kernel's CLOSE with an empty queue is no acknowledgement of it, nor is the socket closing
    afterwards."""
    wire, peer, owner = await pair()
    try:
        wire.write([memoryview(b"a" * 300)])
        await eventually(lambda: wire.acked() == 300, "the bytes acknowledged")
        await fin_then_reset(wire, peer)
        wire.write_eof()
        assert not wire.fin_acked() and wire.acked() == 300
        await asyncio.sleep(0.01)  # libuv's shutdown(2) has been tried
        assert not wire.fin_acked() and wire.acked() == 300
        wire.watch_acks()
        await eventually(lambda: wire.closed, "the reset found")
        assert not wire.fin_acked() and wire.acked() == 300
        assert "WireReset" in owner.names()
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
async def test_a_fin_sent_after_the_peers_is_acknowledged_when_the_socket_closes() -> None:
    """The peer's FIN first, ours after it: once the peer acknowledges ours the kernel's
    socket is CLOSE with no error, the one CLOSE that does mean "FIN acknowledged"."""
    wire, peer, _ = await pair()
    try:
        peer.shutdown(socket.SHUT_WR)
        await eventually(lambda: wire.eof_seen, "the peer's FIN read")
        wire.write([memoryview(b"b" * 500)])
        wire.write_eof()
        await eventually(lambda: wire._tcp_state() == TCP_CLOSE, "LAST_ACK answered")
        assert wire.fin_acked() and wire.acked() == 500
        wire.close()
        assert wire.fin_acked() and wire.acked() == 500  # as it stood when closed
    finally:
        wire.close()
        peer.close()


# ================================================================================================
# a reset is told while nothing reads the socket (spec §5.1; design: back-pressure)
# ================================================================================================
# Back-pressure stops the reading of the peer's data, not the news of the connection's death.
# Paused (or after the peer's FIN) the transport reads nothing, so the peer's RST reaches it
# only by the watcher's poll of the sockets nobody reads.


@pytest.mark.asyncio
async def test_a_reset_is_told_while_reading_is_paused() -> None:
    """The owner's buffers are full: reading is paused, the peer sends, then resets. The reset
    is told (bounded wait), the bytes the kernel held unread are lost with the connection, as
    `MemoryWire.peer_reset` drops them, and a resume afterwards reads nothing more."""
    wire, peer, owner = await pair()
    try:
        wire.pause_reading()
        await asyncio.sleep(0.01)
        peer.sendall(b"held by the kernel")
        await asyncio.sleep(0.01)
        reset(peer)
        await eventually(lambda: "WireReset" in owner.names(), "the reset told", 3.0)
        assert wire.closed and owner.names() == ["WireReset"]
        wire.resume_reading()
        await asyncio.sleep(0.05)
        assert owner.names() == ["WireReset"]
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
async def test_a_reset_after_the_peers_fin_is_told_with_nothing_waiting() -> None:
    """After the peer's FIN uvloop reads no more; a reset then is told even when no send or
    disconnect waits for an acknowledgement."""
    wire, peer, owner = await pair()
    try:
        await fin_then_reset(wire, peer)
        await eventually(lambda: "WireReset" in owner.names(), "the reset told", 3.0)
        assert owner.names() == ["WireEof", "WireReset"]
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
async def test_a_graceful_close_while_paused_is_no_reset() -> None:
    """Paused, the peer sends and half-closes; we half-close too and the kernel's socket is
    shut both ways (poll says HUP): no reset, and on resume every byte and the FIN come."""
    wire, peer, owner = await pair()
    try:
        wire.pause_reading()
        await asyncio.sleep(0.01)
        peer.sendall(b"still to read")
        peer.shutdown(socket.SHUT_WR)
        wire.write_eof()
        await eventually(lambda: wire.fin_acked(), "our FIN acknowledged")
        watcher = wire._watcher
        await eventually(lambda: not watcher.unread, "the HUP looked at")
        assert owner.events == [] and not wire.closed
        wire.resume_reading()
        await eventually(lambda: "WireEof" in owner.names(), "the bytes and the FIN")
        assert owner.events == [("WireData", (0, 13)), ("WireEof", (13,))]
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
async def test_only_the_sockets_nobody_reads_are_polled_for_their_death() -> None:
    """What it costs: a socket being read is in no list (uvloop's read meets the RST); one
    paused is in the watcher's poll set until it reads again or goes."""
    loop = asyncio.get_running_loop()
    watcher = AckWatcher(loop)
    a, peer_a, _ = await pair(watcher)
    b, peer_b, _ = await pair(watcher)
    try:
        assert watcher.unread == {}
        a.pause_reading()
        assert list(watcher.unread.values()) == [a]
        a.resume_reading()
        b.pause_reading()
        assert list(watcher.unread.values()) == [b]
        b.close()
        assert watcher.unread == {}
    finally:
        a.close()
        b.close()
        peer_a.close()
        peer_b.close()


# ================================================================================================
# a close releases the socket (rpc-contract tcp.close)
# ================================================================================================


@pytest.mark.asyncio
async def test_a_close_with_bytes_still_buffered_releases_the_socket_and_resets_the_peer() -> None:
    """The peer reads nothing: uvloop still holds bytes when the socket is closed. A graceful
    close would wait for them with no limit (the fd kept for ever) and send them after the
    close was answered; the stream is cut instead, and the peer must learn so by an RST, not
    read a FIN after a stream that lost its tail."""
    loop = asyncio.get_running_loop()
    wire, peer, _ = await pair()
    try:
        wire.write([memoryview(bytes(16 << 20))])
        await asyncio.sleep(0.05)
        assert wire.transport is not None and wire.transport.get_write_buffer_size() > 0
        fd = wire.fd
        wire.close()
        await eventually(lambda: wire.transport is None, "connection_lost", 2.0)
        with pytest.raises(OSError):
            os.fstat(fd)  # released (and not reused meanwhile: nothing else opens one)
        peer.settimeout(5.0)
        with pytest.raises(ConnectionResetError):
            while await loop.run_in_executor(None, peer.recv, 1 << 20):
                pass
    finally:
        wire.close()
        peer.close()


@pytest.mark.asyncio
async def test_a_close_with_nothing_buffered_ends_the_stream_with_a_fin() -> None:
    """Every byte reached the kernel: the close stays graceful and the peer reads them all."""
    wire, peer, _ = await pair()
    try:
        wire.write([memoryview(b"z" * 1000)])
        await eventually(lambda: wire.acked() == 1000, "the bytes acknowledged")
        wire.close()
        await eventually(lambda: wire.transport is None, "connection_lost", 2.0)
        peer.settimeout(5.0)
        got = b""
        while chunk := peer.recv(4096):
            got += chunk
        assert got == b"z" * 1000  # then the FIN
    finally:
        peer.close()
