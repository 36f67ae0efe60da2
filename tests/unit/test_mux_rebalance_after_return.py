"""A rebalance asked right after a failed NIC comes back (RESUME, spec §5.5), while the
connections its failure asked up are still on their way up (on no NIC for the MUX's load:
they leave their NIC, and come back wherever they are placed). Counting them where they were
made the team look even, so the rebalance moved nothing, and they then all went where the
policy put them."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.testing.factories import teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import mux_of, nic_of


def _nic_names(handles: list[NdisOffloadHandle]) -> list[str]:
    names = []
    for h in handles:
        entry = h.miniport_offload_context
        assert entry is not None
        names.append(entry.lower.lower.name)
    return names


def _offload_again(st: Stack, tree: OffloadTree, asked: list[NdisOffloadHandle]) -> None:
    """The layer above uploads `asked` and offloads each again under the same path."""
    st.top.terminate(st.top.reference_tree(tree, asked, state="delegated"))
    st.run()
    assert tree.neighbor is not None
    for handle in asked:
        root = st.top.neighbor_block(tree.neighbor)
        path = root.add_dependent(st.top.path_block(tree.paths[0]))
        wire = tree.wires[handle.id]
        block = path.add_dependent(st.top.tcp_block(wire))
        assert block.offload_handle is not None
        tree.wires[block.offload_handle.id] = wire  # the connection's handle from now on
        st.top.initiate(root)
        st.run()


def _per_nic(mux: MuxIm) -> dict[str, int]:
    return {lo.name: lo.connections for lo in mux.lower_list()}


def test_a_rebalance_right_after_a_nic_comes_back_evens_the_team_out() -> None:
    """Active-standby over two NICs: four connections on nic0, a rebalance puts two on nic1.
    nic1 fails (its two asked up) and comes back before the layer above has uploaded them;
    a rebalance then must plan for them: they leave nic1, and nic0 keeps its two. Counted
    on nic1 (2 and 2: even), it moved nothing, and active-standby put both back on nic0."""
    st = teamed_target_stack(nics=2, policy="active-standby")
    mux = mux_of(st)
    nic1 = nic_of(st, 1)
    tree = st.top.connection_tree([st.wires.open() for _ in range(4)])
    st.top.initiate(tree.root)
    st.run()
    mux.rebalance()
    st.run()
    moved = list(dict.fromkeys(e.handle for e in st.top.events))
    _offload_again(st, tree, moved)
    assert _per_nic(mux) == {"nic0": 2, "nic1": 2}
    st.top.events.clear()
    nic1.fail_adapter()  # nic1's two are asked up
    st.run()
    asked = list(dict.fromkeys(e.handle for e in st.top.events))
    assert len(asked) == 2
    nic1.recover_adapter()  # back in service before the layer above has uploaded them
    st.run()
    assert nic1.name in {lo.name for lo in mux.lower_list() if lo.in_service}
    mux.rebalance()
    st.run()
    _offload_again(st, tree, asked)
    print("per NIC", _per_nic(mux), "asked up again", _nic_names(asked))
    assert _per_nic(mux) == {"nic0": 2, "nic1": 2}, (
        f"the rebalance right after nic1 came back left {_per_nic(mux)}"
    )
    assert st.checker.violations == []


def test_a_rebalance_while_a_returning_nic_s_capabilities_are_read_waits_for_them() -> None:
    """Active-standby over two NICs, nic1 failed and empty, four connections on nic0. nic1
    comes back: at its RESUME the MUX reads its capabilities again (spec §5.5), and until the
    answer it is not in service. A rebalance asked then saw one NIC in service and did
    nothing; it waits for the answer, then moves two to nic1."""
    st = teamed_target_stack(nics=2, policy="active-standby")
    mux = mux_of(st)
    nic1 = nic_of(st, 1)
    nic1.fail_adapter()
    st.run()
    tree = st.top.connection_tree([st.wires.open() for _ in range(4)])
    st.top.initiate(tree.root)
    st.run()
    assert _per_nic(mux) == {"nic0": 4, "nic1": 0}
    nic1.recover_adapter()
    while not mux.own_queries:  # up to the MUX's capability query of nic1, not its answer
        assert st.scheduler.run_one(), "the MUX never asked nic1's capabilities again"
    mux.rebalance()
    st.run()
    asked = list(dict.fromkeys(e.handle for e in st.top.events))
    print("asked up", len(asked), "per NIC", _per_nic(mux))
    assert len(asked) == 2, f"the rebalance asked {len(asked)} connection(s) up"
    _offload_again(st, tree, asked)
    assert _per_nic(mux) == {"nic0": 2, "nic1": 2}
    assert st.checker.violations == []


def test_a_rebalance_counts_the_connections_being_offloaded() -> None:
    """Active-standby over two NICs, two connections on each. nic1 fails; the layer above
    uploads its two and offloads them again, onto nic0 (nic1 is back by then, standby). A
    rebalance asked while those initiates are below counted only the connections the MUX
    had completed (nic0 2, nic1 0) and moved one: nic0 ended with 3, nic1 with 1."""
    st = teamed_target_stack(nics=2, policy="active-standby")
    mux = mux_of(st)
    nic1 = nic_of(st, 1)
    tree = st.top.connection_tree([st.wires.open() for _ in range(4)])
    st.top.initiate(tree.root)
    st.run()
    mux.rebalance()
    st.run()
    _offload_again(st, tree, list(dict.fromkeys(e.handle for e in st.top.events)))
    assert _per_nic(mux) == {"nic0": 2, "nic1": 2}
    st.top.events.clear()
    nic1.fail_adapter()
    st.run()
    asked = list(dict.fromkeys(e.handle for e in st.top.events))
    st.top.terminate(st.top.reference_tree(tree, asked, state="delegated"))
    st.run()
    nic1.recover_adapter()
    st.run()
    st.top.events.clear()
    assert tree.neighbor is not None
    root = st.top.neighbor_block(tree.neighbor)
    path = root.add_dependent(st.top.path_block(tree.paths[0]))
    for handle in asked:
        wire = tree.wires[handle.id]
        block = path.add_dependent(st.top.tcp_block(wire))
        assert block.offload_handle is not None
        tree.wires[block.offload_handle.id] = wire
    st.top.initiate(root)
    while not any(c.op == "Initiate" for c in mux.call_entries):  # placed, not completed
        assert st.scheduler.run_one(), "the initiate never reached the NICs"
    mux.rebalance()
    st.run()
    again = list(dict.fromkeys(e.handle for e in st.top.events))
    _offload_again(st, tree, again)
    print("per NIC", _per_nic(mux), "moved", len(again))
    assert _per_nic(mux) == {"nic0": 2, "nic1": 2}, f"left {_per_nic(mux)}"
    assert st.checker.violations == []
