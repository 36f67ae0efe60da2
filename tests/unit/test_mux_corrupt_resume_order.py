"""The RESUME that ends an evacuation whose last connection is found corrupt in its terminate
reaches the layer above after that terminate's completion and its indications (spec §3.7
steps 1-3, §5.5), whoever found it corrupt: the MUX (a terminate it could not serve,
`MuxIm.fail_unserved_terminate`) or its NIC.

The RESUME says the evacuation is over; the failed completion, the `HardwareFailure` request
and the abort say how this connection ended. A RESUME ahead of them would reach the layer
above while it still counted the connection among those on their way up: it would hear of the
request no longer paused (a host offers again at RESUME only what it was asked for while
paused), and of the end of an evacuation before the end of its last connection.
test_mux_corrupt_pause checks that the RESUME comes; this checks where. A NIC indicates the
request and the abort after its completion: the MUX RESUMEd at that completion, before them,
until it waited for that NIC's abort (`MuxIm._relay_event`).
"""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.factories import fail_next
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import mux_fails_terminate_as_corrupt, nic_of
from tests.unit.test_mux_rebalance_plans import _drain, _entry, _team, _terminate


def _seen_above(st: Stack, start: int) -> list[str]:
    """What reached the layer above from scheduler delivery `start` on, in order."""
    seen: list[str] = []
    for delivery in st.scheduler.log[start:]:
        if delivery.layer is not st.top:
            continue
        args: Any = delivery.args
        if delivery.handler == "ProtocolTcpOffloadEvent":
            _, event_type, info = args[-3:]
            if event_type is TcpOffloadEventType.TcpIndicateRetrieve:
                seen.append(f"retrieve {TcpUploadReason(info).name}")
            else:
                seen.append(event_type.name)
        elif delivery.handler == "ProtocolStatusEx":
            seen.append(args[-1].name)
        else:
            seen.append(delivery.handler)
    return seen


@pytest.mark.parametrize("found_by", ["mux", "nic"])
def test_the_resume_follows_the_failed_terminate_and_its_indications(found_by: str) -> None:
    """Round robin over two NICs: c1 on nic1, taken out, is asked up between PAUSE and
    RESUME; its terminate fails as corrupt (the MUX raises on it, or nic1 finds it so). What
    reaches the layer above from then on, in order: the failed completion,
    `TcpIndicateRetrieve(HardwareFailure)`, the abort, and only then the RESUME."""
    st, mux, tree = _team("round-robin", 2)
    c0, c1 = tree.tcp
    assert _entry(c1).lower.lower is nic_of(st, 1)
    mux.lower_down(_entry(c1).lower)
    st.run()
    assert mux.paused_above
    start = len(st.scheduler.log)
    if found_by == "mux":
        mux_fails_terminate_as_corrupt(st, mux, tree, c1)
    else:
        fail_next(nic_of(st, 1), "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
        st.top.terminate(st.top.reference_tree(tree, [c1], state="delegated"))
        st.run()
    seen = _seen_above(st, start)
    assert seen == [
        "ProtocolTerminateOffloadComplete",
        "retrieve HardwareFailure",
        "TcpIndicateAbort",
        "NDIS_STATUS_OFFLOAD_RESUME",
    ], seen
    assert not mux.paused_above and not mux.evacuating, mux.leftovers()
    _terminate(st, tree, [c1])  # step 4's terminate
    assert set(st.top.state_completions[-1].statuses) == {S.NDIS_STATUS_SUCCESS}
    _drain(st, tree, [c0])
