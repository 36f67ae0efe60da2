"""A connection in FIN_WAIT_2 whose host had stopped
reading (back-pressure) is offloaded by an initiate a paused NIC queued; during the pause the
peer sends, the kernel holds it (nobody reads) and last heard the peer 5 s before the RESUME.
Spec §8: while reading is stopped the kernel's time since it last heard the peer counts. The
NIC counts its timer from the arrival, and takes the kernel's news from the arrival on too
(`disconnect.started_at`): it used to take it from the RESUME only, and timed the connection
out at the RESUME."""

from __future__ import annotations

from dataclasses import replace

from chimneyd.testing.hostrig import HostRig
from tests.unit.test_host_fin_wait_2 import _retrieves
from tests.unit.test_target_fin_wait_2_held_forward import (
    HEARD_S,
    HELD_S,
    _in_fin_wait_2,
    _queued_at_a_paused_nic,
)


def test_the_kernel_s_news_during_the_pause_counts_for_a_host_that_stopped_reading() -> None:
    rig = HostRig(host_options={"rx_buffer_bytes": 4})
    conn, wire = _in_fin_wait_2(rig)
    wire.peer_send(b"more than the host takes")
    rig.run()
    assert rig.host.tcbs[conn].read_paused
    wire.info = replace(wire.info, last_data_recv_ms=10**7, last_ack_recv_ms=10**7)
    offload = _queued_at_a_paused_nic(rig, conn)
    rig.advance(HEARD_S)
    wire.peer_send(b"late")  # the kernel holds it: the host reads nothing
    rig.run()
    rig.advance(HELD_S - HEARD_S)
    wire.info = replace(wire.info, last_data_recv_ms=5000, last_ack_recv_ms=5000)
    rig.target.recover_adapter()
    rig.run()
    rig.advance(0.5)
    assert offload.done and offload.error is None, offload
    assert _retrieves(rig, conn) == [], "timed out though the kernel heard the peer 5 s ago"
