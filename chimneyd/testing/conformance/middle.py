"""Checks for a kind in the middle of a stack (an IM driver): everything it owes the layer
above and the layer below (spec §1.5, §1.6, §3.8, §4.8, §5.6, §9).

One function per check, each a short scenario; the module is long because the list is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from chimneyd.ndis.blocks import (
    NeighborOffloadStateCached,
    NeighborOffloadStateConst,
    NeighborOffloadStateDelegated,
    OffloadBlock,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    walk,
)
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.oid import NdisOidRequest, NdisTcpConnectionOffloadParameters, Oid
from chimneyd.ndis.status import (
    IndicateOffloadEvent,
    NdisStatus,
    TcpOffloadEventType,
    TcpUploadReason,
)

from ..miniport_stub import StubContext
from ..records import OffloadTree, accept_all, accept_bytes, nbl_bytes, refuse_all
from ..stack import Stack
from ._drive import (
    bottom_stub,
    completed_before,
    completion,
    expect_same_shape,
    expect_state_passed_down,
    fill_markers,
    lower_contexts,
    marker,
    offload,
    state_op,
    upload,
)
from ._suite import (
    ABORTED,
    ABORTIVE,
    FAILURE,
    GRACEFUL,
    INDICATIONS,
    SUCCESS,
    UPLOADING,
    S,
    expect,
    expect_same,
    layer_check,
)


@layer_check("middle")
def state_operations_complete_only_after_the_lower_completion(st: Stack) -> None:
    """Each of the five state operations goes down once, with the tree's shape, state and send
    NBLs, and comes back up once, with the same root, ImReserved and ProtocolReserved as given,
    only after the layer below completed it (spec §3.1, §3.8, §1.6, §9 items 6 and 9)."""
    top = st.top
    tree = top.connection_tree([None, None], send=[b"queued"])
    ctxs: dict[int, StubContext] = {}
    ops: list[tuple[str, Callable[[], OffloadBlock]]] = [
        ("Initiate", lambda: tree.root),
        ("Query", lambda: top.reference_tree(tree, state="delegated")),
        ("Update", lambda: top.reference_tree(tree, state="cached")),
        ("Invalidate", lambda: top.reference_tree(tree)),
        ("Terminate", lambda: top.reference_tree(tree, None, True, True, state="delegated")),
    ]
    for op, make_root in ops:
        root = make_root()
        im_mark, protocol_mark = object(), object()
        root.im_reserved, root.protocol_reserved = im_mark, protocol_mark
        before = len(top.state_completions)
        getattr(top, op.lower())(root)
        st.run()
        pending = bottom_stub(st).pending_state()
        expect(
            len(pending) == 1 and pending[0].op == op,
            f"{op}: the layer below was given {[r.op for r in pending]}, not one {op}",
        )
        expect_same_shape(root, pending[0].root, op)
        expect_state_passed_down(root, pending[0].root, op)
        expect(
            len(top.state_completions) == before,
            f"{op} completed to the top before the layer below completed it (spec §3.8)",
        )
        bottom_stub(st).complete_state(pending[0], fill=fill_markers)
        st.run()
        done = top.state_completions[before:]
        expect(len(done) == 1, f"{op}: {len(done)} completions reached the top, not one")
        expect(
            done[0].root is root, f"{op}: the root returned is not the one given (spec §9 item 6)"
        )
        expect(done[0].op == op, f"{op}: completed as {done[0].op}")
        expect(all(s == SUCCESS for s in done[0].statuses), f"{op}: statuses changed on the way up")
        expect(root.im_reserved is im_mark, f"{op}: ImReserved not restored (spec §1.6)")
        expect(root.protocol_reserved is protocol_mark, f"{op}: ProtocolReserved touched")
        if op == "Initiate":
            ctxs = lower_contexts(st, pending[0], root)
        if op in ("Query", "Terminate"):
            for block in walk(root):
                h = block.offload_handle
                if h is None or h.id not in ctxs or block.delegated is None:
                    continue
                expect(
                    block.delegated.RcvNxt == marker(ctxs[h.id]),
                    f"{op}: delegated state filled below did not reach the top (spec §1.6 [INF])",
                )
    # the send data handed down at initiate came back at terminate, untouched
    expect(len(top.returned_sends) == 2, "send data given at initiate was not handed back up")


@layer_check("middle")
def block_statuses_pass_through_unchanged(st: Stack) -> None:
    """Every block's Status written below reaches the top unchanged, FAILURE included, for
    query, update, invalidate and terminate; a failed terminate leaves the object offloaded
    at every layer until a later one succeeds (spec §3.1 items 4-5, §3.7)."""
    top = st.top
    tree = top.connection_tree([None, None, None])
    offload(st, tree)
    t1, t2, t3 = tree.tcp
    # walk order of a reference tree: neighbor, path, T1, T2, T3
    for op, state, statuses in (
        ("Query", "delegated", [SUCCESS, SUCCESS, SUCCESS, FAILURE, SUCCESS]),
        ("Update", "cached", [SUCCESS, SUCCESS, SUCCESS, SUCCESS, FAILURE]),
        ("Invalidate", "", [SUCCESS, SUCCESS, FAILURE, SUCCESS, SUCCESS]),
    ):
        done = state_op(st, op, top.reference_tree(tree, state=state), statuses)
        expect(done.statuses == statuses, f"{op}: statuses {done.statuses} came up for {statuses}")
    # a terminate whose block fails (corrupt hardware, spec §3.7): T2 stays offloaded
    root = top.reference_tree(tree, [t2], state="delegated")
    done = state_op(st, "Terminate", root, [SUCCESS, SUCCESS, FAILURE])
    expect(done.statuses == [SUCCESS, SUCCESS, FAILURE], f"terminate statuses {done.statuses}")
    expect(not t2.dead, "a handle whose terminate failed is dead")
    for layer in st.under_test:
        expect(
            layer.stats.offloads_active == 5,
            f"{layer.name} dropped an object whose terminate failed (offloads_active "
            f"{layer.stats.offloads_active}, expected 5)",
        )
    sends = top.send(t2, b"still offloaded")
    st.run()
    bottom_stub(st).complete(*sends)
    st.run()
    expect(completion(st, sends[0])[0] == SUCCESS, "I/O after a failed terminate did not work")
    upload(st, tree, [t1, t2, t3])


@layer_check("middle")
def partial_initiate_writes_slots_only_for_offloaded_blocks(st: Stack) -> None:
    """Spec §3.2.4 worked example N1 → {P1 → {T1, T2}, P2 → {T3}}: T2 fails for resources, P2
    fails, T3 is never tried. The statuses reach the top unchanged, slots are written only for
    N1, P1, T1 — with the layer's own contexts — and T2's send NBLs come back untouched; a
    later tree of linkers offloads beneath N1 and P1 (spec §2.3, §3.2.3, §9 item 6)."""
    top = st.top
    n1 = top.neighbor_block()
    p1 = n1.add_dependent(top.path_block())
    t1 = p1.add_dependent(top.tcp_block())
    t2 = p1.add_dependent(top.tcp_block(send=[b"not yet acknowledged", b"either"]))
    p2 = n1.add_dependent(top.path_block(dst=b"\x7f\x00\x00\x03"))
    t3 = p2.add_dependent(top.tcp_block())
    blocks = [n1, p1, t1, t2, p2, t3]
    partial = S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS
    statuses = [partial, partial, SUCCESS, S.NDIS_STATUS_RESOURCES, FAILURE, FAILURE]
    chain = list(iter_chain(t2.net_buffer_list_chain))
    tree = OffloadTree(n1, n1.offload_handle)
    request = offload(st, tree, statuses)
    expect(
        [b.status for b in blocks] == statuses,
        f"statuses {[S(b.status).name for b in blocks]} reached the top for {[s.name for s in statuses]}",
    )
    lower = lower_contexts(st, request, n1)
    for block, offloaded in zip(blocks, [True, True, True, False, False, False], strict=True):
        h = block.offload_handle
        assert h is not None
        slot = h.miniport_offload_context
        expect(
            (slot is not None) is offloaded,
            f"the slot of {block.kind.value} handle {h.id} is "
            f"{'written' if slot is not None else 'empty'} for status {S(block.status).name} "
            f"(spec §3.2.3)",
        )
        expect(
            slot is None or slot is not lower.get(h.id),
            "the top's slot holds the lower layer's context (spec §1.5)",
        )
    for nbl in chain:
        expect(
            nbl.status == S.NDIS_STATUS_PENDING and not nbl.source_bindings,
            f"send NBL {nbl.id} of the failed connection was touched (spec §3.2.4)",
        )
    expect_same(top.returned_sends, chain, "send data of the failed connection, handed back")
    expect(not top.completions, "NBLs of a failed initiate were completed (spec §3.2.4)")
    for layer in st.under_test:
        # a pass-through IM's entry is both its context above and its handle below (3); a MUX
        # keeps a neighbor's and a path's context apart from its instance on the NIC (3 + 2)
        expect(
            layer.stats.offloads_active == 3 and layer.stats.handles in (3, 5),
            f"{layer.name} counts {layer.stats.offloads_active} offloads and "
            f"{layer.stats.handles} handles after a partial initiate of 3 objects",
        )
    # linkers: N1 and P1 referenced, a new T4 beneath them
    assert n1.offload_handle is not None and p1.offload_handle is not None
    slots = (n1.offload_handle.miniport_offload_context, p1.offload_handle.miniport_offload_context)
    link = top.neighbor_block(n1.offload_handle)
    lp = link.add_dependent(top.path_block(p1.offload_handle))
    t4 = lp.add_dependent(top.tcp_block())
    offload(st, OffloadTree(link, n1.offload_handle))
    expect(
        (n1.offload_handle.miniport_offload_context, p1.offload_handle.miniport_offload_context)
        == slots,
        "a linker's slot was rewritten (spec §2.3)",
    )
    assert t1.offload_handle is not None and t4.offload_handle is not None
    final = OffloadTree(
        n1, n1.offload_handle, [p1.offload_handle], [t1.offload_handle, t4.offload_handle]
    )
    upload(st, final)


@layer_check("middle")
def handles_and_contexts_are_translated_at_each_layer(st: Stack) -> None:
    """The layer below is given the kind's own handles, never the top's, one per object; the
    top's slots hold the kind's own contexts, never the lower layer's; I/O and indications of
    two connections keep to their own handles and contexts (spec §1.5, §9 item 9)."""
    top = st.top
    tree = top.connection_tree([None, None])
    request = offload(st, tree)
    assert request is not None
    top_handles = tree.handles
    lower_handles = [b.ndis_offload_handle for b in walk(request.root)]
    ids = {h.id for h in top_handles}
    for h in lower_handles:
        expect(h is not None, "a block reached the layer below without a handle")
        assert h is not None
        expect(
            h.id not in ids and all(h is not t for t in top_handles),
            f"the layer below was given the top's handle {h.id} (spec §9 item 9)",
        )
        expect(h.layer != top.name, f"the layer below was given a handle of {h.layer}")
    expect(
        len({id(h) for h in lower_handles}) == len(lower_handles),
        "two objects share one handle below",
    )
    ctxs = lower_contexts(st, request, tree.root)
    lower_ctx_ids = {id(c) for c in ctxs.values()}
    for h in top_handles:
        slot = h.miniport_offload_context
        expect(
            id(slot) not in lower_ctx_ids,
            f"the top's slot of handle {h.id} holds the lower layer's context (spec §1.5)",
        )
    a, b = tree.tcp
    sa, sb = top.send(a, b"to A"), top.send(b, b"to B")
    st.run()
    bottom = bottom_stub(st)
    (ra, rb) = bottom.io[-2:]
    expect(
        (ra.context, rb.context) == (ctxs[a.id], ctxs[b.id]),
        "I/O reached the layer below on the wrong connection's context (spec §1.5)",
    )
    expect_same([*ra.nbls, *rb.nbls], [*sa, *sb], "send NBLs below")
    bottom.indicate_event(ctxs[b.id], TcpOffloadEventType.TcpIndicateSendBacklogChange, 4096)
    bottom.indicate_event(ctxs[a.id], TcpOffloadEventType.TcpIndicateSendBacklogChange, 8192)
    st.run()
    expect(
        [(e.handle, e.info) for e in top.events] == [(b, 4096), (a, 8192)],
        "events reached the top on the wrong handles (spec §5.6)",
    )
    bottom.complete(*sa, *sb)
    upload(st, tree)
    for h in lower_handles:
        assert h is not None
        expect(h.dead, f"the lower handle {h.id} is live after terminate (spec §9 item 8)")


@layer_check("middle")
def io_calls_are_relayed_with_the_same_nbl(st: Stack) -> None:
    """Send, receive, disconnect (both flags), forward and receive-return reach the layer below
    with the very NBL objects given above, in chain order, with the flags unchanged, on the
    connection's own context; nothing completes before the layer below completes it
    (spec §4.0, §4.8, seed "Propagating an I/O operation")."""
    top = st.top
    bottom = bottom_stub(st)
    tree = top.connection_tree([None, None])
    ctxs = lower_contexts(st, offload(st, tree), tree.root)
    a, b = tree.tcp
    calls: list[tuple[str, list[NetBufferList], int | None, NdisOffloadHandle]] = [
        ("send", top.send(a, b"a" * 10, b"b" * 20, b"c" * 30), None, a),
        ("receive", top.receive(a, 16, 32), None, a),
        ("forward", top.forward(a, b"seg-1", b"seg-2"), None, a),
        ("disconnect", [top.disconnect(a, GRACEFUL, b"last")], int(GRACEFUL), a),
        ("disconnect", [top.disconnect(b, ABORTIVE)], int(ABORTIVE), b),
    ]
    st.run()
    expect(
        all(r == S.NDIS_STATUS_PENDING for r in top.io_returns),
        "an I/O call did not return PENDING (spec §4.0)",
    )
    expect(
        len(bottom.io) == len(calls),
        f"the layer below got {len(bottom.io)} I/O calls for {len(calls)}",
    )
    for (kind, nbls, flags, handle), request in zip(calls, bottom.io, strict=True):
        expect(request.kind == kind, f"{kind} reached the layer below as {request.kind}")
        expect_same(request.nbls, nbls, f"{kind} NBLs below")
        expect(request.context is ctxs[handle.id], f"{kind} went down on another connection")
        expect(request.flags == flags, f"disconnect flags {request.flags} below, {flags} given")
    expect(not top.completions, "I/O completed to the top before the layer below completed it")
    for _, nbls, _, _ in calls:
        bottom.complete(*nbls)
    st.run()
    for kind, nbls, _, _ in calls:
        expect_same(
            [n for n in top.completed(kind) if n in nbls],
            nbls,
            f"{kind} completions",
        )
    # receive-return: two indications returned in one call, the same NBLs, in order
    x1 = bottom.indicate_receive(ctxs[a.id], b"first")
    x2 = bottom.indicate_receive(ctxs[b.id], b"second")
    st.run()
    expect_same(top.held, [x1, x2], "indicated NBLs at the top")
    top.return_indications()
    st.run()
    expect_same(bottom.receive_returns, [x1, x2], "receive-return below")
    upload(st, tree)


@layer_check("middle")
def completions_come_back_once_each_in_posting_order(st: Stack) -> None:
    """Completions split and batched below — several connections in one call, one request's
    NBLs over several calls — reach the top exactly once each, through the top's own binding,
    in posting order per connection and kind (spec §4.0, §4.1, §4.2, §9 items 1-2)."""
    top = st.top
    bottom = bottom_stub(st)
    tree = top.connection_tree([None, None])
    offload(st, tree)
    a, b = tree.tcp
    a_sends = top.send(a, b"a1", b"a2", b"a3", b"a4")
    b_sends = top.send(b, b"b1", b"b2")
    a_recvs = top.receive(a, 8, 8, 8)
    st.run()
    a1, a2, a3, a4 = a_sends
    b1, b2 = b_sends
    r1, r2, r3 = a_recvs
    bottom.complete(a1, a2)
    bottom.complete(b1)
    bottom.complete(r1)
    bottom.complete(a3)
    bottom.complete(r2, r3, status=SUCCESS, transferred=0)
    bottom.complete(a4, b2)  # two connections in one completion call
    st.run()
    got = Counter(id(c.nbl) for c in top.completions)
    expect(
        all(got[id(n)] == 1 for n in (*a_sends, *b_sends, *a_recvs)),
        f"not exactly one completion per NBL: {[got[id(n)] for n in (*a_sends, *b_sends, *a_recvs)]}",
    )
    expect_same([n for n in top.completed("send") if n in a_sends], a_sends, "A's send completions")
    expect_same([n for n in top.completed("send") if n in b_sends], b_sends, "B's send completions")
    expect_same(top.completed("receive"), a_recvs, "A's receive completions")
    expect(
        all(c.binding is st.binding for c in top.completions),
        "a completion reached the top through another binding (spec §1.5 item 8)",
    )
    upload(st, tree)


@layer_check("middle")
def io_statuses_pass_through_unchanged(st: Stack) -> None:
    """Every completion status and byte count written below reaches the top unchanged:
    partial sends, UPLOAD_IN_PROGRESS, REQUEST_ABORTED, INVALID_STATE, the IM upload codes
    (spec §4.1, §4.2, §4.5, §4.6, §4.8)."""
    top = st.top
    bottom = bottom_stub(st)
    tree = top.connection_tree([None, None, None])
    offload(st, tree)
    a, b, c = tree.tcp
    plan: list[tuple[NetBufferList, NdisStatus, int]] = []

    def post(nbls: list[NetBufferList], *outcomes: tuple[NdisStatus, int]) -> None:
        st.run()
        for nbl, (status, n) in zip(nbls, outcomes, strict=True):
            bottom.complete(nbl, status=status, transferred=n)
            plan.append((nbl, status, n))

    post(
        top.send(a, b"x" * 10, b"y" * 10, b"z" * 10), (SUCCESS, 10), (UPLOADING, 4), (UPLOADING, 0)
    )
    post(top.send(b, b"p" * 10, b"q" * 10), (ABORTED, 6), (ABORTED, 0))
    post(
        top.send(c, b"r" * 5, b"s" * 5),
        (S.NDIS_STATUS_REQUEST_UPLOAD, 0),
        (S.NDIS_STATUS_UPLOAD_REQUESTED, 0),
    )
    post(top.receive(a, 10, 10, 10), (SUCCESS, 5), (S.NDIS_STATUS_INVALID_STATE, 0), (ABORTED, 2))
    post([top.disconnect(a)], (UPLOADING, 0))
    post([top.disconnect(b, data=b"bye")], (ABORTED, 1))
    post([top.disconnect(c, ABORTIVE)], (SUCCESS, 0))
    post(top.forward(a, b"f1", b"f2", b"f3"), (SUCCESS, 2), (UPLOADING, 0), (ABORTED, 0))
    st.run()
    for nbl, status, n in plan:
        got = top.completion_of(nbl)
        expect(got is not None, f"NBL {nbl.id} never completed to the top")
        assert got is not None
        expect(
            (got.status, got.bytes_transferred) == (status, n),
            f"{got.kind} NBL {nbl.id}: {S(got.status).name}/{got.bytes_transferred} reached the "
            f"top for {status.name}/{n} written below",
        )
        expect(
            got.length_after == got.length_before - n,
            f"NBL {nbl.id} was advanced by {got.length_before - got.length_after}, not {n}",
        )
    upload(st, tree)


@layer_check("middle")
def indications_are_relayed_up_with_the_upper_handle(st: Stack) -> None:
    """Every event type with its information, and receive indications with their NBL and
    status, reach the top on the top's own handle; the top's synchronous answer (SUCCESS,
    NOT_ACCEPTED, PARTIALLY_ACCEPTED and bytes consumed) reaches the indicating layer
    unchanged; data indicated and then the peer's FIN on one connection reach the top in that
    order (spec §4.3, §4.8 [INF], §5.1, §5.6)."""
    top = st.top
    bottom = bottom_stub(st)
    tree = top.connection_tree([None, None, None])
    ctxs = lower_contexts(st, offload(st, tree), tree.root)
    a, b, c = tree.tcp
    ca, cb = ctxs[a.id], ctxs[b.id]
    E = TcpOffloadEventType
    sent = [
        (ca, E.TcpIndicateSendBacklogChange, 131072),
        (cb, E.TcpIndicateRetrieve, int(TcpUploadReason.HighDropRate)),
        (ca, E.TcpIndicateDisconnect, 0),
        (cb, E.TcpIndicateAbort, 0),
        (ca, E.TcpIndicateRetrieve, int(TcpUploadReason.UploadRequested)),
    ]
    for ctx, event, info in sent:
        bottom.indicate_event(ctx, event, info)
    st.run()
    expected = [({ca.id: a, cb.id: b}[ctx.id], event, info) for ctx, event, info in sent]
    got = [(e.handle, e.event_type, e.info) for e in top.events]
    expect(
        len(got) == len(expected)
        and all(g[0] is x[0] and g[1:] == x[1:] for g, x in zip(got, expected, strict=True)),
        f"events at the top {got} for {expected}",
    )
    cases = [
        (accept_all, b"all of it", SUCCESS, 9),
        (refuse_all, b"none of it", S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0),
        (accept_bytes(4), b"some of it", S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, 4),
    ]
    for policy, data, status, consumed in cases:
        top.receive_policy = policy
        nbl = bottom.indicate_receive(cb, data)
        st.run()
        ind = top.indications[-1]
        expect(
            ind.nbl is nbl, "the receive indication reached the top with another NBL (spec §4.3)"
        )
        expect(ind.handle is b, "the receive indication reached the top on another handle")
        expect(ind.status == SUCCESS, f"indication status {S(ind.status).name}, given SUCCESS")
        expect(ind.data == data, "the indicated bytes changed on the way up")
        back = bottom.indication_returns[-1]
        expect(
            back[0] is nbl and back[1:] == (status, consumed),
            f"the indicating layer got {S(back[1]).name}/{back[2]} for the top's {status.name}/{consumed}",
        )
    top.receive_policy = accept_all
    # the host must not hear of the FIN before the bytes in front of it (spec §5.1)
    mark = len(st.scheduler.log)
    last = bottom.indicate_receive(ctxs[c.id], b"the last bytes before the FIN")
    bottom.indicate_event(ctxs[c.id], E.TcpIndicateDisconnect)
    st.run()
    up = [d.handler for d in st.scheduler.log[mark:] if d.layer is top and d.handler in INDICATIONS]
    expect(
        up == ["ProtocolTcpOffloadReceiveIndicate", "ProtocolTcpOffloadEvent"],
        f"data then a disconnect indicated on one connection reached the top as {up} "
        f"(spec §5.1, §5.6: relayed in order)",
    )
    expect(
        top.indications[-1].nbl is last
        and top.indications[-1].handle is c
        and (top.events[-1].handle, top.events[-1].event_type) == (c, E.TcpIndicateDisconnect),
        "the data and the disconnect did not reach the top on their connection's handle",
    )
    top.return_indications()
    upload(st, tree)


@layer_check("middle")
def status_indications_are_relayed_up(st: Stack) -> None:
    """A NIC's NDIS_STATUS_OFFLOAD_PAUSE, UPLOAD_ALL and OFFLOAD_RESUME (spec §5.5): the top
    hears PAUSE first, then is asked to upload its connection — UPLOAD_ALL relayed, or a
    mandatory `TcpIndicateRetrieve` on that connection (how a teaming MUX asks for only the
    failed NIC's connections, spec §5.2) — its terminate goes through, and once the NIC
    resumes the last status the top heard is RESUME; each status once, on the top's binding."""
    top = st.top
    bottom = bottom_stub(st)
    tree = top.connection_tree([None])
    offload(st, tree)
    for code in (S.NDIS_STATUS_OFFLOAD_PAUSE, S.NDIS_STATUS_UPLOAD_ALL):
        bottom.indicate_status(code)
    st.run()
    got = [status for _, status in top.status_indications]
    expect(got[:1] == [S.NDIS_STATUS_OFFLOAD_PAUSE], f"the top heard {got} first, not PAUSE")
    retrieves = [
        e
        for e in top.events
        if e.event_type is TcpOffloadEventType.TcpIndicateRetrieve
        and e.handle is tree.tcp[0]
        and TcpUploadReason(e.info).mandatory
    ]
    expect(
        S.NDIS_STATUS_UPLOAD_ALL in got or len(retrieves) == 1,
        f"the top was not asked to upload its connection: statuses {got}, "
        f"{len(retrieves)} mandatory retrieves",
    )
    upload(st, tree)
    bottom.indicate_status(S.NDIS_STATUS_OFFLOAD_RESUME)
    st.run()
    got = [status for _, status in top.status_indications]
    expect(got[-1:] == [S.NDIS_STATUS_OFFLOAD_RESUME], f"status indications at the top: {got}")
    expect(len(got) == len(set(got)), f"a status reached the top twice: {got}")
    expect(all(bd is st.binding for bd, _ in top.status_indications), "on another binding")


@layer_check("middle")
def oid_requests_and_offload_events_are_relayed(st: Stack) -> None:
    """The capability query and the parameters set pass down and their answers come up on the
    top's binding (spec §1.3: an IM that allows chimney passes both down); a neighbor event
    (`NdisMOffloadEventIndicate`) reaches the top with the top's own neighbor handle, and the
    HRD the top writes reaches the NIC that asked (spec §5.4, §5.6)."""
    top = st.top
    bottom = bottom_stub(st)
    query = NdisOidRequest(Oid.OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG)
    params = NdisOidRequest(
        Oid.OID_TCP_CONNECTION_OFFLOAD_PARAMETERS,
        set=True,
        data=NdisTcpConnectionOffloadParameters(NceStaleTicks=1234),
    )
    top.oid(query)
    top.oid(params)
    st.run()
    answered = [(bd, req) for bd, req in top.oid_completions]
    expect([req for _, req in answered] == [query, params], "the OID requests did not come back")
    expect(all(bd is st.binding for bd, _ in answered), "an OID answer came on another binding")
    # what the NIC said, passed on (a MUX over one NIC answers the same values, spec §8)
    expect(query.data == bottom.capabilities, "the capabilities are not the NIC's")
    expect(
        query.status == params.status == SUCCESS,
        f"OID statuses {query.status!r}, {params.status!r}",
    )
    seen = [req for name, (req,) in bottom.calls if name == "MiniportOidRequest"]
    expect(
        any(not r.set and r.oid is query.oid for r in seen),
        "the NIC was never asked for its capabilities",
    )
    sets = [r for r in seen if r.set]
    expect(
        len(sets) == 1 and sets[0].data == params.data,
        f"the NIC saw {len(sets)} parameter sets, not the one from the top",
    )
    tree = top.connection_tree([None])
    request = offload(st, tree)
    assert tree.neighbor is not None
    ctx = lower_contexts(st, request, tree.root)[tree.neighbor.id]
    block = new_neighbor_block(
        None,
        NeighborOffloadStateConst(),
        NeighborOffloadStateCached(HostReachabilityDelta=99),
        NeighborOffloadStateDelegated(NicReachabilityDelta=7),
    )
    block.status = SUCCESS
    bottom.indicate_offload_event(ctx, IndicateOffloadEvent.NeighborReachabilityQuery, block)
    st.run()
    expect(len(top.offload_events) == 1, f"{len(top.offload_events)} offload events at the top")
    got, code = top.offload_events[0]
    expect(code is IndicateOffloadEvent.NeighborReachabilityQuery, f"event code {code!r}")
    expect(got.offload_handle is tree.neighbor, "the top got another handle than its neighbor's")
    expect(got.delegated.NicReachabilityDelta == 7, "the NRD did not come up")
    expect(bottom.offload_event_returns == [block], "the answer did not reach the NIC")
    expect(block.cached.HostReachabilityDelta == 1, "the top's HRD did not reach the NIC")
    upload(st, tree)


@layer_check("middle")
def terminate_with_io_outstanding(st: Stack) -> None:
    """A terminate issued with sends, a receive, a forward and a disconnect outstanding and an
    indicated NBL held: what the layer below completes — and an event it indicates — before
    its terminate completion reaches the top first; sends it hands back come up in the TCP
    block's NetBufferListChain, in order, never completed; BufferedData comes up; the held NBL
    and the buffered one return down after the terminate (spec §3.6.3, §6.2, §9 item 8)."""
    top = st.top
    bottom = bottom_stub(st)
    tree = top.connection_tree([None, None])
    ctxs = lower_contexts(st, offload(st, tree), tree.root)
    h, g = tree.tcp
    ctx = ctxs[h.id]
    s1, s2, s3 = top.send(h, b"acked", b"unacked-1", b"unacked-2")
    (r1,) = top.receive(h, 8)
    (f1,) = top.forward(h, b"segment")
    d = top.disconnect(g)  # no sends before it: its completion may precede the terminate's
    st.run()
    held = bottom.indicate_receive(ctx, b"held by the top")
    st.run()
    bottom.complete(s1)
    st.run()
    root = top.reference_tree(tree, None, True, True, state="delegated")
    top.terminate(root)
    st.run()
    (request,) = bottom.pending_state("Terminate")
    # the layer below does what a target must before completing (spec §3.6.3)
    bottom.complete(r1, status=UPLOADING)
    bottom.complete(f1, status=UPLOADING)
    bottom.complete(d, status=UPLOADING)
    # the layer below may indicate until its terminate completion (spec §3.6.3, §9 item 8)
    bottom.indicate_event(ctx, TcpOffloadEventType.TcpIndicateSendBacklogChange, 65536)

    def give_back(block: OffloadBlock, c: StubContext) -> None:
        if c is ctx:
            bottom.hand_back_buffered(block, b"undelivered")

    bottom.complete_state(request, fill=give_back)
    st.run()
    for nbl in (s1, r1, f1, d):
        completed_before(st, nbl, "ProtocolTerminateOffloadComplete", h)
    log = st.scheduler.log
    event = next(
        (x.seq for x in log if x.layer is top and x.handler == "ProtocolTcpOffloadEvent"), None
    )
    done = next(
        (x.seq for x in log if x.layer is top and x.handler == "ProtocolTerminateOffloadComplete"),
        None,
    )
    expect(
        event is not None and done is not None and event < done,
        "an event indicated below before the terminate completion did not reach the top "
        "before it (spec §9 item 8)",
    )
    expect(
        [(e.handle, e.info) for e in top.events] == [(h, 65536)],
        "the event before the terminate completion reached the top on another handle",
    )
    tcp_block = next(b for b in walk(root) if b.offload_handle is h)
    expect_same(list(iter_chain(tcp_block.net_buffer_list_chain)), [s2, s3], "sends handed back")
    expect(
        top.completion_of(s2) is None and top.completion_of(s3) is None,
        "a send handed back by terminate was also completed (spec §3.6.3)",
    )
    d_state = tcp_block.delegated
    assert isinstance(d_state, TcpOffloadStateDelegated)
    expect(
        d_state.BufferedData is not None and nbl_bytes(d_state.BufferedData) == b"undelivered",
        "BufferedData did not reach the top (spec §3.6.3)",
    )
    expect(h.dead and g.dead, "a handle is live after terminate")
    top.return_indications()
    st.run()
    expect_same(
        bottom.receive_returns, [held, d_state.BufferedData], "NBLs returned after terminate"
    )


@layer_check("middle")
def drain_to_zero(st: Stack) -> None:
    """Several trees, linkers, I/O of every kind, a failed initiate, indications, terminates in
    pieces (connections first, then their path and neighbor): afterwards every layer's gauges
    are zero and the checkers saw nothing (spec §9 items 8 and 10)."""
    top = st.top
    bottom = bottom_stub(st)
    tree = top.connection_tree([None, None, None])
    ctxs = lower_contexts(st, offload(st, tree), tree.root)
    a, b, c = tree.tcp
    # a second connection tree under the same neighbor and path, one connection failing
    assert tree.neighbor is not None
    link = top.neighbor_block(tree.neighbor)
    lp = link.add_dependent(top.path_block(tree.paths[0]))
    d_block = lp.add_dependent(top.tcp_block())
    lp.add_dependent(top.tcp_block(send=[b"stays with the host"]))
    more = offload(
        st,
        OffloadTree(link, tree.neighbor),
        # the path linker has one dependent offloaded and one not: partial (spec §2.3)
        [
            SUCCESS,
            S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS,
            SUCCESS,
            S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES,
        ],
    )
    assert d_block.offload_handle is not None
    d = d_block.offload_handle
    ctxs.update(lower_contexts(st, more, link))
    for i, h in enumerate((a, b, c, d)):
        sends = top.send(h, b"s" * (i + 1), b"t" * (i + 2))
        recvs = top.receive(h, 4)
        fwd = top.forward(h, b"f")
        st.run()
        bottom.complete(*sends[:1])
        bottom.complete(*recvs, status=SUCCESS, transferred=0)
        bottom.complete(*fwd)
        bottom.indicate_receive(ctxs[h.id], b"data")
        bottom.indicate_event(ctxs[h.id], TcpOffloadEventType.TcpIndicateSendBacklogChange, 1 << 16)
        st.run()
    top.return_indications()
    st.run()
    upload(st, tree, [a, b], objects=False)
    upload(st, OffloadTree(tree.root, tree.neighbor, tree.paths, [c, d]))
    expect(len(top.returned_sends) == 5, f"{len(top.returned_sends)} sends handed back, expected 5")
