"""A send the pass-through IM fails (a `fail_next` fault) while an earlier send is still below
it, at the NIC and unacknowledged: the failure completes after that send, never before it
(completions keep posting order), and then the connection is uploaded (spec §4.1). Host → IM
→ target over an in-memory wire, acknowledgements as the test says."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.base import PlantedBug, RaiseNext
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.clock import Delivery
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig


@pytest.mark.parametrize("status", [S.NDIS_STATUS_FAILURE, S.NDIS_STATUS_REQUEST_UPLOAD])
def test_a_send_failed_by_the_im_completes_after_the_send_below_it(status: S) -> None:
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    answers: list[tuple[str, Any, Any]] = []

    def send(name: str, data: bytes) -> None:
        rig.host.app_send(conn, data, lambda value, error: answers.append((name, value, error)))
        rig.run()

    send("first", b"first, ")
    assert bytes(wire.peer_received) == b"first, "  # at the NIC, on the wire, unacknowledged
    fail_next(rig.layers()["im-nic0"], "MiniportTcpOffloadSend", status)
    send("second", b"second")
    assert answers == []  # the failure waits behind the send still below the IM
    assert rig.host.tcbs[conn].state == "offloaded"
    wire.ack()
    rig.run()
    assert [a[0] for a in answers[:1]] == ["first"] and answers[0][1:] == (7, None)
    assert rig.host.tcbs[conn].state == "host"  # uploaded once the failure went up
    wire.ack()
    rig.run()
    assert [a[0] for a in answers] == ["first", "second"]
    if status is S.NDIS_STATUS_REQUEST_UPLOAD:
        # an upload status: the host keeps the send and carries it itself, after the upload
        assert answers[1][1:] == (6, None)
        assert bytes(wire.peer_received) == b"first, second"
    else:
        # a failure: the application is told, and the bytes were never sent
        assert answers[1][1] is None and "NDIS_STATUS_FAILURE" in str(answers[1][2])
        assert bytes(wire.peer_received) == b"first, "
        assert "TcpIndicateRetrieve" in rig.event_names(conn)
    assert rig.problems() == []


def test_a_receive_the_im_raises_on_waits_for_its_indication_to_return() -> None:
    """The IM raises (a bug) on a receive request the host posted while the IM's indication of
    received bytes is up, not yet returned: the request it fails on the layer's behalf (as the
    engine has it, `fail_unserved`) completes only after that indication has returned, since
    receive completions and indications are serialised per connection (spec §4.2, §9 item 4).
    Found by the fault soak in CI (`im0 completed receive NBL … while its indication of NBL …
    is in progress`)."""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    im = rig.layers()["im-nic0"]
    im.arm_fault(RaiseNext(1, "MiniportTcpOffloadReceive", 1))
    answers: list[tuple[Any, Any]] = []

    def post_while_indicated(d: Delivery) -> None:
        # the NIC's indication reaches the IM just as the application asks to read: the host's
        # receive request reaches the IM next, while the IM's indication is up to the host
        if d.layer is im and d.handler == "ProtocolTcpOffloadReceiveIndicate":
            rig.scheduler.observers.remove(post_while_indicated)
            rig.host.app_recv(conn, 1000, False, lambda v, e: answers.append((v, e)))
            rig.host.after_batch()  # the end of the host's drain: its request goes down

    rig.scheduler.observers.append(post_while_indicated)
    wire.peer_send(b"indicated")  # no request posted: the NIC indicates the bytes
    with pytest.raises(PlantedBug):
        rig.run()
    failed = rig.scheduler.log[-1]
    assert (failed.layer, failed.handler) == (im, "MiniportTcpOffloadReceive")
    assert im.fail_unserved(failed.handler, failed.args)  # as the engine does after a raise
    rig.run()
    assert answers == [(b"indicated", None)]  # the indicated bytes reached the application
    assert rig.problems() == []


def failure_after_initiate_data(rig: HostRig, layer: Any, status: S) -> None:
    """The host sends while it carries the connection, offloads it (the unacknowledged send
    goes down in the initiate's chain), then `layer` fails the next send: that one and a
    later one must complete after the initiate's data, in posting order, and the connection
    comes back to the host."""
    conn, wire = rig.open()
    answers: list[str] = []

    def send(name: str, data: bytes) -> None:
        rig.host.app_send(conn, data, lambda value, error: answers.append(name))
        rig.run()

    send("first", b"sent by the host, ")
    assert bytes(wire.peer_received) == b"sent by the host, " and wire.acked() == 0
    rig.offload(conn)
    fail_next(layer, "MiniportTcpOffloadSend", status)
    send("second", b"second, ")
    send("third", b"third")
    assert answers == []  # both wait behind the data handed down at initiate
    wire.ack()
    rig.run()
    wire.ack()
    rig.run()
    assert answers == ["first", "second", "third"]
    assert rig.host.tcbs[conn].state == "host"
    assert rig.problems() == []


@pytest.mark.parametrize("status", [S.NDIS_STATUS_FAILURE, S.NDIS_STATUS_REQUEST_UPLOAD])
def test_a_send_failed_by_the_im_completes_after_send_data_handed_down_at_initiate(
    status: S,
) -> None:
    """Send data the host hands down with the initiate (the TCP block's NetBufferListChain,
    spec §3.2.5) is below the IM just as a relayed send is, and the NIC completes it "exactly
    like ordinary send requests". A send the IM then fails, and one the IM refuses after it,
    complete after that data: completions keep posting order (spec §4.1, §9 item 2). Nothing
    is left in the IM's tables once the connection is back with the host."""
    rig = HostRig(im=True)
    im = rig.layers()["im-nic0"]
    failure_after_initiate_data(rig, im, status)
    assert im.sends_below == {} and len(im.table) == 0 and im.stats.offloads_active == 0


def test_send_data_of_an_initiate_the_nic_refuses_is_not_left_below_the_im() -> None:
    """An initiate the NIC does not offload leaves its send data with the host (spec §3.2.4,
    §3.2.5): the IM no longer counts it as below, and the connection's later sends are the
    host's own."""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    im = rig.layers()["im-nic0"]
    sent: list[tuple[Any, Any]] = []
    rig.host.app_send(conn, b"unacknowledged", lambda value, error: sent.append((value, error)))
    rig.run()
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    rig.call(rig.host.app_offload, conn, None)
    assert rig.host.tcbs[conn].state == "host"
    assert im.sends_below == {} and len(im.table) == 0
    wire.ack()
    rig.run()
    assert sent == [(14, None)]
    assert rig.problems() == []


def test_a_held_send_failure_stays_behind_a_send_a_failed_terminate_left_below() -> None:
    """The IM fails a send while an earlier one is below it, unacknowledged: the failure is
    held until that one comes back (spec §4.1, §9 item 2). The host's terminate then finds
    the hardware state corrupt (spec §3.7): FAILURE, nothing handed back, the earlier send
    still below. The held failure stays behind it when the failed terminate goes up, and
    follows it when the host's next terminate completes it (REQUEST_ABORTED, §3.7 step 4);
    nothing is left held or counted in the IM after that."""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    im = rig.layers()["im-nic0"]
    answers: list[str] = []
    rig.host.app_send(conn, b"first", lambda value, error: answers.append("first"))
    rig.run()
    assert bytes(wire.peer_received) == b"first" and wire.acked() == 0
    fail_next(im, "MiniportTcpOffloadSend", S.NDIS_STATUS_FAILURE)
    rig.host.app_send(conn, b"second", lambda value, error: answers.append("second"))
    rig.run()
    assert answers == []  # held behind "first"
    fail_next(rig.target, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    up = rig.call(rig.host.app_upload, conn)
    rig.run()
    assert up.done
    assert rig.problems() == []
    assert answers == ["first", "second"]
    assert im.sends_below == {} and len(im.table) == 0 and im.stats.offloads_active == 0
    assert rig.target.stats.offloads_active == 0
