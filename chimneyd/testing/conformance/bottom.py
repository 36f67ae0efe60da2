"""Checks for a kind at the bottom of a stack (an offload target over MemoryWires): what a
target owes the layer above — completions with legal statuses at the right moments,
indications only after initiate completion, nothing after terminate (spec §3, §4, §5, §9).

One function per check, each a short scenario; the module is long because the list is.
"""

from __future__ import annotations

from chimneyd.drivers.segment import TH_ACK, TH_PSH, build_segment
from chimneyd.drivers.tcp import offset_of, seq
from chimneyd.ndis.blocks import TcpOffloadStateCached, TcpOffloadStateDelegated, walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import iter_chain
from chimneyd.ndis.oid import (
    NdisOidRequest,
    NdisTcpConnectionOffload,
    NdisTcpConnectionOffloadParameters,
    Oid,
)
from chimneyd.ndis.status import OFFLOADED_STATUSES, TcpOffloadEventType, TcpUploadReason

from ..audit import LEGAL_IO_STATUSES
from ..memwire import MemoryWire
from ..records import OffloadTree, accept_all, accept_bytes, nbl_bytes, refuse_all
from ..stack import Stack
from ._drive import completed_before, completed_first, completion, offload, state_op, upload
from ._suite import (
    ABORTED,
    ABORTIVE,
    CHIMNEY_UP,
    GRACEFUL,
    INDICATIONS,
    SUCCESS,
    UPLOADING,
    S,
    expect,
    expect_same,
    layer_check,
)


@layer_check("bottom")
def target_initiate_completes_with_legal_statuses(st: Stack) -> None:
    """Initiate of known connections completes once with the same root, a legal status on
    every block, every slot written with a distinct context of the target's own, and the
    target owning each connection's wire from then on (spec §3.2, §9 item 6)."""
    top = st.top
    w1, w2 = st.wires.open(), st.wires.open()
    tree = top.connection_tree([w1, w2])
    offload(st, tree)
    slots = [h.miniport_offload_context for h in tree.handles]
    expect(all(s is not None for s in slots), "an offloaded block's slot is empty (spec §3.2.3)")
    expect(len({id(s) for s in slots}) == len(slots), "two objects share one context")
    for w in (w1, w2):
        expect(w.owner is not top and w.owner in st.under_test, f"{w!r} not taken by the target")
    w2.peer_send(b"to the target")
    st.run()
    expect(
        not top.wire_events and [i.data for i in top.indications] == [b"to the target"],
        "bytes of an offloaded connection did not go up the chimney",
    )
    top.return_indications()
    upload(st, tree)


@layer_check("bottom")
def target_partial_initiate(st: Stack) -> None:
    """A connection the target cannot take fails alone: its slot stays empty, its send NBLs are
    left untouched and never completed, its path reports OFFLOAD_PARTIAL_SUCCESS, the rest is
    offloaded (spec §3.2.3, §3.2.4, §2.3)."""
    top = st.top
    w = st.wires.open()
    root = top.neighbor_block()
    path = root.add_dependent(top.path_block())
    good = path.add_dependent(top.tcp_block(w))
    lost = path.add_dependent(top.tcp_block(None, local_port=1, send=[b"kept by the host"]))
    chain = list(iter_chain(lost.net_buffer_list_chain))
    tree = OffloadTree(root, root.offload_handle)
    done = state_op(st, "Initiate", root)
    expect(good.status == SUCCESS, f"the known connection got {S(good.status).name}")
    expect(lost.status not in OFFLOADED_STATUSES, "a connection with no socket was offloaded")
    expect(
        path.status == S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS,
        f"the path got {S(path.status).name} with one dependent failed (spec §3.2.4)",
    )
    expect(root.status == SUCCESS, f"the neighbor got {S(root.status).name} (spec §3.2.4)")
    assert lost.offload_handle is not None and good.offload_handle is not None
    expect(lost.offload_handle.miniport_offload_context is None, "the failed block's slot written")
    for nbl in chain:
        expect(
            nbl.status == S.NDIS_STATUS_PENDING
            and nbl.data_length == 16
            and not nbl.source_bindings,
            f"send NBL {nbl.id} of the failed connection was touched (spec §3.2.4)",
        )
    expect(done.statuses[0] == SUCCESS and not top.completions, "NBLs of a failed block completed")
    assert path.offload_handle is not None
    tree.paths.append(path.offload_handle)
    tree.tcp.append(good.offload_handle)
    upload(st, tree)


@layer_check("bottom")
def target_send_completes_on_ack(st: Stack) -> None:
    """Send bytes reach the wire in order at once, and each NBL completes SUCCESS only when the
    peer has acknowledged all of it, FIFO, once, advanced by what was sent; the NBLs one
    acknowledgement covers complete in posting order (spec §4.1, §9 item 2)."""
    top = st.top
    w = st.wires.open()
    tree = top.connection_tree([w])
    offload(st, tree)
    (h,) = tree.tcp
    s1, s2 = top.send(h, b"a" * 100, b"b" * 50)
    st.run()
    expect(
        bytes(w.peer_received) == b"a" * 100 + b"b" * 50,
        "send bytes did not reach the wire in order",
    )
    expect(not top.completions, "a send completed before the peer acknowledged anything")
    w.ack(60)
    st.run()
    expect(not top.completions, "a send completed when partly acknowledged (spec §4.1)")
    w.ack(100)
    st.run()
    expect_same(top.completed("send"), [s1], "completions after the first NBL was acknowledged")
    expect(completion(st, s1) == (SUCCESS, 100), f"first send: {completion(st, s1)}")
    w.ack()
    st.run()
    expect_same(top.completed("send"), [s1, s2], "completions after everything was acknowledged")
    expect(completion(st, s2) == (SUCCESS, 50), f"second send: {completion(st, s2)}")
    s3, s4, s5 = top.send(h, b"c" * 10, b"d" * 20, b"e" * 30)
    st.run()
    w.ack()  # one acknowledgement covers all three
    st.run()
    expect_same(
        top.completed("send"),
        [s1, s2, s3, s4, s5],
        "completions of the sends one acknowledgement covered (spec §9 item 2)",
    )
    upload(st, tree)


@layer_check("bottom")
def target_receive_delivery(st: Stack) -> None:
    """Received bytes go into posted receives first, else by indication on the top's handle;
    after a refusal nothing is indicated until a post, which gets the held bytes; a partial
    acceptance keeps the rest; every byte arrives once, in order; two posted receives one
    segment fills complete in posting order (spec §4.2-§4.4, §9 item 2)."""
    top = st.top
    w = st.wires.open()
    tree = top.connection_tree([w])
    offload(st, tree)
    (h,) = tree.tcp
    w.peer_send(b"hello")
    st.run()
    expect(
        len(top.indications) == 1 and top.indications[0].handle is h,
        "no indication on the top's handle",
    )
    (r1,) = top.receive(h, 5)
    st.run()
    w.peer_send(b"world")
    st.run()
    expect(completion(st, r1) == (SUCCESS, 5), "a full posted receive did not complete")
    expect(len(top.indications) == 1, "indicated while a receive was posted (spec §4.2)")
    top.receive_policy = refuse_all
    w.peer_send(b"again")
    st.run()
    n = len(top.indications)
    w.peer_send(b"!")
    st.run()
    expect(
        len(top.indications) == n, "indicated again after a refusal, before any post (spec §4.3)"
    )
    top.receive_policy = accept_bytes(2)
    (r2,) = top.receive(h, 6)
    st.run()
    expect(
        completion(st, r2) == (SUCCESS, 6), "the post after a refusal did not get the held bytes"
    )
    w.peer_send(b"xyz")
    st.run()
    (r3,) = top.receive(h, 1)
    st.run()
    expect(completion(st, r3) == (SUCCESS, 1), "the rest of a partly accepted indication was lost")
    top.return_indications()
    r4, r5 = top.receive(h, 4, 4)
    st.run()
    w.peer_send(b"12345678")  # fills both
    st.run()
    expect_same(
        top.completed("receive")[-2:],
        [r4, r5],
        "completions of two receives one segment filled (spec §4.2, §9 item 2)",
    )
    expect(
        completion(st, r4) == completion(st, r5) == (SUCCESS, 4),
        f"two filled receives: {completion(st, r4)}, {completion(st, r5)}",
    )
    data = top.received_data(h)
    expect(data == b"helloworldagain!xyz12345678", f"the top received {data!r}")
    top.receive_policy = accept_all
    top.return_indications()
    upload(st, tree)


@layer_check("bottom")
def target_indications_only_after_initiate_completion(st: Stack) -> None:
    """Data the host buffered at initiate and data arriving while the initiate is in flight are
    indicated only after the initiate completion reached the top, buffered data first
    (spec §3.2.7, §9 items 4-5)."""
    top = st.top
    w = st.wires.open()
    w.set_home(top, "host")
    w.peer_send(b"early")
    st.run()  # the host read it; it goes down as BufferedData
    root = top.neighbor_block()
    path = root.add_dependent(top.path_block())
    block = path.add_dependent(top.tcp_block(w, buffered=b"early"))
    tree = OffloadTree(
        root, root.offload_handle, [path.offload_handle] if path.offload_handle else []
    )
    assert block.offload_handle is not None
    h = block.offload_handle
    tree.tcp.append(h)
    top.initiate(root)
    while w.owner is top and st.scheduler.queue:
        st.scheduler.run_one()  # until the target has the initiate (and the socket)
    expect(w.owner is not top, "the initiate never reached a target")
    w.peer_send(b"late")
    st.run()
    log = st.scheduler.log
    done = next(
        (d.seq for d in log if d.layer is top and d.handler == "ProtocolInitiateOffloadComplete"),
        None,
    )
    expect(done is not None, "the initiate never completed")
    ups = [d.seq for d in log if d.layer is top and d.handler in INDICATIONS]
    expect(
        ups != [] and all(i > (done or 0) for i in ups),
        "indicated before the initiate completion reached the top",
    )
    data = top.received_data(h)
    expect(data == b"earlylate", f"the top received {data!r}: buffered data must come first")
    top.return_indications()
    upload(st, tree)


@layer_check("bottom")
def target_peer_fin_and_reset(st: Stack) -> None:
    """Peer FIN: TcpIndicateDisconnect once, after the bytes before it were consumed; a later
    receive completes INVALID_STATE; sending still works. Peer RST: TcpIndicateAbort once and
    every outstanding send, posted receive and graceful disconnect REQUEST_ABORTED, the
    disconnect after the sends before it (spec §4.2, §5.1, §6.2, §9 item 2)."""
    top = st.top
    wa, wb = st.wires.open(), st.wires.open()
    tree = top.connection_tree([wa, wb])
    offload(st, tree)
    a, b = tree.tcp
    E = TcpOffloadEventType
    wa.peer_send(b"bye")
    wa.peer_fin()
    st.run()
    fin = [e for e in top.events if e.handle is a]
    expect(
        [e.event_type for e in fin] == [E.TcpIndicateDisconnect], f"events on A after FIN: {fin}"
    )
    expect(top.received_data(a) == b"bye", "the bytes before the FIN were not delivered first")
    ind = next(d.seq for d in st.scheduler.log if d.handler == "ProtocolTcpOffloadReceiveIndicate")
    ev = next(d.seq for d in st.scheduler.log if d.handler == "ProtocolTcpOffloadEvent")
    expect(ind < ev, "TcpIndicateDisconnect before the data in front of the FIN (spec §5.1)")
    (late,) = top.receive(a, 4)
    (reply,) = top.send(a, b"reply")
    st.run()
    wa.ack()
    st.run()
    expect(
        completion(st, late) == (S.NDIS_STATUS_INVALID_STATE, 0),
        f"receive after FIN: {completion(st, late)}",
    )
    expect(completion(st, reply)[0] == SUCCESS, "sending after the peer's FIN failed (spec §5.1)")
    s1, s2 = top.send(b, b"1" * 10, b"2" * 10)
    (r1,) = top.receive(b, 4)
    db = top.disconnect(b, GRACEFUL)  # its FIN goes out, never acknowledged
    st.run()
    wb.ack(10)
    st.run()
    expect(top.completion_of(db) is None, "graceful disconnect completed before its FIN's ACK")
    wb.peer_reset()
    st.run()
    rst = [e.event_type for e in top.events if e.handle is b]
    expect(rst == [E.TcpIndicateAbort], f"events on B after RST: {rst}")
    expect(completion(st, s1)[0] == SUCCESS, "an acknowledged send was failed by the RST")
    expect(completion(st, s2)[0] == ABORTED, f"outstanding send after RST: {completion(st, s2)}")
    expect(completion(st, r1)[0] == ABORTED, f"posted receive after RST: {completion(st, r1)}")
    expect(
        completion(st, db)[0] == ABORTED,
        f"graceful disconnect pending at the RST: {completion(st, db)} (spec §5.1)",
    )
    completed_first(st, s2, db)
    top.return_indications()
    upload(st, tree)


@layer_check("bottom")
def target_disconnect(st: Stack) -> None:
    """Graceful: FIN after the earlier data and the disconnect's own, completed SUCCESS only
    once the FIN is acknowledged and after the earlier sends, alone. Abortive: RST on the
    wire, outstanding sends REQUEST_ABORTED first, the disconnect SUCCESS (spec §4.5)."""
    top = st.top
    wa, wb, wc = st.wires.open(), st.wires.open(), st.wires.open()
    tree = top.connection_tree([wa, wb, wc])
    offload(st, tree)
    a, b, c = tree.tcp
    (sa,) = top.send(a, b"data")
    da = top.disconnect(a, GRACEFUL)
    db = top.disconnect(b, GRACEFUL, b"last")
    (sc,) = top.send(c, b"never acknowledged")
    dc = top.disconnect(c, ABORTIVE)
    st.run()
    expect(wa.eof_written and bytes(wa.peer_received) == b"data", "graceful: no FIN after the data")
    expect(
        bytes(wb.peer_received) == b"last" and wb.eof_written,
        "the disconnect's data was not sent before its FIN",
    )
    expect(
        top.completion_of(da) is None,
        "graceful disconnect completed before its FIN was acknowledged",
    )
    expect(wc.reset_sent, "abortive disconnect sent no RST (spec §4.5)")
    expect(
        completion(st, sc)[0] == ABORTED and completion(st, dc)[0] == SUCCESS,
        "abortive disconnect statuses",
    )
    completed_first(st, sc, dc)
    wa.ack()
    wb.ack()
    st.run()
    expect(completion(st, da) == (SUCCESS, 0), f"graceful disconnect: {completion(st, da)}")
    expect(
        completion(st, db) == (SUCCESS, 4), f"graceful disconnect with data: {completion(st, db)}"
    )
    completed_first(st, sa, da)
    upload(st, tree)


def _offloaded_after_host_read(
    st: Stack, data: bytes
) -> tuple[MemoryWire, NdisOffloadHandle, OffloadTree]:
    """A connection whose peer sent `data` while the host had it, read by the host and not
    processed (RcvNxt 0), then offloaded: the host forwards `data` later (spec §4.6)."""
    top = st.top
    w = st.wires.open()
    w.set_home(top, "host")
    w.peer_send(data)
    st.run()
    tree = top.connection_tree([])
    path = tree.root.dependent_block_list
    assert path is not None
    block = path.add_dependent(top.tcp_block(w, rcv_nxt=0))
    assert block.offload_handle is not None
    h = block.offload_handle
    tree.tcp.append(h)
    offload(st, tree)
    return w, h, tree


@layer_check("bottom")
def target_forward_in_order(st: Stack) -> None:
    """Segments the host received during the initiate and forwards later are delivered in
    sequence with the wire's later bytes, and the forward completes SUCCESS (spec §4.6)."""
    top = st.top
    w, h, tree = _offloaded_after_host_read(st, b"hello")
    w.peer_send(b" world")
    st.run()
    expect(top.received_data(h) == b"", "bytes after a gap were delivered before the gap filled")
    segment = build_segment(
        w.remote[1], w.local[1], seq(w.irs, 0), seq(w.isn, 0), TH_ACK | TH_PSH, b"hello"
    )
    (f,) = top.forward(h, segment)
    st.run()
    expect(completion(st, f)[0] == SUCCESS, f"forward: {completion(st, f)}")
    expect(top.received_data(h) == b"hello world", f"the top received {top.received_data(h)!r}")
    top.return_indications()
    upload(st, tree)


@layer_check("bottom")
def target_state_operations(st: Stack) -> None:
    """Query fills delegated state from the real byte counts; update succeeds and its cached
    values take effect (a query of the cached state returns them); invalidate succeeds, then
    the target asks for the upload (TcpIndicateRetrieve/InvalidState) and sends nothing more
    on the connection (spec §3.3-§3.5, §5.2)."""
    top = st.top
    w1, w2 = st.wires.open(), st.wires.open()
    tree = top.connection_tree([w1, w2])
    offload(st, tree)
    h1, h2 = tree.tcp
    w1.peer_send(b"abc")
    (s,) = top.send(h2, b"z" * 100)
    st.run()
    w2.ack(40)
    st.run()
    root = top.reference_tree(tree, state="delegated")
    done = state_op(st, "Query", root)
    expect(all(x == SUCCESS for x in done.statuses), f"query statuses {done.statuses}")
    d1, d2 = (b.delegated for b in walk(root) if b.offload_handle in (h1, h2))
    assert isinstance(d1, TcpOffloadStateDelegated) and isinstance(d2, TcpOffloadStateDelegated)
    expect(d1.RcvNxt == seq(w1.irs, 3), "queried RcvNxt is not the bytes received (spec §3.3)")
    expect(
        (d2.SndUna, d2.SndMax) == (seq(w2.isn, 40), seq(w2.isn, 100)),
        "queried SndUna/SndMax are not the bytes acknowledged/sent",
    )
    update = top.reference_tree(tree, state="cached")
    sizes = {h1.id: 77, h2.id: 99}  # values no connection had before
    for block in walk(update):
        if block.offload_handle in (h1, h2):
            block.cached = TcpOffloadStateCached(
                InitialRcvWnd=32768, RcvIndicationSize=sizes[block.offload_handle.id]
            )
    done = state_op(st, "Update", update)
    expect(all(x == SUCCESS for x in done.statuses), f"update statuses {done.statuses}")
    query = top.reference_tree(tree)
    for block in walk(query):
        if block.offload_handle in (h1, h2):
            block.cached = TcpOffloadStateCached()
    done = state_op(st, "Query", query)
    expect(all(x == SUCCESS for x in done.statuses), f"query statuses {done.statuses}")
    got = {
        b.offload_handle.id: (b.cached.InitialRcvWnd, b.cached.RcvIndicationSize)
        for b in walk(query)
        if b.offload_handle in (h1, h2) and b.cached is not None
    }
    expect(
        got == {h.id: (32768, sizes[h.id]) for h in (h1, h2)},
        f"the cached state queried after an update is {got}, not the values the update gave "
        f"(spec §3.3, §3.4)",
    )
    done = state_op(st, "Invalidate", top.reference_tree(tree, [h1]))
    expect(all(x == SUCCESS for x in done.statuses), f"invalidate statuses {done.statuses}")
    retrieve = [(e.event_type, e.info) for e in top.events if e.handle is h1]
    expect(
        retrieve == [(TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.InvalidState)],
        f"after invalidate: {retrieve} (spec §3.5)",
    )
    before = w1.bytes_written
    (late,) = top.send(h1, b"must not go out")
    st.run()
    expect(w1.bytes_written == before, "an invalidated connection sent data (spec §3.5 [EMU])")
    expect(
        completion(st, late)[0] == UPLOADING,
        f"send on an invalidated connection: {completion(st, late)}",
    )
    w2.ack()
    st.run()
    expect(completion(st, s)[0] == SUCCESS, "the other connection's send did not complete")
    top.return_indications()
    upload(st, tree)


@layer_check("bottom")
def target_oid_requests(st: Stack) -> None:
    """The capability query completes once, SUCCESS, with `NDIS_TCP_CONNECTION_OFFLOAD`; the
    parameters set completes once, SUCCESS, and is honoured: with `TcpPushTicks` set to 50 ms a
    push-mode receive partly filled by unpushed data completes once 50 ms have passed, not at
    the default 500 ms (spec §1.3, §4.2, §8)."""
    top = st.top
    query = NdisOidRequest(Oid.OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG)
    top.oid(query)
    st.run()
    expect(
        [r for _, r in top.oid_completions] == [query],
        f"the capability query was completed {len(top.oid_completions)} times, not once "
        f"(spec §1.3)",
    )
    expect(query.status == SUCCESS, f"capability query: {query.status!r}")
    caps = query.data
    expect(
        isinstance(caps, NdisTcpConnectionOffload)
        and caps.TcpConnectionOffloadCapacity > 0
        and (caps.SupportIPv4 or caps.SupportIPv6),
        f"the capability query was answered {caps!r} (spec §8)",
    )
    params = NdisOidRequest(
        Oid.OID_TCP_CONNECTION_OFFLOAD_PARAMETERS,
        set=True,
        data=NdisTcpConnectionOffloadParameters(TicksPerSecond=1000, TcpPushTicks=50),
    )
    top.oid(params)
    st.run()
    expect(
        [r for _, r in top.oid_completions] == [query, params],
        "the parameters set was not completed once (spec §1.3)",
    )
    expect(params.status == SUCCESS, f"parameters set: {params.status!r}")
    expect(all(bd is st.binding for bd, _ in top.oid_completions), "an OID came back elsewhere")
    # bytes the host read before the offload and forwards without PSH (every read from the
    # socket counts as pushed): only the push timer completes the receive they partly fill
    w, h, tree = _offloaded_after_host_read(st, b"abc")
    (r,) = top.receive(h, 10)
    st.run()
    segment = build_segment(w.remote[1], w.local[1], seq(w.irs, 0), seq(w.isn, 0), TH_ACK, b"abc")
    (f,) = top.forward(h, segment)
    st.run()
    expect(completion(st, f)[0] == SUCCESS, f"forward: {completion(st, f)}")
    st.advance(0.06)
    expect(
        top.completion_of(r) is not None and completion(st, r) == (SUCCESS, 3),
        "a partly filled push-mode receive did not complete 60 ms in with TcpPushTicks set to "
        "50 ms: the parameters set was not honoured (spec §4.2, §8)",
    )
    upload(st, tree)


@layer_check("bottom")
def target_terminate_with_io_outstanding(st: Stack) -> None:
    """Terminate with sends in flight (one partly acknowledged), a partly filled receive and an
    indicated NBL held: the receive completes before the terminate completion; each send is
    completed or handed back in order, once, the chain being exactly [SndUna, SndMax); every
    received byte is delivered once (indication, receive or BufferedData); the held NBL
    returns afterwards; the socket goes back to the host (spec §3.6.3, §3.6.4, §6.2)."""
    top = st.top
    w = st.wires.open()
    tree = top.connection_tree([w])
    offload(st, tree)
    (h,) = tree.tcp
    w.peer_send(b"abc")
    st.run()
    (r1,) = top.receive(h, 10, no_push=True)
    st.run()
    w.peer_send(b"defg")
    st.run()
    sends = top.send(h, b"1" * 100, b"2" * 100, b"3" * 100)
    st.run()
    w.ack(150)
    st.run()
    done = upload(st, tree)
    root = done.root
    completed_before(st, r1, "ProtocolTerminateOffloadComplete", h)
    status, _ = completion(st, r1)
    expect(status in LEGAL_IO_STATUSES["receive"], f"receive completed {S(status).name}")
    tcp_block = next(b for b in walk(root) if b.offload_handle is h)
    returned = list(iter_chain(tcp_block.net_buffer_list_chain))
    completed = [n for n in sends if top.completion_of(n) is not None]
    expect(
        not set(map(id, returned)) & set(map(id, completed))
        and len(returned) + len(completed) == len(sends),
        "a send was both completed and handed back, or neither (spec §3.6.3)",
    )
    expect_same(completed + returned, sends, "sends completed then handed back, in posting order")
    d = tcp_block.delegated
    assert isinstance(d, TcpOffloadStateDelegated)
    una = offset_of(w.isn, d.SndUna, w.bytes_written)
    expect(
        una == w.bytes_written - sum(n.data_length for n in returned)
        and d.SndMax == seq(w.isn, w.bytes_written),
        "the returned send chain is not exactly [SndUna, SndMax) (spec §3.2.5, §3.6.3)",
    )
    if returned:
        expect(
            d.SendDataHead is returned[0] and d.SendDataTail is returned[-1], "SendDataHead/Tail"
        )
    buffered = nbl_bytes(d.BufferedData) if d.BufferedData is not None else b""
    expect(
        top.received_data(h) + buffered == b"abcdefg" and d.RcvNxt == seq(w.irs, 7),
        f"received bytes across the terminate: {top.received_data(h)!r} + {buffered!r}",
    )
    top.return_indications()
    st.run()


@layer_check("bottom")
def target_nothing_after_terminate(st: Stack) -> None:
    """After the terminate completion nothing comes up the chimney for the connection: later
    peer data, FIN and RST reach the host as the socket's owner again (spec §3.6.4, §9 item 8)."""
    top = st.top
    w1, w2 = st.wires.open(), st.wires.open()
    tree = top.connection_tree([w1, w2])
    offload(st, tree)
    h1, _ = tree.tcp
    w1.peer_send(b"held")
    st.run()
    upload(st, tree)
    mark = len(st.scheduler.log)
    w1.peer_send(b"after")
    w1.peer_fin()
    w2.peer_reset()
    top.return_indications()
    st.run()
    late = [
        d.handler for d in st.scheduler.log[mark:] if d.layer is top and d.handler in CHIMNEY_UP
    ]
    expect(not late, f"chimney calls after terminate: {late}")
    seen = [(e.name, e.args) for e in top.wire_events]
    seen += [("ordinary", (off, data)) for _, off, data, _ in top.ordinary]
    expect(
        any(name in ("WireData", "ordinary") and args[1:] == (b"after",) for name, args in seen),
        f"data after terminate did not reach the host: {seen}",
    )
    expect(
        any(e.name == "WireReset" for e in top.wire_events),
        "an RST after terminate did not reach the host",
    )
    expect(top.received_data(h1) == b"held", "the chimney delivered data after terminate")


@layer_check("bottom")
def target_drain_to_zero(st: Stack) -> None:
    """Four connections with traffic both ways, FIN, RST and refusals, terminated in two
    pieces: afterwards every gauge is zero, every socket is the host's again, and the checkers
    saw nothing (spec §9 items 8 and 10)."""
    top = st.top
    wires = [st.wires.open() for _ in range(4)]
    tree = top.connection_tree(wires)
    offload(st, tree)
    for i, (h, w) in enumerate(zip(tree.tcp, wires, strict=True)):
        top.send(h, b"x" * (10 + i), b"y" * 7)
        top.receive(h, 3)
        st.run()
        w.peer_send(b"incoming-%d" % i)
        st.run()
        w.ack(10 + i)
        st.run()
    top.receive_policy = refuse_all
    wires[1].peer_send(b"refused")
    wires[2].peer_fin()
    wires[3].peer_reset()
    st.run()
    top.receive_policy = accept_all
    top.return_indications()
    upload(st, tree, tree.tcp[:2], objects=False)
    upload(st, tree, tree.tcp[2:])
    st.run()
    top.return_indications()
