"""A peer's RST on an offloaded connection while bytes it sent before wait at the target, not
yet delivered: the application reads them first, then the abort (rpc-contract / docs/rpc.md:
"its reads return the bytes the peer sent before its RST, then NDIS_STATUS_REQUEST_ABORTED").

The target keeps the peer's bytes when the host refuses their indication: because the read's
receive request is on its way down (spec §4.4: they belong in that request), or because they
are past the host's buffer (spec §4.3). The RST then aborts the connection at the target (spec
§5.1); the bytes come back to the host only as `BufferedData` at the terminate the host
answers the abort with (spec §3.6.3). Found by chimney-soak (`peer_reset` with delay faults on
a teaming MUX: 64 KiB the peer had echoed before its RST never read). The make_engine fixture
checks the spec §9 invariants and that every table drains."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from chimneyd.engine import Engine
from tests.integration.support import eventually, topology

#: long enough that only `fault.clear` lets the held call go (docs/faults.md `delay`)
HELD_MS = 60000

Events = list[tuple[str, dict[str, Any]]]


@asynccontextmanager
async def _offloaded(engine: Engine) -> AsyncIterator[tuple[int, socket.socket, Events]]:
    """An offloaded connection to a listening socket of ours: its id, the peer's socket and
    the connection's events as they come."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    peer: socket.socket | None = None
    try:
        conn = await engine.connect("127.0.0.1", lsock.getsockname()[1], offload=True)
        peer, _ = lsock.accept()
        assert engine.conn_info(conn)["state"] == "offloaded"
        events: Events = []
        engine.subscribe(conn, lambda _c, ev, info: events.append((ev, info)))
        yield conn, peer, events
    finally:
        if peer is not None:
            peer.close()  # a second close of a socket is nothing
        lsock.close()


async def _reset(peer: socket.socket, events: Events) -> None:
    """The peer resets the connection (SO_LINGER {1, 0}); the target indicates the abort."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    await eventually(
        lambda: any(ev == "TcpIndicateAbort" for ev, _ in events), "the target's abort"
    )


async def _reset_past_the_hosts_buffer(
    engine: Engine, conn: int, peer: socket.socket, events: Events
) -> tuple[bytes, int]:
    """10 KiB from the peer, past the host's 4 KiB buffer (`rx_buffer_bytes`): the host takes
    what fits and refuses the rest of the indication (spec §4.3), which the target keeps. The
    host's terminate is held at the NIC, and the peer resets. Returns the bytes and the held
    fault's id."""
    wire = engine.sockets.wire_of(conn)
    data = bytes(range(256)) * 40
    peer.sendall(data)
    await eventually(lambda: wire.bytes_read == len(data), "the target read the bytes")
    held = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportTerminateOffload", "ms": HELD_MS}
    )
    await _reset(peer, events)
    return data, held


@pytest.mark.asyncio
async def test_bytes_the_target_held_at_the_peers_rst_are_read_before_the_abort(
    make_engine: Callable[..., Any],
) -> None:
    """The read's receive request is held on its way down (a `delay` fault on the IM's
    `MiniportTcpOffloadReceive`), so the host, whose request is posted, refuses the target's
    indication of the peer's bytes; the abort fails the request when it arrives."""
    engine: Engine = await make_engine(topology(1))
    async with _offloaded(engine) as (conn, peer, events):
        held = engine.fault_inject(
            {"kind": "delay", "layer": "im0", "call": "MiniportTcpOffloadReceive", "ms": HELD_MS}
        )
        reading = engine.start_recv(conn, 1 << 16, 30.0)
        wire = engine.sockets.wire_of(conn)
        data = b"sent before the reset" * 100
        peer.sendall(data)
        await eventually(lambda: wire.bytes_read == len(data), "the target read the bytes")
        await _reset(peer, events)
        engine.fault_clear(held)  # the request reaches the target, which fails it
        got = b""
        while len(got) < len(data):
            chunk = await asyncio.wait_for(reading, 30.0)
            got += chunk
            reading = engine.start_recv(conn, 1 << 16, 30.0)
        assert got == data, events
        with pytest.raises(Exception, match="REQUEST_ABORTED"):
            await asyncio.wait_for(reading, 30.0)
        await eventually(lambda: engine.conn_info(conn)["state"] == "host", "the upload")
        aborts = [info for ev, info in events if ev == "TcpIndicateAbort"]
        assert len(aborts) == 1, events


@pytest.mark.asyncio
async def test_bytes_past_the_hosts_buffer_at_the_peers_rst_are_read_before_the_abort(
    make_engine: Callable[..., Any],
) -> None:
    """No read waits at the reset. The application reads what the host held, then waits for
    what the target held (handed back at the terminate), then reads the abort."""
    engine: Engine = await make_engine(topology(1), rx_buffer_bytes=4096)
    async with _offloaded(engine) as (conn, peer, events):
        data, held = await _reset_past_the_hosts_buffer(engine, conn, peer, events)
        got = await engine.recv(conn, 1 << 16, 30.0)  # what the host held
        assert 0 < len(got) < len(data)
        reading = engine.start_recv(conn, 1 << 16, 30.0)  # the target's bytes, not the abort
        engine.fault_clear(held)  # the terminate goes down and hands them back
        while len(got) < len(data):
            got += await asyncio.wait_for(reading, 30.0)
            reading = engine.start_recv(conn, 1 << 16, 30.0)
        assert got == data, events
        with pytest.raises(Exception, match="REQUEST_ABORTED"):
            await asyncio.wait_for(reading, 30.0)
        aborts = [info for ev, info in events if ev == "TcpIndicateAbort"]
        assert len(aborts) == 1, events


@pytest.mark.asyncio
async def test_a_waitall_read_of_a_reset_connection_waits_for_the_bytes_the_target_held(
    make_engine: Callable[..., Any],
) -> None:
    """A `waitall` read is not at the end of its stream while the target still holds bytes
    for it: it waits for them (docs/rpc.md `tcp.recv`: exactly `max_bytes`, fewer only at the
    end of stream); the abort comes after them."""
    engine: Engine = await make_engine(topology(1), rx_buffer_bytes=4096)
    async with _offloaded(engine) as (conn, peer, events):
        data, held = await _reset_past_the_hosts_buffer(engine, conn, peer, events)
        # the host holds 4 KiB, the target the other 6 KiB, which its terminate hands back
        reading = engine.start_recv(conn, len(data), 30.0, True)
        engine.fault_clear(held)
        got = await asyncio.wait_for(reading, 30.0)
        assert got == data, (len(got), events)
        with pytest.raises(Exception, match="REQUEST_ABORTED"):
            await engine.recv(conn, 1 << 16, 30.0)
        assert engine.conn_info(conn)["state"] == "host"
