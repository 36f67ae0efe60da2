"""An abortive `tcp.disconnect` of a connection the host timed out in FIN_WAIT_2 (spec §8) with
its RST owed — reading stopped under back-pressure, the peer's last bytes in the kernel — on
real loopback sockets. The application reads nothing more after it: the RST goes at once,
dropping those bytes (spec §4.5), and the disconnect is answered as on any dead connection,
`NDIS_STATUS_REQUEST_ABORTED`. Before, the peer heard nothing until `tcp.close`.

The expiry is forced as in `test_fin_wait_2_rst_owed`: the host's timer record says the peer
was last heard long ago (a table, not a patched function), its expiry posted as the timer
would post it."""

from __future__ import annotations

import random
from typing import Any

from chimneyd.drivers.fin_wait_2 import NS
from tests.integration.support import RecordingPeer, eventually
from tests.integration.test_fin_wait_2_rst_owed import BOUND, FIRST, REST, TCP_CLOSE, _tcp_state


async def test_an_abortive_disconnect_after_the_expiry_sends_the_owed_rst_at_once(
    make_engine: Any, recording: tuple[int, list[RecordingPeer]]
) -> None:
    port, peers = recording
    engine = await make_engine(rx_buffer_bytes=BOUND)
    conn = await engine.connect("127.0.0.1", port, offload=False)
    await eventually(lambda: len(peers) == 1, "the peer accepted")
    (peer,) = peers
    host = engine.host
    assert await engine.disconnect(conn, False) == "NDIS_STATUS_SUCCESS"
    await eventually(lambda: conn in host.fin_wait_2, "the host's FIN_WAIT_2 timer")
    tcb = host.tcbs[conn]
    data = random.Random(7).randbytes(FIRST + REST)
    peer.transport.write(data[:FIRST])
    await eventually(lambda: tcb.read_paused, "reading stopped under back-pressure")
    peer.transport.write(data[FIRST:])
    await eventually(lambda: peer.transport.get_write_buffer_size() == 0, "the rest sent")
    timer = host.fin_wait_2[conn]
    timer.heard_ns = engine.ndis.clock() - 1000 * NS
    timer.since_ns = 1 << 62  # none of the kernel's news counts
    host.inbox.push(host.fin_wait_2_expired, (tcb,))
    await eventually(lambda: tcb.reset, "the timeout")
    sock = peer.transport.get_extra_info("socket")
    assert _tcp_state(sock) != TCP_CLOSE, "the RST went before it was owed"
    assert await engine.disconnect(conn, True) == "NDIS_STATUS_REQUEST_ABORTED"
    # the peer got the RST: its socket (in CLOSE_WAIT, not reading after our FIN) is closed
    await eventually(lambda: _tcp_state(sock) == TCP_CLOSE, "the RST at the peer")
    assert engine.conn_info(conn)["state"] != "closed"  # not closed by it: tcp.close still to come
