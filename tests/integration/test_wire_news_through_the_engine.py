"""What the wire tells the layers after the peer has reset or stopped reading, seen through the
whole stack (host → IM → NIC) on loopback sockets: sends complete only when acknowledged
(spec §4.1), a graceful disconnect succeeds only when its FIN was acknowledged (§4.5), a peer's
RST is indicated (§5.1), and every table is back to zero at the end (the `make_engine`
fixture checks it)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from chimneyd.engine import Engine
from tests.integration.support import eventually

TCP_CLOSE = 7


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def reset(peer: socket.socket) -> None:
    """The peer closes with RST (SO_LINGER {1, 0})."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


async def fin_then_reset(engine: Engine, conn: int, peer: socket.socket) -> None:
    """The peer half-closes, we read its FIN (uvloop then reads no more), then it resets."""
    wire = engine.sockets.wire_of(conn)
    peer.shutdown(socket.SHUT_WR)
    await eventually(lambda: wire.eof_seen, "the peer's FIN read")
    await asyncio.sleep(0.05)  # its news has gone up the stack
    reset(peer)
    await eventually(lambda: wire._tcp_state() == TCP_CLOSE, "our socket CLOSE (the RST)")


@pytest.mark.asyncio
async def test_a_send_the_kernel_refused_does_not_complete_at_an_offload(
    make_engine: Callable[..., Any],
) -> None:
    """Host mode: after the peer's FIN and RST, a send and an offload reach the host in one
    inbox drain. send(2) fails (EPIPE) and uvloop drops the bytes; the initiate hands the send
    down by what the wire says was acknowledged, which must be nothing."""
    engine: Engine = await make_engine()
    lsock = listener()
    peer = None
    try:
        conn = await engine.connect("127.0.0.1", lsock.getsockname()[1], offload=False)
        peer, _ = lsock.accept()
        await fin_then_reset(engine, conn, peer)
        sent = engine.start_send(conn, b"x" * 1000)
        offloaded = engine._request(engine.host.app_offload, conn, None)  # the same turn
        results = await asyncio.wait_for(
            asyncio.gather(sent, offloaded, return_exceptions=True), 5.0
        )
        assert isinstance(results[0], Exception), f"send answered {results[0]!r}"
    finally:
        if peer is not None:
            peer.close()
        lsock.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("offloaded", [True, False], ids=["offloaded", "host"])
async def test_a_graceful_disconnect_after_the_peers_reset_is_no_success(
    make_engine: Callable[..., Any], offloaded: bool
) -> None:
    """The peer half-closes, then resets. A graceful disconnect afterwards can send no FIN,
    so none can be acknowledged: it must not complete with SUCCESS (spec §4.5)."""
    engine: Engine = await make_engine()
    lsock = listener()
    peer = None
    try:
        conn = await engine.connect("127.0.0.1", lsock.getsockname()[1], offload=offloaded)
        peer, _ = lsock.accept()
        await fin_then_reset(engine, conn, peer)
        try:
            status = await asyncio.wait_for(engine.disconnect(conn, False), 5.0)
        except Exception as exc:  # an error is an acceptable answer
            status = repr(exc)
        assert "SUCCESS" not in status
    finally:
        if peer is not None:
            peer.close()
        lsock.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("offloaded", [True, False], ids=["offloaded", "host"])
async def test_a_reset_is_indicated_while_the_receive_side_is_full(
    make_engine: Callable[..., Any], offloaded: bool
) -> None:
    """The application reads nothing; the peer fills every buffer (ours stop reading the
    socket), then resets: the reset is indicated (spec §5.1: TcpIndicateAbort offloaded, the
    connection reset in the host stack) within a bounded time."""
    engine: Engine = await make_engine()
    lsock = listener()
    peer = None
    try:
        conn = await engine.connect("127.0.0.1", lsock.getsockname()[1], offload=offloaded)
        peer, _ = lsock.accept()
        peer.setblocking(False)
        events: list[str] = []
        engine.subscribe(conn, lambda _c, ev, info: events.append(ev))
        chunk, idle = b"y" * 65536, 0
        for _ in range(2000):  # bounded: at most 128 MiB offered
            try:
                peer.send(chunk)
                idle = 0
            except BlockingIOError:
                idle += 1
                if idle > 20:
                    break  # every buffer is full: we stopped reading
                await asyncio.sleep(0.01)
        assert idle > 20, "the engine never stopped reading"
        reset(peer)
        peer = None
        await eventually(
            lambda: (
                "TcpIndicateAbort" in events
                or engine.conn_info(conn).get("state") in ("reset", "closed")
            ),
            "the reset indicated",
            3.0,
        )
    finally:
        if peer is not None:
            peer.close()
        lsock.close()


@pytest.mark.asyncio
async def test_closing_a_connection_whose_peer_does_not_read_releases_its_socket(
    make_engine: Callable[..., Any],
) -> None:
    """tcp.close while a send waits on a peer that reads nothing: the send is answered (not
    acknowledged: an error), the engine forgets the connection, and its socket (fd) goes
    within a bounded time instead of waiting for the write buffer to drain."""
    engine: Engine = await make_engine()
    lsock = listener()
    peer = None
    try:
        conn = await engine.connect("127.0.0.1", lsock.getsockname()[1], offload=False)
        peer, _ = lsock.accept()  # never reads
        wire = engine.sockets.wire_of(conn)
        sent = engine.start_send(conn, b"z" * (16 << 20))
        await eventually(
            lambda: wire.transport is not None and wire.transport.get_write_buffer_size() > 0,
            "bytes held by uvloop",
        )
        fd = wire.fd
        await asyncio.wait_for(engine.close(conn), 5.0)
        (result,) = await asyncio.gather(sent, return_exceptions=True)
        assert isinstance(result, Exception)
        assert conn not in engine.conn_ids()
        await eventually(lambda: wire.transport is None, "the socket released", 2.0)
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        if peer is not None:
            peer.close()
        lsock.close()
