"""Disconnect at the target (spec §4.5): graceful (data, FIN, complete on its ACK) or abortive
(RST, outstanding sends aborted, complete at once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.lifecycle import LIVE, Event, TcpState
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus, TcpDisconnectFlags, TcpUploadReason

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
    """After our FIN's ACK or the peer's FIN took the connection on (spec §5.2, §8): one that
    entered TIME_WAIT asks for its upload. The active closer's 2MSL wait is the host stack's
    to keep, and nothing is left for the chimney to carry (spec §5.2 "Other documented upload
    triggers": TIME_WAIT, should upload). The spec names no reason for it; `UploadRequested`
    is the one for "unspecified" [INF]. Mandatory: the host takes the connection back, in
    TIME_WAIT, with what the target still holds (spec §3.6.3). Asked after what caused it
    went up: the disconnect's completion, the delivery of the peer's last bytes."""
    if c.tcp is TcpState.TIME_WAIT and c.phase in LIVE:
        events.request_upload(t, c, TcpUploadReason.UploadRequested)
