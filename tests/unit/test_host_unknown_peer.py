"""A connection the peer reset before the daemon accepted it has no known peer address (the
kernel's getpeername fails: `WireSocket` names it the unspecified address, port 0). The NIC finds
a connection's socket by its 4-tuple at initiate (spec §3.2.3), and every such connection on one
listener has the same one: the host does not offload it, so no NIC can carry it over another's
socket; it stays the host's, and its reset reaches its own reads."""

from __future__ import annotations

from chimneyd.testing.hostrig import HostRig


def test_a_connection_whose_peer_is_unknown_is_not_offloaded() -> None:
    rig = HostRig()
    conn, wire = rig.open(remote=("0.0.0.0", 0))
    offloaded = rig.call(rig.host.app_offload, conn, None)
    assert offloaded.error is not None and offloaded.error.symbol == "INVALID_STATE", offloaded
    assert rig.host.tcbs[conn].state == "host" and rig.contexts() == []
    assert rig.host.objects == {}  # no neighbor or path made for it either
    wire.peer_send(b"early")
    wire.peer_reset()
    rig.run()
    assert rig.call(rig.host.app_recv, conn, 10, False).value == b"early"
    after = rig.call(rig.host.app_recv, conn, 10, False)
    assert after.error is not None and "NDIS_STATUS_REQUEST_ABORTED" in after.error.detail
    assert rig.call(rig.host.app_close, conn).value is True
    assert rig.problems() == []
