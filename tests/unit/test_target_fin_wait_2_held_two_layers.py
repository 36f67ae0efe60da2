"""Two layers hold one initiate of a connection in FIN_WAIT_2 whose host stopped reading: an
IM above a teaming MUX (a `delay` of `MiniportInitiateOffload`), then the MUX (a NIC back from
a RESUME whose capabilities it waits for, spec §5.5). Each takes its own hold off the delta
and adds it to the block's `held_ns` (`fin_wait_2.spend_held`), which the IM and the MUX copy
down: the NIC counts the kernel's news from the first hold's start, the IM's (spec §8 with
§1.6). The peer is heard during the IM's hold, 35 s before the MUX lets the initiate go.

Nothing else held one initiate in two layers: with a hold's length set (`=`) rather than
added at each, every test passed, though the NIC counted from the MUX's hold only and timed
out a connection whose peer the kernel heard 35 s before.

host → imX → team0 → nic0, nic1 on MemoryWires; the clock is the rig's `ManualClock`."""

from __future__ import annotations

from dataclasses import replace

from chimneyd.drivers.base import Delay
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fin_wait_2 import _retrieves
from tests.unit.test_mux_wish_through_im import _over_team
from tests.unit.test_target_fin_wait_2_held_forward import _in_fin_wait_2

LATER_S = 70.0  # after `_in_fin_wait_2`'s 30 s, the host read the peer then: 50 s left
IM_HELD_S = 30.0
MUX_HELD_S = 30.0  # with the IM's, past what is left
HEARD_S = 25.0  # into the IM's hold: 35 s before the MUX lets the initiate go


def test_a_hold_in_an_im_and_one_in_the_mux_below_both_count() -> None:
    rig, mux = _over_team(HostRig((), host_options={"rx_buffer_bytes": 4}))
    conn, wire = _in_fin_wait_2(rig)
    wire.peer_send(b"more than the host takes")
    rig.run()
    assert rig.host.tcbs[conn].read_paused
    wire.info = replace(wire.info, last_data_recv_ms=10**7, last_ack_recv_ms=10**7)
    rig.advance(LATER_S)
    # the MUX will wait for nic1's capabilities, asked at its RESUME
    nic1 = rig.targets["nic1"]
    rig.ndis.NdisMIndicateStatusEx(nic1, S.NDIS_STATUS_OFFLOAD_PAUSE, [])
    rig.ndis.NdisMIndicateStatusEx(nic1, S.NDIS_STATUS_OFFLOAD_RESUME, [])
    asked = rig.hold_below("MiniportOidRequest")
    rig.ndis.layers["imX"].arm_fault(Delay(1, "MiniportInitiateOffload", int(IM_HELD_S * 1000)))
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    rig.run()
    assert not mux.deferred and not offload.done, "the IM did not hold the initiate"
    rig.advance(HEARD_S)
    wire.peer_send(b"late")  # the kernel holds it: the host reads nothing
    rig.run()
    rig.advance(IM_HELD_S - HEARD_S)  # the IM lets it go; the MUX holds it
    assert mux.deferred and not offload.done, "the MUX did not hold the initiate"
    rig.advance(MUX_HELD_S)
    heard_ms = int((IM_HELD_S - HEARD_S + MUX_HELD_S) * 1000)
    wire.info = replace(wire.info, last_data_recv_ms=heard_ms, last_ack_recv_ms=heard_ms)
    rig.release(asked)
    rig.advance(0.5)
    assert offload.done and offload.error is None, offload
    assert _retrieves(rig, conn) == [], "timed out though the kernel heard the peer 35 s ago"
