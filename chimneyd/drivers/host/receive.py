"""Receiving at the host: application reads, posted receives and indications from the target
(spec §4.2, §4.3), and the socket's own bytes while the host carries the connection.

Whichever road bytes take — the socket in host mode, a receive completion or an indication while
offloaded, `BufferedData` or the ordinary path around an upload (spec §3.6.3, §4.7) — they end
in the TCB's application queue in stream order, and reads are served from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import structlog

from chimneyd.ndis.broker import Binding
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import FIN_RECEIVED_STATES, LIVE, Event, Phase, TcpState
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.status import NdisStatus

from ..queues import NO_ITEMS, grown
from ..segment import TH_FIN, TH_RST, TH_SYN
from ..wire import TIMEOUT_MARK, may_read_again
from . import disconnect, offload, send
from .tcb import TIMED_OUT, AppError, Done, Tcb, ndis_error

if TYPE_CHECKING:
    from .stack import HostStack

log = structlog.get_logger("chimneyd.host")
S = NdisStatus
SUCCESS: Final = S.NDIS_STATUS_SUCCESS
# Members the I/O path reads, bound once: on Python 3.11 a read off an enum class passes the
# slot of `EnumType.__getattr__` (~800 instructions), a global a few (README, "Benchmarks").
_CLOSED: Final = Phase.CLOSED
_RESET: Final = TcpState.RESET
_NOT_ACCEPTED: Final = S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED  # an indication crossing a post
#: Phases in which a segment the host receives goes down to the target at once (spec §4.6).
_FORWARDED: Final = frozenset({*LIVE, Phase.FAILED})
#: Receive buffers kept to post again (`spare`): at most this many bytes of them, each of at
#: most SPARE_MAX_BYTES (bigger ones are mappings of their own, `runtime.memory`). A verified
#: 16 KiB echo round then allocates and zeroes no buffer: at 100 connections 2.2-2.5% of the
#: instructions the daemon executes per round (`python -m bench --profile instructions`);
#: with a quarter of this budget, 1.1%.
SPARE_BYTES: Final = 4 * 1024 * 1024
SPARE_MAX_BYTES: Final = 64 * 1024
#: `app_rx` entries looked through for views of a completed buffer; with more it is not kept.
_SPARE_SCAN: Final = 8


# -- application reads ---------------------------------------------------------------------------
def app_recv(h: HostStack, tcb: Tcb, max_bytes: int, waitall: bool, done: Done) -> None:
    """Queue a read of up to `max_bytes`, served in order as bytes arrive. `waitall` waits for
    all `max_bytes` (short only at end of stream), here in the host (`serve`): offloaded, the
    requests it posts are push-mode ones like any read's (`post_receive`)."""
    waiters = tcb.recv_waiters  # `grown` written out: every read passes here
    if waiters is NO_ITEMS:
        tcb.recv_waiters = [(max_bytes, done, waitall)]
    else:
        waiters.append((max_bytes, done, waitall))
    serve(h, tcb)
    if tcb.recv_waiters and tcb.state == "offloaded" and tcb.posted is None:
        post_receive(h, tcb)


def cancel_recv(h: HostStack, tcb: Tcb, waiting: Done, done: Done) -> None:
    """Withdraw a read whose time ran out. Nothing is lost: bytes that arrive later stay in
    the TCB for the next read."""
    for entry in tcb.recv_waiters:
        if entry[1] is waiting:
            tcb.recv_waiters.remove(entry)
            waiting(None, AppError("TIMEOUT", f"nothing arrived on connection {tcb.conn_id}"))
            break
    done(None, None)


def serve(h: HostStack, tcb: Tcb, timeout_due: bool = False) -> None:
    """Hand buffered bytes to waiting reads, in order; `timeout_due`: a timed-out
    connection's timeout is answered now (`disconnect.timeout_after_bytes`)."""
    # the TCB is its own lifecycle: `phase` and `tcp` read as fields, not through the
    # `lifecycle`, `reset` properties (a read is served here two or three times a round)
    closed = tcb.phase is _CLOSED
    while tcb.recv_waiters:
        max_bytes, done, waitall = tcb.recv_waiters[0]
        have = tcb.app_rx_bytes
        if have and (
            not waitall
            or have >= max_bytes
            or tcb.rx.fin is not None
            # reset and still offloaded, the stream has not ended yet: the bytes the target
            # held at the RST come back at the upload (spec §3.6.3), and the read waits for them
            or (tcb.tcp is _RESET and tcb.handle is None)
            or closed
        ):
            tcb.recv_waiters.pop(0)
            done(_take(h, tcb, max_bytes), None)
            continue
        # `at_eof` and `fin_reached` written out (nothing read yet: here `have` is 0)
        rx = tcb.rx
        if not have and rx.fin is not None and rx.rcv_nxt >= rx.fin:
            tcb.recv_waiters.pop(0)
            done(b"", None)
            continue
        if tcb.tcp is _RESET:  # `tcb.reset`, read as a field
            if tcb.handle is not None:
                # still offloaded: the target may hold bytes the peer sent before its RST,
                # which it delivers no more (spec §5.1: an indication the host refused, for
                # a request still on its way down); they come back as BufferedData at the
                # terminate the host answers the abort with (§3.6.3), and the reads take them
                # before the abort (docs/rpc.md `tcp.accept`: the bytes, then the error)
                break
            if disconnect.rst_owed(tcb):
                disconnect.send_owed_rst(h, tcb)  # every byte the host held is read (§8)
            if not timeout_due and disconnect.timeout_after_bytes(h, tcb):
                break  # bytes the socket read before the timeout come first (spec §8)
            tcb.recv_waiters.pop(0)
            done(None, ndis_error(S.NDIS_STATUS_REQUEST_ABORTED, f" {tcb.death}"))
            continue
        if closed:
            tcb.recv_waiters.pop(0)
            done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is closed"))
            continue
        break
    if tcb.read_paused or tcb.refused:  # `_after_consume` has nothing to do otherwise
        _after_consume(h, tcb)


def at_eof(tcb: Tcb) -> bool:
    """Every byte before the peer's FIN has been read. EOF is a fact of the byte stream (the
    FIN's offset was reached), which an RST arriving afterwards does not undo."""
    return not tcb.app_rx_bytes and tcb.rx.fin_reached


def _take(h: HostStack, tcb: Tcb, max_bytes: int) -> bytes:
    parts: list[memoryview] = []
    want = max_bytes
    while want and tcb.app_rx:
        view, nbl = tcb.app_rx[0]
        if len(view) <= want:
            tcb.app_rx.pop(0)
            parts.append(view)
            want -= len(view)
            if nbl is not None:
                return_indicated(h, tcb, nbl)
        else:
            parts.append(view[:want])
            tcb.app_rx[0] = (view[want:], nbl)
            want = 0
    out = b"".join(parts)
    tcb.app_rx_bytes -= len(out)
    return out


def _held_bound(h: HostStack, tcb: Tcb) -> int:
    """The bytes the host holds for the application before it stops reading the socket: its
    buffer (`rx_buffer_bytes`), or all that the waitall read first in line wants, which could
    never be served otherwise (docs/rpc.md allows up to 8 MiB)."""
    if tcb.recv_waiters:
        want, _, waitall = tcb.recv_waiters[0]
        if waitall and want > h.rx_buffer_bytes:
            return want
    return h.rx_buffer_bytes


def _after_consume(h: HostStack, tcb: Tcb) -> None:
    bound = _held_bound(h, tcb)
    if tcb.app_rx_bytes >= bound:
        return
    if (
        tcb.read_paused
        and tcb.lifecycle.phase is Phase.IDLE
        and (bound > h.rx_buffer_bytes or may_read_again(tcb.app_rx_bytes, bound))
    ):
        tcb.read_paused = False
        tcb.wire.resume_reading()
    if tcb.refused and tcb.state == "offloaded" and tcb.posted is None:
        # re-enable indications: a zero-byte post unless a read wants a real buffer (spec §4.3)
        post_receive(h, tcb, 0 if not tcb.recv_waiters else None)


def drop_app_rx(h: HostStack, tcb: Tcb) -> None:
    """Forget the unread bytes (they went down as BufferedData, or the connection closed)."""
    for _, nbl in tcb.app_rx:
        if nbl is not None:
            return_indicated(h, tcb, nbl)
    tcb.app_rx.clear()
    tcb.app_rx_bytes = 0


# -- posted receive requests (spec §4.2) -----------------------------------------------------------
def post_receive(h: HostStack, tcb: Tcb, size: int | None = None) -> None:
    """Post one push-mode request, sized for the first waiting read (for a waitall read, the
    bytes it still misses), or of `size` bytes.

    Never a non-push request, not even for a waitall read: the target completes one only when
    full, and the host has no call to take a posted request back (spec §4.2; only an upload
    returns it, §3.6.3). A waitall read that timed out would leave the bytes placed in its
    request out of reach of every later read, where a timeout loses nothing (rpc-contract
    `tcp.recv`). A push-mode request comes back with what it holds at the next PSH or when the
    push timer fires (spec §4.2), and `serve` holds a waitall read until all of it is there."""
    if tcb.posted is not None or tcb.handle is None:
        return
    if size is None:
        size = 0
        if tcb.recv_waiters:
            want, _, waitall = tcb.recv_waiters[0]
            size = max(1, want - tcb.app_rx_bytes) if waitall else want
    nbl = _receive_request(h, size)
    nbl.trace = tcb.trace
    nb = nbl.first_net_buffer
    assert nb is not None and nb.mdl_chain is not None
    nbl.protocol_reserved = (tcb, nb.mdl_chain.buffer)  # the application buffer
    tcb.posted = nbl
    tcb.refused = False
    h.ndis.NdisOffloadTcpReceive(h, tcb.handle, nbl)


def _receive_request(h: HostStack, size: int) -> NetBufferList:
    """A push-mode receive request over a kept buffer of `size` bytes, else a new one. A kept
    buffer holds old bytes: only what the target places in it is ever read (`buffer[:placed]`)."""
    kept = h.rx_spares.get(size)
    if not kept:
        return NetBufferList.for_receive(size)
    h.rx_spare_bytes -= size
    return NetBufferList.for_receive(size, False, kept.pop())


def spare(h: HostStack, tcb: Tcb, buffer: memoryview) -> None:
    """Keep the buffer of a completed receive request to post again, once the application has
    read every byte placed in it: the application got copies (`_take`), so then nothing but
    the completed NBL views it (spec §4.2: the buffer is the host's again at completion)."""
    owner = buffer.obj
    if type(owner) is not bytearray or len(tcb.app_rx) > _SPARE_SCAN:
        return
    size = len(owner)
    if size > SPARE_MAX_BYTES or h.rx_spare_bytes + size > SPARE_BYTES:
        return
    for view, _ in tcb.app_rx:
        if view.obj is owner:
            return  # bytes the application has not read yet
    h.rx_spares.setdefault(size, []).append(owner)
    h.rx_spare_bytes += size


def forget_spares(h: HostStack) -> None:
    """No connection left: the kept buffers go too (RSS back to idle)."""
    h.rx_spares.clear()
    h.rx_spare_bytes = 0


#: a receive completed so is not posted again: the connection was reset, or is on its way
#: up (spec §3.6.4: the target refuses every receive until the terminate completes, and a
#: request posted again at once would come back at once, round and round while the terminate
#: waits, e.g. behind a query still below); after the upload the host serves the read
_NOT_AGAIN: Final = frozenset({S.NDIS_STATUS_REQUEST_ABORTED, S.NDIS_STATUS_UPLOAD_IN_PROGRESS})


def receive_complete(h: HostStack, head: NetBufferList) -> None:
    """`ProtocolTcpOffloadReceiveComplete`: the bytes placed go to the application."""
    for nbl in iter_chain(head):
        nbl.next = None
        # typed: read off `protocol_reserved` (`Any`), every TCB field below was a generic
        # attribute access on the compiled build; a posted receive always holds this
        held: tuple[Tcb, memoryview] = nbl.protocol_reserved
        tcb, buffer = held
        nbl.protocol_reserved = None
        if tcb.posted is nbl:
            tcb.posted = None
        placed = nbl.tcp_offload_bytes_transferred
        if placed:
            h.stats.bytes_received += placed
            app_rx = tcb.app_rx  # `grown` written out: every filled request passes here
            if app_rx is NO_ITEMS:
                tcb.app_rx = [(buffer[:placed], None)]
            else:
                app_rx.append((buffer[:placed], None))
            tcb.app_rx_bytes += placed
            tcb.rx.rcv_nxt += placed  # the stream position the host has reached (spec §5.1)
        serve(h, tcb)
        spare(h, tcb, buffer)
        if (
            tcb.recv_waiters
            and tcb.state == "offloaded"
            and not tcb.reset
            and nbl.status not in _NOT_AGAIN
            and tcb.lifecycle.tcp not in FIN_RECEIVED_STATES
        ):
            post_receive(h, tcb)


def receive_indicate(h: HostStack, handle: NdisOffloadHandle, nbl: NetBufferList) -> None:
    """`ProtocolTcpOffloadReceiveIndicate`: take the data (keeping the NBL until the
    application read it), part of it, or none (spec §4.3)."""
    tcb: Tcb = handle.owner
    n = nbl.data_length
    room = h.rx_buffer_bytes - tcb.app_rx_bytes
    if tcb.recv_waiters:
        room = max(room, n)
    if _posted_room(tcb):
        # the indication crossed a request we posted: the data belongs in that buffer (spec
        # §4.4, FILL before INDICATE): refused, they stay with the target, which fills it
        # with them (spec §4.3)
        room = 0
    if room >= n:
        # keep the NBL, no copy, until the application has read it (spec §4.3)
        views = nbl.views()
        app_rx = tcb.app_rx  # `grown` written out, once for all the views
        if app_rx is NO_ITEMS:
            app_rx = tcb.app_rx = []
        for v in views[:-1]:
            app_rx.append((v, None))
        app_rx.append((views[-1], nbl))
        tcb.indicated_via = tcb.binding
        tcb.app_rx_bytes += n
        tcb.rx.rcv_nxt += n
        h.stats.bytes_received += n
        h.ndis.NdisReturnReceiveIndication(h, nbl, SUCCESS, n)
    elif room > 0:
        data = b"".join(nbl.views())[:room]  # the NBL goes back: copy what we take
        tcb.app_rx = grown(tcb.app_rx, (memoryview(data), None))
        tcb.app_rx_bytes += room
        tcb.rx.rcv_nxt += room
        h.stats.bytes_received += room
        tcb.refused = True
        h.ndis.NdisReturnReceiveIndication(
            h, nbl, S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, room
        )
    else:
        tcb.refused = True
        h.ndis.NdisReturnReceiveIndication(h, nbl, _NOT_ACCEPTED, 0)
    serve(h, tcb)


def _posted_room(tcb: Tcb) -> bool:
    nb = tcb.posted.first_net_buffer if tcb.posted is not None else None
    return nb is not None and nb.data_length > 0


def return_indicated(h: HostStack, tcb: Tcb, nbl: NetBufferList) -> None:
    """Give an indicated NBL back, batched per binding (`NdisOffloadTcpReceiveReturn`), down
    the binding it came up through (spec §4.3)."""
    binding = tcb.indicated_via or tcb.binding or h.lower_bindings[0]
    h.returns.setdefault(binding, []).append(nbl)


# -- the socket's bytes while the host owns them, and the ordinary path (spec §4.7) ---------------
def wire_data(h: HostStack, tcb: Tcb, offset: int, data: bytes) -> None:
    host_segment(h, tcb, offset, data, 0)


def wire_eof(h: HostStack, tcb: Tcb, offset: int) -> None:
    host_segment(h, tcb, offset, b"", TH_FIN)


def wire_reset(h: HostStack, tcb: Tcb) -> None:
    host_segment(h, tcb, tcb.wire.bytes_read, b"", TH_RST)
    _after_rst(h, tcb)


def wire_timeout(h: HostStack, tcb: Tcb, offset: int | None = None) -> None:
    """The kernel gave up on the connection the host carries (its retransmit, zero-window
    probe or keepalive limit): as dead as after an RST, at the stream's end (`offset`, else
    where the socket's reading ended), and the errors say why. Told by the socket, or by the
    target up the ordinary path (`ordinary_path`). Told during an upload, it is processed
    after it, behind the segments queued before it (spec §3.6.4), and the upload that hands
    the connection back alive does not take the reason away."""
    if not tcb.reset:
        tcb.end_reason = TIMED_OUT
        tcb.kernel_timed_out = True
    host_segment(h, tcb, tcb.wire.bytes_read if offset is None else offset, b"", TH_RST)
    _after_rst(h, tcb)


def ordinary_path(
    h: HostStack, binding: Binding, wire_home: object, offset: int, data: bytes, flags: int
) -> None:
    """`ProtocolReceiveNetBufferLists`: segments the target did not process (spec §4.7), and
    the kernel's timeout the target met after the terminate began, marked (`TIMEOUT_MARK`
    [EMU], spec §5.2): it came up behind the segments before it, through every IM."""
    if isinstance(wire_home, Tcb) and wire_home.lifecycle.phase is not Phase.CLOSED:
        if flags & TIMEOUT_MARK:
            wire_timeout(h, wire_home, offset)
            return
        host_segment(h, wire_home, offset, data, flags)
        if flags & TH_RST:
            _after_rst(h, wire_home)


def _after_rst(h: HostStack, tcb: Tcb) -> None:
    """Offloads held for the end of a graceful disconnect (waiting for the host's FIN to be
    acknowledged) are answered once an RST has killed the connection: no ACK will come. Done
    here, where the socket's news enters the host, not inside an upload's hand-back, which
    replays what it held when it is over."""
    if tcb.reset:
        disconnect.fin_wait_over(h, tcb)
        h.run_deferred(tcb)


def host_segment(h: HostStack, tcb: Tcb, offset: int, data: bytes, flags: int) -> None:
    """One segment the host received, processed or held according to who carries the
    connection now (spec §3.2.7, §3.6.4, §4.6)."""
    if flags & TH_SYN and not flags & TH_RST:
        # RFC 793 checks the SYN bit after the RST bit and before the FIN bit, and a SYN on a
        # synchronized connection ends the segment's processing there: its FIN (and data) is
        # no news of the peer's. [EMU] the kernel that owns the real connection answered the
        # SYN itself: nothing is left for the host, nor for a forward down again, where it
        # came up from (spec §4.7; the target's `forwarded_syn` holds it for the host)
        return
    phase = tcb.lifecycle.phase
    if phase is Phase.OFFLOADING:
        # forwarded after the initiate (§3.2.7)
        tcb.forward_q = grown(tcb.forward_q, (offset, data, flags))
        return
    if phase is Phase.TERMINATING:
        # processed after the upload (§3.6.4)
        tcb.upload_q = grown(tcb.upload_q, (offset, data, flags))
        return
    if phase in _FORWARDED:
        offload.forward(h, tcb, [(offset, data, flags)])
        return
    if phase is Phase.CLOSED:
        return
    if flags & TH_RST:
        host_reset(h, tcb)
        return
    if tcb.tcp is TcpState.FIN_WAIT_2:
        disconnect.heard(h, tcb)  # restarts the FIN_WAIT_2 timer (spec §8)
    # a FIN behind the RST that ended the stream (the peer's, read just before the host's
    # FIN_WAIT_2 expiry reset the socket, spec §8) is no end of stream: the application reads
    # the bytes, then why the connection died, as `fin_received` indicates no disconnect
    fin = bool(flags & TH_FIN) and not tcb.reset
    ready, fin_now = tcb.rx.segment(offset, data, flags, fin)
    for piece, _ in ready:
        tcb.app_rx = grown(tcb.app_rx, (memoryview(piece), None))
        tcb.app_rx_bytes += len(piece)
        h.stats.bytes_received += len(piece)
    if fin_now:
        fin_received(h, tcb, {"path": "host"})
    serve(h, tcb)
    if tcb.app_rx_bytes >= _held_bound(h, tcb) and not tcb.read_paused and not tcb.wire.closed:
        tcb.read_paused = True
        tcb.wire.pause_reading()


def own_reading(h: HostStack, tcb: Tcb) -> None:
    """The socket's reading is the host's again (after an initiate that failed, or an upload):
    stopped while the application's buffer is full, on otherwise. Whoever held the socket
    before may have left it stopped, and nobody else would start it again (design:
    back-pressure)."""
    if tcb.wire.closed:
        return
    tcb.read_paused = tcb.app_rx_bytes >= _held_bound(h, tcb)
    if tcb.read_paused:
        tcb.wire.pause_reading()
    else:
        tcb.wire.resume_reading()


def buffered_returned(h: HostStack, tcb: Tcb, offset: int, data: bytes) -> None:
    """`BufferedData` handed back at an upload (spec §3.6.3): the bytes just before RcvNxt,
    every earlier one delivered already. They follow what the application has not read yet;
    they do not go through reassembly, since the peer's FIN after them may be known (and
    indicated) already and must not be reached a second time."""
    if offset < tcb.rx.rcv_nxt:
        data = data[tcb.rx.rcv_nxt - offset :]  # delivered before, while offloaded
    elif offset > tcb.rx.rcv_nxt:
        # bytes no one holds: the stream's byte checks will say so; the log says where
        log.error("buffered_data_gap", conn=tcb.conn_id, offset=offset, delivered=tcb.rx.rcv_nxt)
    if data:
        tcb.app_rx = grown(tcb.app_rx, (memoryview(data), None))
        tcb.app_rx_bytes += len(data)
        tcb.rx.rcv_nxt += len(data)
        h.stats.bytes_received += len(data)
    serve(h, tcb)


def fin_received(h: HostStack, tcb: Tcb, info: dict[str, str]) -> None:
    """The peer's FIN, every byte before it received (spec §5.1 for the offloaded case)."""
    if tcb.reset:
        return  # an RST already ended the stream
    tcb.lifecycle.fire(Event.FIN_RECEIVED)
    disconnect.stop_fin_wait_2(h, tcb)  # TIME_WAIT (spec §8)
    h.emit(tcb.conn_id, "TcpIndicateDisconnect", info)


def host_reset(h: HostStack, tcb: Tcb) -> None:
    """An RST on the connection the host carries."""
    if tcb.reset:
        return
    tcb.lifecycle.fire(Event.RESET)
    disconnect.stop_fin_wait_2(h, tcb)
    send.fail_host_sends(h, tcb, S.NDIS_STATUS_REQUEST_ABORTED)
    if tcb.disconnect_done is not None:
        done, tcb.disconnect_done = tcb.disconnect_done, None
        done(S.NDIS_STATUS_REQUEST_ABORTED.name, None)
    info = {"path": "host"}
    if tcb.end_reason == TIMED_OUT:
        info["reason"] = "TimeoutExpiration"
    h.emit(tcb.conn_id, "TcpIndicateAbort", info)
    serve(h, tcb)
