"""A FIN_WAIT_2 timeout (spec §8) of a connection the host carries, its reading stopped under
back-pressure (`engine.rx_buffer_bytes`) with the peer's last bytes in the kernel, on real
loopback sockets. The application reads every byte, then the timeout; the RST the timeout
owes the peer must not drop what the kernel still held when the application got there.

Two reads asked at once (the engine queues both in the host's inbox): the first takes what the
host holds and lets reading resume, the second comes before the event loop has read the
socket again. The expiry itself is forced: the host's timer record says the peer was last
heard long ago and counts none of the kernel's news (a table, not a patched function), and
its expiry is posted to the host as the timer would post it."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

from chimneyd.api import EngineError
from chimneyd.drivers.fin_wait_2 import NS
from tests.integration.support import RecordingPeer, eventually

BOUND = 4096
FIRST = 8 * 1024  # what the host reads before it stops: more than BOUND
REST = 48 * 1024  # what then waits in the kernel
TCP_CLOSE = 7  # tcpi_state


async def test_two_reads_at_once_after_the_expiry_lose_no_byte_the_kernel_held(
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
    # the kernel took the rest (the peer's send queue is empty): it waits there, unread
    await eventually(lambda: peer.transport.get_write_buffer_size() == 0, "the rest sent")
    timer = host.fin_wait_2[conn]
    timer.heard_ns = engine.ndis.clock() - 1000 * NS
    timer.since_ns = 1 << 62  # none of the kernel's news counts
    host.inbox.push(host.fin_wait_2_expired, (tcb,))
    await eventually(lambda: tcb.reset, "the timeout")
    got = bytearray()
    error: BaseException | None = None
    for _ in range(64):
        first = engine.start_recv(conn, 1 << 16, 5.0)
        second = engine.start_recv(conn, 1 << 16, 5.0)
        for result in await asyncio.gather(first, second, return_exceptions=True):
            if isinstance(result, BaseException):
                error = error or result
            else:
                assert error is None, "bytes after the timeout"
                assert result, "an end of stream the peer never sent"
                got += result
        if error is not None:
            break
    assert isinstance(error, EngineError) and "timed out" in str(error), error
    assert (len(got), bytes(got) == data) == (len(data), True), "bytes lost or changed"
    # the peer got the RST: its socket (in CLOSE_WAIT, not reading after our FIN) is closed
    sock = peer.transport.get_extra_info("socket")
    await eventually(lambda: _tcp_state(sock) == TCP_CLOSE, "the RST at the peer")
    await asyncio.wait_for(engine.close(conn), 5.0)


def _tcp_state(sock: Any) -> int:
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0])
