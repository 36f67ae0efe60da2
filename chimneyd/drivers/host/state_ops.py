"""Query, update and invalidate from the host (spec §3.3, §3.4, §3.5)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from chimneyd.ndis.blocks import (
    BACKLOG_UNSUPPORTED,
    TCP_FLAG_KEEP_ALIVE_RESTART,
    TCP_FLAG_MAX_RT_RESTART,
    TCP_FLAG_UPDATE_RCV_WND,
    OffloadBlock,
    PathOffloadStateCached,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import LIVE, Event, Phase
from chimneyd.ndis.status import NdisStatus

from ..delegated import snapshot
from ..queues import NO_ITEMS, grown
from . import adapter, host_reasons, offload, send, terminate
from .errors import raise_if_broken
from .tcb import AppError, Done, HostObject, Tcb, ndis_error

if TYPE_CHECKING:
    from .stack import HostStack

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
#: Cached flags that ask the target for something once (spec §2.2), not a standing setting.
_ONE_SHOT = TCP_FLAG_KEEP_ALIVE_RESTART | TCP_FLAG_MAX_RT_RESTART | TCP_FLAG_UPDATE_RCV_WND
#: Phases in which the host may update a connection (never an invalidated one, spec §3.1).
_UPDATABLE = frozenset({Phase.OFFLOADED, Phase.UPLOAD_SUGGESTED, Phase.UPLOAD_REQUESTED})
#: a connection changing hands, as `stack._MOVING`: the requests it holds wait till it is over
_MOVING = frozenset({Phase.OFFLOADING, Phase.TERMINATING})


def _not_offloaded(tcb: Tcb) -> AppError:
    return AppError("INVALID_STATE", f"connection {tcb.conn_id} is {tcb.state}, not offloaded")


def _tcp_tree(tcb: Tcb, **state: object) -> OffloadBlock:
    """neighbor (placeholder) → path (placeholder) → the connection's TCP block."""
    root = new_neighbor_block(None)
    root.add_dependent(new_path_block(None)).add_dependent(new_tcp_block(tcb.handle, **state))  # type: ignore[arg-type]
    return root


def app_query(h: HostStack, tcb: Tcb, done: Done) -> None:
    """`tcp.query`: `NdisQueryOffloadState` of the connection's TCP object (spec §3.3)."""
    if tcb.lifecycle.phase not in LIVE or tcb.handle is None:
        done(None, _not_offloaded(tcb))
        return
    tcb.lifecycle.fire(Event.QUERY)
    send.flush_sends(h, tcb)
    root = _tcp_tree(tcb, delegated=TcpOffloadStateDelegated())
    root.protocol_reserved = (done, tcb)
    tcb.pending_ops += 1
    assert tcb.binding is not None
    h.ndis.NdisQueryOffloadState(h, tcb.binding, root)


def _own_block(
    root: OffloadBlock, owner: Tcb | HostObject, missing: list[Tcb | HostObject]
) -> OffloadBlock:
    """The block of a completed tree that names `owner`, the object the request was for: by
    its handle, not by place, as a layer below may have put a stray block in (`let_go`). A
    tree without it broke the contract and says nothing of how the operation went: it is
    settled as failed — the host terminates what failed (spec §3.3, §3.4, §3.5) — so that the
    request is answered and what waits behind it goes on; `owner` goes in `missing`, and the
    completion raises once settled (`_let_go`)."""
    handle = owner.handle
    block = next((b for b in walk(root) if b.offload_handle is handle), None)
    if block is not None:
        return block
    missing.append(owner)
    if isinstance(owner, Tcb):
        block = new_tcp_block(None)
    elif owner.block_kind == "path":
        block = new_path_block(None)
    else:
        block = new_neighbor_block(None)
    block.status = S.NDIS_STATUS_FAILURE
    return block


def _let_go(call: str, let_go: list[NdisOffloadHandle], missing: list[Tcb | HostObject]) -> None:
    """The completion named handles the host has let go (spec §9 item 8), or lacked the block
    of the object it was for: said once the rest is settled, as `offload.complete` does, so
    that the request is answered all the same (the engine then fails no request for it)."""
    unsettled = f"without the block of {', '.join(map(repr, missing))}" if missing else ""
    raise_if_broken(call, unsettled, frozenset(), let_go)


def _completed(
    root: OffloadBlock, missing: list[Tcb | HostObject]
) -> tuple[Done, Tcb, OffloadBlock]:
    """The request, the connection and its TCP block of a completed one-connection tree."""
    done: Done
    tcb: Tcb
    done, tcb = offload.take_reserved(root)
    tcb.pending_ops -= 1
    return done, tcb, _own_block(root, tcb, missing)


def query_complete(h: HostStack, root: OffloadBlock) -> None:
    let_go = offload.let_go_in(root)
    missing: list[Tcb | HostObject] = []  # whose block it lacked (`_own_block`)
    done, tcb, block = _completed(root, missing)
    if block.status == SUCCESS:
        tcb.delegated = snapshot(block.delegated, "query", h.ndis.clock())
        backlog = tcb.delegated.SendBacklogSize
        if backlog and backlog != BACKLOG_UNSUPPORTED:
            tcb.send_backlog = backlog  # the send pacing follows it (spec §5.3)
            send.pump(h, tcb)
        done(tcb.delegated.as_map(), None)
    else:
        done(None, ndis_error(block.status, " query failed: hardware state corrupt"))
        # the host terminates what it could not query (spec §3.3): a target that found its
        # state corrupt follows with its own retrieve (§3.7), which finds this under way; a
        # layer that raised has no hardware to report and would never ask
        terminate.start(h, tcb)
    h.run_deferred(tcb)
    _let_go("query", let_go, missing)


def app_update(h: HostStack, tcb: Tcb, changes: dict[str, int], done: Done) -> None:
    """`tcp.update`: new cached TCP variables for the offloaded connection, `NdisUpdateOffload`
    with its TCP block (spec §3.4). The target applies them to the socket where Linux has a
    knob (`drivers/target/cached.py`: keepalive, Nagle, MaxRT, TTL, TOS, the receive window;
    not FlowLabel or UserPriority). A new `InitialRcvWnd` sets `TCP_FLAG_UPDATE_RCV_WND`; the
    restart flags are the caller's to set in `Flags`, and are sent with this update only."""
    if tcb.lifecycle.phase not in _UPDATABLE or tcb.handle is None or tcb.cached is None:
        done(None, _not_offloaded(tcb) if tcb.lifecycle.phase not in LIVE else _invalidated(tcb))
        return
    stale = _invalidated_under(tcb)
    if stale is not None:
        # a connection depending on an invalidated path or neighbor is as good as
        # invalidated: it takes no update, only its terminate (spec §3.1, §3.5, §9 item 7)
        done(None, _invalidated(tcb, f"its {stale}"))
        return
    if tcb.updating:
        # at most one update in flight per object (spec §3.1)
        tcb.deferred = grown(tcb.deferred, lambda: app_update(h, tcb, changes, done))
        return
    try:
        cached = dataclasses.replace(tcb.cached, **changes)
    except TypeError as exc:
        done(None, AppError("INVALID_PARAMS", f"not a cached TCP variable: {exc}"))
        return
    if cached.InitialRcvWnd != tcb.cached.InitialRcvWnd:
        cached.Flags |= TCP_FLAG_UPDATE_RCV_WND  # the window changed: the target must honour it
    tcb.lifecycle.fire(Event.UPDATE)
    send.flush_sends(h, tcb)
    root = _tcp_tree(tcb, cached=cached)
    root.protocol_reserved = (done, tcb)
    tcb.pending_ops += 1
    tcb.updating = True
    assert tcb.binding is not None
    h.ndis.NdisUpdateOffload(h, tcb.binding, root)


def _invalidated(tcb: Tcb, what: str = "") -> AppError:
    whose = f"connection {tcb.conn_id}: {what} is" if what else f"connection {tcb.conn_id} is"
    return AppError("INVALID_STATE", f"{whose} invalidated: no update (spec §3.1)")


def _invalidated_under(tcb: Tcb) -> str | None:
    """ "path" or "neighbor" if the object `tcb` depends on is invalidated, else None."""
    path = tcb.path
    if path is None:
        return None
    if path.lifecycle.phase is Phase.INVALIDATED:
        return "path"
    neighbor = path.parent
    if neighbor is not None and neighbor.lifecycle.phase is Phase.INVALIDATED:
        return "neighbor"
    return None


def app_update_object(
    h: HostStack, tcb: Tcb, what: str, changes: dict[str, object], done: Done
) -> None:
    """`tcp.update` with `object` "neighbor" or "path": new cached variables for the neighbor
    or path the connection depends on (an ARP change of `DlDestinationAddress`, an ICMP one of
    `PathMtu`), `NdisUpdateOffload` of that object's block alone (spec §3.4 (a)). Every
    connection sharing the object sees it: each layer below copies the values into its
    object, a teaming MUX into each NIC's copy. A path's `NextHop` moves it under another
    neighbor instead (`app_move_path`, spec §3.4 (b))."""
    if what == "path" and "NextHop" in changes:
        rest = dict(changes)
        next_hop = rest.pop("NextHop")
        assert isinstance(next_hop, bytes)
        app_move_path(h, tcb, next_hop, rest, done)
        return
    path = _updatable_path(tcb, done)
    if path is None:
        return
    if what == "neighbor" and path.moving:
        # the connection's neighbor is the one its path's move puts it under, once the move
        # is over: the update goes after it, in the order asked, to that one (spec §3.4 (b))
        _behind_update(h, path, tcb, done, lambda: app_update_object(h, tcb, what, changes, done))
        return
    neighbor = path.parent
    assert neighbor is not None
    obj = neighbor if what == "neighbor" else path
    stale = _invalidated_under(tcb)
    if stale is not None and (what == "path" or stale == "neighbor"):
        # no update of an invalidated object, nor of a path under one (spec §3.1, §3.5)
        done(None, _invalidated(tcb, f"its {stale}"))
        return
    if obj.lifecycle.phase is not Phase.OFFLOADED or obj.cached is None:
        done(None, AppError("INVALID_STATE", f"the {what} is {obj.lifecycle.phase.value}"))
        return
    if obj.updating:
        # at most one update of an object in flight (spec §3.1): after that one, in order
        _behind_update(h, obj, tcb, done, lambda: app_update_object(h, tcb, what, changes, done))
        return
    try:
        cached = dataclasses.replace(obj.cached, **changes)  # type: ignore[arg-type]
    except TypeError as exc:
        done(None, AppError("INVALID_PARAMS", f"not a cached {what} variable: {exc}"))
        return
    obj.lifecycle.fire(Event.UPDATE)
    obj.updating = True
    obj.pending_ops += 1  # no terminate of it while the update is below (spec §3.1)
    if what == "neighbor":
        root = new_neighbor_block(neighbor.handle, cached=cached)  # type: ignore[arg-type]
    else:
        root = new_neighbor_block(None)  # the path's neighbor, unchanged: a placeholder
        ipv6 = len(path.key[2]) == 16  # its key: ("path", binding id, local IP, remote IP)
        root.add_dependent(new_path_block(path.handle, cached=cached, ipv6=ipv6))  # type: ignore[arg-type]
    root.protocol_reserved = (done, obj)
    # the object's handle has no trace of its own: it lends the connection's for this call,
    # so `trace.get` of the connection shows the update's hops down to every NIC's copy
    assert obj.handle is not None
    obj.handle.trace = tcb.trace
    h.ndis.NdisUpdateOffload(h, obj.binding, root)


class PathMove:
    """A next-hop change in flight: the path of `tcb` moving under the neighbor of `next_hop`
    (spec §3.4 (b)), with new cached values for the path (`cached`, or None: none)."""

    __slots__ = ("cached", "done", "neighbor", "next_hop", "path", "tcb")

    def __init__(
        self,
        tcb: Tcb,
        path: HostObject,
        next_hop: bytes,
        cached: PathOffloadStateCached | None,
        done: Done,
    ) -> None:
        self.tcb = tcb
        self.path = path
        self.next_hop = next_hop
        self.cached = cached
        self.done = done
        self.neighbor: HostObject | None = None  # once settled, held until the move is over


def app_move_path(
    h: HostStack, tcb: Tcb, next_hop: bytes, changes: dict[str, object], done: Done
) -> None:
    """`tcp.update` with `object` "path" and `NextHop`: move the connection's path, and every
    connection on it, under the binding's neighbor of that next hop (spec §3.4 (b)). The
    host's steps: (1) it does not invalidate the old neighbor — that would send every other
    path under it up too [EMU: step 1 is optional] — but moves a path whose old neighbor is
    invalidated (`tcp.invalidate`, a fault) as if it had; (2) it offloads the new neighbor
    alone if it is not offloaded yet; (3) `NdisUpdateOffload` whose root names the new
    neighbor and whose dependent names the path (with its new cached values, if any); (4) the
    old neighbor is terminated once no path hangs under it
    (`terminate.release_unused_objects`)."""
    path = _updatable_path(tcb, done)
    if path is None:
        return
    stale = _invalidated_under(tcb)
    if stale == "path":
        # the update names the path: no update of an invalidated object (spec §3.1, §9 item 7)
        done(None, _invalidated(tcb, "its path"))
        return
    # a path under an invalidated neighbor moves: §3.4's procedure itself invalidates the old
    # neighbor first (its optional step 1) and then moves the paths away from it; the update
    # names the new neighbor and the path, not the old one (§9 item 7), and the path is not
    # invalidated with its neighbor. Its connections go up all the same (the target asks them
    # up, §3.5); a later offload of the path goes under the new neighbor
    if path.lifecycle.phase is not Phase.OFFLOADED or path.cached is None:
        done(None, AppError("INVALID_STATE", f"the path is {path.lifecycle.phase.value}"))
        return
    if path.updating:
        # one update of the path in flight (spec §3.1): after that one, in order
        _behind_update(h, path, tcb, done, lambda: app_move_path(h, tcb, next_hop, changes, done))
        return
    assert path.parent is not None
    if path.parent.key == offload.neighbor_key(path.binding, next_hop):
        if stale is not None:
            # to the invalidated neighbor it is under: nothing to move, and a path under an
            # invalidated neighbor takes no update of its values (spec §3.5)
            done(None, _invalidated(tcb, f"its {stale}"))
            return
        # under that neighbor already: nothing moves (spec §3.4: a new MAC for the same
        # neighbor is an update of it, not a move); new values of the path still go down
        if changes:
            app_update_object(h, tcb, "path", changes, done)
        else:
            done({"status": SUCCESS.name}, None)
        return
    cached: PathOffloadStateCached | None = None
    if changes:
        assert isinstance(path.cached, PathOffloadStateCached)
        try:
            cached = dataclasses.replace(path.cached, **changes)  # type: ignore[arg-type]
        except TypeError as exc:
            done(None, AppError("INVALID_PARAMS", f"not a cached path variable: {exc}"))
            return
    # the path is held from now on: a connection new to it waits (`offload.flush_initiates`),
    # as do another update and an invalidate of it, and its terminate (spec §3.1)
    path.updating = path.moving = True
    path.pending_ops += 1
    _move_when_settled(h, PathMove(tcb, path, next_hop, cached, done))


def _move_when_settled(h: HostStack, mv: PathMove) -> None:
    """Step 2 of a next-hop change, once the new neighbor is settled: a neighbor being
    offloaded or updated (or invalidated or failed, on its way out) is waited for (spec §3.1);
    one being terminated stands for its next hop no more, and a fresh one is offloaded; an
    offloaded one is moved under at once, one not offloaded is offloaded first, alone."""
    path = mv.path
    key = offload.neighbor_key(path.binding, mv.next_hop)
    # one being terminated is leaving (`offload.current`): the move goes under a fresh one,
    # rather than wait for a terminate a teaming MUX may hold back while a NIC is out
    neighbor = offload.current(h, key)
    if neighbor is not None and neighbor.updating:
        neighbor.update_waiters = grown(neighbor.update_waiters, lambda: _move_when_settled(h, mv))
        return
    if neighbor is not None and neighbor.lifecycle.phase in offload.SETTLING:
        h.moves_waiting.append(lambda: _move_when_settled(h, mv))
        return
    if (neighbor is None or neighbor.lifecycle.phase is not Phase.OFFLOADED) and (
        path.binding.id in h.paused
    ):
        # after NDIS_STATUS_OFFLOAD_PAUSE (or UPLOAD_ALL) the host starts no new offload until
        # the RESUME (spec §5.5): not the new neighbor's either; refused as a connection's
        # offload is then, before anything moved
        _move_refused(h, mv, ndis_error(S.NDIS_STATUS_OFFLOAD_PAUSE, _PAUSED))
        return
    new = neighbor is None or neighbor.lifecycle.phase is not Phase.OFFLOADED
    withheld = host_reasons.withholds(h, path.binding) if new else None
    if withheld is not None:
        # nor while one of the host's own reasons holds for the target (spec §6.2): it is
        # uploading every connection there
        _move_refused(h, mv, withheld)
        return
    refused = adapter.object_refusal(h, path.binding, len(path.key[2]) == 16) if new else None
    if refused == adapter.ASKED:
        # after a RESUME the host reads the target's capabilities again before it offloads
        # anything new there (spec §5.5), the new neighbor as a connection: the move waits
        # for them (`adapter.oid_complete`)
        h.moves_waiting.append(lambda: _move_when_settled(h, mv))
        return
    if isinstance(refused, AppError):
        # they offer no chimney for the path any more (spec §1.3, §8): nothing moved
        _move_refused(h, mv, refused)
        return
    neighbor = offload.host_object(h, key, "neighbor", path.binding, None)
    neighbor.refs += 1  # held for the move: the path's count goes over to it at the end
    mv.neighbor = neighbor
    if neighbor.lifecycle.phase is Phase.OFFLOADED:
        _send_move(h, mv)
        return
    root = offload.object_block(h, neighbor, len(path.key[2]) == 16)
    assert neighbor.handle is not None
    # the new neighbor's handle lends the asking connection's trace for its initiate, so
    # `trace.get` shows step 2's hops too
    neighbor.handle.trace = mv.tcb.trace
    # what to do once it is back, and what it offloads anew: a completion lacking the
    # neighbor's block settles it first (`offload.complete`)
    root.protocol_reserved = (lambda: _neighbor_offloaded(h, mv, root), [(neighbor, root)])
    h.ndis.NdisInitiateOffload(h, neighbor.binding, root)


_PAUSED = " offload paused by the target: the new neighbor was not offloaded, nothing moved"


def _move_refused(h: HostStack, mv: PathMove, error: AppError) -> None:
    """The move ends before step 3: the path and its connections stay as they were, and
    what waited behind the move goes (the path too, if its connections left meanwhile)."""
    path = mv.path
    path.updating = path.moving = False
    path.pending_ops -= 1
    mv.done(None, error)
    _after_update(h, path)
    terminate.release_unused_objects(h)


def _neighbor_offloaded(h: HostStack, mv: PathMove, root: OffloadBlock) -> None:
    """Step 2 is back (`root`, the neighbor's block alone): the new neighbor is offloaded
    (step 3 goes down), or not (the move fails before anything moved: the path and its
    connections stay as they were)."""
    neighbor = mv.neighbor
    assert neighbor is not None
    if neighbor.handle is not None:
        neighbor.handle.trace = None
    if neighbor.lifecycle.phase is Phase.OFFLOADED:
        _send_move(h, mv)
        return
    neighbor.refs -= 1
    path = mv.path
    path.updating = path.moving = False
    path.pending_ops -= 1
    # NDIS_STATUS names the status, as the contract has it (the block's, spec §3.2.4)
    mv.done(None, ndis_error(root.status, " the new neighbor was not offloaded: nothing moved"))
    _after_update(h, path)


def _send_move(h: HostStack, mv: PathMove) -> None:
    """Step 3: `NdisUpdateOffload`, root the new neighbor, its dependent the path (§3.4 (b))."""
    path, neighbor = mv.path, mv.neighbor
    assert neighbor is not None and neighbor.handle is not None and path.handle is not None
    # one update of the new neighbor in flight too, and no terminate of it (spec §3.1)
    neighbor.updating = True
    neighbor.pending_ops += 1
    neighbor.lifecycle.fire(Event.UPDATE)
    path.lifecycle.fire(Event.UPDATE)
    root = new_neighbor_block(neighbor.handle)
    root.add_dependent(new_path_block(path.handle, cached=mv.cached, ipv6=len(path.key[2]) == 16))
    root.protocol_reserved = mv
    # the path's handle lends the asking connection's trace for the call (as
    # `app_update_object`): the move's hops show in it, one per layer and NIC
    path.handle.trace = mv.tcb.trace
    h.ndis.NdisUpdateOffload(h, path.binding, root)


def _move_complete(
    h: HostStack, tree: OffloadBlock, mv: PathMove, missing: list[Tcb | HostObject]
) -> None:
    """Step 3 is back. Moved: the path hangs under the new neighbor (its connections with
    it), a later offload of the path goes there too, and step 4 terminates the old neighbor
    once nothing hangs under it. Failed: every layer goes on as before; the host terminates
    what failed (spec §3.4) — the path's connections go up, the path with the last of them,
    as after a failed update of the path (`_object_update_complete`); and, when the new
    neighbor's block failed, that neighbor as after a failed update of it."""
    path, neighbor = mv.path, mv.neighbor
    assert neighbor is not None and neighbor.handle is not None and path.handle is not None
    path.handle.trace = None
    neighbor.updating = path.updating = path.moving = False
    neighbor.pending_ops -= 1
    path.pending_ops -= 1
    # by handle: a layer below may have put a stray block in (`let_go`), or lost one
    root = _own_block(tree, neighbor, missing)
    pblock = _own_block(tree, path, missing)
    if missing:
        # the host cannot tell whether the layers below moved the path: settled as failed
        # (`_own_block`), its connections go up and it goes with them, but the new neighbor
        # may have it under it below, and goes only once the path's terminate has completed
        # (spec §3.1, §6.3 [EMU]): the move's hold on it stays until then (`terminate`)
        path.maybe_under = neighbor
    else:
        neighbor.refs -= 1  # held for the move (`_move_when_settled`)
    if root.status == SUCCESS and pblock.status == SUCCESS:
        old = path.parent
        assert old is not None
        path.parent = neighbor  # spec §2.3: the host's tree follows
        if path.refs:  # the path's count of its neighbor goes with it (`HostStack.ref`)
            old.refs -= 1
            neighbor.refs += 1
        if mv.cached is not None:
            path.cached = pblock.cached
        assert path.cached is not None
        # its connections' `tcp.info` shows the objects; a later offload of the path carries
        # the values, under that neighbor
        h.remember_update(path.key, path.cached)
        h.remember_next_hop(path.key, mv.next_hop)
        mv.done({"status": SUCCESS.name}, None)
    else:
        status = pblock.status if pblock.status != SUCCESS else root.status
        mv.done(
            None,
            ndis_error(status, " next-hop change failed: the path's connections are uploaded"),
        )
        path.lifecycle.fire(Event.HARDWARE_FAILURE)
        _terminate_dependents(h, path)
        if root.status != SUCCESS:
            # the new neighbor's block failed too: the host terminates it as any object whose
            # update failed (`_object_update_complete`): failed, it takes no new connection
            # nor move (`offload.SETTLING`), every connection under it goes up — those of
            # the paths it held before the move too — and it goes with the last (spec §3.1,
            # §3.4)
            neighbor.lifecycle.fire(Event.HARDWARE_FAILURE)
            _terminate_dependents(h, neighbor)
    _after_update(h, neighbor)
    _after_update(h, path)
    terminate.release_unused_objects(h)  # step 4: the old neighbor, if nothing hangs under it


def _after_update(h: HostStack, obj: HostObject) -> None:
    waiters, obj.update_waiters = obj.update_waiters, NO_ITEMS
    for waiter in waiters:  # the first goes down, the others wait behind it again
        waiter()


def _updatable_path(tcb: Tcb, done: Done) -> HostObject | None:
    """The path of an offloaded connection a state operation may act on; None, the request
    answered, when the connection is not offloaded or its offload is being undone (spec §3.1,
    §3.5)."""
    path = tcb.path
    if tcb.lifecycle.phase in _UPDATABLE and tcb.handle is not None and path is not None:
        return path
    done(None, _not_offloaded(tcb) if tcb.lifecycle.phase not in LIVE else _invalidated(tcb))
    return None


def _behind_update(
    h: HostStack,
    obj: HostObject,
    tcb: Tcb,
    done: Done,
    retry: Callable[[], None],
    held: bool = True,
) -> None:
    """Queue a request behind the object's update in flight (spec §3.1: one call per object),
    replayed in order after it (`_after_update`), as `_unless_closed` says."""
    obj.update_waiters = grown(obj.update_waiters, _unless_closed(h, tcb, done, retry, held))


def _unless_closed(
    h: HostStack, tcb: Tcb, done: Done, retry: Callable[[], None], held: bool = False
) -> Callable[[], None]:
    """A request waiting behind an object's update, replayed after it: unless its connection
    was closed meanwhile (the object's update holds no close of the others on it), when it is
    answered as a fresh call on that connection is, and as any other request that waited
    while its connection closed (`stack.request`): NOT_FOUND. A request the host holds while
    its connection changes hands (`held`: an update, not an invalidate) is held so now too,
    behind the requests held before it: its connection may be in the middle of its close (its
    terminate below), and is answered once that is over, as a fresh call made now would be."""

    def replay() -> None:
        if h.tcbs.get(tcb.conn_id) is not tcb:
            done(None, AppError("NOT_FOUND", f"no connection {tcb.conn_id}"))
            return
        if held and (
            tcb.lifecycle.phase in _MOVING
            or (tcb.deferred and not tcb.replaying)
            or tcb.initiate_queued
        ):
            # `run_deferred` replays it, NOT_FOUND if it closed (a new closure: one naming
            # itself is one a compiled build cannot make)
            h.defer(tcb, _unless_closed(h, tcb, done, retry, held))
            return
        retry()

    return replay


def _object_update_complete(
    h: HostStack, root: OffloadBlock, done: Done, obj: HostObject, missing: list[Tcb | HostObject]
) -> None:
    obj.pending_ops -= 1
    obj.updating = False
    block = _own_block(root, obj, missing)
    assert obj.handle is not None
    obj.handle.trace = None  # lent for the update only (`app_update_object`)
    if block.status == SUCCESS:
        obj.cached = block.cached
        h.remember_update(obj.key, block.cached)  # the next offload of it carries them
        done({"status": SUCCESS.name}, None)
    else:
        # the layers below carry on with the values from before; the host terminates what
        # failed (spec §3.4): every connection on the object, and the object with the last
        done(
            None,
            ndis_error(
                block.status, f" {obj.block_kind} update failed: its connections are uploaded"
            ),
        )
        # and the object with them: no connection is linked under it any more (one that comes
        # waits for it to be gone, `offload.flush_initiates`), else it would keep the object
        # offloaded, with the values the update left on the layers that took it, for its life
        obj.lifecycle.fire(Event.HARDWARE_FAILURE)
        _terminate_dependents(h, obj)
    waiters, obj.update_waiters = obj.update_waiters, NO_ITEMS
    for waiter in waiters:  # the first goes down, the others wait behind it again
        waiter()
    terminate.release_unused_objects(h)  # the object, if its connections left meanwhile


def update_complete(h: HostStack, root: OffloadBlock) -> None:
    let_go = offload.let_go_in(root)
    reserved = offload.take_reserved(root)
    missing: list[Tcb | HostObject] = []  # whose block it lacked (`_own_block`)
    if isinstance(reserved, PathMove):
        _move_complete(h, root, reserved, missing)
    else:
        done, owner = reserved
        if isinstance(owner, HostObject):
            _object_update_complete(h, root, done, owner, missing)
        else:
            _tcp_update_complete(h, root, done, owner, missing)
    _let_go("update", let_go, missing)


def _tcp_update_complete(
    h: HostStack, root: OffloadBlock, done: Done, tcb: Tcb, missing: list[Tcb | HostObject]
) -> None:
    tcb.pending_ops -= 1
    block = _own_block(root, tcb, missing)
    tcb.updating = False
    if block.status == SUCCESS:
        # the restart and window flags ask for something once, in this update (spec §2.2)
        tcb.cached = dataclasses.replace(block.cached, Flags=block.cached.Flags & ~_ONE_SHOT)
        done({"status": SUCCESS.name}, None)
    else:
        # the target carries on; the host terminates what failed (spec §3.4)
        done(None, ndis_error(block.status, " update failed: the connection is uploaded"))
        terminate.start(h, tcb)
    h.run_deferred(tcb)


def app_invalidate(h: HostStack, tcb: Tcb, what: str, done: Done) -> None:
    """Invalidate the connection's TCP, path or neighbor object (spec §3.5): the target stops
    sending on every connection that depends on it and asks for each to be uploaded."""
    path = _updatable_path(tcb, done)
    if path is None:
        return
    if what == "neighbor" and path.moving:
        # of the neighbor the path's move puts the connection under, once it is over (as an
        # update of it, `app_update_object`): not of the one it leaves (spec §3.4 (b), §3.5)
        _behind_update(h, path, tcb, done, lambda: app_invalidate(h, tcb, what, done), held=False)
        return
    neighbor = path.parent
    assert neighbor is not None
    obj = {"neighbor": neighbor, "path": path}.get(what)
    if obj is not None and obj.lifecycle.phase is not Phase.OFFLOADED:
        done(None, AppError("INVALID_STATE", f"the {what} is {obj.lifecycle.phase.value}"))
        return
    if obj is not None and obj.updating:
        # after the object's update, as a second update waits: its handle lends the trace of
        # the connection that asked for that update (`app_update_object`) for the call
        _behind_update(h, obj, tcb, done, lambda: app_invalidate(h, tcb, what, done), held=False)
        return
    root = new_neighbor_block(neighbor.handle if what == "neighbor" else None)
    pblock = root.add_dependent(new_path_block(path.handle if what == "path" else None))
    owner: Tcb | HostObject
    if what == "tcp":
        pblock.add_dependent(new_tcp_block(tcb.handle))
        tcb.lifecycle.fire(Event.INVALIDATE)
        owner = tcb
    else:
        assert obj is not None
        obj.lifecycle.fire(Event.INVALIDATE)  # no new connection links to it (spec §3.4 step 1)
        owner = obj
    # no terminate of the object while its invalidate is in flight (spec §3.1, §9 item 7)
    owner.pending_ops += 1
    send.flush_sends(h, tcb)
    root.protocol_reserved = (done, owner)
    assert tcb.binding is not None
    h.ndis.NdisInvalidateOffload(h, tcb.binding, root)


def _depending_on(h: HostStack, obj: Tcb | HostObject) -> list[Tcb]:
    """The connections an invalidate of `obj` concerned: it, or those on the path or
    neighbor (a walk of every connection, on a failed invalidate only)."""
    if isinstance(obj, Tcb):
        return [obj]
    return [
        tcb
        for tcb in h.tcbs.values()
        if tcb.path is not None and (tcb.path is obj or tcb.path.parent is obj)
    ]


def _terminate_later(h: HostStack, tcb: Tcb) -> Callable[[], None]:
    return lambda: terminate.start(h, tcb)


def _terminate_dependents(h: HostStack, obj: Tcb | HostObject) -> None:
    """Terminate the connections on `obj` after a failed invalidate or object update."""
    for tcb in _depending_on(h, obj):
        if tcb.lifecycle.phase is Phase.OFFLOADING:
            # its initiate, linking it under the object, is still below: it goes up once
            # that is over (spec §3.5: all that depends on an invalidated object goes up)
            tcb.deferred = grown(tcb.deferred, _terminate_later(h, tcb))
        else:
            terminate.start(h, tcb)


def invalidate_complete(h: HostStack, root: OffloadBlock) -> None:
    let_go = offload.let_go_in(root)
    done: Done
    owner: Tcb | HostObject
    done, owner = offload.take_reserved(root)
    owner.pending_ops -= 1
    missing: list[Tcb | HostObject] = []  # whose block it lacked (`_own_block`)
    status = _own_block(root, owner, missing).status
    if status == SUCCESS:
        done({"status": SUCCESS.name}, None)
    else:
        done(None, ndis_error(status, " invalidate failed: hardware state corrupt"))
        # the invalidate was for getting these connections up, and a layer that failed it may
        # never ask for that (one that raised has no hardware to report): the host asks
        # itself, as after a failed update (spec §3.4); a target's own §3.7 retrieve then
        # finds the terminate under way
        _terminate_dependents(h, owner)
    if isinstance(owner, Tcb):
        h.run_deferred(owner)  # a terminate that waited for it
    else:
        terminate.release_unused_objects(h)  # the object, if its connections left meanwhile
    _let_go("invalidate", let_go, missing)
