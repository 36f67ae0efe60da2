"""A FIN the target learnt of out of order goes up the ordinary path once (spec §3.6.3, §4.6,
§5.1). A forwarded segment carrying data and the FIN ahead of RcvNxt (a gap before it) waits
for the gap; at the terminate it goes up the ordinary path with its flags, FIN included — or
is held from RcvNxt after a mandatory upload request (spec §5.2) and goes up the same way.
The terminate must not indicate that FIN a second time at the same offset on its own.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_ACK, TH_FIN, TH_PSH, build_segment
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.status import TcpUploadReason
from tests.unit.test_target_upload_receive import Conn


def _segment(c: Conn, offset: int, flags: int, payload: bytes) -> bytes:
    """A segment from the peer at stream `offset`, acknowledging everything sent, header
    first as a forward carries it (spec §4.6)."""
    w = c.wire
    ack = seq(w.isn, w.bytes_written)
    return build_segment(w.remote[1], w.local[1], seq(w.irs, offset), ack, flags, payload)


@pytest.mark.parametrize(
    ("asked", "gap_fills"),
    [(False, False), (True, False), (True, True)],
    ids=["gap-open", "mandatory-request", "mandatory-request-then-the-gap"],
)
def test_a_forwarded_fin_ahead_of_rcvnxt_goes_up_the_ordinary_path_once(
    asked: bool, gap_fills: bool
) -> None:
    """The segment at 5..9 with the FIN waits for the gap 0..4; with `asked` the target then
    asks for a mandatory upload, and with `gap_fills` the gap's bytes arrive after that (held
    from RcvNxt, with the waiting segment). At the terminate every byte and the FIN go up the
    ordinary path, the FIN once, at 9."""
    c = Conn()
    c.top.forward(c.handle, _segment(c, 5, TH_FIN | TH_PSH | TH_ACK, b"tail"))
    c.st.run()
    if asked:
        c.nic.retrieve(c.ctx, TcpUploadReason.UploadRequested)
        c.st.run()
    if gap_fills:
        c.wire.peer_send(b"first")  # offsets 0-4, from the socket
        c.st.run()
    c.terminate()
    fin_at = [off + len(data) for _, off, data, flags in c.top.ordinary if flags & TH_FIN]
    assert fin_at == [9], f"FIN indicated {len(fin_at)} times, ending at {fin_at}"
    up = sorted((off, data) for _, off, data, _ in c.top.ordinary if data)
    assert up == ([(0, b"first")] if gap_fills else []) + [(5, b"tail")]
    assert c.st.drain_problems() == []
