"""The next-hop change at a teaming MUX (spec §3.4 (b)): an update whose root names a new
neighbor and whose dependents name paths moves those paths under it. The MUX forwards it to
each NIC holding a copy of a path, after giving that NIC a copy of the new neighbor if it has
none, so each copy moves under that NIC's copy of the new neighbor, and the connections stay
offloaded. If any NIC's part fails, the whole update fails, every block FAILURE, and nothing
stays moved: the copies a NIC did move go back under the old neighbor's (spec §3.4: after a
failed update everything goes on as before)."""

from __future__ import annotations

from chimneyd.ndis.blocks import (
    OffloadBlock,
    PathOffloadStateCached,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import assert_all_drained, move_first_path, two_nics_and_a_spare_neighbor


def _two_nics() -> tuple[Stack, OffloadTree, OffloadBlock]:
    """Round robin: two connections under one path, one on each NIC (each NIC with its copy
    of the path and neighbor), and a second neighbor offloaded to the MUX (no NIC has it)."""
    st, tree, n2 = two_nics_and_a_spare_neighbor()
    assert st.top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS]
    return st, tree, n2


def _move(st: Stack, tree: OffloadTree, n2: OffloadBlock) -> list[S]:
    done = move_first_path(st, tree, n2)
    assert done.op == "Update"
    return done.statuses


def _neighbors_below(st: Stack) -> dict[str, set[NdisOffloadHandle]]:
    """Per NIC, the neighbors (the layer above's handles) its connections' paths hang under
    there: the NIC's own pointers (spec §2.3)."""
    out: dict[str, set[NdisOffloadHandle]] = {}
    for nic in st.under_test[1:]:
        out[nic.name] = {c.path.neighbor.upper.owner.vobj.upper for c in nic.connections()}
    return out


def _still_carried(st: Stack, tree: OffloadTree) -> None:
    for handle in tree.tcp:
        st.top.send(handle, b"still carried")
    st.run()
    for handle in tree.tcp:
        tree.wires[handle.id].ack()
    st.run()
    for handle in tree.tcp:
        assert bytes(tree.wires[handle.id].peer_received) == b"still carried"


def _drain(st: Stack, tree: OffloadTree, n2: OffloadBlock, moved: bool) -> None:
    """Terminate the old neighbor (once nothing hangs below it), the connections and path,
    the new neighbor: every step succeeds and every table drains (spec §9 item 10)."""
    assert n2.offload_handle is not None
    ok = S.NDIS_STATUS_SUCCESS
    if moved:
        st.top.terminate(new_neighbor_block(tree.neighbor))
        st.run()
        assert st.top.state_completions[-1].statuses == [ok]
    st.top.terminate(st.top.reference_tree(tree, None, with_path=True, state="delegated"))
    st.run()
    assert st.top.state_completions[-1].statuses == [ok] * 4
    last = [new_neighbor_block(n2.offload_handle)]
    if not moved:
        last.append(new_neighbor_block(tree.neighbor))
    for root in last:
        st.top.terminate(root)
        st.run()
        assert st.top.state_completions[-1].statuses == [ok]
    assert_all_drained(st)


def _close_the_other(
    st: Stack,
    tree: OffloadTree,
    n2: OffloadBlock,
    gone: NdisOffloadHandle,
    other: NdisOffloadHandle,
) -> None:
    """`gone`'s connection is terminated: `other` still carries its bytes; it and the path
    go, then the new neighbor, and every table drains (spec §9 item 10)."""
    assert n2.offload_handle is not None
    ok = S.NDIS_STATUS_SUCCESS
    del tree.wires[gone.id]
    tree.tcp.remove(gone)
    _still_carried(st, tree)
    st.top.terminate(st.top.reference_tree(tree, [other], with_path=True, state="delegated"))
    st.run()
    st.top.terminate(new_neighbor_block(n2.offload_handle))
    st.run()
    assert st.top.state_completions[-1].statuses == [ok]
    assert_all_drained(st)


def _close_both(st: Stack, tree: OffloadTree, other: OffloadTree) -> None:
    """`tree`'s path moved under `other`'s neighbor: the old neighbor goes, then `tree`'s
    connections and path, then all of `other`; every call succeeds and every table drains."""
    top = st.top
    top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    top.terminate(top.reference_tree(tree, None, with_path=True, state="delegated"))
    st.run()
    top.terminate(
        top.reference_tree(other, None, with_path=True, with_neighbor=True, state="delegated")
    )
    st.run()
    assert all(s == S.NDIS_STATUS_SUCCESS for c in top.state_completions for s in c.statuses)
    assert_all_drained(st)


def test_a_next_hop_change_moves_each_nics_copy_of_the_path() -> None:
    st, tree, n2 = _two_nics()
    assert _neighbors_below(st) == {"nic0": {tree.neighbor}, "nic1": {tree.neighbor}}
    assert _move(st, tree, n2) == [S.NDIS_STATUS_SUCCESS] * 2
    assert _neighbors_below(st) == {"nic0": {n2.offload_handle}, "nic1": {n2.offload_handle}}
    assert st.top.events == []  # nothing asked up: the connections stay offloaded
    _still_carried(st, tree)
    _drain(st, tree, n2, moved=True)


def test_a_nic_failing_its_part_fails_the_whole_move_and_the_others_move_back() -> None:
    """nic1 fails the update; nic0 had moved its copy: it goes back under the old neighbor's
    copy there, the update fails (every block FAILURE), and all goes on as before."""
    st, tree, n2 = _two_nics()
    fail_next(st.under_test[2], "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    assert _move(st, tree, n2) == [S.NDIS_STATUS_FAILURE] * 2
    assert _neighbors_below(st) == {"nic0": {tree.neighbor}, "nic1": {tree.neighbor}}
    _still_carried(st, tree)
    _drain(st, tree, n2, moved=False)


def test_a_nic_refusing_a_copy_of_the_new_neighbor_fails_the_move_before_any_moves() -> None:
    st, tree, n2 = _two_nics()
    fail_next(st.under_test[2], "MiniportInitiateOffload[neighbor]", S.NDIS_STATUS_FAILURE)
    assert _move(st, tree, n2) == [S.NDIS_STATUS_FAILURE] * 2
    assert _neighbors_below(st) == {"nic0": {tree.neighbor}, "nic1": {tree.neighbor}}
    _still_carried(st, tree)
    _drain(st, tree, n2, moved=False)


def test_a_connection_new_to_the_path_during_the_move_waits_and_goes_under_the_new_neighbor() -> (
    None
):
    """An initiate of a new connection under the moving path reaches the MUX while the move
    is under way: it waits until the move is done (its path copy must not be linked, or made,
    under the old neighbor's copy meanwhile), then goes under the new neighbor on its NIC."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    root = new_neighbor_block(n2.offload_handle)
    root.add_dependent(new_path_block(tree.paths[0]))
    st.top.update(root)
    wire = st.wires.open()
    new = st.top.neighbor_block(tree.neighbor)
    tcp = new.add_dependent(st.top.path_block(tree.paths[0])).add_dependent(st.top.tcp_block(wire))
    st.top.initiate(new)
    st.run()
    assert [c.op for c in st.top.state_completions[-2:]] == ["Update", "Initiate"]
    assert st.top.state_completions[-2].statuses == [S.NDIS_STATUS_SUCCESS] * 2
    assert tcp.status == S.NDIS_STATUS_SUCCESS
    assert tcp.offload_handle is not None
    tree.tcp.append(tcp.offload_handle)
    tree.wires[tcp.offload_handle.id] = wire
    below = _neighbors_below(st)
    assert below == {"nic0": {n2.offload_handle}, "nic1": {n2.offload_handle}}
    _still_carried(st, tree)
    ok = S.NDIS_STATUS_SUCCESS
    st.top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    assert st.top.state_completions[-1].statuses == [ok]
    st.top.terminate(st.top.reference_tree(tree, None, with_path=True, state="delegated"))
    st.run()
    assert st.top.state_completions[-1].statuses == [ok] * 5
    st.top.terminate(new_neighbor_block(n2.offload_handle))
    st.run()
    assert_all_drained(st)


def test_the_new_neighbors_own_copies_take_its_new_values_and_the_paths() -> None:
    """Three NICs: the new neighbor already carries a connection on nic2 (its own path
    there); the moving path has copies on nic0 and nic1. The update also brings the new
    neighbor's cached values: every NIC's copy of it gets them, nic2's too, and the MUX keeps
    them for copies to come."""
    st = teamed_target_stack(nics=3, policy="round-robin")
    top = st.top
    tree = top.connection_tree([st.wires.open(), st.wires.open()])  # nic0, nic1
    top.initiate(tree.root)
    st.run()
    other = top.connection_tree([st.wires.open()])  # nic2: the new neighbor, its own path
    top.initiate(other.root)
    st.run()
    nics = st.under_test[1:]
    assert [len(list(n.connections())) for n in nics] == [1, 1, 1]
    mac = b"\x02\x00\x00\x00\x00\x02"
    root = top.neighbor_block(other.neighbor)
    root.cached = type(tree.root.cached)(DlDestinationAddress=mac)
    root.add_dependent(new_path_block(tree.paths[0]))
    top.update(root)
    st.run()
    assert top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS] * 2
    assert _neighbors_below(st) == {
        "nic0": {other.neighbor},
        "nic1": {other.neighbor},
        "nic2": {other.neighbor},
    }
    for nic in nics:
        (c,) = nic.connections()
        assert c.path.neighbor.cached.DlDestinationAddress == mac
    _close_both(st, tree, other)


def test_a_copy_its_nic_cannot_move_back_has_its_connections_asked_up() -> None:
    """nic1 fails the move; nic0 moved its copy, and fails to move it back too. The update
    fails all the same; nic0's copy stays under its copy of the new neighbor, which the layer
    above knows nothing of: the connection on it is asked up (spec §5.2), and a terminate of
    the new neighbor from above (nothing depends on it, as far as the layer above knows)
    waits until the connection's terminate has taken the copies with it."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    nic0, nic1 = st.under_test[1:]
    fail_next(nic0, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE, skip=1)  # the undo
    fail_next(nic1, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    assert _move(st, tree, n2) == [S.NDIS_STATUS_FAILURE] * 2
    assert _neighbors_below(st) == {"nic0": {n2.offload_handle}, "nic1": {tree.neighbor}}
    first = tree.tcp[0]
    retrieve = (TcpOffloadEventType.TcpIndicateRetrieve, int(TcpUploadReason.UploadRequested))
    assert [(e.handle, (e.event_type, e.info)) for e in st.top.events] == [(first, retrieve)]

    ok = S.NDIS_STATUS_SUCCESS
    done = len(st.top.state_completions)
    st.top.terminate(new_neighbor_block(n2.offload_handle))
    st.run()
    assert len(st.top.state_completions) == done  # it waits for nic0's copies to go
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()
    assert [(c.op, c.statuses) for c in st.top.state_completions[done:]] == [
        ("Terminate", [ok] * 3),
        ("Terminate", [ok]),
    ]
    del tree.wires[first.id]
    tree.tcp.remove(first)
    _still_carried(st, tree)
    st.top.terminate(
        st.top.reference_tree(tree, None, with_path=True, with_neighbor=True, state="delegated")
    )
    st.run()
    assert st.top.state_completions[-1].statuses == [ok] * 3
    assert_all_drained(st)


def test_a_path_with_no_copy_yet_moves_too() -> None:
    """A path offloaded with no connection yet has no copy on any NIC: the move is the
    MUX's alone, and a connection offloaded under it afterwards (under the new neighbor, as
    the layer above has it now) gets its copy under the new neighbor's; the old neighbor is
    terminated with nothing below it."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    tree = top.connection_tree([])
    top.initiate(tree.root)
    st.run()
    n2 = top.neighbor_block()
    top.initiate(n2)
    st.run()
    assert n2.offload_handle is not None
    assert _move(st, tree, n2) == [S.NDIS_STATUS_SUCCESS] * 2
    wire = st.wires.open()
    root = top.neighbor_block(n2.offload_handle)
    tcp = root.add_dependent(top.path_block(tree.paths[0])).add_dependent(top.tcp_block(wire))
    top.initiate(root)
    st.run()
    assert tcp.status == S.NDIS_STATUS_SUCCESS and tcp.offload_handle is not None
    tree.tcp.append(tcp.offload_handle)
    tree.wires[tcp.offload_handle.id] = wire
    assert _neighbors_below(st) == {"nic0": {n2.offload_handle}, "nic1": set()}
    ok = S.NDIS_STATUS_SUCCESS
    top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    assert top.state_completions[-1].statuses == [ok]
    _still_carried(st, tree)
    top.terminate(top.reference_tree(tree, None, with_path=True, state="delegated"))
    st.run()
    top.terminate(new_neighbor_block(n2.offload_handle))
    st.run()
    assert top.state_completions[-1].statuses == [ok]
    assert_all_drained(st)


def test_a_corrupt_copy_stays_under_the_old_neighbor_until_it_is_terminated() -> None:
    """nic0 found its copies of the path and neighbor corrupt when its connection was
    uploaded (spec §3.7): only a terminate is left for them, so the move leaves nic0's path
    copy where it is and moves nic1's. The layer above then terminates the old neighbor
    (nothing depends on it there any more): that waits until the failed connection's
    further terminate (§3.7 step 4) has taken nic0's corrupt copies with it."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    first, second = tree.tcp
    fail_next(st.under_test[1], "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()
    assert _move(st, tree, n2) == [S.NDIS_STATUS_SUCCESS] * 2
    assert _neighbors_below(st) == {"nic0": {tree.neighbor}, "nic1": {n2.offload_handle}}
    ok = S.NDIS_STATUS_SUCCESS
    done = len(st.top.state_completions)
    st.top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    assert len(st.top.state_completions) == done  # nic0's corrupt copies are still there
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()
    assert [(c.op, c.statuses) for c in st.top.state_completions[done:]] == [
        ("Terminate", [ok] * 3),
        ("Terminate", [ok]),
    ]
    _close_the_other(st, tree, n2, gone=first, other=second)


def test_an_invalidate_of_the_moving_path_waits_for_the_move() -> None:
    """The layer above invalidates the path right after asking for the move (an invalidate
    may overlap an update, spec §3.1): the MUX holds it until the move is done, since the
    move's update must not reach a copy already invalidated (spec §3.1: never an update of an
    invalidated object). Then each NIC asks its connection up (spec §3.5)."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    root = new_neighbor_block(n2.offload_handle)
    root.add_dependent(new_path_block(tree.paths[0]))
    st.top.update(root)
    st.top.invalidate(st.top.reference_tree(tree, [], with_path=True))
    st.run()
    ok = S.NDIS_STATUS_SUCCESS
    assert [(c.op, c.statuses) for c in st.top.state_completions[-2:]] == [
        ("Update", [ok] * 2),
        ("Invalidate", [ok] * 2),
    ]
    assert _neighbors_below(st) == {"nic0": {n2.offload_handle}, "nic1": {n2.offload_handle}}
    invalid = (TcpOffloadEventType.TcpIndicateRetrieve, int(TcpUploadReason.InvalidState))
    assert sorted((e.handle.id, (e.event_type, e.info)) for e in st.top.events) == sorted(
        (h.id, invalid) for h in tree.tcp
    )
    st.top.terminate(st.top.reference_tree(tree, None, with_path=True, state="delegated"))
    st.run()
    assert st.top.state_completions[-1].statuses == [ok] * 4
    for handle in (tree.neighbor, n2.offload_handle):
        st.top.terminate(new_neighbor_block(handle))
        st.run()
        assert st.top.state_completions[-1].statuses == [ok]
    assert_all_drained(st)


def test_a_failed_nics_copy_is_left_to_the_failover() -> None:
    """nic1 has failed (UPLOAD_ALL, spec §5.5): its connection is being asked up, and the
    NIC holds new offloads until its RESUME. The move does not wait for it: nic0's copy
    moves and the update completes at once; nic1's copy stays under the old neighbor's until
    the failover's upload takes it, and the old neighbor's terminate waits for that."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    nic1 = st.under_test[2]
    first, second = tree.tcp
    nic1.fail_adapter()
    st.run()
    retrieve = (TcpOffloadEventType.TcpIndicateRetrieve, int(TcpUploadReason.UploadRequested))
    assert [(e.handle, (e.event_type, e.info)) for e in st.top.events] == [(second, retrieve)]
    assert _move(st, tree, n2) == [S.NDIS_STATUS_SUCCESS] * 2
    assert _neighbors_below(st) == {"nic0": {n2.offload_handle}, "nic1": {tree.neighbor}}
    ok = S.NDIS_STATUS_SUCCESS
    done = len(st.top.state_completions)
    st.top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    assert len(st.top.state_completions) == done  # nic1's copies are still there
    st.top.terminate(st.top.reference_tree(tree, [second], state="delegated"))
    st.run()
    assert [(c.op, c.statuses) for c in st.top.state_completions[done:]] == [
        ("Terminate", [ok] * 3),
        ("Terminate", [ok]),
    ]
    nic1.recover_adapter()
    st.run()
    _close_the_other(st, tree, n2, gone=second, other=first)


def test_a_path_already_under_the_new_neighbor_takes_its_new_cached_values() -> None:
    """The update moving a path may also name a path already under the new neighbor, with
    new cached values (spec §3.4 (a)): each NIC's copy of that one gets them too."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    tree = top.connection_tree([st.wires.open()])  # nic0
    top.initiate(tree.root)
    st.run()
    other = top.connection_tree([st.wires.open()])  # nic1: the new neighbor, its own path
    top.initiate(other.root)
    st.run()
    root = new_neighbor_block(other.neighbor)
    root.add_dependent(new_path_block(tree.paths[0]))
    stays = root.add_dependent(new_path_block(other.paths[0]))
    stays.cached = PathOffloadStateCached(PathMtu=1400)
    top.update(root)
    st.run()
    assert top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS] * 3
    assert _neighbors_below(st) == {"nic0": {other.neighbor}, "nic1": {other.neighbor}}
    (c,) = st.under_test[2].connections()
    assert c.path.cached.PathMtu == 1400
    _close_both(st, tree, other)


def test_a_move_waits_for_a_copy_of_the_new_neighbor_being_offloaded() -> None:
    """A connection under another path of the new neighbor is being offloaded to nic0 (the
    MUX's copy of the new neighbor there is on its way, spec §3.1) when the move arrives: it
    waits (`stack.info` shows an `Update` deferred), then moves the path under that copy."""
    st, tree, n2 = _two_nics()
    assert n2.offload_handle is not None
    mux = st.under_test[0]
    top = st.top
    wire = st.wires.open()
    other = top.neighbor_block(n2.offload_handle)
    path2 = other.add_dependent(top.path_block())
    tcp = path2.add_dependent(top.tcp_block(wire))
    top.initiate(other)  # round robin: nic0
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(tree.paths[0]))
    top.update(move)
    waited = False
    while st.scheduler.run_one():
        waited = waited or mux.describe()["deferred"] == ["Update"]
    assert waited
    assert [c.op for c in top.state_completions[-2:]] == ["Initiate", "Update"]
    assert tcp.status == S.NDIS_STATUS_SUCCESS
    assert [b.status for b in walk(move)] == [S.NDIS_STATUS_SUCCESS] * 2
    assert _neighbors_below(st) == {"nic0": {n2.offload_handle}, "nic1": {n2.offload_handle}}
    ok = S.NDIS_STATUS_SUCCESS
    top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    top.terminate(top.reference_tree(tree, None, with_path=True, state="delegated"))
    st.run()
    assert path2.offload_handle is not None and tcp.offload_handle is not None
    root = new_neighbor_block(n2.offload_handle)
    last = root.add_dependent(new_path_block(path2.offload_handle))
    last.add_dependent(new_tcp_block(tcp.offload_handle)).delegated = TcpOffloadStateDelegated()
    top.terminate(root)
    st.run()
    assert all(s == ok for c in top.state_completions for s in c.statuses)
    assert_all_drained(st)
