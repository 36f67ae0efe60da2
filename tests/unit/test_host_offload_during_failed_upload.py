"""A `tcp.offload` asked while the connection's upload is in flight waits for the upload to be
over (docs/rpc.md `tcp.offload`: "one being ... uploaded answers once that is over"). When
that terminate fails (corrupt hardware, spec §3.7), the upload is not over: the connection
is FAILED, `tcp.info` says `offloaded`, and only the host's next terminate is left for it.
The offload keeps waiting meanwhile and records no refusal, so `tcp.info` never shows
`state: offloaded` beside an `offload_refused` (docs/rpc.md: the field tells why the last
offload was refused, and an offloaded connection has none). Once the next terminate has
brought the connection back, reset by the target's abort (§3.7 steps 2-5), the offload is
answered by that state (`INVALID_STATE`), and `offload_refused` tells that answer beside
`state: host`."""

from __future__ import annotations

from chimneyd.drivers.host.adapter import refusal_info
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_let_go_completions import _drained, _offloaded


def test_an_offload_asked_during_an_upload_that_fails_waits_and_never_contradicts() -> None:
    rig = HostRig()
    host = rig.host
    (conn,) = _offloaded(rig, 1)
    tcb = host.tcbs[conn]
    fail_next(rig.target, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    upload, offload = Reply(), Reply()
    host.app_upload(conn, upload)
    host.after_batch()
    host.app_offload(conn, None, offload)
    assert tcb.state == "uploading" and not offload.done
    phases = []
    queue = rig.scheduler.queue
    while queue:
        rig.scheduler.run_one()
        host.after_batch()
        phases.append(tcb.lifecycle.phase)
        if tcb.state == "offloaded":
            assert refusal_info(tcb) is None, (tcb.state, refusal_info(tcb))
        if not upload.done:
            assert not offload.done, offload  # answered once the upload is over, not before
    assert Phase.FAILED in phases, phases  # the terminate failed, and the offload waited
    assert upload.done and offload.done, (upload, offload)
    assert offload.error is not None and offload.error.symbol == "INVALID_STATE", offload
    assert tcb.state == "host" and tcb.reset
    assert refusal_info(tcb) == {"status": None, "layer": "tcpip", "reason": str(offload.error)}
    _drained(rig, [conn])
