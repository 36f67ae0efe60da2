"""The `uploaded` event's `reason` for a connection whose offload was in flight when a host event
started (spec §6.2, docs/rpc.md `uploaded`): below a MUX the connection may land on another NIC
of the team than the withheld one. There the event did not upload it, and a later upload of it
(the application's, an invalidate's, a NIC failure's) is not the event's; one that landed on the
withheld NIC is uploaded for the event, with its name as the reason.

The real host stack over a round-robin MUX and two targets, on MemoryWires, with the invariant
checker on (no sockets, no sleeps)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.testing.factories import make_target
from chimneyd.testing.hostrig import HostRig, Reply

EVENT = "media_disconnect"


def _team() -> HostRig:
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
    return rig


def _carrier(rig: HostRig) -> str:
    (name,) = [n for n, t in rig.targets.items() if list(t.connections())]
    return name


def _uploads(rig: HostRig, conn: int) -> list[str]:
    return [i["reason"] for c, e, i in rig.events if c == conn and e == "uploaded"]


def _in_flight_when(rig: HostRig, pin: str, *events: tuple[str, str]) -> int:
    """A connection whose offload (pinned to `pin`) is below the host when `events` (target,
    event) start; run until idle."""
    conn, _ = rig.open()
    offloaded = Reply()
    rig.host.app_offload(conn, pin, offloaded)
    rig.host.after_batch()  # the initiate goes down
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADING
    for target, event in events:
        rig.host.host_event(target, event, True)
    rig.run()
    assert offloaded.done and offloaded.error is None, offloaded
    return conn


def _app_upload(rig: HostRig, conn: int) -> None:
    assert rig.call(rig.host.app_upload, conn).value == {"state": "host"}


def _invalidate(rig: HostRig, conn: int) -> None:
    invalidated = rig.call(rig.host.app_invalidate, conn, "tcp")
    assert invalidated.error is None, invalidated


def _nic_fails(rig: HostRig, conn: int) -> None:
    rig.targets[_carrier(rig)].fail_adapter()
    rig.run()


def _time_wait(rig: HostRig, conn: int) -> None:
    """The application closes its side, the peer acknowledges it, then sends its FIN: TIME_WAIT,
    which the target asks the host to carry (`UploadRequested`, spec §8)."""
    (wire,) = list(rig.wires)  # the only connection
    rig.half_close(conn, wire)
    wire.peer_fin()
    rig.run()
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.TIME_WAIT


@pytest.mark.parametrize("upload", [_app_upload, _invalidate, _nic_fails, _time_wait])
def test_a_connection_landed_on_another_nic_keeps_no_event_reason(
    upload: Callable[[HostRig, int], None],
) -> None:
    rig = _team()
    conn = _in_flight_when(rig, "nic1", ("nic0", EVENT))
    assert _carrier(rig) == "nic1"
    assert rig.host.tcbs[conn].state == "offloaded"  # not on the withheld NIC: stays
    assert _uploads(rig, conn) == []
    upload(rig, conn)
    # the upload was not the event's (spec §6.2): the client must not be told it was
    assert _uploads(rig, conn)[:1] == ["terminate"], rig.events
    assert rig.problems() == []


def test_a_connection_landed_on_the_withheld_nic_is_uploaded_for_the_event() -> None:
    rig = _team()
    conn = _in_flight_when(rig, "nic0", ("nic0", EVENT))
    assert rig.host.tcbs[conn].state == "host"
    assert _uploads(rig, conn) == [EVENT]
    # offloaded again to the other NIC, a later upload is not the event's
    rig.offload(conn, "nic1")
    _app_upload(rig, conn)
    assert _uploads(rig, conn) == [EVENT, "terminate"]
    assert rig.problems() == []


def test_with_events_on_both_nics_the_reason_is_the_landing_nics() -> None:
    rig = _team()
    conn = _in_flight_when(rig, "nic0", ("nic0", EVENT), ("nic1", "net_event_pause"))
    assert rig.host.tcbs[conn].state == "host"
    assert _uploads(rig, conn) == [EVENT]
    assert rig.problems() == []


def _other_on_nic1(rig: HostRig) -> int:
    """An offloaded connection on nic1, on the same path and neighbor as the next one."""
    other, _ = rig.open()
    rig.offload(other, "nic1")
    return other


def test_an_invalidate_during_the_offload_uploads_it_for_itself() -> None:
    """The event on nic0 starts, and the neighbor the connection hangs under is invalidated,
    while its offload to nic1 is in flight: it goes up for the invalidate (spec §3.5)."""
    rig = _team()
    other = _other_on_nic1(rig)
    conn, _ = rig.open()
    offloaded = Reply()
    rig.host.app_offload(conn, "nic1", offloaded)
    rig.host.after_batch()
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADING
    rig.host.host_event("nic0", "power_down", True)
    invalidated = Reply()
    rig.host.app_invalidate(other, "neighbor", invalidated)
    rig.run()
    assert offloaded.done and offloaded.error is None, offloaded
    assert invalidated.done and invalidated.error is None, invalidated
    assert rig.host.tcbs[conn].state == "host"
    assert _uploads(rig, conn) == ["terminate"], rig.events
    assert _uploads(rig, other) == ["terminate"], rig.events
    assert rig.problems() == []


@pytest.mark.parametrize(("pin", "reasons"), [("nic1", ["terminate"]), ("nic0", [EVENT])])
def test_a_nic_failing_during_the_offload(pin: str, reasons: list[str]) -> None:
    """The event on nic0 starts, and the NIC the connection is pinned to fails, while its
    offload is in flight: on nic0 it goes up for the event, on nic1 for the failure (spec §5.5)
    and then not for the event."""
    rig = _team()
    conn, _ = rig.open()
    offloaded = Reply()
    rig.host.app_offload(conn, pin, offloaded)
    rig.host.after_batch()
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADING
    rig.host.host_event("nic0", EVENT, True)
    rig.targets[pin].fail_adapter()
    rig.run()
    rig.targets[pin].recover_adapter()
    rig.run()
    assert offloaded.done and offloaded.error is None, offloaded
    assert _uploads(rig, conn) == reasons, rig.events
    if rig.host.tcbs[conn].state == "offloaded":  # offered again at RESUME (spec §5.5)
        _app_upload(rig, conn)
        assert _uploads(rig, conn) == [*reasons, "terminate"], rig.events
    assert rig.problems() == []
