"""The delivery audit (chimneyd.testing.audit) reports each rule it claims to check when a call
crossing NDIS breaks it, and nothing on a clean run."""

from __future__ import annotations

from chimneyd.ndis.status import NdisStatus, TcpOffloadEventType
from chimneyd.testing import MiniportStub, OffloadTree, Stack, StubContext
from chimneyd.testing.factories import passthrough_stack

S = NdisStatus


def _direct() -> Stack:
    """The protocol stub straight over a miniport stub."""
    st = Stack()
    st.bottom = MiniportStub("lower", st.ndis)
    st.connect()
    return st


def _lower(st: Stack) -> MiniportStub:
    assert st.bottom is not None
    return st.bottom


def _offload(st: Stack) -> tuple[OffloadTree, StubContext]:
    tree = st.top.connection_tree([None])
    st.top.initiate(tree.root)
    st.run()
    request = _lower(st).complete_state()
    st.run()
    ctx = _lower(st).context_of(request.blocks[-1])
    assert ctx is not None
    return tree, ctx


def _upload(st: Stack, tree: OffloadTree) -> None:
    st.top.terminate(st.top.reference_tree(tree, None, True, True))
    st.run()
    _lower(st).complete_state()
    st.run()


def test_a_clean_run_is_clean() -> None:
    st = passthrough_stack()
    tree, _ = _offload(st)
    sends = st.top.send(tree.tcp[0], b"abc")
    st.run()
    _lower(st).complete(*sends)
    _upload(st, tree)
    assert st.audit.violations == [] and st.audit.audited > 10 and st.drain_problems() == []


def test_a_context_in_two_layers_slots_is_a_leak() -> None:
    st = passthrough_stack()
    tree = st.top.connection_tree([None])
    st.top.initiate(tree.root)
    st.run()
    request = _lower(st).complete_state()
    lower_ctx = _lower(st).context_of(request.blocks[-1])
    # run until only the top's completion is left, then put the lower context in its slot
    while len(st.scheduler.queue) > 1 or st.scheduler.queue[0][0] is not st.top:
        st.scheduler.run_one()
    tree.tcp[0].miniport_offload_context = lower_ctx
    st.run()
    assert any("leaked across layers" in v for v in st.audit.violations)


def test_an_indication_before_the_initiate_completion_reached_the_layer() -> None:
    st = _direct()
    tree = st.top.connection_tree([None])
    st.top.initiate(tree.root)
    st.run()
    st.ndis.NdisTcpOffloadEventHandler(
        _lower(st), tree.tcp[0], TcpOffloadEventType.TcpIndicateSendBacklogChange, 1
    )
    _lower(st).complete_state()
    st.run()
    assert any("before its initiate completion" in v for v in st.audit.violations)


def test_bytes_transferred_must_match_the_advance() -> None:
    st = _direct()
    tree, _ = _offload(st)
    (nbl,) = st.top.send(tree.tcp[0], b"x" * 10)
    st.run()
    _lower(st).complete(nbl, status=S.NDIS_STATUS_SUCCESS, transferred=0)  # never advanced
    nbl.tcp_offload_bytes_transferred = 10  # ... but claims all ten
    st.run()
    found = " ".join(st.audit.violations)
    assert "advanced by 0" in found and "not transferred" in found
    _upload(st, tree)


def test_a_status_illegal_for_the_kind() -> None:
    st = _direct()
    tree, _ = _offload(st)
    (nbl,) = st.top.receive(tree.tcp[0], 4)
    st.run()
    _lower(st).complete(nbl, status=S.NDIS_STATUS_UPLOAD_REQUESTED)  # a send-only code
    st.run()
    assert any("completed with NDIS_STATUS_UPLOAD_REQUESTED" in v for v in st.audit.violations)
    _upload(st, tree)


def test_terminate_completed_with_io_still_held_below() -> None:
    st = _direct()
    tree, _ = _offload(st)
    st.top.receive(tree.tcp[0], 4)
    st.run()
    st.top.terminate(st.top.reference_tree(tree, None, True, True))
    st.run()
    (request,) = _lower(st).pending_state()
    for block in request.blocks:  # complete the terminate, skipping the target's duties
        block.status = S.NDIS_STATUS_SUCCESS
    st.ndis.NdisMTerminateOffloadComplete(_lower(st), request.root)
    st.run()
    assert any("neither completed nor handed back" in v for v in st.audit.violations)
