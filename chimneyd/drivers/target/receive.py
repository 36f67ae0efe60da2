"""Receive at the target: segments, posted requests, indications, the delivery algorithm.

Spec §4.2 (posted receive requests and the push timer), §4.3 (indications and receive-return),
§4.4 (the delivery algorithm), §4.6 (forwarded segments), §5.1 (FIN and RST). Each read from the
socket counts as a segment with PSH set (design: emulating the wire): the kernel does not say
where segments ended, and a read is where the peer's data stopped coming. Forwarded segments
carry the flags the host gives them; `BufferedData` handed down at offload carries none (its
segments' PSH flags are not handed down), so a push-mode request it fills only partly waits for
more data, a PSH, or the push timer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.lifecycle import LIVE, Event, Phase, TcpState
from chimneyd.ndis.nbl import NetBufferList, chain_of, iter_chain
from chimneyd.ndis.status import NdisStatus, TcpOffloadEventType, TcpUploadReason

from ..queues import NO_ITEMS, grown
from ..segment import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, TH_URG, parse_segment
from ..tcp import offset_of
from ..wire import TIMEOUT_MARK, may_read_again
from . import adapter, disconnect, events, send, terminate
from .contexts import TcpContext

if TYPE_CHECKING:
    from .target import OffloadTarget

S = NdisStatus
SUCCESS: Final = S.NDIS_STATUS_SUCCESS
ABORTED: Final = S.NDIS_STATUS_REQUEST_ABORTED
MAX_INDICATION: Final = 1 << 20
#: At most one challenge ACK for in-window SYNs per this period (spec §5.2).
SYN_CHALLENGE_NS: Final = 3_000_000_000
#: The ACKs the target would answer forwarded segments with and cannot send (spec §5.2 [EMU]),
#: by kind: counted in `layers.<layer>.unsent_acks`, not as NDIS calls (docs/metrics.md).
CHALLENGE_RST = "challenge_rst"  # an RST in the window, off RcvNxt
CHALLENGE_SYN = "challenge_syn"  # a SYN in the window, out of order (not in TIME_WAIT)
ACK_SYN = "ack_syn"  # a SYN outside the window (not in TIME_WAIT)
ACK_URG = "ack_urg"  # a URG segment that fails its sequence or ACK number check
UNSENT_ACK_KINDS = (CHALLENGE_RST, CHALLENGE_SYN, ACK_SYN, ACK_URG)
_ORDINARY_PATH: Final = (Phase.TERMINATING, Phase.TERMINATED)
# Members the I/O path reads, bound once: on Python 3.11 a read off an enum class passes the
# slot of `EnumType.__getattr__` (~800 instructions), a global a few (README, "Benchmarks").
_UPLOAD_REQUESTED: Final = Phase.UPLOAD_REQUESTED
_RESET: Final = TcpState.RESET
_FIN_WAIT_2: Final = TcpState.FIN_WAIT_2
_IO: Final = Event.IO
_INDICATE: Final = Event.INDICATE


# -- segments from the wire and from the host -----------------------------------------------------
def wire_data(t: OffloadTarget, c: TcpContext, offset: int, data: bytes) -> None:
    if c.phase in _ORDINARY_PATH:  # the context is its own Lifecycle: read in place
        # a connection being terminated: the ordinary path, never the chimney (spec §3.6.4)
        t.ndis.NdisMIndicateReceiveNetBufferLists(t, c.wire, offset, data, 0)
        return
    t.stats.bytes_received += len(data)
    adapter.forward_progress(t, c)
    c.rst_challenged = False  # the kernel accepted it: an acceptable segment (spec §5.2)
    if c.tcp is _FIN_WAIT_2:
        disconnect.heard(t, c)  # restarts the FIN_WAIT_2 timer (spec §8)
    segment(t, c, offset, memoryview(data), TH_PSH)  # each socket read counts as pushed


def wire_eof(t: OffloadTarget, c: TcpContext, offset: int) -> None:
    if c.lifecycle.phase in _ORDINARY_PATH:
        t.ndis.NdisMIndicateReceiveNetBufferLists(t, c.wire, offset, b"", TH_FIN)
        return
    c.rst_challenged = False  # an acceptable segment (spec §5.2)
    segment(t, c, offset, memoryview(b""), TH_FIN)


def wire_reset(t: OffloadTarget, c: TcpContext) -> None:
    if c.lifecycle.phase in _ORDINARY_PATH:
        t.ndis.NdisMIndicateReceiveNetBufferLists(t, c.wire, c.wire.bytes_read, b"", TH_RST)
        return
    if c.lifecycle.phase is Phase.UPLOAD_REQUESTED:
        # stopped processing (a mandatory upload request, spec §5.2): the RST is a segment
        # after the request, held after every byte the socket gave, like a forwarded one
        # (`forwarded_rst`); aborting now would fail a posted receive ahead of the held bytes
        # the peer sent before its RST, and the host's application read them after the abort
        _hold(c, c.wire.bytes_read, TH_RST)
        return
    peer_reset(t, c)


def wire_timeout(t: OffloadTarget, c: TcpContext, reason: str) -> None:
    """The kernel gave up on the connection (its retransmit or zero-window probe limit, or
    keepalive): ask for a mandatory upload with `TimeoutExpiration` and stop processing it
    (spec §5.2, §8). The connection is gone (delegated State CLOSED); what it held — sends not
    acknowledged, bytes not delivered — goes back to the host at terminate.

    Posted here before the terminate and handled after it, the news is the host's: the
    connection is its own again, and goes up the ordinary path like the segments before it
    (spec §3.6.4, §4.7), relayed by each IM in turn, so it never overtakes them: an RST at the
    stream's end marked as the timeout ([EMU] `TIMEOUT_MARK`), which the host takes for the
    timeout, not for the peer's RST ("connection reset", spec §5.2)."""
    if c.lifecycle.phase in _ORDINARY_PATH:
        wire = c.wire
        t.ndis.NdisMIndicateReceiveNetBufferLists(
            t, wire, wire.bytes_read, b"", TH_RST | TIMEOUT_MARK
        )
        return
    timed_out(t, c)


def timed_out(t: OffloadTarget, c: TcpContext) -> None:
    """`c` timed out, by the kernel's limits (`wire_timeout`) or the target's FIN_WAIT_2 timer
    (`disconnect.fin_wait_2_expired`, spec §8): dead, CLOSED, and the upload asked for with
    `TimeoutExpiration` (spec §5.2)."""
    if c.lifecycle.tcp is TcpState.RESET:
        return
    c.lifecycle.fire(Event.RESET)  # no RST was seen, but the connection is as dead
    c.timed_out = True
    stop_push(t, c)
    disconnect.stop_fin_wait_2(t, c)
    if c.lifecycle.phase is Phase.UPLOAD_REQUESTED:
        # asked already, for another mandatory reason (or an UPLOAD_ALL): the host still
        # learns why the connection comes back CLOSED. A delegated TcpConnectionClosed is a
        # graceful end too, and the host tells the two apart by what it was told before the
        # hand-back (`tcp_state_of`): untold, a connection that had sent its FIN came back in
        # TIME_WAIT, its disconnect never completed, and the application read an end of
        # stream the peer never sent (or "reset" where no RST came). The host processes it
        # at the upload, after the bytes held for it (spec §5.2); §3.6.1 allows any number
        # of requests for a connection
        events.indicate(
            t, c, TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.TimeoutExpiration
        )
        return
    events.request_upload(t, c, TcpUploadReason.TimeoutExpiration)


def peer_reset(t: OffloadTarget, c: TcpContext) -> None:
    """An acceptable RST (spec §5.1): abort every outstanding I/O, keep resources."""
    if c.lifecycle.tcp is TcpState.RESET:
        return  # already reset (the RST came by two roads)
    c.lifecycle.fire(Event.RESET)
    stop_push(t, c)
    disconnect.stop_fin_wait_2(t, c)
    events.indicate(t, c, TcpOffloadEventType.TcpIndicateAbort, 0)
    send.fail_sends(t, c, ABORTED)
    fail_receives(t, c, ABORTED)
    if c.disconnect_nbl is not None:
        disconnect.complete(t, c, ABORTED)
    send.release_refusals(t, c)


def forward(t: OffloadTarget, c: TcpContext, head: NetBufferList) -> None:
    """`MiniportTcpOffloadForward`: segments the host received, processed like the wire's
    (spec §4.6); the MDL data starts at the TCP header."""
    c.lifecycle.fire(Event.IO)
    refusal = send.refusal(c)
    if refusal is not None:
        send.complete_now(head, refusal, t.ndis.NdisTcpOffloadForwardComplete, t)
        return
    for nbl in iter_chain(head):
        if c.lifecycle.tcp is TcpState.RESET:
            # an acceptable RST earlier in this forward aborted the connection: the rest is
            # not processed, and the host drops it (spec §4.6), as a later forward is refused
            nbl.status = ABORTED
            nbl.tcp_offload_bytes_transferred = 0
            continue
        raw = b"".join(nbl.views())
        sequence, flags, payload = parse_segment(raw)
        offset = offset_of(c.wire.irs, sequence, c.rx.rcv_nxt)
        if flags & TH_RST:
            forwarded_rst(t, c, offset, flags)
        elif flags & TH_SYN:
            forwarded_syn(t, c, offset, flags)
        elif flags & TH_URG:
            urgent(t, c, offset, payload, flags, int.from_bytes(raw[8:12], "big"))
        else:
            if _in_window(c, offset, len(payload)):
                c.rst_challenged = False  # an acceptable segment ends the period (spec §5.2)
                if c.tcp is TcpState.FIN_WAIT_2:
                    disconnect.heard(t, c)  # and restarts the FIN_WAIT_2 timer (spec §8)
            segment(t, c, offset, payload, flags)
        # marked taken once it is: a segment a failure cut short goes back (`fail_forward`)
        nbl.status = SUCCESS
        nbl.tcp_offload_bytes_transferred = nbl.data_length
        nbl.advance(nbl.data_length)
    t.ndis.NdisTcpOffloadForwardComplete(t, head)


def forwarded_rst(t: OffloadTarget, c: TcpContext, offset: int, flags: int = TH_RST) -> None:
    """A forwarded RST at stream `offset`, checked as one from the wire (spec §4.6) by the
    blind-reset rules (spec §5.2): only one exactly at RcvNxt is acceptable and aborts. One in
    the window gets a challenge ACK, one per RST validation period (until an acceptable
    segment arrives: `rst_challenged`); one outside it is dropped silently; the connection
    carries on. [EMU] chimneyd's target cannot put an ACK of its own on the kernel's socket: it
    counts the challenge ACK it would send (`answered`), and what the ACK would bring back is
    decided by the socket. Still open, the peer's kernel holds the connection and answers with
    an ordinary ACK: nothing changes. Closed (the kernel saw the connection die, the news the
    host forwards this RST for), the peer would answer the challenge ACK, or the next segment
    sent after a dropped RST, with an RST at RcvNxt: acceptable, so it aborts now.

    Once the target stopped processing the connection (a mandatory upload request earlier in
    the same forward; a later forward is refused whole) it judges no RST: it neither aborts
    nor answers, and holds the RST after what it holds already, for the ordinary path at the
    terminate (`hand_up_held`), as it holds the data after the request (spec §5.2). The host
    gets the connection back as the target left it, not reset, its unacknowledged sends
    handed back, and then the RST, which it processes itself after the upload: nothing is
    lost, nothing is aborted twice."""
    if c.lifecycle.phase is Phase.UPLOAD_REQUESTED:
        _hold(c, offset, flags)
        return
    if offset == c.rx.rcv_nxt or c.wire.closed:
        peer_reset(t, c)
    elif not c.rst_challenged and _in_window(c, offset, 0) and answered(t, c, CHALLENGE_RST):
        c.rst_challenged = True


def _hold(c: TcpContext, offset: int, flags: int) -> None:
    """Hold an RST or a SYN that the target does not process (spec §5.2: it came after the
    target stopped processing the connection; a SYN in TIME_WAIT is the host stack's, §4.7),
    after what it holds, for the ordinary path at the terminate (`hand_up_held`), where the
    host processes it after the upload. One RST only: the socket's reset and a forwarded RST
    the host read off that socket are the same news by two roads, and the first to come
    stands for both."""
    if flags & TH_RST and any(fl & TH_RST for _, _, fl in c.urgent_held):
        return
    c.urgent_held = grown(c.urgent_held, (offset, memoryview(b""), flags))


def forwarded_syn(t: OffloadTarget, c: TcpContext, offset: int, flags: int = TH_SYN) -> None:
    """A forwarded SYN (spec §5.2). Once the target stopped processing the connection (a
    mandatory upload request earlier in the same forward; a later forward is refused whole) it
    judges no SYN, as no RST: it neither gives anything up nor answers, and holds the SYN after
    what it holds, for the ordinary path at the terminate (`hand_up_held`), so that the host
    processes it after the upload.

    In TIME_WAIT a SYN is the host stack's, whatever its sequence number ("Handling the
    Reception of SYN Segments": the target passes it up the ordinary path, spec §4.7), and a
    connection entering TIME_WAIT should be uploaded anyway (spec §5.2). The host takes a
    segment off the ordinary path for itself only once the connection's terminate began (spec
    §3.6.4); before, it forwards it down again, round and round. So the target answers
    nothing, holds the SYN for the terminate and asks for the upload (`UploadRequested`,
    mandatory: the pages name no reason for it): the host gets it once, after the upload.

    In any other state one in order (at RcvNxt) makes the target give the connection up, so it
    asks for the upload (mandatory, `UploadRequested`). One in the window but out of order
    gets a challenge ACK, at most one every `SYN_CHALLENGE_NS` of the injected clock; one
    outside the window an ACK, each time; neither gives the connection up. [EMU] The target
    counts those ACKs (`answered`): it cannot send them on the kernel's socket, whose kernel
    has answered the real SYN itself. The connection goes back in the state it is in, not
    CLOSED: a forward copies what the host read from the socket, and the kernel that owns the
    real connection decided what the SYN did to it."""
    # held as a SYN, without a FIN bit it may carry: RFC 793 checks the SYN bit before the
    # FIN bit, and a SYN ends the segment's processing there, so its FIN is no news of the
    # peer's; the ordinary path would have the host take it for one (an end of stream the
    # peer never sent, and its real FIN then ignored)
    syn = flags & ~TH_FIN
    if c.lifecycle.phase is Phase.UPLOAD_REQUESTED:
        _hold(c, offset, syn)  # after the stop: not processed, not lost (spec §5.2)
        return
    if c.lifecycle.tcp is TcpState.TIME_WAIT:
        _hold(c, offset, syn)  # the host stack's (spec §4.7), at the terminate
        send.ask_upload(t, c)
        return
    if offset == c.rx.rcv_nxt:
        send.ask_upload(t, c)
    elif not _in_window(c, offset, 1):
        answered(t, c, ACK_SYN)
    else:
        now = t.ndis.clock()
        last = c.syn_challenged_ns
        if (last is None or now - last >= SYN_CHALLENGE_NS) and answered(t, c, CHALLENGE_SYN):
            c.syn_challenged_ns = now


def answered(t: OffloadTarget, c: TcpContext, kind: str) -> bool:
    """[EMU] An ACK the target would put on the wire in answer to a forwarded segment (spec
    §5.2), counted under `kind` (`UNSENT_ACK_KINDS`) in its `unsent_acks` stats: the peer is a
    real socket's kernel, which sends its own ACKs; none of ours can reach it. Not an NDIS
    call, so not in `calls` (docs/metrics.md). None once the target stopped processing the
    connection: after a mandatory upload request (spec §5.2), and after urgent data it
    accepted, which acknowledges no later segment ("Handling the Reception of Urgent Data"),
    as a segment later in the same forward is. Whether it was counted."""
    if c.lifecycle.phase is Phase.UPLOAD_REQUESTED or c.urgent_at is not None:
        return False
    t.target_stats.unsent_acks[kind] += 1
    return True


def urgent(
    t: OffloadTarget, c: TcpContext, offset: int, data: memoryview, flags: int, ack: int
) -> None:
    """A segment with URG (spec §5.2): checked in RFC 793's order, and dropped if it fails, the
    connection carrying on. Its sequence number outside the window: answered with an ACK.
    Its ACK bit off: no ACK number to validate, dropped without an answer. Its ACK number
    acknowledging bytes never sent: answered with an ACK. Otherwise the target asks for the
    mandatory upload (`ReceivedUrgentData`) and delivers nothing from the urgent data on: it
    and every later segment are held and go up the ordinary path at the terminate
    (`hand_up_held`), where the host hands them to the application in order."""
    if c.lifecycle.tcp is TcpState.RESET:
        return
    if not _in_window(c, offset, len(data)):
        answered(t, c, ACK_URG)  # an unacceptable segment is answered with an ACK (RFC 793)
        return
    if not flags & TH_ACK:
        return  # RFC 793: a segment without ACK is dropped, not answered
    if not _ack_valid(c, ack):
        answered(t, c, ACK_URG)  # an ACK of something not yet sent: an ACK (RFC 793)
        return
    c.rst_challenged = False  # an acceptable segment (spec §5.2)
    # the request's cause only if it is the segment that asks: one after a mandatory request
    # (an earlier URG segment of the same forward, a SYN at RcvNxt) stops processing from
    # RcvNxt, and the socket is read no more, as for any other segment (`segment`, spec §5.2)
    cause = c.lifecycle.phase is not Phase.UPLOAD_REQUESTED
    at = max(offset, c.rx.rcv_nxt)
    held_from = c.urgent_at
    if held_from is None or at < held_from:
        # the earliest urgent byte holds: a second URG segment in the same forward may lie
        # before the first one's data (spec §4.6: the host forwards what it has in one call),
        # and what lies from it on is urgent data too, for the ordinary path (spec §5.2)
        c.urgent_at = at
        _hold_ooo_from(c, at)
    if cause:
        events.request_upload(t, c, TcpUploadReason.ReceivedUrgentData)
    # held from the urgent byte on: the cause is not a segment after the request; the next
    # segment, urgent or not, stops processing from RcvNxt (`segment`, spec §5.2)
    segment(t, c, offset, data, flags, cause)


def _ack_valid(c: TcpContext, ack: int) -> bool:
    """The ACK number of an arriving segment acknowledges nothing that was never sent."""
    wire = c.wire
    snd_max = wire.bytes_written + (1 if wire.eof_written else 0)  # a FIN takes a number
    return offset_of(wire.isn, ack, wire.bytes_written) <= snd_max


def _in_window(c: TcpContext, offset: int, length: int) -> bool:
    """Some of a segment of `length` sequence numbers at `offset` lies in the receive window
    (`RcvNxt` to `RcvNxt + RcvWnd`, spec §2.2); an empty one (an RST) lies at its offset."""
    rcv_nxt = c.rx.rcv_nxt
    window = max(1, c.rcv_bound - c.buffered_bytes)
    return offset + max(length, 1) > rcv_nxt and offset < rcv_nxt + window


def _stop_processing(c: TcpContext) -> None:
    """The target asked for a mandatory upload (or an upload of everything): it processes the
    connection no more (spec §5.2). What it had received and processed before stays its to
    deliver or hand back as BufferedData (spec §3.6.3); what arrives now is not processed:
    held from RcvNxt on, as urgent data is, it goes up the ordinary path at the terminate
    (`hand_up_held`) and RcvNxt does not move past it. [EMU] The kernel has acknowledged those
    bytes already and will not send them again, so they are held, not dropped; and the
    socket is read no more, so what the peer sends until the terminate waits there.

    Urgent data asks with a mandatory reason too (`ReceivedUrgentData`): holding may have
    begun at the urgent byte, ahead of RcvNxt (a gap before it), without the socket paused;
    it now begins at RcvNxt, and the socket pauses, as after any other mandatory reason."""
    at = c.rx.rcv_nxt
    if c.urgent_at is None or c.urgent_at > at:
        c.urgent_at = at
        _hold_ooo_from(c, at)
    if not c.paused:
        c.paused = True
        c.wire.pause_reading()


def _hold_ooo_from(c: TcpContext, at: int) -> None:
    """Out-of-order segments at or after the urgent data are held with it: once the gap
    before them filled, they would otherwise be delivered past it."""
    ooo = c.rx.ooo
    if not ooo:
        return
    for o in sorted(ooo):
        piece, fl = ooo[o]
        if o + len(piece) <= at:
            continue
        del ooo[o]
        if o < at:
            ooo[o] = (piece[: at - o], fl)
            piece, o = piece[at - o :], at
        c.urgent_held = grown(c.urgent_held, (o, piece, fl))


def hand_up_held(t: OffloadTarget, c: TcpContext) -> None:
    """At the terminate: the segments held from the urgent data on go up the ordinary path
    (spec §5.2, §4.7), in the order they arrived; the host puts them in order by offset."""
    held, c.urgent_held = c.urgent_held, NO_ITEMS
    for off, view, flags in held:
        t.ndis.NdisMIndicateReceiveNetBufferLists(t, c.wire, off, bytes(view), flags)


def fail_forward(t: OffloadTarget, c: TcpContext, head: NetBufferList) -> None:
    """The target raised on a forward (docs/spec.md §6.3 [EMU]). Segments it had not taken
    (still PENDING) complete with NDIS_STATUS_UPLOAD_IN_PROGRESS: the host keeps them and
    processes them after the upload (§4.6). Their bytes are a gap in our stream that nothing
    else will fill (the wire's later bytes wait behind it), so the upload is asked for; the
    terminate hands what waits behind the gap up the ordinary path, where the host puts it
    in order with the kept segments."""
    gap = False
    for nbl in iter_chain(head):
        if nbl.status == S.NDIS_STATUS_PENDING:
            nbl.status = S.NDIS_STATUS_UPLOAD_IN_PROGRESS
            nbl.tcp_offload_bytes_transferred = 0
            gap = True
    t.ndis.NdisTcpOffloadForwardComplete(t, head)
    if gap:
        send.ask_upload(t, c)


def segment(
    t: OffloadTarget,
    c: TcpContext,
    offset: int,
    data: memoryview,
    flags: int,
    cause: bool = False,
) -> None:
    """An arriving segment: in order → the delivery algorithm; ahead → held until the gap
    fills (spec §4.4: out-of-order segments enter when they become in-sequence). With `cause`
    it is the urgent segment that asked for the upload (`urgent`): held from its urgent byte
    on, not a segment after the request (spec §5.2). One function, not a check and a taking
    step: every socket read runs it (`wire_data`)."""
    # the context is its own Lifecycle: its phase and TCP state read in place (spec §3.9)
    if c.tcp is _RESET:
        return  # nothing further is processed or acknowledged (spec §4.5)
    if c.phase is _UPLOAD_REQUESTED and not cause:
        _stop_processing(c)  # every mandatory reason, urgent data's too (spec §5.2)
    # taken: held from `urgent_at` on, else into the stream
    at = c.urgent_at
    if at is not None and (offset + len(data) > at or flags & TH_FIN):
        # from the urgent data on, nothing is delivered through the chimney (spec §5.2)
        cut = min(max(0, at - offset), len(data))
        c.urgent_held = grown(c.urgent_held, (offset + cut, data[cut:], flags))
        data, flags = data[:cut], flags & ~TH_FIN
        if not data:
            return
    # the FIN is kept apart (`rx.fin`), not in the flags of a segment that waits for a gap:
    # the terminate hands such segments up the ordinary path and then the FIN from `rx.fin`,
    # once (spec §3.6.3, §5.1); a FIN flag left on the segment too went up twice
    ready, fin_now = c.rx.segment(offset, data, flags & ~TH_FIN, bool(flags & TH_FIN))
    for piece, fl in ready:
        buffered = c.buffered  # `grown` written out: every socket read passes here
        if buffered is NO_ITEMS:
            c.buffered = [piece]
        else:
            buffered.append(piece)
        c.buffered_bytes += len(piece)
        c.buffered_psh = bool(fl & TH_PSH)
    if fin_now:
        c.fire(Event.FIN_RECEIVED)
        pump(t, c)
        disconnect.closing(t, c)  # TIME_WAIT if our FIN was acknowledged (spec §5.2)
        return
    pump(t, c)


# -- posted receive requests (spec §4.2) ------------------------------------------------------------
def post(t: OffloadTarget, c: TcpContext, head: NetBufferList) -> None:
    """`MiniportTcpOffloadReceive`: queue the requests FIFO and deliver into them."""
    c.fire(_IO)  # the context is its own Lifecycle: no `lifecycle` property call
    refusal = send.refusal(c)
    if refusal is None and t.fail_next:  # `take_failure` only while a `fail_next` is set
        refusal = t.take_failure("MiniportTcpOffloadReceive", head)
    if refusal is None and c.fin_indicated and not c.buffered_bytes:
        # posted after the FIN was indicated (spec §4.2); bytes still held (handed down as
        # BufferedData with a FIN the host knew of, spec §3.2.3) are the request's to take
        refusal = S.NDIS_STATUS_INVALID_STATE
    if refusal is not None:
        send.refuse(t, c, "receive", head, refusal)
        return
    for nbl in iter_chain(head):
        # bytes we placed so far. [EMU] A host that pre-fills a request places its bytes in front
        # of the NB's data and advances the NB past them; `TcpReceiveBytesTransferred` counts
        # them, and we fill from the NB's data start.
        nbl.miniport_reserved = 0
        # `grown` written out: a request is posted every echo round
        posted = c.posted
        if posted is NO_ITEMS:
            posted = c.posted = [nbl]
        else:
            posted.append(nbl)
        if len(posted) == 1 and not nbl.tcp_receive_no_push and nbl.tcp_receive_bytes_transferred:
            start_push(t, c)  # the host already placed data: the timer starts at once (§4.2)
    c.refused = False  # any post re-enables indications (spec §4.3)
    pump(t, c)


def pump(t: OffloadTarget, c: TcpContext) -> None:
    """The delivery algorithm of spec §4.4, run whenever data, posts or a return arrive."""
    # phases before the completion went up (spec §3.2.7), after the terminate began, or after
    # an RST or a hardware failure deliver nothing through the chimney
    if c.busy or c.phase not in LIVE or c.tcp is _RESET:
        return
    if c.posted:
        _fill(t, c)
    if c.buffered_bytes and not c.posted and not c.refused:
        _indicate(t, c)
    # each call only where it may act (two or three pumps a round): no FIN seen, nothing to
    # check; reading on and held bytes below the bound, nothing to flow-control
    if not c.busy and c.rx.fin is not None:
        _check_fin(t, c)
    if c.paused or c.buffered_bytes >= c.rcv_bound:
        _flow(t, c)


def _fill(t: OffloadTarget, c: TcpContext) -> None:
    """FILL ("A"): buffered data into posted requests, FIFO; complete the full ones, and a
    partly filled push-mode one when the data that reached it was pushed; otherwise the push
    timer completes it, restarted by every byte placed (spec §4.2)."""
    done: list[NetBufferList] = []
    posted = c.posted
    while posted:
        req = posted[0]
        nb = req.first_net_buffer
        assert nb is not None
        cap = nb.data_length
        before: int = req.miniport_reserved
        filled = before
        while filled < cap and c.buffered:
            view = c.buffered[0]
            n = nb.copy_in(filled, view)
            filled += n
            c.buffered_bytes -= n
            if n == len(view):
                c.buffered.pop(0)
            else:
                c.buffered[0] = view[n:]
        req.miniport_reserved = filled
        if filled == cap:
            posted.pop(0)
            done.append(_finish(req, SUCCESS))
            continue
        if _partly_filled_push(req):
            placed = filled > before
            if placed and c.buffered_psh:
                posted.pop(0)  # a pushed segment completes a push-mode request
                done.append(_finish(req, SUCCESS))
                continue
            if placed or c.push_timer is None:
                start_push(t, c)  # data received while the timer runs restarts it
        break
    if done:
        stop_push(t, c)
        if posted and _partly_filled_push(posted[0]):
            start_push(t, c)
        t.complete_receives(c, done)


def _partly_filled_push(req: NetBufferList) -> bool:
    """A push-mode request holding data: placed by us, or by the host before it posted it
    (`TcpReceiveBytesTransferred`, spec §4.2)."""
    return not req.tcp_receive_no_push and bool(
        req.miniport_reserved or req.tcp_receive_bytes_transferred
    )


def _finish(req: NetBufferList, status: NdisStatus) -> NetBufferList:
    placed: int = req.miniport_reserved or 0
    req.miniport_reserved = None
    req.status = status
    req.tcp_offload_bytes_transferred = placed
    if placed:
        req.advance(placed)
    return req


def fail_receives(t: OffloadTarget, c: TcpContext, status: NdisStatus) -> None:
    """Complete every posted request with `status`, with the bytes each already holds — once
    no indication is executing on the connection: `NdisTcpOffloadReceiveComplete` and
    `NdisTcpOffloadReceiveHandler` are serialised per connection (spec §4.2, §9 item 4), so
    while one is up the requests wait for its return (`indication_returned`)."""
    if c.busy:
        if c.receives_owed is None:
            c.receives_owed = status  # the first reason wins: a reset, then a terminate
        return
    if c.posted:
        done = [_finish(r, status) for r in c.posted]
        c.posted.clear()
        t.ndis.NdisTcpOffloadReceiveComplete(t, chain_of(done))


# -- indications (spec §4.3) ------------------------------------------------------------------------
def _indicate(t: OffloadTarget, c: TcpContext) -> None:
    """INDICATE ("B"): one stand-alone NBL over the buffered bytes, no copy (spec §4.3)."""
    c.fire(_INDICATE)
    limit = c.cached.RcvIndicationSize or MAX_INDICATION
    views: list[memoryview] = []
    total = 0
    for view in c.buffered:
        if total + len(view) > limit:
            view = view[: limit - total]
        views.append(view)
        total += len(view)
        if total >= limit:
            break
    nbl = NetBufferList.for_views(views)
    nbl.trace = c.trace
    nbl.miniport_reserved = c
    c.busy = True
    t.indicated[nbl.id] = nbl
    t.stats.outstanding_nbls += 1
    t.ndis.NdisTcpOffloadReceiveHandler(t, c.upper, nbl)


def indication_returned(
    t: OffloadTarget, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
) -> None:
    """The synchronous return of `NdisTcpOffloadReceiveHandler` (spec §4.3)."""
    c: TcpContext = nbl.miniport_reserved
    c.busy = False
    # what the host consumed is delivered, reset or not: it must not go back again in
    # BufferedData at the terminate (spec §3.6.3, §9 item 4)
    _consume(c, bytes_consumed)
    if status != SUCCESS:
        c.refused = True  # no re-indication until the host posts (spec §4.3)
        del t.indicated[nbl.id]
        t.stats.outstanding_nbls -= 1
        nbl.miniport_reserved = None
    owed, c.receives_owed = c.receives_owed, None
    if owed is not None:
        fail_receives(t, c, owed)  # held back while the indication was up (spec §4.2)
    send.release_refusals(t, c)  # and receives refused meanwhile, after them
    if t.deferred_terminates:
        terminate.finish(t)
    pump(t, c)


def _consume(c: TcpContext, n: int) -> None:
    c.buffered_bytes -= n
    while n:
        view = c.buffered[0]
        if n >= len(view):
            n -= len(view)
            c.buffered.pop(0)
        else:
            c.buffered[0] = view[n:]
            n = 0


def receive_return(t: OffloadTarget, head: NetBufferList) -> None:
    """`MiniportTcpOffloadReceiveReturn`: the host gives indicated NBLs back (spec §4.3)."""
    for nbl in iter_chain(head):
        if t.indicated.pop(nbl.id, None) is None:
            raise ChimneyProtocolError(
                f"{t.name}: NBL {nbl.id} returned twice or never indicated (spec §6.3)"
            )
        nbl.miniport_reserved = None
        t.stats.outstanding_nbls -= 1


def _check_fin(t: OffloadTarget, c: TcpContext) -> None:
    """Peer FIN → `TcpIndicateDisconnect` once every earlier byte was consumed (spec §5.1).
    A FIN the host had indicated before the offload is not indicated again, but its bytes
    came down as BufferedData (spec §3.2.3): the requests that take the last of them end
    at it all the same, else a waitall request would wait for bytes that never come."""
    if not c.rx.fin_reached or c.buffered_bytes:
        return
    if c.fin_indicated:
        if c.posted:
            _end_at_fin(t, c)
        return
    c.fin_indicated = True
    if c.posted:
        _end_at_fin(t, c)
    stop_push(t, c)
    events.indicate(t, c, TcpOffloadEventType.TcpIndicateDisconnect, 0)


def _end_at_fin(t: OffloadTarget, c: TcpContext) -> None:
    """Complete every posted request at the FIN: partly filled ones hold the last bytes;
    empty ones can never be filled [INF]."""
    done = []
    while c.posted:
        req = c.posted.pop(0)
        status = SUCCESS if req.miniport_reserved else S.NDIS_STATUS_INVALID_STATE
        done.append(_finish(req, status))
    stop_push(t, c)
    t.ndis.NdisTcpOffloadReceiveComplete(t, chain_of(done))


def _flow(t: OffloadTarget, c: TcpContext) -> None:
    """Back-pressure: stop reading the socket when held data reaches its bound (design)."""
    held = c.buffered_bytes
    bound = c.rcv_bound  # the connection's receive window (spec §2.2 InitialRcvWnd)
    if not c.paused and held >= bound:
        c.paused = True
        c.wire.pause_reading()
    elif c.paused and may_read_again(held, bound) and c.urgent_at is None:
        # once holding for the ordinary path began (urgent data, a mandatory upload request)
        # the socket waits for the terminate, which reads it again for the host (spec §5.2).
        # The FIN_WAIT_2 timer keeps the kernel's news of the peer from the pause: reading
        # again may find nothing new, and the timer would run from before the pause (spec §8)
        disconnect.note_kernel_news(t, c)
        c.paused = False
        c.wire.resume_reading()


# -- push timer (spec §4.2) -------------------------------------------------------------------------
def start_push(t: OffloadTarget, c: TcpContext) -> None:
    stop_push(t, c)
    c.push_timer = t.timers.call_later(t.push_ticks, t.push_expired, c)


def stop_push(t: OffloadTarget, c: TcpContext) -> None:
    if c.push_timer is not None:
        c.push_timer.cancel()
        c.push_timer = None


def push_expired(t: OffloadTarget, c: TcpContext) -> None:
    c.push_timer = None
    if c.busy or c.lifecycle.phase in _ORDINARY_PATH or not c.posted:
        return  # a race can fire the timer with nothing to complete (spec §4.4)
    if c.lifecycle.tcp is TcpState.RESET:
        return
    req = c.posted[0]
    if _partly_filled_push(req):
        c.posted.pop(0)
        t.ndis.NdisTcpOffloadReceiveComplete(t, _finish(req, SUCCESS))
