"""A next-hop change (spec §3.4 (b)) right after NDIS_STATUS_OFFLOAD_RESUME: the host reads
the target's capabilities again then (spec §5.5, they may have changed), and the offload of
the move's new neighbor waits for them as a connection's offload does; it is refused, before
anything moved, when they no longer offer the path's chimney."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.target.contexts import NeighborContext
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import HostRig, Reply

HOP = bytes.fromhex("02000000002b")


def _resumed_capabilities_held(rig: HostRig) -> Any:
    """PAUSE, then RESUME with the host's capability query after it held below: deliver
    until the target's `MiniportOidRequest` is next and take it out of the queue."""
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_OFFLOAD_PAUSE, [])
    rig.run()
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_OFFLOAD_RESUME, [])
    queue = rig.scheduler.queue
    while True:
        assert queue, "the host never read the capabilities again at RESUME"
        layer, fn, _ = queue[0]
        if layer is rig.target and getattr(fn, "__name__", "") == "MiniportOidRequest":
            held = queue.popleft()
            break
        rig.scheduler.run_one()
    rig.run()
    return held


def _neighbors(rig: HostRig) -> list[NeighborContext]:
    return [c for c in rig.target.table if isinstance(c, NeighborContext)]


@pytest.mark.parametrize("im", [False, True])
def test_the_new_neighbor_waits_for_the_capabilities_read_at_resume(im: bool) -> None:
    rig = HostRig(im=im)
    host = rig.host
    conn, _ = rig.open()
    rig.offload(conn)
    held = _resumed_capabilities_held(rig)
    before = _neighbors(rig)
    moved = Reply()
    host.app_update_object(conn, "path", {"NextHop": HOP}, moved)
    rig.run()
    assert not moved.done, moved
    assert _neighbors(rig) == before, "the new neighbor went down before the capabilities"
    rig.release(held)
    assert moved.done and moved.error is None, moved
    path = host.tcbs[conn].path
    assert path is not None and path.parent is not None and path.parent.key[2] == HOP
    [ctx] = rig.contexts()
    assert ctx.path.neighbor.cached.DlDestinationAddress == HOP
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_the_move_is_refused_when_the_capabilities_read_at_resume_offer_no_chimney() -> None:
    """The target no longer offloads the path's IP version after the RESUME (spec §8): the
    new neighbor is not offloaded, nothing moves, the connection goes on offloaded under its
    neighbor (as a connection's offload is refused then, NDIS_STATUS naming NOT_SUPPORTED)."""
    rig = HostRig()
    host = rig.host
    conn, _ = rig.open()
    rig.offload(conn)
    held = _resumed_capabilities_held(rig)
    before = _neighbors(rig)
    moved = Reply()
    host.app_update_object(conn, "path", {"NextHop": HOP}, moved)
    rig.run()
    rig.target.ipv4 = False
    rig.release(held)
    assert moved.done and moved.error is not None, moved
    assert moved.error.symbol == "NDIS_STATUS" and "NOT_SUPPORTED" in str(moved.error)
    assert _neighbors(rig) == before
    tcb = host.tcbs[conn]
    assert tcb.state == "offloaded"
    assert tcb.path is not None and tcb.path.parent is not None
    assert tcb.path.parent.key[2] == bytes(6)
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
