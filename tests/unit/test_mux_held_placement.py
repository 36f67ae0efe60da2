"""A teaming MUX holds an initiate while a copy it needs on the chosen NIC is still settling
there (spec §3.1) or corrupt (spec §3.7). The NIC chosen first for each of its connections
holds across the retries: round robin's turn does not move on again, and a rebalance's planned
move (`failover.rebalance`) is not lost to the policy's choice."""

from __future__ import annotations

from chimneyd.ndis.blocks import OffloadBlock
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.memwire import MemoryWire
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack


def _under(
    st: Stack, tree: OffloadTree, wires: list[MemoryWire]
) -> tuple[OffloadBlock, list[NdisOffloadHandle]]:
    """An initiate of connections over `wires` under `tree`'s path and neighbor (linkers)."""
    root = st.top.neighbor_block(tree.neighbor)
    path = root.add_dependent(st.top.path_block(tree.paths[0]))
    handles: list[NdisOffloadHandle] = []
    for wire in wires:
        block = path.add_dependent(st.top.tcp_block(wire))
        assert block.offload_handle is not None
        handles.append(block.offload_handle)
    return root, handles


def _nic(handle: NdisOffloadHandle) -> str:
    entry = handle.miniport_offload_context
    assert entry is not None, "the connection was never offloaded"
    name: str = entry.lower.lower.name
    return name


def _drain(st: Stack, tree: OffloadTree, tcp: list[NdisOffloadHandle]) -> None:
    st.top.terminate(st.top.reference_tree(tree, tcp, state="delegated"))
    st.run()
    st.top.terminate(st.top.reference_tree(tree, [], with_path=True, with_neighbor=True))
    st.run()
    mux = st.under_test[0]
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.checker.violations == []
    assert st.drain_problems() == []


def test_round_robin_keeps_the_nic_it_chose_for_a_held_initiate() -> None:
    """Round robin over two NICs: the third connection's turn is nic0, whose copies of the
    path and neighbor a terminate has just found corrupt. The initiate waits for the layer
    above to terminate the failed connection again (spec §3.7 step 4), then goes to nic0,
    under fresh copies: the retry is the same initiate, not a new turn."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    nic0 = st.under_test[1]
    tree = st.top.connection_tree([st.wires.open(), st.wires.open()])
    st.top.initiate(tree.root)
    st.run()
    first, second = tree.tcp
    assert (_nic(first), _nic(second)) == ("nic0", "nic1")
    fail_next(nic0, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()

    root, (third,) = _under(st, tree, [st.wires.open()])
    st.top.initiate(root)
    st.run()
    assert third.miniport_offload_context is None  # held: nic0's copies are corrupt
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()
    assert _nic(third) == "nic0"  # the NIC chosen first; nic1 would be a second turn
    _drain(st, tree, [second, third])


def test_a_rebalanced_connection_held_at_its_reinitiate_still_goes_where_planned() -> None:
    """Active-standby: four connections on nic0; a rebalance plans two of them for nic1 and
    asks them up. The layer above offloads them again, one initiate each, back to back: the
    first makes a copy of the path on nic1, still being offloaded when the second arrives,
    which is held for it (spec §3.1). Once held, the second must still go to nic1, as the
    rebalance planned, not back to the active NIC."""
    st = teamed_target_stack(nics=2, policy="active-standby")
    mux = st.under_test[0]
    wires = [st.wires.open() for _ in range(4)]
    tree = st.top.connection_tree(wires)
    st.top.initiate(tree.root)
    st.run()
    assert {_nic(h) for h in tree.tcp} == {"nic0"}
    mux.rebalance()
    st.run()
    asked = [e.handle for e in st.top.events]
    assert len(asked) == 2
    st.top.terminate(st.top.reference_tree(tree, asked, state="delegated"))
    st.run()
    again: list[NdisOffloadHandle] = []
    for handle in asked:
        root, handles = _under(st, tree, [tree.wires[handle.id]])
        again += handles
        st.top.initiate(root)
    st.run()
    assert [_nic(h) for h in again] == ["nic1", "nic1"]
    staying = [h for h in tree.tcp if h not in asked]
    _drain(st, tree, staying + again)
