"""Offloading a connection from the host (spec §3.2) and forwarding to it (spec §4.6).

The host builds one tree per binding, neighbor → path → TCP (spec §2.3), from every connection
whose neighbor and path are settled, and hands the target the connection's state, its
unacknowledged send data and its unread receive data (spec §3.2.3, §3.2.5). Segments it
receives while the initiate is in flight go down with `NdisOffloadTcpForward` afterwards.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chimneyd.ndis.blocks import (
    NeighborOffloadStateCached,
    NeighborOffloadStateConst,
    NeighborOffloadStateDelegated,
    OffloadBlock,
    PathOffloadStateCached,
    PathOffloadStateConst,
    PathOffloadStateDelegated,
    TcpOffloadStateConst,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.broker import Binding
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Event, Phase, TcpState
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import OFFLOADED_STATUSES, NdisStatus

from ..delegated import fill_from_kernel, snapshot, tick_clock
from ..queues import NO_ITEMS, grown
from ..segment import (
    MAX_SEGMENT_PAYLOAD,
    TH_ACK,
    TH_FIN,
    TH_PSH,
    TH_RST,
    build_segment,
    parse_segment,
)
from ..tcp import offset_of, seq
from . import adapter, disconnect, host_reasons, receive, send, terminate
from .errors import raise_if_broken
from .tcb import LOST_BELOW, AppError, Done, HostObject, Tcb, ndis_error

if TYPE_CHECKING:
    from .stack import HostStack

S = NdisStatus
#: Phases of a neighbor or path that a new connection cannot be linked under yet (one
#: TERMINATING a new connection finds is set apart as leaving, `current`, not waited for).
SETTLING = frozenset({Phase.OFFLOADING, Phase.TERMINATING, Phase.INVALIDATED, Phase.FAILED})


def request(h: HostStack, tcb: Tcb, target: str | None, done: Done, pin: bool = False) -> None:
    """`tcp.offload` / offload at connect: queue the connection for an initiate. It stays the
    host's, IDLE and carrying its traffic, until `flush_initiates` puts it in a tree (spec
    §3.9); a second request while it waits is answered by the same initiate.

    `pin`: the application asked, and under a MUX this offload goes to the NIC `target`
    names, or is refused as a NIC without room refuses it [EMU: the placement wish, carried
    on the initiate's TCP block; the spec leaves placement to the MUX, §5.5]. The host's own
    offload again at a RESUME asks for the pinned NIC first, then lets the MUX's policy
    place it (`adapter._offload_again`): a failover moves a pinned connection as any other."""
    if tcb.state == "offloaded":
        done(h.describe_offload(tcb), None)
        return
    if tcb.initiate_queued:
        tcb.offload_done = grown(tcb.offload_done, done)
        return
    if tcb.disconnect_done is not None and not (tcb.wire.closed or tcb.reset):
        # the host's own FIN waits for its ACK: offload once the disconnect is over. Not in
        # `deferred`: the connection is the host's until then, and a send, a disconnect or an
        # abortive close asked meanwhile is answered now, as offloaded (spec §4.5)
        tcb.after_fin = grown(tcb.after_fin, lambda: request(h, tcb, target, done, pin))
        return
    binding = h.binding_for(target)
    if binding is None:
        done(None, AppError("NOT_FOUND", f"no offload target {target!r} below {h.name}"))
        return
    if pin:
        tcb.target = target  # kept if refused: a later `tcp.offload` goes to the same NIC
    # [EMU] read by a MUX below when it places the connection; the host's reasons to keep it
    # off some NICs are added at each look (`host_reasons.refusal`)
    tcb.wish = (target, host_reasons.NO_NICS) if pin and target is not None else None
    refused = _refusal(h, tcb, binding)
    if refused is not None:
        adapter.refused(h, tcb, refused)  # `tcp.info`'s `offload_refused`
        done(None, refused)
        return
    tcb.binding = binding
    tcb.target = target
    tcb.initiate_queued = True
    tcb.offload_done = grown(tcb.offload_done, done)
    h.pending_initiates.append(tcb)


#: TCP states the host never offloads (spec §2.2): both halves closed, or reset.
_NOT_OFFLOADABLE = frozenset(
    {TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT, TcpState.CLOSED, TcpState.RESET}
)


def _refusal(h: HostStack, tcb: Tcb, binding: Binding) -> AppError | None:
    """Why the host will not offload `tcb` down `binding` now: asked when the request comes
    and again when the connection's turn in an initiate comes, as it may have changed."""
    if tcb.lifecycle.phase is Phase.CLOSED or tcb.reset or tcb.wire.closed:
        return AppError("INVALID_STATE", f"connection {tcb.conn_id} is closed")
    if not tcb.wire.remote[1]:
        # the peer reset it before it was accepted and its address is unknown (port 0): the
        # target finds a socket by its 4-tuple (spec §3.2.3), which every such connection on
        # a listener shares, so it could carry this one over another's socket
        return AppError("INVALID_STATE", f"connection {tcb.conn_id} was reset before accept")
    if tcb.lifecycle.phase is not Phase.IDLE:
        return AppError("INVALID_STATE", f"connection {tcb.conn_id} is {tcb.state}")
    if binding.id in h.paused:
        return ndis_error(S.NDIS_STATUS_OFFLOAD_PAUSE, " offload paused by the target")
    withheld = host_reasons.refusal(h, tcb, binding)  # a power change, media disconnect (§6.2)
    if withheld is not None:
        return withheld
    if tcb.lifecycle.tcp in _NOT_OFFLOADABLE:
        return AppError("INVALID_STATE", "both directions closed: not offloadable (spec §2.2)")
    return None


def _unqueue(h: HostStack, tcb: Tcb, error: AppError) -> None:
    """A queued connection will not be offloaded: no initiate was issued, nothing to undo."""
    tcb.initiate_queued = False
    adapter.refused(h, tcb, error)
    for done in tcb.offload_done:
        done(None, error)
    tcb.offload_done = NO_ITEMS
    h.run_deferred(tcb)


#: The next hop of a binding's neighbor until a path is moved to another (spec §3.4 (b)): the
#: link-layer address the host offloads a neighbor with by default [EMU].
DEFAULT_NEXT_HOP = b"\x00" * 6


def neighbor_key(binding: Binding, next_hop: bytes) -> tuple[str, int, bytes]:
    """The key of a binding's neighbor: one per next hop (its link-layer address) [EMU: a real
    host keys it by the next hop's IP address, which chimneyd has none of]."""
    return ("neighbor", binding.id, next_hop)


def host_object(
    h: HostStack, key: Any, kind: str, binding: Binding, parent: HostObject | None
) -> HostObject:
    obj = current(h, key)
    if obj is None:
        obj = h.objects[key] = HostObject(key, kind, binding, parent)
    return obj


def current(h: HostStack, key: Any) -> HostObject | None:
    """The object that stands for `key`, if any. One whose terminate the host has sent is
    leaving and stands for it no more [EMU: the spec is silent]: it is set apart
    (`HostStack.leaving`), where its terminate completes whenever it does, so that what needs
    the key now goes under a fresh object rather than wait for that terminate — which a
    teaming MUX may hold back for as long as a failed NIC stays out (spec §5.5, §9 item 8)."""
    obj = h.objects.get(key)
    if obj is not None and obj.lifecycle.phase is Phase.TERMINATING:
        del h.objects[key]
        h.leaving[id(obj)] = obj
        return None
    return obj


#: Connections the initiates of one inbox drain carry [EMU]. Every layer walks a tree whole,
#: in one go: ten thousand connections offloaded again after a NIC's RESUME held the daemon's
#: loop ~0.7 s in one tree, and every connection's traffic with it. At most this many go per
#: drain, with traffic between drains; a later tree links its connections under a path the
#: first offloaded (spec §2.3 linker blocks), or waits for it (spec §3.1).
TREE_CONNECTIONS = 500


def initiates_due(h: HostStack) -> bool:
    """Whether `flush_initiates` has anything to look at."""
    return bool(h.pending_initiates or h.initiates_blocked)


def flush_initiates(h: HostStack) -> None:
    """Offload queued connections whose neighbor and path are settled, one tree per binding
    (spec §2.3: many TCP objects share a path, many paths a neighbor), at most
    `TREE_CONNECTIONS` of them in this drain's trees; the rest wait for the next drain. One
    whose path, neighbor or target's capabilities are not settled waits beside them, looked
    at again once that one is (not once per drain: thousands wait for one path at RESUME)."""
    pending = _unblocked(h)
    if not pending:
        return
    h.pending_initiates = []
    # one tree per neighbor: a binding has one neighbor per next hop (spec §3.4 (b))
    trees: dict[Any, tuple[Binding, OffloadBlock, dict[Any, OffloadBlock]]] = {}
    under: dict[Any, list[OffloadBlock]] = {}  # path key -> its connections' blocks
    room = TREE_CONNECTIONS
    refusals = False
    for i, tcb in enumerate(pending):
        if not room:
            h.pending_initiates = pending[i:] + h.pending_initiates
            break
        binding = tcb.binding
        assert binding is not None
        refused = _refusal(h, tcb, binding)
        if refused is not None:
            _unqueue(h, tcb, refused)
            # one that waited (for capabilities) has records made for it in an earlier drain
            refusals = True
            continue
        wire = tcb.wire
        local_ip = ipaddress.ip_address(wire.local[0])
        remote_ip = ipaddress.ip_address(wire.remote[0])
        path_key = ("path", binding.id, local_ip.packed, remote_ip.packed)
        held = h.objects.get(path_key)
        path_now = current(h, path_key)  # not one leaving: a fresh path then
        # the path's neighbor: the one it hangs under now (a next-hop change moved it, spec
        # §3.4 (b)), else that of the next hop the host last moved it to, else the binding's
        # default next hop. Not one leaving: a fresh one then, and a path record never
        # offloaded that was made under the old one goes under the fresh one
        parent = held.parent if held is not None else None
        if parent is not None and current(h, parent.key) is parent:
            neighbor = parent
        else:
            neighbor = host_object(
                h, neighbor_key(binding, h.next_hop_of(path_key)), "neighbor", binding, None
            )
            if path_now is not None and path_now.lifecycle.phase is Phase.IDLE:
                path_now.parent = neighbor
        path = host_object(h, path_key, "path", binding, neighbor)
        # no operation on an object still being offloaded (spec §3.1) — unless its block is in
        # the tree this flush builds, which the connection joins
        tree = trees.get(neighbor.key)
        if (neighbor.lifecycle.phase in SETTLING or neighbor.updating) and tree is None:
            _block(h, neighbor, tcb)
            continue
        if (path.lifecycle.phase in SETTLING or path.updating) and (
            tree is None or path.key not in tree[2]
        ):
            # an object with an update below waits too: the initiate's linker names its
            # handle, which lends the trace of the connection that asked for the update
            # (`state_ops.app_update_object`), and a teaming MUX would make a new NIC's copy
            # with the values from before the update
            _block(h, path, tcb)
            continue
        refused_here = adapter.refusal(h, tcb, binding)
        if refused_here == adapter.ASKED:
            _block(h, ("capabilities", binding.id), tcb)  # not known yet
            continue
        if isinstance(refused_here, AppError):
            _unqueue(h, tcb, refused_here)
            refusals = True  # the records made for it above may have no one else
            continue
        tcb.initiate_queued = False
        tcb.lifecycle.fire(Event.INITIATE)  # spec §3.9: OFFLOADING from its initiate on
        if neighbor.key not in trees:
            trees[neighbor.key] = (binding, object_block(h, neighbor), {})
        _, root, paths = trees[neighbor.key]
        pblock = paths.get(path.key)
        if pblock is None:
            pblock = paths[path.key] = root.add_dependent(
                object_block(h, path, local_ip.version == 6)
            )
            under[path.key] = []
        tcb.path = path
        h.ref(path)  # an initiate in flight keeps its path and neighbor alive
        under[path.key].append(_tcp_block(h, tcb))
        room -= 1
    for binding, root, paths in trees.values():
        for key, pblock in paths.items():
            pblock.add_dependents(under[key])
        # the connections and the new neighbor and path it carries, with the blocks the host
        # built for them, so that a completion lacking one's block settles it (`_missing`)
        root.protocol_reserved = offloading_in(root)
        h.ndis.NdisInitiateOffload(h, binding, root)
    if refusals:
        terminate.forget_idle_objects(h)


def _block(h: HostStack, on: Any, tcb: Tcb) -> None:
    h.initiates_blocked.setdefault(on, []).append(tcb)


def _unblocked(h: HostStack) -> list[Tcb]:
    """The queued connections to look at in this drain: those whose wait is over first
    (they were queued earlier), then the newly queued."""
    blocked = h.initiates_blocked
    if not blocked:
        return h.pending_initiates
    ready: list[Tcb] = []
    for on in [on for on in blocked if _settled(h, on)]:
        ready += blocked.pop(on)
    return ready + h.pending_initiates if ready else h.pending_initiates


def _settled(h: HostStack, on: Any) -> bool:
    if isinstance(on, HostObject):
        # being terminated, it is leaving (`current`), or gone: those that waited for it go
        # under a fresh one [EMU]
        phase = on.lifecycle.phase
        return (
            (phase not in SETTLING and not on.updating)
            or phase is Phase.TERMINATING
            or h.objects.get(on.key) is not on
        )
    return h.capabilities.get(on[1]) is not adapter.ASKED


def object_block(h: HostStack, obj: HostObject, ipv6: bool = False) -> OffloadBlock:
    """A new-offload block for an idle object, or a linker for an offloaded one (spec §2.3)."""
    new_block = new_neighbor_block if obj.block_kind == "neighbor" else new_path_block
    if obj.lifecycle.phase is Phase.OFFLOADED:
        assert obj.handle is not None
        # the initiate names the object until it completes: no terminate of it meanwhile
        # (spec §3.1: a neighbor or path goes only once nothing depends on it, and the
        # initiate's new state hangs under it). Gone first, a layer below that still held the
        # initiate would find the linker's object dead, or take the block for a new offload
        # of a handle the host has let go (`complete`)
        obj.pending_ops += 1
        obj.linked += 1
        return new_block(obj.handle)
    obj.handle = NdisOffloadHandle(h.name, obj)
    h.table_add(obj.handle.id, obj.handle)
    obj.lifecycle.fire(Event.INITIATE)
    # the values an update gave the object's key before stay with it (spec §3.4: the host's
    # neighbor and path caches outlive one offload of the object)
    remembered = h.remembered(obj.key)
    if obj.block_kind == "neighbor":
        neighbor_cached = (
            remembered
            if isinstance(remembered, NeighborOffloadStateCached)
            else NeighborOffloadStateCached(DlDestinationAddress=obj.key[2])  # its next hop
        )
        obj.cached = neighbor_cached
        return new_neighbor_block(
            obj.handle,
            NeighborOffloadStateConst(DlSourceAddress=b"", VlanId=0),
            neighbor_cached,
            NeighborOffloadStateDelegated(),
        )
    _, _, src, dst = obj.key
    path_cached = (
        remembered if isinstance(remembered, PathOffloadStateCached) else PathOffloadStateCached()
    )
    obj.cached = path_cached
    return new_path_block(
        obj.handle,
        PathOffloadStateConst(SourceAddress=src, DestinationAddress=dst),
        path_cached,
        PathOffloadStateDelegated(),
        ipv6=ipv6,
    )


def _tcp_block(h: HostStack, tcb: Tcb) -> OffloadBlock:
    """The new-offload block of a connection: const, cached and delegated state, buffered
    receive data and outstanding send data (spec §3.2.3, §3.2.5)."""
    wire = tcb.wire
    handle = NdisOffloadHandle(h.name, tcb, tcb.trace)
    h.table_add(handle.id, handle)
    tcb.handle = handle
    binding = tcb.binding
    assert binding is not None
    h.offloads_on[binding.id] = h.offloads_on.get(binding.id, 0) + 1
    acked = wire.acked()
    send.complete_host_sends(h, tcb, acked)
    # one int for equal sequence numbers: the snapshot keeps them for the connection's life,
    # and an idle connection's SndUna, SndNxt and SndMax are the same
    snd_max = seq(wire.isn, wire.bytes_written)
    snd_una = snd_max if acked == wire.bytes_written else seq(wire.isn, acked)
    delegated = TcpOffloadStateDelegated(
        State=tcb.lifecycle.delegated_state,
        RcvNxt=seq(wire.irs, tcb.rx.rcv_nxt),
        SndUna=snd_una,
        SndNxt=snd_max,
        SndMax=snd_max,
        RcvWnd=h.rx_buffer_bytes,
    )
    now = h.ndis.clock()
    fill_from_kernel(delegated, wire.tcp_info() if not wire.closed else None, tick_clock(now))
    if tcb.tcp is TcpState.FIN_WAIT_2:
        # the delta doubles as the FIN_WAIT_2 timer: what is left of the host's (spec §8)
        delegated.RetransmitTimeoutDelta = disconnect.fin_wait_2_left(h, tcb)
    # before the host's position moves back over the bytes handed down below
    _hand_down_out_of_order(tcb)
    # received, acknowledged data the application has not read yet (spec §3.2.3)
    if tcb.app_rx_bytes:
        data = b"".join(bytes(v) for v, _ in tcb.app_rx)
        receive.drop_app_rx(h, tcb)
        # those bytes are the target's to deliver now: the host's position is before them, so
        # that the FIN offset it learns from TcpIndicateDisconnect is right (spec §5.1)
        tcb.rx.rcv_nxt -= len(data)
        delegated.BufferedData = NetBufferList.for_data(data)
        delegated.BufferedData.trace = tcb.trace
    # whether the socket is read is the target's choice from now: it takes the socket as it is
    # and decides by what it holds; the host decides again if the socket comes back
    tcb.read_paused = False
    tcb.delegated = snapshot(delegated, "offload", now)
    if tcb.cached is None:
        tcb.cached = h.default_cached()
    block = new_tcp_block(
        handle,
        TcpOffloadStateConst(RemotePort=wire.remote[1], LocalPort=wire.local[1]),
        tcb.cached,
        delegated,
    )
    block.wish = tcb.wish  # [EMU] for a MUX below: this initiate's (`OffloadBlock.wish`)
    # sent-but-unacknowledged data, the first NBL advanced to SndUna (spec §3.2.5)
    chain = [nbl for nbl, _, _ in tcb.sends]
    tcb.sends = NO_ITEMS
    send.mark_posted(tcb, chain)  # outstanding at the target from now on (spec §5.3)
    block.net_buffer_list_chain = link_chain(chain)
    delegated.SendDataHead = chain[0] if chain else None
    delegated.SendDataTail = chain[-1] if chain else None
    return block


#: What the host offloads anew in a tree, each with the block it built for it.
Sent = list[tuple[Tcb | HostObject, OffloadBlock]]


def offloading_in(root: OffloadBlock) -> Sent:
    """The connections and objects a tree offloads anew (not its linkers), by their live
    handles, each with its block: the host's own, which still holds what it handed down (the
    send NBLs and the data the application had not read) if a layer below leaves it out of
    the completion (`_lost_below`)."""
    owners: Sent = []
    for block in walk(root):
        owner = block.offload_handle.owner if block.offload_handle is not None else None
        if isinstance(owner, Tcb) or (isinstance(owner, HostObject) and block.const is not None):
            owners.append((owner, block))
    return owners


def complete(h: HostStack, binding: Binding, root: OffloadBlock) -> None:
    """`ProtocolInitiateOffloadComplete`: per block, offloaded or not (spec §3.2.4)."""
    let_go: list[NdisOffloadHandle] = []
    # a next-hop change's lone new neighbor (`state_ops`), or what the tree offloaded anew
    reserved = take_reserved(root)
    after: Callable[[], None] | None = None
    sent: Sent = []
    if isinstance(reserved, tuple):
        after, sent = reserved
    elif isinstance(reserved, list):
        sent = reserved
    # what the completion lacks (`_settle_missing`): objects before any block is settled, so
    # that every connection under one sees it settled, connections after the blocks that came
    missing = _missing(root, sent)
    for obj, own in missing:
        if isinstance(obj, HostObject):
            _settle_missing(h, obj, own)
    for block in walk(root):
        handle = block.offload_handle
        if handle is None:
            continue
        owner = handle.owner
        if owner is None:
            # a handle the host let go (its terminate completed): nothing may come for it
            # any more (spec §9 item 8), and nothing of the host's is left to settle. The
            # rest of the tree is settled first, so that the layer below that broke the
            # contract leaves no connection of this initiate unanswered (`let_go`, below)
            let_go.append(handle)
            continue
        offloaded = block.status in OFFLOADED_STATUSES
        if isinstance(owner, HostObject):
            if block.const is None:
                # a linker (`object_block`): already offloaded, and free to go from now on
                # (`terminate.release_unused_objects`, below) if nothing else depends on it
                owner.pending_ops -= 1
                owner.linked -= 1
                continue
            if offloaded:
                owner.lifecycle.fire(Event.INITIATE_OFFLOADED)
                h.stats.offloads_active += 1
            else:
                owner.lifecycle.fire(Event.INITIATE_FAILED)
                h.table_remove(handle.id)
                owner.handle = None
        elif offloaded:
            _offloaded(h, owner)
        else:
            _not_offloaded(h, owner, ndis_error(block.status), block)
    lost = frozenset(
        [t.conn_id for t, own in missing if isinstance(t, Tcb) and not _settle_missing(h, t, own)]
    )
    if after is not None:
        after()
    h.objects_settled()  # a next-hop change waiting for its new neighbor (`state_ops`)
    terminate.release_unused_objects(h)
    host_reasons.settled(h)
    unsettled = f"without the blocks of {', '.join(str(o) for o, _ in missing)}" if missing else ""
    if any(isinstance(t, Tcb) for t, _ in missing):
        conns = sorted(t.conn_id for t, _ in missing if isinstance(t, Tcb))
        unsettled = f"without the blocks of connections {conns}: {unsettled}"
    raise_if_broken("initiate", unsettled, lost, let_go, lost)  # all lost below (`_lost_below`)


def _missing(root: OffloadBlock, sent: Sent) -> Sent:
    """What the host offloaded anew that the completion has no block of (a layer below put
    a let-go handle's block in its place, or dropped it): a broken contract, and no answer for
    them will come (spec §6.3 [EMU])."""
    named = {
        id(b.offload_handle.owner)
        for b in walk(root)
        if b.offload_handle is not None and b.offload_handle.owner is not None
    }
    return [
        (o, own)
        for o, own in sent
        if id(o) not in named and o.handle is not None and o.lifecycle.phase is Phase.OFFLOADING
    ]


def _settle_missing(h: HostStack, owner: Tcb | HostObject, own: OffloadBlock) -> bool:
    """Settle a connection or object whose block the initiate's completion lacks (spec §6.3
    [EMU]) by its handle's `MiniportOffloadContext` cell, which the layer below fills only for
    a block it offloaded (spec §1.5, §3.2.4): whether it is offloaded. Filled, it is: nothing
    comes back in an offloaded block, so nothing is lost, and it goes up later as any other
    (the layers below let go of it then). Empty, it is not; an object is then as one that
    failed, and a connection is lost: the state and data it handed down were to come back in
    the block, so the host cannot carry its byte stream on (`_lost_below`). A connection is
    offloaded only under an offloaded path (its objects are settled first): a filled cell under
    a path whose block failed is a second breach, and the connection is lost as well."""
    assert owner.handle is not None
    offloaded = owner.handle.miniport_offload_context is not None
    if isinstance(owner, Tcb) and owner.path is not None:
        offloaded = offloaded and owner.path.lifecycle.phase is Phase.OFFLOADED
    if isinstance(owner, HostObject):
        if offloaded:
            owner.lifecycle.fire(Event.INITIATE_OFFLOADED)
            h.stats.offloads_active += 1
        else:
            owner.lifecycle.fire(Event.INITIATE_FAILED)
            h.table_remove(owner.handle.id)
            owner.handle = None
    elif offloaded:
        _offloaded(h, owner)
    else:
        _lost_below(h, owner, own)
    return offloaded


def _lost_below(h: HostStack, tcb: Tcb, own: OffloadBlock) -> None:
    """Not offloaded, and its block left out: the host cannot tell what the layers below did
    with the socket, so it takes the connection back and resets it, as `terminate.lost_below`
    does one lost at its terminate (spec §6.3 [EMU]): the peer gets an RST, the offload is
    answered, the application is told (`TcpIndicateAbort`), its writes fail and its close
    frees it. What it handed down is taken back first from `own`, the block the host built
    (a refused block comes back untouched, spec §3.2.4): the bytes the application had not
    read stay readable before the reset's error, and the send NBLs are the host's again, to
    fail with the reset (else their sends are never answered and its `outstanding_nbls`
    never drains). What a layer below took out of it stays that layer's."""
    _not_offloaded(h, tcb, AppError("INTERNAL", f"connection {tcb.conn_id}: {LOST_BELOW}"), own)
    if tcb.reset or tcb.lifecycle.phase is Phase.CLOSED:
        return
    tcb.end_reason = LOST_BELOW
    h.emit(tcb.conn_id, "TcpIndicateAbort", {"path": "lost"})
    disconnect.app_disconnect(h, tcb, True, _ignore)


def _ignore(result: Any, err: AppError | None) -> None:
    """The `done` of the host's own abortive disconnect of a lost connection."""


def let_go_in(root: OffloadBlock) -> list[NdisOffloadHandle]:
    """The handles of a completed tree the host has let go (their owner gone): a layer below
    broke the contract (spec §9 item 8), raised once the rest is settled (`raise_if_broken`)."""
    return [
        b.offload_handle
        for b in walk(root)
        if b.offload_handle is not None and b.offload_handle.owner is None
    ]


def take_reserved(root: OffloadBlock) -> Any:
    """What the host kept on the root of a tree it sent down (`protocol_reserved`), taken off
    it. Looked for along the root's siblings: a layer below that put a stray block first
    (`let_go_in`) must not make the host lose the request it is answering."""
    block: OffloadBlock | None = root
    while block is not None:
        reserved = block.protocol_reserved
        if reserved is not None:
            block.protocol_reserved = None
            return reserved
        block = block.next_block
    return None


def _hand_down_out_of_order(tcb: Tcb) -> None:
    """Segments the host holds ahead of a gap go down after the initiate, forwarded (spec
    §4.6), where the target puts them in order: as at a terminate, the real kernel has
    acknowledged them and will never send them again, so they may not be dropped [EMU]. The
    gap's bytes are on their way: an upload's ordinary-path bytes from the old target and
    the socket's later ones, read by the host, take different roads. A FIN known ahead goes
    with them, and the target reports it (the host forgets it: an initiate that fails puts
    the forwarded segments back through the host, FIN included)."""
    carried = False  # the FIN, on the last segment held
    for segment in tcb.rx.drain_ooo():
        tcb.forward_q = grown(tcb.forward_q, segment)
        carried = carried or bool(segment[2] & TH_FIN)
    fin = tcb.rx.fin
    if fin is not None and not tcb.rx.fin_reached:  # one reached is in the TCP state handed down
        if not carried:
            tcb.forward_q = grown(tcb.forward_q, (fin, b"", TH_FIN))
        tcb.rx.fin = None


def _offloaded(h: HostStack, tcb: Tcb) -> None:
    tcb.lifecycle.fire(Event.INITIATE_OFFLOADED)
    disconnect.stop_fin_wait_2(h, tcb)  # the target's from now on (spec §8)
    h.stats.offloads_active += 1
    tcb.offload_refused = None  # as the `offloaded` event below says
    # an offloaded connection may now sit idle for long: the hops of its offload are packed as
    # a closed connection's are (`HopTrace.freeze`; trace.get reads them the same), 192 bytes
    # instead of a 304-byte ring buffer at ten thousand idle connections
    tcb.trace.freeze()
    # segments the host received while the initiate was in flight go down now (spec §4.6)
    if tcb.forward_q:
        forward(h, tcb, tcb.forward_q)
        tcb.forward_q = NO_ITEMS
    for done in tcb.offload_done:
        done(h.describe_offload(tcb), None)
    tcb.offload_done = NO_ITEMS
    h.emit(tcb.conn_id, "offloaded", {"path": h.path_names(tcb)})
    h.run_deferred(tcb)
    if tcb.recv_waiters:
        receive.post_receive(h, tcb)


def _not_offloaded(
    h: HostStack, tcb: Tcb, error: AppError, block: OffloadBlock | None = None
) -> None:
    """Not offloaded: the host keeps the connection, its data and its send NBLs (spec §3.2.4)."""
    tcb.lifecycle.fire(Event.INITIATE_FAILED)
    adapter.refused(h, tcb, error, completed=True)
    if tcb.handle is not None:
        h.table_remove(tcb.handle.id)
        tcb.handle = None
        assert tcb.binding is not None
        h.offloads_on[tcb.binding.id] -= 1
    if tcb.path is not None:
        h.unref(tcb.path)
        tcb.path = None
    if block is not None:
        d: TcpOffloadStateDelegated = block.delegated
        if d.BufferedData is not None:
            data = b"".join(bytes(v) for v in d.BufferedData.views())
            tcb.app_rx = [(memoryview(data), None), *tcb.app_rx]
            tcb.app_rx_bytes += len(data)
            tcb.rx.rcv_nxt += len(data)
        pos = offset_of(tcb.wire.isn, d.SndUna, tcb.wire.bytes_written)
        send.mark_returned(tcb, list(iter_chain(block.net_buffer_list_chain)))
        for nbl in iter_chain(block.net_buffer_list_chain):
            n = nbl.data_length
            tcb.sends = grown(tcb.sends, (nbl, pos, pos + n))
            pos += n
        block.net_buffer_list_chain = None
        if tcb.sends and not tcb.reset:
            # acknowledgements that came while the initiate was below found no send of the
            # host's to complete, and are not reported again (as after an upload)
            send.complete_host_sends(h, tcb, tcb.wire.acked())
        if tcb.sends:
            tcb.wire.watch_acks()
    # what arrived meanwhile is ours to process
    for off, data, flags in tcb.forward_q:
        receive.host_segment(h, tcb, off, data, flags)
    tcb.forward_q = NO_ITEMS
    receive.own_reading(h, tcb)
    disconnect.initiate_failed(h, tcb)  # the FIN_WAIT_2 timer is the host's still (spec §8)
    for done in tcb.offload_done:
        done(None, error)
    tcb.offload_done = NO_ITEMS
    receive.serve(h, tcb)
    h.run_deferred(tcb)


def forward(h: HostStack, tcb: Tcb, segments: list[tuple[int, bytes, int]]) -> None:
    """`NdisOffloadTcpForward`: one segment per NB, one NB per NBL, TCP header first (§4.6)."""
    assert tcb.handle is not None
    wire = tcb.wire
    nbls: list[NetBufferList] = []
    for off, data, flags in sorted(segments, key=lambda s: s[0]):
        for i in range(0, max(len(data), 1), MAX_SEGMENT_PAYLOAD):
            chunk = data[i : i + MAX_SEGMENT_PAYLOAD]
            last = i + MAX_SEGMENT_PAYLOAD >= len(data)
            # one socket read counts as pushed data (design: emulating the wire): PSH on the
            # last segment made of it, as a sender sets it at the end of its write (spec §4.1)
            seg_flags = TH_ACK | (TH_PSH | (flags & (TH_FIN | TH_RST)) if last else 0)
            raw = build_segment(
                wire.remote[1],
                wire.local[1],
                seq(wire.irs, off + i),
                seq(wire.isn, wire.bytes_written),
                seg_flags,
                chunk,
            )
            nbl = NetBufferList.for_data(raw)
            nbl.trace = tcb.trace
            nbl.protocol_reserved = tcb
            nbls.append(nbl)
    head = link_chain(nbls)
    if head is not None:
        h.ndis.NdisOffloadTcpForward(h, tcb.handle, head)


def forward_complete(h: HostStack, head: NetBufferList) -> None:
    for nbl in iter_chain(head):
        tcb: Tcb = nbl.protocol_reserved
        nbl.protocol_reserved = None
        if nbl.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS:
            # not processed: the host processes the segment itself after the upload (§4.6)
            tcb.upload_q = grown(tcb.upload_q, _unforward(tcb, nbl))
        # REQUEST_ABORTED: an RST arrived; the host drops it (spec §4.6)


def _unforward(tcb: Tcb, nbl: NetBufferList) -> tuple[int, bytes, int]:
    raw = b"".join(nbl.views()) if nbl.data_length else b""
    sequence, flags, payload = parse_segment(raw)
    return offset_of(tcb.wire.irs, sequence, tcb.rx.rcv_nxt), bytes(payload), flags
