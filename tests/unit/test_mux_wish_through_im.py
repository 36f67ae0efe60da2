"""The host's placement wish for a connection [EMU] reaches a MUX with IMs between it and the
host: each IM copies the initiate's `OffloadBlock.wish` onto the block it sends down
(drivers/passthrough.py `_mirror`), as the trace it used to ride on travelled with the handle
through every layer.

Nothing else tested a wish through an IM: with the IM's copy dropped every test passed, and
the MUX placed a pinned connection by its policy, and a connection the host keeps off a
withheld NIC onto that NIC.

host → imX (pass-through) → team0 (round-robin MUX) → nic0, nic1, on MemoryWires; the clock
is the rig's `ManualClock` (no sockets, no sleeps)."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.testing.factories import make_passthrough_on, make_target
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fin_wait_2_team import _carrier


def _im_over_team() -> tuple[HostRig, MuxIm]:
    """host → imX → team0 (a round-robin MUX) → nic0, nic1."""
    return _over_team(HostRig(()))


def _over_team(rig: HostRig) -> tuple[HostRig, MuxIm]:
    """`rig`, made with no targets: its host → imX → team0 (round robin) → nic0, nic1."""
    im = make_passthrough_on(rig.ndis, rig.clock.timers(rig.ndis.post), "imX")
    rig.ndis.bind(rig.host, im)
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "round-robin")
    timers.bind(mux)
    rig.ndis.bind(im, mux)
    for name in ("nic0", "nic1"):
        nic = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name)
        rig.targets[name] = nic
        rig.ndis.bind(mux, nic)
    rig.run()
    return rig, mux


def test_a_pin_reaches_the_mux_through_an_im() -> None:
    rig, mux = _im_over_team()
    conn, _ = rig.open()
    offload = rig.call(rig.host.app_offload, conn, "nic1")  # round robin's turn is nic0's
    assert offload.done and offload.error is None, offload
    assert _carrier(rig) == "nic1", "the MUX placed a pinned connection by its policy"
    (entry,) = mux.connections()
    assert entry.wish is not None and entry.wish[0] == "nic1"
    close = rig.call(rig.host.app_close, conn)
    assert close.error is None and rig.problems() == []


def test_the_nics_the_host_withholds_reach_the_mux_through_an_im() -> None:
    """A `host_event` on nic0 that the MUX was not told of (`MuxIm.lower_withheld`): the
    host's offload says it, in its placement wish, and the MUX keeps the connection off it."""
    rig, mux = _im_over_team()
    rig.host.host_event("nic0", "media_disconnect", True)
    rig.run()
    conn, _ = rig.open()
    offload = Reply()
    rig.host.app_offload(conn, None, offload)  # round robin's turn is nic0's
    rig.run()
    assert offload.done and offload.error is None, offload
    assert _carrier(rig) == "nic1", "the MUX placed a connection on a NIC the host withholds"
    assert mux.wished_avoid == frozenset({"nic0"})
