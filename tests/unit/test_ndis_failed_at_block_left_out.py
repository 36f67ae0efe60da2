"""A connection's TCP block left out of an initiate completion above the layer that failed it
(an IM that drops it: lost below, spec §6.3 [EMU]). NDIS keeps the lowest failing layer per
initiate walk (`Ndis._state_complete`, `NdisOffloadHandle.failed_at`); that walk's record
must go when the walk's completion reaches the host, whether or not the block came with it,
and the host still names the layer whose completion failed the connection (docs/rpc.md
`tcp.info`: the lowest layer whose initiate completion failed it; the hop trace showed it
before, and tests/integration/test_offload_refused_reason.py pins "nic0" for a connection
lost below after the NIC failed it).

Before, the record stayed in the broker for good (`Ndis._failed_at`: nothing drained it,
and no gauge or drain check showed it): "assert 1 == 0" (`{...: 'nic0'}`), and the host's
handle named no layer: "assert None == 'nic0'", where the hop trace had named the NIC."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host.adapter import refusal_info
from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply


def _left_out(root: OffloadBlock, handle: NdisOffloadHandle) -> None:
    """Unlink the block of `handle` from the tree `root` (its dependent list or its siblings)."""
    for block in walk(root):
        first = block.dependent_block_list
        if first is not None and first.offload_handle is handle:
            block.dependent_block_list = first.next_block
            return
        nxt = block.next_block
        if nxt is not None and nxt.offload_handle is handle:
            block.next_block = nxt.next_block
            return
    raise AssertionError(f"no block of {handle} in the tree")


def _dropped_by_the_im(rig: HostRig, conn: int) -> Reply:
    """Offload `conn`; the IM's completion to the host comes without its TCP block."""
    tcb = rig.host.tcbs[conn]
    reply = Reply()
    rig.host.app_offload(conn, None, reply)
    held = rig.hold_below("ProtocolInitiateOffloadComplete")  # the NIC's, to the IM
    _, _, (_, lower_root) = held
    assert tcb.handle is not None
    _left_out(lower_root.im_reserved.upper_root, tcb.handle)  # the IM's answer to the host
    with pytest.raises(SettledThenRaised, match="without the blocks of connections"):
        rig.release(held)
    rig.run()
    return reply


def test_a_block_left_out_above_the_failing_nic_leaves_no_record_and_names_the_nic() -> None:
    rig = HostRig(im=True)
    conn, _ = rig.open()
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    reply = _dropped_by_the_im(rig, conn)
    assert reply.done and reply.error is not None and "lost below" in str(reply.error), reply
    assert rig.ndis.walks_in_flight() == 0, "the walk's record stayed after its completion"
    refused = refusal_info(rig.host.tcbs[conn])
    assert refused is not None and refused["status"] is None, refused  # lost below
    assert refused["layer"] == "nic0", refused
