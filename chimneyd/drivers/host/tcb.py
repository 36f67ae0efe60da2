"""The host's per-connection and per-object records: TCBs and neighbor/path objects.

A `Tcb` is the unit of work of every host chapter. Its state is its `Lifecycle` (the phase of
the offload and the TCP state, spec §3.9); what `tcp.info` reports as `state` is read from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chimneyd.ndis.blocks import (
    NeighborOffloadStateCached,
    PathOffloadStateCached,
    PlacementWish,
    TcpOffloadStateCached,
)
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import FIN_SENT_STATES, Lifecycle, Phase, Role, TcpState
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus
from chimneyd.ndis.trace import HopTrace

from ..queues import NO_ITEMS
from ..tcp import Reassembly

if TYPE_CHECKING:
    from chimneyd.ndis.broker import Binding

    from ..delegated import DelegatedSnapshot
    from ..wire import WirePort

Done = Callable[[Any, "AppError | None"], None]


class AppError(Exception):
    """A failed application request: contract error symbol + detail, and the `NDIS_STATUS` it
    names (`ndis_error`), if any."""

    def __init__(self, symbol: str, detail: str, status: NdisStatus | None = None) -> None:
        super().__init__(f"{symbol}: {detail}")
        self.symbol = symbol
        self.detail = detail
        self.status = status


#: `Tcb.end_reason` of a connection the kernel gave up on.
TIMED_OUT = "connection timed out (TimeoutExpiration)"
#: `Tcb.end_reason` of a connection a layer below lost: its block missing from the completion
#: of its terminate or initiate (spec §6.3 [EMU], `terminate.lost_below`).
LOST_BELOW = "connection lost below: a layer below dropped its block (spec §6.3)"


def ndis_error(status: NdisStatus, extra: str = "") -> AppError:
    return AppError("NDIS_STATUS", status.describe() + extra, status)


#: `tcp.info`'s `state` for each phase (rpc-contract).
INFO_STATE = {
    Phase.IDLE: "host",
    Phase.OFFLOADING: "offloading",
    Phase.OFFLOADED: "offloaded",
    Phase.INVALIDATED: "offloaded",
    Phase.UPLOAD_SUGGESTED: "offloaded",
    Phase.UPLOAD_REQUESTED: "offloaded",
    Phase.FAILED: "offloaded",
    Phase.TERMINATING: "uploading",
    Phase.CLOSED: "closed",
}


class HostObject(Lifecycle):
    """A neighbor or path object the host offloads and shares among connections (spec §2.3)."""

    __slots__ = (
        "binding",
        "block_kind",
        "cached",
        "handle",
        "key",
        "linked",
        "maybe_under",
        "moving",
        "parent",
        "pending_ops",
        "refs",
        "update_waiters",
        "updating",
    )

    def __init__(
        self, key: Any, block_kind: str, binding: Binding, parent: HostObject | None
    ) -> None:
        self.key = key
        self.block_kind = block_kind
        self.binding = binding
        self.parent = parent
        self.handle: NdisOffloadHandle | None = None
        Lifecycle.__init__(self, None, Role.HOST_OBJECT)
        # connections (for a path) or paths (for a neighbor) that depend on it: the host
        # terminates it only when none is left (spec §3.1)
        self.refs = 0
        # calls in flight that name it — an invalidate, an update, a next-hop change, an
        # initiate linking new state under it: no terminate until they complete (spec §3.1)
        self.pending_ops = 0
        # of those, the initiates linking new state under it (`offload.object_block`): one on
        # its way out that only they keep stands for its key no more (`terminate`)
        self.linked = 0
        # its cached state as the host last offloaded or updated it (spec §2.2): what a new
        # offload of it carries, and what an update starts from
        self.cached: NeighborOffloadStateCached | PathOffloadStateCached | None = None
        self.updating = False  # at most one update of the object in flight (spec §3.1)
        # a path's next-hop change is under way (spec §3.4 (b)): until it is over, which
        # neighbor is a connection's on it is not settled (`state_ops.app_move_path`)
        self.moving = False
        # a path whose next-hop change came back without its blocks (spec §6.3 [EMU]): the
        # new neighbor the layers below may have moved it under, held (a count in its `refs`)
        # until the path's terminate has completed (`state_ops._move_complete`)
        self.maybe_under: HostObject | None = None
        self.update_waiters: list[Callable[[], None]] = NO_ITEMS  # updates behind that one

    def __str__(self) -> str:
        return f"host {self.block_kind} {self.key}"


class Tcb(Lifecycle):
    """Transmission control block of one connection; its own `Lifecycle`."""

    __slots__ = (
        "after_fin",
        "app_rx",
        "app_rx_bytes",
        "binding",
        "cached",
        "conn_id",
        "deferred",
        "delegated",
        "disconnect_done",
        "end_reason",
        "fin_queued",
        "forward_q",
        "handle",
        "hole_status",
        "indicated_via",
        "initiate_queued",
        "kernel_timed_out",
        "listener",
        "offload_done",
        "offload_refused",
        "path",
        "pending_ops",
        "posted",
        "read_paused",
        "recv_waiters",
        "refused",
        "replaying",
        "requeue",
        "rx",
        "send_backlog",
        "send_epoch",
        "send_outstanding",
        "send_q",
        "sends",
        "target",
        "trace",
        "updating",
        "upload_done",
        "upload_q",
        "upload_reason",
        "upload_waits",
        "wire",
        "wish",
    )

    def __init__(self, conn_id: int, wire: WirePort, trace: HopTrace) -> None:
        self.conn_id = conn_id
        self.wire = wire
        self.trace = trace
        Lifecycle.__init__(self, None, Role.HOST_CONNECTION, TcpState.ESTABLISHED)
        self.handle: NdisOffloadHandle | None = None
        self.binding: Binding | None = None
        self.path: HostObject | None = None
        self.target: str | None = None
        # [EMU] its next offload's placement wish for a MUX below (`host_reasons.refusal`),
        # put on the initiate's TCP block (`offload._tcp_block`)
        self.wish: PlacementWish | None = None
        self.listener: int | None = None
        # receive. Queues are lists: they are short, and an empty deque costs ~700 bytes, which
        # counts when a daemon holds ten thousand connections. An empty queue is the shared
        # NO_ITEMS; the connection gets its own list when it queues something (`grown`).
        # from the first byte: whatever the socket read before the host owned it waits in the
        # wire and is replayed to the host by offset (design: exactly one owner at a time)
        self.rx: Reassembly[bytes] = Reassembly(0)
        # bytes for the application: views, with the indicated NBL that holds them (if any)
        self.app_rx: list[tuple[memoryview, NetBufferList | None]] = NO_ITEMS
        self.app_rx_bytes = 0
        # the binding those NBLs came up through, to give them back there (spec §4.3): once
        # the connection moves, `binding` names its next NIC while they are still unread
        self.indicated_via: Binding | None = None
        self.recv_waiters: list[tuple[int, Done, bool]] = NO_ITEMS  # (max bytes, done, waitall)
        self.posted: NetBufferList | None = None  # the receive request posted to the target
        self.refused = False  # we refused an indication: post before the next (spec §4.3)
        self.read_paused = False
        self.forward_q: list[tuple[int, bytes, int]] = NO_ITEMS  # received during the initiate
        self.upload_q: list[tuple[int, bytes, int]] = NO_ITEMS  # received during the terminate
        # send
        self.sends: list[tuple[NetBufferList, int, int]] = NO_ITEMS  # written by the host, unacked
        self.requeue: list[NetBufferList] = NO_ITEMS  # refused by the target: the host sends them
        # bumped when a send fails for good: the application's sends made before (`AppSend`
        # epoch below it) lie after that hole in the stream and are never sent (spec §4.1)
        self.send_epoch = 0
        self.hole_status = NdisStatus.NDIS_STATUS_FAILURE  # what the last hole failed with
        # send pacing (spec §5.3): the target's preferred backlog (0: not known yet), the bytes
        # posted to it and not completed, and the application's bytes waiting for room, in order
        self.send_backlog = 0
        self.send_outstanding = 0
        self.send_q: list[tuple[memoryview, Any]] = NO_ITEMS
        self.fin_queued: Done | None = None  # a graceful disconnect behind the send queue
        self.disconnect_done: Done | None = None
        # why a killed connection (TCP state RESET) died, for the application's errors: None is
        # an RST; the kernel's timeout says so (spec §5.2 TimeoutExpiration)
        self.end_reason: str | None = None
        # the socket told the host of the kernel's timeout itself (`receive.wire_timeout`): a
        # fact, not a target's request an upload may answer alive (`terminate._uploaded`)
        self.kernel_timed_out = False
        self.delegated: DelegatedSnapshot | None = None  # as last known, no pointers
        self.cached: TcpOffloadStateCached | None = None
        self.pending_ops = 0  # queries, updates, invalidates in flight: a terminate waits
        self.updating = False  # at most one update in flight (spec §3.1)
        # requests that wait for the connection to change hands, replayed in order
        self.deferred: list[Callable[[], None]] = NO_ITEMS
        self.replaying = False
        # offloads asked while the host's own FIN waits for its ACK (`offload.request`): the
        # connection stays the host's until then, so they are kept apart from `deferred` and
        # nothing the application asks after them waits behind them (`disconnect.fin_wait_over`)
        self.after_fin: list[Callable[[], None]] = NO_ITEMS
        # an offload asked and not issued yet: the connection stays the host's, its traffic
        # flowing, until the host puts it in an initiate (spec §3.9: IDLE until then)
        self.initiate_queued = False
        self.offload_done: list[Done] = NO_ITEMS
        # why its last offload was refused, and the layer that refused it (the host, or the
        # lowest whose initiate completion failed it; None: not known, a block left out);
        # None once one succeeds (`adapter.refused`, `adapter.refusal_info`)
        self.offload_refused: tuple[AppError, str | None] | None = None
        self.upload_done: list[Done] = NO_ITEMS
        self.upload_reason = "terminate"  # what the `uploaded` event says, then "terminate" again
        # its terminate is asked and waits behind a query, update or invalidate on it (spec
        # §3.1, `terminate.start`): it is going up already, for a reason of its own or for the
        # host event that asked first (`host_reasons._for_the_event`)
        self.upload_waits = False

    # The TCB is its own Lifecycle: these read its phase and TCP state in place, not through
    # the `lifecycle` property (which returns the TCB), one call less each; a receive served
    # reads them once or twice

    @property
    def state(self) -> str:
        """`tcp.info`'s state."""
        return INFO_STATE[self.phase]

    @property
    def reset(self) -> bool:
        """An RST was sent or received."""
        return self.tcp is TcpState.RESET

    @property
    def death(self) -> str:
        """How the killed connection died, for error messages."""
        return self.end_reason or "connection reset"

    @property
    def fin_sent(self) -> bool:
        return self.tcp in FIN_SENT_STATES

    def __str__(self) -> str:
        return f"TCB {self.conn_id}"
