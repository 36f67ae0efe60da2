"""The MUX's next-hop change, corrupt-copy retry and placements against each other: a new path
placed under a copy that cannot take it, a copy a move left under the other neighbor, a NIC
failing mid-move, updates kept in order, rebalance plans that outlive their use."""

from __future__ import annotations

import pytest

from chimneyd.drivers.mux import mux as mux_module
from chimneyd.ndis.blocks import OffloadBlock, new_neighbor_block, new_path_block, walk
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import (
    MAC2,
    move_first_path,
    move_then_arp,
    mux_of,
    nic_of,
    three_nics_two_neighbors,
    two_nics_and_a_spare_neighbor,
)

FOREVER = 1000


_mux = mux_of
_nic = nic_of


def _corrupt_copies_on_nic0(nics: int) -> tuple[Stack, OffloadTree]:
    """As test_mux_corrupt_again: nic0 offloads the MUX's copies of the path and neighbor,
    fails the connection, and finds the copies corrupt at every terminate."""
    st = teamed_target_stack(nics=nics, policy="round-robin")
    nic0 = _nic(st, 0)
    fail_next(nic0, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    fail_next(nic0, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE, count=FOREVER)
    tree = st.top.connection_tree([st.wires.open()])
    st.top.initiate(tree.root)
    st.run()
    return st, tree


def test_a_new_path_under_a_neighbor_its_nic_keeps_corrupting_is_not_placed_there() -> None:
    """nic0 keeps finding its copies of the path and the neighbor corrupt (both FAILED, both
    in their wait, nic0 in both objects' `avoid`). A connection on a *new* path under that
    neighbor gets neither the avoiding (`_avoiding` is applied only to a path the MUX has
    already) nor the wait (`_settling` likewise): round robin puts the second one on nic0,
    and `_instance_for` links the new path under the neighbor's FAILED copy there, which
    takes no operation but a terminate (spec §3.7) and which the MUX promised to place no
    more connections of (mux._corrupt_again: "of a neighbor: of a path under it")."""
    st, tree = _corrupt_copies_on_nic0(nics=2)
    mux = _mux(st)
    placed: list[tuple[S, str | None, str | None]] = []
    for _ in range(2):  # turns: nic1, nic0
        root = st.top.neighbor_block(tree.neighbor)
        block = root.add_dependent(st.top.path_block()).add_dependent(
            st.top.tcp_block(st.wires.open())
        )
        st.top.initiate(root)
        st.run()
        entry = block.offload_handle.miniport_offload_context if block.offload_handle else None
        nic = entry.lower.lower.name if entry is not None else None
        under = None
        if entry is not None:
            copy = entry.path.instances[entry.lower.id].under
            under = copy.lifecycle.phase.name if copy is not None else None
        placed.append((block.status, nic, under))
    avoided = {
        i.lower.name for v in mux.vobj_table.values() for i in v.instances.values() if v.avoid
    }
    assert "nic0" in avoided
    assert all(nic != "nic0" for _, nic, _ in placed), (
        f"(status, NIC, phase of the neighbor copy the new path hangs under): {placed}"
    )


def _two_nics() -> tuple[Stack, OffloadTree, OffloadBlock]:
    """As test_mux_relink: round robin, two connections under one path (nic0, nic1), and a
    second neighbor offloaded to the MUX alone."""
    return two_nics_and_a_spare_neighbor()


def _move(st: Stack, tree: OffloadTree, n2: OffloadBlock) -> list[S]:
    return move_first_path(st, tree, n2).statuses


def test_a_new_connection_is_not_linked_under_a_stray_copy_its_nic_could_not_move_back() -> None:
    """After a failed move whose undo nic0 failed too, nic0's path copy stays under its copy
    of the new neighbor n2 (relink._undone), and its connections are asked up so that the
    copy goes and the host's terminate of n2 can complete. A new connection under the path
    placed on nic0 meanwhile must not be linked under that stray copy: nothing would ever
    ask it up, the stray would stay, and the host's terminate of n2 would wait for ever."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    nic0, nic1 = _nic(st, 0), _nic(st, 1)
    fail_next(nic0, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE, skip=1)  # the undo
    fail_next(nic1, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    assert _move(st, tree, n2) == [S.NDIS_STATUS_FAILURE] * 2
    first = tree.tcp[0]
    # a new connection under the path (the layer above has it under the old neighbor):
    # round robin's turn is nic0's
    root = st.top.neighbor_block(tree.neighbor)
    block = root.add_dependent(st.top.path_block(tree.paths[0])).add_dependent(
        st.top.tcp_block(st.wires.open())
    )
    st.top.initiate(root)
    st.run()
    assert block.status == S.NDIS_STATUS_SUCCESS and block.offload_handle is not None
    new = block.offload_handle
    # the host terminates n2 (nothing of its own under it), and uploads what it was asked
    done = len(st.top.state_completions)
    st.top.terminate(new_neighbor_block(n2.offload_handle))
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()
    st.advance(2 * mux_module.CORRUPT_RETRY_MAX)  # not a matter of time
    ops = [(c.op, c.statuses) for c in st.top.state_completions[done:]]
    nic0_under = {c.path.neighbor.upper.owner.vobj.upper for c in nic0.connections()}
    asked = [e.handle for e in st.top.events]
    print("completions", ops, "nic0's connections hang under", nic0_under, "asked up", asked)
    # nothing of nic0's hangs under n2 any more: the new connection went elsewhere (on main
    # it was linked under the stray copy on nic0, the state this line once asserted)
    assert n2.offload_handle not in nic0_under
    assert len(ops) == 2, (
        f"the terminate of n2 never completes: nic0 keeps the new connection {new} under "
        f"its stray copy (under {nic0_under}), and nothing asks it up ({asked})"
    )


def test_a_new_path_under_the_new_neighbor_while_the_move_makes_its_copy() -> None:
    """A next-hop change (relink.start, step 1) sends nic0 an initiate of a copy of the new
    neighbor n2. Before it completes, the layer above offloads a connection on a new path
    under n2, which round robin puts on nic0. `_initiate` checks `_settling` only for a path
    it has already; `_instance_for` then links the new path under n2's copy still being
    offloaded (spec §3.1: no other operation on an object until its offload completes): a
    block naming a handle whose offload has not completed is a second new offload of it,
    and the MUX raises in the middle of the layer above's initiate."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(tree.paths[0]))
    st.top.update(move)
    root = st.top.neighbor_block(n2.offload_handle)
    block = root.add_dependent(st.top.path_block()).add_dependent(st.top.tcp_block(st.wires.open()))
    st.top.initiate(root)
    st.run()  # raises ChimneyProtocolError: handle N is already offloaded
    assert [b.status for b in walk(move)] == [S.NDIS_STATUS_SUCCESS] * 2
    assert block.status == S.NDIS_STATUS_SUCCESS
    assert st.checker.violations == []


def test_new_paths_under_one_neighbor_at_once_link_only_an_offloaded_copy() -> None:
    """Not new with the next-hop change, but the same fault without it: a neighbor the MUX
    has a copy of on nic0 only; three initiates at once, each a new path with a connection
    under it: round robin puts the first on nic1 (a copy of the neighbor made there), the
    second on nic0, the third on nic1 again, linked under the copy still being offloaded:
    the MUX raises (handle already offloaded) instead of waiting (`_settling`)."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    tree = st.top.connection_tree([st.wires.open()])  # nic0
    st.top.initiate(tree.root)
    st.run()
    blocks = []
    for _ in range(3):
        root = st.top.neighbor_block(tree.neighbor)
        blocks.append(
            root.add_dependent(st.top.path_block()).add_dependent(st.top.tcp_block(st.wires.open()))
        )
        st.top.initiate(root)
    st.run()  # raises ChimneyProtocolError: handle N is already offloaded
    assert [b.status for b in blocks] == [S.NDIS_STATUS_SUCCESS] * 3
    assert st.checker.violations == []


def test_a_rebalanced_connection_closed_instead_of_offloaded_again_leaves_no_plan() -> None:
    """A rebalance plans where each connection it asks up goes next (`placement.moves`, by
    4-tuple), popped only when that connection is offloaded again. One the host closes
    instead (uploaded, never offloaded again) leaves its plan for good: the table grows with
    every rebalance, the drain check does not see it (`MuxIm.leftovers`), and a later
    connection reusing the 4-tuple is sent where the old plan says, whatever the policy."""
    st = teamed_target_stack(nics=2, policy="active-standby")
    mux = _mux(st)
    tree = st.top.connection_tree([st.wires.open() for _ in range(4)])  # all on nic0
    st.top.initiate(tree.root)
    st.run()
    mux.rebalance()
    st.run()
    asked = list(dict.fromkeys(e.handle for e in st.top.events))
    assert len(asked) == 2 and len(mux.placement.moves) == 2
    # the host uploads them and closes them (no new offload), then everything goes
    st.top.terminate(
        st.top.reference_tree(tree, None, with_path=True, with_neighbor=True, state="delegated")
    )
    st.run()
    assert mux.vobj_table == {} and mux.connections() == []
    assert st.drain_problems() == []
    assert mux.placement.moves == {}, f"plans left for closed connections: {mux.placement.moves}"


def _move_as_nic0_fails(st: Stack, tree: OffloadTree, n2: OffloadBlock) -> OffloadBlock:
    """The update moving the path under `n2`, with nic0 failing (PAUSE, UPLOAD_ALL, spec
    §5.5) before it takes its part of step 1; run until nothing is left to do."""
    assert n2.offload_handle is not None
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(tree.paths[0]))
    st.top.update(move)
    _nic(st, 0).fail_adapter()
    st.run()
    return move


def test_a_nic_failing_as_the_move_reaches_it_does_not_hold_the_move_until_it_recovers() -> None:
    """The move is planned while nic0 is in service, so its step 1 sends nic0 an initiate of a
    copy of the new neighbor; nic0 fails (PAUSE, UPLOAD_ALL, spec §5.5) before taking it. A
    failed NIC holds new offloads until its RESUME, and relink.plan only leaves out the copies
    of NICs already failed when it plans: nothing takes the copy out of the move afterwards.
    The update above then waits for nic0's recovery, which may never come, and meanwhile the
    path takes no new connection on any NIC (`_settling`: relinking), even once the host has
    uploaded everything nic0 asked up."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    mux = _mux(st)
    nic0 = _nic(st, 0)
    move = _move_as_nic0_fails(st, tree, n2)
    asked = list(dict.fromkeys(e.handle for e in st.top.events))
    assert asked == [tree.tcp[0]]  # nic0's connection, asked up by the failover
    st.top.terminate(st.top.reference_tree(tree, asked, state="delegated"))
    st.run()
    assert st.top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS] * 3
    # a new connection under the path: nic0 is out of service, so nic1 takes it
    root = st.top.neighbor_block(tree.neighbor)
    block = root.add_dependent(st.top.path_block(tree.paths[0])).add_dependent(
        st.top.tcp_block(st.wires.open())
    )
    st.top.initiate(root)
    st.run()
    st.advance(2 * mux_module.CORRUPT_RETRY_MAX)  # not a matter of time
    statuses = [b.status for b in walk(move)]
    print(
        "move",
        statuses,
        "new connection",
        block.status,
        "deferred",
        [op for op, _ in mux.deferred],
        "paused initiates on nic0",
        len(nic0.paused_initiates),
    )
    assert statuses[0] != S.NDIS_STATUS_PENDING, (
        f"the update waits for nic0's RESUME (nic0 holds {len(nic0.paused_initiates)} "
        f"initiate(s) of the move); a new connection on nic1 waits with it: {block.status!r}, "
        f"deferred {[op for op, _ in mux.deferred]}"
    )


def test_a_new_connection_is_not_linked_under_a_copy_left_under_the_old_neighbor() -> None:
    """The same hole after a move that succeeded: nic0 failed (UPLOAD_ALL) before the move,
    so relink.plan leaves nic0's path copy under its copy of the old neighbor n1 for the
    failover to take away once its connection is up. nic0 is back (RESUME) before the host
    has uploaded that connection; a new connection under the path goes to nic0 and is
    linked under that copy: under n1 on the NIC, under n2 for the layer above. Nothing asks
    it up, so the host's terminate of n1 (nothing under it any more, as far as the layer
    above knows: spec §3.4 step 4) waits as long as that connection lives, and an update of
    n2's cached values (a new MAC, §3.4 (a)) never reaches the copy the connection uses."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    nic0 = _nic(st, 0)
    nic0.fail_adapter()
    st.run()
    first = tree.tcp[0]
    assert [e.handle for e in st.top.events] == [first]  # asked up; the host is slow
    assert _move(st, tree, n2) == [S.NDIS_STATUS_SUCCESS] * 2
    nic0.recover_adapter()
    st.run()
    wire = st.wires.open()
    root = st.top.neighbor_block(n2.offload_handle)
    block = root.add_dependent(st.top.path_block(tree.paths[0])).add_dependent(
        st.top.tcp_block(wire)
    )
    st.top.initiate(root)
    st.run()
    assert block.status == S.NDIS_STATUS_SUCCESS and block.offload_handle is not None
    entry = block.offload_handle.miniport_offload_context
    nic0_under = {c.path.neighbor.upper.owner.vobj.upper for c in nic0.connections()}
    print("new connection on", entry.lower.lower.name, "nic0's connections under", nic0_under)
    # the host uploads what it was asked, then terminates the old neighbor (step 4)
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()
    done = len(st.top.state_completions)
    st.top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    st.advance(2 * mux_module.CORRUPT_RETRY_MAX)
    assert len(st.top.state_completions) == done + 1, (
        f"the new connection went on {entry.lower.lower.name} under the old neighbor's copy "
        f"({nic0_under}), and the terminate of the old neighbor waits for it"
    )


def test_a_neighbor_update_issued_after_a_move_is_not_undone_by_it() -> None:
    """The layer above moves a path to neighbor n2 with n2's cached values (a MAC, mac1),
    then updates n2's cached values again (an ARP change: mac2, spec §3.4 (a)). The move
    waits for step 1 (copies of n2 for nic0 and nic1), so the second update, relayed at once
    to n2's live copy on nic2, reaches it first; step 2 then sends every copy of n2 the
    move's mac1 (relink._move: `rl.neighbors`), and relink.finish makes mac1 the MUX's value
    for copies to come. The NICs and the MUX end with the older address, though the host's
    last word was mac2."""
    st, tree, other = three_nics_two_neighbors()
    mac2 = MAC2
    macs = move_then_arp(st, tree, other)
    assert other.neighbor is not None
    (n2,) = [v for v in _mux(st).vobj_table.values() if v.upper is other.neighbor]
    print("NICs' n2 addresses", macs, "the MUX's", n2.cached.DlDestinationAddress)
    assert macs == {"nic0": {mac2}, "nic1": {mac2}, "nic2": {mac2}}, (
        f"the last update (mac2) was overtaken by the move's older value: {macs}"
    )


def test_an_initiate_ndis_refuses_to_send_below_is_still_answered() -> None:
    """Should the MUX ever send a NIC a tree NDIS refuses (as it did when it linked a new
    path under a copy still being offloaded: the test above), the initiate is already in its
    call entries, so NDIS does not fail it for the MUX (`keeps`). It must complete all the
    same, the refused NIC's part failed as a NIC would fail it (spec §3.2.4): here the
    placement check is switched off to make NDIS refuse the third initiate's tree."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    tree = st.top.connection_tree([st.wires.open()])  # nic0
    st.top.initiate(tree.root)
    st.run()
    mux = _mux(st)
    mux._settling = lambda vobj, lower: False  # type: ignore[method-assign]
    blocks = []
    for _ in range(3):
        root = st.top.neighbor_block(tree.neighbor)
        blocks.append(
            root.add_dependent(st.top.path_block()).add_dependent(st.top.tcp_block(st.wires.open()))
        )
        st.top.initiate(root)
    with pytest.raises(ChimneyProtocolError, match="already offloaded"):
        st.run()
    st.run()
    statuses = [b.status for b in blocks]
    assert statuses[:2] == [S.NDIS_STATUS_SUCCESS] * 2
    assert statuses[2] not in (S.NDIS_STATUS_PENDING, S.NDIS_STATUS_SUCCESS), statuses
    assert not mux.call_entries


def test_the_copy_a_failed_nic_offloads_after_its_move_went_on_is_released() -> None:
    """The move of the test above went on without nic0; nic0 comes back (RESUME) and
    completes the initiate of the new neighbor's copy it held. Nothing hangs under that
    copy, so the MUX terminates it as one left unused: no call entry or copy stays."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    mux = _mux(st)
    nic0 = _nic(st, 0)
    move = _move_as_nic0_fails(st, tree, n2)
    assert [b.status for b in walk(move)] == [S.NDIS_STATUS_SUCCESS] * 2
    (n2_vobj,) = [v for v in mux.vobj_table.values() if v.upper is n2.offload_handle]
    assert sorted(i.lower.name for i in n2_vobj.instances.values()) == ["nic0", "nic1"]
    st.top.terminate(st.top.reference_tree(tree, [tree.tcp[0]], state="delegated"))
    st.run()
    nic0.recover_adapter()
    st.run()
    assert [i.lower.name for i in n2_vobj.instances.values()] == ["nic1"]
    assert not mux.call_entries and mux.deferred == []
    assert st.checker.violations == []


def test_a_neighbor_update_waits_for_a_move_deferred_before_it() -> None:
    """As the test above, but the move waits at the MUX before it starts (a connection's
    initiate is offloading a copy of n2 on nic0, spec §3.1): the update after it must wait
    behind it too, not overtake it to the NICs."""
    st, tree, other = three_nics_two_neighbors()
    top = st.top
    assert other.neighbor is not None
    # a connection on a new path under n2, round robin's turn nic0: a copy of n2 offloading
    root = top.neighbor_block(other.neighbor)
    root.add_dependent(top.path_block()).add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(root)
    mac2 = MAC2
    macs = move_then_arp(st, tree, other)
    (n2,) = [v for v in _mux(st).vobj_table.values() if v.upper is other.neighbor]
    assert macs == {"nic0": {mac2}, "nic1": {mac2}, "nic2": {mac2}}, macs
    assert n2.cached.DlDestinationAddress == mac2


def test_rebalance_plans_go_when_the_last_objects_go_with_no_copy_below() -> None:
    """As the test above, but the host uploads the connections first and terminates the
    path and neighbor afterwards, when the MUX has no copy of them left below: that
    terminate completes at the MUX alone, and the plans go with it all the same."""
    st = teamed_target_stack(nics=2, policy="active-standby")
    mux = _mux(st)
    tree = st.top.connection_tree([st.wires.open() for _ in range(4)])  # all on nic0
    st.top.initiate(tree.root)
    st.run()
    mux.rebalance()
    st.run()
    assert len(mux.placement.moves) == 2
    st.top.terminate(st.top.reference_tree(tree, None, state="delegated"))
    st.run()
    assert mux.connections() == [] and len(mux.placement.moves) == 2
    st.top.terminate(
        st.top.reference_tree(tree, [], with_path=True, with_neighbor=True, state="delegated")
    )
    st.run()
    assert mux.vobj_table == {}
    assert mux.placement.moves == {}
    assert st.drain_problems() == []


def test_a_neighbor_update_reaches_a_copy_being_offloaded_for_a_new_connection() -> None:
    """A connection under a neighbor goes to nic1, which has no copy of it: the MUX offloads
    one there with the values it keeps. An update of the neighbor's cached values (a new MAC,
    spec §3.4 (a)) arriving meanwhile went only to the live copies (one being offloaded takes
    no state call, spec §3.1), so nic1 kept the old MAC for good. It now waits for that
    offload, as an invalidate does."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    tree = top.connection_tree([st.wires.open()])  # nic0
    top.initiate(tree.root)
    st.run()
    root = top.neighbor_block(tree.neighbor)
    root.add_dependent(top.path_block()).add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(root)  # nic1: a copy of the neighbor offloading there
    mac2 = b"\x02\x00\x00\x00\x00\x02"
    arp = top.neighbor_block(tree.neighbor)
    arp.cached = type(tree.root.cached)(DlDestinationAddress=mac2)
    top.update(arp)
    st.run()
    assert arp.status == S.NDIS_STATUS_SUCCESS
    macs = {
        nic.name: {c.path.neighbor.cached.DlDestinationAddress for c in nic.connections()}
        for nic in (_nic(st, 0), _nic(st, 1))
    }
    assert macs == {"nic0": {mac2}, "nic1": {mac2}}, macs
    assert st.checker.violations == []
