"""The pass-through IM on its own, with a synchronous scheduler: the mirror tree it sends down,
its own handles and contexts, its call entries, and the send it cannot relay (spec §1.5, §1.6,
§4.1, §4.8)."""

from __future__ import annotations

from chimneyd.ndis.blocks import walk
from chimneyd.ndis.status import NdisStatus
from chimneyd.testing import MiniportStub, OffloadTree, Stack
from chimneyd.testing.factories import fail_next, live_call_entries, passthrough_stack

S = NdisStatus


def _offloaded(st: Stack, n: int = 1) -> OffloadTree:
    tree = st.top.connection_tree([None] * n)
    st.top.initiate(tree.root)
    st.run()
    _lower(st).complete_state()
    st.run()
    return tree


def _lower(st: Stack) -> MiniportStub:
    assert st.bottom is not None
    return st.bottom


def test_the_tree_sent_down_is_a_mirror_with_the_ims_own_handles() -> None:
    st = passthrough_stack()
    (im,) = st.under_test
    tree = st.top.connection_tree([None, None], send=[b"outstanding"])
    st.top.initiate(tree.root)
    st.run()
    (request,) = _lower(st).pending_state()
    ups, lows = list(walk(tree.root)), list(walk(request.root))
    assert len(ups) == len(lows) == 4
    for up, low in zip(ups, lows, strict=True):
        assert low is not up  # a mirror, not the upper tree (spec §1.6 [EMU])
        assert low.header_type == up.header_type
        # the same trailing state structures and send NBLs go down (spec §1.6, §3.2.5)
        assert low.const is up.const and low.cached is up.cached and low.delegated is up.delegated
        assert low.net_buffer_list_chain is up.net_buffer_list_chain
        h = low.ndis_offload_handle
        assert h is not None and h.layer == im.name and h is not up.offload_handle
    assert len({id(b.ndis_offload_handle) for b in lows}) == 4
    _lower(st).complete_state()
    st.run()
    for up, low in zip(ups, lows, strict=True):
        assert up.offload_handle is not None and low.offload_handle is not None
        # the upper slot holds the IM's entry; the IM's slot holds the lower context (spec §1.5)
        entry, lower_ctx = (
            up.offload_handle.miniport_offload_context,
            low.offload_handle.miniport_offload_context,
        )
        assert entry is not None and lower_ctx is not None and entry is not lower_ctx
        assert lower_ctx is _lower(st).context_of(low)
    assert im.stats.handles == im.stats.offloads_active == 4
    st.top.terminate(st.top.reference_tree(tree, None, True, True, state="delegated"))
    st.run()
    _lower(st).complete_state()
    st.run()
    assert all(b.offload_handle is not None and b.offload_handle.dead for b in lows)
    assert st.drain_problems() == []


def test_one_call_entry_per_state_operation_in_flight_freed_on_completion() -> None:
    st = passthrough_stack()
    (im,) = st.under_test
    tree = st.top.connection_tree([None])
    st.top.initiate(tree.root)
    st.run()
    assert live_call_entries(im) == 1
    _lower(st).complete_state()
    st.run()
    assert live_call_entries(im) == 0
    for issue in (st.top.query, st.top.update, st.top.invalidate):
        issue(st.top.reference_tree(tree))
    st.run()
    assert live_call_entries(im) == 3  # queries, updates, invalidates may overlap
    while _lower(st).pending_state():
        _lower(st).complete_state()
    st.run()
    assert live_call_entries(im) == 0
    st.top.terminate(st.top.reference_tree(tree, None, True, True))
    st.run()
    _lower(st).complete_state()
    st.run()
    assert live_call_entries(im) == 0 and st.drain_problems() == []


def test_im_reserved_and_source_handle_of_the_upper_tree_are_restored() -> None:
    st = passthrough_stack()
    tree = st.top.connection_tree([None])
    mark = object()
    tree.root.im_reserved = mark
    st.top.initiate(tree.root)
    st.run()
    (request,) = _lower(st).pending_state()
    assert request.root.im_reserved is not None  # the IM's call entry travels in the mirror
    _lower(st).complete_state()
    st.run()
    assert tree.root.im_reserved is mark and tree.root.source_handle is None
    st.top.terminate(st.top.reference_tree(tree, None, True, True))
    st.run()
    _lower(st).complete_state()
    st.run()


def test_a_send_it_cannot_relay_completes_upward_request_upload() -> None:
    """IM out of resources: REQUEST_UPLOAD on the first NBL, UPLOAD_REQUESTED on the rest,
    completed upward without going down (spec §4.1 [DOC])."""
    st = passthrough_stack()
    (im,) = st.under_test
    tree = _offloaded(st)
    fail_next(im, "MiniportTcpOffloadSend", S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
    sends = st.top.send(tree.tcp[0], b"a", b"b", b"c")
    st.run()
    assert _lower(st).io == []
    assert [c.status for c in st.top.completions] == [
        S.NDIS_STATUS_REQUEST_UPLOAD,
        S.NDIS_STATUS_UPLOAD_REQUESTED,
        S.NDIS_STATUS_UPLOAD_REQUESTED,
    ]
    assert [c.nbl for c in st.top.completions] == sends
    st.top.terminate(st.top.reference_tree(tree, None, True, True))
    st.run()
    _lower(st).complete_state()
    st.run()
    assert st.drain_problems() == []


def test_receive_return_goes_down_after_the_entry_is_gone() -> None:
    st = passthrough_stack()
    tree = _offloaded(st)
    ctx = _lower(st).context_of(_lower(st).state_requests[0].blocks[-1])
    assert ctx is not None
    nbl = _lower(st).indicate_receive(ctx, b"kept by the host")
    st.run()
    st.top.terminate(st.top.reference_tree(tree, None, True, True))
    st.run()
    _lower(st).complete_state()
    st.run()
    st.top.return_indications()
    st.run()
    assert _lower(st).receive_returns == [nbl]
    assert st.drain_problems() == []


def test_two_stacked_ims_each_translate() -> None:
    st = passthrough_stack(depth=2)
    im0, im1 = st.under_test
    tree = _offloaded(st)
    top_handle = tree.tcp[0]
    (request,) = _lower(st).state_requests
    bottom_handle = request.blocks[-1].ndis_offload_handle
    assert bottom_handle is not None
    assert (top_handle.layer, bottom_handle.layer) == ("tcpip", im1.name)
    assert bottom_handle.ndis_reserved.upper is im1 and top_handle.ndis_reserved.lower is im0
    st.top.terminate(st.top.reference_tree(tree, None, True, True))
    st.run()
    _lower(st).complete_state()
    st.run()
    assert st.drain_problems() == []
