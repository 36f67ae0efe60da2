"""A rebalance plans nothing for a connection the MUX itself failed as corrupt (spec §3.7,
§5.5).

The MUX fails a terminate it raised on as one that found the state corrupt
(`MuxIm.fail_unserved_terminate`, spec §3.7 steps 1-3): `HardwareFailure` and an abort go up
for each connection, which lives on, FAILED, until the layer above terminates it again, and is
never offloaded again. One the failover had asked up stays among those on their way up
(`MuxIm.evacuating`) until then, with no NIC part of the terminate failed (`completing`): a
rebalance gave it a plan, as to one that comes back, and counted it on the NIC planned. The
plan stayed in the MUX's tables after that connection had gone, until the next rebalance or
until the MUX carried nothing."""

from __future__ import annotations

from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from tests.unit.mux_rig import mux_fails_terminate_as_corrupt, nic_of
from tests.unit.test_mux_rebalance_plans import (
    _asked,
    _drain,
    _entry,
    _offload_again,
    _per_nic,
    _team,
    _terminate,
)


def test_a_connection_the_mux_failed_as_corrupt_gets_no_plan() -> None:
    """Round robin over two NICs: c0, c2 on nic0, c1, c3 on nic1. nic1 is taken out (c1, c3
    asked up). The MUX raises on the layer above's terminate of c1 and fails it as corrupt:
    c1 is aborted, and never comes back. nic1 is put back and a rebalance runs: only c3 is
    planned, and the plans are all used once it is offloaded again."""
    st, mux, tree = _team("round-robin", 4)
    c0, c1, c2, c3 = tree.tcp
    nic0, nic1 = nic_of(st, 0), nic_of(st, 1)
    assert [_entry(h).lower.lower for h in tree.tcp] == [nic0, nic1, nic0, nic1]
    mux.lower_down(_entry(c1).lower)
    st.run()
    assert _asked(st) == [c1, c3]
    mux_fails_terminate_as_corrupt(st, mux, tree, c1)
    corrupt = _entry(c1)
    assert corrupt.lifecycle.phase is Phase.FAILED and not corrupt.completing
    assert [
        TcpUploadReason(e.info)
        for e in st.top.events
        if e.handle is c1 and e.event_type is TcpOffloadEventType.TcpIndicateRetrieve
    ] == [TcpUploadReason.UploadRequested, TcpUploadReason.HardwareFailure]
    mux.lower_up(corrupt.lower)
    st.run()
    mux.rebalance()
    plans = {key: lo.name for key, lo in mux.placement.moves.items()}
    assert plans == {_entry(c3).key: "nic1"}, plans
    # the layer above's further terminate of c1 (spec §3.7 step 4), c3 uploaded and
    # offloaded again where planned: no plan is left while the MUX still carries c0 and c2
    _terminate(st, tree, [c1, c3])
    _offload_again(st, tree, c3)
    assert _per_nic(mux) == {"nic0": 2, "nic1": 1}
    assert mux.placement.moves == {}
    assert {_entry(h).lower.lower for h in (c0, c2)} == {nic0}
    _drain(st, tree, list(tree.tcp))
