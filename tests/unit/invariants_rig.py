"""A socket-free rig for the invariant checker's tests: a real broker and pass-through IMs
between two stub edges that do only what a test tells them (spec §9 items fed one by one).

`Top` is a protocol edge (a host that records what comes back and answers nothing by itself),
`Bottom` a miniport edge (a NIC that records the calls it gets and completes them when the test
says): barer than `chimneyd.testing`'s stubs, which answer indications and check slots
themselves, so that a test can feed the checker any sequence, legal or not. Everything runs on
the broker's `SyncScheduler`; `Rig.run()` delivers until idle.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.ndis.blocks import (
    BlockKind,
    OffloadBlock,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.broker import Binding, Layer, Ndis, SyncScheduler
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import OFFLOADED_STATUSES, NdisStatus
from chimneyd.observe.invariants import InvariantChecker
from chimneyd.testing.clock import ManualClock, ManualTimers
from chimneyd.testing.factories import make_passthrough

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS


class Ctx:
    """A miniport context, with an id from NDIS's one id space."""

    def __init__(self, what: str = "ctx") -> None:
        self.id = next_object_id()
        self.what = what


def _recorder(name: str) -> Callable[..., None]:
    def handler(self: Any, *args: Any) -> None:
        self.calls.append((name, args))

    handler.__name__ = name
    return handler


class Top(Layer):
    """A protocol edge that records completions and indications (it returns none by itself)."""

    kind = "stub-protocol"
    has_protocol_edge = True

    def __init__(self, name: str, ndis: Ndis) -> None:
        super().__init__(name, ndis)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []


class Bottom(Layer):
    """A miniport edge that records every call; the test completes them."""

    kind = "stub-miniport"
    has_miniport_edge = True

    def __init__(self, name: str, ndis: Ndis) -> None:
        super().__init__(name, ndis)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def last(self, name: str) -> tuple[Any, ...]:
        for call, args in reversed(self.calls):
            if call == name:
                return args
        raise AssertionError(f"{self.name} got no {name}")


for _name in (
    "ProtocolInitiateOffloadComplete",
    "ProtocolTerminateOffloadComplete",
    "ProtocolUpdateOffloadComplete",
    "ProtocolInvalidateOffloadComplete",
    "ProtocolQueryOffloadComplete",
    "ProtocolTcpOffloadSendComplete",
    "ProtocolTcpOffloadReceiveComplete",
    "ProtocolTcpOffloadDisconnectComplete",
    "ProtocolTcpOffloadForwardComplete",
    "ProtocolTcpOffloadEvent",
    "ProtocolTcpOffloadReceiveIndicate",
    "ProtocolIndicateOffloadEvent",
    "ProtocolStatusEx",
    "ProtocolReceiveNetBufferLists",
):
    setattr(Top, _name, _recorder(_name))
for _name in (
    "MiniportInitiateOffload",
    "MiniportTerminateOffload",
    "MiniportUpdateOffload",
    "MiniportInvalidateOffload",
    "MiniportQueryOffload",
    "MiniportTcpOffloadSend",
    "MiniportTcpOffloadReceive",
    "MiniportTcpOffloadDisconnect",
    "MiniportTcpOffloadForward",
    "MiniportTcpOffloadReceiveReturn",
    "ReceiveIndicateReturned",
):
    setattr(Bottom, _name, _recorder(_name))


class Conn:
    """One offloaded connection as the rig knows it."""

    def __init__(self, conn_id: int, neighbor: NdisOffloadHandle, path: NdisOffloadHandle) -> None:
        self.id = conn_id
        self.neighbor = neighbor
        self.path = path
        self.handle: NdisOffloadHandle  # the host's TCP handle
        self.nic_upper: NdisOffloadHandle  # the handle the NIC indicates with
        self.ctx: Ctx  # the NIC's context


class Rig:
    """host (`Top`) → `ims` pass-through IMs (or the given classes) → nic (`Bottom`)."""

    def __init__(self, ims: int | list[type[PassthroughIm]] = 0) -> None:
        self.clock = ManualClock()
        self.scheduler = SyncScheduler()
        self.ndis = Ndis(clock=self.clock, deliver=self.scheduler)
        self.checker = InvariantChecker()
        self.ndis.observer = self.checker
        classes = [PassthroughIm] * ims if isinstance(ims, int) else ims
        self.host = Top("tcpip", self.ndis)
        # built where every test builds the real layer kinds (`make_passthrough` takes what it
        # needs of a `chimneyd.testing.Stack`: `ndis` and `timers`)
        self.ims = [make_passthrough(self, f"im{i}", cls) for i, cls in enumerate(classes)]
        self.nic = Bottom("nic0", self.ndis)
        chain: list[Layer] = [self.host, *self.ims, self.nic]
        self.bindings = [self.ndis.bind(a, b) for a, b in itertools.pairwise(chain)]
        self.binding: Binding = self.bindings[0]
        self._conn_ids = 0

    def timers(self) -> ManualTimers:
        return self.clock.timers(self.ndis.post)

    # -- running and reading -------------------------------------------------------------------
    def run(self) -> None:
        self.scheduler.run()

    @property
    def violations(self) -> list[str]:
        return self.checker.violations

    def flagged(self, item: str) -> list[str]:
        """The violations citing `item` (e.g. "§9 item 4")."""
        return [v for v in self.checker.violations if item in v]

    def drained(self) -> list[str]:
        return self.checker.check_drained({})

    # -- state operations ----------------------------------------------------------------------
    def new_handle(self, owner: str, conn: int = 0) -> NdisOffloadHandle:
        trace = self.ndis.new_trace(conn) if conn else None
        return NdisOffloadHandle(self.host.name, owner, trace)

    def tree(self, n: Any, p: Any, *tcps: Any, ipv6: bool = False) -> OffloadBlock:
        """neighbor → path → TCPs; each argument a handle, None (placeholder) or a block."""
        root = n if isinstance(n, OffloadBlock) else new_neighbor_block(n)
        pblock = p if isinstance(p, OffloadBlock) else new_path_block(p, ipv6=ipv6)
        root.add_dependent(pblock)
        for t in tcps:
            pblock.add_dependent(t if isinstance(t, OffloadBlock) else new_tcp_block(t))
        return root

    def down(self, op: str, root: OffloadBlock) -> OffloadBlock:
        """The host issues `Ndis<op>Offload`; returns the tree the NIC got."""
        call = "NdisQueryOffloadState" if op == "Query" else f"Ndis{op}Offload"
        getattr(self.ndis, call)(self.host, self.binding, root)
        self.run()
        return self.nic.last(f"Miniport{op}Offload")[0]  # type: ignore[no-any-return]

    def up(
        self,
        op: str,
        root: OffloadBlock,
        statuses: dict[int, NdisStatus] | None = None,
        default: NdisStatus = SUCCESS,
    ) -> None:
        """The NIC completes `root`; `statuses` by walk index. A new block that ends offloaded
        gets a fresh context in its slot."""
        for i, block in enumerate(walk(root)):
            block.status = (statuses or {}).get(i, default)
            cell = block.miniport_offload_context
            if (
                op == "Initiate"
                and cell is not None
                and cell.miniport_offload_context is None
                and block.status in OFFLOADED_STATUSES
            ):
                cell.miniport_offload_context = Ctx(block.kind.value)
        call = "NdisMQueryOffloadStateComplete" if op == "Query" else f"NdisM{op}OffloadComplete"
        getattr(self.ndis, call)(self.nic, root)
        self.run()

    def offload(
        self,
        buffered: bytes = b"",
        sends: list[NetBufferList] | None = None,
        rcv_nxt: int = 1000,
        under: Conn | None = None,
    ) -> Conn:
        """Offload one connection (with a new neighbor and path, or under `under`'s)."""
        self._conn_ids += 1
        cid = self._conn_ids
        if under is None:
            conn = Conn(cid, self.new_handle("N"), self.new_handle("P"))
        else:
            conn = Conn(cid, under.neighbor, under.path)
        conn.handle = self.new_handle(f"T{cid}", cid)
        d = TcpOffloadStateDelegated(RcvNxt=rcv_nxt)
        if buffered:
            d.BufferedData = NetBufferList.for_data(buffered)
        tcp = new_tcp_block(conn.handle, delegated=d)
        if sends:
            tcp.net_buffer_list_chain = link_chain(sends)
        low = self.down("Initiate", self.tree(conn.neighbor, conn.path, tcp))
        self.up("Initiate", low)
        block = next(b for b in walk(low) if b.kind is BlockKind.TCP)
        assert block.offload_handle is not None
        conn.nic_upper = block.offload_handle
        conn.ctx = conn.nic_upper.miniport_offload_context
        return conn

    def terminate(
        self,
        conn: Conn,
        rcv_nxt: int = 1000,
        buffered: bytes = b"",
        with_objects: bool = False,
        returned: list[NetBufferList] | None = None,
        during: Callable[[], None] | None = None,
    ) -> OffloadBlock:
        """Terminate the connection (and its path and neighbor); the NIC runs `during` (its
        completions while the terminate is under way), fills the delegated state and
        completes. Returns the tree the host got back."""
        d = TcpOffloadStateDelegated()
        tcp = new_tcp_block(conn.handle, delegated=d)
        root = self.tree(
            conn.neighbor if with_objects else None, conn.path if with_objects else None, tcp
        )
        low = self.down("Terminate", root)
        if during is not None:
            during()
        for block in walk(low):
            if block.delegated is d:
                d.RcvNxt = rcv_nxt
                if buffered:
                    d.BufferedData = NetBufferList.for_data(buffered)
                if returned:
                    block.net_buffer_list_chain = link_chain(returned)
        self.up("Terminate", low)
        return root

    # -- I/O -----------------------------------------------------------------------------------
    def send(self, conn: Conn, *payloads: bytes) -> list[NetBufferList]:
        nbls = [self.nbl(conn, p) for p in payloads]
        self.ndis.NdisOffloadTcpSend(self.host, conn.handle, link_chain(nbls))
        self.run()
        return nbls

    def post(self, conn: Conn, *sizes: int) -> list[NetBufferList]:
        nbls = []
        for size in sizes:
            nbl = NetBufferList.for_receive(size)
            nbl.trace = conn.handle.trace
            nbls.append(nbl)
        self.ndis.NdisOffloadTcpReceive(self.host, conn.handle, link_chain(nbls))
        self.run()
        return nbls

    def disconnect(self, conn: Conn) -> NetBufferList:
        nbl = self.nbl(conn, b"")
        self.ndis.NdisOffloadTcpDisconnect(self.host, conn.handle, nbl, 1)
        self.run()
        return nbl

    def nbl(self, conn: Conn, data: bytes) -> NetBufferList:
        nbl = NetBufferList.for_data(bytearray(data))
        nbl.trace = conn.handle.trace
        return nbl

    def complete(
        self,
        which: str,
        nbls: list[NetBufferList],
        status: NdisStatus = SUCCESS,
        done: list[int] | None = None,
    ) -> None:
        """The NIC completes `nbls` (one chain) with `status`; `done[i]` bytes transferred
        (default: all for SUCCESS, none otherwise), the NB advanced by as many."""
        for i, nbl in enumerate(nbls):
            nbl.status = status
            n = done[i] if done is not None else (nbl.data_length if status == SUCCESS else 0)
            nbl.tcp_offload_bytes_transferred = n
            nbl.advance(n)
        getattr(self.ndis, f"NdisTcpOffload{which}Complete")(self.nic, link_chain(nbls))
        self.run()

    def fill(self, req: NetBufferList, data: bytes, status: NdisStatus = SUCCESS) -> None:
        """The NIC places `data` in a posted receive request and completes it."""
        nb = req.first_net_buffer
        assert nb is not None
        nb.copy_in(0, memoryview(data))
        self.complete("Receive", [req], status, [len(data)])

    def indicate(self, conn: Conn, data: bytes) -> NetBufferList:
        nbl = self.nbl(conn, data)
        self.ndis.NdisTcpOffloadReceiveHandler(self.nic, conn.nic_upper, nbl)
        self.run()
        return nbl

    def answer(self, nbl: NetBufferList, status: NdisStatus = SUCCESS, consumed: int = -1) -> None:
        """The host returns the indication (all consumed by default)."""
        n = nbl.data_length if consumed < 0 else consumed
        self.ndis.NdisReturnReceiveIndication(self.host, nbl, status, n)
        self.run()

    def give_back(self, *nbls: NetBufferList) -> None:
        """`NdisOffloadTcpReceiveReturn` from the host."""
        self.ndis.NdisOffloadTcpReceiveReturn(self.host, self.binding, link_chain(nbls))
        self.run()

    def host_got(self, name: str) -> list[Any]:
        out: list[Any] = []
        for call, args in self.host.calls:
            if call == name:
                out.extend(iter_chain(args[1]) if isinstance(args[1], NetBufferList) else [args])
        return out
