"""The host stack: TCBs for real TCP connections, their socket API, and the offload policy.

Spec §1.1 (host role), §3 (state operations from the host side), §4 (I/O), §5 (reactions to
events and status indications). Not offloaded, the host carries a connection's bytes itself on its
socket; offloaded, it drives the NIC through NDIS. Every transition hands bytes over with their
stream offsets, so nothing is lost, duplicated or reordered (design: "the socket changes hands").

Application requests (`app_*`) take a `done(result, error)` callback; the asyncio shell turns
those into futures. `error` is an `AppError` with a contract code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

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
from chimneyd.ndis.broker import Binding, Ndis
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Call, OffloadLifecycle
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import (
    OFFLOADED_STATUSES,
    NdisStatus,
    TcpDisconnectFlags,
    TcpOffloadConnectionState,
    TcpOffloadEventType,
    TcpUploadReason,
)
from chimneyd.ndis.trace import HopTrace

from .base import DriverLayer, Timers
from .segment import MAX_SEGMENT_PAYLOAD, TH_ACK, TH_FIN, TH_PSH, TH_RST, build_segment
from .wire import WirePort, offset_of, seq

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
TCP_STATE = TcpOffloadConnectionState
Done = Callable[[Any, "AppError | None"], None]

# TCB states as `tcp.info` reports them (rpc-contract)
HOST, OFFLOADING, OFFLOADED, UPLOADING, CLOSED = (
    "host",
    "offloading",
    "offloaded",
    "uploading",
    "closed",
)


class AppError(Exception):
    """A failed application request: contract error symbol + detail."""

    def __init__(self, symbol: str, detail: str) -> None:
        super().__init__(f"{symbol}: {detail}")
        self.symbol = symbol
        self.detail = detail


def ndis_error(status: NdisStatus, extra: str = "") -> AppError:
    return AppError("NDIS_STATUS", status.describe() + extra)


class HostObject:
    """A neighbor or path object the host offloads and shares among connections (spec §2.3)."""

    def __str__(self) -> str:
        return f"host {self.block_kind} {self.key}"

    __slots__ = ("binding", "block_kind", "handle", "key", "lifecycle", "parent", "refs", "state")

    def __init__(
        self, key: Any, block_kind: str, binding: Binding, parent: HostObject | None
    ) -> None:
        self.key = key
        self.block_kind = block_kind
        self.binding = binding
        self.parent = parent
        self.handle: NdisOffloadHandle | None = None
        self.lifecycle = OffloadLifecycle(self)
        self.refs = 0  # offloaded dependents
        self.state = "idle"  # idle | offloading | offloaded | terminating


class Tcb:
    """Transmission control block of one connection."""

    def __str__(self) -> str:
        return f"TCB {self.conn_id}"

    __slots__ = (
        "aborted",
        "app_rx",
        "app_rx_bytes",
        "binding",
        "cached",
        "conn_id",
        "deferred",
        "delegated",
        "disconnect_done",
        "fin_sent",
        "forward_q",
        "handle",
        "hw_failed",
        "lifecycle",
        "listener",
        "offload_done",
        "ooo",
        "path",
        "peer_fin",
        "posted",
        "queries",
        "rcv_nxt",
        "read_paused",
        "recv_waiters",
        "refused",
        "replaying",
        "requeue",
        "send_backlog",
        "sends",
        "state",
        "target",
        "trace",
        "updating",
        "upload_done",
        "upload_q",
        "wire",
    )

    def __init__(self, conn_id: int, wire: WirePort, trace: HopTrace) -> None:
        self.conn_id = conn_id
        self.wire = wire
        self.trace = trace
        self.state = HOST
        self.lifecycle = OffloadLifecycle(self)
        self.handle: NdisOffloadHandle | None = None
        self.binding: Binding | None = None
        self.path: HostObject | None = None
        self.target: str | None = None
        self.listener: int | None = None
        # receive. Queues are lists: they are short, and an empty deque costs ~700 bytes, which
        # counts when a daemon holds ten thousand connections (issue: memory per connection).
        self.rcv_nxt = 0
        self.app_rx: list[tuple[memoryview, NetBufferList | None]] = []
        self.app_rx_bytes = 0
        self.ooo: dict[int, tuple[bytes, int]] = {}
        self.peer_fin: int | None = None  # offset of the peer's FIN once known
        self.aborted = False
        self.hw_failed = False
        self.recv_waiters: list[tuple[int, Done, bool]] = []  # (max bytes, done, waitall)
        self.posted: NetBufferList | None = None
        self.refused = False
        self.read_paused = False
        self.forward_q: list[tuple[int, bytes, int]] = []
        self.upload_q: list[tuple[int, bytes, int]] = []
        # send
        self.sends: list[tuple[NetBufferList, int, int]] = []
        self.requeue: list[NetBufferList] = []
        self.send_backlog = 0
        self.fin_sent = False
        self.disconnect_done: Done | None = None
        self.delegated: TcpOffloadStateDelegated | None = None  # as last known, no pointers
        self.queries = 0
        self.replaying = False
        self.updating = False
        self.cached: TcpOffloadStateCached | None = None
        # transitions
        self.deferred: list[Callable[[], None]] = []
        self.offload_done: list[Done] = []
        self.upload_done: list[Done] = []


class HostStack(DriverLayer):
    """The host TCP/IP stack (protocol edge only)."""

    kind = "host"
    has_protocol_edge = True

    def __init__(
        self,
        name: str,
        ndis: Ndis,
        timers: Timers,
        rx_buffer_bytes: int = 256 * 1024,
        capacity: int = 1 << 20,
        honor_optional_retrieve: bool = True,
    ) -> None:
        super().__init__(name, ndis, timers, capacity)
        self.rx_buffer_bytes = rx_buffer_bytes
        self.honor_optional_retrieve = honor_optional_retrieve
        self.tcbs: dict[int, Tcb] = {}
        self.objects: dict[Any, HostObject] = {}  # neighbors and paths by key
        self.pending_initiates: list[Tcb] = []
        self.pending_terminates: list[Tcb] = []
        self.paused: set[int] = set()  # binding ids under NDIS_STATUS_OFFLOAD_PAUSE
        self.emit: Callable[[int, str, dict[str, Any]], None] = lambda conn_id, event, info: None
        self._returns: dict[Binding, list[NetBufferList]] = {}
        self._send_batches: dict[Tcb, list[NetBufferList]] = {}

    # ============================================================================================
    # connections
    # ============================================================================================
    def attach(self, conn_id: int, wire: WirePort, listener: int | None = None) -> Tcb:
        """A new established connection (the runtime opened or accepted its socket)."""
        tcb = Tcb(conn_id, wire, self.ndis.new_trace(conn_id))
        tcb.listener = listener
        tcb.rcv_nxt = wire.bytes_read
        self.tcbs[conn_id] = tcb
        wire.set_home(self, tcb)  # the host owns the socket's bytes whenever no target does
        return tcb

    def after_batch(self) -> None:
        """Once per inbox drain: issue the batched sends, state operations and receive returns."""
        if self._send_batches:
            for tcb in list(self._send_batches):
                self._flush_sends(tcb)
        if self.pending_terminates:
            self._flush_terminates()
        if self.pending_initiates:
            self._flush_initiates()
        if self._returns:
            returns, self._returns = self._returns, {}
            for binding, nbls in returns.items():
                self.ndis.NdisOffloadTcpReceiveReturn(self, binding, link_chain(nbls))  # type: ignore[arg-type]

    def _flush_sends(self, tcb: Tcb) -> None:
        """Send the connection's queued NBLs as one chain: one NdisOffloadTcpSend, one hop per
        layer, one write at the NIC (perf-notes: batch at every hand-off). Called before any
        other call on the connection, so order across calls is kept."""
        batch = self._send_batches.pop(tcb, None)
        if batch:
            assert tcb.handle is not None
            self.ndis.NdisOffloadTcpSend(self, tcb.handle, link_chain(batch))  # type: ignore[arg-type]

    def _run_deferred(self, tcb: Tcb) -> None:
        """Replay requests that waited for a transition, in order, until one starts another."""
        if tcb.replaying:
            return
        tcb.replaying = True
        try:
            while tcb.deferred and tcb.state in (HOST, OFFLOADED, CLOSED):
                tcb.deferred.pop(0)()
        finally:
            tcb.replaying = False

    def _defer_if_moving(self, tcb: Tcb, fn: Callable[[], None]) -> bool:
        """Hold a request while the connection changes hands, or behind held ones (order)."""
        if tcb.state in (OFFLOADING, UPLOADING) or (tcb.deferred and not tcb.replaying):
            tcb.deferred.append(fn)
            return True
        return False

    # ============================================================================================
    # offload: initiate (spec §3.2)
    # ============================================================================================
    def app_call(self, conn_id: int, method: str, args: tuple[Any, ...], done: Done) -> None:
        """Entry point of every application request: `method(tcb, *args, done)`."""
        tcb = self.tcbs.get(conn_id)
        if tcb is None:
            done(None, AppError("NOT_FOUND", f"no connection {conn_id}"))
            return
        getattr(self, method)(tcb, *args, done)

    def app_offload(self, tcb: Tcb, target: str | None, done: Done) -> None:
        if self._defer_if_moving(tcb, lambda: self.app_offload(tcb, target, done)):
            return
        if tcb.state == OFFLOADED:
            done(self.describe_offload(tcb), None)
            return
        if tcb.state == CLOSED or tcb.aborted or tcb.wire.closed:
            done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is closed"))
            return
        binding = self._binding_for(target)
        if binding is None:
            done(None, AppError("NOT_FOUND", f"no offload target {target!r} below {self.name}"))
            return
        if binding.id in self.paused:
            done(None, ndis_error(S.NDIS_STATUS_OFFLOAD_PAUSE, " offload paused by the target"))
            return
        if tcb.peer_fin is not None and tcb.fin_sent:
            done(
                None,
                AppError("INVALID_STATE", "both directions closed: not offloadable (spec §2.2)"),
            )
            return
        tcb.binding = binding
        tcb.target = target
        tcb.state = OFFLOADING
        tcb.offload_done.append(done)
        self.pending_initiates.append(tcb)

    def _binding_for(self, target: str | None) -> Binding | None:
        if not self.lower_bindings:
            return None
        if target is None:
            return self.lower_bindings[0]
        for binding in self.lower_bindings:
            if binding.lower.name == target:
                return binding
        # a target further down: the path goes through the first binding whose stack has it
        for binding in self.lower_bindings:
            if target in _names_below(binding.lower):
                return binding
        return None

    def _object(
        self, key: Any, kind: str, binding: Binding, parent: HostObject | None
    ) -> HostObject:
        obj = self.objects.get(key)
        if obj is None:
            obj = self.objects[key] = HostObject(key, kind, binding, parent)
        return obj

    def _flush_initiates(self) -> None:
        """Offload every pending connection whose neighbor and path are settled, one tree per
        binding (spec §2.3: many TCP objects share a path, many paths a neighbor)."""
        waiting: list[Tcb] = []
        trees: dict[int, tuple[Binding, OffloadBlock, dict[Any, OffloadBlock]]] = {}
        for tcb in self.pending_initiates:
            binding = tcb.binding
            assert binding is not None
            wire = tcb.wire
            if wire.closed or tcb.aborted:
                self._initiate_failed(tcb, ndis_error(S.NDIS_STATUS_FAILURE, " connection closed"))
                continue
            local_ip = ipaddress.ip_address(wire.local[0])
            remote_ip = ipaddress.ip_address(wire.remote[0])
            neighbor = self._object(("neighbor", binding.id), "neighbor", binding, None)
            path = self._object(
                ("path", binding.id, local_ip.packed, remote_ip.packed), "path", binding, neighbor
            )
            settling = ("offloading", "terminating", "invalidated")
            if neighbor.state in settling or path.state in settling:
                waiting.append(tcb)  # no operation on an object still being offloaded (spec §3.1)
                continue
            if binding.id not in trees:
                root = self._object_block(neighbor)
                trees[binding.id] = (binding, root, {})
            _, root, paths = trees[binding.id]
            pblock = paths.get(path.key)
            if pblock is None:
                pblock = paths[path.key] = root.add_dependent(
                    self._object_block(path, local_ip.version == 6)
                )
            tcb.path = path
            self._ref(path)  # an initiate in flight keeps its path and neighbor alive
            pblock.add_dependent(self._tcp_block(tcb))
        self.pending_initiates = waiting
        for binding, root, _ in trees.values():
            self.ndis.NdisInitiateOffload(self, binding, root)

    def _object_block(self, obj: HostObject, ipv6: bool = False) -> OffloadBlock:
        """A new-offload block for an idle object, or a linker for an offloaded one."""
        if obj.state == "offloaded":
            assert obj.handle is not None
            block = (new_neighbor_block if obj.block_kind == "neighbor" else new_path_block)(
                obj.handle
            )
            return block
        obj.handle = NdisOffloadHandle(self.name, obj)
        self.table_add(obj.handle.id, obj.handle)
        obj.lifecycle = OffloadLifecycle(obj)
        obj.lifecycle.fire(Call.INITIATE)
        obj.state = "offloading"
        if obj.block_kind == "neighbor":
            return new_neighbor_block(
                obj.handle,
                NeighborOffloadStateConst(DlSourceAddress=b"", VlanId=0),
                NeighborOffloadStateCached(DlDestinationAddress=b"\x00" * 6),
                NeighborOffloadStateDelegated(),
            )
        _, _, src, dst = obj.key
        return new_path_block(
            obj.handle,
            PathOffloadStateConst(SourceAddress=src, DestinationAddress=dst),
            PathOffloadStateCached(),
            PathOffloadStateDelegated(),
            ipv6=ipv6,
        )

    def _tcp_block(self, tcb: Tcb) -> OffloadBlock:
        """The new-offload block of a connection: const, cached and delegated state, buffered
        receive data and outstanding send data (spec §3.2.3, §3.2.5)."""
        wire = tcb.wire
        handle = NdisOffloadHandle(self.name, tcb, tcb.trace)
        self.table_add(handle.id, handle)
        tcb.handle = handle
        tcb.lifecycle = OffloadLifecycle(tcb)
        tcb.lifecycle.fire(Call.INITIATE)
        acked = wire.acked()
        self._complete_host_sends(tcb, acked)
        if tcb.fin_sent and tcb.peer_fin is not None:
            state = TCP_STATE.TcpConnectionLastAck
        elif tcb.fin_sent:
            state = (
                TCP_STATE.TcpConnectionFinWait2
                if wire.fin_acked()
                else TCP_STATE.TcpConnectionFinWait1
            )
        elif tcb.peer_fin is not None:
            state = TCP_STATE.TcpConnectionCloseWait
        else:
            state = TCP_STATE.TcpConnectionEstablished
        delegated = TcpOffloadStateDelegated(
            State=state,
            RcvNxt=seq(wire.irs, tcb.rcv_nxt),
            SndUna=seq(wire.isn, acked),
            SndNxt=seq(wire.isn, wire.bytes_written),
            SndMax=seq(wire.isn, wire.bytes_written),
            RcvWnd=self.rx_buffer_bytes,
        )
        # received, acknowledged data the application has not read yet (spec §3.2.3)
        if tcb.app_rx_bytes:
            data = b"".join(bytes(v) for v, _ in tcb.app_rx)
            self._drop_app_rx(tcb)
            delegated.BufferedData = NetBufferList.for_data(data)
            delegated.BufferedData.trace = tcb.trace
        tcb.delegated = _snapshot(delegated)
        if tcb.cached is None:
            tcb.cached = TcpOffloadStateCached(InitialRcvWnd=self.rx_buffer_bytes)
        block = new_tcp_block(
            handle,
            TcpOffloadStateConst(RemotePort=wire.remote[1], LocalPort=wire.local[1]),
            tcb.cached,
            delegated,
        )
        # sent-but-unacknowledged data, the first NBL advanced to SndUna (spec §3.2.5)
        chain = [nbl for nbl, _, _ in tcb.sends]
        tcb.sends.clear()
        block.net_buffer_list_chain = link_chain(chain)
        delegated.SendDataHead = chain[0] if chain else None
        delegated.SendDataTail = chain[-1] if chain else None
        return block

    def _drop_app_rx(self, tcb: Tcb) -> None:
        for _, nbl in tcb.app_rx:
            if nbl is not None:
                self._return_indicated(tcb, nbl)
        tcb.app_rx.clear()
        tcb.app_rx_bytes = 0

    def ProtocolInitiateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        for block in walk(root):
            handle = block.offload_handle
            if handle is None:
                continue
            owner = handle.owner
            offloaded = block.status in OFFLOADED_STATUSES
            if isinstance(owner, HostObject):
                if owner.state != "offloading":
                    continue  # a linker: already offloaded
                if offloaded:
                    owner.lifecycle.fire(Call.INITIATE_OFFLOADED)
                    owner.state = "offloaded"
                    self.stats.offloads_active += 1
                else:
                    owner.lifecycle.fire(Call.INITIATE_FAILED)
                    owner.state = "idle"
                    self.table_remove(handle.id)
                    owner.handle = None
            elif offloaded:
                self._initiate_succeeded(owner, block)
            else:
                self._initiate_failed(owner, ndis_error(block.status), block)
        self._release_unused_objects()

    def _initiate_succeeded(self, tcb: Tcb, block: OffloadBlock) -> None:
        tcb.lifecycle.fire(Call.INITIATE_OFFLOADED)
        tcb.state = OFFLOADED
        self.stats.offloads_active += 1
        # segments the host received while the initiate was in flight go down now (spec §4.6)
        if tcb.forward_q:
            self._forward(tcb, tcb.forward_q)
            tcb.forward_q = []
        for done in tcb.offload_done:
            done(self.describe_offload(tcb), None)
        tcb.offload_done.clear()
        self.emit(tcb.conn_id, "offloaded", {"path": self.path_names(tcb)})
        self._run_deferred(tcb)
        if tcb.recv_waiters:
            self._post_receive(tcb)

    def _initiate_failed(
        self, tcb: Tcb, error: AppError, block: OffloadBlock | None = None
    ) -> None:
        """Not offloaded: the host keeps the connection, its data and its send NBLs (spec §3.2.4)."""
        if tcb.handle is not None:
            if tcb.lifecycle.allows(Call.INITIATE_FAILED):
                tcb.lifecycle.fire(Call.INITIATE_FAILED)
            self.table_remove(tcb.handle.id)
            tcb.handle = None
        tcb.state = HOST
        if tcb.path is not None:
            self._unref(tcb.path)
            tcb.path = None
        if block is not None:
            d: TcpOffloadStateDelegated = block.delegated
            if d.BufferedData is not None:
                data = b"".join(bytes(v) for v in d.BufferedData.views())
                tcb.app_rx.insert(0, (memoryview(data), None))
                tcb.app_rx_bytes += len(data)
            pos = offset_of(tcb.wire.isn, d.SndUna, tcb.wire.bytes_written)
            for nbl in iter_chain(block.net_buffer_list_chain):
                n = nbl.data_length
                tcb.sends.append((nbl, pos, pos + n))
                pos += n
            block.net_buffer_list_chain = None
            if tcb.sends:
                tcb.wire.watch_acks()
        # what arrived meanwhile is ours to process
        for off, data, flags in tcb.forward_q:
            self._host_segment(tcb, off, data, flags)
        tcb.forward_q = []
        for done in tcb.offload_done:
            done(None, error)
        tcb.offload_done.clear()
        self._serve(tcb)
        self._run_deferred(tcb)

    def _forward(self, tcb: Tcb, segments: list[tuple[int, bytes, int]]) -> None:
        """`NdisOffloadTcpForward`: one segment per NB, one NB per NBL, TCP header first (spec §4.6)."""
        assert tcb.handle is not None
        wire = tcb.wire
        nbls: list[NetBufferList] = []
        for off, data, flags in sorted(segments, key=lambda s: s[0]):
            for i in range(0, max(len(data), 1), MAX_SEGMENT_PAYLOAD):
                chunk = data[i : i + MAX_SEGMENT_PAYLOAD]
                last = i + MAX_SEGMENT_PAYLOAD >= len(data)
                seg_flags = TH_ACK | TH_PSH | (flags & (TH_FIN | TH_RST) if last else 0)
                raw = build_segment(
                    wire.remote[1],
                    wire.local[1],
                    seq(wire.irs, off + i),
                    seq(wire.isn, wire.bytes_written),
                    seg_flags,
                    chunk,
                )
                nbl = NetBufferList.for_data(raw)
                nbl.trace = tcb.trace
                nbl.protocol_reserved = tcb
                nbls.append(nbl)
        if nbls:
            self.ndis.NdisOffloadTcpForward(self, tcb.handle, link_chain(nbls))  # type: ignore[arg-type]

    def ProtocolTcpOffloadForwardComplete(self, binding: Binding, head: NetBufferList) -> None:
        for nbl in iter_chain(head):
            tcb: Tcb = nbl.protocol_reserved
            nbl.protocol_reserved = None
            if nbl.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS:
                # not processed: the host processes the segment itself after the upload (spec §4.6)
                tcb.upload_q.append(_unforward(tcb, nbl))
            # REQUEST_ABORTED: an RST arrived; the host drops it (spec §4.6)

    # ============================================================================================
    # upload: terminate (spec §3.6)
    # ============================================================================================
    def app_upload(self, tcb: Tcb, done: Done) -> None:
        if tcb.state == OFFLOADING:
            tcb.deferred.append(lambda: self.app_upload(tcb, done))
            return
        if tcb.state == UPLOADING:
            tcb.upload_done.append(done)
            return
        if tcb.state != OFFLOADED:
            done({"state": HOST if tcb.state != CLOSED else CLOSED}, None)
            return
        tcb.upload_done.append(done)
        self._terminate(tcb)

    def _terminate(self, tcb: Tcb) -> None:
        if tcb.state != OFFLOADED:
            return
        self._flush_sends(tcb)
        if tcb.queries:
            # terminate only once no query is pending on the connection (spec §3.1)
            tcb.deferred.append(lambda: self._terminate(tcb))
            return
        tcb.lifecycle.fire(Call.TERMINATE)
        tcb.state = UPLOADING
        self.pending_terminates.append(tcb)

    def _flush_terminates(self) -> None:
        """Terminate pending connections, with their path and neighbor once unused (spec §3.1)."""
        trees: dict[int, tuple[Binding, OffloadBlock, dict[Any, OffloadBlock]]] = {}
        for tcb in self.pending_terminates:
            path = tcb.path
            assert path is not None and path.parent is not None and tcb.handle is not None
            binding = path.binding
            self._unref(path)
            if binding.id not in trees:
                trees[binding.id] = (binding, new_neighbor_block(None), {})
            _, root, paths = trees[binding.id]
            pblock = paths.get(path.key)
            if pblock is None:
                pblock = paths[path.key] = root.add_dependent(new_path_block(None))
            pblock.add_dependent(new_tcp_block(tcb.handle, delegated=TcpOffloadStateDelegated()))
        self.pending_terminates = []
        for binding, root, paths in trees.values():
            # objects left without dependents go in the same tree (spec §3.1)
            for key, pblock in paths.items():
                path = self.objects[key]
                if path.refs == 0 and path.state in ("offloaded", "invalidated"):
                    self._start_object_terminate(path, pblock)
            neighbor = self.objects[("neighbor", binding.id)]
            if neighbor.refs == 0 and neighbor.state in ("offloaded", "invalidated"):
                self._start_object_terminate(neighbor, root)
            self.ndis.NdisTerminateOffload(self, binding, root)

    def _start_object_terminate(self, obj: HostObject, block: OffloadBlock) -> None:
        obj.lifecycle.fire(Call.TERMINATE)
        obj.state = "terminating"
        block.offload_handle = obj.handle

    def _release_unused_objects(self) -> None:
        """Terminate neighbor/path objects that were offloaded but ended with no dependents
        (e.g. every connection in their initiate failed)."""
        for obj in list(self.objects.values()):
            if obj.state == "offloaded" and obj.refs == 0 and obj.block_kind == "path":
                root = new_neighbor_block(None)
                self._start_object_terminate(obj, root.add_dependent(new_path_block(None)))
                assert obj.parent is not None
                if obj.parent.refs == 0 and obj.parent.state == "offloaded":
                    self._start_object_terminate(obj.parent, root)
                self.ndis.NdisTerminateOffload(self, obj.binding, root)
        for obj in list(self.objects.values()):
            unused = obj.state == "offloaded" and obj.refs == 0 and obj.block_kind == "neighbor"
            if unused and not any(
                o.parent is obj and o.state != "idle" for o in self.objects.values()
            ):
                root = new_neighbor_block(None)
                self._start_object_terminate(obj, root)
                self.ndis.NdisTerminateOffload(self, obj.binding, root)
        for key in [k for k, o in self.objects.items() if o.state == "idle" and o.refs == 0]:
            del self.objects[key]

    def ProtocolTerminateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        for block in walk(root):
            handle = block.offload_handle
            if handle is None:
                continue
            owner = handle.owner
            if block.status != SUCCESS:
                # corrupt hardware (spec §3.7): the object lives on; the target will indicate
                # an abort and the host terminates again
                if isinstance(owner, Tcb):
                    owner.lifecycle.fire(Call.TERMINATE_FAILED)
                    owner.state = OFFLOADED
                    owner.hw_failed = True
                    self._restore_refs(owner)
                else:
                    owner.lifecycle.fire(Call.TERMINATE_FAILED)
                    owner.state = "offloaded"
                continue
            self.table_remove(handle.id)
            self.stats.offloads_active -= 1
            if isinstance(owner, HostObject):
                owner.lifecycle.fire(Call.TERMINATE_COMPLETE)
                owner.state = "idle"
                owner.handle = None
            else:
                self._uploaded(owner, block)
        for key in [k for k, o in self.objects.items() if o.state == "idle" and o.refs == 0]:
            del self.objects[key]
        if self.pending_initiates:
            self._flush_initiates()

    def _restore_refs(self, tcb: Tcb) -> None:
        assert tcb.path is not None
        self._ref(tcb.path)

    def _ref(self, path: HostObject) -> None:
        path.refs += 1
        if path.refs == 1 and path.parent is not None:
            path.parent.refs += 1

    def _unref(self, path: HostObject) -> None:
        path.refs -= 1
        if path.refs == 0 and path.parent is not None:
            path.parent.refs -= 1

    def _uploaded(self, tcb: Tcb, block: OffloadBlock) -> None:
        """Take the connection back: delegated state, send data, buffered data (spec §3.6.3)."""
        tcb.lifecycle.fire(Call.TERMINATE_COMPLETE)
        tcb.handle = None
        tcb.state = HOST
        tcb.path = None
        wire = tcb.wire
        d: TcpOffloadStateDelegated = block.delegated
        tcb.delegated = _snapshot(d)
        if d.State == TCP_STATE.TcpConnectionClosed:
            tcb.aborted = True
        rcv_nxt = offset_of(wire.irs, d.RcvNxt, wire.bytes_read)
        # buffered receive data: copy, and give the NBLs back (spec §3.6.3)
        buffered = d.BufferedData
        d.BufferedData = None
        if buffered is not None:
            data = b"".join(bytes(v) for v in buffered.views())
            start = rcv_nxt - len(data)
            tcb.rcv_nxt = start
            self.stats.outstanding_nbls += 1  # the host's until it gives it back
            assert tcb.binding is not None
            self._returns.setdefault(tcb.binding, []).append(buffered)
            self._host_segment(tcb, start, data, 0)
        tcb.rcv_nxt = max(tcb.rcv_nxt, rcv_nxt)
        # unfinished sends come back in order, starting at SndUna (spec §3.6.3)
        pos = offset_of(wire.isn, d.SndUna, wire.bytes_written)
        returned = list(iter_chain(block.net_buffer_list_chain))
        block.net_buffer_list_chain = None
        for nbl in returned:
            nbl.next = None
            n = nbl.data_length
            tcb.sends.append((nbl, pos, pos + n))
            pos += n
        if pos < wire.bytes_written:
            raise ChimneyProtocolError(f"TCB {tcb.conn_id}: upload lost track of sent bytes")
        # segments the host got while the terminate was in flight, in order by offset
        queued, tcb.upload_q = tcb.upload_q, []
        for off, data, flags in sorted(queued, key=lambda s: s[0]):
            self._host_segment(tcb, off, data, flags)
        if tcb.aborted:
            self._fail_host_sends(tcb, S.NDIS_STATUS_REQUEST_ABORTED)
            if tcb.hw_failed and not wire.closed:
                wire.abort()  # the connection's state is lost with the hardware (spec §3.7)
        else:
            # sends the target refused during the upload are sent by the host now (spec §4.1)
            requeue, tcb.requeue = tcb.requeue, []
            for nbl in requeue:
                self._host_send(tcb, nbl)
        if tcb.disconnect_done is not None and not tcb.aborted:
            self._host_disconnect_graceful(tcb, tcb.disconnect_done)
        if tcb.sends or tcb.disconnect_done is not None:
            wire.watch_acks()
        if tcb.read_paused and tcb.app_rx_bytes < self.rx_buffer_bytes:
            tcb.read_paused = False
            wire.resume_reading()
        for done in tcb.upload_done:
            done({"state": HOST}, None)
        tcb.upload_done.clear()
        self.emit(tcb.conn_id, "uploaded", {"reason": "terminate"})
        self._serve(tcb)
        self._run_deferred(tcb)

    # ============================================================================================
    # query (spec §3.3)
    # ============================================================================================
    def app_query(self, tcb: Tcb, done: Done) -> None:
        if self._defer_if_moving(tcb, lambda: self.app_query(tcb, done)):
            return
        if tcb.state != OFFLOADED or tcb.handle is None:
            done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is not offloaded"))
            return
        tcb.lifecycle.fire(Call.QUERY)
        self._flush_sends(tcb)
        root = new_neighbor_block(None)
        root.add_dependent(new_path_block(None)).add_dependent(
            new_tcp_block(tcb.handle, delegated=TcpOffloadStateDelegated())
        )
        root.protocol_reserved = done
        tcb.queries += 1
        assert tcb.binding is not None
        self.ndis.NdisQueryOffloadState(self, tcb.binding, root)

    def ProtocolQueryOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        done: Done = root.protocol_reserved
        root.protocol_reserved = None
        for block in walk(root):
            if block.offload_handle is None:
                continue
            tcb: Tcb = block.offload_handle.owner
            tcb.queries -= 1
            if block.status == SUCCESS:
                tcb.delegated = _snapshot(block.delegated)
                done(tcb.delegated.as_map(), None)
            else:
                # corrupt hardware (spec §3.3): the target follows with retrieve + abort
                done(None, ndis_error(block.status, " query failed: hardware state corrupt"))
            self._run_deferred(tcb)

    # ============================================================================================
    # update (spec §3.4) and invalidate (spec §3.5)
    # ============================================================================================
    def app_update(self, tcb: Tcb, changes: dict[str, int], done: Done) -> None:
        """New cached TCP variables (keepalive, receive window, indication size, ...) for the
        offloaded connection: `NdisUpdateOffload` with the TCP block and its cached state."""
        if self._defer_if_moving(tcb, lambda: self.app_update(tcb, changes, done)):
            return
        if tcb.state != OFFLOADED or tcb.handle is None or tcb.cached is None:
            done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is not offloaded"))
            return
        if tcb.updating:
            # at most one update in flight per object (spec §3.1)
            tcb.deferred.append(lambda: self.app_update(tcb, changes, done))
            return
        try:
            cached = dataclasses.replace(tcb.cached, **changes)
        except TypeError as exc:
            done(None, AppError("INVALID_PARAMS", f"not a cached TCP variable: {exc}"))
            return
        tcb.lifecycle.fire(Call.UPDATE)
        self._flush_sends(tcb)
        root = new_neighbor_block(None)
        root.add_dependent(new_path_block(None)).add_dependent(
            new_tcp_block(tcb.handle, cached=cached)
        )
        root.protocol_reserved = done
        tcb.queries += 1
        tcb.updating = True
        assert tcb.binding is not None
        self.ndis.NdisUpdateOffload(self, tcb.binding, root)

    def ProtocolUpdateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        done: Done = root.protocol_reserved
        root.protocol_reserved = None
        for block in walk(root):
            if block.offload_handle is None:
                continue
            tcb: Tcb = block.offload_handle.owner
            tcb.queries -= 1
            tcb.updating = False
            if block.status == SUCCESS:
                tcb.cached = block.cached
                done({"status": SUCCESS.name}, None)
            else:
                # the target carries on; the host terminates what failed (spec §3.4)
                done(None, ndis_error(block.status, " update failed: the connection is uploaded"))
                self._terminate(tcb)
            self._run_deferred(tcb)

    def app_invalidate(self, tcb: Tcb, what: str, done: Done) -> None:
        """Invalidate the connection's TCP, path or neighbor object (spec §3.5): the target stops
        sending on every connection that depends on it and asks for each to be uploaded."""
        if tcb.state != OFFLOADED or tcb.handle is None or tcb.path is None:
            done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is not offloaded"))
            return
        path = tcb.path
        neighbor = path.parent
        assert neighbor is not None and neighbor.handle is not None and path.handle is not None
        root = new_neighbor_block(neighbor.handle if what == "neighbor" else None)
        pblock = root.add_dependent(new_path_block(path.handle if what == "path" else None))
        if what == "tcp":
            pblock.add_dependent(new_tcp_block(tcb.handle))
            tcb.lifecycle.fire(Call.INVALIDATE)
        else:
            obj = neighbor if what == "neighbor" else path
            obj.lifecycle.fire(Call.INVALIDATE)
            obj.state = "invalidated"  # no new connection links to it (spec §3.4 step 1)
        self._flush_sends(tcb)
        root.protocol_reserved = done
        assert tcb.binding is not None
        self.ndis.NdisInvalidateOffload(self, tcb.binding, root)

    def ProtocolInvalidateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        done: Done = root.protocol_reserved
        root.protocol_reserved = None
        status = next(b.status for b in walk(root) if b.offload_handle is not None)
        if status == SUCCESS:
            done({"status": SUCCESS.name}, None)
        else:
            done(None, ndis_error(status, " invalidate failed: hardware state corrupt"))

    # ============================================================================================
    # send (spec §4.1)
    # ============================================================================================
    def app_send(self, tcb: Tcb, data: bytes, done: Done) -> None:
        if self._defer_if_moving(tcb, lambda: self.app_send(tcb, data, done)):
            return
        if tcb.state == CLOSED:
            done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is closed"))
            return
        if tcb.aborted:
            done(None, ndis_error(S.NDIS_STATUS_REQUEST_ABORTED, " acknowledged 0 bytes"))
            return
        if tcb.fin_sent:
            done(None, AppError("INVALID_STATE", "send after disconnect"))
            return
        nbl = NetBufferList.for_data(data)
        nbl.trace = tcb.trace
        nbl.protocol_reserved = (done, len(data))
        if tcb.state == OFFLOADED:
            batch = self._send_batches.get(tcb)
            if batch is None:
                self._send_batches[tcb] = [nbl]
            else:
                batch.append(nbl)
        else:
            self.stats.outstanding_nbls += 1
            self._host_send(tcb, nbl)

    def _host_send(self, tcb: Tcb, nbl: NetBufferList) -> None:
        wire = tcb.wire
        if wire.closed:
            self._finish_send(nbl, S.NDIS_STATUS_REQUEST_ABORTED)
            return
        start = wire.bytes_written
        views = nbl.views()
        wire.write(views)
        tcb.sends.append((nbl, start, wire.bytes_written))
        wire.watch_acks()

    def _complete_host_sends(self, tcb: Tcb, acked: int) -> None:
        sends = tcb.sends
        while sends and sends[0][2] <= acked:
            nbl, start, end = sends.pop(0)
            nbl.tcp_offload_bytes_transferred += end - start
            nbl.advance(end - start)
            self._finish_send(nbl, SUCCESS)
        if sends and acked > sends[0][1]:
            # a partly acknowledged head: advance it so a later initiate starts at SndUna
            nbl, start, end = sends[0]
            nbl.advance(acked - start)
            nbl.tcp_offload_bytes_transferred += acked - start
            sends[0] = (nbl, acked, end)

    def _finish_send(self, nbl: NetBufferList, status: NdisStatus) -> None:
        """The application's send is over. Every layer advances the NB by the bytes the peer
        acknowledged, so what was acknowledged is the original length minus what is left."""
        done, length = nbl.protocol_reserved
        nbl.protocol_reserved = None
        self.stats.outstanding_nbls -= 1
        acked = length - nbl.data_length
        self.stats.bytes_sent += acked
        if status is SUCCESS:
            done(length, None)
        else:
            done(None, ndis_error(status, f" acknowledged {acked} bytes"))

    def _fail_host_sends(self, tcb: Tcb, status: NdisStatus) -> None:
        acked = 0 if tcb.wire.closed else tcb.wire.acked()
        if not tcb.wire.closed:
            self._complete_host_sends(tcb, acked)
        while tcb.sends:
            nbl, _, _ = tcb.sends.pop(0)
            self._finish_send(nbl, status)
        for nbl in tcb.requeue:
            self._finish_send(nbl, status)
        tcb.requeue = []

    def ProtocolTcpOffloadSendComplete(self, binding: Binding, head: NetBufferList) -> None:
        upload_wanted: set[Tcb] = set()
        for nbl in iter_chain(head):
            nbl.next = None
            status = nbl.status
            if status in (
                S.NDIS_STATUS_UPLOAD_IN_PROGRESS,
                S.NDIS_STATUS_REQUEST_UPLOAD,
                S.NDIS_STATUS_UPLOAD_REQUESTED,
            ):
                # the host sends these itself after the upload (spec §4.1)
                tcb = self._tcb_of_send(nbl)
                if tcb is not None:
                    tcb.requeue.append(nbl)
                    self.stats.outstanding_nbls += 1  # still the host's, until it sends it
                    upload_wanted.add(tcb)
                    continue
            self.stats.outstanding_nbls += 1  # _finish_send takes it off again
            self._finish_send(nbl, status)
        for tcb in upload_wanted:
            self._terminate(tcb)

    def _tcb_of_send(self, nbl: NetBufferList) -> Tcb | None:
        trace = nbl.trace
        return self.tcbs.get(trace.conn_id) if trace is not None else None

    # ============================================================================================
    # receive (spec §4.2, §4.3)
    # ============================================================================================
    def app_recv(self, tcb: Tcb, max_bytes: int, waitall: bool, done: Done) -> None:
        """Queue a read of up to `max_bytes`, served in order as bytes arrive. `waitall` waits for
        all `max_bytes` (short only at end of stream): offloaded, it posts a non-push request,
        which the target completes only when full (spec §4.2)."""
        tcb.recv_waiters.append((max_bytes, done, waitall))
        self._serve(tcb)
        if tcb.recv_waiters and tcb.state == OFFLOADED and tcb.posted is None:
            self._post_receive(tcb)

    def app_cancel_recv(self, tcb: Tcb, waiting: Done, done: Done) -> None:
        """Withdraw a read whose time ran out. Nothing is lost: bytes that arrive later stay in
        the TCB for the next read."""
        for entry in tcb.recv_waiters:
            if entry[1] is waiting:
                tcb.recv_waiters.remove(entry)
                waiting(None, AppError("TIMEOUT", f"nothing arrived on connection {tcb.conn_id}"))
                break
        done(None, None)

    def _serve(self, tcb: Tcb) -> None:
        """Hand buffered bytes to waiting reads, in order."""
        while tcb.recv_waiters:
            max_bytes, done, waitall = tcb.recv_waiters[0]
            ending = tcb.peer_fin is not None or tcb.aborted or tcb.state == CLOSED
            if tcb.app_rx_bytes and (not waitall or tcb.app_rx_bytes >= max_bytes or ending):
                tcb.recv_waiters.pop(0)
                done(self._take(tcb, max_bytes), None)
                continue
            if self._at_eof(tcb):
                tcb.recv_waiters.pop(0)
                done(b"", None)
                continue
            if tcb.aborted:
                tcb.recv_waiters.pop(0)
                done(None, ndis_error(S.NDIS_STATUS_REQUEST_ABORTED, " connection reset"))
                continue
            if tcb.state == CLOSED:
                tcb.recv_waiters.pop(0)
                done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is closed"))
                continue
            break
        self._after_consume(tcb)

    def _at_eof(self, tcb: Tcb) -> bool:
        if tcb.peer_fin is None or tcb.app_rx_bytes:
            return False
        if tcb.state == OFFLOADED:
            return tcb.lifecycle.fin_received  # the target said so (spec §5.1)
        return tcb.rcv_nxt >= tcb.peer_fin

    def _take(self, tcb: Tcb, max_bytes: int) -> bytes:
        parts: list[memoryview] = []
        want = max_bytes
        while want and tcb.app_rx:
            view, nbl = tcb.app_rx[0]
            if len(view) <= want:
                tcb.app_rx.pop(0)
                parts.append(view)
                want -= len(view)
                if nbl is not None:
                    self._return_indicated(tcb, nbl)
            else:
                parts.append(view[:want])
                tcb.app_rx[0] = (view[want:], nbl)
                want = 0
        out = b"".join(parts)
        tcb.app_rx_bytes -= len(out)
        return out

    def _after_consume(self, tcb: Tcb) -> None:
        if tcb.app_rx_bytes >= self.rx_buffer_bytes:
            return
        if tcb.read_paused and tcb.state == HOST and tcb.app_rx_bytes < self.rx_buffer_bytes // 2:
            tcb.read_paused = False
            tcb.wire.resume_reading()
        if tcb.refused and tcb.state == OFFLOADED and tcb.posted is None:
            # re-enable indications: a zero-byte post unless a read wants a real buffer (spec §4.3)
            self._post_receive(tcb, 0 if not tcb.recv_waiters else None)

    def _post_receive(self, tcb: Tcb, size: int | None = None) -> None:
        if tcb.posted is not None or tcb.handle is None:
            return
        no_push = False
        if size is None:
            size = 0
            if tcb.recv_waiters:
                want, _, no_push = tcb.recv_waiters[0]
                size = max(1, want - tcb.app_rx_bytes) if no_push else want
        nbl = NetBufferList.for_receive(size, no_push)
        nbl.trace = tcb.trace
        nb = nbl.first_net_buffer
        assert nb is not None and nb.mdl_chain is not None
        nbl.protocol_reserved = (tcb, nb.mdl_chain.buffer)  # the application buffer
        tcb.posted = nbl
        tcb.refused = False
        self.ndis.NdisOffloadTcpReceive(self, tcb.handle, nbl)

    def ProtocolTcpOffloadReceiveComplete(self, binding: Binding, head: NetBufferList) -> None:
        for nbl in iter_chain(head):
            nbl.next = None
            tcb, buffer = nbl.protocol_reserved
            nbl.protocol_reserved = None
            if tcb.posted is nbl:
                tcb.posted = None
            placed = nbl.tcp_offload_bytes_transferred
            if placed:
                self.stats.bytes_received += placed
                tcb.app_rx.append((buffer[:placed], None))
                tcb.app_rx_bytes += placed
            if nbl.status == S.NDIS_STATUS_REQUEST_ABORTED:
                tcb.aborted = True
            self._serve(tcb)
            if (
                tcb.recv_waiters
                and tcb.state == OFFLOADED
                and not tcb.aborted
                and not tcb.lifecycle.fin_received
            ):
                self._post_receive(tcb)

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: NdisOffloadHandle, nbl: NetBufferList, status: NdisStatus
    ) -> None:
        tcb: Tcb = handle.owner
        n = nbl.data_length
        room = self.rx_buffer_bytes - tcb.app_rx_bytes
        if tcb.recv_waiters:
            room = max(room, n)
        if room >= n:
            # keep the NBL, no copy, until the application has read it (spec §4.3)
            views = nbl.views()
            for v in views[:-1]:
                tcb.app_rx.append((v, None))
            tcb.app_rx.append((views[-1], nbl))
            tcb.app_rx_bytes += n
            self.stats.bytes_received += n
            self.ndis.NdisReturnReceiveIndication(self, nbl, SUCCESS, n)
        elif room > 0:
            data = b"".join(nbl.views())[:room]  # the NBL goes back: copy what we take
            tcb.app_rx.append((memoryview(data), None))
            tcb.app_rx_bytes += room
            self.stats.bytes_received += room
            tcb.refused = True
            self.ndis.NdisReturnReceiveIndication(
                self, nbl, S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, room
            )
        else:
            tcb.refused = True
            self.ndis.NdisReturnReceiveIndication(
                self, nbl, S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0
            )
        self._serve(tcb)

    def _return_indicated(self, tcb: Tcb, nbl: NetBufferList) -> None:
        binding = tcb.binding or self.lower_bindings[0]
        self._returns.setdefault(binding, []).append(nbl)

    # host-mode receive: the socket's bytes while the host owns it ------------------------------
    def WireData(self, tcb: Tcb, offset: int, data: bytes) -> None:
        self._host_segment(tcb, offset, data, TH_PSH)

    def WireEof(self, tcb: Tcb, offset: int) -> None:
        self._host_segment(tcb, offset, b"", TH_FIN)

    def WireReset(self, tcb: Tcb, reason: str) -> None:
        self._host_segment(tcb, tcb.wire.bytes_read, b"", TH_RST)

    def ProtocolReceiveNetBufferLists(
        self, binding: Binding, wire: WirePort, offset: int, data: bytes, flags: int
    ) -> None:
        """The ordinary receive path (spec §4.7): segments the target did not process."""
        tcb = wire.home_ctx
        if isinstance(tcb, Tcb) and tcb.state != CLOSED:
            self._host_segment(tcb, offset, data, flags)

    def _host_segment(self, tcb: Tcb, offset: int, data: bytes, flags: int) -> None:
        if tcb.state == OFFLOADING:
            tcb.forward_q.append(
                (offset, data, flags)
            )  # forwarded after the initiate (spec §3.2.7)
            return
        if tcb.state == UPLOADING:
            tcb.upload_q.append((offset, data, flags))  # processed after the upload (spec §3.6.4)
            return
        if tcb.state == OFFLOADED:
            self._forward(tcb, [(offset, data, flags)])
            return
        if flags & TH_RST:
            self._host_reset(tcb)
            return
        end = offset + len(data)
        new_fin = bool(flags & TH_FIN) and tcb.peer_fin is None
        if new_fin:
            tcb.peer_fin = end
        if data:
            if offset > tcb.rcv_nxt:
                tcb.ooo[offset] = (data, flags)
            elif end > tcb.rcv_nxt:
                self._host_accept(tcb, data[tcb.rcv_nxt - offset :])
                while tcb.ooo:
                    ready = sorted(o for o in tcb.ooo if o <= tcb.rcv_nxt)
                    if not ready:
                        break
                    for o in ready:
                        d, _ = tcb.ooo.pop(o)
                        if o + len(d) > tcb.rcv_nxt:
                            self._host_accept(tcb, d[tcb.rcv_nxt - o :])
        if new_fin:
            self.emit(tcb.conn_id, "TcpIndicateDisconnect", {"path": "host"})
        self._serve(tcb)
        if tcb.app_rx_bytes >= self.rx_buffer_bytes and not tcb.read_paused and not tcb.wire.closed:
            tcb.read_paused = True
            tcb.wire.pause_reading()

    def _host_accept(self, tcb: Tcb, data: bytes) -> None:
        tcb.app_rx.append((memoryview(data), None))
        tcb.app_rx_bytes += len(data)
        tcb.rcv_nxt += len(data)
        self.stats.bytes_received += len(data)

    def _host_reset(self, tcb: Tcb) -> None:
        if tcb.aborted:
            return
        tcb.aborted = True
        self._fail_host_sends(tcb, S.NDIS_STATUS_REQUEST_ABORTED)
        if tcb.disconnect_done is not None:
            done, tcb.disconnect_done = tcb.disconnect_done, None
            done(S.NDIS_STATUS_REQUEST_ABORTED.name, None)
        self.emit(tcb.conn_id, "TcpIndicateAbort", {"path": "host"})
        self._serve(tcb)

    def WireAcked(self, tcb: Tcb, acked: int) -> None:
        if tcb.state not in (HOST, UPLOADING) or tcb.wire.closed:
            return
        self._complete_host_sends(tcb, acked)
        if (
            tcb.disconnect_done is not None
            and tcb.state == HOST
            and not tcb.sends
            and tcb.wire.fin_acked()
        ):
            done, tcb.disconnect_done = tcb.disconnect_done, None
            done(SUCCESS.name, None)
        if tcb.sends or tcb.disconnect_done is not None:
            tcb.wire.watch_acks()

    # ============================================================================================
    # disconnect (spec §4.5) and close
    # ============================================================================================
    def app_disconnect(self, tcb: Tcb, abortive: bool, done: Done) -> None:
        if self._defer_if_moving(tcb, lambda: self.app_disconnect(tcb, abortive, done)):
            return
        if tcb.state == CLOSED:
            done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is closed"))
            return
        if tcb.aborted:
            done(S.NDIS_STATUS_REQUEST_ABORTED.name, None)
            return
        if not abortive and tcb.fin_sent:
            done(None, AppError("INVALID_STATE", "already disconnected"))
            return
        flags = (
            TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE
            if abortive
            else TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
        )
        if tcb.state == OFFLOADED:
            assert tcb.handle is not None
            self._flush_sends(tcb)  # a disconnect follows every earlier send (spec §4.5)
            nbl = NetBufferList.for_data(b"")
            nbl.trace = tcb.trace
            nbl.protocol_reserved = (tcb, done, abortive)
            if abortive:
                tcb.aborted = True
            else:
                tcb.fin_sent = True
            self.ndis.NdisOffloadTcpDisconnect(self, tcb.handle, nbl, flags)
            return
        if abortive:
            tcb.aborted = True
            tcb.wire.abort()
            self._fail_host_sends(tcb, S.NDIS_STATUS_REQUEST_ABORTED)
            done(SUCCESS.name, None)
            self._serve(tcb)
            return
        self._host_disconnect_graceful(tcb, done)

    def _host_disconnect_graceful(self, tcb: Tcb, done: Done) -> None:
        tcb.fin_sent = True
        if not tcb.wire.eof_written:
            tcb.wire.write_eof()
        tcb.disconnect_done = done
        tcb.wire.watch_acks()

    def ProtocolTcpOffloadDisconnectComplete(self, binding: Binding, nbl: NetBufferList) -> None:
        tcb, done, abortive = nbl.protocol_reserved
        nbl.protocol_reserved = None
        status = nbl.status
        if status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS and not abortive:
            # the host finishes the close itself after the upload [INF]
            tcb.disconnect_done = done
            return
        if abortive and status == SUCCESS:
            self._terminate(tcb)  # nothing left to carry: upload the dead connection
        done(status.name, None)

    def app_close(self, tcb: Tcb, done: Done) -> None:
        """Upload if needed, close the socket, free every layer's state (rpc-contract)."""
        if tcb.state == CLOSED:
            done(True, None)
            return
        if tcb.state in (OFFLOADING, UPLOADING) or tcb.state == OFFLOADED:

            def after(_: Any, __: AppError | None) -> None:
                self.app_close(tcb, done)

            if tcb.state == OFFLOADING:
                tcb.deferred.append(lambda: self.app_close(tcb, done))
            else:
                self.app_upload(tcb, after)
            return
        tcb.state = CLOSED
        if not tcb.wire.closed:
            tcb.wire.close()
        self._fail_host_sends(tcb, S.NDIS_STATUS_REQUEST_ABORTED)
        if tcb.disconnect_done is not None:
            d, tcb.disconnect_done = tcb.disconnect_done, None
            d(S.NDIS_STATUS_REQUEST_ABORTED.name, None)
        self._drop_app_rx(tcb)
        self._serve(tcb)
        tcb.ooo.clear()
        del self.tcbs[tcb.conn_id]
        self.emit(tcb.conn_id, "closed", {})
        done(True, None)
        while tcb.deferred:
            tcb.deferred.pop(0)()

    # ============================================================================================
    # events and status indications (spec §5)
    # ============================================================================================
    def ProtocolTcpOffloadEvent(
        self, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        tcb: Tcb = handle.owner
        E = TcpOffloadEventType
        if event_type is E.TcpIndicateDisconnect:
            tcb.lifecycle.fin_received = True
            if tcb.peer_fin is None:
                tcb.peer_fin = tcb.wire.bytes_read
            self.emit(tcb.conn_id, event_type.name, {})
            self._serve(tcb)
        elif event_type is E.TcpIndicateAbort:
            tcb.aborted = True
            tcb.lifecycle.aborted = True
            self.emit(tcb.conn_id, event_type.name, {})
            self._serve(tcb)
            self._terminate(tcb)  # the host answers an abort with a terminate (spec §5.1)
        elif event_type is E.TcpIndicateRetrieve:
            reason = TcpUploadReason(info)
            if tcb.lifecycle.allows(Call.RETRIEVE):
                tcb.lifecycle.fire(Call.RETRIEVE)
            self.emit(
                tcb.conn_id, event_type.name, {"reason": reason.name, "mandatory": reason.mandatory}
            )
            if reason.mandatory or self.honor_optional_retrieve:
                self._terminate(tcb)
        elif event_type is E.TcpIndicateSendBacklogChange:
            tcb.send_backlog = info
            self.emit(tcb.conn_id, event_type.name, {"backlog": info})

    def ProtocolStatusEx(self, binding: Binding, status: NdisStatus) -> None:
        """Adapter status indications (spec §5.5)."""
        if status == S.NDIS_STATUS_OFFLOAD_PAUSE:
            self.paused.add(binding.id)
        elif status == S.NDIS_STATUS_UPLOAD_ALL:
            self.paused.add(binding.id)
            for tcb in list(self.tcbs.values()):
                if tcb.binding is binding and tcb.state == OFFLOADED:
                    if tcb.lifecycle.allows(Call.UPLOAD_ALL):
                        tcb.lifecycle.fire(Call.UPLOAD_ALL)
                    self.emit(
                        tcb.conn_id,
                        "TcpIndicateRetrieve",
                        {"reason": "NDIS_STATUS_UPLOAD_ALL", "mandatory": True},
                    )
                    self._terminate(tcb)
        elif status == S.NDIS_STATUS_OFFLOAD_RESUME:
            self.paused.discard(binding.id)

    # ============================================================================================
    # observability
    # ============================================================================================
    def path_names(self, tcb: Tcb) -> list[str]:
        names = [self.name]
        if tcb.state in (OFFLOADED, UPLOADING, OFFLOADING) and tcb.binding is not None:
            layer = tcb.binding.lower
            names.append(layer.name)
            while layer.lower_bindings:
                layer = layer.lower_bindings[0].lower
                names.append(layer.name)
        return names

    def describe_offload(self, tcb: Tcb) -> dict[str, Any]:
        return {"state": tcb.state, "path": self.path_names(tcb)}


def _snapshot(d: TcpOffloadStateDelegated) -> TcpOffloadStateDelegated:
    """The delegated variables without the NBL pointers (which must not be kept alive)."""
    return dataclasses.replace(d, SendDataHead=None, SendDataTail=None, BufferedData=None)


def _names_below(layer: Any) -> set[str]:
    names = {layer.name}
    for b in layer.lower_bindings:
        names |= _names_below(b.lower)
    return names


def _unforward(tcb: Tcb, nbl: NetBufferList) -> tuple[int, bytes, int]:
    from .segment import parse_segment

    raw = b"".join(nbl.views()) if nbl.data_length else b""
    sequence, flags, payload = parse_segment(raw)
    return offset_of(tcb.wire.irs, sequence, tcb.rcv_nxt), bytes(payload), flags
