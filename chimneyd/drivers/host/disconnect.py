"""Disconnecting and closing (spec §4.5): a FIN or an RST, through the chimney or on the socket.

A graceful disconnect completes when the FIN is acknowledged; an abortive one when the RST is
out. A disconnect the target refuses because it is uploading is finished by the host after the
upload. `tcp.close` uploads first when needed, then frees every layer's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chimneyd.ndis.lifecycle import Event, Phase
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus, TcpDisconnectFlags

from ..queues import NO_ITEMS, grown
from . import adapter, receive, send, terminate
from .tcb import AppError, Done, Tcb

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
    if not tcb.wire.closed:
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
