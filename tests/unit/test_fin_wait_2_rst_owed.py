"""The RST a FIN_WAIT_2 timeout owes the peer (docs/spec.md §8): when it goes and what the
application reads before it. The promise at any timeout: the application reads
every byte the peer sent, then the timeout, once; the peer gets the RST at the expiry while
reading the socket is on, else once those bytes are out of the kernel (or at `tcp.close`).

The real host stack over the target, on MemoryWires, with the invariant
checker on; the rig's `ManualClock`."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.testing.factories import make_passthrough_on, make_target
from chimneyd.testing.hostrig import HostRig
from tests.unit.test_target_fin_wait_2_timer import (
    FIN_WAIT_2_S,
    TIMED_OUT,
    _in_fin_wait_2,
    _kernel_heard_nothing_since,
    _retrieves,
)

TOPOLOGIES = ["direct", "through_an_im", "through_the_team"]


def _team_in_fin_wait_2(**host_options: Any) -> tuple[HostRig, int, Any]:
    """As deploy/teaming.toml: host → filter0 (a pass-through IM) → team0 (a MUX) → nic0,
    nic1; an offloaded connection whose FIN the peer acknowledged (FIN_WAIT_2), at clock 0."""
    rig = HostRig((), host_options=host_options or None)
    filter0 = make_passthrough_on(rig.ndis, rig.clock.timers(rig.ndis.post), "filter0")
    rig.ndis.bind(rig.host, filter0)
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "round-robin")
    timers.bind(mux)
    rig.ndis.bind(filter0, mux)
    for name in ("nic0", "nic1"):
        nic = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name)
        rig.targets[name] = nic
        rig.ndis.bind(mux, nic)
    rig.run()
    conn, wire = rig.open()
    rig.offload(conn)
    rig.half_close(conn, wire)
    (ctx,) = _contexts(rig)
    assert ctx.tcp is TcpState.FIN_WAIT_2
    return rig, conn, wire


def _offloaded_in_fin_wait_2(topology: str, **host_options: Any) -> tuple[HostRig, int, Any]:
    if topology == "through_the_team":
        return _team_in_fin_wait_2(**host_options)
    return _in_fin_wait_2(topology == "through_an_im", **host_options)


def _contexts(rig: HostRig) -> list[Any]:
    """The live TCP contexts of every target."""
    return [c for t in rig.targets.values() for c in t.connections()]


def _closed_and_drained(rig: HostRig, conn: int) -> None:
    """`tcp.close`, then every layer's tables back to zero, no timer left, nothing queued."""
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True and close.error is None, close
    assert rig.problems() == []
    for layer in [rig.host, *rig.targets.values()]:
        assert all(v == 0 for v in layer.leftovers().values()), layer.leftovers()
    assert rig.clock.pending == 0, "a timer left armed"


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_the_target_s_expiry_with_reading_on_resets_the_peer_at_the_expiry(topology: str) -> None:
    """Offloaded, the target reading (nothing held in the kernel): the RST goes with the
    upload the expiry asks for, as before, not once the application happens to read."""
    rig, conn, wire = _offloaded_in_fin_wait_2(topology)
    wire.peer_send(b"half closed")
    rig.run()
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    assert _contexts(rig) == []
    assert not rig.host.tcbs[conn].read_paused
    assert wire.reset_sent, "the peer was not reset at the expiry"
    r = rig.call(rig.host.app_recv, conn, 64, False)
    assert r.value == b"half closed", r
    r = rig.call(rig.host.app_recv, conn, 64, False)
    assert r.error is not None and TIMED_OUT in str(r.error), r
    _closed_and_drained(rig, conn)
