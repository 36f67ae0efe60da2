"""The host's reactions to the target's connection events (spec §5.1, §5.2); adapter status
indications are in `adapter`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Event
from chimneyd.ndis.status import NdisStatus, TcpOffloadEventType, TcpUploadReason

from . import adapter, receive, send, terminate
from .tcb import TIMED_OUT, Tcb

if TYPE_CHECKING:
    from .stack import HostStack

S = NdisStatus
E = TcpOffloadEventType


def tcp_event(h: HostStack, handle: NdisOffloadHandle, event: E, info: int) -> None:
    """`ProtocolTcpOffloadEvent`."""
    tcb: Tcb = handle.owner
    if event is E.TcpIndicateRetrieve:
        reason = TcpUploadReason(info)
        tcb.lifecycle.fire(Event.RETRIEVE if reason.mandatory else Event.RETRIEVE_OPTIONAL)
        honored = reason.mandatory or h.honor_optional_retrieve
        h.emit(
            tcb.conn_id,
            event.name,
            {"reason": reason.name, "mandatory": reason.mandatory, "honored": honored},
        )
        if reason is TcpUploadReason.TimeoutExpiration and not tcb.reset:
            # the kernel gave up on it (spec §5.2): if it comes back dead, that is why
            tcb.end_reason = TIMED_OUT
        if honored:
            if reason.mandatory and tcb.binding is not None:
                adapter.offer_again_at_resume(h, tcb, tcb.binding)
            terminate.start(h, tcb)
        return
    tcb.lifecycle.fire(Event.INDICATE)
    if event is E.TcpIndicateDisconnect:
        if tcb.rx.fin is None:
            tcb.rx.fin = tcb.rx.rcv_nxt  # every byte before it was consumed (spec §5.1)
        receive.fin_received(h, tcb, {})
        receive.serve(h, tcb)
    elif event is E.TcpIndicateAbort:
        if not tcb.reset:
            tcb.lifecycle.fire(Event.RESET)
        h.emit(tcb.conn_id, event.name, {})
        if tcb.posted is None:
            receive.serve(h, tcb)
        # else the target fails the posted receive after this indication (spec §5.1 lets it
        # come first), with the bytes placed in it before the RST (§4.2): `receive_complete`
        # hands the reads those bytes, then the error
        terminate.start(h, tcb)  # the host answers an abort with a terminate (spec §5.1)
    elif event is E.TcpIndicateSendBacklogChange:
        tcb.send_backlog = info
        h.emit(tcb.conn_id, event.name, {"backlog": info})
        send.pump(h, tcb)  # the host paces its sends by it (spec §5.3)
