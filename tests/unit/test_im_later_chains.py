"""Sends reaching the pass-through IM after it failed one (spec §4.1, docs/spec.md §4.8 [INF]).

The `NdisTcpOffloadSendComplete` reference page gives the statuses of the chain an IM cannot
pass down for lack of memory: NDIS_STATUS_REQUEST_UPLOAD in its first NBL, which asks for the
upload, NDIS_STATUS_UPLOAD_REQUESTED in every later one. It says nothing of the chains that
come after. The IM refuses those (nothing may go below ahead of what the host sends after the
upload), and the upload has been asked already — by that REQUEST_UPLOAD, or by the
`TcpIndicateRetrieve` it raised after a plain failure — so every NBL of a later chain, its first
included, completes UPLOAD_REQUESTED: the status that says an upload is already requested. A
second REQUEST_UPLOAD would ask again for nothing new. Microsoft's own MUX sample IM of the
chimney era answers I/O in its resource-scarce state the same way (UPLOAD_REQUESTED in every
NBL).

Protocol stub → pass-through IM → miniport stub, synchronous (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing import MiniportStub, OffloadTree, Stack
from chimneyd.testing.factories import fail_next, passthrough_stack

RETRIEVE = (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.UploadRequested)


def _offloaded(st: Stack) -> OffloadTree:
    tree = st.top.connection_tree([None])
    st.top.initiate(tree.root)
    st.run()
    _lower(st).complete_state()
    st.run()
    return tree


def _lower(st: Stack) -> MiniportStub:
    assert st.bottom is not None
    return st.bottom


def _events(st: Stack) -> list[tuple[TcpOffloadEventType, int]]:
    return [(e.event_type, e.info) for e in st.top.events]


def _statuses(st: Stack, nbls: list[NetBufferList]) -> list[S]:
    by_id = {c.nbl.id: c.status for c in st.top.completions}
    return [by_id[n.id] for n in nbls]


def _end(st: Stack, tree: OffloadTree) -> None:
    st.top.terminate(st.top.reference_tree(tree, None, True, True))
    st.run()
    _lower(st).complete_state()
    st.run()
    # the fault's NDIS_STATUS_FAILURE is the injected failure itself, outside the audit's list
    # of send statuses (docs/spec.md §4.1 [INF]); anything else is a problem
    injected = "completed with NDIS_STATUS_FAILURE"
    assert [p for p in st.drain_problems() if injected not in p] == []


def test_after_a_request_upload_later_chains_are_upload_requested_in_every_nbl() -> None:
    """The failed chain: REQUEST_UPLOAD first, UPLOAD_REQUESTED after (the page's rule); the
    status asked for the upload, so no TcpIndicateRetrieve. A later chain: UPLOAD_REQUESTED in
    every NBL, nothing passed down, still no second request."""
    st = passthrough_stack()
    (im,) = st.under_test
    tree = _offloaded(st)
    fail_next(im, "MiniportTcpOffloadSend", S.NDIS_STATUS_REQUEST_UPLOAD)
    failed = st.top.send(tree.tcp[0], b"a", b"b")
    st.run()
    later = st.top.send(tree.tcp[0], b"c", b"d")
    st.run()
    assert _lower(st).io == []
    assert _statuses(st, failed) == [S.NDIS_STATUS_REQUEST_UPLOAD, S.NDIS_STATUS_UPLOAD_REQUESTED]
    assert _statuses(st, later) == [S.NDIS_STATUS_UPLOAD_REQUESTED] * 2
    assert _events(st) == []
    _end(st, tree)


def test_after_a_plain_failure_the_retrieve_asks_and_later_chains_say_it_was_asked() -> None:
    """A failure that is not an upload status fails its whole chain and the IM asks for the
    upload by TcpIndicateRetrieve (UploadRequested); a chain after that is refused with
    UPLOAD_REQUESTED in every NBL, the request already made."""
    st = passthrough_stack()
    (im,) = st.under_test
    tree = _offloaded(st)
    fail_next(im, "MiniportTcpOffloadSend", S.NDIS_STATUS_FAILURE)
    failed = st.top.send(tree.tcp[0], b"a", b"b")
    st.run()
    assert _statuses(st, failed) == [S.NDIS_STATUS_FAILURE] * 2
    assert _events(st) == [RETRIEVE]  # asked before the later chain comes
    later = st.top.send(tree.tcp[0], b"c", b"d")
    st.run()
    assert _statuses(st, later) == [S.NDIS_STATUS_UPLOAD_REQUESTED] * 2
    assert _events(st) == [RETRIEVE]  # asked once
    assert _lower(st).io == []
    _end(st, tree)


@pytest.mark.parametrize("status", [S.NDIS_STATUS_FAILURE, S.NDIS_STATUS_REQUEST_UPLOAD])
def test_a_later_chain_held_behind_a_send_below_is_upload_requested_in_every_nbl(
    status: S,
) -> None:
    """With a send still below the IM, the failed chain and a later one wait behind it
    (completions keep posting order) and then complete: the failed chain as above, the
    later one UPLOAD_REQUESTED in every NBL."""
    st = passthrough_stack()
    (im,) = st.under_test
    tree = _offloaded(st)
    (below,) = st.top.send(tree.tcp[0], b"below")
    st.run()
    fail_next(im, "MiniportTcpOffloadSend", status)
    failed = st.top.send(tree.tcp[0], b"a", b"b")
    later = st.top.send(tree.tcp[0], b"c", b"d")
    st.run()
    assert st.top.completions == []
    (relayed,) = _lower(st).pending("send")
    _lower(st).complete(relayed)
    st.run()
    assert [c.nbl for c in st.top.completions] == [below, *failed, *later]
    first = status
    rest = (
        S.NDIS_STATUS_FAILURE if status is S.NDIS_STATUS_FAILURE else S.NDIS_STATUS_UPLOAD_REQUESTED
    )
    assert _statuses(st, failed) == [first, rest]
    assert _statuses(st, later) == [S.NDIS_STATUS_UPLOAD_REQUESTED] * 2
    assert _events(st) == ([RETRIEVE] if status is S.NDIS_STATUS_FAILURE else [])
    _end(st, tree)
