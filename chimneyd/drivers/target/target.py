"""The offload target: a chimney NIC whose offloaded connections run on real loopback sockets.

The kernel's TCP plays the wire and the peer; this layer is everything the TOE does above it:
it owns the socket while a connection is offloaded, completes sends when the peer has
acknowledged them, runs the delivery algorithm for received bytes, and raises the events of
spec §5. This class only routes: each NDIS handler hands its call to the module of the spec
chapter it belongs to, with the `TcpContext` as the unit of work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from chimneyd.compiled import mypyc_attr
from chimneyd.ndis.blocks import OffloadBlock
from chimneyd.ndis.broker import Ndis
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.nbl import NetBufferList, chain_of, iter_chain
from chimneyd.ndis.oid import NdisOidRequest, NdisTcpConnectionOffloadParameters
from chimneyd.ndis.status import NdisStatus, TcpUploadReason
from chimneyd.ndis.trace import LayerStats

from ..base import DriverLayer, Timers, downcall
from ..fin_wait_2 import FinWait2Timer
from ..wire import WirePort
from . import adapter, disconnect, events, receive, send, state_ops, terminate
from .batch import CompletionBatch
from .contexts import Context, TcpContext

FindWire = Callable[[bytes, int, bytes, int], WirePort | None]


class TargetStats(LayerStats):
    """A target's stats: the layer's, and the ACKs it would answer forwarded segments with and
    cannot send on the kernel's socket (spec §5.2 [EMU]), by kind (`receive.UNSENT_ACK_KINDS`).
    They are not NDIS calls, so they are not in `calls`, which `chimneyctl stats` and the web
    view sum as calls and Prometheus splits into call and status labels: `stack.stats` has
    them as `layers.<layer>.unsent_acks`, every kind from the start (docs/metrics.md)."""

    __slots__ = ("unsent_acks",)

    def __init__(self) -> None:
        super().__init__()
        self.unsent_acks: dict[str, int] = dict.fromkeys(receive.UNSENT_ACK_KINDS, 0)

    def as_map(self) -> dict[str, Any]:
        out = super().as_map()
        out["unsent_acks"] = dict(self.unsent_acks)
        return out


@mypyc_attr(allow_interpreted_subclasses=True)
class OffloadTarget(DriverLayer):
    """A chimney-capable NIC (miniport edge only)."""

    kind = "target"
    has_miniport_edge = True
    failable_calls = frozenset(
        {
            "MiniportInitiateOffload",  # the TCP blocks of an initiate
            "MiniportInitiateOffload[path]",
            "MiniportInitiateOffload[neighbor]",
            "MiniportTerminateOffload",
            "MiniportQueryOffload",
            "MiniportUpdateOffload",
            "MiniportInvalidateOffload",
            "MiniportTcpOffloadSend",
            "MiniportTcpOffloadReceive",
            "MiniportTcpOffloadDisconnect",
        }
    )

    def __init__(
        self,
        name: str,
        ndis: Ndis,
        timers: Timers,
        find_wire: FindWire,
        max_connections: int = 16384,
        ipv4: bool = True,
        ipv6: bool = True,
        tcp_chimney: bool = True,
        rx_buffer_bytes: int = 256 * 1024,
        push_ticks_ms: int = 500,
        user_timeout_ms: int = 0,
    ) -> None:
        # neighbors and paths share the table with TCP contexts: room for them on top
        super().__init__(name, ndis, timers, max_connections * 2 + 64)
        # the layer's stats with the target's own counters (`TargetStats`); what the layer
        # counted while it registered stays counted
        stats = TargetStats()
        stats.calls, stats.by_status = self.stats.calls, self.stats.by_status
        self.stats = self.target_stats = stats
        self.find_wire = find_wire
        self.max_connections = max_connections
        self.ipv4 = ipv4  # the IP versions it offloads (its capabilities say so to the host)
        self.ipv6 = ipv6
        self.tcp_chimney = tcp_chimney  # off: no encapsulation the host recognises (spec §1.3)
        self.rx_buffer_bytes = rx_buffer_bytes
        self.push_ticks = push_ticks_ms / 1000.0
        # TcpMaximumRetransmissions as a time (spec §8): TCP_USER_TIMEOUT on offloaded sockets
        # whose MaxRT is 0; 0 leaves the kernel's own limit
        self.user_timeout_ms = user_timeout_ms
        self.tcp_count = 0
        self.indicated: dict[int, NetBufferList] = {}  # indicated NBLs the host still holds
        self.deferred_terminates: list[OffloadBlock] = []
        # arrived while paused (spec §5.5), each with the clock at its arrival: a FIN_WAIT_2
        # timer it hands down runs from then (spec §8)
        self.paused_initiates: list[tuple[OffloadBlock, int]] = []
        # the global parameters the host set (spec §8); these defaults until it does
        self.params = NdisTcpConnectionOffloadParameters(TcpPushTicks=push_ticks_ms)
        self.batch: CompletionBatch | None = None  # completions of a drain, once drains end
        # the FIN_WAIT_2 timers (spec §8) of the connections in FIN_WAIT_2, by context id
        self.fin_wait_2: dict[int, FinWait2Timer] = {}

    # -- completions per drain (spec §4.0; see `batch`) -------------------------------------------
    def complete_per_drain(self) -> None:
        """From now on `after_batch` ends every drain (the runtime says so): send and receive
        completions gather and go up once per drain."""
        if self.batch is None:
            self.batch = CompletionBatch(self.ndis, self)
            self.ndis = self.batch  # every other call flushes them first

    def after_batch(self) -> None:
        if self.batch is not None:
            self.batch.flush()

    def complete_sends(self, c: TcpContext, nbls: list[NetBufferList]) -> None:
        """`NdisTcpOffloadSendComplete` of connection `c`'s `nbls`, now or at the drain's end."""
        if self.batch is not None:
            self.batch.send(c, nbls)
        else:
            self.ndis.NdisTcpOffloadSendComplete(self, chain_of(nbls))

    def complete_receives(self, c: TcpContext, nbls: list[NetBufferList]) -> None:
        """`NdisTcpOffloadReceiveComplete` of `c`'s `nbls`, now or at the drain's end."""
        if self.batch is not None:
            self.batch.receive(c, nbls)
        else:
            self.ndis.NdisTcpOffloadReceiveComplete(self, chain_of(nbls))

    @property
    def failed(self) -> bool:
        """The adapter failed (target_failure fault): it offloads nothing new (spec §5.5)."""
        return self.state == "failed"

    def context_of(self, block: OffloadBlock) -> Context | None:
        """The live context a block names, None for a placeholder; raise for a stale one."""
        cell = block.miniport_offload_context
        if cell is None:
            return None
        ctx = cell.miniport_offload_context
        if ctx is None or ctx.id not in self.table:
            raise ChimneyProtocolError(f"{self.name}: block references no live context")
        return ctx  # type: ignore[no-any-return]

    def keeps(self, root: OffloadBlock) -> bool:
        """Initiates wait here while the adapter is paused (updates and queries never do),
        terminates until no indication of theirs is in flight."""
        return any(r is root for r, _ in self.paused_initiates) or any(
            r is root for r in self.deferred_terminates
        )

    def fail_unserved_terminate(self, root: OffloadBlock) -> bool:
        """As a `fail_next` terminate: the hardware state is lost (spec §3.7), the host
        hears the retrieve and the abort, and its next terminate finishes the connection."""
        terminate.fail(self, root)
        return True

    def fail_unserved_send(self, ctx: Any, head: NetBufferList) -> bool:
        """As a `fail_next` send failure: a hole, every later send refused, an upload asked
        for (spec §4.1, §3.6.4) — unless the send got as far as the socket (then its
        acknowledgements complete it) or among the refusals held back."""
        c: TcpContext = ctx
        nbls = list(iter_chain(head))
        if any(u[0] is n for u in c.unacked for n in nbls) or any(
            r[1] is head for r in c.held_refusals
        ):
            return False
        send.refuse_send(self, c, head, NdisStatus.NDIS_STATUS_FAILURE, hole=True)
        return True

    def fail_unserved_receive(self, ctx: Any, head: NetBufferList) -> bool:
        """Refused as any receive is, after the requests posted before it; not if any of it
        was queued (the delivery algorithm completes those)."""
        c: TcpContext = ctx
        nbls = list(iter_chain(head))
        if any(p is n for p in c.posted for n in nbls) or any(
            r[1] is head for r in c.held_refusals
        ):
            return False
        send.refuse(self, c, "receive", head, NdisStatus.NDIS_STATUS_REQUEST_ABORTED)
        return True

    def fail_unserved_disconnect(self, ctx: Any, nbl: NetBufferList) -> bool:
        """Refused as a `fail_next` disconnect is; not if it is held already."""
        c: TcpContext = ctx
        if c.disconnect_nbl is nbl or any(r[1] is nbl for r in c.held_refusals):
            return False
        disconnect.refuse(self, c, nbl, NdisStatus.NDIS_STATUS_FAILURE)
        return True

    def fail_unserved_forward(self, ctx: Any, head: NetBufferList) -> bool:
        """The segments not taken yet go back to the host, the upload is asked for."""
        receive.fail_forward(self, ctx, head)
        return True

    def connections(self) -> Iterator[TcpContext]:
        for ctx in self.table:
            if isinstance(ctx, TcpContext):
                yield ctx

    # -- state operations (spec §3) -------------------------------------------------------------
    @downcall
    def MiniportInitiateOffload(self, root: OffloadBlock) -> None:
        adapter.initiate(self, root)

    @downcall
    def MiniportTerminateOffload(self, root: OffloadBlock) -> None:
        terminate.terminate(self, root)

    @downcall
    def MiniportQueryOffload(self, root: OffloadBlock) -> None:
        state_ops.query(self, root)

    @downcall
    def MiniportUpdateOffload(self, root: OffloadBlock) -> None:
        state_ops.update(self, root)

    @downcall
    def MiniportInvalidateOffload(self, root: OffloadBlock) -> None:
        state_ops.invalidate(self, root)

    # -- I/O (spec §4) ---------------------------------------------------------------------------
    @downcall
    def MiniportTcpOffloadSend(self, c: TcpContext, head: NetBufferList) -> None:
        send.send(self, c, head)

    @downcall
    def MiniportTcpOffloadReceive(self, c: TcpContext, head: NetBufferList) -> None:
        receive.post(self, c, head)

    @downcall
    def MiniportTcpOffloadDisconnect(self, c: TcpContext, nbl: NetBufferList, flags: int) -> None:
        disconnect.disconnect(self, c, nbl, flags)

    @downcall
    def MiniportTcpOffloadForward(self, c: TcpContext, head: NetBufferList) -> None:
        receive.forward(self, c, head)

    @downcall
    def MiniportTcpOffloadReceiveReturn(self, head: NetBufferList) -> None:
        receive.receive_return(self, head)

    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        receive.indication_returned(self, nbl, status, bytes_consumed)

    # -- the wire (design: emulating the wire) ---------------------------------------------------
    def WireData(self, c: TcpContext, offset: int, data: bytes) -> None:
        receive.wire_data(self, c, offset, data)

    def WireEof(self, c: TcpContext, offset: int) -> None:
        receive.wire_eof(self, c, offset)

    def WireReset(self, c: TcpContext, reason: str) -> None:
        receive.wire_reset(self, c)

    def WireTimeout(self, c: TcpContext, reason: str) -> None:
        receive.wire_timeout(self, c, reason)

    def WireAcked(self, c: TcpContext, acked: int) -> None:
        send.wire_acked(self, c, acked)

    def push_expired(self, c: TcpContext) -> None:
        receive.push_expired(self, c)

    def fin_wait_2_expired(self, c: TcpContext) -> None:
        disconnect.fin_wait_2_expired(self, c)

    # -- the adapter: OIDs, status, neighbor reachability (spec §1.3, §5.4, §5.5, §8) ---------
    def MiniportOidRequest(self, request: NdisOidRequest) -> None:
        adapter.oid_request(self, request)

    def OffloadEventIndicateReturned(self, block: OffloadBlock) -> None:
        adapter.reachability_answered(self, block)

    def fail_adapter(self) -> None:
        adapter.fail(self)

    def recover_adapter(self) -> None:
        adapter.recover(self)

    def retrieve(self, c: TcpContext, reason: TcpUploadReason) -> None:
        """Ask for `c`'s upload (the `retrieve` fault), if it is still offloaded here."""
        if c.id in self.table:
            events.request_upload(self, c, reason)

    def describe(self) -> dict[str, Any]:
        return {
            "max_connections": self.max_connections,
            "tcp": self.tcp_count,
            "capabilities": adapter.capabilities(self).as_map(),
            "paused_initiates": len(self.paused_initiates),
        }

    def leftovers(self) -> dict[str, int]:
        """Indicated NBLs the host has not returned (spec §4.3), terminates and initiates
        waiting, connections counted as offloaded, FIN_WAIT_2 timers (spec §8)."""
        return {
            "indicated": len(self.indicated),
            "deferred_terminates": len(self.deferred_terminates),
            "paused_initiates": len(self.paused_initiates),
            "tcp_count": self.tcp_count,
            "fin_wait_2_timers": len(self.fin_wait_2),
        }
