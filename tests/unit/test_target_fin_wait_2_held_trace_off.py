"""How long the layers above held an initiate travels down with the initiate itself, not on
the connection's hop trace (spec §8, §1.6; `fin_wait_2.spend_held`, `OffloadBlock.held_ns`).

The IM that holds the initiate of a connection in FIN_WAIT_2 takes the hold off the delta it
passes down, and the target takes the kernel's news from the hold's start. That note used to
ride on the hop trace, which is for watching: with no trace on the connection's handles the
note was dropped and the target timed out a connection whose peer the kernel had heard 5 s
before (the trace-off case of test_target_fin_wait_2_held_kernel_news_delay.py). And a note
made for an initiate that failed before the NIC stayed on the trace, holding that initiate's
delegated state for the connection's life (and the closed-trace archive's).

The real host stack over an IM and a real target, on MemoryWires; the clock is the rig's
`ManualClock` (no sockets, no sleeps)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chimneyd.ndis.trace import HopTrace
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fin_wait_2 import _retrieves
from tests.unit.test_target_fin_wait_2_held_forward import _in_fin_wait_2
from tests.unit.test_target_fin_wait_2_held_kernel_news_delay import (
    HEARD_S,
    HELD_S,
    LATER_S,
    _im_holding,
)


def _held_with_news(rig: HostRig, cut: bool) -> tuple[int, Reply]:
    """A connection in FIN_WAIT_2 whose host stopped reading, its initiate held by the IM;
    the kernel hears the peer 5 s before the IM lets it go. `cut`: no handle of the
    connection carries a trace for that initiate."""
    conn, wire = _in_fin_wait_2(rig)
    wire.peer_send(b"more than the host takes")
    rig.run()
    assert rig.host.tcbs[conn].read_paused
    wire.info = replace(wire.info, last_data_recv_ms=10**7, last_ack_recv_ms=10**7)
    rig.advance(LATER_S)
    offload = _im_holding(rig, conn)
    handle = rig.host.tcbs[conn].handle
    assert handle is not None and handle.trace is rig.host.tcbs[conn].trace
    if cut:
        handle.trace = None  # the IM's handle, made when it runs the initiate, copies it
    rig.advance(HEARD_S)
    wire.peer_send(b"late")  # the kernel holds it: the host reads nothing
    rig.run()
    wire.info = replace(wire.info, last_data_recv_ms=5000, last_ack_recv_ms=5000)
    rig.advance(HELD_S - HEARD_S)  # the IM lets the initiate go
    rig.advance(0.5)
    return conn, offload


def test_the_hold_reaches_the_target_with_no_trace_on_the_handles() -> None:
    rig = HostRig(im=True, host_options={"rx_buffer_bytes": 4})
    conn, offload = _held_with_news(rig, cut=True)
    assert offload.done and offload.error is None, offload
    assert _retrieves(rig, conn) == [], "timed out though the kernel heard the peer 5 s ago"


def test_the_hold_reaches_the_target_with_a_trace_of_one_hop() -> None:
    """`engine.trace_depth` 1, the smallest allowed: the trace keeps one record."""
    rig = HostRig(im=True, host_options={"rx_buffer_bytes": 4})
    rig.ndis.trace_depth = 1
    conn, offload = _held_with_news(rig, cut=False)
    assert offload.done and offload.error is None, offload
    assert rig.host.tcbs[conn].trace.held() <= 1
    assert _retrieves(rig, conn) == [], "timed out though the kernel heard the peer 5 s ago"


def test_the_hop_trace_carries_hops_only() -> None:
    """Nothing of an initiate stays on the connection's trace after it: no note of a hold
    (nor a placement wish), whose initiate may have failed before the NIC. Asked of an
    instance, not of `HopTrace.__slots__`: the compiled build's HopTrace (mypyc,
    deploy/compiled-modules.txt) has no `__slots__`, and takes no attribute it does not
    declare either."""
    trace = HopTrace(1, 8, lambda: 0)
    for name in ("fin_wait_2_held", "wish"):
        assert not hasattr(trace, name), name
        with pytest.raises(AttributeError):
            setattr(trace, name, None)
