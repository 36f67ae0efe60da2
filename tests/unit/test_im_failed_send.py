"""A send the pass-through IM fails (a `fail_next` fault) while an earlier send is still below
it, at the NIC and unacknowledged: the failure completes after that send, never before it
(completions keep posting order), and then the connection is uploaded (spec §4.1). Host → IM
→ target over an in-memory wire, acknowledgements as the test says."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.ndis.status import NdisStatus as S
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
