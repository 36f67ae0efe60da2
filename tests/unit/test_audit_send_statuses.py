"""The delivery audit's rule for send completion statuses (spec §4.1).

`NdisTcpOffloadSendComplete` gives meaning to SUCCESS (every byte sent and acknowledged) and
says that any other status means the data was not all acknowledged: REQUEST_ABORTED and
UPLOAD_IN_PROGRESS are examples, not the list. A target that fails a send with
NDIS_STATUS_FAILURE (what the `fail_next` fault injects) is within the rules; a completion
whose status is no failure (an informational code), or that says SUCCESS over bytes not
transferred, is not. (One that says PENDING the broker refuses before the audit sees it.)"""

from __future__ import annotations

import pytest

from chimneyd.ndis.status import NdisStatus
from chimneyd.testing import MiniportStub, Stack

S = NdisStatus


def _sent_and_completed(status: NdisStatus, transferred: int | None = None) -> Stack:
    """The protocol stub straight over a miniport stub: one connection offloaded, one send of
    four bytes, completed by the stub with `status`."""
    st = Stack()
    st.bottom = lower = MiniportStub("lower", st.ndis)
    st.connect()
    tree = st.top.connection_tree([None])
    st.top.initiate(tree.root)
    st.run()
    lower.complete_state()
    st.run()
    (nbl,) = st.top.send(tree.tcp[0], b"abcd")
    st.run()
    lower.complete(nbl, status=status, transferred=transferred)
    st.run()
    return st


@pytest.mark.parametrize(
    "status",
    [S.NDIS_STATUS_FAILURE, S.NDIS_STATUS_RESOURCES, S.NDIS_STATUS_INVALID_STATE],
    ids=lambda s: s.name,
)
def test_a_send_failed_with_any_failure_status_is_legal(status: NdisStatus) -> None:
    st = _sent_and_completed(status)
    assert st.audit.violations == []


@pytest.mark.parametrize("transferred", [0, 2], ids=["nothing", "part"])
def test_a_failed_send_may_say_what_it_transferred(transferred: int) -> None:
    """A send that failed part way (one partial NBL, spec §9 item 3) is legal too."""
    st = _sent_and_completed(S.NDIS_STATUS_FAILURE, transferred)
    assert st.audit.violations == []


def test_a_send_completed_with_a_status_indication_code_is_still_flagged() -> None:
    """An informational code (an adapter status, not a failure) says nothing of the send."""
    st = _sent_and_completed(S.NDIS_STATUS_UPLOAD_ALL)
    assert any("completed with NDIS_STATUS_UPLOAD_ALL" in v for v in st.audit.violations)


def test_success_over_bytes_not_transferred_is_still_flagged() -> None:
    st = _sent_and_completed(S.NDIS_STATUS_SUCCESS, transferred=2)
    assert any("SUCCESS with 2 bytes not transferred" in v for v in st.audit.violations)
