"""A neighbor copy that a terminate from above holds back (another neighbor's path copy still
under it on its NIC, `MuxIm._terminate`) may go before that terminate's parts on the other
NICs are back. The terminate then completes once they are, as when the copy goes after."""

from __future__ import annotations

from chimneyd.ndis.blocks import (
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
)
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import teamed_target_stack
from tests.unit.mux_rig import assert_all_drained, mux_of, nic_of


def test_a_held_back_copy_gone_before_the_other_nics_parts_are_back() -> None:
    st = teamed_target_stack(nics=3, policy="round-robin")
    top = st.top
    mux = mux_of(st)
    nic1, nic2 = nic_of(st, 1), nic_of(st, 2)
    tree = top.connection_tree([st.wires.open() for _ in range(5)])  # nic0 1 2 0 1: path P
    top.initiate(tree.root)
    st.run()
    root = top.neighbor_block(tree.neighbor)  # a second path of the same neighbor: nic2
    p3 = root.add_dependent(top.path_block())
    tcp3 = p3.add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(root)
    st.run()
    n2 = top.neighbor_block()
    top.initiate(n2)
    st.run()
    assert n2.offload_handle is not None
    assert p3.offload_handle is not None and tcp3.offload_handle is not None
    on_nic1 = [tree.tcp[1], tree.tcp[4]]
    nic1.fail_adapter()  # its connections are asked up; its copy of P stays under the old one's
    st.run()
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(tree.paths[0]))
    top.update(move)
    st.run()
    ok = S.NDIS_STATUS_SUCCESS
    assert top.state_completions[-1].statuses == [ok, ok]
    top.terminate(top.reference_tree(tree, on_nic1[:1], state="delegated"))
    st.run()
    done = len(top.state_completions)
    old = new_neighbor_block(tree.neighbor)  # with its other path and connection (nic2)
    block = old.add_dependent(new_path_block(p3.offload_handle))
    block.add_dependent(new_tcp_block(tcp3.offload_handle)).delegated = TcpOffloadStateDelegated()
    top.terminate(old)  # nic2's part goes now; nic1's copy is held back, P's copy under it
    top.terminate(top.reference_tree(tree, on_nic1[1:], state="delegated"))
    # every delivery but nic2's part: nic1's last connection goes, and with it P's copy and
    # the old neighbor's copy there, while the terminate's part on nic2 is still out
    queue = st.scheduler.queue
    postponed = []
    while queue:
        layer, fn, _args = queue[0]
        if layer is nic2 and getattr(fn, "__name__", "") == "MiniportTerminateOffload":
            postponed.append(queue.popleft())
            continue
        st.scheduler.run_one()
    assert postponed, "nic2's part was not sent at once"
    assert not nic1.table, "the old neighbor's copy on nic1 has not gone yet"
    assert [c.op for c in top.state_completions[done:]] == ["Terminate"]
    queue.extend(postponed)
    st.run()
    assert [c.op for c in top.state_completions[done:]] == ["Terminate", "Terminate"], (
        mux.leftovers()
    )
    assert [b.status for b in (old, block)] == [ok, ok]
    nic1.recover_adapter()
    st.run()
    rest = [h for h in tree.tcp if h not in on_nic1]
    top.terminate(top.reference_tree(tree, rest, with_path=True, state="delegated"))
    st.run()
    top.terminate(new_neighbor_block(n2.offload_handle))
    st.run()
    assert_all_drained(st)
