"""The FIN_WAIT_2 timer (spec §8), as the offload target and the host stack both keep it.

`RetransmitTimeoutDelta` doubles as the timer: the target keeps it while a connection is
offloaded and hands back what is left at the upload; the host keeps it while it carries the
connection and hands down what is left at an offload. The kernel socket never times FIN_WAIT_2
out while its descriptor is open (Linux's tcp_fin_timeout is for orphaned sockets), so without
it uploads and offloads in turn, each starting a fresh 120 s, would put the end off for ever.
Each layer keeps one per connection, only while in FIN_WAIT_2, in a table of its own: nothing
in a connection's record, nothing armed in any other state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chimneyd.ndis.blocks import BlockKind, OffloadBlock, TcpOffloadStateDelegated, walk
from chimneyd.ndis.oid import NdisTcpConnectionOffloadParameters

if TYPE_CHECKING:
    from .base import TimerHandle
    from .wire import WirePort

NS = 1_000_000_000
#: The timer's period (spec §8): 120 s from entering FIN_WAIT_2, restarted by each acceptable
#: segment.
FIN_WAIT_2_NS = 120 * NS
_TCP_CLOSE = 7  # tcpi_state of a socket the kernel has closed
#: The ticks a layer that was never told the host's parameters counts in (spec §8's default).
_DEFAULT_TICKS = NdisTcpConnectionOffloadParameters().TicksPerSecond


class FinWait2Timer:
    """One connection's FIN_WAIT_2 timer: the timer armed (the host's is None while it fell
    due with an offload below), and the clock when the peer was last heard. A segment restarts
    it by writing `heard_ns`; an expiry that finds a later one arms it again for what is left:
    no timer per segment. `since_ns`: when it was started, the kernel's news from before which
    does not count (`heard_by_kernel`)."""

    __slots__ = ("handle", "heard_ns", "since_ns")

    def __init__(self, handle: TimerHandle | None, heard_ns: int, since_ns: int) -> None:
        self.handle = handle
        self.heard_ns = heard_ns
        self.since_ns = since_ns


def heard_by_kernel(wire: WirePort, reading_stopped: bool, timer: FinWait2Timer, now: int) -> int:
    """When the peer was last heard, the kernel's news counted, noted in `timer`: what the
    expiry, a query and the hand-back all go by (spec §8: the delta tells the other layer what
    this one would do).

    [EMU] While reading the socket has stopped (back-pressure, or after a mandatory upload
    request, spec §5.2) the layer reads no segment, but the kernel hears the peer (its window
    probes are acceptable segments): its time counts. A kernel that closed the socket took the
    peer's FIN (Linux leaves FIN_WAIT_2 when it arrives, unread bytes before it or not): the
    FIN comes once reading resumes, and the connection is no FIN_WAIT_2 one to time out. Only
    news after the timer started counts: at an offload in FIN_WAIT_2 what the kernel heard
    while the other layer had the connection is in the delta it handed over already."""
    if reading_stopped and not wire.closed:
        info = wire.tcp_info()
        if info.state == _TCP_CLOSE:
            timer.heard_ns = now
        else:
            kernel_ns = now - min(info.last_data_recv_ms, info.last_ack_recv_ms) * 1_000_000
            if kernel_ns > timer.since_ns:
                timer.heard_ns = max(timer.heard_ns, kernel_ns)
    return timer.heard_ns


def spend_held(root: OffloadBlock, held_ns: int, ticks_per_second: int) -> None:
    """A layer that held an initiate `held_ns` before it passed it on (an IM's or a NIC's
    `delay`, a MUX waiting for a NIC's capabilities or a copy to settle) takes that time off
    the timers each connection in it hands down as deltas: the FIN_WAIT_2 timer (in
    FIN_WAIT_2, `RetransmitTimeoutDelta`), the retransmit or persist timer (in that field
    otherwise) and the keepalive timer (`KeepAliveTimeoutDelta`).

    [INF] Spec §8: the timer runs 120 s from the last acceptable segment, and nothing but a
    segment restarts it; the delta is what was left when the host read it. NDIS sends no
    clock down with it, so the target counts the delta from its own `MiniportInitiateOffload`,
    and a hold above it put the expiry off by as long. The layer that holds the state
    structures knows how long, and fills in what is left in place, as it passes the same
    structures down (spec §1.6); a timer spent by then expires at once at the target. -1 (no
    timer ran at the host: a fresh one at the offload) stays as it is.

    [INF] The retransmit and keepalive deltas too: spec §8's table carries them across the
    offload as it carries FIN_WAIT_2's, with the same -1 / 0 rule, and a target arms them from
    its own initiate as well, so a hold above it puts them off alike; the layer that held the
    initiate cannot know which timers the target below arms from them. chimneyd's NIC arms
    neither (the kernel socket keeps both and ran them through the hold; the NIC reads them
    back from it, `delegated.fill_from_kernel`): for it this changes nothing."""
    spent = held_ns * ticks_per_second // NS
    for block in walk(root):
        d = block.delegated
        if block.kind is not BlockKind.TCP or not isinstance(d, TcpOffloadStateDelegated):
            continue
        # [EMU] and tells the target how long, on the initiate's own block, which each layer
        # copies onto the one it sends down (`OffloadBlock.held_ns`): in FIN_WAIT_2 nobody
        # read the kernel's news meanwhile, and with reading stopped the peer's segments the
        # kernel took during the hold restart the timer (spec §8): the target counts them.
        # Not on the connection's hop trace: that is for watching, may be cut from a handle,
        # and outlives this initiate, which may fail before the NIC
        block.held_ns += held_ns
        if spent <= 0:
            continue
        if d.RetransmitTimeoutDelta >= 0:
            d.RetransmitTimeoutDelta = max(0, d.RetransmitTimeoutDelta - spent)
        if d.KeepAliveTimeoutDelta >= 0:
            d.KeepAliveTimeoutDelta = max(0, d.KeepAliveTimeoutDelta - spent)


def ticks_per_second(layer: Any) -> int:
    """The `TicksPerSecond` the host set on `layer` (a target's, a MUX's parameters), else
    spec §8's default."""
    params = getattr(layer, "params", None)
    return params.TicksPerSecond if params is not None else _DEFAULT_TICKS
