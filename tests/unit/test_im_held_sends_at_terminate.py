"""Sends the pass-through IM holds at a terminate: a send it failed (a `fail_next` fault) while
earlier sends were below it, at the NIC and unacknowledged, and the sends it refused after
that. The terminate hands the earlier sends back in the TCP block's `NetBufferListChain`
(spec §3.6.3); the held ones were never passed down, and go back after them in that chain,
in posting order, as the target hands back the sends it refused (spec §3.6.3, §4.1, §9 item
2). The host then carries them all itself. Host → IM → target over an in-memory wire."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux import MuxIm
from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, make_target
from chimneyd.testing.hostrig import HostRig


def _single() -> tuple[HostRig, PassthroughIm]:
    rig = HostRig(im=True)
    im = rig.layers()["im-nic0"]
    assert isinstance(im, PassthroughIm)
    return rig, im


def _team() -> tuple[HostRig, PassthroughIm]:
    """host → MUX → nic0 (HostRig builds no MUX of its own)."""
    rig = HostRig(targets=())
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "round-robin")
    timers.bind(mux)
    rig.ndis.bind(rig.host, mux)
    target = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, "nic0")
    rig.targets["nic0"] = target
    rig.ndis.bind(mux, target)
    rig.run()
    return rig, mux


FAILURES = [S.NDIS_STATUS_FAILURE, S.NDIS_STATUS_RESOURCES, S.NDIS_STATUS_REQUEST_UPLOAD]
IDS = ["failure", "resources", "request-upload"]


def _upload_with_held(
    status: S, below: list[bytes], after: list[bytes], corrupt: bool = False, mux: bool = False
) -> None:
    """`below` sent and at the NIC, one send the IM fails with `status`, `after` sent behind
    it (refused by the IM), then the connection uploaded (the target's terminate corrupt
    first with `corrupt`, spec §3.7). Every send completes in posting order, none lost."""
    rig, im = _team() if mux else _single()
    conn, wire = rig.open()
    rig.offload(conn)
    answers: list[tuple[int, object, object]] = []

    def send(i: int, data: bytes) -> None:
        rig.host.app_send(conn, data, lambda value, error: answers.append((i, value, error)))
        rig.run()

    sends = [*below, b"failed by the IM", *after]
    for i, data in enumerate(below):
        send(i, data)
    assert bytes(wire.peer_received) == b"".join(below) and wire.acked() == 0
    fail_next(im, "MiniportTcpOffloadSend", status)
    for i, data in enumerate(sends[len(below) :], len(below)):
        send(i, data)
    assert answers == []  # all held behind the sends still below
    if corrupt:
        fail_next(rig.target, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    up = rig.call(rig.host.app_upload, conn)
    assert up.done
    for _ in range(len(sends)):
        wire.ack()
        rig.run()
    assert rig.problems() == []
    assert [i for i, _, _ in answers] == list(range(len(sends)))  # posting order
    if not corrupt:
        # handed back unsent, they are the host's to send: every byte reaches the peer once
        assert [(v, e) for _, v, e in answers] == [(len(d), None) for d in sends]
        assert bytes(wire.peer_received) == b"".join(sends)
        assert rig.host.tcbs[conn].state == "host"
    assert im.sends_below == {} and len(im.table) == 0 and im.stats.offloads_active == 0


@pytest.mark.parametrize("status", FAILURES, ids=IDS)
@pytest.mark.parametrize(
    ("below", "after"),
    [
        ([b"first, "], []),
        ([b"first, ", b"second, "], []),
        ([b"first, "], [b", later"]),
        ([b"first, "], [b", later", b", and later still"]),
    ],
    ids=["one-below", "two-below", "one-later", "two-later"],
)
def test_held_sends_go_back_after_the_sends_below_at_a_terminate(
    status: S, below: list[bytes], after: list[bytes]
) -> None:
    _upload_with_held(status, below, after)


@pytest.mark.parametrize("status", FAILURES, ids=IDS)
@pytest.mark.parametrize("after", [[], [b", later"]], ids=["alone", "then-later"])
def test_held_sends_stay_behind_the_sends_below_through_a_corrupt_terminate(
    status: S, after: list[bytes]
) -> None:
    """A corrupt terminate hands nothing back (spec §3.7): the held sends stay behind the
    sends still below, which the host's next terminate completes (step 4), and follow them."""
    _upload_with_held(status, [b"first, "], after, corrupt=True)


@pytest.mark.parametrize("status", FAILURES, ids=IDS)
@pytest.mark.parametrize("after", [[], [b", later"]], ids=["alone", "then-later"])
def test_a_teaming_mux_hands_back_held_sends_at_a_terminate(status: S, after: list[bytes]) -> None:
    """The teaming MUX holds the sends it fails as the pass-through IM does."""
    _upload_with_held(status, [b"first, "], after, mux=True)


@pytest.mark.parametrize("status", FAILURES, ids=IDS)
def test_a_disconnect_held_behind_them_completes_before_the_terminate(status: S) -> None:
    """A graceful disconnect the IM refused behind the held sends completes before the
    terminate (UPLOAD_IN_PROGRESS), as a target's pending one does, while the sends before it
    go back in the chain (spec §3.6.3 [EMU], §9 item 2); the host sends them and the FIN
    itself after the upload."""
    rig, _ = _single()
    conn, wire = rig.open()
    rig.offload(conn)
    answers: list[tuple[str, object, object]] = []

    def answer(name: str) -> Callable[[object, object], None]:
        return lambda value, error: answers.append((name, value, error))

    rig.host.app_send(conn, b"first, ", answer("first"))
    rig.run()
    fail_next(rig.layers()["im-nic0"], "MiniportTcpOffloadSend", status)
    rig.host.app_send(conn, b"second", answer("second"))
    rig.run()
    rig.host.app_disconnect(conn, False, answer("fin"))
    rig.run()
    assert answers == []
    assert rig.call(rig.host.app_upload, conn).done
    for _ in range(3):
        wire.ack()
        rig.run()
    assert rig.problems() == []
    assert answers == [
        ("first", 7, None),
        ("second", 6, None),
        ("fin", "NDIS_STATUS_SUCCESS", None),
    ]
    assert bytes(wire.peer_received) == b"first, second"
    assert rig.host.tcbs[conn].state == "host"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.sampled_from(["send", "fail", "ack"]), min_size=1, max_size=7),
    status=st.sampled_from(FAILURES),
    corrupt=st.booleans(),
    mux=st.booleans(),
)
def test_every_send_completes_once_in_posting_order_across_the_upload(
    steps: list[str], status: S, corrupt: bool, mux: bool
) -> None:
    """Sends, sends the IM (or the teaming MUX) fails, acknowledgements, in any order; then
    the upload, its terminate corrupt or not. Every send completes once, in posting order,
    nothing is left in the IM, and the invariant checker sees nothing."""
    rig, im = _team() if mux else _single()
    conn, wire = rig.open()
    rig.offload(conn)
    answers: list[int] = []
    posted = 0
    for step in steps:
        if step == "ack":
            wire.ack()
            rig.run()
            continue
        if step == "fail":
            fail_next(im, "MiniportTcpOffloadSend", status)
        i, posted = posted, posted + 1
        rig.host.app_send(conn, b"x%d," % i, lambda value, error, i=i: answers.append(i))
        rig.run()
    if corrupt:
        fail_next(rig.target, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    assert rig.call(rig.host.app_upload, conn).done
    for _ in range(posted + 1):
        wire.ack()
        rig.run()
    assert rig.problems() == []
    assert answers == list(range(posted))
    assert im.sends_below == {} and len(im.table) == 0 and im.stats.offloads_active == 0
