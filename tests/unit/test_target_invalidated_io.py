"""I/O on a connection the host invalidated — its TCP, path or neighbor object (spec §3.5).

The invalidate pages forbid the target only to send on such a connection, and make it ask for
the connection's upload with `InvalidState`; that reason is mandatory (the
`NdisTcpOffloadEventHandler` reference page), and after a mandatory reason the target no
longer processes the connection. So the refusals below follow from the request, which the
target raises as soon as its invalidate completes, not from the invalidation itself: a send,
a receive post or a forward arriving afterwards completes NDIS_STATUS_UPLOAD_IN_PROGRESS, the
status the receive and forward pages give for a connection being uploaded, as the
resource-constraint page has it after `UploadRequested` (docs/spec.md §3.5 [INF]).

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_ACK, TH_PSH, build_segment
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from tests.unit.target_rig import OffloadedConn

UPLOAD = S.NDIS_STATUS_UPLOAD_IN_PROGRESS
INVALID_STATE = (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.InvalidState)


class Conn(OffloadedConn):
    """The protocol stub over the target, one connection offloaded on a MemoryWire."""

    def invalidate(self, what: str) -> None:
        """Invalidate the connection's TCP object, or its path, or its neighbor."""
        if what == "tcp":
            root = self.top.reference_tree(self.tree)
        elif what == "path":
            root = self.top.reference_tree(self.tree, tcp=[], with_path=True)
        else:
            root = self.top.reference_tree(self.tree, tcp=[], with_neighbor=True)
        self.top.invalidate(root)
        self.st.run()

    def events(self) -> list[tuple[TcpOffloadEventType, int]]:
        return [(e.event_type, e.info) for e in self.top.events]

    def segment(self, offset: int, data: bytes) -> bytes:
        w = self.wire
        ack = seq(w.isn, w.bytes_written)
        return build_segment(
            w.remote[1], w.local[1], seq(w.irs, offset), ack, TH_ACK | TH_PSH, data
        )


@pytest.mark.parametrize("what", ["tcp", "path", "neighbor"])
def test_an_invalidated_connection_is_asked_up_at_once_with_a_mandatory_reason(what: str) -> None:
    """Handling invalidated state objects, step 3: the target asks for the upload of every
    connection the invalidate touches, with InvalidState, a mandatory reason; it does so
    right after the invalidate completes, so no I/O can reach it in between."""
    c = Conn()
    c.invalidate(what)
    assert c.top.state_completions[-1].statuses[-1] == S.NDIS_STATUS_SUCCESS
    assert c.events() == [INVALID_STATE]
    assert TcpUploadReason.InvalidState.mandatory
    assert c.ctx.lifecycle.phase is Phase.UPLOAD_REQUESTED


@pytest.mark.parametrize("what", ["tcp", "path", "neighbor"])
def test_send_receive_and_forward_after_the_invalidate_complete_upload_in_progress(
    what: str,
) -> None:
    """After the mandatory request nothing is processed: the send (which the invalidate pages
    forbid anyway), the receive post and the forwarded segment all complete
    UPLOAD_IN_PROGRESS, nothing transferred, nothing written to the wire; the host keeps
    them and carries them after the upload."""
    c = Conn()
    c.invalidate(what)
    (send,) = c.top.send(c.handle, b"not on the wire")
    (recv,) = c.top.receive(c.handle, 10)
    (fwd,) = c.top.forward(c.handle, c.segment(0, b"forwarded"))
    c.st.run()
    assert (send.status, recv.status, fwd.status) == (UPLOAD, UPLOAD, UPLOAD)
    assert [n.tcp_offload_bytes_transferred for n in (send, recv, fwd)] == [0, 0, 0]
    assert c.wire.bytes_written == 0
    assert c.top.received_data(c.handle) == b""


def test_a_receive_posted_before_the_invalidate_waits_for_the_terminate() -> None:
    """A request posted before the invalidate is not refused by it: it stays posted, takes
    none of the bytes that arrive after the mandatory request (spec §5.2), and completes
    UPLOAD_IN_PROGRESS at the terminate (spec §6.2); those bytes go up the ordinary path."""
    c = Conn()
    (recv,) = c.top.receive(c.handle, 10)
    c.st.run()
    c.invalidate("path")
    assert recv.status == S.NDIS_STATUS_PENDING
    c.wire.peer_send(b"late")
    c.st.run()
    assert recv.status == S.NDIS_STATUS_PENDING
    c.top.terminate(c.top.reference_tree(c.tree, None, True, True, "delegated"))
    c.st.run()
    assert recv.status == UPLOAD and recv.tcp_offload_bytes_transferred == 0
    assert [data for _, _, data, _ in c.top.ordinary] == [b"late"]
    assert c.st.drain_problems() == []
