"""A `waitall` read of an offloaded connection the peer reset while the target still held
bytes the peer sent before its RST (the host's buffer was full: it refused the rest of the
indication, spec §4.3): those bytes come back as `BufferedData` at the terminate the host
answers the abort with (spec §3.6.3), so the read is not at the end of its stream yet and
waits for them (docs/rpc.md `tcp.recv`: `waitall` reads exactly `max_bytes`, fewer only at the
end of stream); the abort comes after them. The make_engine fixture checks the spec §9
invariants and that every table drains."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from chimneyd.engine import Engine
from tests.integration.support import eventually, topology

#: long enough that only `fault.clear` lets the held terminate go (docs/faults.md `delay`)
HELD_MS = 60000


@pytest.mark.asyncio
async def test_a_waitall_read_of_a_reset_connection_waits_for_the_bytes_the_target_held(
    make_engine: Callable[..., Any],
) -> None:
    engine: Engine = await make_engine(topology(1), rx_buffer_bytes=4096)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    peer: socket.socket | None = None
    try:
        conn = await engine.connect("127.0.0.1", lsock.getsockname()[1], offload=True)
        peer, _ = lsock.accept()
        assert engine.conn_info(conn)["state"] == "offloaded"
        events: list[tuple[str, dict[str, Any]]] = []
        engine.subscribe(conn, lambda _c, ev, info: events.append((ev, info)))
        wire = engine.sockets.wire_of(conn)
        data = bytes(range(256)) * 40  # 10 KiB: past the host's 4 KiB
        peer.sendall(data)
        await eventually(lambda: wire.bytes_read == len(data), "the target read the bytes")
        held = engine.fault_inject(
            {"kind": "delay", "layer": "nic0", "call": "MiniportTerminateOffload", "ms": HELD_MS}
        )
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        peer = None
        await eventually(
            lambda: any(ev == "TcpIndicateAbort" for ev, _ in events), "the target's abort"
        )
        # the host holds 4 KiB, the target the other 6 KiB, which its terminate hands back
        reading = engine.start_recv(conn, len(data), 30.0, True)
        engine.fault_clear(held)
        got = await asyncio.wait_for(reading, 30.0)
        assert got == data, (len(got), events)
        with pytest.raises(Exception, match="REQUEST_ABORTED"):
            await engine.recv(conn, 1 << 16, 30.0)
        assert engine.conn_info(conn)["state"] == "host"
    finally:
        if peer is not None:
            peer.close()
        lsock.close()
