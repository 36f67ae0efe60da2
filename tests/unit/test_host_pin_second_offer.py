"""The host's second offer of a pinned connection at a RESUME (`adapter._offload_again`) is an
offload of its own, with its own outcome.

At a RESUME the host offloads a connection it was asked to upload again (spec §5.5), first to
the NIC the application pinned it to (`tcp.connect`'s `target`, docs/rpc.md) [EMU]; refused
there, once more without the pin, where the team's policy puts it. That second offer is made
from the first one's completion callback, while the host still walks that offload's callbacks
(`offload._not_offloaded`, `offload._unqueue`): joining that list, it took the first offer's
refusal for its own, and its connection was put back to wait for the next RESUME although it
had landed on another NIC. At that RESUME (a NIC back in service) the host offloaded it
again, even after the application had uploaded it to the host stack itself.

The real host stack over an active-standby MUX and three targets, on MemoryWires, with the
invariant checker on (no sockets, no sleeps)."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.testing.factories import make_target
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_mux_pin_at_resume import _on, _pinned, _team


def test_a_pinned_connection_offered_again_elsewhere_waits_for_no_further_resume() -> None:
    """nic1 is taken out (`nic_down`): the team asks the connection pinned to it up, and the
    host offers it again at the RESUME, to nic1 (refused: out of service), then where the
    policy puts it, nic0. It waits for no later RESUME. The application uploads it; nic1 is
    put back in service (`nic_up`: a RESUME, the team offers more again, spec §5.5): the
    connection stays in the host stack, where the application put it."""
    rig, mux = _team()
    on1 = _pinned(rig, "nic1")
    nic1 = mux.lower_list()[1]
    mux.lower_down(nic1.binding)
    rig.run()
    assert _on(rig, on1) == "nic0"
    assert rig.host.resume_offloads.get(rig.host.lower_bindings[0].id, {}) == {}
    assert rig.call(rig.host.app_upload, on1).value == {"state": "host"}
    mux.lower_up(nic1.binding)
    rig.run()
    assert _on(rig, on1) is None, "offloaded again by a RESUME after the application's upload"
    assert rig.problems() == []


def test_refused_on_every_nic_it_waits_for_the_next_resume_and_lands_on_its_pin() -> None:
    """Two NICs, nic0 with room for one connection, which it carries. nic1 is taken out: the
    connection pinned to it is refused there at the RESUME, and then where the policy would
    put it (nic0 is full): it waits in the host stack for the next RESUME, once, and at that
    one (`nic_up` of nic1) lands on its pinned NIC."""
    rig = HostRig(())
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "active-standby")
    timers.bind(mux)
    rig.ndis.bind(rig.host, mux)
    for name, room in (("nic0", 1), ("nic1", 8)):
        nic = make_target(
            rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name, max_connections=room
        )
        rig.targets[name] = nic
        rig.ndis.bind(mux, nic)
    rig.run()
    on0 = _pinned(rig, "nic0")
    on1 = _pinned(rig, "nic1")
    nic1 = mux.lower_list()[1]
    mux.lower_down(nic1.binding)
    rig.run()
    assert {c: _on(rig, c) for c in (on0, on1)} == {on0: "nic0", on1: None}
    waiting = rig.host.resume_offloads.get(rig.host.lower_bindings[0].id, {})
    assert list(waiting) == [on1]
    mux.lower_up(nic1.binding)
    rig.run()
    assert _on(rig, on1) == "nic1"
    assert rig.host.resume_offloads.get(rig.host.lower_bindings[0].id, {}) == {}
    assert rig.problems() == []


def test_an_upload_asked_while_the_pinned_offer_goes_comes_after_the_second_offer() -> None:
    """nic1 is taken out; at the RESUME the host offers the connection pinned to it to nic1,
    and while that initiate is below the application asks for its upload (`tcp.upload`: it
    waits for the offload, docs/rpc.md). The team refuses the pinned offer; the host's second
    offer places the connection on nic0, and the application's upload follows it: the
    connection ends in the host stack, as the application asked last."""
    rig, mux = _team()
    on1 = _pinned(rig, "nic1")
    tcb = rig.host.tcbs[on1]
    mux.lower_down(mux.lower_list()[1].binding)
    while tcb.state != "offloading":  # asked up by the team, then offered to nic1 again
        assert _step(rig)
    upload = Reply()
    rig.host.app_upload(on1, upload)
    rig.run()
    assert upload.done and upload.error is None, upload
    assert _on(rig, on1) is None, "offloaded after the application's upload"
    assert rig.problems() == []


def _step(rig: HostRig) -> bool:
    """One delivery, with the host's end-of-drain batch when the queue runs dry (as
    `HostRig.run` does: the host issues its initiates there); False when idle."""
    if rig.scheduler.run_one():
        return True
    rig.host.after_batch()
    return bool(rig.scheduler.queue)
