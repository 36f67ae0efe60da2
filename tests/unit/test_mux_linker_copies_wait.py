"""A NIC's copy of a neighbor that an initiate the MUX has sent to that NIC names as a linker
is not terminated before that initiate completes there (spec §3.1: a neighbor or path goes
only once nothing depends on it; §2.3: a linker's new state hangs under the object it names).

The shape, one layer below the host's (`test_host_terminate_waits_held_initiate`): a new
connection's initiate goes to a NIC linking it under that NIC's copies of its neighbor and
path, and is held on its way there (or by the NIC); meanwhile a next-hop change (spec §3.4
(b)) moves the path's copies under a second neighbor's copies. Nothing the MUX counts hangs
under the first neighbor's copy on that NIC any more — but the held initiate still names it.
Terminated as unused at once, its terminate overtook the initiate, and the NIC took the
linker for an object it no longer had."""

from __future__ import annotations

from chimneyd.ndis.blocks import new_neighbor_block, new_path_block
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import teamed_target_stack
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import assert_all_drained, mux_of, nic_of


def _hold_initiate_to(st: Stack, nic: object) -> object:
    """Deliver until the MUX's initiate to `nic` is next; take it out of the queue."""
    queue = st.scheduler.queue
    while True:
        assert queue, "no initiate went to the NIC"
        layer, fn, _args = queue[0]
        if layer is nic and getattr(fn, "__name__", "") == "MiniportInitiateOffload":
            return queue.popleft()
        st.scheduler.run_one()


def test_a_neighbor_copy_waits_for_an_initiate_held_below_that_links_under_it() -> None:
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    mux = mux_of(st)
    nic0 = nic_of(st, 0)
    tree = top.connection_tree([st.wires.open(), st.wires.open()])  # nic0, nic1
    top.initiate(tree.root)
    st.run()
    n2 = top.neighbor_block()
    top.initiate(n2)
    st.run()
    assert n2.offload_handle is not None
    # a third connection on the path: round robin places it on nic0, linked under nic0's
    # copies of the neighbor and the path; its initiate is held on its way to nic0
    root = top.neighbor_block(tree.neighbor)
    path = root.add_dependent(top.path_block(tree.paths[0]))
    tcp = path.add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(root)
    held = _hold_initiate_to(st, nic0)
    st.run()
    # the next-hop change: the path's copies go under n2's copies, on both NICs
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(tree.paths[0]))
    top.update(move)
    st.run()
    ok = S.NDIS_STATUS_SUCCESS
    assert top.state_completions[-1].statuses == [ok, ok]
    # nic0's copy of the first neighbor is still there: the held initiate names it
    (first,) = [v for v in mux.vobj_table.values() if v.upper is tree.neighbor]
    (lower0,) = [lo for lo in mux.lower_list() if lo.name == nic0.name]
    copy = first.instances.get(lower0.binding.id)
    assert copy is not None, "nic0's copy of the first neighbor went with an initiate naming it"
    assert copy.lifecycle.phase is Phase.OFFLOADED
    st.scheduler.queue.append(held)
    st.run()
    assert st.checker.violations == []
    # the connection offloaded under the path, which hangs under n2 on nic0 by then; the
    # first neighbor's copy there went once the initiate was back: nothing depends on it
    completion = top.state_completions[-1]
    assert completion.op == "Initiate" and completion.root is root
    assert completion.statuses[-1] == ok
    assert lower0.binding.id not in first.instances
    (second,) = [v for v in mux.vobj_table.values() if v.upper is n2.offload_handle]
    on_nic0 = list(nic0.connections())
    assert len(on_nic0) == 2  # the first connection and the new one
    assert {c.path.neighbor.upper for c in on_nic0} == {second.instances[lower0.binding.id].handle}
    top.terminate(
        top.reference_tree(tree, [*tree.tcp, tcp.offload_handle], with_path=True, state="delegated")
    )
    st.run()
    top.terminate(new_neighbor_block(tree.neighbor))
    top.terminate(new_neighbor_block(n2.offload_handle))
    st.run()
    assert_all_drained(st)
