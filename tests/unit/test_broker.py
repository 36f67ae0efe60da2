"""Broker routing with no sockets: bindings, I/O down by handle and completions up by binding,
receive-indication returns, state operations by binding, and the stats gauges (spec §1.5)."""

from __future__ import annotations

import pytest

from chimneyd.ndis.broker import (
    CLIENT_CHARACTERISTICS,
    PROVIDER_CHARACTERISTICS,
    TCP_OFFLOAD_EVENT_HANDLERS,
)
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.nbl import NetBufferList, link_chain
from chimneyd.ndis.status import NdisStatus, TcpDisconnectFlags, TcpOffloadEventType
from chimneyd.testing import MiniportStub, ProtocolStub, Stack
from chimneyd.testing.factories import make_host, make_loopback_target, make_mux, make_passthrough

S = NdisStatus


def _stack(uppers: int = 1) -> tuple[Stack, list[ProtocolStub], MiniportStub]:
    """Protocol stubs bound over one miniport stub (no layer under test)."""
    st = Stack()
    st.bottom = MiniportStub("lower", st.ndis, auto_state=True)
    tops = [st.top] + [ProtocolStub(f"proto{i}", st.ndis) for i in range(1, uppers)]
    for top in tops:
        st.ndis.bind(top, st.bottom)
    return st, tops, st.bottom


def test_bind_needs_a_protocol_edge_over_a_miniport_edge() -> None:
    st, (top,), bottom = _stack()
    with pytest.raises(ChimneyProtocolError):
        st.ndis.bind(bottom, top)
    with pytest.raises(ChimneyProtocolError):
        st.ndis.bind(top, ProtocolStub("another", st.ndis))


class NoForward(MiniportStub):
    """A miniport edge that registers no forward handler."""

    MiniportTcpOffloadForward = None  # type: ignore[assignment]


class NoOffloadEvents(ProtocolStub):
    """A protocol edge that registers no ProtocolIndicateOffloadEvent."""

    ProtocolIndicateOffloadEvent = None  # type: ignore[assignment]


def test_a_layer_that_lacks_a_chimney_handler_is_refused_at_bind() -> None:
    """spec §1.3: NDIS blocks chimney through a driver that registered not every handler of
    its edge; the refusal comes at bind, naming the handler and its set, not at a first call."""
    st = Stack()
    with pytest.raises(ChimneyProtocolError) as caught:
        st.ndis.bind(st.top, NoForward("nic", st.ndis))
    assert "MiniportTcpOffloadForward" in str(caught.value)
    assert "NDIS_PROVIDER_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS" in str(caught.value)
    with pytest.raises(ChimneyProtocolError) as caught:
        st.ndis.bind(NoOffloadEvents("host", st.ndis), MiniportStub("nic2", st.ndis))
    assert "ProtocolIndicateOffloadEvent" in str(caught.value)
    assert not st.ndis.bindings


def test_miniport_edges_get_the_offload_event_handlers() -> None:
    """`NdisMGetOffloadHandlers` hands a miniport edge NDIS's six entry points for the TCP
    chimney type, and nothing for any other type (spec §1.3)."""
    st, _, bottom = _stack()
    assert set(bottom.offload_event_handlers) == {
        "NdisTcpOffloadEventHandler",
        "NdisTcpOffloadReceiveHandler",
        "NdisTcpOffloadSendComplete",
        "NdisTcpOffloadReceiveComplete",
        "NdisTcpOffloadDisconnectComplete",
        "NdisTcpOffloadForwardComplete",
    }
    assert st.ndis.NdisMGetOffloadHandlers(bottom, "NdisIpsecOffload") is None
    assert st.ndis.NdisMGetOffloadHandlers(st.top, "NdisTcpChimneyOffload") is None


def test_every_layer_kind_registers_the_chimney_handlers_of_its_edges() -> None:
    """spec §1.3: at set-options time each real kind registers, with `NdisSetOptionalHandlers`,
    its own handler for every name of its edges' characteristics (the host its protocol edge,
    a target its miniport edge, an IM both), and each miniport edge gets NDIS's six entry
    points from `NdisMGetOffloadHandlers`; so built, host → IM → MUX → target binds."""
    st = Stack()
    host = make_host(st.ndis, st.timers(), "host")
    im = make_passthrough(st, "im0")
    mux = make_mux(st, "team0")
    nic = make_loopback_target(st, "nic0")
    edges = {
        host: CLIENT_CHARACTERISTICS,
        im: PROVIDER_CHARACTERISTICS | CLIENT_CHARACTERISTICS,
        mux: PROVIDER_CHARACTERISTICS | CLIENT_CHARACTERISTICS,
        nic: PROVIDER_CHARACTERISTICS,
    }
    for layer, sets in edges.items():
        names = {n for handlers in sets.values() for n in handlers}
        assert set(layer.chimney_handlers) == names, layer
        for name, handler in layer.chimney_handlers.items():
            assert getattr(handler, "__self__", None) is layer and handler.__name__ == name
        if layer is host:
            assert layer.offload_event_handlers is None
        else:
            assert set(layer.offload_event_handlers) == set(TCP_OFFLOAD_EVENT_HANDLERS), layer
    for upper, lower in ((host, im), (im, mux), (mux, nic)):
        st.ndis.bind(upper, lower)
    assert [(b.upper.name, b.lower.name) for b in st.ndis.bindings] == [
        ("host", "im0"),
        ("im0", "team0"),
        ("team0", "nic0"),
    ]


def test_layer_names_are_unique() -> None:
    st, _, _ = _stack()
    with pytest.raises(ValueError):
        ProtocolStub("tcpip", st.ndis)


def test_io_goes_down_to_the_context_in_the_handles_slot_and_returns_pending() -> None:
    st, (top,), bottom = _stack()
    tree = top.connection_tree([None])
    top.initiate(tree.root)
    st.run()
    (h,) = tree.tcp
    sends = top.send(h, b"a", b"b")
    st.run()
    assert top.io_returns == [S.NDIS_STATUS_PENDING]
    (request,) = bottom.io
    assert request.context is h.miniport_offload_context and request.nbls == sends


def test_completions_go_up_by_binding_one_chain_per_binding() -> None:
    st, (p0, p1), bottom = _stack(2)
    t0, t1 = p0.connection_tree([None]), p1.connection_tree([None])
    p0.initiate(t0.root)
    p1.initiate(t1.root)
    st.run()
    a = p0.send(t0.tcp[0], b"from p0")
    b = p1.send(t1.tcp[0], b"from p1")
    st.run()
    bottom.complete(*a, *b)  # one completion call carrying NBLs of both bindings
    st.run()
    assert [c.nbl for c in p0.completions] == a and [c.nbl for c in p1.completions] == b
    assert p0.completions[0].binding is p0.lower_bindings[0]
    assert p1.completions[0].binding is p1.lower_bindings[0]
    handlers = [d.handler for d in st.scheduler.log if d.layer in (p0, p1)]
    assert handlers.count("ProtocolTcpOffloadSendComplete") == 2  # split per binding


def test_one_completion_of_mixed_statuses_and_interleaved_bindings() -> None:
    """Statuses are counted per NBL whatever their order; each run of one binding's NBLs goes
    up as its own chain, in completion order, its last `Next` cleared."""
    st, (p0, p1), bottom = _stack(2)
    t0, t1 = p0.connection_tree([None]), p1.connection_tree([None])
    p0.initiate(t0.root)
    p1.initiate(t1.root)
    st.run()
    a0, a1, a2 = p0.send(t0.tcp[0], b"a0", b"a1", b"a2")
    (b0,) = p1.send(t1.tcp[0], b"b0")
    st.run()
    order = [a0, a1, b0, a2]
    ok, failed = S.NDIS_STATUS_SUCCESS, S.NDIS_STATUS_FAILURE
    statuses = [ok, ok, failed, ok]
    for nbl, status in zip(order, statuses, strict=True):
        nbl.status = status
    head = link_chain(order)
    assert head is not None
    st.ndis.NdisTcpOffloadSendComplete(bottom, head)
    st.run()
    calls = bottom.stats.as_map()["calls"]
    assert calls["NdisTcpOffloadSendComplete/NDIS_STATUS_SUCCESS"] == 3
    assert calls["NdisTcpOffloadSendComplete/NDIS_STATUS_FAILURE"] == 1
    assert [c.nbl for c in p0.completions] == [a0, a1, a2]
    assert [c.status for c in p0.completions] == [statuses[0], statuses[1], statuses[3]]
    assert [c.nbl for c in p1.completions] == [b0]
    # a0 → a1 went up as one chain, b0 and a2 each alone
    assert a0.next is a1 and a1.next is None and b0.next is None and a2.next is None
    handlers = [d.handler for d in st.scheduler.log if d.layer in (p0, p1)]
    assert handlers.count("ProtocolTcpOffloadSendComplete") == 3


def test_a_completion_twice_or_with_pending_is_refused() -> None:
    st, (top,), bottom = _stack()
    tree = top.connection_tree([None])
    top.initiate(tree.root)
    st.run()
    (nbl,) = top.send(tree.tcp[0], b"x")
    st.run()
    nbl.status = S.NDIS_STATUS_PENDING
    with pytest.raises(ChimneyProtocolError, match="PENDING"):
        st.ndis.NdisTcpOffloadSendComplete(bottom, nbl)
    bottom.complete(nbl)
    with pytest.raises(ChimneyProtocolError, match="does not own"):
        st.ndis.NdisTcpOffloadSendComplete(bottom, nbl)


def test_a_disconnect_is_one_nbl_down_and_up() -> None:
    st, (top,), _ = _stack()
    tree = top.connection_tree([None])
    top.initiate(tree.root)
    st.run()
    two = link_chain([NetBufferList.for_data(b""), NetBufferList.for_data(b"")])
    assert two is not None
    with pytest.raises(ChimneyProtocolError, match="exactly one NBL"):
        st.ndis.NdisOffloadTcpDisconnect(
            top, tree.tcp[0], two, TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
        )


@pytest.mark.parametrize(
    ("status", "consumed", "ok"),
    [
        (S.NDIS_STATUS_SUCCESS, 5, True),
        (S.NDIS_STATUS_SUCCESS, 4, False),  # SUCCESS consumes the whole indication
        (S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0, True),
        (S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 1, False),
        (S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, 3, True),
        (S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, 5, False),
        (S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, 0, False),
        (S.NDIS_STATUS_RESOURCES, 0, False),  # not a legal answer at all
    ],
)
def test_receive_indication_returns_are_validated(
    status: NdisStatus, consumed: int, ok: bool
) -> None:
    st, (top,), bottom = _stack()
    tree = top.connection_tree([None])
    top.initiate(tree.root)
    st.run()
    (h,) = tree.tcp
    ctx = bottom.context_of(
        next(b for b in bottom.state_requests[0].blocks if b.kind.value == "tcp")
    )
    assert ctx is not None
    top.receive_policy = lambda nbl: (status, consumed)
    nbl = bottom.indicate_receive(ctx, b"hello")
    if not ok:
        with pytest.raises(ChimneyProtocolError):
            st.run()
        return
    st.run()
    assert bottom.indication_returns == [(nbl, status, consumed)]
    assert top.indications[0].handle is h
    top.return_indications()
    st.run()


def test_only_the_indicated_layer_may_answer_an_indication() -> None:
    st, (p0, p1), bottom = _stack(2)
    tree = p0.connection_tree([None])
    p0.initiate(tree.root)
    st.run()
    ctx = bottom.context_of(bottom.state_requests[0].blocks[-1])
    assert ctx is not None
    p0.receive_policy = lambda nbl: (S.NDIS_STATUS_SUCCESS, nbl.data_length)
    nbl = bottom.indicate_receive(ctx, b"x")
    st.run()
    with pytest.raises(ChimneyProtocolError, match="not given"):
        st.ndis.NdisReturnReceiveIndication(p1, nbl, S.NDIS_STATUS_SUCCESS, 1)
    p0.return_indications()
    st.run()


def test_after_terminate_the_handle_is_dead_for_io_and_indications() -> None:
    st, (top,), bottom = _stack()
    tree = top.connection_tree([None])
    top.initiate(tree.root)
    st.run()
    (h,) = tree.tcp
    ctx = bottom.context_of(bottom.state_requests[0].blocks[-1])
    assert ctx is not None
    top.terminate(top.reference_tree(tree, None, True, True))
    st.run()
    assert h.dead and all(x.dead for x in tree.handles)
    with pytest.raises(ChimneyProtocolError, match="dead"):
        top.send(h, b"late")
    with pytest.raises(ChimneyProtocolError, match="dead"):
        bottom.indicate_event(ctx, TcpOffloadEventType.TcpIndicateAbort)


def test_a_failed_new_offload_can_be_offloaded_again() -> None:
    st, (top,), bottom = _stack()
    bottom.auto_state = False
    tree = top.connection_tree([None])
    top.initiate(tree.root)
    st.run()
    bottom.complete_state(statuses=[S.NDIS_STATUS_FAILURE] * 3)
    st.run()
    assert all(h.ndis_reserved is None for h in tree.handles)  # NDIS forgot the binding
    top.initiate(tree.root)
    st.run()
    bottom.complete_state()
    st.run()
    assert all(h.miniport_offload_context is not None for h in tree.handles)


def test_a_tree_in_flight_cannot_be_issued_again_nor_completed_twice() -> None:
    st, (top,), bottom = _stack()
    bottom.auto_state = False
    tree = top.connection_tree([None])
    top.initiate(tree.root)
    with pytest.raises(ChimneyProtocolError, match="already in flight"):
        top.initiate(tree.root)
    st.run()
    request = bottom.complete_state()
    with pytest.raises(ChimneyProtocolError, match="not given"):
        st.ndis.NdisMInitiateOffloadComplete(bottom, request.root)
    st.run()
    assert len(top.state_completions) == 1


def test_a_completion_must_write_every_blocks_status() -> None:
    st, (top,), bottom = _stack()
    bottom.auto_state = False
    tree = top.connection_tree([None])
    top.initiate(tree.root)
    st.run()
    with pytest.raises(ChimneyProtocolError, match="without Status"):
        st.ndis.NdisMInitiateOffloadComplete(bottom, tree.root)  # no block has a Status yet


def test_gauges_count_what_each_layer_holds() -> None:
    st, (top,), bottom = _stack()
    tree = top.connection_tree([None])
    top.initiate(tree.root)
    st.run()
    assert (top.stats.offloads_active, top.stats.handles) == (3, 3)
    assert (bottom.stats.offloads_active, bottom.stats.handles) == (3, 3)
    sends = top.send(tree.tcp[0], b"a", b"b")
    st.run()
    assert top.stats.outstanding_nbls == bottom.stats.outstanding_nbls == 2
    bottom.complete(sends[0])
    st.run()
    assert top.stats.outstanding_nbls == bottom.stats.outstanding_nbls == 1
    bottom.complete(sends[1])
    top.terminate(top.reference_tree(tree, None, True, True))
    st.run()
    assert st.gauges() == {
        name: {"offloads_active": 0, "handles": 0, "outstanding_nbls": 0}
        for name in ("tcpip", "lower")
    }
    assert st.drain_problems() == []


def test_a_miniport_stub_can_complete_everything_by_itself() -> None:
    st = Stack()
    st.bottom = MiniportStub("lower", st.ndis, auto_state=True, auto_io=S.NDIS_STATUS_SUCCESS)
    st.connect()
    tree = st.top.connection_tree([None])
    st.top.initiate(tree.root)
    st.run()
    sends = st.top.send(tree.tcp[0], b"ab", b"c")
    (post,) = st.top.receive(tree.tcp[0], 4)
    st.run()
    assert [(c.nbl, c.status, c.bytes_transferred) for c in st.top.completions] == [
        (sends[0], S.NDIS_STATUS_SUCCESS, 2),
        (sends[1], S.NDIS_STATUS_SUCCESS, 1),
        (post, S.NDIS_STATUS_SUCCESS, 4),
    ]
    st.top.terminate(st.top.reference_tree(tree, None, True, True))
    st.run()
    assert st.drain_problems() == []


def test_the_ordinary_receive_path_goes_up_every_binding() -> None:
    """spec §4.7: a segment the target does not process goes up every binding above it, until
    a protocol consumes it; each protocol edge above gets it once."""
    st, tops, bottom = _stack(uppers=2)
    st.ndis.NdisMIndicateReceiveNetBufferLists(bottom, "wire", 5, b"data", 0)
    st.run()
    assert [top.ordinary for top in tops] == [[("wire", 5, b"data", 0)]] * 2
