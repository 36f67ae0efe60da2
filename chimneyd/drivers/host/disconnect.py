"""Disconnecting and closing (spec §4.5): a FIN or an RST, through the chimney or on the socket.

A graceful disconnect completes when the FIN is acknowledged; an abortive one when the RST is
out. A disconnect the target refuses because it is uploading is finished by the host after the
upload. `tcp.close` uploads first when needed, then frees every layer's state. A connection the
host carries in FIN_WAIT_2 runs the host's FIN_WAIT_2 timer (spec §8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chimneyd.ndis.blocks import TIMER_NOT_RUNNING
from chimneyd.ndis.lifecycle import Event, Phase, TcpState
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus, TcpDisconnectFlags

from ..fin_wait_2 import FIN_WAIT_2_NS, NS, FinWait2Timer, heard_by_kernel
from ..queues import NO_ITEMS, grown
from . import adapter, receive, send, terminate
from .tcb import TIMED_OUT, AppError, Done, Tcb

if TYPE_CHECKING:
    from .stack import HostStack

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS


def app_disconnect(h: HostStack, tcb: Tcb, abortive: bool, done: Done) -> None:
    """`tcp.disconnect`: answered with the NDIS status name of the completion."""
    if tcb.lifecycle.phase is Phase.CLOSED:
        done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is closed"))
        return
    if tcb.reset:
        if abortive and rst_owed(tcb):
            # a FIN_WAIT_2 timeout's RST waits only for the application to read what the
            # kernel holds (spec §8); aborting, it reads nothing more: nothing is processed
            # after an abortive disconnect, the kernel's unread bytes go with the socket (spec
            # §4.5), and the peer hears now, not at `tcp.close`. What the host holds is still
            # read, then the timeout: a read waiting for the kernel's bytes has its answer
            tcb.wire.abort()
            receive.serve(h, tcb)
        # dead already: a disconnect fails as on an aborted connection (spec §4.5)
        done(S.NDIS_STATUS_REQUEST_ABORTED.name, None)
        return
    if not abortive and (tcb.fin_sent or tcb.disconnect_done is not None):
        done(None, AppError("INVALID_STATE", "already disconnected"))
        return
    if tcb.state == "offloaded":
        assert tcb.handle is not None
        if abortive:
            # bytes still waiting for room in the send backlog are never sent: the RST wins
            send.fail_queued(h, tcb, S.NDIS_STATUS_REQUEST_ABORTED)
            if tcb.fin_queued is not None:
                queued, tcb.fin_queued = tcb.fin_queued, None
                queued(S.NDIS_STATUS_REQUEST_ABORTED.name, None)
            _offloaded_disconnect(h, tcb, done, TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE)
            return
        tcb.lifecycle.fire(Event.FIN_SENT)  # no more sends from the application
        if tcb.send_q:
            tcb.fin_queued = done  # the FIN follows the bytes still waiting (spec §4.5, §5.3)
            return
        _offloaded_disconnect(h, tcb, done, TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE)
        return
    if abortive:
        tcb.lifecycle.fire(Event.RESET)
        stop_fin_wait_2(h, tcb)
        tcb.wire.abort()
        send.fail_host_sends(h, tcb, S.NDIS_STATUS_REQUEST_ABORTED)
        if tcb.disconnect_done is not None:
            # a graceful disconnect before it: its FIN will never be acknowledged now, and it
            # fails as the target fails one under an abortive close (spec §4.5, §5.1)
            graceful, tcb.disconnect_done = tcb.disconnect_done, None
            graceful(S.NDIS_STATUS_REQUEST_ABORTED.name, None)
        done(SUCCESS.name, None)
        receive.serve(h, tcb)
        fin_wait_over(h, tcb)  # an offload held for the FIN's ACK: refused, reset (§5.1)
        return
    tcb.lifecycle.fire(Event.FIN_SENT)
    _host_fin(tcb, done)


def _offloaded_disconnect(h: HostStack, tcb: Tcb, done: Done, flags: int) -> None:
    """`NdisOffloadTcpDisconnect`, after every earlier send (spec §4.5)."""
    assert tcb.handle is not None
    send.flush_sends(h, tcb)
    nbl = NetBufferList.for_data(b"")
    nbl.trace = tcb.trace
    abortive = bool(flags & TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE)
    # with the send epoch it was asked in: a hole found after it lies before its FIN
    nbl.protocol_reserved = (tcb, done, abortive, tcb.send_epoch)
    h.ndis.NdisOffloadTcpDisconnect(h, tcb.handle, nbl, flags)


def send_queued_fin(h: HostStack, tcb: Tcb) -> None:
    """The send queue has drained: the graceful disconnect that waited for it goes down."""
    done, tcb.fin_queued = tcb.fin_queued, None
    assert done is not None
    _offloaded_disconnect(h, tcb, done, TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE)


def _host_fin(tcb: Tcb, done: Done) -> None:
    """Send the FIN on the socket the host carries; `fin_acked` completes the request."""
    if not tcb.wire.eof_written:
        tcb.wire.write_eof()
    tcb.disconnect_done = done
    tcb.wire.watch_acks()


def fin_acked(h: HostStack, tcb: Tcb) -> None:
    """The host's FIN is acknowledged (and every send before it): the disconnect is done."""
    done, tcb.disconnect_done = tcb.disconnect_done, None
    assert done is not None
    tcb.lifecycle.fire(Event.FIN_ACKED)
    if tcb.tcp is TcpState.FIN_WAIT_2 and tcb.conn_id not in h.fin_wait_2:
        # the peer's FIN is still to come: the host times the wait (spec §8). Not again after
        # an upload that started it from the target's hand-back (`terminate._uploaded`)
        start_fin_wait_2(h, tcb)
    done(SUCCESS.name, None)
    fin_wait_over(h, tcb)  # an offload asked for meanwhile
    h.run_deferred(tcb)


def fin_wait_over(h: HostStack, tcb: Tcb) -> None:
    """The host's FIN no longer waits for its ACK (acknowledged, or the connection was reset
    or closed): the offloads asked meanwhile go on, or are refused, in the order asked."""
    held, tcb.after_fin = tcb.after_fin, NO_ITEMS
    for fn in held:
        fn()


def complete(h: HostStack, nbl: NetBufferList) -> None:
    """`ProtocolTcpOffloadDisconnectComplete`."""
    tcb, done, abortive, epoch = nbl.protocol_reserved
    nbl.protocol_reserved = None
    status = nbl.status
    if status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS:
        # the host finishes the disconnect itself after the upload (spec §4.5) [INF]
        if abortive:
            tcb.deferred = grown(tcb.deferred, lambda: app_disconnect(h, tcb, True, done))
        elif epoch < tcb.send_epoch:
            # asked before a send failed for good: its FIN would close the stream over the
            # hole (spec §4.1), so it fails as the sends asked before it did; no FIN
            done(tcb.hole_status.name, None)
        else:
            tcb.disconnect_done = done
        # and uploads, as after a send refused so (spec §4.1): a target that says so without
        # having been asked would otherwise leave the disconnect waiting for an upload
        terminate.start(h, tcb)
        return
    if status == SUCCESS:
        if abortive:
            if not tcb.reset:
                tcb.lifecycle.fire(Event.RESET)
            terminate.start(h, tcb)  # nothing left to carry: upload the dead connection
        else:
            tcb.lifecycle.fire(Event.FIN_ACKED)
    done(status.name, None)


def after_upload(h: HostStack, tcb: Tcb) -> None:
    """A graceful disconnect the target did not finish, or that still waited for the send
    queue, is finished on the socket."""
    if tcb.fin_queued is not None:
        tcb.disconnect_done, tcb.fin_queued = tcb.fin_queued, None
    if tcb.disconnect_done is None:
        return
    if tcb.reset:
        done, tcb.disconnect_done = tcb.disconnect_done, None
        done(S.NDIS_STATUS_REQUEST_ABORTED.name, None)
        return
    _host_fin(tcb, tcb.disconnect_done)
    if not tcb.sends and tcb.wire.fin_acked():
        # acknowledged while the connection changed hands: that news went to a layer that
        # could not complete the disconnect then, and is not reported again
        fin_acked(h, tcb)


def app_close(h: HostStack, tcb: Tcb, done: Done) -> None:
    """`tcp.close`: upload if needed, close the socket, free every layer's state."""
    phase = tcb.lifecycle.phase
    if phase is Phase.CLOSED:
        done(True, None)
        return
    if phase is Phase.OFFLOADING or tcb.initiate_queued:
        tcb.deferred = grown(tcb.deferred, lambda: app_close(h, tcb, done))
        return
    if phase is not Phase.IDLE:

        def after(_: Any, __: AppError | None) -> None:
            app_close(h, tcb, done)

        terminate.app_upload(h, tcb, after)
        return
    tcb.lifecycle.fire(Event.CLOSE)
    stop_fin_wait_2(h, tcb)
    if rst_owed(tcb):
        tcb.wire.abort()  # a FIN_WAIT_2 timeout's RST, not sent yet (`rst_owed`)
    elif not tcb.wire.closed:
        tcb.wire.close()
    send.fail_host_sends(h, tcb, S.NDIS_STATUS_REQUEST_ABORTED)
    if tcb.disconnect_done is not None:
        d, tcb.disconnect_done = tcb.disconnect_done, None
        d(S.NDIS_STATUS_REQUEST_ABORTED.name, None)
    receive.drop_app_rx(h, tcb)
    receive.serve(h, tcb)
    tcb.rx.ooo = None
    del h.tcbs[tcb.conn_id]
    if not h.tcbs:
        receive.forget_spares(h)
    adapter.forget(h, tcb)
    h.emit(tcb.conn_id, "closed", {})
    tcb.wire.disown()  # the socket is closed: nothing it tells goes to this TCB any more
    done(True, None)
    fin_wait_over(h, tcb)
    while tcb.deferred:
        tcb.deferred.pop(0)()


# -- the host's FIN_WAIT_2 timer (spec §8) --------------------------------------------------------
# `RetransmitTimeoutDelta` doubles as the FIN_WAIT_2 timer (spec §8): the target keeps it while
# the connection is offloaded and hands back what is left at the upload; the host keeps it while
# it carries the connection, on its injected clock, and hands down what is left at an offload.
# The kernel socket never times FIN_WAIT_2 out while its descriptor is open (Linux's
# tcp_fin_timeout is for orphans), so without it uploads and offloads in turn, each starting a
# fresh 120 s, would put the end off for ever. One per connection, only while in FIN_WAIT_2, in
# `h.fin_wait_2` by connection id: nothing in the TCB, nothing armed in any other state.
def start_fin_wait_2(h: HostStack, tcb: Tcb, left_ns: int = FIN_WAIT_2_NS) -> None:
    """Arm `tcb`'s FIN_WAIT_2 timer to expire in `left_ns`: 120 s on entering FIN_WAIT_2 in
    the host, what the target handed back at an upload in it (0: at once, spec §8)."""
    stop_fin_wait_2(h, tcb)
    left_ns = max(0, left_ns)
    handle = h.timers.call_later(left_ns / NS, h.fin_wait_2_expired, tcb)
    now = h.ndis.clock()
    h.fin_wait_2[tcb.conn_id] = FinWait2Timer(handle, now + left_ns - FIN_WAIT_2_NS, now)


def fin_wait_2_ns(h: HostStack, delta: int) -> int:
    """The FIN_WAIT_2 timer a `RetransmitTimeoutDelta` handed back in FIN_WAIT_2 stands for, in
    ns: 120 s if not running (-1), spec §8."""
    if delta < 0:
        return FIN_WAIT_2_NS
    return delta * NS // max(1, h.params.TicksPerSecond)


def heard(h: HostStack, tcb: Tcb) -> None:
    """The host read a segment of the peer's in FIN_WAIT_2: its timer starts again (spec §8)."""
    timer = h.fin_wait_2.get(tcb.conn_id)
    if timer is not None:
        timer.heard_ns = h.ndis.clock()


def stop_fin_wait_2(h: HostStack, tcb: Tcb) -> None:
    """`tcb` left FIN_WAIT_2 (the peer's FIN, an RST, a close) or the host (an offload)."""
    timer = h.fin_wait_2.pop(tcb.conn_id, None)
    if timer is not None and timer.handle is not None:
        timer.handle.cancel()


def _heard_by_kernel(tcb: Tcb, timer: FinWait2Timer, now: int) -> int:
    """When the peer was last heard, the kernel's news counted while the host has stopped
    reading the socket (back-pressure), as the target's timer does (spec §8)."""
    return heard_by_kernel(tcb.wire, tcb.read_paused, timer, now)


def fin_wait_2_left(h: HostStack, tcb: Tcb) -> int:
    """What an offload in FIN_WAIT_2 hands down in `RetransmitTimeoutDelta` (spec §8): what is
    left of the host's timer in ticks, 0 if due; -1 (a fresh 120 s) if none runs."""
    timer = h.fin_wait_2.get(tcb.conn_id)
    if timer is None:
        return TIMER_NOT_RUNNING
    now = h.ndis.clock()
    left_ns = max(0, _heard_by_kernel(tcb, timer, now) + FIN_WAIT_2_NS - now)
    return left_ns * h.params.TicksPerSecond // NS


def fin_wait_2_expired(h: HostStack, tcb: Tcb) -> None:
    """The timer fell due: armed again for what is left if the peer was heard since it was
    armed; else the connection times out (spec §8), as at the kernel's timeout. While an
    initiate is below it waits: the initiate handed down what was left, and the target times
    the connection out if it takes it; if not, the host does (`initiate_failed`)."""
    timer = h.fin_wait_2.get(tcb.conn_id)
    if timer is None:
        return  # stopped after it was posted
    if tcb.tcp is not TcpState.FIN_WAIT_2 or tcb.phase is Phase.CLOSED:
        stop_fin_wait_2(h, tcb)  # [INF] left the state by a road that did not stop it
        return
    now = h.ndis.clock()
    due = _heard_by_kernel(tcb, timer, now) + FIN_WAIT_2_NS
    if due > now:
        timer.handle = h.timers.call_later((due - now) / NS, h.fin_wait_2_expired, tcb)
        return
    if tcb.phase is not Phase.IDLE:
        timer.handle = None
        return
    del h.fin_wait_2[tcb.conn_id]
    timed_out(h, tcb)


def timed_out(h: HostStack, tcb: Tcb) -> None:
    """The host's timer expired: the connection ends as at the kernel's timeout
    (`receive.wire_timeout`, spec §8), with an RST to the peer: at once with reading on (what
    the kernel holds is read first, `abort_after_reading`), else once the application has read
    what the host holds (`rst_owed`)."""
    if not tcb.read_paused and not tcb.wire.closed:
        tcb.wire.abort_after_reading()
    receive.wire_timeout(h, tcb)


def rst_owed(tcb: Tcb) -> bool:
    """Whether `tcb` timed out in FIN_WAIT_2 (the host's timer or the target's, spec §8)
    with its socket still open: reading stopped under back-pressure, the kernel holds bytes
    of the peer's the application has not read, which the RST would drop. It goes once the
    application has read every byte the host holds (`send_owed_rst`), or at `tcp.close`.
    [EMU] A kernel that timed out closed the socket itself, and a reset one is closed."""
    return tcb.end_reason == TIMED_OUT and tcb.reset and not tcb.wire.closed


def rst_unless_paused(tcb: Tcb) -> None:
    """A FIN_WAIT_2 timeout handed back by the target (spec §8): the RST goes now if the host
    reads the socket (what the kernel holds is read first, `abort_after_reading`), as at the
    host's own expiry (`timed_out`); else it is owed."""
    if rst_owed(tcb) and not tcb.read_paused:
        tcb.wire.abort_after_reading()


def send_owed_rst(h: HostStack, tcb: Tcb) -> None:
    """The application has read every byte the host held (`receive.serve`): read again, and
    the RST owed goes, once what the kernel holds is read (`abort_after_reading`): those bytes
    come up before the timeout (`timeout_after_bytes`)."""
    if tcb.read_paused:
        tcb.read_paused = False
        tcb.wire.resume_reading()
    tcb.wire.abort_after_reading()


def timeout_after_bytes(h: HostStack, tcb: Tcb) -> bool:
    """A read of a dead connection (reset, or timed out) finds nothing to take, in the host,
    where bytes may still come, which the application reads before the error: True if its
    answer waits for them. (While the connection is still offloaded or being uploaded,
    `receive.serve` holds every read before it comes here: the upload hands back what the
    target held, spec §5.1, §3.6.3.)

    Bytes the socket read before its end may still be on their way in the host's inbox (the
    last read of `abort_after_reading` for a FIN_WAIT_2 timeout, spec §8; reads the timer's
    expiry overtook), or be replayed by the upload that is handing the connection back now
    (`terminate._uploaded` serves the reads as it replays each). So the error is answered
    behind them, one inbox round later (`receive.serve` with `timeout_due`). Nothing is read
    from the socket after its RST, so nothing can come after that round."""
    if tcb.phase is not Phase.IDLE:
        return False
    h.ndis.post(h, _timeout_due, (h, tcb))
    return True


def _timeout_due(h: HostStack, tcb: Tcb) -> None:
    receive.serve(h, tcb, True)


def initiate_failed(h: HostStack, tcb: Tcb) -> None:
    """The connection stays the host's: a timer that fell due meanwhile expires now."""
    timer = h.fin_wait_2.get(tcb.conn_id)
    if timer is not None and timer.handle is None:
        timer.handle = h.timers.call_later(0, h.fin_wait_2_expired, tcb)
