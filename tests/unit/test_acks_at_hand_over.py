"""Acknowledgements around a socket's change of owner (spec §3.2.5, §3.6.3, §4.1).

The wire tells the socket's owner how far the peer acknowledged, and remembers what it told.
Whichever layer holds a send when the socket changes hands must still hear of the
acknowledgement that completes it, whenever the peer sends it: before the hand-over is asked,
while it is on its way, or after the new owner took the socket but before the old one handed the
send back. Played for the offload (host → target) and the upload (target → host), straight and
through a pass-through IM. The mirror of the first case in the offload direction failed before
the wire forgot what it told at each change of owner; the upload reads the acknowledged offset
when the host takes the send back, and the tests keep it so."""

from __future__ import annotations

import pytest

from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.hostrig import HostRig, Reply

PAYLOAD = b"acknowledged at the hand-over" * 40


def _run_until(rig: HostRig, layer: object, handler: str) -> None:
    """Deliver one at a time until `layer` has handled `handler`."""
    while rig.scheduler.run_one():
        last = rig.scheduler.log[-1]
        if last.layer is layer and last.handler == handler:
            return
    raise AssertionError(f"{handler} never reached {layer}")


@pytest.mark.parametrize("im", [False, True], ids=["direct", "through_an_im"])
@pytest.mark.parametrize("moment", ["before", "in_flight", "taken"])
def test_a_send_handed_up_completes_whenever_the_peer_acknowledges_it(
    moment: str, im: bool
) -> None:
    """An offloaded send is unacknowledged when the upload is asked; the peer acknowledges it
    before the terminate is issued, while it travels, or once the target has let the socket
    go (its owner is the host again) and before the host took the send back."""
    rig = HostRig(im=im)
    conn, wire = rig.open(auto_ack=False)
    rig.offload(conn)
    sent, uploaded = Reply(), Reply()
    rig.host.app_send(conn, PAYLOAD, sent)
    rig.run()  # the target writes it and watches for its acknowledgement
    assert wire.unacked == len(PAYLOAD) and not sent.done
    if moment == "before":
        wire.ack()
    rig.host.app_upload(conn, uploaded)
    rig.host.after_batch()  # the terminate goes down
    if moment == "in_flight":
        wire.ack()
    if moment == "taken":
        _run_until(rig, rig.target, "MiniportTerminateOffload")
        assert wire.owner is rig.host  # the target let the socket go
        wire.ack()
    rig.run()
    assert uploaded.done and uploaded.error is None
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.IDLE
    assert sent.done and sent.error is None and sent.value == len(PAYLOAD)
    assert bytes(wire.peer_received) == PAYLOAD  # written once
    assert rig.problems() == []


@pytest.mark.parametrize("im", [False, True], ids=["direct", "through_an_im"])
@pytest.mark.parametrize("moment", ["before", "in_flight", "taken"])
def test_a_send_handed_down_completes_whenever_the_peer_acknowledges_it(
    moment: str, im: bool
) -> None:
    """The mirror: a host send is unacknowledged when the offload is asked; the peer
    acknowledges it before the initiate is issued, while it travels, or once the target has
    taken the socket and before the host's completion arrives."""
    rig = HostRig(im=im)
    conn, wire = rig.open(auto_ack=False)
    sent, offloaded = Reply(), Reply()
    rig.host.app_send(conn, PAYLOAD, sent)
    rig.run()  # the host writes it and watches for its acknowledgement
    if moment == "before":
        wire.ack()
    rig.host.app_offload(conn, None, offloaded)
    rig.host.after_batch()  # the initiate goes down
    if moment == "in_flight":
        wire.ack()
    if moment == "taken":
        _run_until(rig, rig.target, "MiniportInitiateOffload")
        assert wire.owner is rig.target  # the target took the socket
        wire.ack()
    rig.run()
    assert offloaded.done and offloaded.error is None
    assert sent.done and sent.error is None and sent.value == len(PAYLOAD)
    assert bytes(wire.peer_received) == PAYLOAD
    assert rig.problems() == []
