"""The host's placement wish for a connection [EMU] reaches the MUX on the offload request
itself, the connection's TCP block (`OffloadBlock.wish`, spec §3.2: what the host asks of
this initiate), not on the hop trace, which is for watching.

It used to ride on the trace its handle carries: with no trace on the handle (cut for the
initiate) the MUX placed a pinned connection by its policy instead, on another NIC; and the
trace kept the wish after it, whatever became of the initiate. With a trace of one hop
(`engine.trace_depth` 1) it was kept, and is.

The real host stack over a round-robin MUX over two real targets, on MemoryWires; the clock
is the rig's `ManualClock` (no sockets, no sleeps)."""

from __future__ import annotations

from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fin_wait_2_team import _carrier, _team


def _pinned_to_nic1(rig: HostRig, cut: bool) -> tuple[int, Reply]:
    """A connection the application offloads pinned to nic1; round robin's turn is nic0's.
    `cut`: its handle carries no trace for the initiate when the MUX gets it."""
    conn, _ = rig.open()
    offload = Reply()
    rig.host.app_offload(conn, "nic1", offload)
    held = rig.hold_below("MiniportInitiateOffload")  # the MUX's, not yet run
    handle = rig.host.tcbs[conn].handle
    assert handle is not None and handle.trace is rig.host.tcbs[conn].trace
    if cut:
        handle.trace = None
    rig.release(held)
    rig.run()
    return conn, offload


def test_a_pin_reaches_the_mux_with_no_trace_on_the_handle() -> None:
    rig, mux = _team()
    conn, offload = _pinned_to_nic1(rig, cut=True)
    assert offload.done and offload.error is None, offload
    assert _carrier(rig) == "nic1", "the MUX placed a pinned connection by its policy"
    (entry,) = [e for e in mux.table if getattr(e, "wish", None) is not None]
    assert entry.wish is not None and entry.wish[0] == "nic1"
    close = rig.call(rig.host.app_close, conn)
    assert close.error is None and rig.problems() == []


def test_a_pin_reaches_the_mux_with_a_trace_of_one_hop() -> None:
    rig, _ = _team()
    rig.ndis.trace_depth = 1
    conn, offload = _pinned_to_nic1(rig, cut=False)
    assert offload.done and offload.error is None, offload
    assert rig.host.tcbs[conn].trace.held() <= 1
    assert _carrier(rig) == "nic1", "the MUX placed a pinned connection by its policy"
