"""A connection pinned to a NIC (`tcp.connect`'s `target`, docs/rpc.md) keeps its pin when the
host offloads it again at a RESUME (spec §5.5) [EMU]: it lands on its pinned NIC when that NIC
can take it, and a rebalance then leaves it there. Only when the pinned NIC cannot (the failed
one, one taken out, full) does the team's policy place it: "the pin is where the connection
is placed, not where it must stay" (docs/rpc.md), and a failover still moves it.

The real host stack over an active-standby MUX (every unpinned connection on nic0) and three
targets, on MemoryWires, with the invariant checker on (no sockets, no sleeps)."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.factories import make_target
from chimneyd.testing.hostrig import HostRig


def _team(nics: int = 3) -> tuple[HostRig, MuxIm]:
    """host → team0 (an active-standby MUX) → nic0 … nic<n-1>."""
    rig = HostRig(())
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "active-standby")
    timers.bind(mux)
    rig.ndis.bind(rig.host, mux)
    for i in range(nics):
        name = f"nic{i}"
        nic = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name)
        rig.targets[name] = nic
        rig.ndis.bind(mux, nic)
    rig.run()
    return rig, mux


def _on(rig: HostRig, conn: int) -> str | None:
    """The NIC that carries `conn`, or None while the host does."""
    tcb = rig.host.tcbs[conn]
    if tcb.state != "offloaded":
        return None
    return rig.host.path_names(tcb)[-1]


def _pinned(rig: HostRig, nic: str) -> int:
    conn, _ = rig.open()
    rig.offload(conn, nic)
    assert _on(rig, conn) == nic
    return conn


def _context(rig: HostRig, nic: str, conn: int) -> object:
    (ctx,) = [c for c in rig.targets[nic].connections() if c.trace.conn_id == conn]
    return ctx


def test_asked_up_during_a_failover_it_comes_back_to_its_pin() -> None:
    """nic2 fails (its pinned connection is asked up, the team PAUSEd above); meanwhile nic1
    asks up the connection pinned to it (`InvalidState`, mandatory, spec §5.2). The host
    offloads both again at the RESUME: the one pinned to nic1 (in service) lands on nic1,
    not where active-standby puts a free connection (nic0); the one pinned to the failed
    nic2 goes where the policy puts it, nic0."""
    rig, mux = _team()
    on0 = _pinned(rig, "nic0")
    on1 = _pinned(rig, "nic1")
    on2 = _pinned(rig, "nic2")
    rig.targets["nic2"].fail_adapter()
    rig.targets["nic1"].retrieve(_context(rig, "nic1", on1), TcpUploadReason.InvalidState)
    rig.run()
    assert mux.lower_list()[2].failed
    assert {c: _on(rig, c) for c in (on0, on1, on2)} == {on0: "nic0", on1: "nic1", on2: "nic0"}
    # the pin is the connection's still, for the team too: a rebalance leaves it there
    mux.rebalance()
    rig.run()
    assert _on(rig, on1) == "nic1"
    # and the one moved off its failed NIC keeps its pin at the host: offloaded by the
    # application again once nic2 is back, it goes there (docs/rpc.md `tcp.offload`)
    rig.targets["nic2"].recover_adapter()
    rig.run()
    assert rig.call(rig.host.app_upload, on2).value == {"state": "host"}
    rig.offload(on2)
    assert _on(rig, on2) == "nic2"
    assert rig.problems() == []


def test_withheld_by_the_host_at_the_resume_it_goes_where_the_policy_puts_it() -> None:
    """As above, but the host withholds nic1 (a `host_event`, spec §6.2) before the RESUME:
    the host will not offload the connection to its pinned NIC (`INVALID_STATE`), and offers
    it once more without the pin; the team places it on nic0, not on nic1 nor left in the
    host. (Without that second offer it stayed in the host until a later RESUME.)"""
    rig, _mux = _team()
    on1 = _pinned(rig, "nic1")
    on2 = _pinned(rig, "nic2")
    rig.targets["nic2"].fail_adapter()
    rig.targets["nic1"].retrieve(_context(rig, "nic1", on1), TcpUploadReason.InvalidState)
    while not rig.host.paused:  # until the team's PAUSE reaches the host
        rig.scheduler.run_one()
    rig.host.host_event("nic1", "media_disconnect", True)
    rig.run()
    assert {c: _on(rig, c) for c in (on1, on2)} == {on1: "nic0", on2: "nic0"}
    rig.host.host_event("nic1", "media_disconnect", False)
    assert rig.call(rig.host.app_upload, on1).value == {"state": "host"}
    rig.offload(on1)  # the application's own: its pin again
    assert _on(rig, on1) == "nic1"
    assert rig.problems() == []
