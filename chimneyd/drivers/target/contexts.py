"""The offload target's contexts: one per offloaded neighbor, path and TCP object (spec §3.2.3).

The target keeps its own inverted tree, TCP → path → neighbor (spec §2.3); each context holds
the overlying driver's handle (`upper`) to pass back in indications, and its `Lifecycle`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.blocks import (
    NeighborOffloadStateCached,
    NeighborOffloadStateConst,
    PathOffloadStateCached,
    PathOffloadStateConst,
    TcpOffloadStateCached,
    TcpOffloadStateConst,
)
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.lifecycle import Lifecycle, Role, TcpState
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus
from chimneyd.ndis.trace import HopTrace

from ..queues import NO_ITEMS
from ..tcp import Reassembly

if TYPE_CHECKING:
    from ..base import TimerHandle
    from ..wire import WirePort


class NeighborContext(Lifecycle):
    __slots__ = (
        "cached",
        "const",
        "dependents",
        "hrt",
        "id",
        "nrt",
        "query_pending",
        "upper",
    )

    def __init__(
        self,
        upper: NdisOffloadHandle,
        const: NeighborOffloadStateConst,
        cached: NeighborOffloadStateCached,
    ) -> None:
        self.id = next_object_id()
        self.upper = upper
        self.const = const
        self.cached = cached
        self.dependents = 0  # offloaded paths that hang below it (spec §2.3)
        Lifecycle.__init__(self, None, Role.OFFLOADED_OBJECT)
        # reachability (spec §5.4), in ticks of the NIC's clock: the last forward progress
        # (NRT), the host's last confirmation (HRT), and whether a query is out
        self.nrt = self.hrt = 0
        self.query_pending = False

    def __str__(self) -> str:
        return f"neighbor context {self.id}"


class PathContext(Lifecycle):
    __slots__ = ("cached", "const", "dependents", "id", "neighbor", "upper")

    def __init__(
        self,
        upper: NdisOffloadHandle,
        const: PathOffloadStateConst,
        cached: PathOffloadStateCached,
        neighbor: NeighborContext,
    ) -> None:
        self.id = next_object_id()
        self.upper = upper
        self.const = const
        self.cached = cached
        self.neighbor = neighbor
        self.dependents = 0  # offloaded TCP connections on this path
        Lifecycle.__init__(self, None, Role.OFFLOADED_OBJECT)

    def __str__(self) -> str:
        return f"path context {self.id}"


ObjectContext = NeighborContext | PathContext


class TcpContext(Lifecycle):
    """The target's state for one offloaded connection: the unit of work of every chapter;
    its own `Lifecycle`."""

    __slots__ = (
        "backlog",
        "backlog_at",
        "buffered",
        "buffered_bytes",
        "buffered_psh",
        "busy",
        "cached",
        "const",
        "disconnect_end",
        "disconnect_nbl",
        "disconnect_refused",
        "fin_indicated",
        "held_refusals",
        "id",
        "ka_probes_base",
        "ka_restart_ns",
        "path",
        "paused",
        "posted",
        "push_timer",
        "rcv_bound",
        "receives_owed",
        "refused",
        "rst_challenged",
        "rt_reset",
        "rx",
        "send_failed",
        "syn_challenged_ns",
        "timed_out",
        "trace",
        "unacked",
        "upper",
        "urgent_at",
        "urgent_held",
        "user_timeout_set",
        "wire",
    )

    def __init__(
        self,
        upper: NdisOffloadHandle,
        path: PathContext,
        wire: WirePort,
        const: TcpOffloadStateConst,
        cached: TcpOffloadStateCached,
        tcp: TcpState,
        rcv_nxt: int,
    ) -> None:
        self.id = next_object_id()
        self.upper = upper
        self.trace: HopTrace | None = upper.trace
        self.path = path
        self.wire = wire
        self.const = const
        self.cached = cached
        Lifecycle.__init__(self, None, Role.OFFLOADED_OBJECT, tcp)
        # receive side (spec §4.2-§4.4): in-sequence bytes not yet delivered, posted requests,
        # and the state of the delivery algorithm (`busy`, `refused`). Every queue starts as the
        # shared empty one and becomes the context's own list with its first item (`grown`).
        self.rx: Reassembly[memoryview] = Reassembly(rcv_nxt)
        self.buffered: list[memoryview] = NO_ITEMS
        self.buffered_bytes = 0
        self.buffered_psh = False
        self.posted: list[NetBufferList] = NO_ITEMS
        self.busy = False  # a receive indication is executing (spec §4.4)
        self.refused = False  # the host refused the last indication: wait for a post (§4.3)
        # the status the posted requests complete with once the indication executing returns
        # (a reset or a terminate came while it was up: spec §4.2 serialises the two)
        self.receives_owed: NdisStatus | None = None
        self.push_timer: TimerHandle | None = None
        # TcpIndicateDisconnect has been raised (or the host knew of the FIN before the offload)
        self.fin_indicated = False
        self.paused = False  # reading stopped: the buffered bytes reached their bound
        # urgent data, or any segment after a mandatory upload request (spec §5.2): the stream
        # offset from which received segments are held for the ordinary path at the terminate
        # instead of delivered, and those segments
        self.urgent_at: int | None = None
        self.urgent_held: list[tuple[int, memoryview, int]] = NO_ITEMS
        # send side (spec §4.1, §4.5): NBLs written but not yet acknowledged, with their offsets
        self.unacked: list[tuple[NetBufferList, int, int]] = NO_ITEMS
        self.disconnect_nbl: NetBufferList | None = None
        self.disconnect_end = 0
        # a send this target failed (a `fail_next` fault): the stream has a hole there, so
        # nothing after it goes on the wire and the host gets the connection back (spec §4.1)
        self.send_failed = False
        # the kernel gave up on the connection (spec §5.2 TimeoutExpiration): dead as after an
        # RST, but no RST came, so I/O is refused as during an upload, not aborted (§3.6.4)
        self.timed_out = False
        # I/O refused (spec §3.6.4, §5.1) while earlier I/O of its kind is still outstanding:
        # (kind, NBL chain, status), completed once that earlier I/O is (completion order)
        self.held_refusals: list[tuple[str, NetBufferList, NdisStatus]] = NO_ITEMS
        # a disconnect refused while earlier sends are outstanding: the status it completes with
        # once they are done (it may not overtake them, spec §9 item 2); None for a FIN on the wire
        self.disconnect_refused: NdisStatus | None = None
        # blind-reset mitigation (spec §5.2): an RST validation period is open, a challenge ACK
        # for an RST counted and no acceptable segment since (none again until one arrives: a
        # socket read, an in-window forwarded segment, or an ACK of our data), and the clock
        # when the last challenge ACK for a SYN was counted (none again for 3 s)
        self.rst_challenged = False
        self.syn_challenged_ns: int | None = None
        self.backlog = 0  # the send backlog last indicated (spec §5.3)
        self.backlog_at = 0
        # what the cached variables asked of the socket and of the delegated state (spec §3.4;
        # `cached.apply` sets them): the receive bound (bytes held before back-pressure), the
        # TCP_USER_TIMEOUT set, and the counters an update reset or restarted
        self.rcv_bound = 0
        self.user_timeout_set = False
        self.rt_reset: tuple[int, int] | None = None  # (SndUna offset, TotalRT ticks) then
        self.ka_probes_base = 0
        self.ka_restart_ns = 0

    def __str__(self) -> str:
        return f"TCP context {self.id}"


Context = NeighborContext | PathContext | TcpContext
