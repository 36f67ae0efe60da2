"""Disconnect at the target (spec §4.5): graceful (data, FIN, complete on its ACK) or abortive
(RST, outstanding sends aborted, complete at once); and where the closing goes on from there
(`closing`): the FIN_WAIT_2 timer (spec §8) and the upload on entering TIME_WAIT (spec §5.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.blocks import TcpOffloadStateDelegated
from chimneyd.ndis.lifecycle import LIVE, Event, TcpState
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus, TcpDisconnectFlags, TcpUploadReason

from ..fin_wait_2 import FIN_WAIT_2_NS, NS, FinWait2Timer, heard_by_kernel
from ..segment import TH_FIN
from . import events, receive, send
from .contexts import TcpContext

if TYPE_CHECKING:
    from .target import OffloadTarget

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
ABORTED = S.NDIS_STATUS_REQUEST_ABORTED


def disconnect(t: OffloadTarget, c: TcpContext, nbl: NetBufferList, flags: int) -> None:
    """`MiniportTcpOffloadDisconnect`: exactly one NBL with one NB (spec §4.5)."""
    c.lifecycle.fire(Event.IO)
    # after a failed send no FIN goes out either: it would close the stream over a hole
    refused = send.send_refusal(c) or t.take_failure("MiniportTcpOffloadDisconnect", nbl)
    if refused is not None:
        refuse(t, c, nbl, refused)
        return
    if flags & TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE:
        c.lifecycle.fire(Event.RESET)
        stop_fin_wait_2(t, c)
        c.wire.abort()  # RST: the only RST a target may originate
        send.fail_sends(t, c, ABORTED)
        if c.disconnect_nbl is not None:
            # an earlier graceful disconnect: its FIN can never be acknowledged now, and it
            # was posted first, so it completes REQUEST_ABORTED before this one (spec §4.5)
            complete(t, c, ABORTED)
            send.release_refusals(t, c)  # disconnects refused behind it, before this one
        receive.stop_push(t, c)
        nbl.status = SUCCESS
        nbl.tcp_offload_bytes_transferred = 0
        t.ndis.NdisTcpOffloadDisconnectComplete(t, nbl)
        return
    data = nbl.views()
    start = c.wire.bytes_written
    if data:
        c.wire.write(data)
    c.wire.write_eof()  # the FIN follows the data without waiting for its ACK
    c.lifecycle.fire(Event.FIN_SENT)
    c.disconnect_nbl = nbl
    c.disconnect_end = c.wire.bytes_written
    nbl.miniport_reserved = start
    send.watch(c)


def refuse(t: OffloadTarget, c: TcpContext, nbl: NetBufferList, status: NdisStatus) -> None:
    """A disconnect refused with `status`, no FIN sent."""
    if c.unacked and c.disconnect_nbl is None:
        # it completes after the sends before it (spec §9 item 2): once they are done, or with
        # the terminate, before the sends it hands back (spec §3.6.3)
        c.disconnect_nbl = nbl
        c.disconnect_refused = status
        nbl.miniport_reserved = c.disconnect_end = c.wire.bytes_written
        return
    send.refuse(t, c, "disconnect", nbl, status)


def complete(t: OffloadTarget, c: TcpContext, status: NdisStatus) -> None:
    """Complete the graceful disconnect: SUCCESS once data and FIN are acknowledged. Refused
    sends held behind earlier ones complete first: they were posted before it (spec §9 item 2)."""
    nbl = c.disconnect_nbl
    assert nbl is not None
    send.release_refusals(t, c)  # a later disconnect stays held: this one is still pending
    c.disconnect_nbl = None
    if c.disconnect_refused is not None:
        # refused, no FIN sent: its own status, unless the connection was reset meanwhile
        status = status if status is ABORTED else c.disconnect_refused
        c.disconnect_refused = None
    start: int = nbl.miniport_reserved
    if status is SUCCESS:
        c.lifecycle.fire(Event.FIN_ACKED)
        k = c.disconnect_end - start
    else:
        acked = c.wire.acked()
        k = max(0, min(acked, c.disconnect_end) - start)
    nbl.status = status
    nbl.tcp_offload_bytes_transferred = k
    nbl.miniport_reserved = None
    if k:
        nbl.advance(k)
    t.ndis.NdisTcpOffloadDisconnectComplete(t, nbl)
    if status is SUCCESS:
        closing(t, c)  # FIN_WAIT_2, or TIME_WAIT after a simultaneous close


def closing(t: OffloadTarget, c: TcpContext) -> None:
    """After our FIN's ACK or the peer's FIN took the connection on (spec §5.2, §8). In
    FIN_WAIT_2 the FIN_WAIT_2 timer runs (`start_fin_wait_2`); out of it, it stops.

    One that entered TIME_WAIT asks for its upload. The active closer's 2MSL wait is the host
    stack's to keep, and nothing is left for the chimney to carry (spec §5.2 "Other documented
    upload triggers": TIME_WAIT, should upload). The spec names no reason for it;
    `UploadRequested` is the one for "unspecified" [INF]. Mandatory: the host takes the
    connection back, in TIME_WAIT, with what the target still holds (spec §3.6.3). Asked
    after what caused it went up: the disconnect's completion, the delivery of the peer's
    last bytes."""
    tcp = c.tcp
    if tcp is TcpState.FIN_WAIT_2:
        if c.phase in LIVE:
            start_fin_wait_2(t, c)
        return
    stop_fin_wait_2(t, c)
    if tcp is TcpState.TIME_WAIT and c.phase in LIVE:
        events.request_upload(t, c, TcpUploadReason.UploadRequested)


# -- the FIN_WAIT_2 timer (spec §8) ---------------------------------------------------------------
# The kernel socket the target holds never times FIN_WAIT_2 out while its descriptor is open
# (Linux's tcp_fin_timeout is for orphaned sockets): the target keeps the timer, on its
# injected clock. One per connection, only while in FIN_WAIT_2, in `t.fin_wait_2` by context
# id: nothing in a connection's own record, and nothing armed in any other state.
def start_fin_wait_2(t: OffloadTarget, c: TcpContext, left_ns: int = FIN_WAIT_2_NS) -> None:
    """Arm `c`'s FIN_WAIT_2 timer to expire in `left_ns` (120 s on entering FIN_WAIT_2; what
    the host's `RetransmitTimeoutDelta` says at an offload in it, spec §8)."""
    stop_fin_wait_2(t, c)
    left_ns = max(0, left_ns)
    handle = t.timers.call_later(left_ns / NS, t.fin_wait_2_expired, c)
    now = t.ndis.clock()
    t.fin_wait_2[c.id] = FinWait2Timer(handle, now + left_ns - FIN_WAIT_2_NS, now)


def started_at(t: OffloadTarget, c: TcpContext, arrived_ns: int) -> None:
    """`c` was offloaded in FIN_WAIT_2 by an initiate the NIC queued while paused (spec §5.5)
    from `arrived_ns`, when it reached the NIC: its timer, just armed with what
    `RetransmitTimeoutDelta` says, counts from then (spec §8: the target's clock, from its
    initiate). Due already, it expires at once. [INF] A layer above that held the initiate
    (an IM, a MUX) took its hold off the delta already (`fin_wait_2.spend_held`)."""
    timer = t.fin_wait_2.get(c.id)
    if timer is None or forward_owed(c):
        return  # the peer was heard after the delta was read: `fin_wait_2_at_offload`
    now = t.ndis.clock()
    # a hold above, before the arrival, counted from the offload (`fin_wait_2_at_offload`)
    held_ns = now - timer.since_ns
    start_fin_wait_2(t, c, timer.heard_ns + FIN_WAIT_2_NS - now - (now - arrived_ns))
    # the kernel's news from the arrival on is not in the delta either (spec §8: with reading
    # stopped the kernel's time since it last heard the peer counts), nor from a hold above
    t.fin_wait_2[c.id].since_ns = arrived_ns - held_ns


def fin_wait_2_at_offload(
    t: OffloadTarget, c: TcpContext, d: TcpOffloadStateDelegated, held_ns: int
) -> None:
    """Arm `c`'s timer at an offload in FIN_WAIT_2 (spec §8): with what the host's
    `RetransmitTimeoutDelta` says, unless the host heard the peer after it read it. What it
    read of the peer's meanwhile (bytes, the FIN) comes down by `NdisOffloadTcpForward` after
    the completion (spec §3.2.7, §4.6), and an in-window forwarded segment restarts the timer:
    it counts from now, as the forward would have it. Left to the forward, a delta spent by
    the time the target takes the connection (an initiate queued while paused, spec §5.5)
    expires at once, and that expiry may reach the target before the forward does: a
    connection whose peer was just heard, or closed, would be timed out. `held_ns`: how long
    the layers above held the initiate (its block's `held_ns`, `fin_wait_2.spend_held`)."""
    if forward_owed(c):
        start_fin_wait_2(t, c, FIN_WAIT_2_NS)
        return
    start_fin_wait_2(t, c, fin_wait_2_ns(t, d))
    # [INF] a layer above that held the initiate took the hold off the delta (`spend_held`),
    # but nobody read the kernel's news meanwhile: with reading stopped (the host's, which the
    # target takes over) the peer's segments the kernel took during the hold restart the
    # timer (spec §8). Counted only from now, a connection whose peer the kernel heard during
    # the hold timed out, at once if the hold spent the delta
    t.fin_wait_2[c.id].since_ns -= held_ns


def forward_owed(c: TcpContext) -> bool:
    """The host read the peer's bytes or FIN from `c`'s socket after it built the initiate
    (past the delegated `RcvNxt`, or a FIN it had not received then): a forward of them is on
    its way (spec §3.2.7)."""
    wire = c.wire
    return wire.bytes_read > c.rx.rcv_nxt or (wire.eof_seen and not c.fin_indicated)


def heard(t: OffloadTarget, c: TcpContext) -> None:
    """An acceptable segment arrived on `c` in FIN_WAIT_2: its timer starts again (spec §8)."""
    timer = t.fin_wait_2.get(c.id)
    if timer is not None:
        timer.heard_ns = t.ndis.clock()


def stop_fin_wait_2(t: OffloadTarget, c: TcpContext) -> None:
    """`c` left FIN_WAIT_2 (the peer's FIN, an RST, a timeout) or leaves the target."""
    timer = t.fin_wait_2.pop(c.id, None)
    if timer is not None and timer.handle is not None:  # the target's is always armed
        timer.handle.cancel()


def kernel_heard(t: OffloadTarget, c: TcpContext, timer: FinWait2Timer, now: int) -> int:
    """When the peer was last heard, the kernel's news counted while reading the socket has
    stopped (back-pressure, or after a mandatory request): `fin_wait_2.heard_by_kernel`."""
    return heard_by_kernel(c.wire, c.paused, timer, now)


def note_kernel_news(t: OffloadTarget, c: TcpContext) -> None:
    """Reading is about to start again (back-pressure lifted, `receive._flow`, or the
    terminate): keep what the kernel heard while it was stopped, which the target can read no
    more once it reads the socket itself."""
    timer = t.fin_wait_2.get(c.id)
    if timer is not None and c.tcp is TcpState.FIN_WAIT_2:
        kernel_heard(t, c, timer, t.ndis.clock())


def fin_wait_2_expired(t: OffloadTarget, c: TcpContext) -> None:
    """The timer fell due: armed again for what is left if a segment came since it was armed;
    else the connection times out (spec §8): a `TimeoutExpiration` upload request, and it
    goes back CLOSED with what it holds (`receive.timed_out`). Not once the terminate began:
    the hand-back tells the host what was left (0: expires at once on the host, spec §8)."""
    timer = t.fin_wait_2.get(c.id)
    if timer is None or c.phase not in LIVE:
        return  # stopped after it was posted, or the terminate hands it back
    if c.tcp is not TcpState.FIN_WAIT_2 or any(fl & TH_FIN for _, _, fl in c.urgent_held):
        # [INF] left the state by a road that did not stop it; or the peer's FIN came after a
        # mandatory request, held for the ordinary path (spec §5.2): the peer closed, and the
        # host takes the connection in TIME_WAIT. Timing it out would ask a second time and
        # hand it back CLOSED as if the peer had vanished
        stop_fin_wait_2(t, c)
        return
    now = t.ndis.clock()
    due = kernel_heard(t, c, timer, now) + FIN_WAIT_2_NS
    if due > now:
        timer.handle = t.timers.call_later((due - now) / NS, t.fin_wait_2_expired, c)
        return
    del t.fin_wait_2[c.id]
    receive.timed_out(t, c)


def fin_wait_2_left(t: OffloadTarget, c: TcpContext, d: TcpOffloadStateDelegated) -> None:
    """In FIN_WAIT_2 the delegated `RetransmitTimeoutDelta` is the FIN_WAIT_2 timer (spec §8),
    in ticks: what is left of it, 0 if it is due."""
    timer = t.fin_wait_2.get(c.id)
    if timer is None or c.tcp is not TcpState.FIN_WAIT_2:
        return
    now = t.ndis.clock()
    left_ns = max(0, kernel_heard(t, c, timer, now) + FIN_WAIT_2_NS - now)
    d.RetransmitTimeoutDelta = left_ns * t.params.TicksPerSecond // NS


def fin_wait_2_ns(t: OffloadTarget, d: TcpOffloadStateDelegated) -> int:
    """The FIN_WAIT_2 timer an offload in FIN_WAIT_2 starts with: the host's
    `RetransmitTimeoutDelta` (spec §8: it doubles as it), 120 s if not running (-1)."""
    delta = d.RetransmitTimeoutDelta
    if delta < 0:
        return FIN_WAIT_2_NS
    return delta * NS // max(1, t.params.TicksPerSecond)
