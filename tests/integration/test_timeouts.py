"""The kernel giving up on an offloaded connection (spec §5.2 TimeoutExpiration, §8), on real
sockets: a peer that stops reading shuts its window; the kernel's zero-window probes get no
window back, and TCP_USER_TIMEOUT (`engine.user_timeout_ms`) ends the connection."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode


async def _events(engine: Any, conn: int, name: str, seen: list[Any], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if any(c == conn and e == name for c, e, _ in seen):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {name}: {[e for c, e, _ in seen if c == conn]}")


async def test_a_peer_that_stops_reading_times_the_connection_out(make_engine: Any) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted socket
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    engine = await make_engine(user_timeout_ms=300)
    seen: list[Any] = []
    engine.subscribe(None, lambda c, e, i: seen.append((c, e, i)))
    conn = await engine.connect("127.0.0.1", srv.getsockname()[1])
    peer, _ = srv.accept()  # it never reads
    try:
        assert engine.conn_info(conn)["state"] == "offloaded"
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(engine.send(conn, b"x" * (8 << 20)), 20)
        assert err.value.code is ErrorCode.NDIS_STATUS
        assert "connection timed out (TimeoutExpiration)" in str(err.value)
        await _events(engine, conn, "uploaded", seen, 5)
        names = [e for c, e, _ in seen if c == conn]
        assert "TcpIndicateAbort" not in names  # no RST came: the kernel gave up
        (retrieve,) = [i for c, e, i in seen if c == conn and e == "TcpIndicateRetrieve"]
        assert retrieve == {"reason": "TimeoutExpiration", "mandatory": True, "honored": True}
        info = engine.conn_info(conn)
        assert info["state"] == "host" and info["delegated"]["State"] == "TcpConnectionClosed"
        with pytest.raises(EngineError) as err:
            await engine.recv(conn, 10, 1.0)
        assert "timed out" in str(err.value)
    finally:
        peer.close()
        srv.close()


async def test_a_timeout_while_the_socket_is_not_read_is_still_a_timeout(
    make_engine: Any,
) -> None:
    """Back-pressure has stopped reading the socket (the peer sent more than the connection may
    hold) when the kernel gives up: the ack watcher finds the dead socket, and reports it as the
    kernel's timeout, not as a reset."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    engine = await make_engine(user_timeout_ms=300, rx_buffer_bytes=4096)
    seen: list[Any] = []
    engine.subscribe(None, lambda c, e, i: seen.append((c, e, i)))
    conn = await engine.connect("127.0.0.1", srv.getsockname()[1])
    peer, _ = srv.accept()
    try:
        peer.sendall(b"p" * 32768)  # more than the daemon holds: it stops reading
        await asyncio.sleep(0.1)
        with pytest.raises(EngineError) as err:
            # fits in the kernel's send buffer: nothing waits in the transport
            await asyncio.wait_for(engine.send(conn, b"x" * 200_000), 20)
        assert "connection timed out (TimeoutExpiration)" in str(err.value)
        await _events(engine, conn, "uploaded", seen, 5)
        assert "TcpIndicateAbort" not in [e for c, e, _ in seen if c == conn]
        # what the peer sent before is still there to read, then the error
        got = b""
        while len(got) < 32768:
            got += await engine.recv(conn, 65536, 1.0)
        assert got == b"p" * 32768
        with pytest.raises(EngineError) as err:
            await engine.recv(conn, 10, 1.0)
        assert "timed out" in str(err.value)
    finally:
        peer.close()
        srv.close()
