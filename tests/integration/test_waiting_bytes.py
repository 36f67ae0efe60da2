"""Bytes that wait for someone: none may be lost, duplicated or reordered (design: "the socket
changes hands"). Each place where received bytes wait — before `tcp.accept`, while an initiate
is in flight (then forwarded, spec §4.6), while a terminate is in flight (spec §3.6.4), in the
host after a refused indication, at close — is checked in host mode and offloaded, with the
spec §9 invariant checker on and every table back to zero after each test (`make_engine`)."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest

from chimneyd.engine import Engine

MODES = pytest.mark.parametrize("offload", [False, True], ids=["host", "offloaded"])


class Peer(asyncio.Protocol):
    """The far end of an accepted connection: sends what the test says, keeps what it gets."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def dial(port: int) -> Peer:
    _, peer = await asyncio.get_running_loop().create_connection(Peer, "127.0.0.1", port)
    return peer


class RawPeer:
    """A peer that connects and sends before the daemon's loop runs again: the daemon then
    accepts the connection and reads its first bytes in one go, before its host stack has
    taken the connection (the race that lost them)."""

    def __init__(self, port: int, first: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))  # the kernel's backlog accepts
        self.sock.setblocking(False)
        sent = self.sock.send(first)
        self.rest = first[sent:]
        self.tasks: list[asyncio.Future[None]] = []
        if self.rest:
            self.write(b"")

    def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        data, self.rest = self.rest + data, b""
        self.tasks.append(asyncio.ensure_future(loop.sock_sendall(self.sock, data)))

    async def write_eof(self) -> None:
        await asyncio.gather(*self.tasks)
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


async def read_all(engine: Engine, conn: int, size: int, eof: bool = False) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await engine.recv(conn, 1 << 20, 10.0)
        assert chunk, f"end of stream after {len(got)} of {size} bytes"
        got += chunk
    if eof:
        assert await engine.recv(conn, 100, 10.0) == b""
    return bytes(got)


async def wait_pending(engine: Engine, lid: int, n: int) -> None:
    for _ in range(500):
        if engine.listener_info(lid)["pending"] >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"listener {lid}: fewer than {n} pending connections")


@MODES
async def test_bytes_sent_before_accept_arrive_whole(make_engine: Any, offload: bool) -> None:
    """EARLY| before tcp.accept, LATE after: both arrive, in order (they were lost)."""
    engine = await make_engine()
    lid = await engine.listen("127.0.0.1", 0, offload)
    peer = RawPeer(engine.listener_info(lid)["port"], b"EARLY|")
    await wait_pending(engine, lid, 1)
    await asyncio.sleep(0.1)  # the bytes are read by the daemon before anyone accepts
    conn = await engine.accept(lid, 5.0)
    peer.write(b"LATE")
    assert await read_all(engine, conn, 10) == b"EARLY|LATE"
    peer.close()
    assert engine.conn_info(conn)["state"] == ("offloaded" if offload else "host")


@MODES
async def test_more_than_a_socket_buffer_before_accept(make_engine: Any, offload: bool) -> None:
    """Back-pressure holds what does not fit; nothing is dropped while nobody accepts."""
    engine = await make_engine(rx_buffer_bytes=64 * 1024)
    lid = await engine.listen("127.0.0.1", 0, offload)
    data = random.Random(1).randbytes(3 * 1024 * 1024)
    peer = RawPeer(engine.listener_info(lid)["port"], data)
    await wait_pending(engine, lid, 1)
    await asyncio.sleep(0.2)
    conn = await engine.accept(lid, 5.0)
    assert await read_all(engine, conn, len(data)) == data
    peer.close()


@MODES
async def test_data_then_fin_before_accept(make_engine: Any, offload: bool) -> None:
    engine = await make_engine()
    lid = await engine.listen("127.0.0.1", 0, offload)
    peer = RawPeer(engine.listener_info(lid)["port"], b"all I have to say")
    await peer.write_eof()
    await wait_pending(engine, lid, 1)
    await asyncio.sleep(0.1)
    conn = await engine.accept(lid, 5.0)
    assert await read_all(engine, conn, 17, eof=True) == b"all I have to say"
    peer.close()


@MODES
async def test_several_pending_connections_each_keep_their_bytes(
    make_engine: Any, offload: bool
) -> None:
    engine = await make_engine()
    lid = await engine.listen("127.0.0.1", 0, offload)
    port = engine.listener_info(lid)["port"]
    peers: list[RawPeer] = []
    by_port: dict[int, bytes] = {}
    for i in range(5):
        payload = f"peer {i}:".encode() + random.Random(i).randbytes(1000 + 5000 * i)
        peer = RawPeer(port, payload)
        peers.append(peer)
        by_port[peer.sock.getsockname()[1]] = payload
    await wait_pending(engine, lid, 5)
    await asyncio.sleep(0.1)
    for _ in peers:
        conn = await engine.accept(lid, 5.0)
        remote_port = int(engine.conn_info(conn)["remote"].rsplit(":", 1)[1])
        want = by_port.pop(remote_port)
        assert await read_all(engine, conn, len(want)) == want
    assert not by_port
    for peer in peers:
        peer.close()


async def test_bytes_arriving_during_the_initiate_are_forwarded(
    make_engine: Any, echo_port: int
) -> None:
    """The initiate is held (a `delay` fault) while the peer keeps sending: what the host reads
    meanwhile goes down by NdisOffloadTcpForward after the completion (spec §3.2.7, §4.6)."""
    engine = await make_engine()
    lid = await engine.listen("127.0.0.1", 0, False)
    peer = await dial(engine.listener_info(lid)["port"])
    conn = await engine.accept(lid, 5.0)
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportInitiateOffload", "ms": 300}
    )
    offloading = asyncio.ensure_future(engine.offload(conn))
    data = random.Random(2).randbytes(200_000)
    for i in range(0, len(data), 10_000):
        peer.transport.write(data[i : i + 10_000])
        await asyncio.sleep(0.01)
    assert (await offloading)["state"] == "offloaded"
    engine.fault_clear(fid)
    assert await read_all(engine, conn, len(data)) == data
    calls = engine.ndis.stats()["nic0"]["calls"]
    assert calls.get("NdisTcpOffloadForwardComplete/NDIS_STATUS_SUCCESS", 0) > 0, calls


async def test_bytes_arriving_during_the_terminate_are_kept(make_engine: Any) -> None:
    """The terminate is held while the peer keeps sending and nothing is read: the segments
    take the ordinary path and the host processes them after the upload (spec §3.6.4)."""
    engine = await make_engine()
    lid = await engine.listen("127.0.0.1", 0, True)
    peer = await dial(engine.listener_info(lid)["port"])
    conn = await engine.accept(lid, 5.0)
    first = random.Random(3).randbytes(50_000)
    peer.transport.write(first)
    await asyncio.sleep(0.1)
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportTerminateOffload", "ms": 300}
    )
    uploading = asyncio.ensure_future(engine.upload(conn))
    rest = random.Random(4).randbytes(150_000)
    for i in range(0, len(rest), 10_000):
        peer.transport.write(rest[i : i + 10_000])
        await asyncio.sleep(0.01)
    assert (await uploading)["state"] == "host"
    engine.fault_clear(fid)
    assert await read_all(engine, conn, len(first) + len(rest)) == first + rest


@MODES
async def test_refused_indications_wait_in_the_target(
    make_engine: Any, echo_port: int, offload: bool
) -> None:
    """Nobody reads: the host buffers up to its bound, then refuses indications (spec §4.3) and
    back-pressure holds the rest; a later upload and reads get every byte in order."""
    engine = await make_engine(rx_buffer_bytes=32 * 1024)
    conn = await engine.connect("127.0.0.1", echo_port, offload)
    data = random.Random(5).randbytes(400_000)
    sending = asyncio.ensure_future(engine.send(conn, data))
    await asyncio.sleep(0.3)  # the echo fills the host's buffer and the target's
    await engine.upload(conn)
    await engine.offload(conn)
    got = await read_all(engine, conn, len(data))
    assert await sending == len(data)
    assert got == data


@MODES
async def test_close_with_unread_data_returns_everything_it_held(
    make_engine: Any, echo_port: int, offload: bool
) -> None:
    """Bytes nobody read when the connection closes are dropped with it, and every NBL that
    held them goes back where it came from (the fixture checks every gauge is 0)."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port, offload)
    await engine.send(conn, b"x" * 100_000)
    await asyncio.sleep(0.2)
    assert engine.host.tcbs[conn].app_rx_bytes > 0
    await engine.close(conn)


@pytest.mark.parametrize("outcome", ["offloaded", "refused"])
async def test_an_offload_while_the_host_stopped_reading(make_engine: Any, outcome: str) -> None:
    """The host's buffer filled, so it stopped reading the socket (back-pressure); the
    application read part of it, not enough for the host to read again, and the connection is
    offloaded then. Whoever owns the socket after the initiate must read it again once the
    application has read the rest: the target (which held less than its own bound, so it
    never stopped reading, and never started it), or the host if the target refused. The
    reading stayed stopped for ever: the peer's sends hung at a zero window."""
    buffer = 64 * 1024
    engine = await make_engine(rx_buffer_bytes=buffer)
    lid = await engine.listen("127.0.0.1", 0, False)
    peer = await dial(engine.listener_info(lid)["port"])
    conn = await engine.accept(lid, 5.0)
    data = random.Random(5).randbytes(3 * 1024 * 1024)
    peer.transport.write(data)  # far more than the host's buffer and the sockets' together
    await asyncio.sleep(0.2)
    held = engine.conn_info(conn)["bytes_received"]
    assert held >= buffer, "the host did not fill its buffer"
    got = b""
    while len(got) < held - buffer * 3 // 4:  # 3/4 of the buffer left
        got += await engine.recv(conn, held - buffer * 3 // 4 - len(got), 10.0)
    if outcome == "refused":
        engine.fault_inject(
            {
                "kind": "fail_next",
                "layer": "nic0",
                "call": "MiniportInitiateOffload",
                "status": "NDIS_STATUS_FAILURE",
                "count": 1,
            }
        )
    result = await asyncio.gather(engine.offload(conn), return_exceptions=True)
    state = "offloaded" if outcome == "offloaded" else "host"
    assert engine.conn_info(conn)["state"] == state, result
    assert got + await read_all(engine, conn, len(data) - len(got)) == data
    peer.transport.close()
