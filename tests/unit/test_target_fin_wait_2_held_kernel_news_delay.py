"""A connection in FIN_WAIT_2 whose host had stopped reading (back-pressure) is offloaded
through an IM that holds its initiate (a `delay` of `MiniportInitiateOffload`); during the
hold the peer sends, the kernel holds it (nobody reads the socket) and last heard the peer 5 s
before the IM lets the initiate go.

Spec §8: the FIN_WAIT_2 timer is restarted by each acceptable segment, and while reading is
stopped the kernel's time since it last heard the peer counts. The IM takes its hold off the
delta it passes down (`fin_wait_2.spend_held`): the target must then take the kernel's news
from the hold's start too, as it does for an initiate it queued itself while paused
(`disconnect.started_at`), or it times out a connection whose peer it heard 5 s ago.

The real host stack over an IM and a real target, on MemoryWires; the clock is the rig's
`ManualClock` (no sockets, no sleeps)."""

from __future__ import annotations

from dataclasses import replace

from chimneyd.drivers.base import Delay
from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import make_target
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fin_wait_2 import _retrieves
from tests.unit.test_target_fin_wait_2_held_forward import _in_fin_wait_2

LATER_S = 70.0  # after `_in_fin_wait_2`'s 30 s, the host read the peer then: 50 s left
HELD_S = 60.0  # the IM's hold: past what is left
HEARD_S = HELD_S - 5  # when, into the hold, the peer is heard


def _im_holding(rig: HostRig, conn: int) -> Reply:
    im = rig.ndis.layers["im-nic0"]
    im.arm_fault(Delay(1, "MiniportInitiateOffload", int(HELD_S * 1000)))
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    rig.run()
    assert not offload.done and list(rig.target.connections()) == [], "the IM did not hold it"
    return offload


def test_the_kernel_s_news_during_an_im_s_hold_counts_for_a_host_that_stopped_reading() -> None:
    rig = HostRig(im=True, host_options={"rx_buffer_bytes": 4})
    conn, wire = _in_fin_wait_2(rig)
    wire.peer_send(b"more than the host takes")
    rig.run()
    assert rig.host.tcbs[conn].read_paused
    wire.info = replace(wire.info, last_data_recv_ms=10**7, last_ack_recv_ms=10**7)
    rig.advance(LATER_S)
    offload = _im_holding(rig, conn)
    rig.advance(HEARD_S)
    wire.peer_send(b"late")  # the kernel holds it: the host reads nothing
    rig.run()
    wire.info = replace(wire.info, last_data_recv_ms=5000, last_ack_recv_ms=5000)
    rig.advance(HELD_S - HEARD_S)  # the IM lets the initiate go
    rig.advance(0.5)
    assert offload.done and offload.error is None, offload
    assert _retrieves(rig, conn) == [], "timed out though the kernel heard the peer 5 s ago"


def test_the_kernel_s_news_during_a_mux_s_hold_counts_too() -> None:
    """The same under a teaming MUX that holds the initiate (a NIC back from a RESUME whose
    capabilities it waits for, spec §5.5): the NIC that takes the connection counts the
    kernel's news from the hold's start."""
    rig = HostRig((), host_options={"rx_buffer_bytes": 4})
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "round-robin")
    timers.bind(mux)
    rig.ndis.bind(rig.host, mux)
    for name in ("nic0", "nic1"):
        nic = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name)
        rig.targets[name] = nic
        rig.ndis.bind(mux, nic)
    rig.run()
    conn, wire = _in_fin_wait_2(rig)
    wire.peer_send(b"more than the host takes")
    rig.run()
    assert rig.host.tcbs[conn].read_paused
    wire.info = replace(wire.info, last_data_recv_ms=10**7, last_ack_recv_ms=10**7)
    rig.advance(LATER_S)
    nic1 = rig.targets["nic1"]
    rig.ndis.NdisMIndicateStatusEx(nic1, S.NDIS_STATUS_OFFLOAD_PAUSE, [])
    rig.ndis.NdisMIndicateStatusEx(nic1, S.NDIS_STATUS_OFFLOAD_RESUME, [])
    asked = rig.hold_below("MiniportOidRequest")
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    rig.run()
    assert mux.deferred and not offload.done, "the MUX did not hold the initiate"
    rig.advance(HEARD_S)
    wire.peer_send(b"late")  # the kernel holds it: the host reads nothing
    rig.run()
    wire.info = replace(wire.info, last_data_recv_ms=5000, last_ack_recv_ms=5000)
    rig.advance(HELD_S - HEARD_S)
    rig.release(asked)
    rig.advance(0.5)
    assert offload.done and offload.error is None, offload
    assert _retrieves(rig, conn) == [], "timed out though the kernel heard the peer 5 s ago"


def test_the_kernel_s_news_during_an_im_s_hold_counts_at_a_nic_that_queued_it_too() -> None:
    """The IM's hold, then the NIC queues the initiate while paused (spec §5.5) and takes it
    at the RESUME 10 s later: the peer was heard during the IM's hold, 15 s before the
    RESUME. The NIC counts the kernel's news from the IM's hold's start, not its arrival."""
    rig = HostRig(im=True, host_options={"rx_buffer_bytes": 4})
    conn, wire = _in_fin_wait_2(rig)
    wire.peer_send(b"more than the host takes")
    rig.run()
    wire.info = replace(wire.info, last_data_recv_ms=10**7, last_ack_recv_ms=10**7)
    rig.advance(LATER_S)
    offload = _im_holding(rig, conn)
    rig.advance(HEARD_S)
    wire.peer_send(b"late")  # the kernel holds it: the host reads nothing
    rig.run()
    rig.target.fail_adapter()
    rig.run()
    rig.advance(HELD_S - HEARD_S)  # the IM lets the initiate go; the paused NIC queues it
    assert len(rig.target.paused_initiates) == 1 and not offload.done
    rig.advance(10)
    wire.info = replace(wire.info, last_data_recv_ms=15_000, last_ack_recv_ms=15_000)
    rig.target.recover_adapter()
    rig.run()
    rig.advance(0.5)
    assert offload.done and offload.error is None, offload
    assert _retrieves(rig, conn) == [], "timed out though the kernel heard the peer 15 s ago"
