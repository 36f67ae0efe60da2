"""Spec §3.2.4 worked example, against the offload target with no sockets: N1 → {P1 → {T1, T2},
P2 → {T3}}; T2 fails for resources, P2 fails otherwise, T3 is never tried."""

from __future__ import annotations

from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing import OffloadTree, ProtocolStub, Stack
from chimneyd.testing.factories import fail_next, loopback_target_stack


def _stack() -> tuple[Stack, ProtocolStub]:
    st = loopback_target_stack(max_connections=16)
    return st, st.top


def _tcp(st: Stack, send: list[bytes] | None = None) -> OffloadBlock:
    return st.top.tcp_block(st.wires.open(), send=send or [])


def _initiate(st: Stack, root: OffloadBlock) -> None:
    st.top.initiate(root)
    st.run()
    assert [c.root for c in st.top.state_completions[-1:]] == [root]  # one completion, same root


def test_spec_worked_example_of_a_partial_initiate() -> None:
    st, top = _stack()
    (nic,) = st.under_test
    n1 = top.neighbor_block()
    p1 = n1.add_dependent(top.path_block())
    t1 = p1.add_dependent(_tcp(st))
    # T2 carries outstanding send data: on failure the target must leave it untouched
    t2 = p1.add_dependent(_tcp(st, [b"not yet acknowledged"]))
    p2 = n1.add_dependent(top.path_block(dst=b"\x7f\x00\x00\x03"))
    t3 = p2.add_dependent(_tcp(st))
    assert list(walk(n1)) == [n1, p1, t1, t2, p2, t3]  # depth first, then next
    (send,) = [t2.net_buffer_list_chain]
    assert send is not None

    # the second TCP block fails for resources; the second path block fails otherwise
    fail_next(nic, "MiniportInitiateOffload", S.NDIS_STATUS_RESOURCES, skip=1)
    fail_next(nic, "MiniportInitiateOffload[path]", S.NDIS_STATUS_FAILURE, skip=1)
    _initiate(st, n1)

    assert n1.status == S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS
    assert p1.status == S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS
    assert t1.status == S.NDIS_STATUS_SUCCESS
    assert t2.status == S.NDIS_STATUS_RESOURCES
    assert p2.status == S.NDIS_STATUS_FAILURE
    assert t3.status == S.NDIS_STATUS_FAILURE  # never attempted
    # slots are written only for blocks that were offloaded (spec §3.2.3, §9 item 6)
    for block, offloaded in (
        (n1, True),
        (p1, True),
        (t1, True),
        (t2, False),
        (p2, False),
        (t3, False),
    ):
        assert block.offload_handle is not None
        assert (block.offload_handle.miniport_offload_context is not None) is offloaded
    assert top.slot_errors == []
    # the failed connection's send NBL was neither completed nor given a status
    assert send.status == S.NDIS_STATUS_PENDING and send.source_bindings == []
    assert top.returned_sends == [send] and top.completions == []
    assert (nic.stats.handles, nic.stats.offloads_active, nic.stats.outstanding_nbls) == (3, 3, 0)


def test_root_failure_stops_the_walk() -> None:
    st, top = _stack()
    (nic,) = st.under_test
    n1 = top.neighbor_block()
    p1 = n1.add_dependent(top.path_block())
    t1 = p1.add_dependent(_tcp(st))
    n2 = top.neighbor_block()
    n1.next_block = n2
    fail_next(nic, "MiniportInitiateOffload[neighbor]", S.NDIS_STATUS_FAILURE)
    _initiate(st, n1)
    assert [b.status for b in (n1, p1, t1, n2)] == [S.NDIS_STATUS_FAILURE] * 4
    assert nic.stats.handles == 0 and st.drain_problems() == []


def test_a_failed_second_neighbor_does_not_stop_the_walk() -> None:
    """Spec §3.2.4: the walk stops only when the *root* block cannot be offloaded; a later
    block that fails takes its dependents with it and the walk goes on to its next sibling,
    so that as many connections as possible are offloaded (§3.2.2). In N1 → N2 → N3 (three
    neighbor siblings, each with a path and a connection), N2 failing must not keep N3 from
    being tried."""
    st, top = _stack()
    (nic,) = st.under_test
    roots: list[OffloadBlock] = []
    tcps: list[OffloadBlock] = []
    for _ in range(3):
        n = top.neighbor_block()
        p = n.add_dependent(top.path_block())
        tcps.append(p.add_dependent(_tcp(st)))
        if roots:
            roots[-1].next_block = n
        roots.append(n)
    fail_next(nic, "MiniportInitiateOffload[neighbor]", S.NDIS_STATUS_FAILURE, skip=1)
    _initiate(st, roots[0])
    n1, n2, n3 = roots
    assert (n1.status, tcps[0].status) == (S.NDIS_STATUS_SUCCESS, S.NDIS_STATUS_SUCCESS)
    assert (n2.status, tcps[1].status) == (S.NDIS_STATUS_FAILURE, S.NDIS_STATUS_FAILURE)
    # N3 was tried and offloaded
    assert (n3.status, tcps[2].status) == (S.NDIS_STATUS_SUCCESS, S.NDIS_STATUS_SUCCESS)
    assert nic.stats.handles == 6 and top.slot_errors == []


def test_capacity_gives_tcp_entries_and_linkers_reuse_objects() -> None:
    st = loopback_target_stack(max_connections=1)
    top = st.top
    (nic,) = st.under_test
    n1 = top.neighbor_block()
    p1 = n1.add_dependent(top.path_block())
    t1 = p1.add_dependent(_tcp(st))
    t2 = p1.add_dependent(_tcp(st))
    _initiate(st, n1)
    assert (t1.status, t2.status) == (S.NDIS_STATUS_SUCCESS, S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES)
    # a second tree links to the offloaded neighbor and path (linkers, no state)
    assert n1.offload_handle is not None and p1.offload_handle is not None
    link_n = top.neighbor_block(n1.offload_handle)
    link_p = link_n.add_dependent(top.path_block(p1.offload_handle))
    t3 = link_p.add_dependent(_tcp(st))
    _initiate(st, link_n)
    # still full: the path linker, whose only dependent failed, fails with it (spec §2.3)
    assert (link_p.status, t3.status) == (S.NDIS_STATUS_FAILURE, S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES)
    # upload T1 alone (neighbor and path as placeholders): the room is for a new connection
    assert t1.offload_handle is not None
    tree = OffloadTree(n1, n1.offload_handle, [p1.offload_handle], [t1.offload_handle])
    top.terminate(top.reference_tree(tree, state="delegated"))
    st.run()
    link_n = top.neighbor_block(n1.offload_handle)
    link_p = link_n.add_dependent(top.path_block(p1.offload_handle))
    t4 = link_p.add_dependent(_tcp(st))
    _initiate(st, link_n)
    assert [b.status for b in (link_n, link_p, t4)] == [S.NDIS_STATUS_SUCCESS] * 3
    assert nic.stats.handles == 3  # the same neighbor and path, one TCP context
    assert top.slot_errors == []


def test_a_new_object_whose_every_dependent_failed_is_offloaded_all_the_same() -> None:
    """spec §2.3: only a linker fails with all its dependents; a new path block is offloaded
    (its slot written) whatever its dependents did, so its status is partial success. Read as
    a linker once its slot was written, it used to report FAILURE, the host then terminated
    the neighbor without the path, and the target raised "terminated with dependents"."""
    st, top = _stack()
    (nic,) = st.under_test
    n1 = top.neighbor_block()
    p1 = n1.add_dependent(top.path_block())
    t1 = p1.add_dependent(_tcp(st))
    fail_next(nic, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    _initiate(st, n1)
    assert [b.status for b in (n1, p1, t1)] == [
        S.NDIS_STATUS_SUCCESS,
        S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS,
        S.NDIS_STATUS_FAILURE,
    ]
    assert p1.offload_handle is not None and p1.offload_handle.miniport_offload_context
    assert top.slot_errors == []
