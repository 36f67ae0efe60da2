"""A connection whose terminate the host has asked for a reason of its own but that waits
behind a query on it (spec §3.1: no terminate while a query, update or invalidate is pending)
is going up already when a host event starts on its NIC: the peer's RST (the host answers
`TcpIndicateAbort` with a terminate, spec §5.1) or the target's optional request the host
honours (spec §5.2, `UPLOAD_SUGGESTED`). Its `uploaded` event says `terminate`, not the event's
name (docs/rpc.md `uploaded`), as one whose terminate is already below, or whose mandatory
request waits the same way (`UPLOAD_REQUESTED`), does. Before, the phase of those two is
still OFFLOADED or UPLOAD_SUGGESTED while the terminate waits, and the event's name
overwrote their reason.

The real host stack over one target, on MemoryWires, with the invariant checker on."""

from __future__ import annotations

import pytest

from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpUploadReason as R
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig

EVENT = "media_disconnect"


@pytest.mark.parametrize("own", ["peer_reset", "optional_retrieve", "mandatory_retrieve"])
def test_a_connection_whose_own_terminate_waits_behind_a_query_keeps_its_reason(
    own: str,
) -> None:
    rig = HostRig()
    target = next(iter(rig.targets))
    conn, wire = rig.open()
    wire.auto_ack = True
    rig.offload(conn)
    query, held = rig.query_held_below(conn)
    if own == "peer_reset":
        wire.peer_reset()
    else:
        (c,) = rig.contexts()
        rig.target.retrieve(c, R.LowActivity if own == "optional_retrieve" else R.UploadRequested)
    rig.run()
    tcb = rig.host.tcbs[conn]
    assert tcb.state == "offloaded" and tcb.deferred, "its terminate waits for the query"
    rig.host.host_event(target, EVENT, True)
    rig.release(held)
    rig.run()
    assert query.done, query
    assert tcb.state == "host"
    uploads = [i["reason"] for c, e, i in rig.events if c == conn and e == "uploaded"]
    assert uploads == ["terminate"], rig.events
    assert rig.problems() == []


def test_a_connection_the_event_finds_behind_a_query_goes_up_for_the_event() -> None:
    """The other side: one with nothing of its own waiting is uploaded for the event, once
    the query is back (the event's own terminate waits the same way)."""
    rig = HostRig()
    target = next(iter(rig.targets))
    conn, wire = rig.open()
    wire.auto_ack = True
    rig.offload(conn)
    query, held = rig.query_held_below(conn)
    rig.host.host_event(target, EVENT, True)
    rig.host.host_event(target, "power_down", True)  # a second event finds it waiting
    rig.release(held)
    rig.run()
    assert query.done, query
    uploads = [i["reason"] for c, e, i in rig.events if c == conn and e == "uploaded"]
    assert uploads == [EVENT], rig.events
    assert rig.problems() == []


def test_a_connection_whose_terminate_failed_keeps_its_reason() -> None:
    """Its terminate, asked by the target (spec §5.2), failed (corrupt hardware, spec §3.7):
    FAILED, the host terminates it again once the target's abort comes. A host event between
    the two finds it going up already: its `uploaded` says `terminate`."""
    rig = HostRig()
    target = next(iter(rig.targets))
    conn, wire = rig.open()
    wire.auto_ack = True
    rig.offload(conn)
    fail_next(rig.target, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    (c,) = rig.contexts()
    rig.target.retrieve(c, R.UploadRequested)
    while rig.scheduler.queue:  # the request reaches the host
        rig.scheduler.run_one()
    rig.run_until("ProtocolTerminateOffloadComplete")
    rig.scheduler.run_one()  # the failed completion, and no more
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.phase is Phase.FAILED and not tcb.upload_done
    rig.host.host_event(target, EVENT, True)
    rig.run()
    assert tcb.state == "host"
    uploads = [i["reason"] for c, e, i in rig.events if c == conn and e == "uploaded"]
    assert uploads == ["terminate"], rig.events
    assert rig.problems() == []
