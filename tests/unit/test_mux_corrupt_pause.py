"""A connection found corrupt in its terminate holds the MUX's PAUSE no longer once that
terminate has completed above, whoever found it corrupt: its NIC, or the MUX failing a
terminate it could not serve (`MuxIm.fail_unserved_terminate`, spec §3.7 steps 1-3).

The failover asked it up (PAUSE above, spec §5.5). Its terminate fails, FAILURE in its block,
then `HardwareFailure` and an abort: it is never offloaded again, and lives on only for the
host's further terminate (step 4), which the host sends once it has heard all that. The PAUSE
stops new offloads only (spec §5.5), and the RESUME says the evacuation is over: nothing
comes back for that connection, so the MUX RESUMEs once the others are up, as it did for one
its NIC found corrupt (`MuxIm._terminated_above`, `failover.evacuated`). One the MUX failed
itself stayed among those on their way up (`MuxIm.evacuating`) until that further terminate
had completed, the whole team paused meanwhile — for ever above a layer that never sends it."""

from __future__ import annotations

import pytest

from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.factories import fail_next
from tests.unit.mux_rig import mux_fails_terminate_as_corrupt, nic_of
from tests.unit.test_mux_rebalance_plans import _asked, _drain, _entry, _team, _terminate

PAUSE = S.NDIS_STATUS_OFFLOAD_PAUSE
RESUME = S.NDIS_STATUS_OFFLOAD_RESUME


@pytest.mark.parametrize("found_by", ["nic", "mux"])
def test_the_pause_ends_when_the_corrupt_terminate_completes_above(found_by: str) -> None:
    """Round robin over two NICs: c0 on nic0, c1 on nic1. nic1 is taken out: c1 is asked up
    between PAUSE and RESUME. Its terminate fails as corrupt (nic1 finds it so, or the MUX
    raises on it): the MUX RESUMEs as the failure completes above, c1 still FAILED; the
    further terminate takes it, and nothing pauses again."""
    st, mux, tree = _team("round-robin", 2)
    c0, c1 = tree.tcp
    assert _entry(c1).lower.lower is nic_of(st, 1)
    mux.lower_down(_entry(c1).lower)
    st.run()
    assert _asked(st) == [c1]
    assert mux.paused_above
    statuses = st.top.status_indications
    assert [s for _, s in statuses] == [PAUSE]
    done = len(st.top.state_completions)
    if found_by == "nic":
        fail_next(nic_of(st, 1), "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
        st.top.terminate(st.top.reference_tree(tree, [c1], state="delegated"))
        st.run()
    else:
        mux_fails_terminate_as_corrupt(st, mux, tree, c1)
    (completion,) = st.top.state_completions[done:]
    assert completion.statuses[-1] == S.NDIS_STATUS_FAILURE  # c1's, after the placeholders
    assert _entry(c1).lifecycle.phase is Phase.FAILED
    assert TcpUploadReason.HardwareFailure in [
        TcpUploadReason(e.info)
        for e in st.top.events
        if e.handle is c1 and e.event_type is TcpOffloadEventType.TcpIndicateRetrieve
    ]
    # c1 comes back no more: the evacuation is over, whoever found it corrupt
    assert not mux.evacuating, mux.leftovers()
    assert not mux.paused_above
    assert [s for _, s in statuses] == [PAUSE, RESUME]
    _terminate(st, tree, [c1])  # step 4's terminate
    assert set(st.top.state_completions[-1].statuses) == {S.NDIS_STATUS_SUCCESS}
    assert [s for _, s in statuses] == [PAUSE, RESUME]
    _drain(st, tree, [c0])
