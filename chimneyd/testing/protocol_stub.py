"""A protocol edge that plays the host (or any upper driver): it issues what the test asks
and records every call NDIS makes on it, keeping its `stats` gauges as a real layer must.

Longer than most modules because it implements every protocol-edge handler NDIS may call, each a
recorder of a few lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from chimneyd.drivers.tcp import seq
from chimneyd.ndis.blocks import (
    NeighborOffloadStateCached,
    NeighborOffloadStateConst,
    NeighborOffloadStateDelegated,
    OffloadBlock,
    PathOffloadStateCached,
    PathOffloadStateConst,
    PathOffloadStateDelegated,
    TcpOffloadStateCached,
    TcpOffloadStateConst,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.broker import Binding, Layer, Ndis
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.oid import NdisOidRequest
from chimneyd.ndis.status import (
    OFFLOADED_STATUSES,
    IndicateOffloadEvent,
    NdisStatus,
    TcpDisconnectFlags,
    TcpOffloadEventType,
)

from .memwire import MemoryWire
from .records import (
    LOOPBACK,
    SUCCESS,
    EventIndication,
    IoCompletion,
    OffloadTree,
    ReceiveIndication,
    ReceivePolicy,
    S,
    StateCompletion,
    WireEvent,
    accept_all,
    nbl_bytes,
)


class ProtocolStub(Layer):
    """A protocol edge that issues what the test asks and records every call NDIS makes on it."""

    kind = "protocol-stub"
    has_protocol_edge = True

    def __init__(self, name: str, ndis: Ndis) -> None:
        super().__init__(name, ndis)
        self.receive_policy: ReceivePolicy = accept_all
        # what it issued
        self.issued: list[tuple[str, OffloadBlock]] = []  # state operations, in call order
        self.io_returns: list[NdisStatus] = []  # synchronous returns of NdisOffloadTcpXxx
        self.posted_on: dict[int, NdisOffloadHandle] = {}  # NBL id -> handle it was posted on
        # what NDIS called on it, in order
        self.state_completions: list[StateCompletion] = []
        self.completions: list[IoCompletion] = []
        self.events: list[EventIndication] = []
        self.indications: list[ReceiveIndication] = []
        self.status_indications: list[tuple[Binding, NdisStatus]] = []
        self.offload_events: list[tuple[OffloadBlock, IndicateOffloadEvent]] = []
        self.oid_completions: list[tuple[Binding, NdisOidRequest]] = []
        self.ordinary: list[tuple[Any, int, bytes, int]] = []  # NdisMIndicateReceiveNetBufferLists
        self.wire_events: list[WireEvent] = []  # as a wire's home (host mode)
        # what it holds, and what it found wrong
        self.held: list[NetBufferList] = []  # indicated NBLs accepted and not yet returned
        self.returned_sends: list[NetBufferList] = []  # send data handed back, not completed
        self.slot_errors: list[str] = []  # slots written (or not) against spec §3.2.3
        self._lengths: dict[int, int] = {}  # NBL id -> data length when posted
        self._live: dict[int, NdisOffloadHandle] = {}  # handles this edge owns
        self._new: set[int] = set()  # handle ids in an initiate in flight as new offloads
        self._slots: dict[int, list[tuple[OffloadBlock, Any]]] = {}  # id(root) -> slots before
        self._received: dict[int, bytearray] = {}  # handle id -> bytes received, in order
        self._conn_ids = 0

    # -- handles and trees -----------------------------------------------------------------------
    def new_handle(self, label: str, traced: bool = False) -> NdisOffloadHandle:
        """A new `NDIS_OFFLOAD_HANDLE`; a traced one gets its own connection trace, which also
        keys the invariant checker's per-connection FIFOs."""
        trace = None
        if traced:
            self._conn_ids += 1
            trace = self.ndis.new_trace(self._conn_ids)
        handle = NdisOffloadHandle(self.name, label, trace)
        self._live[handle.id] = handle
        self.stats.handles = len(self._live)
        return handle

    def neighbor_block(self, existing: NdisOffloadHandle | None = None) -> OffloadBlock:
        """A new-offload neighbor block, or a linker to an offloaded one (spec §2.3)."""
        if existing is not None:
            return new_neighbor_block(existing)
        return new_neighbor_block(
            self.new_handle("neighbor"),
            NeighborOffloadStateConst(),
            NeighborOffloadStateCached(DlDestinationAddress=b"\x02\x00\x00\x00\x00\x01"),
            NeighborOffloadStateDelegated(),
        )

    def path_block(
        self,
        existing: NdisOffloadHandle | None = None,
        src: bytes = LOOPBACK,
        dst: bytes = LOOPBACK,
    ) -> OffloadBlock:
        if existing is not None:
            return new_path_block(existing)
        return new_path_block(
            self.new_handle("path"),
            PathOffloadStateConst(SourceAddress=src, DestinationAddress=dst),
            PathOffloadStateCached(),
            PathOffloadStateDelegated(),
        )

    def tcp_block(
        self,
        wire: MemoryWire | None = None,
        local_port: int = 0,
        send: Sequence[bytes] = (),
        buffered: bytes = b"",
        rcv_nxt: int | None = None,
    ) -> OffloadBlock:
        """A new-offload TCP block. With a wire, the state is the wire's (ports, RcvNxt, SndUna
        …) and the wire's home becomes this stub; `send` is outstanding send data never sent yet
        (spec §3.2.5), `buffered` received data the host holds (`BufferedData`, spec §3.2.3),
        `rcv_nxt` the stream offset the host has received up to if it is not all the wire read
        (the rest comes down later by `NdisOffloadTcpForward`, spec §4.6)."""
        handle = self.new_handle("tcp", traced=True)
        if wire is not None:
            if wire.home is None:
                wire.set_home(self, handle)
            const = TcpOffloadStateConst(LocalPort=wire.local[1], RemotePort=wire.remote[1])
            acked = wire.acked()
            delegated = TcpOffloadStateDelegated(
                RcvNxt=seq(wire.irs, wire.bytes_read if rcv_nxt is None else rcv_nxt),
                SndUna=seq(wire.isn, acked),
                SndNxt=seq(wire.isn, wire.bytes_written),
                SndMax=seq(wire.isn, wire.bytes_written),
                RcvWnd=65535,
            )
            if acked != wire.bytes_written:
                raise ValueError("tcp_block takes a wire whose written bytes are all acknowledged")
        else:
            # a port of its own per handle, in range however many handles the process made
            # before (a 16-bit field: the MUX's hash policy packs it in two bytes)
            port = local_port or 1024 + handle.id % (65535 - 1024)
            const = TcpOffloadStateConst(LocalPort=port, RemotePort=80)
            delegated = TcpOffloadStateDelegated()
        block = new_tcp_block(handle, const, TcpOffloadStateCached(), delegated)
        chain = [NetBufferList.for_data(p) for p in send]
        for nbl in chain:
            self.stats.outstanding_nbls += 1  # the host's send data, until it comes back
            nbl.trace = handle.trace
            self._lengths[nbl.id] = nbl.data_length
            self.posted_on[nbl.id] = handle
        block.net_buffer_list_chain = link_chain(chain)
        delegated.SendDataHead = chain[0] if chain else None
        delegated.SendDataTail = chain[-1] if chain else None
        if buffered:
            # received and acknowledged by the host, not delivered: with a wire these must be
            # the last bytes it read, since RcvNxt is already past them
            if wire is not None and wire.bytes_read < len(buffered):
                raise ValueError("buffered data must have been read from the wire")
            delegated.BufferedData = NetBufferList.for_data(buffered)
            delegated.BufferedData.trace = handle.trace
        return block

    def connection_tree(
        self, wires: Sequence[MemoryWire | None] = (None,), send: Sequence[bytes] = ()
    ) -> OffloadTree:
        """One neighbor, one path, one TCP block per wire (None: a connection with no wire)."""
        root = self.neighbor_block()
        path = root.add_dependent(self.path_block())
        tree = OffloadTree(root, root.offload_handle)
        assert path.offload_handle is not None
        tree.paths.append(path.offload_handle)
        for wire in wires:
            block = path.add_dependent(self.tcp_block(wire, send=send))
            assert block.offload_handle is not None
            tree.tcp.append(block.offload_handle)
            if wire is not None:
                tree.wires[block.offload_handle.id] = wire
        return tree

    def reference_tree(
        self,
        tree: OffloadTree,
        tcp: Iterable[NdisOffloadHandle] | None = None,
        with_path: bool = False,
        with_neighbor: bool = False,
        state: str = "",
    ) -> OffloadBlock:
        """A tree naming offloaded objects of `tree` (spec §2.3): TCP blocks for `tcp` (default
        all), the path and neighbor as placeholders unless named. `state` says which structure
        follows each TCP block: "delegated" (query, terminate), "cached" (update) or none
        (invalidate)."""
        root = new_neighbor_block(tree.neighbor if with_neighbor else None)
        path = root.add_dependent(new_path_block(tree.paths[0] if with_path else None))
        for handle in tree.tcp if tcp is None else tcp:
            block = new_tcp_block(handle)
            if state == "delegated":
                block.delegated = TcpOffloadStateDelegated()
            elif state == "cached":
                block.cached = TcpOffloadStateCached(InitialRcvWnd=32768)
            path.add_dependent(block)
        return root

    # -- state operations down -------------------------------------------------------------------
    def _binding(self, binding: Binding | None) -> Binding:
        return binding if binding is not None else self.lower_bindings[0]

    def initiate(self, root: OffloadBlock, binding: Binding | None = None) -> None:
        slots: list[tuple[OffloadBlock, Any]] = []
        for block in walk(root):
            h = block.offload_handle
            if h is not None:
                slots.append((block, h.miniport_offload_context))
                if h.miniport_offload_context is None:
                    self._new.add(h.id)
        self._slots[id(root)] = slots
        self.issued.append(("Initiate", root))
        self.ndis.NdisInitiateOffload(self, self._binding(binding), root)

    def terminate(self, root: OffloadBlock, binding: Binding | None = None) -> None:
        self.issued.append(("Terminate", root))
        self.ndis.NdisTerminateOffload(self, self._binding(binding), root)

    def update(self, root: OffloadBlock, binding: Binding | None = None) -> None:
        self.issued.append(("Update", root))
        self.ndis.NdisUpdateOffload(self, self._binding(binding), root)

    def invalidate(self, root: OffloadBlock, binding: Binding | None = None) -> None:
        self.issued.append(("Invalidate", root))
        self.ndis.NdisInvalidateOffload(self, self._binding(binding), root)

    def query(self, root: OffloadBlock, binding: Binding | None = None) -> None:
        self.issued.append(("Query", root))
        self.ndis.NdisQueryOffloadState(self, self._binding(binding), root)

    # -- state completions up --------------------------------------------------------------------
    def _state_done(self, op: str, binding: Binding, root: OffloadBlock) -> None:
        self.state_completions.append(
            StateCompletion(op, binding, root, [b.status for b in walk(root)])
        )

    def _release(self, handle: NdisOffloadHandle) -> None:
        self._live.pop(handle.id, None)
        self.stats.handles = len(self._live)

    def ProtocolInitiateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        self._state_done("Initiate", binding, root)
        self._check_slots(root)
        for block in walk(root):
            h = block.offload_handle
            if h is None or h.id not in self._new:
                continue
            self._new.discard(h.id)
            if block.status in OFFLOADED_STATUSES:
                self.stats.offloads_active += 1
                continue
            self._release(h)  # never offloaded: the host keeps the connection
            for nbl in iter_chain(block.net_buffer_list_chain):
                self.stats.outstanding_nbls -= 1  # our send data is ours again (spec §3.2.4)
                self.returned_sends.append(nbl)

    def _check_slots(self, root: OffloadBlock) -> None:
        """Slots are written only for new offloads that succeeded (spec §3.2.3, §9 item 6)."""
        for block, before in self._slots.pop(id(root), []):
            h = block.offload_handle
            assert h is not None
            now = h.miniport_offload_context
            offloaded = block.status in OFFLOADED_STATUSES
            if before is not None:
                if now is not before:
                    self.slot_errors.append(f"the slot of offloaded handle {h.id} was rewritten")
            elif offloaded and now is None:
                self.slot_errors.append(f"handle {h.id} offloaded but its slot left empty")
            elif not offloaded and now is not None:
                self.slot_errors.append(
                    f"handle {h.id} not offloaded ({S(block.status).name}) but its slot written"
                )

    def ProtocolTerminateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        self._state_done("Terminate", binding, root)
        for block in walk(root):
            h = block.offload_handle
            if h is None or block.status != SUCCESS:
                continue
            self.stats.offloads_active -= 1
            self._release(h)
            for nbl in iter_chain(block.net_buffer_list_chain):
                self.stats.outstanding_nbls -= 1  # handed back: ours to send again (spec §3.6.3)
                self.returned_sends.append(nbl)
            d = block.delegated
            if isinstance(d, TcpOffloadStateDelegated) and d.BufferedData is not None:
                # the host copies buffered data and gives the NBLs back (spec §3.6.3)
                for nbl in iter_chain(d.BufferedData):
                    self.stats.outstanding_nbls += 1
                    self.held.append(nbl)

    def ProtocolUpdateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        self._state_done("Update", binding, root)

    def ProtocolInvalidateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        self._state_done("Invalidate", binding, root)

    def ProtocolQueryOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        self._state_done("Query", binding, root)

    # -- I/O down ------------------------------------------------------------------------------------
    def _nbls(self, handle: NdisOffloadHandle, nbls: list[NetBufferList]) -> NetBufferList:
        for nbl in nbls:
            nbl.trace = handle.trace
            self._lengths[nbl.id] = nbl.data_length
            self.posted_on[nbl.id] = handle
        head = link_chain(nbls)
        assert head is not None
        return head

    def send(self, handle: NdisOffloadHandle, *payloads: bytes) -> list[NetBufferList]:
        nbls = [NetBufferList.for_data(p) for p in payloads]
        self.io_returns.append(self.ndis.NdisOffloadTcpSend(self, handle, self._nbls(handle, nbls)))
        return nbls

    def receive(
        self, handle: NdisOffloadHandle, *sizes: int, no_push: bool = False
    ) -> list[NetBufferList]:
        nbls = [NetBufferList.for_receive(n, no_push) for n in sizes]
        self.io_returns.append(
            self.ndis.NdisOffloadTcpReceive(self, handle, self._nbls(handle, nbls))
        )
        return nbls

    def disconnect(
        self,
        handle: NdisOffloadHandle,
        flags: int = TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE,
        data: bytes = b"",
    ) -> NetBufferList:
        nbl = NetBufferList.for_data(data)
        self.io_returns.append(
            self.ndis.NdisOffloadTcpDisconnect(self, handle, self._nbls(handle, [nbl]), flags)
        )
        return nbl

    def forward(self, handle: NdisOffloadHandle, *segments: bytes) -> list[NetBufferList]:
        nbls = [NetBufferList.for_data(s) for s in segments]
        self.io_returns.append(
            self.ndis.NdisOffloadTcpForward(self, handle, self._nbls(handle, nbls))
        )
        return nbls

    def return_indications(
        self, nbls: Sequence[NetBufferList] | None = None, binding: Binding | None = None
    ) -> list[NetBufferList]:
        """`NdisOffloadTcpReceiveReturn` of held NBLs (default: all), as one chain."""
        give = list(self.held if nbls is None else nbls)
        for nbl in give:
            self.held.remove(nbl)
        if give:
            head = link_chain(give)
            assert head is not None
            self.ndis.NdisOffloadTcpReceiveReturn(self, self._binding(binding), head)
        return give

    # -- I/O completions up ------------------------------------------------------------------------
    def _completed(self, kind: str, binding: Binding, head: NetBufferList) -> None:
        for nbl in iter_chain(head):
            handle = self.posted_on.get(nbl.id)
            nb = nbl.first_net_buffer
            if kind == "receive" and handle is not None and nb is not None and nb.mdl_chain:
                # our request buffers start at offset 0: the placed bytes are its first ones
                placed = nb.mdl_chain.buffer[: nbl.tcp_offload_bytes_transferred]
                self._received.setdefault(handle.id, bytearray()).extend(placed)
            self.completions.append(
                IoCompletion(
                    kind,
                    binding,
                    nbl,
                    nbl.status,
                    nbl.tcp_offload_bytes_transferred,
                    self._lengths.pop(nbl.id, -1),
                    nbl.data_length,
                )
            )

    def ProtocolTcpOffloadSendComplete(self, binding: Binding, head: NetBufferList) -> None:
        self._completed("send", binding, head)

    def ProtocolTcpOffloadReceiveComplete(self, binding: Binding, head: NetBufferList) -> None:
        self._completed("receive", binding, head)

    def ProtocolTcpOffloadDisconnectComplete(self, binding: Binding, nbl: NetBufferList) -> None:
        self._completed("disconnect", binding, nbl)

    def ProtocolTcpOffloadForwardComplete(self, binding: Binding, head: NetBufferList) -> None:
        self._completed("forward", binding, head)

    def completed(self, kind: str | None = None) -> list[NetBufferList]:
        return [c.nbl for c in self.completions if kind is None or c.kind == kind]

    def completion_of(self, nbl: NetBufferList) -> IoCompletion | None:
        for c in self.completions:
            if c.nbl is nbl:
                return c
        return None

    # -- indications up ----------------------------------------------------------------------------
    def ProtocolTcpOffloadEvent(
        self, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        self.events.append(EventIndication(handle, event_type, info))

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: NdisOffloadHandle, nbl: NetBufferList, status: NdisStatus
    ) -> None:
        data = nbl_bytes(nbl)
        returned, consumed = self.receive_policy(nbl)
        self._received.setdefault(handle.id, bytearray()).extend(data[:consumed])
        self.indications.append(ReceiveIndication(handle, nbl, status, data, returned, consumed))
        if returned == SUCCESS:
            self.held.append(nbl)
        self.ndis.NdisReturnReceiveIndication(self, nbl, returned, consumed)

    def ProtocolStatusEx(self, binding: Binding, status: NdisStatus) -> None:
        self.status_indications.append((binding, status))

    def ProtocolIndicateOffloadEvent(
        self, binding: Binding, block: OffloadBlock, code: IndicateOffloadEvent
    ) -> None:
        """Records the event and answers at once, the neighbor confirmed reachable 1 tick ago
        (spec §5.4: the host writes its HRD into the block's cached state)."""
        self.offload_events.append((block, code))
        if block.cached is not None:
            block.cached.HostReachabilityDelta = 1
        self.ndis.NdisReturnOffloadEventIndicate(self, block)

    def oid(self, request: NdisOidRequest, binding: Binding | None = None) -> None:
        """`NdisOidRequest` down `binding` (the first by default)."""
        self.ndis.NdisOidRequest(self, self._binding(binding), request)

    def ProtocolOidRequestComplete(self, binding: Binding, request: NdisOidRequest) -> None:
        self.oid_completions.append((binding, request))

    def ProtocolReceiveNetBufferLists(
        self, binding: Binding, wire: Any, offset: int, data: bytes, flags: int
    ) -> None:
        self.ordinary.append((wire, offset, data, flags))

    # -- the wire's home (host mode): events while no target owns the socket -------------------------
    def WireData(self, ctx: Any, offset: int, data: bytes) -> None:
        self.wire_events.append(WireEvent("WireData", ctx, (offset, data)))

    def WireEof(self, ctx: Any, offset: int) -> None:
        self.wire_events.append(WireEvent("WireEof", ctx, (offset,)))

    def WireReset(self, ctx: Any, reason: str) -> None:
        self.wire_events.append(WireEvent("WireReset", ctx, (reason,)))

    def WireTimeout(self, ctx: Any, reason: str) -> None:
        self.wire_events.append(WireEvent("WireTimeout", ctx, (reason,)))

    def WireAcked(self, ctx: Any, acked: int) -> None:
        self.wire_events.append(WireEvent("WireAcked", ctx, (acked,)))

    # -- reading what came back ----------------------------------------------------------------------
    def received_data(self, handle: NdisOffloadHandle) -> bytes:
        """Bytes that reached this edge on `handle`, in arrival order: the consumed part of each
        receive indication and the bytes placed in each completed receive request."""
        return bytes(self._received.get(handle.id, b""))
