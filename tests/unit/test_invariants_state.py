"""The invariant checker on state operations (spec §9 items 5 to 8 and 10), with no sockets:
each check is fed the violation it exists for, next to the legal sequence it must leave alone."""

from __future__ import annotations

import pytest

from chimneyd.ndis.blocks import (
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, link_chain
from chimneyd.ndis.status import IndicateOffloadEvent, TcpOffloadEventType
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.observe import invariants
from tests.unit.invariants_rig import Ctx, Rig


@pytest.fixture(params=[0, 1], ids=["host-nic", "host-im-nic"])
def rig(request: pytest.FixtureRequest) -> Rig:
    return Rig(request.param)


def _tcp_handle(rig: Rig, conn: int = 99) -> NdisOffloadHandle:
    return rig.new_handle(f"T{conn}", conn)


# -- item 5: no indication before the initiate completed --------------------------------------
def test_an_indication_before_the_initiate_completed_is_flagged(rig: Rig) -> None:
    t = rig.new_handle("T", 7)
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), t))
    upper = next(b.offload_handle for b in walk(low) if b.kind.value == "tcp")
    rig.ndis.NdisTcpOffloadEventHandler(
        rig.nic, upper, TcpOffloadEventType.TcpIndicateSendBacklogChange, 65536
    )
    assert rig.flagged("§9 item 5")
    rig.scheduler.queue.clear()  # an IM would refuse it too (IllegalTransition)


def test_an_indication_after_the_initiate_completed_is_legal(rig: Rig) -> None:
    conn = rig.offload()
    rig.ndis.NdisTcpOffloadEventHandler(
        rig.nic, conn.nic_upper, TcpOffloadEventType.TcpIndicateSendBacklogChange, 65536
    )
    rig.run()
    assert rig.violations == []


# -- item 6: block statuses, the root, the slots -----------------------------------------------
def test_partial_success_in_a_query_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    low = rig.down("Query", rig.tree(None, None, conn.handle))
    rig.up("Query", low, {2: S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS})
    assert rig.flagged("§9 item 6")


def test_a_placeholder_not_succeeding_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    low = rig.down("Query", rig.tree(None, None, conn.handle))
    # legal for a query: SUCCESS or FAILURE; in an initiate a placeholder is always SUCCESS
    rig.up("Query", low, {0: S.NDIS_STATUS_FAILURE})
    assert rig.violations == []
    low = rig.down("Initiate", rig.tree(None, conn.path, _tcp_handle(rig)))
    rig.up("Initiate", low, {0: S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS, 2: S.NDIS_STATUS_FAILURE})
    assert rig.flagged("§9 item 6")


def test_success_over_a_failed_dependent_is_flagged(rig: Rig) -> None:
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), _tcp_handle(rig)))
    rig.up("Initiate", low, {2: S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES})
    assert any("SUCCESS on handle" in v for v in rig.flagged("§9 item 6"))


def test_partial_success_with_every_dependent_offloaded_is_flagged(rig: Rig) -> None:
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), _tcp_handle(rig)))
    rig.up("Initiate", low, {1: S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS})
    assert rig.flagged("§9 item 6")


def test_the_worked_example_of_spec_3_2_4_is_legal(rig: Rig) -> None:
    # N1 → {P1 → {T1, T2}, P2 → {T3}}: T2 fails for resources, P2 otherwise, T3 never tried
    root = new_neighbor_block(rig.new_handle("N1"))
    p1 = root.add_dependent(new_path_block(rig.new_handle("P1")))
    p2 = root.add_dependent(new_path_block(rig.new_handle("P2")))
    for i, parent in ((1, p1), (2, p1), (3, p2)):
        parent.add_dependent(new_tcp_block(rig.new_handle(f"T{i}", 10 + i)))
    low = rig.down("Initiate", root)
    # walk order: N1, P1, T1, T2, P2, T3
    partial = S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS
    rig.up(
        "Initiate",
        low,
        {
            0: partial,
            1: partial,
            3: S.NDIS_STATUS_RESOURCES,
            4: S.NDIS_STATUS_FAILURE,
            5: S.NDIS_STATUS_FAILURE,
        },
    )
    assert rig.violations == []


def test_a_dependent_offloaded_under_a_failed_block_is_flagged(rig: Rig) -> None:
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), _tcp_handle(rig)))
    rig.up("Initiate", low, {0: S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS, 1: S.NDIS_STATUS_FAILURE})
    assert rig.flagged("§9 item 6")


def test_a_context_written_for_a_failed_offload_is_flagged(rig: Rig) -> None:
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), _tcp_handle(rig)))
    tcp = list(walk(low))[2]
    assert tcp.miniport_offload_context is not None
    tcp.miniport_offload_context.miniport_offload_context = Ctx()
    rig.up("Initiate", low, {1: S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS, 2: S.NDIS_STATUS_FAILURE})
    assert [v for v in rig.violations if "context written" not in v] == []
    assert rig.flagged("§9 item 6")


def test_no_context_for_an_offloaded_block_is_flagged(rig: Rig) -> None:
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), _tcp_handle(rig)))
    for block in walk(low):
        block.status = S.NDIS_STATUS_SUCCESS
    rig.checker.on_state_complete(rig.nic, "NdisMInitiateOffloadComplete", low)
    assert any("no context written" in v for v in rig.flagged("§9 item 6"))


def test_completing_another_root_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    low = rig.down("Query", rig.tree(None, None, conn.handle))
    rig.checker.on_state_complete(
        rig.nic, "NdisMQueryOffloadStateComplete", low.dependent_block_list
    )  # type: ignore[arg-type]
    assert rig.flagged("§9 item 6")
    rig.up("Query", low)


def test_completing_with_the_wrong_function_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    low = rig.down("Query", rig.tree(None, None, conn.handle))
    for block in walk(low):
        block.status = S.NDIS_STATUS_SUCCESS
    rig.checker.on_state_complete(rig.nic, "NdisMUpdateOffloadComplete", low)
    assert rig.flagged("§9 item 6")


def test_a_failed_connections_send_data_touched_is_flagged(rig: Rig) -> None:
    sends = [NetBufferList.for_data(b"unacked")]
    tcp = new_tcp_block(_tcp_handle(rig), delegated=TcpOffloadStateDelegated())
    tcp.net_buffer_list_chain = link_chain(sends)
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), tcp))
    sends[0].status = S.NDIS_STATUS_FAILURE  # the target must leave them alone (spec §3.2.4)
    rig.up("Initiate", low, {1: S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS, 2: S.NDIS_STATUS_FAILURE})
    assert rig.flagged("§3.2.4")
    assert [v for v in rig.violations if "touched" not in v] == []


def test_failed_offloads_are_forgotten(rig: Rig) -> None:
    t = _tcp_handle(rig)
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), t))
    rig.up("Initiate", low, default=S.NDIS_STATUS_FAILURE)
    assert rig.violations == []
    assert rig.drained() == []


# -- item 7: calls only in the phases that allow them ---------------------------------------------
def test_io_on_an_object_being_offloaded_is_flagged(rig: Rig) -> None:
    t = _tcp_handle(rig)
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), t))
    receive = [NetBufferList.for_receive(4)]
    rig.checker.on_io_down(rig.nic, "MiniportTcpOffloadReceive", t, receive)
    assert rig.flagged("§9 item 7")
    rig.up("Initiate", low)


def test_a_linker_naming_an_object_being_offloaded_is_flagged(rig: Rig) -> None:
    n, p = rig.new_handle("N"), rig.new_handle("P")
    low = rig.down("Initiate", rig.tree(n, p, _tcp_handle(rig, 1)))
    p.miniport_offload_context = (
        Ctx()
    )  # as if the slot were written early; the object still offloading
    rig.ndis.observer.on_state_down(
        rig.binding, "NdisInitiateOffload", rig.tree(n, p, _tcp_handle(rig, 2))
    )  # type: ignore[union-attr]
    assert rig.flagged("§9 item 7")
    p.miniport_offload_context = None
    rig.up("Initiate", low)


def test_an_update_of_an_invalidated_object_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    low = rig.down("Invalidate", rig.tree(None, conn.path))
    rig.up("Invalidate", low)
    assert rig.violations == []
    rig.down("Update", rig.tree(None, None, conn.handle))  # depends on the invalidated path
    assert rig.flagged("§9 item 7")


def test_two_updates_in_flight_are_flagged(rig: Rig) -> None:
    conn = rig.offload()
    first = rig.down("Update", rig.tree(None, None, conn.handle))
    rig.down("Update", rig.tree(None, None, conn.handle))
    assert rig.flagged("§9 item 7")
    rig.up("Update", first)


def test_overlapping_queries_are_legal(rig: Rig) -> None:
    conn = rig.offload()
    a = rig.down("Query", rig.tree(None, None, conn.handle))
    b = rig.down("Query", rig.tree(None, None, conn.handle))
    rig.up("Query", b)
    rig.up("Query", a)
    assert rig.violations == []


def test_terminate_with_a_query_pending_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    query = rig.down("Query", rig.tree(None, None, conn.handle))
    rig.down("Terminate", rig.tree(None, None, conn.handle))
    assert rig.flagged("§9 item 7")
    rig.up("Query", query)


def test_io_after_the_terminate_was_requested_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    rig.down("Terminate", rig.tree(None, None, conn.handle))
    rig.ndis.NdisOffloadTcpSend(rig.host, conn.handle, rig.nbl(conn, b"late"))  # not delivered
    assert rig.flagged("§9 item 7")


def test_a_state_call_on_an_object_being_terminated_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    rig.down("Terminate", rig.tree(None, None, conn.handle))
    rig.checker.on_state_down(
        rig.binding, "NdisTerminateOffload", rig.tree(None, None, conn.handle)
    )
    assert rig.flagged("§9 item 7")


# -- item 8: nothing after the terminate completed ----------------------------------------------
def test_an_indication_after_the_terminate_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    rig.terminate(conn)
    rig.checker.on_indication(rig.nic, "TcpIndicateAbort", conn.nic_upper)
    assert any("after its terminate" in v for v in rig.flagged("§9 item 8"))


def test_only_recently_terminated_handles_are_named_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker remembers the last RECENTLY_DEAD terminated handles (a bounded ring), and a
    call on an older one is still flagged, as a handle it does not know."""
    monkeypatch.setattr(invariants, "RECENTLY_DEAD", 2)
    rig = Rig(0)
    conns = [rig.offload() for _ in range(3)]
    for conn in conns:
        rig.terminate(conn)
    assert rig.violations == []
    rig.checker.on_indication(rig.nic, "TcpIndicateAbort", conns[0].nic_upper)
    rig.checker.on_indication(rig.nic, "TcpIndicateAbort", conns[2].nic_upper)
    first, last = rig.flagged("§9 item")
    assert "never offloaded" in first
    assert "after its terminate completed" in last


def test_a_completion_after_the_terminate_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    (nbl,) = rig.send(conn, b"x")
    rig.terminate(conn, returned=[nbl])
    assert rig.violations == []
    nbl.status = S.NDIS_STATUS_SUCCESS
    rig.checker.on_io_complete(rig.nic, "NdisTcpOffloadSendComplete", [nbl])
    assert rig.flagged("§9 item 8")


def test_a_terminate_with_io_outstanding_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    rig.post(conn, 16)
    rig.terminate(conn)
    assert rig.flagged("§9 item 8")


def test_send_data_returned_in_order_by_the_terminate_is_legal(rig: Rig) -> None:
    conn = rig.offload()
    a, b, c = rig.send(conn, b"a", b"b", b"c")
    rig.complete("Send", [a])
    rig.terminate(conn, returned=[b, c])
    assert rig.violations == []


def test_send_data_returned_out_of_order_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    a, b = rig.send(conn, b"a", b"b")
    rig.terminate(conn, returned=[b, a])
    assert rig.flagged("§3.6.3")


def test_a_failed_terminate_leaves_the_object_offloaded(rig: Rig) -> None:
    conn = rig.offload()
    low = rig.down("Terminate", rig.tree(None, None, conn.handle))
    rig.up("Terminate", low, default=S.NDIS_STATUS_FAILURE)
    rig.ndis.NdisTcpOffloadEventHandler(
        rig.nic, conn.nic_upper, TcpOffloadEventType.TcpIndicateAbort, 0
    )
    rig.run()
    rig.terminate(conn, with_objects=True)
    assert rig.violations == []
    assert rig.drained() == []


# -- item 10: neighbors and paths go after, or with, what depends on them ------------------------
def test_terminating_a_path_with_a_dependent_left_is_flagged(rig: Rig) -> None:
    one = rig.offload()
    rig.offload(under=one)
    low = rig.down("Terminate", rig.tree(None, one.path, one.handle))
    assert rig.flagged("§9 item 10")
    rig.up("Terminate", low)


def test_terminating_a_path_with_its_dependents_is_legal(rig: Rig) -> None:
    one = rig.offload()
    two = rig.offload(under=one)
    rig.terminate(one)
    rig.terminate(two, with_objects=True)
    assert rig.violations == []
    assert rig.drained() == []


def test_terminating_a_path_while_its_dependent_terminate_is_in_flight_is_flagged(
    rig: Rig,
) -> None:
    conn = rig.offload()
    first = rig.down("Terminate", rig.tree(None, None, conn.handle))
    rig.down("Terminate", rig.tree(conn.neighbor, conn.path))
    assert rig.flagged("§9 item 10")
    rig.up("Terminate", first)


def test_a_neighbor_terminated_before_its_paths_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    rig.terminate(conn)
    rig.down("Terminate", new_neighbor_block(conn.neighbor))
    assert rig.flagged("§9 item 10")


def test_a_failed_root_stops_the_walk(rig: Rig) -> None:
    root = new_neighbor_block(rig.new_handle("N1"))
    root.next_block = new_neighbor_block(rig.new_handle("N2"))
    low = rig.down("Initiate", root)
    rig.up("Initiate", low, {0: S.NDIS_STATUS_OFFLOAD_NEIGHBOR_ENTRIES})
    assert any("after a failed root" in v for v in rig.flagged("§9 item 6"))


def test_a_path_relinked_by_an_update_leaves_its_old_neighbor(rig: Rig) -> None:
    conn = rig.offload()
    n2 = rig.new_handle("N2")
    rig.up("Initiate", rig.down("Initiate", new_neighbor_block(n2)))
    # spec §3.4: the root names the new neighbor, its dependents the paths to move
    rig.up("Update", rig.down("Update", rig.tree(n2, conn.path)))
    rig.up("Terminate", rig.down("Terminate", new_neighbor_block(conn.neighbor)))
    assert rig.violations == []
    low = rig.down("Terminate", rig.tree(n2, conn.path, conn.handle))
    rig.up("Terminate", low)
    assert rig.violations == []
    assert rig.drained() == []


def test_a_neighbor_event_before_its_initiate_completed_is_flagged(rig: Rig) -> None:
    low = rig.down("Initiate", rig.tree(rig.new_handle("N"), rig.new_handle("P"), _tcp_handle(rig)))
    event = new_neighbor_block(None)
    event.ndis_offload_handle = low.offload_handle  # the handle the NIC got for the neighbor
    rig.ndis.NdisMOffloadEventIndicate(
        rig.nic, event, IndicateOffloadEvent.NeighborReachabilityQuery
    )
    assert rig.flagged("§9 item 5")
    rig.scheduler.queue.clear()
