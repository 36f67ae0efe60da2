"""The RESUME that ends an evacuation whose last connection the MUX fails as corrupt (a
terminate it could not serve, `MuxIm.fail_unserved_terminate`) reaches the layer above after
that terminate's completion and its indications (spec §3.7 steps 1-3, §5.5).

The RESUME says the evacuation is over; the failed completion, the `HardwareFailure` request
and the abort say how this connection ended. A RESUME ahead of them would reach the layer
above while it still counted the connection among those on their way up: it would hear of the
request no longer paused (a host offers again at RESUME only what it was asked for while
paused), and of the end of an evacuation before the end of its last connection.
test_mux_corrupt_pause checks that the RESUME comes; this checks where. (A terminate its NIC
finds corrupt is not checked here: the NIC indicates the request and the abort after its
completion, and the MUX RESUMEs at that completion, before them.)
"""

from __future__ import annotations

from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from tests.unit.mux_rig import mux_fails_terminate_as_corrupt
from tests.unit.test_mux_rebalance_plans import _drain, _entry, _team, _terminate


def test_the_resume_follows_the_failed_terminate_and_its_indications() -> None:
    """Round robin over two NICs: c1 on nic1, taken out, is asked up between PAUSE and
    RESUME; the MUX raises on its terminate, which fails as corrupt. What reaches the layer
    above from then on, in order: the failed completion, `TcpIndicateRetrieve
    (HardwareFailure)`, the abort, and only then the RESUME."""
    st, mux, tree = _team("round-robin", 2)
    c0, c1 = tree.tcp
    mux.lower_down(_entry(c1).lower)
    st.run()
    assert mux.paused_above
    top = st.top
    start = len(st.scheduler.log)
    mux_fails_terminate_as_corrupt(st, mux, tree, c1)
    seen: list[str] = []
    for delivery in st.scheduler.log[start:]:
        if delivery.layer is not top:
            continue
        if delivery.handler == "ProtocolTcpOffloadEvent":
            _, event_type, info = delivery.args[-3:]
            if event_type is TcpOffloadEventType.TcpIndicateRetrieve:
                seen.append(f"retrieve {TcpUploadReason(info).name}")
            else:
                seen.append(event_type.name)
        elif delivery.handler == "ProtocolStatusEx":
            seen.append(delivery.args[-1].name)
        else:
            seen.append(delivery.handler)
    assert seen == [
        "ProtocolTerminateOffloadComplete",
        "retrieve HardwareFailure",
        "TcpIndicateAbort",
        "NDIS_STATUS_OFFLOAD_RESUME",
    ], seen
    _terminate(st, tree, [c1])  # step 4's terminate
    _drain(st, tree, [c0])
