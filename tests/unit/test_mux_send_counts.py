"""Sends through a teaming MUX: what it keeps of the sends below it — which are below which
connection, so that what it fails itself completes in posting order (spec §4.1, §9 item 2),
and the bytes outstanding on each NIC that the least-bytes policy places by. The real host
over a MUX over two real targets, on in-memory wires the test plays the peer of."""

from __future__ import annotations

import pytest

from chimneyd.drivers.mux import MuxIm
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, make_target
from chimneyd.testing.hostrig import HostRig
from tests.unit.test_im_failed_send import failure_after_initiate_data


def _team(policy: str = "least-bytes") -> tuple[HostRig, MuxIm]:
    """host → MUX → nic0, nic1 (HostRig builds no MUX of its own)."""
    rig = HostRig(targets=())
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, policy)
    timers.bind(mux)
    rig.ndis.bind(rig.host, mux)
    for name in ("nic0", "nic1"):
        target = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name)
        rig.targets[name] = target
        rig.ndis.bind(mux, target)
    rig.run()
    return rig, mux


@pytest.mark.parametrize("status", [S.NDIS_STATUS_FAILURE, S.NDIS_STATUS_REQUEST_UPLOAD])
def test_a_send_failed_by_the_mux_completes_after_send_data_handed_down_at_initiate(
    status: S,
) -> None:
    """Send data the host hands down with the initiate (NetBufferListChain, spec §3.2.5) goes
    to the connection's NIC and is below the MUX just as a relayed send is. A send the MUX
    then fails, and one it refuses after it, complete after that data (spec §4.1, §9 item 2),
    and nothing of the connection is left in the MUX once it is back with the host."""
    rig, mux = _team()
    failure_after_initiate_data(rig, mux, status)
    assert mux.sends_below == {} and mux.connections() == []


def test_send_data_of_an_initiate_the_nic_refuses_is_not_left_below_the_mux() -> None:
    """An initiate the NIC does not offload leaves its send data with the host (spec §3.2.4,
    §3.2.5): the MUX no longer counts it as below that NIC."""
    rig, mux = _team()
    conn, wire = rig.open()
    sent = rig.call(rig.host.app_send, conn, b"unacknowledged")
    for target in rig.targets.values():
        fail_next(target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    rig.call(rig.host.app_offload, conn, None)
    assert rig.host.tcbs[conn].state == "host"
    assert mux.sends_below == {} and mux.connections() == []
    assert _counts(mux) == {"nic0": 0, "nic1": 0}
    wire.ack()
    rig.run()
    assert sent.value == 14
    assert rig.problems() == []


def test_a_held_send_failure_stays_behind_a_send_a_failed_terminate_left_below() -> None:
    """The MUX fails a send while an earlier one is below it, unacknowledged: the failure is
    held until that one comes back (spec §4.1, §9 item 2). The NIC finds the hardware state
    corrupt at the host's terminate (spec §3.7): FAILURE, nothing handed back, the earlier
    send still below. The held failure stays behind it when the failed terminate goes up, and
    follows it when the host's next terminate completes it (REQUEST_ABORTED, §3.7 step 4);
    nothing of the connection is left in the MUX after that."""
    rig, mux = _team()
    conn, wire = rig.open()
    rig.offload(conn)
    (entry,) = mux.connections()
    nic = rig.targets[mux.lower_of(entry.lower).name]
    answers: list[str] = []
    rig.host.app_send(conn, b"first", lambda value, error: answers.append("first"))
    rig.run()
    assert bytes(wire.peer_received) == b"first" and wire.acked() == 0
    fail_next(mux, "MiniportTcpOffloadSend", S.NDIS_STATUS_FAILURE)
    rig.host.app_send(conn, b"second", lambda value, error: answers.append("second"))
    rig.run()
    assert answers == []  # held behind "first"
    fail_next(nic, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    up = rig.call(rig.host.app_upload, conn)
    rig.run()
    assert up.done
    assert rig.problems() == []
    assert answers == ["first", "second"]
    assert mux.sends_below == {} and mux.connections() == []
    assert [t.stats.offloads_active for t in rig.targets.values()] == [0, 0]


def _counts(mux: MuxIm) -> dict[str, int]:
    return {lower.name: lower.outstanding_bytes for lower in mux.lower_list()}


def test_the_mux_counts_send_data_handed_down_at_initiate_until_it_completes() -> None:
    """`outstanding_bytes` (bytes sent down a NIC and not yet completed, which the least-bytes
    policy places by) counts send data handed down with the initiate (spec §3.2.5) from then
    on, and is back at zero once the NIC has completed it."""
    rig, mux = _team()
    conn, wire = rig.open()
    sent = rig.call(rig.host.app_send, conn, b"x" * 1000)  # the host's, unacknowledged
    rig.offload(conn)  # the 1000 bytes go down in the initiate's chain
    (nic,) = {mux.lower_of(entry.lower).name for entry in mux.connections()}
    assert _counts(mux)[nic] == 1000
    wire.ack()
    rig.run()
    assert sent.value == 1000
    assert _counts(mux) == {"nic0": 0, "nic1": 0}
    assert rig.problems() == []


def test_the_mux_count_after_a_terminate_hands_back_a_partly_acknowledged_send() -> None:
    """A send the terminate hands back is no longer outstanding on its NIC (spec §3.6.3), all
    of it: the NIC advanced it past the bytes the peer acknowledged, and the count drops by
    what it added when the send went down, not by what is left of it."""
    rig, mux = _team()
    conn, wire = rig.open()
    rig.offload(conn)
    sent = rig.call(rig.host.app_send, conn, b"y" * 1000)
    (nic,) = {mux.lower_of(entry.lower).name for entry in mux.connections()}
    assert _counts(mux)[nic] == 1000
    wire.ack(400)  # partly acknowledged: the terminate hands it back advanced by 400
    rig.run()
    up = rig.call(rig.host.app_upload, conn)
    assert up.done and rig.host.tcbs[conn].state == "host"
    assert _counts(mux) == {"nic0": 0, "nic1": 0}
    wire.ack()
    rig.run()
    assert sent.value == 1000
    assert rig.problems() == []


def test_the_mux_count_after_sends_a_corrupt_terminate_left_below() -> None:
    """Sends left below by a terminate that finds the hardware state corrupt (spec §3.7) stay
    counted on their NIC until the host's next terminate completes them (REQUEST_ABORTED,
    step 4), partly acknowledged or not; then the count is back at zero."""
    rig, mux = _team()
    conn, wire = rig.open()
    sent = rig.call(rig.host.app_send, conn, b"z" * 600)  # goes down in the initiate's chain
    rig.offload(conn)
    more = rig.call(rig.host.app_send, conn, b"w" * 400)
    (entry,) = mux.connections()
    nic = mux.lower_of(entry.lower).name
    wire.ack(300)
    rig.run()
    assert _counts(mux)[nic] == 1000
    fail_next(rig.targets[nic], "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    rig.call(rig.host.app_upload, conn)
    assert sent.done and more.done
    assert _counts(mux) == {"nic0": 0, "nic1": 0}
    assert mux.sends_below == {} and mux.connections() == []
    assert rig.problems() == []
