"""The invariant checker names the layer that used a handle not its own (spec §1.5, §9 item 9).

A layer posts I/O only on the handles of the bindings it is the protocol edge of. When the
host posts a send or a receive on the handle an IM passed down (the IM's own offload handle
for the connection), the fault is the host's: the IM never saw the NBL, and the checker must
not blame it for passing down an NBL it was never given."""

from __future__ import annotations

import pytest

from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from tests.unit.invariants_rig import Rig
from tests.unit.test_invariants_im import CopyingIm


@pytest.mark.parametrize("ims", [1, 2])
@pytest.mark.parametrize("kind", ["send", "receive"])
def test_the_host_using_an_ims_handle_is_named(ims: int, kind: str) -> None:
    rig = Rig(ims)
    conn = rig.offload()
    im_handle = conn.nic_upper  # the lowest IM's handle, which the NIC indicates with
    if kind == "send":
        rig.ndis.NdisOffloadTcpSend(rig.host, im_handle, rig.nbl(conn, b"x"))
    else:
        rig.ndis.NdisOffloadTcpReceive(rig.host, im_handle, NetBufferList.for_receive(4))
    rig.run()
    found = rig.flagged("§9 item 9")
    assert found, rig.violations
    im = rig.ims[-1].name
    assert not any(f"{im} passed" in v for v in found), found
    assert any("tcpip" in v and f"{im}'s handle" in v for v in found), found


def test_an_im_passing_another_nbl_in_place_of_the_one_it_was_given_is_still_named() -> None:
    """The IM holds the send it was given and passes a copy down: the IM is named."""
    rig = Rig([CopyingIm])
    conn = rig.offload()
    rig.send(conn, b"x")
    found = rig.flagged("§9 item 9")
    assert any("im0 passed NBL" in v for v in found), found
    assert not any("tcpip posted" in v for v in found), found


def test_the_host_is_named_even_while_the_im_holds_a_send_it_was_given() -> None:
    """The IM holds a send it was given (one it failed, held behind the send still at the
    NIC, spec §9 item 2) when the host posts another on the IM's handle. Going by what the
    IM holds, that looked like the IM passing down an NBL in place of the held one; the
    broker says who called, and the host is named."""
    rig = Rig(1)
    conn = rig.offload()
    rig.send(conn, b"at the NIC")
    fail_next(rig.ims[0], "MiniportTcpOffloadSend", S.NDIS_STATUS_FAILURE)
    rig.send(conn, b"held by the IM")
    assert rig.violations == []
    rig.ndis.NdisOffloadTcpSend(rig.host, conn.nic_upper, rig.nbl(conn, b"x"))
    rig.run()
    found = rig.flagged("§9 item 9")
    assert any("tcpip posted" in v and "im0's handle" in v for v in found), found
    assert not any("im0 passed" in v for v in found), found
