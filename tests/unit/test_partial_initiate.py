"""Spec §3.2.4 worked example, against the offload target with no sockets: N1 → {P1 → {T1, T2},
P2 → {T3}}; T2 fails for resources, P2 fails otherwise, T3 is never tried."""

from __future__ import annotations

from typing import Any

from chimneyd.drivers.base import FailNext
from chimneyd.drivers.nic import OffloadTarget
from chimneyd.ndis.blocks import (
    OffloadBlock,
    PathOffloadStateConst,
    TcpOffloadStateConst,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.broker import Binding, Layer, Ndis, SyncScheduler
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus as S


class Protocol(Layer):
    """A bare protocol edge that records what comes back."""

    has_protocol_edge = True

    def __init__(self, name: str, ndis: Ndis) -> None:
        super().__init__(name, ndis)
        self.completed: list[OffloadBlock] = []

    def ProtocolInitiateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        self.completed.append(root)


class Wire:
    """Just enough of a socket for the target to take a connection."""

    isn = irs = 0
    bytes_read = bytes_written = 0
    closed = False

    def __init__(self) -> None:
        self.owner: Any = None

    def set_owner(self, layer: Any, ctx: Any) -> None:
        self.owner = ctx

    def write(self, views: list[memoryview]) -> None:
        raise AssertionError("nothing to send")

    def watch_acks(self) -> None:
        pass


class Timers:
    def call_later(self, delay: float, fn: Any, *args: Any) -> Any:
        raise AssertionError("no timer expected")


def _stack() -> tuple[SyncScheduler, Protocol, OffloadTarget, Binding]:
    scheduler = SyncScheduler()
    ndis = Ndis(clock=lambda: 0, deliver=scheduler)
    proto = Protocol("tcpip", ndis)
    nic = OffloadTarget("nic0", ndis, Timers(), lambda *key: Wire(), max_connections=16)
    return scheduler, proto, nic, ndis.bind(proto, nic)


def _tcp(proto: Protocol, port: int) -> OffloadBlock:
    handle = NdisOffloadHandle(proto.name, owner=f"T{port}")
    return new_tcp_block(
        handle,
        TcpOffloadStateConst(LocalPort=port, RemotePort=80),
        None,
        TcpOffloadStateDelegated(),
    )


def _path(proto: Protocol, dst: bytes) -> OffloadBlock:
    handle = NdisOffloadHandle(proto.name, owner=dst)
    return new_path_block(handle, PathOffloadStateConst(b"\x7f\x00\x00\x01", dst))


def test_spec_worked_example_of_a_partial_initiate() -> None:
    scheduler, proto, nic, binding = _stack()
    n1 = new_neighbor_block(NdisOffloadHandle(proto.name, owner="N1"))
    p1 = n1.add_dependent(_path(proto, b"\x7f\x00\x00\x02"))
    t1 = p1.add_dependent(_tcp(proto, 1001))
    t2 = p1.add_dependent(_tcp(proto, 1002))
    p2 = n1.add_dependent(_path(proto, b"\x7f\x00\x00\x03"))
    t3 = p2.add_dependent(_tcp(proto, 1003))
    # T2 carries outstanding send data: on failure the target must leave it untouched
    send = NetBufferList.for_data(b"not yet acknowledged")
    t2.net_buffer_list_chain = send
    assert [b for b in walk(n1)] == [n1, p1, t1, t2, p2, t3]  # depth first, then next

    # the second TCP block fails for resources; the second path block fails otherwise
    nic.fail_next.append(FailNext(1, "MiniportInitiateOffload", S.NDIS_STATUS_RESOURCES, 1, skip=1))
    nic.fail_next.append(
        FailNext(2, "MiniportInitiateOffload[path]", S.NDIS_STATUS_FAILURE, 1, skip=1)
    )
    proto.ndis.NdisInitiateOffload(proto, binding, n1)
    scheduler.run()

    assert proto.completed == [n1]  # one completion, the same root
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
    # the failed connection's send NBL was neither completed nor given a status
    assert send.status == S.NDIS_STATUS_PENDING and send.source_bindings == []
    assert nic.stats.handles == 3 and nic.tcp_count == 1
    assert nic.stats.outstanding_nbls == 0


def test_root_failure_stops_the_walk() -> None:
    scheduler, proto, nic, binding = _stack()
    n1 = new_neighbor_block(NdisOffloadHandle(proto.name, owner="N1"))
    p1 = n1.add_dependent(_path(proto, b"\x7f\x00\x00\x02"))
    t1 = p1.add_dependent(_tcp(proto, 1001))
    n2 = new_neighbor_block(NdisOffloadHandle(proto.name, owner="N2"))
    n1.next_block = n2
    nic.fail_next.append(FailNext(1, "MiniportInitiateOffload[neighbor]", S.NDIS_STATUS_FAILURE, 1))
    proto.ndis.NdisInitiateOffload(proto, binding, n1)
    scheduler.run()
    assert [b.status for b in (n1, p1, t1, n2)] == [S.NDIS_STATUS_FAILURE] * 4
    assert nic.stats.handles == 0


def test_capacity_gives_tcp_entries_and_linkers_reuse_objects() -> None:
    scheduler, proto, nic, binding = _stack()
    nic.max_connections = 1
    n1 = new_neighbor_block(NdisOffloadHandle(proto.name, owner="N1"))
    p1 = n1.add_dependent(_path(proto, b"\x7f\x00\x00\x02"))
    t1 = p1.add_dependent(_tcp(proto, 1001))
    t2 = p1.add_dependent(_tcp(proto, 1002))
    proto.ndis.NdisInitiateOffload(proto, binding, n1)
    scheduler.run()
    assert (t1.status, t2.status) == (S.NDIS_STATUS_SUCCESS, S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES)
    # a second tree links to the offloaded neighbor and path (linkers, no state)
    nic.max_connections = 2
    assert n1.offload_handle is not None and p1.offload_handle is not None
    link_n = new_neighbor_block(n1.offload_handle)
    link_p = link_n.add_dependent(new_path_block(p1.offload_handle))
    t3 = link_p.add_dependent(_tcp(proto, 1003))
    proto.ndis.NdisInitiateOffload(proto, binding, link_n)
    scheduler.run()
    assert [b.status for b in (link_n, link_p, t3)] == [S.NDIS_STATUS_SUCCESS] * 3
    assert nic.stats.handles == 4  # one neighbor, one path, two TCP contexts
