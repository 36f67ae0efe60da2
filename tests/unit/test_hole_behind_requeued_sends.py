"""A send failed for good (not for an upload: a hole, spec §4.1) after earlier sends were
handed back to the host to send after the upload (refused with an upload status). With two
layers that hold failures (a teaming MUX over a pass-through IM), the IM refuses sends for an
upload while the MUX above, not knowing yet, fails a later one for good: the completions come
up in posting order, the refused ones first. The host fails whatever the application sent
before it heard of the hole (`send.hole`): the refused sends waiting in the host for the
upload too, so every send is answered in posting order, and no byte the application was told
of as failed, nor one it sent before it heard of the hole, reaches the peer."""

from __future__ import annotations

from typing import Any

from chimneyd.drivers.mux import MuxIm
from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, make_passthrough_on, make_target
from chimneyd.testing.hostrig import HostRig


def _mux_over_im() -> tuple[HostRig, MuxIm, PassthroughIm]:
    """host → MUX → IM → nic0."""
    rig = HostRig(targets=())
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "round-robin")
    timers.bind(mux)
    rig.ndis.bind(rig.host, mux)
    im = make_passthrough_on(rig.ndis, rig.clock.timers(rig.ndis.post), "im0")
    rig.ndis.bind(mux, im)
    target = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, "nic0")
    rig.targets["nic0"] = target
    rig.ndis.bind(im, target)
    rig.run()
    return rig, mux, im


def test_a_hole_after_sends_refused_for_an_upload_answers_every_send_in_posting_order() -> None:
    rig, mux, im = _mux_over_im()
    conn, wire = rig.open()
    rig.offload(conn)
    answers: list[tuple[int, Any, Any]] = []

    def send(i: int, data: bytes) -> None:
        rig.host.app_send(conn, data, lambda value, error: answers.append((i, value, error)))
        rig.run()

    send(0, b"below, ")  # at the NIC, unacknowledged
    fail_next(im, "MiniportTcpOffloadSend", S.NDIS_STATUS_REQUEST_UPLOAD)
    send(1, b"refused, ")  # the IM fails it for an upload, held behind send 0
    send(2, b"refused too, ")  # the IM refuses it, held behind
    fail_next(mux, "MiniportTcpOffloadSend", S.NDIS_STATUS_RESOURCES)
    send(3, b"failed")  # the MUX fails it for good, held behind 0, 1 and 2
    assert answers == []
    wire.ack()  # send 0 completes; the IM's, then the MUX's failures follow it up
    rig.run()
    after = len(wire.peer_received)
    send(4, b"later")  # the application has heard of the hole
    rig.run()
    for _ in range(4):
        wire.ack()
        rig.run()
    assert [i for i, _, _ in answers] == [0, 1, 2, 3, 4], answers  # posting order
    assert rig.problems() == []
    failed = {i for i, _, error in answers if error is not None}
    assert 3 in failed
    sent = [b"below, ", b"refused, ", b"refused too, ", b"failed", b"later"]
    good = b"".join(d for i, d in enumerate(sent) if i not in failed)
    assert bytes(wire.peer_received) == good, (bytes(wire.peer_received), answers, after)
    assert rig.host.tcbs[conn].state == "host"
