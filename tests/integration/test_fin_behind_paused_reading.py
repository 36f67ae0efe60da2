"""The peer's bytes beyond what the offload target holds (`engine.rx_buffer_bytes`), then its
FIN: the target stops reading at its bound with the FIN still in the kernel, reads again as
the application takes the bytes, and the application gets every byte, then the end of the
stream (spec §4.4 delivery, §5.1 the peer's FIN), through the real host stack. `pump` flow-
controls only while reading is paused or at the bound, and checks the FIN only once one came."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from chimneyd.drivers.target.contexts import TcpContext
from chimneyd.drivers.target.target import OffloadTarget
from tests.integration.support import RecordingPeer

BOUND = 4096
SENT = 64 * 1024


async def test_every_byte_then_the_end_after_reading_paused_with_the_fin_behind(
    make_engine: Any, recording: tuple[int, list[RecordingPeer]]
) -> None:
    port, peers = recording
    engine = await make_engine(rx_buffer_bytes=BOUND)
    nic = engine.layers["nic0"]
    assert isinstance(nic, OffloadTarget)
    conn = await engine.connect("127.0.0.1", port)
    if engine.conn_info(conn)["state"] != "offloaded":
        assert (await engine.offload(conn))["state"] == "offloaded"
    (ctx,) = [c for c in nic.table if isinstance(c, TcpContext)]
    (peer,) = peers
    data = random.Random(5).randbytes(SENT)
    peer.transport.write(data)
    peer.transport.write_eof()
    got = bytearray()
    paused_seen = False
    while True:
        chunk = bytes(await engine.recv(conn, 1024, 10.0))
        paused_seen = paused_seen or ctx.paused
        if not chunk:
            break
        got += chunk
        assert len(got) <= SENT
    assert bytes(got) == data
    # the target did hold back at its bound on the way (else this tested no pause)
    assert paused_seen, engine.conn_info(conn)
    await asyncio.wait_for(engine.close(conn), 10.0)
