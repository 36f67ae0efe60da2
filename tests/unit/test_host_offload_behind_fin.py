"""An offload asked while the host's own FIN waits for its ACK waits for that ACK (the host
never offloads a connection mid-close, `offload.request`); the connection stays the host's
meanwhile, so nothing else the application asks waits behind it. Offloaded, an abortive
disconnect, a send after the FIN or a second disconnect is answered at once (the target
holds nothing back for a graceful disconnect, spec §4.5); in the host stack too
(tests/e2e/test_parity.py compares the two over RPC). Over the real target on a MemoryWire
with a manual clock, where nothing is acknowledged until the test says so."""

from __future__ import annotations

from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import HostRig, Reply

ABORTED = S.NDIS_STATUS_REQUEST_ABORTED


def _fin_waiting_with_offload_held() -> tuple[HostRig, int, Reply, Reply, Reply]:
    """A connection in the host with a send unacknowledged, a graceful disconnect waiting for
    the ACK of its FIN, and an offload held behind it."""
    rig = HostRig()
    conn, wire = rig.open()
    sending = rig.call(rig.host.app_send, conn, b"s" * 5000)
    graceful = rig.call(rig.host.app_disconnect, conn, False)
    offloading = rig.call(rig.host.app_offload, conn, None)
    assert not sending.done and not graceful.done and not offloading.done
    assert wire.eof_written
    return rig, conn, sending, graceful, offloading


def test_an_abortive_disconnect_does_not_wait_behind_an_offload_held_for_the_fin() -> None:
    rig, conn, sending, graceful, offloading = _fin_waiting_with_offload_held()
    abortive = rig.call(rig.host.app_disconnect, conn, True)
    assert abortive.value == "NDIS_STATUS_SUCCESS", abortive
    assert sending.error is not None and ABORTED.name in sending.error.detail, sending
    assert graceful.value == ABORTED.name, graceful
    # the held offload is answered too: a reset connection is not offloaded (rpc.md tcp.offload)
    assert offloading.error is not None and offloading.error.symbol == "INVALID_STATE"
    assert rig.host.tcbs[conn].state == "host" and not rig.host.pending_initiates
    assert rig.call(rig.host.app_close, conn).value is True
    assert rig.problems() == []


def test_a_send_and_a_second_disconnect_after_the_fin_do_not_wait_behind_the_offload() -> None:
    rig, conn, sending, graceful, offloading = _fin_waiting_with_offload_held()
    late = rig.call(rig.host.app_send, conn, b"x")
    assert late.error is not None and late.error.symbol == "INVALID_STATE", late
    again = rig.call(rig.host.app_disconnect, conn, False)
    assert again.error is not None and again.error.symbol == "INVALID_STATE", again
    assert not graceful.done and not offloading.done
    wire = next(iter(rig.wires))
    wire.ack()  # the peer acknowledges every byte and the FIN
    rig.run()
    assert sending.value == 5000 and graceful.value == "NDIS_STATUS_SUCCESS"
    # the offload went on once the FIN was acknowledged
    assert offloading.done, offloading
    assert rig.call(rig.host.app_close, conn).value is True
    assert rig.problems() == []


def test_a_close_answers_the_offload_held_for_the_fin() -> None:
    """`tcp.close` ends the wait for the FIN's ACK too: the held offload is refused (the
    connection is closed), the graceful disconnect and the send fail, each answered once."""
    rig, conn, sending, graceful, offloading = _fin_waiting_with_offload_held()
    assert rig.call(rig.host.app_close, conn).value is True
    assert sending.error is not None and ABORTED.name in sending.error.detail, sending
    assert graceful.value == ABORTED.name, graceful
    assert offloading.error is not None and offloading.error.symbol == "INVALID_STATE"
    assert conn not in rig.host.tcbs and not rig.host.pending_initiates
    assert rig.problems() == []
