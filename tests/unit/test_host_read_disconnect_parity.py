"""What an application sees of a read or a disconnect is the same whether the host carries the
connection or a NIC does (tests/e2e/test_parity.py compares the two over RPC): the host's side of
it, over the real target on a MemoryWire with a manual clock, where the moment each thing
happens is the test's to choose."""

from __future__ import annotations

from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import HostRig, Reply

ABORTED = S.NDIS_STATUS_REQUEST_ABORTED


def test_a_timed_out_waitall_read_leaves_the_bytes_it_saw_to_the_next_read() -> None:
    """rpc-contract `tcp.recv`: no data is lost by a timeout. Offloaded, the bytes a waitall
    read saw arrive must not stay in a receive request the host cannot take back (spec §4.2)."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    waitall = Reply()
    rig.host.app_recv(conn, 100, True, waitall)
    rig.run()
    wire.peer_send(b"0123456789")
    rig.run()
    assert not waitall.done  # 10 of 100 bytes
    assert rig.call(rig.host.app_cancel_recv, conn, waitall).done  # its time ran out
    assert waitall.error is not None and waitall.error.symbol == "TIMEOUT"
    assert rig.call(rig.host.app_recv, conn, 100, False).value == b"0123456789"
    wire.peer_send(b"more")
    rig.run()
    assert rig.call(rig.host.app_recv, conn, 100, False).value == b"more"
    assert rig.host.tcbs[conn].state == "offloaded" and rig.problems() == []


def test_a_waitall_read_is_answered_only_when_whole() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    waitall = Reply()
    rig.host.app_recv(conn, 10, True, waitall)
    rig.run()
    for part in (b"abc", b"defg"):
        wire.peer_send(part)
        rig.run()
        assert not waitall.done
    wire.peer_send(b"hijkl")
    rig.run()
    assert waitall.value == b"abcdefghij"
    assert rig.call(rig.host.app_recv, conn, 10, False).value == b"kl"
    assert rig.problems() == []


def test_an_abortive_disconnect_answers_the_graceful_one_before_it_in_the_host() -> None:
    """The host's FIN waits for an ACK that an RST makes impossible: the graceful disconnect
    fails as an offloaded one does when the target aborts it (spec §4.5, §5.1)."""
    rig = HostRig()
    conn, wire = rig.open()
    graceful = rig.call(rig.host.app_disconnect, conn, False)
    assert not graceful.done  # no ACK for the FIN yet
    abortive = rig.call(rig.host.app_disconnect, conn, True)
    assert abortive.value == "NDIS_STATUS_SUCCESS" and wire.closed
    assert graceful.value == ABORTED.name
    assert rig.call(rig.host.app_close, conn).value is True
    assert rig.problems() == []


def test_bytes_in_a_posted_request_come_before_the_peer_resets_error() -> None:
    """The target may indicate the abort before it fails the posted receives, which carry the
    bytes placed before the RST (spec §4.2, §5.1): the waiting read gets those bytes first and
    only the next one the error, as in the host stack. The bytes sit in a push-mode request
    whose push timer runs: `BufferedData` handed down at the offload carries no PSH."""
    rig = HostRig()
    conn, wire = rig.open()
    waitall = Reply()
    rig.host.app_recv(conn, 10, True, waitall)
    rig.run()
    wire.peer_send(b"abc")  # read by the host: handed down at the offload
    rig.run()
    rig.offload(conn)
    tcb = rig.host.tcbs[conn]
    assert tcb.posted is not None and tcb.app_rx_bytes == 0 and not waitall.done
    wire.peer_reset()
    rig.run()
    assert waitall.value == b"abc", waitall
    after = rig.call(rig.host.app_recv, conn, 10, False)
    assert after.error is not None and ABORTED.name in after.error.detail
    assert rig.event_names(conn).count("TcpIndicateAbort") == 1


def test_a_waitall_read_larger_than_the_buffer_reads_the_socket_again_in_the_host() -> None:
    """The host stops reading the socket once it holds `rx_buffer_bytes`; a waitall read that
    wants more (docs/rpc.md allows 8 MiB) must have it read again, or both wait for ever."""
    rig = HostRig(host_options={"rx_buffer_bytes": 1000})
    conn, wire = rig.open()
    wire.peer_send(b"a" * 1500)
    rig.run()
    assert rig.host.tcbs[conn].read_paused  # held the buffer's worth: back-pressure
    wire.peer_send(b"b" * 1500)  # waits in the kernel
    rig.run()
    waitall = rig.call(rig.host.app_recv, conn, 3000, True)
    assert waitall.value == b"a" * 1500 + b"b" * 1500, waitall
    wire.peer_send(b"c" * 1200)
    rig.run()
    assert rig.host.tcbs[conn].read_paused  # a plain buffer again
    assert rig.call(rig.host.app_recv, conn, 2000, False).value == b"c" * 1200
    assert rig.problems() == []
