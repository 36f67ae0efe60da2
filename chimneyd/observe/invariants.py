"""The invariant checker: spec §9, asserted as calls go through the broker.

It hangs off `Ndis.observer` and sees every call NDIS routes: I/O going down and its completions
coming up, send NBLs handed back by an initiate or a terminate, indications and their returns,
receive-returns, state operations going down and their completions. From those alone — never a
layer's own records — it keeps what each layer holds: the NBLs outstanding at it, the objects
offloaded through it and their phase, the state trees in flight, the indications in progress.

Each violation names its §9 item; at every layer:

1. an NBL is completed once, by the layer holding it, with the completion of its kind;
2. sends and receives complete in posting order, a disconnect after earlier sends, alone;
3. `TcpOffloadBytesTransferred` is the NB advance since posting; SUCCESS means every byte; no
   bytes acknowledged after a send with bytes unacknowledged, no success after a failure; at
   most one partial send NBL per completion;
4. a receive completion never overlaps the layer's receive indication (in progress from its
   NdisTcpOffloadReceiveHandler until the layer above returns it), nor two indications;
   no data placed after a request left short in one completion; what a layer owes first
   (BufferedData handed down at initiate, the rest of a refused indication) is what it
   delivers first, or hands back at terminate; and at terminate, RcvNxt moved by exactly the
   bytes delivered plus handed back minus handed down: none lost, none twice;
5. no indication on an object before its initiate completed;
6. statuses legal for the operation and the block's role (placeholder, linker, new), coherent
   with the dependents'; the same root, tree and completion function back; a context slot
   written exactly for the new objects offloaded; a failed connection's send NBLs untouched;
7. no I/O or state call on an object offloading or terminating (after NdisTerminateOffload no
   I/O, spec §3.6.4); no update of an invalidated object or of a connection depending on one;
   one update in flight; no terminate while a query, update or invalidate is pending. (A
   receive or disconnect call "executing" is not observable here: calls are atomic in the
   emulator and a layer's inbox keeps their order.)
8. after a terminate completed, no call on the handle and nothing outstanding at the layer,
   and an IM's own handle below it terminated first;
9. handles and contexts each belong to one layer and one role; slots, ImReserved,
   ProtocolReserved and SourceHandle as they went down; the same NBL through every layer, down
   and up, indication returns unchanged, receive-returns only of what was accepted;
10. a neighbor or path terminated only with, or after the terminate completions of, every
    object that depends on it (dependents from the initiate trees, moved by a relinking update).

Cheap enough to leave on: a few dict and list operations per NBL per layer on the I/O path
(`bench/invariants_cost.py`); byte comparisons only while a layer owes specific bytes, and then
of at most `HEAD` bytes.

Longer than most modules because it is one checker for the whole of spec §9: a short handler per
routed call, all reading the same few records; split, those records would be shared across files.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from typing import Any

import structlog

from chimneyd.ndis.blocks import BlockKind, OffloadBlock, walk
from chimneyd.ndis.broker import Binding, Layer
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.status import (
    INITIATE_BLOCK_STATUSES,
    OFFLOADED_STATUSES,
    STATE_OP_BLOCK_STATUSES,
    NdisStatus,
    TcpOffloadConnectionState,
)

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
PENDING = S.NDIS_STATUS_PENDING
PARTIAL = S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS
FAILURE = S.NDIS_STATUS_FAILURE

#: Violation messages kept in full; beyond it they are only counted (`count`).
KEPT_VIOLATIONS = 10_000
#: Violations also logged (a daemon's log is where a soak finds them), the first this many.
LOGGED_VIOLATIONS = 100
#: How many terminated handles are remembered, to name a late call on one as such (§9 item 8).
RECENTLY_DEAD = 1 << 13
#: Bytes of data kept to check that what a layer owes next is what it delivers next (§9 item 4).
HEAD = 64
SEQ_MOD = 1 << 32

# I/O kinds, as indices into a connection's queues
SEND, RECEIVE, DISCONNECT, FORWARD = range(4)
_KINDS = ("send", "receive", "disconnect", "forward")
_KIND = {
    "MiniportTcpOffloadSend": SEND,
    "NdisTcpOffloadSendComplete": SEND,
    "MiniportTcpOffloadReceive": RECEIVE,
    "NdisTcpOffloadReceiveComplete": RECEIVE,
    "MiniportTcpOffloadDisconnect": DISCONNECT,
    "NdisTcpOffloadDisconnectComplete": DISCONNECT,
    "MiniportTcpOffloadForward": FORWARD,
    "NdisTcpOffloadForwardComplete": FORWARD,
}
_OP = {
    "NdisInitiateOffload": "Initiate",
    "NdisMInitiateOffloadComplete": "Initiate",
    "NdisTerminateOffload": "Terminate",
    "NdisMTerminateOffloadComplete": "Terminate",
    "NdisUpdateOffload": "Update",
    "NdisMUpdateOffloadComplete": "Update",
    "NdisInvalidateOffload": "Invalidate",
    "NdisMInvalidateOffloadComplete": "Invalidate",
    "NdisQueryOffloadState": "Query",
    "NdisMQueryOffloadStateComplete": "Query",
}

# an object's phase as seen from the calls (spec §3.9, coarser than a layer's Lifecycle)
OFFLOADING, LIVE, TERMINATING = 1, 2, 3
_PHASE = {OFFLOADING: "OFFLOADING", LIVE: "offloaded", TERMINATING: "TERMINATING"}
# a block's role when its tree went down (spec §2.3)
PLACEHOLDER, NEW, REFERENCE = 0, 1, 2
_FIN_RECEIVED = frozenset(
    {
        TcpOffloadConnectionState.TcpConnectionCloseWait,
        TcpOffloadConnectionState.TcpConnectionClosing,
        TcpOffloadConnectionState.TcpConnectionLastAck,
        TcpOffloadConnectionState.TcpConnectionTimeWait,
        TcpOffloadConnectionState.TcpConnectionClosed,
    }
)


log = structlog.get_logger("chimneyd.invariants")


class InvariantViolation(AssertionError):
    pass


def _conn_of(handle: NdisOffloadHandle) -> int:
    trace = handle.trace
    return trace.conn_id if trace is not None else 0


def _ctx_key(ctx: Any) -> int:
    """A context's id in NDIS's one id space (handles.next_object_id), else its identity."""
    key = getattr(ctx, "id", None)
    return key if isinstance(key, int) else id(ctx)


def _walk(block: OffloadBlock | None, parent: OffloadBlock | None) -> Iterator[Any]:
    """`blocks.walk`, with each block's parent (the block whose dependent list holds it)."""
    while block is not None:
        yield block, parent
        yield from _walk(block.dependent_block_list, block)
        block = block.next_block


def _head(views: Iterable[memoryview], skip: int, n: int) -> bytes:
    """`n` bytes from `skip` bytes into `views` (fewer if they end first)."""
    out: list[bytes] = []
    for view in views:
        if skip >= len(view):
            skip -= len(view)
            continue
        part = view[skip : skip + n]
        skip = 0
        out.append(bytes(part))
        n -= len(part)
        if n <= 0:
            break
    return b"".join(out)


def _mdl_views(nbl: NetBufferList) -> Iterator[memoryview]:
    nb = nbl.first_net_buffer
    mdl = nb.mdl_chain if nb is not None else None
    while mdl is not None:
        yield mdl.buffer
        mdl = mdl.next


def _placed_head(nbl: NetBufferList, placed: int) -> bytes:
    """The first bytes a completed receive request got: they precede its advanced data start."""
    nb = nbl.first_net_buffer
    if nb is None:
        return b""
    return _head(_mdl_views(nbl), nb.data_offset - placed, min(placed, HEAD))


def _chain_len(head: NetBufferList | None) -> int:
    return sum(nbl.data_length for nbl in iter_chain(head))


# An NBL outstanding somewhere is one list, the cheapest record to make per NBL:
# [kind, posting sequence, length when posted, *holders], a holder being the `_Obj` of the
# connection at the layer holding it (its `lower`), outermost first; the last completes it next.
KIND, SEQ, LENGTH = range(3)
HOLDERS = 3


class _Obj:
    """An object (neighbor, path, TCP) offloaded through one binding, by the handle of the
    protocol edge above it. For a connection it is also everything the checker keeps of it
    at the layer below that handle: its outstanding I/O and what it delivered."""

    __slots__ = (
        "b0",
        "back_upto",
        "children",
        "conn",
        "ctx",
        "delivered",
        "expect",
        "expect_len",
        "failed_upto",
        "gap",
        "indicating",
        "invalid",
        "invalidating",
        "kind",
        "layer",
        "lower",
        "parent",
        "phase",
        "querying",
        "queues",
        "r0",
        "updating",
    )

    def __init__(self, layer: Layer, lower: Layer, kind: BlockKind, conn: int, parent: int) -> None:
        self.layer = layer  # the protocol edge that owns the handle
        self.lower = lower  # the miniport edge it is offloaded to
        self.kind = kind
        self.conn = conn
        self.parent = parent  # handle id of the object it depends on, 0 if none
        # handle ids of the objects that depend on it (§9 item 10); a connection has none
        self.children: set[int] | None = None if kind is BlockKind.TCP else set()
        self.phase = OFFLOADING
        self.ctx: Any = None  # what the lower layer wrote in the handle's slot
        self.invalid = False
        self.updating = self.querying = self.invalidating = 0
        # NBL ids outstanding at `lower`, in posting order, per I/O kind (made on first use)
        self.queues: list[list[int] | None] | None = None
        self.gap = False  # a send completed with bytes unacknowledged (§9 item 3)
        self.failed_upto = 0  # sends posted up to this sequence must fail (§9 item 3)
        # sends posted before this sequence go back with the terminate, not completed: a
        # disconnect after them has completed (§3.6.3, §9 item 2)
        self.back_upto = 0
        self.indicating = 0  # the NBL of `lower`'s receive indication in progress (§9 item 4)
        self.delivered = 0  # bytes placed in receive requests and consumed from indications
        self.r0: int | None = None  # RcvNxt handed down at initiate
        self.b0 = 0  # BufferedData bytes handed down at initiate
        self.expect = b""  # the first bytes `lower` must deliver next …
        self.expect_len = 0  # … of this many

    def queue(self, kind: int) -> list[int]:
        queues = self.queues
        if queues is None:
            queues = self.queues = [None, None, None, None]
        q = queues[kind]
        if q is None:
            q = queues[kind] = []
        return q

    def outstanding(self) -> list[tuple[int, list[int]]]:
        return [(k, q) for k, q in enumerate(self.queues or ()) if q]

    def owe(self, head: bytes, length: int) -> None:
        """`lower` must deliver these `length` bytes (starting with `head`) next."""
        if self.expect_len == 0 or len(head) > len(self.expect):
            self.expect = head
        self.expect_len = max(self.expect_len, length)


def _stray(layer: Layer, lower: Layer, handle: NdisOffloadHandle) -> _Obj:
    """A record for calls on a handle the checker does not know (already flagged)."""
    obj = _Obj(layer, lower, BlockKind.TCP, _conn_of(handle), 0)
    obj.phase = LIVE
    return obj


class _Tree:
    """A state operation in flight: the tree as it went down (spec §3.1)."""

    __slots__ = ("blocks", "handover", "lower", "op", "root", "upper")

    def __init__(self, op: str, root: OffloadBlock, upper: Layer, lower: Layer) -> None:
        self.op = op
        self.root = root
        self.upper = upper
        self.lower = lower
        # (block, parent block, handle, slot value, role, ImReserved, ProtocolReserved,
        #  SourceHandle) per block, in walk order
        self.blocks: list[tuple[Any, ...]] = []
        # handle id -> [(nbl, status, length)] of a new connection's send chain (§3.2.4)
        self.handover: dict[int, list[tuple[NetBufferList, int, int]]] = {}


# how far one hop of an indicated NBL has got (see `_Ind`)
INDICATED, ACCEPTED, GIVEN_BACK, REFUSED = 1, 2, 3, 4


class _Ind:
    """A receive indication (or a terminate's BufferedData) NBL: hop k is the call from
    `objs[k].lower` up to `objs[k].layer`, and `hops[k]` how far it has got. Each layer's calls
    come in its own order, so the hops move on independently: a host may give an NBL back by
    receive-return before the IM below has passed the indication's return down."""

    __slots__ = ("consumed", "hops", "objs", "status")

    def __init__(self, obj: _Obj, hop: int = INDICATED) -> None:
        self.objs = [obj]
        self.hops = [hop]
        self.status: int | None = None  # the return, the same at every hop (spec §4.8)
        self.consumed = 0

    def hop_from(self, lower: Layer) -> int:
        for k, obj in enumerate(self.objs):
            if obj.lower is lower:
                return k
        return -1


class _Recent:
    """The last `limit` ids added (a ring of raw 64-bit values): asked only on an error path,
    so a linear scan will do. It holds no Python objects: keeping the handles' own int objects,
    made all over the heap during a run, would keep their memory from going back to the system
    after a drain (a soak judges the daemon's RSS after it)."""

    __slots__ = ("items", "next")

    def __init__(self, limit: int) -> None:
        self.items = array("q", [0]) * limit  # ids are never 0 (handles: non-zero ids)
        self.next = 0

    def add(self, item: int) -> None:
        self.items[self.next] = item
        self.next = (self.next + 1) % len(self.items)

    def __contains__(self, item: int) -> bool:
        return item != 0 and item in self.items


class InvariantChecker:
    """Implements `ndis.broker.BrokerObserver`.

    `check_streams=False` leaves out what item 4 asks of a connection's byte stream (owed bytes
    first, bytes accounted for at terminate): for stacks whose bottom is a test double that
    makes up the bytes it indicates and the delegated state it hands back. Everything else,
    including that a receive completion and an indication never overlap, is still checked.
    """

    def __init__(self, raise_on_violation: bool = False, check_streams: bool = True) -> None:
        self.raise_on_violation = raise_on_violation
        self.check_streams = check_streams
        self.violations: list[str] = []  # the first KEPT_VIOLATIONS, in full
        self.count = 0
        # NBL completions checked, in `stack.stats` (engine.invariant_checked_nbls): a soak
        # tells by it that the checker heard the run's traffic
        self.checked = 0
        self._n = 0  # posting sequence
        self.nbls: dict[int, list[Any]] = {}  # NBL id -> record (KIND, SEQ, LENGTH, holders)
        self.objs: dict[int, _Obj] = {}  # handle id -> object
        self.ctxs: dict[int, tuple[Layer, int]] = {}  # context id -> (its layer, handle id)
        self.trees: dict[int, _Tree] = {}  # id(root) -> tree in flight
        self.inds: dict[int, _Ind] = {}  # NBL id -> indication
        self.dead = _Recent(RECENTLY_DEAD)  # terminated handle ids
        # upper handle id -> the IM's own handles below it (§9 item 8): one for a pass-through
        # entry, one per NIC for a teaming MUX's neighbor or path; and the way back
        self.entry_handles: dict[int, set[int]] = {}
        self._serves: dict[int, int] = {}
        self._handover: set[int] = set()  # send NBLs going down inside an initiate

    def violation(self, what: str) -> None:
        self.count += 1
        if self.count <= LOGGED_VIOLATIONS:
            log.error("invariant_violation", what=what, n=self.count)
        if len(self.violations) < KEPT_VIOLATIONS:
            self.violations.append(what)
        if self.raise_on_violation:
            raise InvariantViolation(what)

    def _unknown(self, where: str, handle: NdisOffloadHandle) -> str:
        if handle.id in self.dead:
            return f"{where} on handle {handle.id} after its terminate completed (§9 item 8)"
        return f"{where} on handle {handle.id}, which was never offloaded (§9 item 5, §9 item 9)"

    # ============================================================================================
    # I/O down and completions up: items 1, 2, 3, 4 (receive), 7 (I/O), 8, 9 (NBL identity)
    # ============================================================================================
    def on_io_down(
        self,
        lower: Layer,
        call: str,
        handle: NdisOffloadHandle,
        nbls: list[NetBufferList],
        caller: Layer | None = None,
    ) -> None:
        """I/O going down to `lower` on `handle`, posted by `caller` (the broker says who; a
        caller not given is taken to be the layer the handle's binding serves)."""
        kind = _KIND[call]
        binding: Binding | None = handle.ndis_reserved
        upper = binding.upper if binding is not None else None
        obj = self.objs.get(handle.id)
        if obj is not None and obj.phase == LIVE:
            if handle.miniport_offload_context is not obj.ctx:
                self.violation(
                    f"{call} to {lower.name}: handle {handle.id}'s context is not the one "
                    "written at its initiate (§9 item 9)"
                )
        else:
            self._io_off_phase(lower, call, handle, obj, nbls)
            if obj is None:
                obj = _stray(upper or lower, lower, handle)
        if caller is not None and upper is not None and caller is not upper:
            # a layer posts I/O only on the handles of its own bindings (spec §1.5)
            self.violation(
                f"{caller.name} posted NBL {', '.join(str(n.id) for n in nbls)} to "
                f"{lower.name} on {upper.name}'s handle {handle.id}, not its own: a layer "
                "posts I/O only on the handles it offloaded with (§1.5, §9 item 9)"
            )
        poster = caller or upper
        q = obj.queue(kind)
        records = self.nbls
        # an IM posting on its own handle relays what it was given (the upper edge of its
        # binding is a miniport too); one posting on another's handle is reported above
        im = upper if poster is upper and upper is not None and upper.has_miniport_edge else None
        for nbl in nbls:
            i = nbl.id
            rec = records.get(i)
            if rec is None:
                if im is not None:
                    self.violation(
                        f"{im.name} passed NBL {i} down to {lower.name} without having been "
                        "given it: the same NBL must travel every layer (§9 item 9)"
                    )
                self._n += 1
                records[i] = [kind, self._n, nbl.data_length, obj]
            else:
                holder = rec[-1]
                if poster is not None and holder.lower is not poster:
                    self.violation(
                        f"NBL {i} posted to {lower.name} while {holder.lower.name} holds it "
                        "(posted twice, or by a layer with another layer's handle) "
                        "(§9 item 1, §9 item 9)"
                    )
                elif rec[KIND] != kind:
                    self.violation(
                        f"{call}: NBL {i} came down as a {_KINDS[rec[KIND]]} (§9 item 1)"
                    )
                rec.append(obj)
            q.append(i)

    def _io_off_phase(
        self,
        lower: Layer,
        call: str,
        handle: NdisOffloadHandle,
        obj: _Obj | None,
        nbls: list[NetBufferList],
    ) -> None:
        """I/O on an object that is not simply offloaded: legal only for the send data an
        initiate hands down (spec §3.2.5)."""
        if obj is None:
            self.violation(self._unknown(f"{call} to {lower.name}", handle))
        elif obj.phase == OFFLOADING:
            ids = [nbl.id for nbl in nbls]
            if _KIND[call] == SEND and all(i in self._handover for i in ids):
                self._handover.difference_update(ids)
            else:
                self.violation(
                    f"{call} to {lower.name} on handle {handle.id} while it is being "
                    "offloaded (§9 item 7)"
                )
        else:
            self.violation(
                f"{call} to {lower.name} on handle {handle.id} after its terminate was "
                "requested (§9 item 7, §3.6.4)"
            )

    def on_io_returned(self, layer: Layer, nbls: list[NetBufferList]) -> None:
        """Send NBLs handed back by a terminate or a failed initiate instead of completed: each
        held by `layer`, in their original order (spec §3.2.4, §3.6.3)."""
        for nbl in nbls:
            rec = self.nbls.get(nbl.id)
            if rec is None or rec[-1].lower is not layer or rec[KIND] != SEND:
                self.violation(
                    f"{layer.name} handed back send NBL {nbl.id}, which it does not hold "
                    "(§9 item 1)"
                )
                continue
            q = rec.pop().queue(SEND)
            if len(rec) == HOLDERS:
                del self.nbls[nbl.id]
            if q and q[0] == nbl.id:
                q.pop(0)
            else:
                self.violation(
                    f"{layer.name} handed back send NBL {nbl.id} out of its original order "
                    "(§3.6.3, §9 item 2)"
                )
                if nbl.id in q:
                    q.remove(nbl.id)

    def on_io_complete(self, layer: Layer, call: str, nbls: list[NetBufferList]) -> None:
        kind = _KIND[call]
        records = self.nbls
        self.checked += len(nbls)
        partial: dict[int, int] | None = None  # conn -> partial send NBLs in this call
        short: set[int] | None = None  # conns with a request not filled, earlier in this call
        if kind == DISCONNECT and len(nbls) != 1:
            self.violation(
                f"{layer.name}: a disconnect completion carries {len(nbls)} NBLs (§9 item 2)"
            )
        for nbl in nbls:
            i = nbl.id
            rec = records.get(i)
            if rec is None or rec[-1].lower is not layer:
                self.violation(
                    f"{layer.name} completed {_KINDS[kind]} NBL {i}, which it does not hold "
                    "(never given, completed twice, or after its terminate) "
                    "(§9 item 1, §9 item 8)"
                )
                continue
            k = rec[KIND]
            if k != kind:
                self.violation(
                    f"{layer.name} completed {_KINDS[k]} NBL {i} with {call} (§9 item 1)"
                )
            c = rec.pop()
            if len(rec) == HOLDERS:
                del records[i]
            conn = c.conn
            q = c.queue(k)
            if q and q[0] == i:
                q.pop(0)
            else:
                self._out_of_order(layer, k, i, q)
            status = nbl.status
            done = nbl.tcp_offload_bytes_transferred
            length = rec[LENGTH]
            if length - nbl.data_length != done:
                self.violation(
                    f"{layer.name}: NBL {i} reports {done} bytes transferred but its data start "
                    f"advanced by {length - nbl.data_length} (§9 item 3)"
                )
            if k == SEND:
                seq_ = rec[SEQ]
                if (
                    status == SUCCESS
                    and done == length
                    and not c.gap
                    and seq_ > c.failed_upto
                    and seq_ > c.back_upto
                ):
                    continue  # the common case, nothing more to check
                if seq_ < c.back_upto:
                    self.violation(
                        f"{layer.name} completed send NBL {i} after the disconnect posted after "
                        "it (§9 item 2)"
                    )
                if self._send_done(layer, c, rec, i, status, done):
                    if partial is None:
                        partial = {}
                    partial[conn] = partial.get(conn, 0) + 1
            elif status == PENDING:
                self.violation(f"{layer.name} completed NBL {i} with PENDING (§9 item 1)")
            if k == RECEIVE:
                if c.indicating:
                    self.violation(
                        f"{layer.name} completed receive NBL {i} while its indication of NBL "
                        f"{c.indicating} is in progress (§9 item 4)"
                    )
                if done:
                    if short is not None and conn in short:
                        self.violation(
                            f"{layer.name}: receive NBL {i} got data after a request not filled, "
                            "in one completion (§9 item 4, §4.2)"
                        )
                    c.delivered += done
                    if c.expect_len:
                        self._delivered(layer, c, _placed_head(nbl, done), done)
                if done < length:
                    if short is None:
                        short = set()
                    short.add(conn)
            elif k == DISCONNECT:
                sends = c.queue(SEND)
                first = records.get(sends[0]) if sends else None
                if first is not None and first[SEQ] < rec[SEQ]:
                    if c.phase == TERMINATING:
                        # a terminate completes a pending disconnect (UPLOAD_IN_PROGRESS, or
                        # the status it was refused with) and hands the earlier sends back in
                        # its chain (spec §3.6.3, §6.2): from now on they may only go back,
                        # and their order is checked as they do
                        c.back_upto = rec[SEQ]
                    else:
                        self.violation(
                            f"{layer.name} completed a disconnect before earlier send NBL "
                            f"{sends[0]} (§9 item 2)"
                        )
        if partial is not None:
            for conn, n in partial.items():
                if n > 1:
                    self.violation(
                        f"{layer.name}: {n} partial send NBLs of connection {conn} in one "
                        "completion (§9 item 3)"
                    )

    def _out_of_order(self, layer: Layer, kind: int, nbl_id: int, q: list[int]) -> None:
        if kind <= RECEIVE:
            first = q[0] if q else None
            self.violation(
                f"{layer.name} completed {_KINDS[kind]} NBL {nbl_id} before {first} (§9 item 2)"
            )
        if nbl_id in q:
            q.remove(nbl_id)

    def _send_done(
        self, layer: Layer, c: _Obj, rec: list[Any], nbl_id: int, status: int, done: int
    ) -> bool:
        """Item 3 for one send NBL; returns whether it was partial."""
        length: int = rec[LENGTH]
        ok = status == SUCCESS
        if status == PENDING:
            self.violation(f"{layer.name} completed NBL {nbl_id} with PENDING (§9 item 1)")
        if ok and done != length:
            self.violation(
                f"{layer.name}: send NBL {nbl_id} succeeded with {done} of {length} bytes "
                "acknowledged (§9 item 3)"
            )
        elif c.gap and done:
            self.violation(
                f"{layer.name}: send NBL {nbl_id} reports {done} bytes acknowledged after an "
                "earlier send's bytes were not (§9 item 3)"
            )
        elif ok and rec[SEQ] <= c.failed_upto:
            self.violation(
                f"{layer.name}: send NBL {nbl_id} succeeded after a failed one (§9 item 3)"
            )
        if ok:
            return False
        c.failed_upto = self._n
        if done < length:
            c.gap = True
        return 0 < done < length

    # ============================================================================================
    # receive indications and returns: items 4, 5, 8, 9
    # ============================================================================================
    def on_indication(self, layer: Layer, call: str, handle: NdisOffloadHandle) -> None:
        obj = self.objs.get(handle.id)
        if obj is None:
            self.violation(self._unknown(f"{layer.name}: {call}", handle))
        elif obj.phase == OFFLOADING:
            self.violation(
                f"{layer.name}: {call} on handle {handle.id} before its initiate completed "
                "(§9 item 5)"
            )
        elif obj.lower is not layer:
            self.violation(
                f"{layer.name}: {call} on handle {handle.id}, offloaded to {obj.lower.name} "
                "(§9 item 9)"
            )

    def on_receive_indication(
        self, layer: Layer, handle: NdisOffloadHandle, nbl: NetBufferList
    ) -> None:
        obj = self.objs.get(handle.id)  # on_indication flagged it if it is unknown
        if obj is None:
            binding: Binding = handle.ndis_reserved
            obj = _stray(binding.upper, layer, handle)
        ind = self.inds.get(nbl.id)
        if ind is None:
            if layer.has_protocol_edge:
                self.violation(
                    f"{layer.name} indicated NBL {nbl.id}, which was not indicated to it: "
                    "the same NBL must travel every layer (§9 item 9)"
                )
            self.inds[nbl.id] = _Ind(obj)
        elif ind.objs[-1].layer is not layer or ind.hops[-1] != INDICATED:
            self.violation(
                f"{layer.name} indicated NBL {nbl.id}, which is not being indicated to it "
                "(§9 item 9)"
            )
        else:
            ind.objs.append(obj)
            ind.hops.append(INDICATED)
        if obj.indicating:
            self.violation(
                f"{layer.name} indicated NBL {nbl.id} while its indication of NBL "
                f"{obj.indicating} is in progress (§9 item 4)"
            )
        obj.indicating = nbl.id

    def on_indication_returned(
        self, lower: Layer, nbl: NetBufferList, status: int, bytes_consumed: int
    ) -> None:
        """The synchronous return of a receive indication, on its way down to `lower`."""
        ind = self.inds.get(nbl.id)
        k = ind.hop_from(lower) if ind is not None else -1
        if ind is None or k < 0 or ind.hops[k] != INDICATED:
            self.violation(
                f"indication of NBL {nbl.id} returned to {lower.name}, which is not waiting "
                "for it (§9 item 9)"
            )
            return
        hops = ind.hops
        c = ind.objs[k]
        if k + 1 < len(hops) and hops[k + 1] == INDICATED:
            self.violation(
                f"{c.layer.name} returned the indication of NBL {nbl.id} before its own "
                "indication of it returned (§9 item 9)"
            )
        if ind.status is None:
            ind.status, ind.consumed = status, bytes_consumed
        elif (ind.status, ind.consumed) != (status, bytes_consumed):
            self.violation(
                f"{c.layer.name} changed the return of the indication of NBL {nbl.id} on its "
                "way down (§4.8, §9 item 9)"
            )
        hops[k] = ACCEPTED if status == SUCCESS else REFUSED
        if k == 0 and status != SUCCESS:
            del self.inds[nbl.id]  # the originator has it back
        if c.indicating != nbl.id:
            self.violation(f"{lower.name}: indication of NBL {nbl.id} returned twice (§9 item 4)")
        c.indicating = 0
        if bytes_consumed:
            c.delivered += bytes_consumed
            if c.expect_len:
                self._delivered(lower, c, _head(nbl.views(), 0, HEAD), bytes_consumed)
        if status != SUCCESS and self.check_streams:
            # the rest is owed before anything else (spec §4.3, §4.4)
            rest = nbl.data_length - bytes_consumed
            if rest > 0:
                c.owe(_head(nbl.views(), bytes_consumed, HEAD), rest)

    def on_receive_return(self, binding: Binding, head: NetBufferList) -> None:
        """`NdisOffloadTcpReceiveReturn`: each NBL goes back down the way it came up, once the
        layer above has given it back (spec §4.3, §1.5 item 9)."""
        upper, lower = binding.upper, binding.lower
        for nbl in iter_chain(head):
            ind = self.inds.get(nbl.id)
            k = ind.hop_from(lower) if ind is not None else -1
            if (
                ind is None
                or k < 0
                or ind.objs[k].layer is not upper
                or ind.hops[k] != ACCEPTED
                or (k + 1 < len(ind.hops) and ind.hops[k + 1] != GIVEN_BACK)
            ):
                self.violation(
                    f"{upper.name} returned NBL {nbl.id} to {lower.name}, which did not indicate "
                    "it to it, or not successfully, or it was returned already (§9 item 9, §6.3)"
                )
                continue
            ind.hops[k] = GIVEN_BACK
            if k == 0:
                del self.inds[nbl.id]

    def _delivered(self, layer: Layer, c: _Obj, head: bytes, n: int) -> None:
        """`n` bytes beginning with `head` were delivered while `c.expect` is owed first."""
        k = min(len(head), len(c.expect))
        if head[:k] != c.expect[:k]:
            self.violation(
                f"{layer.name} delivered other bytes before those it owed (BufferedData handed "
                "down at initiate, or the rest of a refused indication) (§9 item 4)"
            )
            c.expect, c.expect_len = b"", 0
            return
        c.expect = c.expect[n:]
        c.expect_len = max(0, c.expect_len - n)

    # ============================================================================================
    # state operations: items 5, 6, 7, 8, 9, 10
    # ============================================================================================
    def on_state_down(self, binding: Binding, call: str, root: OffloadBlock) -> None:
        op = _OP[call]
        upper, lower = binding.upper, binding.lower
        if id(root) in self.trees:
            self.violation(f"{upper.name}: {call} of a block list already in flight (§3.1)")
        tree = _Tree(op, root, upper, lower)
        terminated: list[_Obj] = []
        ids: set[int] = set()
        for block, parent in _walk(root, None):
            handle = block.offload_handle
            slot = handle.miniport_offload_context if handle is not None else None
            role = PLACEHOLDER if handle is None else NEW if slot is None else REFERENCE
            tree.blocks.append(
                (
                    block,
                    parent,
                    handle,
                    slot,
                    role,
                    block.im_reserved,
                    block.protocol_reserved,
                    block.source_handle,
                )
            )
            if handle is None:
                continue
            ids.add(handle.id)
            if op == "Initiate" and role == NEW:
                self._new_object(tree, block, parent, handle)
                continue
            obj = self._object_called(call, upper, lower, handle)
            if obj is None:
                continue
            if op == "Update":
                if obj.invalid:
                    self.violation(
                        f"{upper.name}: {call} of invalidated handle {handle.id} (§9 item 7)"
                    )
                if obj.updating:
                    self.violation(
                        f"{upper.name}: {call} of handle {handle.id} while an update of it is "
                        "in flight (§9 item 7)"
                    )
                obj.updating += 1
            elif op == "Query":
                obj.querying += 1
            elif op == "Invalidate":
                obj.invalidating += 1
                self._invalidate(obj)
            elif op == "Terminate":
                if obj.updating or obj.querying or obj.invalidating:
                    self.violation(
                        f"{upper.name}: {call} of handle {handle.id} while a query, update or "
                        "invalidate of it is pending (§9 item 7)"
                    )
                obj.phase = TERMINATING
                terminated.append(obj)
        # neighbor and path objects go only with every object that depends on them (§9 item 10)
        for obj in terminated:
            left = [i for i in obj.children or () if i not in ids]
            if left:
                going = sum(1 for i in left if self.objs[i].phase == TERMINATING)
                self.violation(
                    f"{upper.name}: {call} of a {obj.kind.value} object with {len(left)} "
                    f"dependents not in the same tree ({going} of them with a terminate of "
                    f"their own in flight; handle {left[0]} …) (§9 item 10)"
                )
        self.trees[id(root)] = tree

    def _object_called(
        self, call: str, upper: Layer, lower: Layer, handle: NdisOffloadHandle
    ) -> _Obj | None:
        """The object a block of a state call references, if the call may name it (§9 item 7)."""
        obj = self.objs.get(handle.id)
        if obj is None:
            self.violation(self._unknown(f"{upper.name}: {call}", handle))
            return None
        if obj.layer is not upper or obj.lower is not lower:
            self.violation(
                f"{upper.name}: {call} to {lower.name} names handle {handle.id} of "
                f"{obj.layer.name}, offloaded to {obj.lower.name} (§9 item 9)"
            )
            return None
        if obj.phase != LIVE:
            self.violation(
                f"{upper.name}: {call} names handle {handle.id} while it is "
                f"{_PHASE[obj.phase]} (§9 item 7)"
            )
            return None
        return obj

    def _new_object(
        self,
        tree: _Tree,
        block: OffloadBlock,
        parent: OffloadBlock | None,
        handle: NdisOffloadHandle,
    ) -> None:
        upper = tree.upper
        if handle.id in self.objs:
            self.violation(
                f"{upper.name}: initiate of handle {handle.id}, already offloaded (§9 item 7)"
            )
            return
        if handle.id in self.ctxs:
            self.violation(
                f"{upper.name}: id {handle.id}, a context of {self.ctxs[handle.id][0].name}, "
                "used as an offload handle (§9 item 9)"
            )
        kind = block.kind
        parent_handle = parent.offload_handle if parent is not None else None
        parent_id = parent_handle.id if parent_handle is not None else 0
        self.objs[handle.id] = _Obj(upper, tree.lower, kind, _conn_of(handle), parent_id)
        if parent_id:
            up = self.objs.get(parent_id)
            if up is not None and up.children is not None:
                up.children.add(handle.id)
        if upper.has_miniport_edge:
            # the IM's own handle belongs to its offload entry (spec §1.2): §9 item 8 looks it up
            self._link_entry(handle)
        if kind is BlockKind.TCP and block.net_buffer_list_chain is not None:
            chain = list(iter_chain(block.net_buffer_list_chain))
            tree.handover[handle.id] = [(n, n.status, n.data_length) for n in chain]
            self._handover.update(n.id for n in chain)

    def _invalidate(self, obj: _Obj) -> None:
        """An invalidated object, and every connection depending on it, takes no update
        (spec §3.1, §3.5). Paths under a neighbor stay updatable: relinking them is how the
        host moves them to a new neighbor (spec §3.4)."""
        obj.invalid = True
        stack = list(obj.children or ())
        while stack:
            child = self.objs.get(stack.pop())
            if child is None:
                continue
            if child.kind is BlockKind.TCP:
                child.invalid = True
            else:
                stack.extend(child.children or ())

    def on_state_complete(self, layer: Layer, call: str, root: OffloadBlock) -> None:
        op = _OP[call]
        tree = self.trees.pop(id(root), None)
        if tree is None or tree.root is not root:
            self.violation(
                f"{layer.name}: {call} of a block list it was not given, or twice (§9 item 6)"
            )
            return
        if tree.lower is not layer:
            self.violation(
                f"{layer.name}: {call} of a block list given to {tree.lower.name} (§9 item 6)"
            )
        if tree.op != op:
            self.violation(f"{layer.name} completed a {tree.op} with {call} (§9 item 6)")
        walked = list(walk(root))
        if len(walked) != len(tree.blocks) or any(
            a is not b[0] for a, b in zip(walked, tree.blocks, strict=False)
        ):
            self.violation(
                f"{layer.name}: {call} returned a tree other than the one it got (§9 item 6)"
            )
            return
        legal = INITIATE_BLOCK_STATUSES if op == "Initiate" else STATE_OP_BLOCK_STATUSES
        for block, _, handle, slot, role, imr, pr, sh in tree.blocks:
            status = block.status
            if status not in legal:
                self.violation(
                    f"{layer.name}: {call} with illegal block status {status:#x} (§9 item 6)"
                )
            if block.im_reserved is not imr or block.protocol_reserved is not pr:
                self.violation(
                    f"{layer.name}: {call} with a block whose ImReserved or ProtocolReserved "
                    "was not restored (§9 item 9)"
                )
            if block is not root and block.source_handle is not sh:
                self.violation(
                    f"{layer.name}: {call} with a block's SourceHandle changed (§9 item 9)"
                )
            if op == "Initiate":
                self._initiate_block(layer, call, tree, block, handle, slot, role)
            elif handle is not None and handle.miniport_offload_context is not slot:
                self.violation(
                    f"{layer.name}: {call} changed the context slot of handle {handle.id} "
                    "(§9 item 6)"
                )
        if op == "Initiate":
            self._initiate_tree(layer, call, tree)
        else:
            self._state_op_done(layer, call, tree)

    # -- initiate ------------------------------------------------------------------------------
    def _initiate_block(
        self,
        layer: Layer,
        call: str,
        tree: _Tree,
        block: OffloadBlock,
        handle: NdisOffloadHandle | None,
        slot: Any,
        role: int,
    ) -> None:
        """Item 6 for one block of a completed initiate (spec §2.3, §3.2.4)."""
        status = block.status
        deps = list(block.dependents())
        ok = sum(1 for d in deps if d.status in OFFLOADED_STATUSES)
        offloaded = status in OFFLOADED_STATUSES
        if role == PLACEHOLDER:
            if status != SUCCESS:
                self.violation(
                    f"{layer.name}: {call}: placeholder block status {status:#x} (§9 item 6)"
                )
            return
        assert handle is not None
        if status == PARTIAL and (not deps or ok == len(deps)):
            self.violation(
                f"{layer.name}: {call}: PARTIAL_SUCCESS on handle {handle.id} with no "
                "dependent failed (§9 item 6)"
            )
        if status == SUCCESS and ok < len(deps):
            self.violation(
                f"{layer.name}: {call}: SUCCESS on handle {handle.id} with a dependent not "
                "offloaded (§9 item 6)"
            )
        if role == REFERENCE:
            if status == FAILURE and ok:
                self.violation(
                    f"{layer.name}: {call}: FAILURE on linker handle {handle.id} with a dependent "
                    "offloaded (§9 item 6)"
                )
            if status == PARTIAL and not ok:
                self.violation(
                    f"{layer.name}: {call}: PARTIAL_SUCCESS on linker handle {handle.id} with "
                    "every dependent failed (§9 item 6)"
                )
            if handle.miniport_offload_context is not slot:
                self.violation(
                    f"{layer.name}: {call} changed the context slot of linker handle "
                    f"{handle.id} (§9 item 6)"
                )
            return
        now = handle.miniport_offload_context
        if offloaded and now is None:
            self.violation(
                f"{layer.name}: {call}: handle {handle.id} offloaded but no context written in "
                "its slot (§9 item 6)"
            )
        elif not offloaded and now is not None:
            self.violation(
                f"{layer.name}: {call}: context written for handle {handle.id}, whose offload "
                "failed (§9 item 6)"
            )
        if not offloaded:
            up = [b for b in walk(block.dependent_block_list) if b.status in OFFLOADED_STATUSES]
            if up:
                self.violation(
                    f"{layer.name}: {call}: a dependent of failed handle {handle.id} offloaded "
                    "(§9 item 6)"
                )

    def _initiate_tree(self, layer: Layer, call: str, tree: _Tree) -> None:
        """Per-object bookkeeping once a completed initiate checked out."""
        first = tree.blocks[0]
        root = first[0]
        if first[4] == NEW and root.status not in OFFLOADED_STATUSES:
            # a failed root stops the walk (spec §3.2.4)
            later = [b for b in walk(root.next_block) if b.status in OFFLOADED_STATUSES]
            if later:
                self.violation(
                    f"{layer.name}: {call}: blocks offloaded after a failed root (§9 item 6)"
                )
        for block, _, handle, _, role, *_ in tree.blocks:
            if role != NEW:
                continue
            assert handle is not None
            obj = self.objs.get(handle.id)
            if obj is None or obj.phase != OFFLOADING:
                continue
            chain = tree.handover.pop(handle.id, None)
            if chain is not None:
                self._handover.difference_update(n.id for n, _, _ in chain)
            if block.status in OFFLOADED_STATUSES and handle.miniport_offload_context is not None:
                self._offloaded(layer, block, handle, obj)
                continue
            # not offloaded: forget it; its send data went back untouched (spec §3.2.4)
            for nbl, status, length in chain or ():
                if nbl.status != status or nbl.data_length != length:
                    self.violation(
                        f"{layer.name}: {call}: send NBL {nbl.id} of failed handle {handle.id} "
                        "touched (§3.2.4, §9 item 6)"
                    )
            self._forget(handle.id, obj)

    def _offloaded(
        self, layer: Layer, block: OffloadBlock, handle: NdisOffloadHandle, obj: _Obj
    ) -> None:
        ctx = handle.miniport_offload_context
        key = _ctx_key(ctx)
        if key in self.objs:
            self.violation(
                f"{layer.name} wrote handle {key} of {self.objs[key].layer.name} as the context "
                f"of handle {handle.id} (§9 item 9)"
            )
        owner = self.ctxs.get(key)
        if owner is not None:
            self.violation(
                f"{layer.name} wrote context {key} of {owner[0].name} (handle {owner[1]}) as the "
                f"context of handle {handle.id} (§9 item 9)"
            )
        self.ctxs[key] = (layer, handle.id)
        obj.ctx = ctx
        obj.phase = LIVE
        d = block.delegated
        if obj.kind is BlockKind.TCP and d is not None and self.check_streams:
            obj.r0 = d.RcvNxt
            buffered = d.BufferedData
            obj.b0 = _chain_len(buffered)
            if obj.b0:
                views = [v for nbl in iter_chain(buffered) for v in nbl.views()]
                obj.owe(_head(views, 0, HEAD), obj.b0)  # delivered first (spec §3.2.7)

    def _link_entry(self, handle: NdisOffloadHandle) -> None:
        """Note which upper handle the IM's own `handle` serves: its owner's `upper` (spec §1.2,
        the IM offload entry holds both). A MUX keeps one copy of a neighbor or path per NIC,
        each with its own handle, all serving the one upper handle."""
        upper = getattr(handle.owner, "upper", None)
        if isinstance(upper, NdisOffloadHandle):
            self.entry_handles.setdefault(upper.id, set()).add(handle.id)
            self._serves[handle.id] = upper.id

    def _unlink_entry(self, handle_id: int) -> None:
        up = self._serves.pop(handle_id, None)
        if up is None:
            return
        below = self.entry_handles.get(up)
        if below is not None:
            below.discard(handle_id)
            if not below:
                del self.entry_handles[up]

    def _forget(self, handle_id: int, obj: _Obj) -> None:
        del self.objs[handle_id]
        self._unlink_entry(handle_id)  # an IM's own handle gone below: its entry no longer has it
        if obj.parent:
            up = self.objs.get(obj.parent)
            if up is not None and up.children is not None:
                up.children.discard(handle_id)
        if obj.ctx is not None:
            self.ctxs.pop(_ctx_key(obj.ctx), None)

    # -- query, update, invalidate, terminate ------------------------------------------------------
    def _state_op_done(self, layer: Layer, call: str, tree: _Tree) -> None:
        op = tree.op
        gone: list[_Obj] = []
        for block, parent, handle, _, _, *_ in tree.blocks:
            if handle is None:
                continue
            obj = self.objs.get(handle.id)
            if obj is None or obj.layer is not tree.upper:
                continue
            if op == "Update":
                obj.updating -= 1
                if block.status == SUCCESS and obj.kind is BlockKind.PATH:
                    self._relink(handle.id, obj, parent)
            elif op == "Query":
                obj.querying -= 1
            elif op == "Invalidate":
                obj.invalidating -= 1
            elif obj.phase == TERMINATING:
                if block.status != SUCCESS:
                    obj.phase = LIVE  # hardware state corrupt: terminated again later (§3.7)
                    continue
                self._terminated(layer, call, tree, block, handle, obj)
                gone.append(obj)
        for obj in gone:  # a dependent in the same tree went with it
            left = [i for i in obj.children or () if i in self.objs]
            if left:
                self.violation(
                    f"{layer.name}: {call} of a {obj.kind.value} object left {len(left)} "
                    f"dependents offloaded (handle {left[0]} …) (§9 item 10)"
                )

    def _relink(self, handle_id: int, obj: _Obj, parent: OffloadBlock | None) -> None:
        """An update whose root names another neighbor moves the path below it (spec §3.4)."""
        new = parent.offload_handle if parent is not None else None
        if new is None or new.id == obj.parent:
            return
        old = self.objs.get(obj.parent)
        if old is not None and old.children is not None:
            old.children.discard(handle_id)
        up = self.objs.get(new.id)
        if up is not None and up.children is not None:
            up.children.add(handle_id)
        obj.parent = new.id

    def _terminated(
        self,
        layer: Layer,
        call: str,
        tree: _Tree,
        block: OffloadBlock,
        handle: NdisOffloadHandle,
        obj: _Obj,
    ) -> None:
        """After `NdisMTerminateOffloadComplete` nothing of the object is left at `layer`, nor
        below it (spec §3.6.3, §9 item 8)."""
        links = self.entry_handles.pop(handle.id, set()) if layer.has_protocol_edge else set()
        for link in sorted(links):
            self._serves.pop(link, None)
            if link in self.objs:
                self.violation(
                    f"{layer.name}: {call} of handle {handle.id} while its own handle {link} "
                    "below is still offloaded (§9 item 8)"
                )
        self._forget(handle.id, obj)
        self.dead.add(handle.id)
        if obj.kind is not BlockKind.TCP:
            return
        c = obj
        for kind, q in c.outstanding():
            self.violation(
                f"{layer.name}: {call} with {len(q)} {_KINDS[kind]} NBLs of handle "
                f"{handle.id} outstanding (§3.6.3, §9 item 8)"
            )
        if c.indicating:
            self.violation(
                f"{layer.name}: {call} with its indication of NBL {c.indicating} in progress "
                "(§3.6.3)"
            )
        d = block.delegated
        if d is None:
            return
        buffered = d.BufferedData
        for nbl in iter_chain(buffered):
            self._hand_up(obj, nbl)
        b1 = _chain_len(buffered)
        if c.expect_len:
            views = [v for nbl in iter_chain(buffered) for v in nbl.views()]
            k = min(len(c.expect), b1)
            if b1 < c.expect_len or _head(views, 0, k) != c.expect[:k]:
                self.violation(
                    f"{layer.name}: {call} of handle {handle.id} lost data it owed the host "
                    "(§9 item 4, §3.6.3)"
                )
        if c.r0 is not None:
            advanced = (d.RcvNxt - c.r0) % SEQ_MOD
            expected = (c.delivered + b1 - c.b0) % SEQ_MOD
            fin = (expected + 1) % SEQ_MOD if d.State in _FIN_RECEIVED else expected
            if advanced not in (expected, fin):
                self.violation(
                    f"{layer.name}: connection {obj.conn} received {advanced} bytes while "
                    f"offloaded but delivered {c.delivered} and returned {b1} (with {c.b0} "
                    "handed down): bytes lost or delivered twice (§9 item 4)"
                )

    def _hand_up(self, obj: _Obj, nbl: NetBufferList) -> None:
        """A terminate's BufferedData NBL goes up (from `obj.lower` to `obj.layer`) and comes
        back by receive-return (§3.6.3)."""
        ind = self.inds.get(nbl.id)
        if ind is None:
            self.inds[nbl.id] = _Ind(obj, ACCEPTED)
        elif ind.objs[-1].layer is obj.lower and ind.hops[-1] == ACCEPTED:
            ind.objs.append(obj)
            ind.hops.append(ACCEPTED)
        else:
            self.violation(
                f"{obj.lower.name}: BufferedData NBL {nbl.id} handed up but not held (§9 item 9)"
            )

    # -- drain -----------------------------------------------------------------------------------
    def check_drained(self, stats: dict[str, dict[str, Any]]) -> list[str]:
        """After every connection is closed: every table and count back to zero (§9 items 8
        and 10)."""
        problems = []
        for name, st in stats.items():
            for gauge in ("offloads_active", "handles", "outstanding_nbls"):
                if st[gauge]:
                    problems.append(f"{name}.{gauge} = {st[gauge]} after drain")
        if self.nbls:
            problems.append(f"{len(self.nbls)} NBLs still outstanding: {list(self.nbls)[:5]}")
        if self.entry_handles or self._handover:
            problems.append(
                f"{len(self.entry_handles)} IM entries and {len(self._handover)} initiate send "
                "NBLs still tracked"
            )
        if self.objs:
            problems.append(f"{len(self.objs)} handles still offloaded: {list(self.objs)[:5]}")
        if self.trees:
            problems.append(f"{len(self.trees)} state operations still in flight")
        if self.inds:
            problems.append(f"{len(self.inds)} indicated NBLs not returned: {list(self.inds)[:5]}")
        return problems
