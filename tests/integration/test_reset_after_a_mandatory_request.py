"""A peer's RST that reaches an offloaded connection after the target asked for a mandatory
upload (spec §5.2), seen through the whole stack (host → IM → NIC) on loopback sockets: the
target has stopped processing the connection, so the RST is not processed there but goes up
with what the target held, and the host, which then carries the connection, hands the
application every byte the peer sent before it, in order, and then the abort, once.

The terminate is held at the NIC (a `delay` fault) so that the RST arrives between the
request and the terminate; the make_engine fixture checks the spec §9 invariants and that
every table drains."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from chimneyd.engine import Engine
from chimneyd.runtime import topology as topology_module
from tests.integration.support import eventually, topology
from tests.integration.test_urgent_data import UrgentIm
from tests.integration.test_waiting_bytes import dial


def _reset(peer: socket.socket) -> None:
    """The peer closes with RST (SO_LINGER {1, 0})."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


@pytest.mark.asyncio
async def test_the_application_reads_the_held_bytes_and_then_the_abort_once(
    make_engine: Callable[..., Any],
) -> None:
    """A read waits at the target; the target asks for a mandatory upload (`retrieve`
    `UploadRequested`), the host's terminate is held at the NIC; the peer sends, and the
    target holds those bytes (it processes the connection no more); then the peer resets.
    The application's read gets the bytes, the next read the abort; one `TcpIndicateAbort`."""
    engine: Engine = await make_engine()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    peer = None
    try:
        conn = await engine.connect("127.0.0.1", lsock.getsockname()[1], offload=True)
        peer, _ = lsock.accept()
        assert engine.conn_info(conn)["state"] != "host"
        events: list[tuple[str, dict[str, Any]]] = []
        engine.subscribe(conn, lambda _c, ev, info: events.append((ev, info)))
        reading = engine.start_recv(conn, 1 << 16, 10.0)
        await asyncio.sleep(0.05)  # the read is posted at the target
        engine.fault_inject(
            {"kind": "delay", "layer": "nic0", "call": "MiniportTerminateOffload", "ms": 1500}
        )
        engine.fault_inject({"kind": "retrieve", "conn": conn, "reason": "UploadRequested"})
        await eventually(
            lambda: any(ev == "TcpIndicateRetrieve" for ev, _ in events), "the retrieve"
        )
        wire = engine.sockets.wire_of(conn)
        peer.sendall(b"before the reset")
        await eventually(lambda: wire.bytes_read == 16, "the target read the peer's bytes")
        _reset(peer)
        peer = None
        await eventually(lambda: wire.closed, "the socket's reset seen")
        first = await asyncio.wait_for(reading, 10.0)
        assert first == b"before the reset", events
        with pytest.raises(Exception, match="REQUEST_ABORTED"):
            await engine.recv(conn, 100, 10.0)
        await eventually(lambda: engine.conn_info(conn)["state"] == "host", "the upload")
        aborts = [info for ev, info in events if ev == "TcpIndicateAbort"]
        assert len(aborts) == 1, events
    finally:
        if peer is not None:
            peer.close()
        lsock.close()


@pytest.mark.asyncio
async def test_after_forwarded_urgent_data_the_application_reads_every_byte_then_the_abort(
    make_engine: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The initiate is held while the peer sends, so the host forwards what it read meanwhile;
    an IM marks the first of those segments urgent: the target asks for the upload
    (ReceivedUrgentData) and holds them (spec §5.2). The terminate is held at the NIC; a read
    waits; the peer resets. The application reads every byte the peer sent, once, in order,
    and then the abort, indicated once."""
    monkeypatch.setattr(topology_module, "PassthroughIm", UrgentIm)
    monkeypatch.setattr(UrgentIm, "marked", 0)
    engine: Engine = await make_engine(topology(1))
    events: list[tuple[str, dict[str, Any]]] = []
    lid = await engine.listen("127.0.0.1", 0, False)
    peer = await dial(engine.listener_info(lid)["port"])
    conn = await engine.accept(lid, 5.0)
    engine.subscribe(conn, lambda _c, ev, info: events.append((ev, info)))
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportInitiateOffload", "ms": 300}
    )
    engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportTerminateOffload", "ms": 1500}
    )
    offloading = asyncio.ensure_future(engine.offload(conn))
    await eventually(
        lambda: engine.conn_info(conn)["phases"]["tcpip"] == "OFFLOADING", "the initiate sent"
    )
    data = bytes(range(256)) * 40
    peer.transport.write(data)
    wire = engine.sockets.wire_of(conn)
    await eventually(lambda: wire.bytes_read == len(data), "the host read the peer's bytes")
    await offloading
    engine.fault_clear(fid)
    await eventually(
        lambda: any(ev == "TcpIndicateRetrieve" for ev, _ in events), "the urgent data's request"
    )
    assert UrgentIm.marked == 1
    reading = engine.start_recv(conn, len(data), 10.0, waitall=True)
    await asyncio.sleep(0.05)  # the read is posted at the target
    sock = peer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.transport.abort()
    await eventually(lambda: wire.closed, "the socket's reset seen")
    assert await asyncio.wait_for(reading, 10.0) == data
    with pytest.raises(Exception, match="REQUEST_ABORTED"):
        await engine.recv(conn, 100, 10.0)
    await eventually(lambda: engine.conn_info(conn)["state"] == "host", "the upload")
    assert (
        "TcpIndicateRetrieve",
        {"reason": "ReceivedUrgentData", "mandatory": True, "honored": True},
    ) in events
    aborts = [info for ev, info in events if ev == "TcpIndicateAbort"]
    assert len(aborts) == 1, events
