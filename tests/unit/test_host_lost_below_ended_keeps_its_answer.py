"""A connection whose byte stream had already ended when a layer below left it out of its
terminate completion (lost below, spec §6.3 [EMU], docs/spec.md) keeps the answer of how it
ended: it lost nothing more below.

- Reset by the peer first: its read, waiting for the upload that was to hand back what the
  NIC still held (docs/rpc.md `tcp.recv`), is answered the reset (`REQUEST_ABORTED`), as are
  later reads, not "lost below": the RST ended the stream, and what a receiver had not read
  when it came is not owed to it (TCP's reset). No second `TcpIndicateAbort`, no RST of the
  host's own.
- In TIME_WAIT (both FINs through): the target raised `TcpIndicateDisconnect` only once the
  host had every byte before the peer's FIN (spec §6.2), so nothing was held below: reads
  answer end of stream, and it is only taken back (no RST, no `TcpIndicateAbort`; docs/rpc.md
  `events.subscribe`).

Pinned as right: the host sets the "lost below" reason only for a connection still open both
ways or half-closed (`terminate.lost_below`)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.testing.hostrig import HostRig, Reply
from chimneyd.testing.memwire import MemoryWire
from tests.unit.test_host_completion_lost_below import _aborts, _drop
from tests.unit.test_host_let_go_completions import _drained, _offloaded

ABORTED = "NDIS_STATUS: NDIS_STATUS_REQUEST_ABORTED (0xC023000C) connection reset"


def _lose_in_its_upload(rig: HostRig, conn: int, read: Reply | None = None) -> None:
    """Run until the completion of the connection's terminate (the host's own upload of it)
    is next, leave its block out, and let it go up; `read` is still waiting then."""
    host, queue = rig.host, rig.scheduler.queue
    while True:
        host.after_batch()  # where the host sends its terminates
        if queue and getattr(queue[0][1], "__name__", "") == "ProtocolTerminateOffloadComplete":
            break
        rig.scheduler.run_one()
    assert read is None or not read.done, read
    held = queue.popleft()
    _drop(rig, held[2][1], host.tcbs[conn].handle)
    queue.appendleft(held)
    with pytest.raises(SettledThenRaised) as raised:
        rig.run()
    assert raised.value.lost_below == frozenset({conn}), raised.value
    rig.run()


def _setup() -> tuple[HostRig, int, MemoryWire]:
    rig = HostRig()
    (conn,) = _offloaded(rig, 1)
    wire = rig.host.tcbs[conn].wire
    assert isinstance(wire, MemoryWire)
    return rig, conn, wire


def test_a_reset_connection_lost_below_answers_its_read_with_the_reset() -> None:
    rig, conn, wire = _setup()
    host = rig.host
    read = Reply()
    host.app_recv(conn, 10, False, read)
    rig.run()
    wire.peer_reset()  # the target indicates the abort; the host uploads it
    _lose_in_its_upload(rig, conn, read)
    assert read.done and read.error is not None, read
    assert str(read.error) == ABORTED, read
    later = rig.call(host.app_recv, conn, 10, False)
    assert str(later.error) == ABORTED, later
    assert host.tcbs[conn].end_reason is None  # not "lost below"
    assert _aborts(rig, conn) == [{}], rig.events  # the peer's, offloaded; none "lost"
    assert not wire.reset_sent  # the peer's RST ended it: none of the host's
    _drained(rig, [conn])


def test_a_connection_in_time_wait_lost_below_reads_end_of_stream() -> None:
    rig, conn, wire = _setup()
    host = rig.host
    assert rig.call(host.app_disconnect, conn, False).value == "NDIS_STATUS_SUCCESS"
    wire.peer_send(b"last")
    wire.peer_fin()  # TIME_WAIT: the target asks for the upload
    _lose_in_its_upload(rig, conn)
    tcb = host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.TIME_WAIT and not tcb.reset
    assert rig.call(host.app_recv, conn, 10, False).value == b"last"
    for _ in range(2):
        assert rig.call(host.app_recv, conn, 10, False).value == b""
    assert tcb.end_reason is None
    assert _aborts(rig, conn) == [], rig.events
    assert not wire.reset_sent
    _drained(rig, [conn])
