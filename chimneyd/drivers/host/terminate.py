"""Uploading a connection (spec §3.6): terminate its offload and carry it on in the host.

Only the host starts a terminate (spec §3.6.1): when asked (`tcp.upload`, `tcp.close`), when the
target asks (`TcpIndicateRetrieve`, `NDIS_STATUS_UPLOAD_ALL`), or when a send comes back
because the target is uploading. Neighbor and path objects go after their last connection, in
a call of their own (spec §3.1, §5.5). The target hands back the delegated state,
unacknowledged send data and undelivered receive data; the host takes each back so that no
byte is lost (spec §3.6.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.blocks import (
    OffloadBlock,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.broker import Binding
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import (
    FIN_RECEIVED_STATES,
    LIVE,
    Event,
    Phase,
    TcpState,
    tcp_state_of,
)
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import NdisStatus

from ..delegated import snapshot
from ..queues import NO_ITEMS, grown
from ..segment import TH_RST
from ..tcp import offset_of, seq
from . import disconnect, host_reasons, offload, receive, send
from .errors import raise_if_broken
from .tcb import LOST_BELOW, Done, HostObject, Tcb

if TYPE_CHECKING:
    from .stack import HostStack

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
#: Phases of a connection the host may terminate (spec §3.9).
_TERMINABLE = frozenset({*LIVE, Phase.FAILED})
#: Phases of an unused neighbor or path that the host terminates.
_OFFLOADED_OBJECT = frozenset({Phase.OFFLOADED, Phase.INVALIDATED, Phase.FAILED})


def app_upload(h: HostStack, tcb: Tcb, done: Done) -> None:
    """`tcp.upload`: answered once the connection is back in the host."""
    phase = tcb.lifecycle.phase
    if phase is Phase.TERMINATING:
        tcb.upload_done = grown(tcb.upload_done, done)
        return
    if phase not in _TERMINABLE:
        done({"state": tcb.state}, None)
        return
    tcb.upload_done = grown(tcb.upload_done, done)
    start(h, tcb)


def start(h: HostStack, tcb: Tcb) -> None:
    """Queue the connection's terminate for this inbox drain (once only queries are done)."""
    tcb.upload_waits = False
    if tcb.lifecycle.phase not in _TERMINABLE:
        return  # already on its way up, or not offloaded
    send.flush_sends(h, tcb)
    if tcb.pending_ops:
        # terminate only once no query, update or invalidate is pending on the connection (spec §3.1)
        tcb.upload_waits = True  # going up already (`host_reasons._for_the_event`)
        tcb.deferred = grown(tcb.deferred, lambda: start(h, tcb))
        return
    tcb.lifecycle.fire(Event.TERMINATE)
    h.pending_terminates.append(tcb)


def flush_terminates(h: HostStack) -> None:
    """Terminate pending connections, one tree per neighbor, naming no path or neighbor: those
    go in a later call once their last connection's terminate has completed
    (`release_unused_objects`; spec §3.1, §5.5 "same or later calls"). A connection is the
    host's again when its terminate completes (spec §3.6), and a layer below may hold a
    terminate that names a neighbor or path for as long as one of its copies cannot go (a
    teaming MUX, a failed NIC's copy until its RESUME, spec §5.5, §9 item 8): named with them,
    the connection waited that long, and a read on it with it."""
    # one tree per neighbor: a binding has one per next hop (spec §3.4 (b)). By object, not
    # by key: a neighbor or path leaving and a fresh one of its key may both have
    # connections going (`HostStack.leaving`)
    trees: dict[int, tuple[HostObject, dict[int, list[OffloadBlock]]]] = {}
    for tcb in h.pending_terminates:
        path = tcb.path
        assert path is not None and path.parent is not None and tcb.handle is not None
        neighbor = path.parent
        if id(neighbor) not in trees:
            trees[id(neighbor)] = (neighbor, {})
        block = new_tcp_block(tcb.handle, delegated=TcpOffloadStateDelegated())
        trees[id(neighbor)][1].setdefault(id(path), []).append(block)
    h.pending_terminates = []
    for neighbor, paths in trees.values():
        root = new_neighbor_block(None)
        for tcp_blocks in paths.values():
            # each list linked at once: appending one at a time walks it each time
            root.add_dependent(new_path_block(None)).add_dependents(tcp_blocks)
        _send(h, neighbor.binding, root)


def _send(h: HostStack, binding: Binding, root: OffloadBlock) -> None:
    """`NdisTerminateOffload` of `root`, the handles it names kept on it (`protocol_reserved`)
    with the blocks the host built for them: a completion that comes back without one of them
    is told by `complete`, and what the layer below put in the host's block is found there."""
    root.protocol_reserved = [
        (b.offload_handle, b) for b in walk(root) if b.offload_handle is not None
    ]
    h.ndis.NdisTerminateOffload(h, binding, root)


def _neighbors_leaving(h: HostStack) -> None:
    """The host sent a neighbor's terminate: it is leaving (`offload.current`) and stands for
    its next hop no more, so a next-hop change that waited for it to leave (failed or
    invalidated, spec §3.1) goes under a fresh one now [EMU], as a connection's offload does;
    not when that terminate completes, which a teaming MUX may hold back while a failed NIC
    stays out (spec §5.5, §9 item 8)."""
    h.objects_settled()


def _unused_but_for(h: HostStack, neighbor: HostObject, going: set[HostObject]) -> bool:
    """Whether `neighbor` is offloaded and no path depends on it but those in `going` (being
    terminated in the same tree): one offloaded, being offloaded or being terminated in
    another tree keeps it (spec §3.1, §3.6)."""
    return _terminable(neighbor) and not any(
        o.parent is neighbor and o.lifecycle.phase is not Phase.IDLE and o not in going
        for o in h.all_objects()
    )


#: Phases of a neighbor on its way out: it takes no new connection nor move (spec §3.1).
_ON_ITS_WAY_OUT = frozenset({Phase.INVALIDATED, Phase.FAILED})


def _kept_by_linkers_only(h: HostStack, obj: HostObject, objects: list[HostObject]) -> bool:
    """Whether `obj` is a neighbor on its way out, still standing for its key, that only
    initiates below naming it as a linker keep from its terminate (`release_unused_objects`)."""
    return (
        obj.block_kind == "neighbor"
        and obj.linked > 0
        and obj.pending_ops == obj.linked
        and obj.refs == 0
        and obj.lifecycle.phase in _ON_ITS_WAY_OUT
        and not obj.updating
        and h.objects.get(obj.key) is obj
        and not any(o.parent is obj and o.lifecycle.phase is not Phase.IDLE for o in objects)
    )


def _terminable(obj: HostObject) -> bool:
    """Offloaded, with no invalidate in flight (spec §3.1, §9 item 7): one that is waits, and
    goes by `release_unused_objects` when it completes."""
    return obj.lifecycle.phase in _OFFLOADED_OBJECT and not obj.pending_ops


def _start_object(obj: HostObject, block: OffloadBlock) -> None:
    obj.lifecycle.fire(Event.TERMINATE)
    block.offload_handle = obj.handle


def release_unused_objects(h: HostStack) -> None:
    """Terminate neighbor/path objects that are offloaded but have no dependent left: their
    last connection's terminate has completed (`flush_terminates`), every connection of their
    initiate failed, or a terminate of them failed (spec §3.7)."""
    objects = h.all_objects()
    unused: dict[int, tuple[HostObject, set[HostObject]]] = {}  # by neighbor
    for obj in objects:
        if obj.block_kind == "path" and obj.refs == 0 and _terminable(obj):
            assert obj.parent is not None
            unused.setdefault(id(obj.parent), (obj.parent, set()))[1].add(obj)
    leaving = False
    for neighbor, paths in unused.values():
        root = new_neighbor_block(None)
        for path in paths:
            _start_object(path, root.add_dependent(new_path_block(None)))
        if _unused_but_for(h, neighbor, paths):
            _start_object(neighbor, root)
            leaving = True
        _send(h, neighbor.binding, root)
    for obj in objects:
        if (
            obj.block_kind == "neighbor"
            and obj.refs == 0
            and _terminable(obj)
            and not any(o.parent is obj and o.lifecycle.phase is not Phase.IDLE for o in objects)
        ):
            root = new_neighbor_block(None)
            _start_object(obj, root)
            _send(h, obj.binding, root)
            leaving = True
        elif _kept_by_linkers_only(h, obj, objects):
            # invalidated or failed, on its way out (spec §3.5, §3.4), with nothing of the
            # host's under it, and its terminate waits only for initiates still below that
            # link under it (spec §3.1) — which a paused NIC may hold until its RESUME (spec
            # §5.5). It stands for its next hop no more [EMU], as one being terminated
            # (`offload.current`): a connection or a next-hop change that waited for it goes
            # under a fresh one now, not once those initiates are back; it is terminated
            # from the leaving ones then (above, once `pending_ops` is zero)
            del h.objects[obj.key]
            h.leaving[id(obj)] = obj
            leaving = True
    forget_idle_objects(h)
    if leaving:
        _neighbors_leaving(h)


def forget_idle_objects(h: HostStack) -> None:
    """Drop neighbor and path records never offloaded that no connection uses, and those
    leaving whose terminate has completed."""
    forgotten = [k for k, o in h.objects.items() if o.lifecycle.phase is Phase.IDLE and o.refs == 0]
    for key in forgotten:
        del h.objects[key]
    leaving = h.leaving
    if leaving:
        gone = [o for o in leaving.values() if o.lifecycle.phase is Phase.IDLE and o.refs == 0]
        for obj in gone:
            del leaving[id(obj)]
            if obj.key not in h.objects:  # a fresh object of its key keeps the entries in use
                forgotten.append(obj.key)
    if forgotten:
        h.objects_let_go(forgotten)  # their update cache entries count against its cap now


def complete(h: HostStack, binding: Binding, root: OffloadBlock) -> None:
    """`ProtocolTerminateOffloadComplete`."""
    let_go: list[NdisOffloadHandle] = []
    broken: dict[int, ChimneyProtocolError] = {}  # connections not taken back, by conn id
    sent: list[tuple[NdisOffloadHandle, OffloadBlock]] = offload.take_reserved(root) or []
    missing = _missing(root, sent, broken)
    for block in walk(root):
        handle = block.offload_handle
        if handle is None:
            continue
        owner = handle.owner
        if owner is None:
            # a handle the host let go (its terminate completed): nothing may come for it any
            # more (spec §9 item 8), and nothing of the host's is left to settle. The rest of
            # the tree is settled first, as `offload.complete` does, so that the layer below
            # that broke the contract leaves no connection of this terminate unanswered
            let_go.append(handle)
            continue
        if block.status != SUCCESS:
            # corrupt hardware (spec §3.7): the object lives on, still depending on its path;
            # the target indicates an abort (a connection) and the host terminates it again
            owner.lifecycle.fire(Event.TERMINATE_FAILED)
            continue
        h.table_remove(handle.id)
        h.stats.offloads_active -= 1
        owner.lifecycle.fire(Event.TERMINATE_COMPLETE)
        handle.release()
        if isinstance(owner, HostObject):
            _object_gone(owner)
        else:
            # only now is it no dependent of its path: the path may go (spec §3.1)
            assert owner.path is not None
            h.unref(owner.path)
            try:
                _uploaded(h, owner, block)
            except ChimneyProtocolError as exc:
                # its block broke the contract (spec §3.6.3): the rest of the tree is settled
                # all the same, as for a let-go handle, and only its requests fail (the engine)
                broken[owner.conn_id] = exc
    # what the completion lacks, settled as let go (spec §6.3 [EMU]): connections first, each
    # letting go of its path, then the objects
    lost = frozenset(m.owner.conn_id for m, _ in missing if isinstance(m.owner, Tcb))
    for handle, own in sorted(missing, key=lambda m: not isinstance(m[0].owner, Tcb)):
        owner = handle.owner
        h.table_remove(handle.id)
        h.stats.offloads_active -= 1
        owner.lifecycle.fire(Event.TERMINATE_COMPLETE)
        handle.release()
        if isinstance(owner, Tcb):
            assert owner.path is not None
            h.unref(owner.path)
            lost_below(h, owner, own)
        else:
            _object_gone(owner)
    release_unused_objects(h)
    h.objects_settled()  # a next-hop change waiting for a neighbor to go (`state_ops`)
    host_reasons.settled(h)
    if offload.initiates_due(h):
        offload.flush_initiates(h)
    unsettled = (
        f"with connections the host could not take back: "
        f"{'; '.join(str(e) for e in broken.values())}"
        if broken
        else ""
    )
    raise_if_broken("terminate", unsettled, frozenset(broken), let_go, lost)


def _object_gone(obj: HostObject) -> None:
    """A neighbor or path whose terminate completed: a path a next-hop change may have moved
    below without the host knowing lets go of that neighbor now (`state_ops._move_complete`),
    which may go in its turn (`release_unused_objects`)."""
    obj.handle = None
    under = obj.maybe_under
    if under is not None:
        obj.maybe_under = None
        under.refs -= 1


def _missing(
    root: OffloadBlock,
    sent: list[tuple[NdisOffloadHandle, OffloadBlock]],
    broken: dict[int, ChimneyProtocolError],
) -> list[tuple[NdisOffloadHandle, OffloadBlock]]:
    """The handles of the objects whose block the completion of a terminate lacks (a layer
    below put another in its place, or dropped it): the layer broke the contract and said
    nothing of them. The host asked for their terminate and lets go of them as if it had
    completed (spec §6.3 [EMU]): no upload of them will come, and a further terminate of a
    context the layer below may have let go already is undefined (spec §6.3), so the host asks
    nothing more below. A connection among them is lost (`lost_below`); it is named
    (`broken`), so that the engine fails what the host cannot answer (its sends below)."""
    named = {id(b.offload_handle) for b in walk(root) if b.offload_handle is not None}
    missing: list[tuple[NdisOffloadHandle, OffloadBlock]] = []
    for handle, own in sent:
        owner = handle.owner
        if (
            owner is not None
            and id(handle) not in named
            and owner.lifecycle.phase is Phase.TERMINATING
        ):
            missing.append((handle, own))
            if isinstance(owner, Tcb):
                broken[owner.conn_id] = ChimneyProtocolError(
                    f"TCB {owner.conn_id}: no block of it in the terminate's completion"
                )
    return missing


#: TCP states of a connection whose byte stream is over both ways.
_ENDED = frozenset({TcpState.TIME_WAIT, TcpState.CLOSED})


def lost_below(h: HostStack, tcb: Tcb, own: OffloadBlock) -> None:
    """A connection whose block the completion of its terminate lacked, its handle let go
    (spec §6.3 [EMU]): the host cannot know its state below (what the peer acknowledged, what
    the target received and did not hand up), so it cannot carry the byte stream on without
    losing or repeating bytes. It takes it back as reset, as after corrupt hardware (spec
    §3.7): the peer gets an RST through the socket, which is the connection's, so whatever a
    layer below still holds of it is cut off too; the host's sends fail, its reads and its
    upload are answered, and its close answers and frees it. One whose both FINs were
    through already (TIME_WAIT, CLOSED) had nothing left to lose: it is only taken back.

    `own` is the block the host built for it: send NBLs a layer below handed back in it
    (its handle swapped for a let-go one) are the host's, and fail with the reset; else their
    sends are never answered and the host's `outstanding_nbls` never drains. Nothing else in
    it is trusted: its state is not the host's to know."""
    if not tcb.reset and tcb.lifecycle.tcp not in _ENDED:
        if tcb.end_reason is None:
            tcb.end_reason = LOST_BELOW
        h.emit(tcb.conn_id, "TcpIndicateAbort", {"path": "lost"})
        tcb.lifecycle.fire(Event.RESET)
    wire = tcb.wire
    # the state handed back as the host last knew it (reset): all it wrote taken as answered
    # (the kernel says what the peer acknowledged; the rest fails with the reset), nothing
    # received beyond what the host holds
    delegated = TcpOffloadStateDelegated(
        State=tcb.lifecycle.delegated_state,
        RcvNxt=seq(wire.irs, tcb.rx.rcv_nxt),
        SndUna=seq(wire.isn, wire.bytes_written),
    )
    block = new_tcp_block(None, delegated=delegated)
    # only NBLs still this connection's sends (`send.finish_send` clears a completed one's
    # mark): anything else a layer below left in the block stays that layer's
    block.net_buffer_list_chain = link_chain(
        [
            n
            for n in iter_chain(own.net_buffer_list_chain)
            if n.protocol_reserved is not None and h.tcb_of(n) is tcb
        ]
    )
    own.net_buffer_list_chain = None
    _uploaded(h, tcb, block)


def _uploaded(h: HostStack, tcb: Tcb, block: OffloadBlock) -> None:
    """Take the connection back: delegated state, send data, buffered data (spec §3.6.3)."""
    tcb.handle = None
    tcb.path = None
    assert tcb.binding is not None
    h.offloads_on[tcb.binding.id] -= 1
    wire = tcb.wire
    d: TcpOffloadStateDelegated = block.delegated
    tcb.delegated = snapshot(d, "upload", h.ndis.clock())
    was_reset = tcb.reset
    rcv_nxt = offset_of(wire.irs, d.RcvNxt, wire.bytes_read)
    # buffered receive data: copy, and give the NBLs back (spec §3.6.3)
    buffered = d.BufferedData
    d.BufferedData = None
    if buffered is not None:
        data = b"".join(bytes(v) for v in buffered.views())
        h.stats.outstanding_nbls += 1  # the host's until it gives it back
        assert tcb.binding is not None
        h.returns.setdefault(tcb.binding, []).append(buffered)
        receive.buffered_returned(h, tcb, rcv_nxt - len(data), data)
    tcb.rx.rcv_nxt = max(tcb.rx.rcv_nxt, rcv_nxt)
    # the TCP state as the target left it: the host may not have seen every step (a FIN
    # received but not yet indicated, a FIN of ours acknowledged during the terminate)
    fin_before = tcb.lifecycle.tcp in FIN_RECEIVED_STATES
    tcb.lifecycle.reach(tcp_state_of(d.State, tcb.lifecycle.tcp, tcb.end_reason is None))
    if tcb.lifecycle.tcp in FIN_RECEIVED_STATES and not fin_before:
        tcb.rx.fin = tcb.rx.rcv_nxt
        h.emit(tcb.conn_id, "TcpIndicateDisconnect", {"path": "upload"})
    if tcb.lifecycle.tcp is TcpState.FIN_WAIT_2:
        # the host times the wait for the peer's FIN from what the target handed back (spec
        # §8); the segments queued meanwhile (below) restart or stop it
        disconnect.start_fin_wait_2(h, tcb, disconnect.fin_wait_2_ns(h, d.RetransmitTimeoutDelta))
    if not tcb.reset and not tcb.kernel_timed_out:
        # it came back alive: a timeout retrieve was only a request. The kernel's timeout told
        # while the upload was in flight (by the socket, or by the target up the ordinary
        # path, `receive.ordinary_path`) is not: its RST is queued (`upload_q`) below
        tcb.end_reason = None
    elif not was_reset and tcb.end_reason is None:
        h.emit(tcb.conn_id, "TcpIndicateAbort", {"path": "upload"})
    # unfinished sends come back in order, starting at SndUna (spec §3.6.3)
    pos = offset_of(wire.isn, d.SndUna, wire.bytes_written)
    returned = list(iter_chain(block.net_buffer_list_chain))
    block.net_buffer_list_chain = None
    send.mark_returned(tcb, returned)
    unsent: list[NetBufferList] = []
    for nbl in returned:
        nbl.next = None
        n = nbl.data_length
        if pos >= wire.bytes_written:
            if send.behind_a_hole(tcb, nbl):
                send.finish_send(h, nbl, tcb.hole_status)  # never after the hole (spec §4.1)
            else:
                unsent.append(nbl)  # handed back before it was sent (spec §3.6.3): ours to send
        else:
            if pos + n > wire.bytes_written and not tcb.reset:
                # written bytes end inside it: SndUna and the data handed back disagree, and
                # its end could never be acknowledged (its send never answered)
                raise ChimneyProtocolError(
                    f"TCB {tcb.conn_id}: send data handed back does not line up with SndUna"
                )
            tcb.sends = grown(tcb.sends, (nbl, pos, pos + n))
        pos += n
    # the unsent go first: whatever the target refused came after them
    if unsent:
        tcb.requeue = unsent + tcb.requeue
    if min(pos, wire.bytes_written) < wire.bytes_written and not tcb.reset:
        # a live connection's unacknowledged bytes all come back (a reset one's sends failed)
        raise ChimneyProtocolError(f"TCB {tcb.conn_id}: upload lost track of sent bytes")
    # segments the host got while the terminate was in flight, in order by offset; at one
    # offset an RST last. The socket's own news once the target let it go (its reset, or its
    # timeout, `receive.wire_reset`, `receive.wire_timeout`) reaches the host directly, at the
    # stream's end, and can overtake what the target handed up before it through an IM, as
    # the peer's FIN at that same offset: the kernel had that FIN first (spec §3.6.4, §5.2).
    # A timeout the target met after the terminate began came up the ordinary path behind
    # those segments ([EMU] `wire.TIMEOUT_MARK`, `receive.ordinary_path`) and overtook none
    queued, tcb.upload_q = tcb.upload_q, NO_ITEMS
    for off, data, flags in sorted(queued, key=lambda s: (s[0], bool(s[2] & TH_RST))):
        receive.host_segment(h, tcb, off, data, flags)
    if tcb.reset:
        send.fail_host_sends(h, tcb, S.NDIS_STATUS_REQUEST_ABORTED)
        if not wire.closed and not disconnect.rst_owed(tcb):
            wire.abort()  # its state was lost with the hardware (spec §3.7): RST the peer
        # a FIN_WAIT_2 timeout's (spec §8) goes once the host knows whether it reads the
        # socket (`own_reading`, below)
    else:
        # acknowledgements that came while the connection was changing hands found no send of
        # the host's to complete, and are not reported again: complete what they cover now
        send.complete_host_sends(h, tcb, wire.acked())
        # sends the target refused during the upload are sent by the host now (spec §4.1)
        requeue, tcb.requeue = tcb.requeue, NO_ITEMS
        for nbl in requeue:
            send.host_send(h, tcb, nbl)
        send.unqueue(h, tcb)  # then what waited for room in the send backlog (spec §5.3)
    disconnect.after_upload(h, tcb)
    if tcb.sends or tcb.disconnect_done is not None:
        wire.watch_acks()
    receive.own_reading(h, tcb)
    disconnect.rst_unless_paused(tcb)
    # the event goes out before the callers hear of it: one that closes next must not have its
    # `closed` arrive before `uploaded`
    h.emit(tcb.conn_id, "uploaded", {"reason": tcb.upload_reason})
    tcb.upload_reason = "terminate"
    for done in tcb.upload_done:
        done({"state": tcb.state}, None)
    tcb.upload_done = NO_ITEMS
    receive.serve(h, tcb)
    h.run_deferred(tcb)
