"""The RESUME that ends the upload of the connections on a stray path copy (one its NIC
could not move back, `relink._undone`) waits for that copy to have gone, whatever kept the
copy a moment longer once its last connection was up (spec §5.5, §3.8).

A rebalance may plan those connections back onto that NIC: the copy goes with the last of
them, and the connections come back at the RESUME, under a fresh copy there
(`failover._lingering`). A connection offloaded again while the stray copy is still there
is not linked under it (`mux._avoiding`): its plan is dropped and the policy places it
elsewhere, while the rebalance counted it on the planned NIC.
test_mux_rebalance_strays has the RESUME wait for the copy's terminate once it is below.
Here a query of the path from the layer above reached the stray copy before its last
connection was up: the copy could not be terminated then (no terminate before the
operation below it completes, spec §3.1, §9 item 7), nor was it TERMINATING, and the RESUME
went; the copy's terminate followed the query's completion, after the RESUME."""

from __future__ import annotations

from chimneyd.ndis.blocks import new_neighbor_block, new_path_block
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from tests.unit.mux_rig import mux_of
from tests.unit.test_mux_rebalance_plans import _drain, _entry, _offload_again
from tests.unit.test_mux_rebalance_strays import _three_with_strays

RESUME = S.NDIS_STATUS_OFFLOAD_RESUME


def test_the_resume_waits_for_a_stray_copy_a_query_held_back() -> None:
    """The rebalance plans c0 and c2 back onto nic0 (the fewest there), where their path's
    copy is a stray. The layer above uploads them and queries the path, the query reaching
    nic0's stray copy: when the last of them is up the copy still has the query below it,
    and is terminated once the query is back. The RESUME comes after that: c0, offloaded
    again as soon as the layer above hears the RESUME, lands on nic0 as planned."""
    st, tree, n2 = _three_with_strays()
    c0, _c1, c2 = tree.tcp
    mux = mux_of(st)
    path = _entry(c0).path
    nic0 = _entry(c0).lower
    stray = path.instances[nic0.id]
    mux.rebalance()
    plans = {k: lo.name for k, lo in mux.placement.moves.items()}
    assert plans == {_entry(c0).key: "nic0", _entry(c2).key: "nic0"}, plans
    top = st.top
    top.terminate(top.reference_tree(tree, [c2], state="delegated"))
    top.terminate(top.reference_tree(tree, [c0], state="delegated"))
    query = new_neighbor_block(None)
    query.add_dependent(new_path_block(tree.paths[0]))
    top.query(query)  # to one copy of the path: nic0's, the first
    queried = False
    while RESUME not in [s for _, s in top.status_indications]:
        queried = queried or stray.pending_ops > 0
        assert st.scheduler.run_one(), mux.leftovers()
    assert queried  # the query did reach the stray copy
    # the RESUME is heard: the stray copy has gone from nic0 by then
    assert path.instances.get(nic0.id) is not stray, stray.lifecycle.phase
    assert stray.lifecycle.phase is not Phase.TERMINATING
    for handle in (c0, c2):
        tree.tcp.remove(handle)
    _offload_again(st, tree, c0)  # as soon as the layer above hears the RESUME
    assert _entry(tree.tcp[-1]).lower.lower.name == "nic0"
    mux.placement.moves.clear()  # c2's: the layer above closed it instead
    top.terminate(new_neighbor_block(n2))
    st.run()
    _drain(st, tree, list(tree.tcp))
