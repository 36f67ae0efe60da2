"""A NIC that keeps finding the MUX's copy of a path or neighbor corrupt (spec §3.7). The MUX
terminates a copy whose terminate failed once more at once (step 4: that is the terminate
that completes it); when that one fails too, it tries again only after a wait that doubles
each time (`mux.CORRUPT_RETRY_FIRST` up to `mux.CORRUPT_RETRY_MAX` seconds), and places no
more connections of that object on that NIC for the rest of the object's life: they go to
the other NICs, or are refused at once when none is left, rather than wait for the copy."""

from __future__ import annotations

from chimneyd.drivers.base import FailNext
from chimneyd.drivers.mux import mux as mux_module
from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack

FOREVER = 1000  # a NIC that finds the copies corrupt at every terminate, as far as a test goes


def _new_connection(st: Stack, tree: OffloadTree) -> tuple[OffloadBlock, NdisOffloadHandle]:
    root = st.top.neighbor_block(tree.neighbor)
    block = root.add_dependent(st.top.path_block(tree.paths[0])).add_dependent(
        st.top.tcp_block(st.wires.open())
    )
    assert block.offload_handle is not None
    return root, block.offload_handle


def _terminates_failed(fault: FailNext) -> int:
    return FOREVER - fault.count


def _corrupt_copies_on_nic0(nics: int) -> tuple[Stack, OffloadTree, FailNext]:
    """Round robin: the first connection goes to nic0, which offloads the MUX's copies of the
    path and neighbor but fails the connection; the copies, left with nothing to carry, are
    terminated by the MUX, and nic0 finds them corrupt at every terminate."""
    st = teamed_target_stack(nics=nics, policy="round-robin")
    nic0 = st.under_test[1]
    fail_next(nic0, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    fail_next(nic0, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE, count=FOREVER)
    fault = nic0.fail_next[-1]
    tree = st.top.connection_tree([st.wires.open()])
    st.top.initiate(tree.root)
    st.run()
    return st, tree, fault


def test_a_copy_found_corrupt_again_and_again_is_terminated_again_with_a_growing_wait() -> None:
    st, tree, fault = _corrupt_copies_on_nic0(nics=2)
    mux = st.under_test[0]
    # the MUX's terminate of the copies failed, and its one terminate again at once too
    assert _terminates_failed(fault) == 2, "the MUX terminated the corrupt copies in a loop"
    first = mux_module.CORRUPT_RETRY_FIRST
    st.advance(first * 0.99)
    assert _terminates_failed(fault) == 2
    st.advance(first * 0.02)
    assert _terminates_failed(fault) == 3
    st.advance(first * 1.9)  # the next wait is twice as long
    assert _terminates_failed(fault) == 3
    st.advance(first * 0.2)
    assert _terminates_failed(fault) == 4
    st.advance(4 * mux_module.CORRUPT_RETRY_MAX)  # past the waits' growth
    for _ in range(5):  # they stop growing at CORRUPT_RETRY_MAX: one terminate each
        before = _terminates_failed(fault)
        st.advance(mux_module.CORRUPT_RETRY_MAX)
        assert _terminates_failed(fault) == before + 1

    # the NIC recovers: the next try terminates the copies, and everything drains
    fault.count = 0
    st.advance(mux_module.CORRUPT_RETRY_MAX)
    assert [i for v in mux.vobj_table.values() for i in v.instances.values()] == []
    st.top.terminate(st.top.reference_tree(tree, [], with_path=True, with_neighbor=True))
    st.run()
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.checker.violations == []
    assert st.drain_problems() == []


def test_the_path_goes_on_the_other_nic_not_back_to_the_one_that_keeps_corrupting_it() -> None:
    """After that, nic0's turn comes for a new connection under the path: it goes to nic1 at
    once, instead of waiting under (or for) nic0's corrupt copies."""
    st, tree, fault = _corrupt_copies_on_nic0(nics=2)
    mux = st.under_test[0]
    (lost,) = tree.tcp
    conns = []
    for _ in range(3):  # turns: nic1, nic0, nic1
        root, handle = _new_connection(st, tree)
        done = len(st.top.state_completions)
        st.top.initiate(root)
        st.run()
        assert len(st.top.state_completions) == done + 1, "the initiate waits for nic0"
        (block,) = [b for b in walk(root) if b.offload_handle is handle]
        assert block.status == S.NDIS_STATUS_SUCCESS
        entry = handle.miniport_offload_context
        assert entry is not None and entry.lower.lower.name == "nic1"
        conns.append(handle)
    corrupt = [i for v in mux.vobj_table.values() for i in v.instances.values()]
    assert {i.lower.name for i in corrupt if i.lifecycle.phase is Phase.FAILED} == {"nic0"}

    fault.count = 0
    st.advance(mux_module.CORRUPT_RETRY_MAX)
    st.top.terminate(st.top.reference_tree(tree, conns, state="delegated"))
    st.run()
    st.top.terminate(st.top.reference_tree(tree, [], with_path=True, with_neighbor=True))
    st.run()
    assert lost.miniport_offload_context is None
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.checker.violations == []
    assert st.drain_problems() == []


def test_with_no_other_nic_the_connection_is_refused_at_once() -> None:
    """One NIC, which keeps finding the path's copy corrupt: a new connection under the path
    is refused now (the host keeps it) rather than held until the copy is gone."""
    st, tree, fault = _corrupt_copies_on_nic0(nics=1)
    mux = st.under_test[0]
    root, handle = _new_connection(st, tree)
    done = len(st.top.state_completions)
    st.top.initiate(root)
    st.run()
    assert len(st.top.state_completions) == done + 1, "the initiate waits for the copy"
    (block,) = [b for b in walk(root) if b.offload_handle is handle]
    assert block.status == S.NDIS_STATUS_FAILURE
    assert mux.deferred == []

    fault.count = 0
    st.advance(mux_module.CORRUPT_RETRY_MAX)
    st.top.terminate(st.top.reference_tree(tree, [], with_path=True, with_neighbor=True))
    st.run()
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.checker.violations == []
    assert st.drain_problems() == []
