"""A connection a layer below leaves out of a terminate or initiate completion is lost below
(spec §6.3 [EMU]): the host resets it. What the host itself handed down and gets back in the
block it built (the layer put a let-go handle on it, `_drop`) is still the host's: the send
NBLs fail with the reset, so that their `tcp.send` is answered by the host and its
`outstanding_nbls` drains, and the bytes the application had not read when an initiate took
them down stay readable before the reset's error (spec §3.2.3, §3.2.4: a refused block comes
back untouched).

Before, the host ignored that block: the sends were never answered by the host (only failed
by the engine, which a rig without one does not do), `tcpip.outstanding_nbls` stayed 1 after
every close, and the application's unread bytes were gone."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from chimneyd.testing.memwire import MemoryWire
from tests.unit.test_host_completion_lost_below import _aborts, _drop
from tests.unit.test_host_let_go_completions import _drained, _offloaded


def test_the_sends_below_of_a_connection_lost_at_its_terminate_fail_with_the_reset() -> None:
    rig = HostRig()
    host = rig.host
    (conn,) = _offloaded(rig, 1)
    wire = host.tcbs[conn].wire
    wire.auto_ack = False  # the send stays below, unacknowledged
    sent = Reply()
    host.app_send(conn, b"hello", sent)
    rig.run()
    assert not sent.done and wire.bytes_written == 5
    upload = Reply()
    host.app_upload(conn, upload)
    held = rig.hold_below("ProtocolTerminateOffloadComplete")
    _drop(rig, held[2][1], host.tcbs[conn].handle)
    with pytest.raises(SettledThenRaised, match="no block of it"):
        rig.release(held)
    rig.run()
    assert upload.done and upload.error is None, upload
    assert host.tcbs[conn].reset and wire.reset_sent
    assert sent.done and sent.error is not None, sent
    assert "NDIS_STATUS_REQUEST_ABORTED" in str(sent.error) and "lost below" in str(sent.error)
    _drained(rig, [conn])


def test_a_connection_lost_at_a_refused_initiate_keeps_what_it_held() -> None:
    rig = HostRig()
    host = rig.host
    conn, wire = rig.open(remote=("127.0.0.1", 80))
    wire.auto_ack = False  # its send is outstanding when it goes down
    wire.peer_send(b"abcdef")  # received, not read by the application
    rig.run()
    sent = Reply()
    host.app_send(conn, b"hello", sent)
    rig.run()
    assert host.tcbs[conn].app_rx_bytes == 6 and not sent.done
    offload = Reply()
    host.app_offload(conn, None, offload)
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    held = rig.hold_below("ProtocolInitiateOffloadComplete")
    _drop(rig, held[2][1], host.tcbs[conn].handle)
    with pytest.raises(SettledThenRaised, match="without the blocks of connections"):
        rig.release(held)
    rig.run()
    assert offload.done and offload.error is not None, offload
    assert host.tcbs[conn].reset and wire.reset_sent
    assert _aborts(rig, conn) == [{"path": "lost"}], rig.events
    assert sent.done and sent.error is not None, sent
    assert "NDIS_STATUS_REQUEST_ABORTED" in str(sent.error)
    # the bytes it held first (spec §5.1: nothing before the reset is lost), then the reset
    read = rig.call(host.app_recv, conn, 10, False)
    assert read.done and read.error is None and read.value == b"abcdef", read
    read = rig.call(host.app_recv, conn, 10, False)
    assert read.done and read.error is not None and "lost below" in str(read.error), read
    _drained(rig, [conn])


def test_a_connection_lost_at_its_terminate_in_time_wait_is_only_taken_back() -> None:
    """Both FINs were through (TIME_WAIT, the target's request, spec §5.2): nothing of its
    byte stream is left to lose, so the host takes it back as it is, with no RST to the peer
    and no abort to the application (spec §6.3 [EMU]); the bytes it held are read, then the
    end of the stream, and it closes and drains."""
    rig = HostRig()
    host = rig.host
    (conn,) = _offloaded(rig, 1)
    tcb = host.tcbs[conn]
    wire = tcb.wire
    assert isinstance(wire, MemoryWire)
    wire.peer_send(b"abc")
    rig.run()
    wire.auto_ack = False
    rig.half_close(conn, wire)
    wire.peer_fin()
    while rig.scheduler.queue:  # the FIN, then the target asks for the upload (TIME_WAIT)
        rig.scheduler.run_one()
    held = rig.hold_below("ProtocolTerminateOffloadComplete")
    assert tcb.lifecycle.tcp is TcpState.TIME_WAIT
    _drop(rig, held[2][1], tcb.handle)
    with pytest.raises(SettledThenRaised, match="no block of it"):
        rig.release(held)
    rig.run()
    assert tcb.state == "host" and not tcb.reset and not wire.reset_sent
    assert _aborts(rig, conn) == [], rig.events
    read = rig.call(host.app_recv, conn, 10, False)
    assert read.done and read.value == b"abc", read
    read = rig.call(host.app_recv, conn, 10, False)
    assert read.done and read.value == b"", read
    _drained(rig, [conn])
