"""The next-hop change at the MUX (spec §3.4 (b)): an update whose root names a neighbor and
whose dependents name paths that hang under another one moves those paths under it.

Each NIC holds its own copies (`objects`), so the move is made NIC by NIC, in up to three
steps, each one MUX call split by NIC (`trees.MuxCall` with `relink` set):

1. copies: a NIC holding a copy of a moving path but none of the new neighbor is given one
   (an initiate of the MUX's own, from the state it keeps, as `MuxIm._instance_for` does;
   one per NIC: a NIC that fails before completing it is left out, `lower_failed`);
2. move: each NIC gets an update moving its path copies under its copy of the new neighbor
   (with the cached values the layer above sent, and the new neighbor's to every NIC that
   has a copy of it);
3. undo, only when a NIC failed step 1 or 2: the copies the other NICs did move go back under
   the old neighbor's copies, with the cached values the MUX had before. A copy whose NIC
   fails that too stays where that NIC has it (`Instance.under`), its connections there are
   asked up (PAUSE above, as a failover's are, `failover.strays`), and a terminate of the
   new neighbor from above holds back that NIC's copy of it until the path's copy has gone
   (`MuxIm._terminate`).

The update completes above once, when the last step is back: every block SUCCESS when every
NIC did its part, else every block FAILURE with nothing moved (spec §3.4: after a failed
update everything goes on as before, and the host deals with the objects that failed).

A copy a NIC cannot take a state operation on (being terminated, or corrupt: spec §3.1, §3.7),
or on a NIC that failed or was taken out (failover is asking its connections up), is not
moved: its connections are on their way up, and it stays under the old neighbor's copy until
the MUX terminates both; a terminate of the old neighbor from above holds back that copy of
it until then (`MuxIm._terminate`), and sends the rest of its tree at once.

While the move is under way, connections new to a moving path wait (`MuxIm._settling`), as
do a terminate of any object in it (its copies have an operation below them, spec §3.1) and
an invalidate (`MuxIm._moving`: the move's updates must not reach an invalidated copy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chimneyd.ndis.blocks import BlockKind, BlockRole, OffloadBlock, walk
from chimneyd.ndis.lifecycle import Event, Phase
from chimneyd.ndis.status import OFFLOADED_STATUSES, NdisStatus
from chimneyd.ndis.trace import HopTrace

from . import failover
from .objects import Instance, Lower, MuxConnection, VirtualObject
from .trees import MuxCall, mirror_block

if TYPE_CHECKING:
    from .mux import MuxIm

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS


class Move:
    """One copy of a moving path on one NIC: from the old neighbor's copy to the new one's."""

    __slots__ = ("back", "down", "neighbor_up", "path", "to", "up")

    def __init__(self, up: OffloadBlock, neighbor_up: OffloadBlock, path: Instance) -> None:
        self.up = up  # the path's block in the update from above
        self.neighbor_up = neighbor_up  # the new neighbor's block there
        self.path = path
        self.to: Instance | None = None  # the new neighbor's copy on the path copy's NIC
        self.down: OffloadBlock | None = None  # its block in its NIC's update (step 2)
        self.back: OffloadBlock | None = None  # its block in its NIC's undo (step 3)


class Relink:
    """A next-hop change in flight at the MUX."""

    __slots__ = (
        "abandoned",
        "copying",
        "failed",
        "moved",
        "moves",
        "named",
        "neighbors",
        "new_copies",
        "paths",
        "root",
        "saved_im_reserved",
        "stage",
        "touched",
        "trace",
        "vobjs",
    )

    def __init__(self, root: OffloadBlock) -> None:
        self.root = root
        self.saved_im_reserved: Any = root.im_reserved
        self.stage = "copies"  # then "move", "undo" if a NIC failed its part, and "done"
        self.moves: list[Move] = []
        # (path, new neighbor): every path that moves, with a copy on a NIC or none yet
        self.paths: list[tuple[VirtualObject, VirtualObject]] = []
        # (the neighbor's block above, a live copy of it): each gets the update's values
        self.neighbors: list[tuple[OffloadBlock, Instance]] = []
        self.new_copies: list[Instance] = []  # made by step 1
        # step 1, one initiate per NIC: lower binding id -> its call, until it is back
        self.copying: dict[int, MuxCall] = {}
        # step 1's calls to NICs that failed before completing them (`lower_failed`)
        self.abandoned: list[MuxCall] = []
        self.named: list[VirtualObject] = []  # the objects the update names
        self.vobjs: list[VirtualObject] = []  # those, and the neighbors paths move from
        self.touched: list[Instance] = []  # copies with this update below them (pending_ops)
        self.failed = False
        self.moved: list[Move] = []  # moved by their NIC in step 2
        # the trace the layer above lent its handle of a moving path for the update (a host
        # moving a connection's path): the MUX lends it on to the copies of each step's
        # calls, so every NIC's hops show in it (as `MuxIm._relay_op` does for an update)
        self.trace: HopTrace | None = None


def plan(mux: MuxIm, root: OffloadBlock) -> Relink | bool:
    """What the update moves; False while a copy it names, or of a neighbor a path moves
    from, is still being offloaded (not by a failed NIC: `_holds`) or terminated on its NIC
    (spec §3.1), or has a state operation below it, or a path it moves is in another move:
    retried later. True: an update of a shape the MUX does not move (a TCP block under a
    path, a placeholder neighbor): it fails as a whole."""
    rl = Relink(root)
    block: OffloadBlock | None = root
    while block is not None:
        if block.kind is not BlockKind.NEIGHBOR or block.role() is BlockRole.PLACEHOLDER:
            return True
        neighbor: VirtualObject = mux._context(block, VirtualObject)
        rl.named.append(neighbor)
        for dep in block.dependents():
            if dep.role() is BlockRole.PLACEHOLDER:
                continue
            if dep.kind is not BlockKind.PATH or dep.dependent_block_list is not None:
                return True
            path: VirtualObject = mux._context(dep, VirtualObject)
            rl.named.append(path)
            above = dep.ndis_offload_handle
            if above is not None and above.trace is not None:
                rl.trace = above.trace
            # one already under `neighbor` moves nowhere (its copies stay where they hang:
            # `_rehang` to the same copy changes nothing), but gets its cached values all the
            # same, in the same updates, and back if the move fails
            if path.relinking:
                return False
            rl.paths.append((path, neighbor))
            if path.parent is not None:
                rl.vobjs.append(path.parent)
            for copy in path.instances.values():
                # a copy being terminated, or corrupt, takes no update (spec §3.1, §3.7), and
                # one on a NIC that failed or was taken out is left to the failover, which
                # is asking its connections up (a failed NIC holds new offloads until its
                # RESUME, spec §5.5: a copy of the new neighbor there would hold the move):
                # it goes, with the old neighbor's copy, once they are up
                lower = copy.lower
                if copy.lifecycle.phase is Phase.OFFLOADED and not (
                    lower.failed or lower.taken_out
                ):
                    rl.moves.append(Move(dep, block, copy))
        for copy in neighbor.instances.values():
            if copy.lifecycle.phase is Phase.OFFLOADED:
                rl.neighbors.append((block, copy))
        block = block.next_block
    rl.vobjs += rl.named
    for vobj in rl.vobjs:
        # a copy with an update (or the MUX's own invalidate) below it: the move's updates
        # go after that one, not beside it (spec §9 item 7: one update of an object in
        # flight), so that the later values are the ones the NIC keeps
        if any(_holds(i) for i in vobj.instances.values()):
            return False
    return rl


_SETTLING = frozenset({Phase.OFFLOADING, Phase.TERMINATING})


def _holds(copy: Instance) -> bool:
    """Whether the move waits for `copy`: being offloaded or terminated, or with a state
    operation below it. Not a copy a failed NIC is offloading: that NIC holds its initiate
    until its RESUME (spec §5.5), which may never come; the copy is left to the failover,
    as `plan` leaves out a failed NIC's path copies (its connection is asked up once the
    initiate completes, `failover.offloaded_late`, and the copy goes with it)."""
    if copy.lifecycle.phase is Phase.OFFLOADING and copy.lower.failed:
        return False
    return copy.lifecycle.phase in _SETTLING or bool(copy.pending_ops)


def start(mux: MuxIm, rl: Relink) -> None:
    """Step 1: a copy of the new neighbor on each NIC that needs one; then step 2."""
    for move in rl.moves:
        neighbor: VirtualObject = mux._context(move.neighbor_up, VirtualObject)
        copy = neighbor.instances.get(move.path.lower.binding.id)
        if copy is not None and copy.lifecycle.phase is not Phase.OFFLOADED:
            # corrupt there (spec §3.7), or invalidated: it takes no paths; the update fails
            # before anything is made or moved
            rl.failed = True
            finish(mux, rl)
            return
    for move in rl.moves:
        neighbor = mux._context(move.neighbor_up, VirtualObject)
        lower = move.path.lower
        copy = neighbor.instances.get(lower.binding.id)
        if copy is None:
            copy = neighbor.instances[lower.binding.id] = Instance(mux.name, neighbor, lower)
            copy.lifecycle.fire(Event.INITIATE)
            mux.table_add(copy.id, copy)
            rl.new_copies.append(copy)
        move.to = copy
    for path, _ in rl.paths:
        path.relinking = True
    _touch(rl, [m.path for m in rl.moves])
    _touch(rl, [m.path.under for m in rl.moves if m.path.under is not None])
    _touch(rl, [m.to for m in rl.moves if m.to is not None and m.to not in rl.new_copies])
    _touch(rl, [copy for _, copy in rl.neighbors])
    if not rl.new_copies:
        _move(mux, rl)
        return
    # one call per NIC: a NIC that fails before completing its part is left out of the move
    # without holding the others' (`lower_failed`)
    for copy in rl.new_copies:
        call = rl.copying.get(copy.lower.binding.id)
        if call is None:
            call = rl.copying[copy.lower.binding.id] = MuxCall("Initiate", None)
            call.relink = rl
        vobj = copy.vobj
        new = OffloadBlock(vobj.header_type, copy.handle, vobj.const, vobj.cached, vobj.delegated)
        call.tree(copy.lower).object_block(vobj, lambda new=new: new)  # type: ignore[misc]
        call.link(None, new, copy)
        copy.handle.trace = rl.trace  # lent for its initiate (`_copies_initiated`)
    for call in list(rl.copying.values()):
        mux._send(call, mux.ndis.NdisInitiateOffload)


def _touch(rl: Relink, copies: list[Instance]) -> None:
    """An operation is below these copies now: none is terminated before it completes
    (spec §3.1, §9 item 7)."""
    for copy in copies:
        if copy not in rl.touched:
            copy.pending_ops += 1
            rl.touched.append(copy)


def completed(mux: MuxIm, call: MuxCall) -> None:
    """A step is back from every NIC."""
    rl = call.relink
    assert rl is not None
    if any(c is call for c in rl.abandoned):
        _abandoned_done(mux, rl, call)
    elif rl.stage == "copies":
        _copies_done(mux, rl, call)
    elif rl.stage == "move":
        _moved(mux, rl, call)
    else:
        _undone(mux, rl)


def _copies_done(mux: MuxIm, rl: Relink, call: MuxCall) -> None:
    """Step 1 is back from a NIC: it offloaded its copies of the new neighbor, or the move
    fails. Once every NIC's part is back (or left out, `lower_failed`), step 2 or the end."""
    for lower_id, c in list(rl.copying.items()):
        if c is call:
            del rl.copying[lower_id]
    if _copies_initiated(mux, call):
        rl.failed = True
    # the move is below those offloaded from now, not once every NIC's part is back: until
    # then nothing hangs under them, and the MUX would terminate them as unused (a NIC's
    # failover in the meantime releases unused copies, `MuxIm._release_unused`), leaving step
    # 2 a copy being terminated (spec §3.1: no operation on an object being terminated)
    _touch(
        rl,
        [
            copy
            for _, _, copy in call.links
            if isinstance(copy, Instance) and copy.lifecycle.phase is Phase.OFFLOADED
        ],
    )
    if not rl.copying:
        _all_copies_done(mux, rl)


def _copies_initiated(mux: MuxIm, call: MuxCall) -> bool:
    """A step-1 initiate is back: each copy it offloaded is offloaded; each one it failed
    goes. Said both for a NIC's part of the move and for one left out (`lower_failed`).
    True when a copy failed."""
    failed = False
    for _, low, copy in call.links:
        assert isinstance(copy, Instance)
        copy.handle.trace = None  # lent for the initiate only (`start`)
        if low.status in OFFLOADED_STATUSES:
            copy.lifecycle.fire(Event.INITIATE_OFFLOADED)
        else:
            copy.lifecycle.fire(Event.INITIATE_FAILED)
            mux._drop_instance(copy)
            copy.handle.release()
            failed = True
    return failed


def _all_copies_done(mux: MuxIm, rl: Relink) -> None:
    # those offloaded have the move below them now, as the others; those that failed are
    # gone, and an offloaded one nothing uses in the end is terminated once it completes
    _touch(rl, [c for c in rl.new_copies if c.lifecycle.phase is Phase.OFFLOADED])
    if rl.failed:
        finish(mux, rl)
    else:
        _move(mux, rl)


def lower_failed(mux: MuxIm, failed: Lower) -> None:
    """`failed` asked for every upload (spec §5.5) while a move's step 1 has an initiate of
    a copy below it, or about to go to it. A failed NIC holds new offloads until its RESUME,
    which may never come: waiting for that copy would hold the whole update, and every new
    connection on the paths it moves (`MuxIm._settling`). Its part of the move goes as
    `plan` leaves out a NIC failed already: its path copies stay where they hang, for the
    failover to take away once their connections are up; the other NICs' parts go on. The
    copy's initiate completes when it does (`_abandoned_done`)."""
    rls = {
        id(c.relink): c.relink
        for c in mux.call_entries
        if c.relink is not None and c.relink.stage == "copies"
    }
    for rl in rls.values():
        call = rl.copying.pop(failed.binding.id, None)
        if call is None:
            continue
        rl.abandoned.append(call)
        rl.moves = [m for m in rl.moves if m.path.lower is not failed]
        if not rl.copying:
            _all_copies_done(mux, rl)


def _abandoned_done(mux: MuxIm, rl: Relink, call: MuxCall) -> None:
    """A step-1 initiate left out of its move (`lower_failed`) is back at last: a copy it
    offloaded has nothing under it, and goes as one left unused; one it failed goes now."""
    rl.abandoned = [c for c in rl.abandoned if c is not call]
    _copies_initiated(mux, call)
    mux.complete_held()  # a terminate that held back a copy whose offload failed
    mux._release_unused()  # one that held back a copy offloaded now: it goes as unused
    mux.retry_deferred()


def _move(mux: MuxIm, rl: Relink) -> None:
    """Step 2: each NIC's update: its copies of the neighbors named, each with the moving
    path copies there below it, all with the values from above."""
    rl.stage = "move"
    call = MuxCall("Update", None)
    call.relink = rl
    for up, copy in rl.neighbors:
        _neighbor_block(call, up, copy)
    for move in rl.moves:
        assert move.to is not None
        _neighbor_block(call, move.neighbor_up, move.to)
        move.down = mirror_block(move.up, move.path.handle)
        move.path.handle.trace = rl.trace  # lent until the move is over (`finish`)
        move.path.lifecycle.fire(Event.UPDATE)
        call.tree(move.path.lower).dependent_block(move.to.vobj, move.down)
        call.link(move.up, move.down, move.path)
    for vobj in rl.named:
        vobj.lifecycle.fire(Event.UPDATE)
    mux._send(call, mux.ndis.NdisUpdateOffload)


def _neighbor_block(call: MuxCall, up: OffloadBlock, copy: Instance) -> None:
    """`copy`'s block in its NIC's update, once, with the values from above."""
    tree = call.tree(copy.lower)
    if copy.vobj.id in tree.nodes:
        return
    copy.lifecycle.fire(Event.UPDATE)
    block = tree.object_block(copy.vobj, lambda: mirror_block(up, copy.handle))
    call.link(up, block, copy)


def _moved(mux: MuxIm, rl: Relink, call: MuxCall) -> None:
    """Step 2 is back: every NIC did its part (the move is made), or one did not (step 3).
    A NIC moves a path under a neighbor it has not found corrupt (the target's
    `state_ops._relink`): a copy is moved when its block and its new neighbor's succeeded."""
    ok = all(low.status == SUCCESS for _, low, _ in call.links)
    neighbor_ok = {id(copy) for _, low, copy in call.links if low.status == SUCCESS}
    for move in rl.moves:
        assert move.down is not None and move.to is not None
        if move.down.status == SUCCESS and id(move.to) in neighbor_ok:
            _rehang(move.path, move.to)
            rl.moved.append(move)
    if ok:
        for path, neighbor in rl.paths:
            path.parent = neighbor  # the MUX's own tree follows (spec §2.3)
        finish(mux, rl)
        return
    rl.failed = True
    _undo(mux, rl)


def _rehang(path: Instance, to: Instance) -> None:
    """`path` hangs under `to` on its NIC now: the count of its neighbor's copy follows."""
    old = path.under
    path.under = to
    if path.refs:
        if old is not None:
            old.refs -= 1
        to.refs += 1


def _undo(mux: MuxIm, rl: Relink) -> None:
    """Step 3: the copies moved go back under the old neighbor's copies, with the cached
    values the MUX kept; the neighbors' copies get theirs back too (spec §3.4: a failed
    update leaves everything as it was)."""
    rl.stage = "undo"
    call = MuxCall("Update", None)
    call.relink = rl
    for move in rl.moved:
        old = move.path.vobj.parent
        assert old is not None
        back = old.instances.get(move.path.lower.binding.id)
        if back is None or back.lifecycle.phase is not Phase.OFFLOADED:
            continue  # nothing to go back under: it stays, counted, where its NIC has it
        tree = call.tree(move.path.lower)
        if old.id not in tree.nodes:
            block = OffloadBlock(old.header_type, back.handle)
            tree.object_block(old, lambda block=block: block)  # type: ignore[misc]
            call.link(None, block, back)
        move.back = OffloadBlock(move.path.vobj.header_type, move.path.handle)
        if move.up.cached is not None:
            move.back.cached = move.path.vobj.cached
        tree.dependent_block(old, move.back)
        call.link(None, move.back, move.path)
    updated = [*rl.neighbors, *((m.neighbor_up, m.to) for m in rl.moved if m.to is not None)]
    for up, copy in updated:
        tree = call.tree(copy.lower)
        if up.cached is not None and copy.vobj.id not in tree.nodes:
            block = OffloadBlock(copy.vobj.header_type, copy.handle)
            block.cached = copy.vobj.cached
            tree.object_block(copy.vobj, lambda block=block: block)  # type: ignore[misc]
            call.link(None, block, copy)
    mux._send(call, mux.ndis.NdisUpdateOffload)


def _undone(mux: MuxIm, rl: Relink) -> None:
    """Step 3 is back: each copy its NIC moved back hangs under the old neighbor's copy
    again; one it could not stays, counted, under the new one's, and its connections there
    are asked up as a failover's are: between a PAUSE and a RESUME (`failover.strays`)."""
    stray: list[MuxConnection] = []
    for move in rl.moved:
        back = move.back
        if back is not None and back.status == SUCCESS:
            old = move.path.vobj.parent
            assert old is not None
            _rehang(move.path, old.instances[move.path.lower.binding.id])
        else:
            # its NIC keeps it under the new neighbor's copy, which the layer above does not
            # know of: its connections there are asked up (a mandatory reason, spec §5.2), so
            # the copy goes, and with it what keeps the new neighbor's copy there
            binding = move.path.lower.binding
            stray += [
                c for c in mux.connections() if c.path is move.path.vobj and c.lower is binding
            ]
            # one whose initiate is in flight (not in the table until it completes above)
            # goes too, once it has completed (`failover.offloaded_late`): offloaded under
            # the stray copy, it was asked up by nothing
            mux.owed.update(
                c
                for c in failover.initiating(mux)
                if c.path is move.path.vobj and c.lower is binding
            )
    finish(mux, rl)
    failover.strays(mux, stray)


def finish(mux: MuxIm, rl: Relink) -> None:
    """Complete the update above: all SUCCESS, or all FAILURE (spec §3.1 item 5, §3.4)."""
    rl.stage = "done"
    for copy in rl.touched:
        copy.pending_ops -= 1
    for move in rl.moves:
        move.path.handle.trace = None  # lent for the move (`_move`)
    for path, _ in rl.paths:
        path.relinking = False
    status = S.NDIS_STATUS_FAILURE if rl.failed else SUCCESS
    for block in walk(rl.root):
        block.status = status
        if not rl.failed and block.cached is not None and block.role() is not BlockRole.PLACEHOLDER:
            mux._context(block, VirtualObject).cached = block.cached  # for NICs to come
    rl.root.im_reserved = rl.saved_im_reserved
    mux.ndis.NdisMUpdateOffloadComplete(mux, rl.root)
    mux._release_unused()  # the old neighbor's copies nothing hangs under any more
    # a stray path copy this update held back (`rl.touched`) held the RESUME too
    # (`failover._uploading`): its terminate is below now, or it waits no more for it
    failover.evacuated(mux)
    mux.retry_deferred()
