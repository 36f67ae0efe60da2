"""A connection already going up for its own reason when a host event begins on its NIC (spec
§6.2, docs/rpc.md `uploaded`): the application's `tcp.upload`, or an invalidate of it, is
already below or waiting, and the event's terminate adds nothing. Its `uploaded` event names its
own reason ("terminate"), not the event's: it was going up anyway. Before, the event overwrote
the reason of every connection on the NIC, those already being terminated too.

The real host stack over one target, on MemoryWires, with the invariant checker on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chimneyd.drivers.host.stack import HostStack
from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.hostrig import HostRig, Reply

EVENT = "media_disconnect"


def _upload(host: HostStack, conn: int, reply: Reply) -> None:
    host.app_upload(conn, reply)


def _invalidate(host: HostStack, conn: int, reply: Reply) -> None:
    host.app_invalidate(conn, "tcp", reply)


def _uploads(rig: HostRig, conn: int) -> list[str]:
    return [i["reason"] for c, e, i in rig.events if c == conn and e == "uploaded"]


@pytest.mark.parametrize("own", [_upload, _invalidate])
@pytest.mark.parametrize("below", [False, True])
def test_a_connection_going_up_for_its_own_reason_keeps_it(
    own: Callable[[HostStack, int, Reply], None], below: bool
) -> None:
    rig = HostRig()
    target = next(iter(rig.targets))
    conn, wire = rig.open()
    wire.auto_ack = True
    rig.offload(conn)
    asked = Reply()
    own(rig.host, conn, asked)
    if below:
        rig.host.after_batch()  # its terminate (or invalidate) goes down first
    assert rig.host.tcbs[conn].lifecycle.phase in (Phase.TERMINATING, Phase.INVALIDATED)
    rig.host.host_event(target, EVENT, True)
    rig.run()
    assert asked.done and asked.error is None, asked
    assert rig.host.tcbs[conn].state == "host"
    assert _uploads(rig, conn) == ["terminate"], rig.events
    assert rig.problems() == []


def test_a_connection_the_event_finds_offloaded_goes_up_for_the_event() -> None:
    """The other side: one that was not going up is uploaded for the event."""
    rig = HostRig()
    target = next(iter(rig.targets))
    conn, wire = rig.open()
    wire.auto_ack = True
    rig.offload(conn)
    rig.host.host_event(target, EVENT, True)
    rig.run()
    assert _uploads(rig, conn) == [EVENT], rig.events
    assert rig.problems() == []
