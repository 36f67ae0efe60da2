"""Forwarded SYNs the target does not process, which must still reach the host (docs/spec.md
§4.6, §5.2): one later in a forward than a mandatory upload request (after urgent data or a SYN
at RcvNxt).

After a mandatory reason the target stops processing the connection (the
`NdisTcpOffloadEventHandler` page) and queues every later segment for the ordinary path at the
terminate ("Handling the Reception of Urgent Data"): a SYN is such a segment, as the RST held
there already is (tests/unit/test_target_after_mandatory_request.py).

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_ACK, TH_SYN, TH_URG
from chimneyd.drivers.target.contexts import TcpContext
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from tests.unit.test_target_after_mandatory_request import _terminate
from tests.unit.test_target_challenge_acks import _answers
from tests.unit.test_target_ndis_rules import Conn, _segment

E = TcpOffloadEventType
REQUESTED = (E.TcpIndicateRetrieve, TcpUploadReason.UploadRequested)
URGENT = (E.TcpIndicateRetrieve, TcpUploadReason.ReceivedUrgentData)
#: where a SYN lies, from RcvNxt
WHERE = {"at_rcvnxt": 0, "in_window": 100, "outside": 1 << 30}


def _context(c: Conn) -> TcpContext:
    (nic,) = c.st.under_test
    assert isinstance(nic, OffloadTarget)
    (ctx,) = nic.connections()
    return ctx


def _syns_up(c: Conn) -> list[tuple[int, int]]:
    """The SYNs that went up the ordinary path, as (offset, flags)."""
    return [(off, fl) for _, off, _, fl in c.top.ordinary if fl & TH_SYN]


# -- a SYN after the stop in the same forward (spec §4.6, §5.2) ----------------------------------
@pytest.mark.parametrize("where", list(WHERE), ids=list(WHERE))
@pytest.mark.parametrize("cause", ["urgent", "syn_at_rcvnxt"])
def test_a_syn_after_the_stop_in_the_forward_reaches_the_host_at_the_terminate(
    cause: str, where: str
) -> None:
    """One forward: a segment that asks for a mandatory upload, then a SYN. The target has
    stopped processing: the SYN gives nothing up and is answered with nothing, and it is not
    lost either: it goes up the ordinary path at the terminate, after what the target held
    before it, once, for the host to process after the upload."""
    c = Conn().offload()
    first = _segment(c, 0, TH_URG | TH_ACK, b"!") if cause == "urgent" else _segment(c, 0, TH_SYN)
    fwds = c.top.forward(c.handle, first, _segment(c, WHERE[where], TH_SYN))
    c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * 2
    assert c.events() == [URGENT if cause == "urgent" else REQUESTED]
    assert _answers(c) == {}
    assert c.top.ordinary == []  # nothing up before the terminate: the host would forward it
    _terminate(c)  # the whole tree: nothing left offloaded for the drain check
    assert _syns_up(c) == [(WHERE[where], TH_SYN)], "the SYN after the stop did not reach the host"
    assert c.top.ordinary[-1][3] & TH_SYN, "the SYN went up before what was held ahead of it"
    assert c.st.drain_problems() == []
