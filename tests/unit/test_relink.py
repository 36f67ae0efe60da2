"""A path moved to another neighbor by an update (spec §3.4 (b), the next-hop change): the
target's own connection → path → neighbor pointers follow (§2.3), the old neighbor can then
be terminated, and a neighbor's new cached values include the host's reachable time (§5.4)."""

from __future__ import annotations

import pytest

from chimneyd.ndis.blocks import NeighborOffloadStateCached, new_neighbor_block, new_path_block
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing import Stack
from chimneyd.testing.factories import (
    loopback_target_stack,
    make_loopback_target,
    make_passthrough,
    teamed_target_stack,
)


def _stack(below: str) -> Stack:
    if below == "nic":
        return loopback_target_stack()
    if below == "team":
        return teamed_target_stack(nics=1)
    stack = Stack()  # protocol stub → pass-through IM → the target
    im = make_passthrough(stack, "im0")
    nic = make_loopback_target(stack, "nic0")
    stack.under_test = [im, nic]
    stack.ndis.bind(stack.top, im)
    stack.ndis.bind(im, nic)
    return stack


@pytest.mark.parametrize("below", ["nic", "im", "team"])
def test_the_next_hop_change_moves_the_path_and_frees_the_old_neighbor(below: str) -> None:
    """Offload a new neighbor, relink the path under it, terminate the old one: each step
    succeeds, the connection carries on, and every table drains once it is gone."""
    st = _stack(below)
    top = st.top
    wire = st.wires.open()
    tree = top.connection_tree([wire])
    top.initiate(tree.root)
    st.run()
    (tcp,) = tree.tcp
    n2 = top.neighbor_block()
    top.initiate(n2)
    st.run()
    assert top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS]
    root = new_neighbor_block(n2.offload_handle)
    root.add_dependent(new_path_block(tree.paths[0]))
    top.update(root)
    st.run()
    assert top.state_completions[-1].op == "Update"
    assert top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS] * 2
    top.terminate(new_neighbor_block(tree.neighbor))  # nothing hangs below it now
    st.run()
    assert top.state_completions[-1].op == "Terminate"
    assert top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS]
    top.send(tcp, b"still carried")
    st.run()
    wire.ack()
    st.run()
    assert bytes(wire.peer_received) == b"still carried"
    top.terminate(top.reference_tree(tree, [tcp], with_path=True, state="delegated"))
    st.run()
    top.terminate(new_neighbor_block(n2.offload_handle))
    st.run()
    assert st.drain_problems() == []


def test_the_target_moves_its_path_context() -> None:
    st = loopback_target_stack()
    top = st.top
    tree = top.connection_tree([st.wires.open()])
    top.initiate(tree.root)
    st.run()
    (tcp,) = tree.tcp
    old = tree.neighbor.miniport_offload_context
    n2 = top.neighbor_block()
    top.initiate(n2)
    st.run()
    new = n2.offload_handle.miniport_offload_context
    root = new_neighbor_block(n2.offload_handle)
    root.add_dependent(new_path_block(tree.paths[0]))
    top.update(root)
    st.run()
    assert tcp.miniport_offload_context.path.neighbor is new
    assert (old.dependents, new.dependents) == (0, 1)


@pytest.mark.parametrize("confirmed", [False, True])
def test_a_neighbor_the_host_confirms_by_an_update_is_not_queried_as_stale(
    confirmed: bool,
) -> None:
    """Idle past the stale time, a send makes the NIC ask the host whether the neighbor is
    reachable (spec §5.4), unless the host has just told it so: an update of the neighbor's
    cached variables with a HostReachabilityDelta of 0."""
    st = loopback_target_stack()
    top = st.top
    tree = top.connection_tree([st.wires.open()])
    top.initiate(tree.root)
    st.run()
    (tcp,) = tree.tcp
    st.advance(20.0)  # past NceStaleTicks, with no forward progress
    if confirmed:
        root = new_neighbor_block(tree.neighbor)
        root.cached = NeighborOffloadStateCached(
            DlDestinationAddress=b"\x02\x00\x00\x00\x00\x01", HostReachabilityDelta=0
        )
        top.update(root)
        st.run()
        assert top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS]
    top.send(tcp, b"hello")
    st.run()
    assert len(top.offload_events) == (0 if confirmed else 1)
