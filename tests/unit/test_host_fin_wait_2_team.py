"""The host's FIN_WAIT_2 timer (docs/spec.md §8 timer table) under a teaming MUX: a connection
in FIN_WAIT_2 moved to the other NIC (`nic_down`: PAUSE, its upload, RESUME and the host's
offload again, spec §5.5) keeps its timer: what is left goes up at the upload and down again,
and the other NIC times it out 120 s after the peer was last heard, not 120 s after the move.

The real host stack over a round-robin MUX and two targets, on MemoryWires, with the invariant
checker on; the clock is the rig's `ManualClock` (no sockets, no sleeps)."""

from __future__ import annotations

from typing import Any

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.testing.factories import make_target
from chimneyd.testing.hostrig import HostRig


def _team() -> tuple[HostRig, MuxIm]:
    """host → team0 (a round-robin MUX) → nic0, nic1."""
    rig = HostRig(())
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "round-robin")
    timers.bind(mux)
    rig.ndis.bind(rig.host, mux)
    for name in ("nic0", "nic1"):
        nic = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name)
        rig.targets[name] = nic
        rig.ndis.bind(mux, nic)
    rig.run()
    return rig, mux


def _carrier(rig: HostRig) -> str:
    (name,) = [n for n, t in rig.targets.items() if list(t.connections())]
    return name


def _retrieves(rig: HostRig, conn: int) -> list[str]:
    return [i["reason"] for c, e, i in rig.events if c == conn and e == "TcpIndicateRetrieve"]


def _fin_wait_2_on_the_team() -> tuple[HostRig, MuxIm, int, Any]:
    rig, mux = _team()
    conn, wire = rig.open()
    rig.offload(conn)
    rig.half_close(conn, wire)
    (ctx,) = rig.contexts(_carrier(rig))
    assert ctx.tcp is TcpState.FIN_WAIT_2
    return rig, mux, conn, wire


def test_a_move_to_the_other_nic_carries_what_is_left() -> None:
    rig, mux, conn, _wire = _fin_wait_2_on_the_team()
    first = _carrier(rig)
    rig.advance(30)
    mux.lower_down(next(b for b in mux.lower_bindings if b.lower.name == first))
    rig.run()
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.phase is Phase.OFFLOADED, tcb.lifecycle
    second = _carrier(rig)
    assert second != first
    assert int(rig.host.leftovers().get("fin_wait_2_timers", 0)) == 0
    rig.advance(90 - 1)
    assert "TimeoutExpiration" not in _retrieves(rig, conn)
    rig.advance(2)
    assert _retrieves(rig, conn)[-1] == "TimeoutExpiration"
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True and close.error is None, close
    assert rig.problems() == []
    assert all(v == 0 for v in rig.host.leftovers().values()), rig.host.leftovers()
    for t in rig.targets.values():
        assert all(v == 0 for v in t.leftovers().values()), t.leftovers()
    assert rig.clock.pending == 0, "a timer left armed"
