"""A next-hop change (spec §3.4 (b)) whose new neighbor has failed (a failed update, spec
§3.4) or is invalidated (spec §3.5) waits for it to leave: nothing goes under such an
object (§3.1). It leaves once the host has sent its terminate [EMU, as for a new connection,
`offload.current`]: the move then goes under a fresh neighbor at once, not when that
terminate completes — which a teaming MUX may hold back while a failed NIC stays out (spec
§5.5, §9 item 8)."""

from __future__ import annotations

import pytest

from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fresh_neighbor import _hold_next
from tests.unit.test_host_next_hop_order import HOP

#: the neighbor every path goes under until moved (`offload.DEFAULT_NEXT_HOP`)
DEFAULT = bytes(6)
#: a new link-layer address for a neighbor update (spec §3.4 (a))
ARP = bytes.fromhex("020000000099")


@pytest.mark.parametrize("how", ["failed", "invalidated"])
def test_a_move_waiting_for_its_new_neighbor_to_leave_goes_once_its_terminate_is_sent(
    how: str,
) -> None:
    rig = HostRig()
    host = rig.host
    # c3's path is under HOP's neighbor; c1's, and c2's, under the default one
    c3, _ = rig.open(remote=("127.0.0.2", 80))
    rig.offload(c3)
    assert rig.call(host.app_update_object, c3, "path", {"NextHop": HOP}).error is None
    c1, _ = rig.open(remote=("127.0.0.1", 80))
    rig.offload(c1)
    old = host.tcbs[c1].path.parent
    assert old is not None and old.key[2] == DEFAULT
    # c2's offload is held at the NIC: it keeps the default neighbor from going meanwhile
    c2, _ = rig.open(remote=("127.0.0.1", 80))
    offloading = Reply()
    host.app_offload(c2, None, offloading)
    initiate = _hold_next(rig, "MiniportInitiateOffload")
    rig.run()
    if how == "failed":
        fail_next(rig.target, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
        update = rig.call(host.app_update_object, c1, "neighbor", {"DlDestinationAddress": ARP})
        assert update.done and update.error is not None, update
        assert old.lifecycle.phase is Phase.FAILED
    else:
        invalidated = rig.call(host.app_invalidate, c1, "neighbor")
        assert invalidated.done and invalidated.error is None, invalidated
        assert old.lifecycle.phase is Phase.INVALIDATED
    assert host.tcbs[c1].state == "host"
    # c3's path back under the default next hop: that neighbor takes nothing new (§3.1)
    moved = Reply()
    host.app_update_object(c3, "path", {"NextHop": DEFAULT}, moved)
    rig.run()
    assert not moved.done and host.leftovers()["moves_waiting"] == 1, moved
    # c2's initiate is back: the host takes it up, the old neighbor with it; held below
    rig.scheduler.queue.append(initiate)
    terminate = _hold_next(rig, "MiniportTerminateOffload")
    rig.run()
    assert old.lifecycle.phase is Phase.TERMINATING
    # the old neighbor is leaving: the move went under a fresh one, not waiting for it
    assert moved.done and moved.error is None, (moved, host.leftovers())
    path = host.tcbs[c3].path
    assert path is not None and path.parent is not None and path.parent is not old
    assert path.parent.key == old.key and path.parent.lifecycle.phase is Phase.OFFLOADED
    rig.release(terminate)
    assert offloading.done and host.tcbs[c2].state == "host", offloading
    assert old.handle is None and not host.leaving
    assert host.tcbs[c3].path is path and path.parent.lifecycle.phase is Phase.OFFLOADED
    for conn in (c1, c2, c3):
        assert rig.call(host.app_close, conn).error is None
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_a_move_that_waited_for_its_new_neighbor_to_leave_is_refused_by_a_withheld_target() -> None:
    """The move waits for a failed neighbor to leave; meanwhile one of the host's own reasons
    comes to hold for the target (a media disconnect, spec §6.2): the host takes every
    connection up and offloads nothing new there, so once the failed neighbor's terminate is
    sent the move is refused, nothing moved, no neighbor offloaded."""
    rig = HostRig()
    host = rig.host
    c3, _ = rig.open(remote=("127.0.0.2", 80))
    rig.offload(c3)
    assert rig.call(host.app_update_object, c3, "path", {"NextHop": HOP}).error is None
    c1, _ = rig.open(remote=("127.0.0.1", 80))
    rig.offload(c1)
    c2, _ = rig.open(remote=("127.0.0.1", 80))
    offloading = Reply()
    host.app_offload(c2, None, offloading)
    initiate = _hold_next(rig, "MiniportInitiateOffload")
    rig.run()
    fail_next(rig.target, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    update = rig.call(host.app_update_object, c1, "neighbor", {"DlDestinationAddress": ARP})
    assert update.done and update.error is not None, update
    moved = Reply()
    host.app_update_object(c3, "path", {"NextHop": DEFAULT}, moved)
    rig.run()
    assert not moved.done and host.leftovers()["moves_waiting"] == 1, moved
    host.host_event("nic0", "media_disconnect", True)
    rig.scheduler.queue.append(initiate)
    rig.run()
    assert moved.done and moved.error is not None, moved
    assert moved.error.symbol == "INVALID_STATE" and "withholds" in str(moved.error), moved
    assert offloading.done
    assert [host.tcbs[c].state for c in (c1, c2, c3)] == ["host", "host", "host"]
    assert not rig.target.table and not host.objects and not host.leaving
    host.host_event("nic0", "media_disconnect", False)
    for conn in (c1, c2, c3):
        assert rig.call(host.app_close, conn).error is None
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
