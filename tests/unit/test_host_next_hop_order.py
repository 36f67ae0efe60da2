"""Requests on one connection after a next-hop change of its path (spec §3.4 (b)) take effect
after it: an update or an invalidate of "the connection's neighbor" made while the move is
below is of the neighbor the move puts the path under, not of the one it leaves (which goes
once nothing hangs under it, spec §3.4 step 4, taking the update with it)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.target.contexts import NeighborContext
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import HostRig, Reply

HOP = bytes.fromhex("02000000002b")
ARP = bytes.fromhex("020000000099")


def _moving(rig: HostRig) -> tuple[int, Reply]:
    """An offloaded connection, its path's move to HOP asked and not yet down."""
    conn, _ = rig.open()
    rig.offload(conn)
    moved = Reply()
    rig.host.app_update_object(conn, "path", {"NextHop": HOP}, moved)
    return conn, moved


@pytest.mark.parametrize("im", [False, True])
def test_an_arp_update_after_a_move_reaches_the_new_neighbor(im: bool) -> None:
    rig = HostRig(im=im)
    host = rig.host
    conn, moved = _moving(rig)
    arp = rig.call(host.app_update_object, conn, "neighbor", {"DlDestinationAddress": ARP})
    assert moved.done and moved.error is None, moved
    assert arp.done and arp.error is None, arp
    path = host.tcbs[conn].path
    assert path is not None and path.parent is not None
    assert path.parent.key[2] == HOP
    assert path.parent.cached is not None
    assert path.parent.cached.DlDestinationAddress == ARP, "the update went to the old neighbor"
    [ctx] = rig.contexts()
    assert ctx.path.neighbor.cached.DlDestinationAddress == ARP
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_an_invalidate_of_the_neighbor_after_a_move_is_of_the_new_one() -> None:
    """The connection's neighbor invalidated (spec §3.5) right behind the move: the new
    neighbor is, and the connection goes up with it."""
    rig = HostRig()
    host = rig.host
    conn, moved = _moving(rig)
    host.after_batch()
    # the target has moved the path (its update is done there, not yet back at the host)
    queue = rig.scheduler.queue
    while True:
        ran = getattr(queue[0][1], "__name__", "")
        rig.scheduler.run_one()
        if ran == "MiniportUpdateOffload":
            break
    invalidated = rig.call(host.app_invalidate, conn, "neighbor")
    assert moved.done and moved.error is None, moved
    assert invalidated.done and invalidated.error is None, invalidated
    assert host.tcbs[conn].state == "host"
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_no_new_neighbor_is_offloaded_to_a_paused_target() -> None:
    """After NDIS_STATUS_OFFLOAD_PAUSE the host starts no new offloads (spec §5.5): a move
    whose new neighbor is not offloaded yet is refused as a connection's offload is
    (NDIS_STATUS naming OFFLOAD_PAUSE), nothing moves, and the connection goes on offloaded
    under its neighbor; after the RESUME the move goes."""
    rig = HostRig()
    host = rig.host
    conn, _ = rig.open()
    rig.offload(conn)
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_OFFLOAD_PAUSE, [])
    rig.run()
    neighbors = [c for c in rig.target.table if isinstance(c, NeighborContext)]
    moved = rig.call(host.app_update_object, conn, "path", {"NextHop": HOP})
    assert moved.done and moved.error is not None, moved
    assert moved.error.symbol == "NDIS_STATUS" and "OFFLOAD_PAUSE" in str(moved.error)
    assert [c for c in rig.target.table if isinstance(c, NeighborContext)] == neighbors
    tcb = host.tcbs[conn]
    assert tcb.state == "offloaded"
    assert tcb.path is not None and tcb.path.parent is not None
    assert tcb.path.parent.key[2] == bytes(6)
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_OFFLOAD_RESUME, [])
    rig.run()
    moved = rig.call(host.app_update_object, conn, "path", {"NextHop": HOP})
    assert moved.done and moved.error is None, moved
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_objects_moving_says_a_move_not_an_update() -> None:
    """`HostStack.objects_moving` (what tests wait on for "the move below") is true while a
    next-hop change is under way, not while an ARP or MTU update of an object is."""
    rig = HostRig()
    host = rig.host
    conn, _ = rig.open()
    rig.offload(conn)
    arp = Reply()
    host.app_update_object(conn, "neighbor", {"DlDestinationAddress": ARP}, arp)
    assert not host.objects_moving(), "an ARP update is no move"
    rig.run()
    assert arp.done and arp.error is None, arp
    moved = Reply()
    host.app_update_object(conn, "path", {"NextHop": HOP}, moved)
    assert host.objects_moving()
    rig.run()
    assert moved.done and moved.error is None, moved
    assert not host.objects_moving()
    rig.call(host.app_close, conn)
    assert rig.problems() == []


def test_a_move_back_while_the_old_neighbor_is_being_terminated() -> None:
    """A→B, then back to A while A's terminate (step 4 of the first move) is still below: A is
    leaving (no operation on an object being terminated, spec §3.1), so the move offloads a
    fresh neighbor for A's next hop at once and moves the path under it, not waiting for a
    terminate a teaming MUX may hold back [EMU]; the old A goes when its terminate is done."""
    rig = HostRig()
    host = rig.host
    conn, moved = _moving(rig)
    host.after_batch()
    queue = rig.scheduler.queue
    while getattr(queue[0][1], "__name__", "") != "MiniportTerminateOffload":
        rig.scheduler.run_one()
    held = queue.popleft()  # the old neighbor's terminate, below
    assert moved.done and moved.error is None, moved
    old = host.objects[("neighbor", host.tcbs[conn].binding.id, bytes(6))]
    back = rig.call(host.app_update_object, conn, "path", {"NextHop": bytes(6)})
    assert back.done and back.error is None, back
    assert host.leftovers()["moves_waiting"] == 0
    path = host.tcbs[conn].path
    assert path is not None and path.parent is not None
    assert path.parent.key[2] == bytes(6) and path.parent is not old
    [ctx] = rig.contexts()
    assert ctx.path.neighbor.upper is path.parent.handle
    assert old.lifecycle.phase is Phase.TERMINATING  # still below, never used again
    rig.release(held)
    assert old.lifecycle.phase is not Phase.TERMINATING
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_no_new_neighbor_is_offloaded_to_a_target_the_host_withholds() -> None:
    """While one of the host's own reasons holds for the target (a media disconnect, spec
    §6.2) the host offloads nothing new to it: a move asked then, whose new neighbor's old
    object is still being terminated below (leaving: a fresh one would be offloaded), is
    refused, nothing moved, no neighbor offloaded, and the old one goes when its terminate
    is done."""
    rig = HostRig()
    host = rig.host
    c1, _ = rig.open(remote=("127.0.0.1", 80))
    c2, _ = rig.open(remote=("127.0.0.2", 80))
    for conn in (c1, c2):
        rig.offload(conn)
    assert rig.call(host.app_update_object, c1, "path", {"NextHop": HOP}).error is None
    back = Reply()  # c1's path back under the default neighbor: HOP's neighbor goes
    host.app_update_object(c1, "path", {"NextHop": bytes(6)}, back)
    host.after_batch()
    queue = rig.scheduler.queue
    while getattr(queue[0][1], "__name__", "") != "MiniportTerminateOffload":
        rig.scheduler.run_one()
    held = queue.popleft()
    assert back.done and back.error is None, back
    host.host_event("nic0", "media_disconnect", True)
    moved = Reply()  # asked while c2 is still offloaded: its upload is not delivered yet
    host.app_update_object(c2, "path", {"NextHop": HOP}, moved)
    rig.run()
    assert [host.tcbs[c].state for c in (c1, c2)] == ["host", "host"]
    rig.release(held)
    assert moved.done and moved.error is not None, moved
    # refused INVALID_STATE: the host withholds the target, or has taken c2 up for it first
    assert moved.error.symbol == "INVALID_STATE", moved
    assert not [c for c in rig.target.table if isinstance(c, NeighborContext)]
    assert not host.objects
    host.host_event("nic0", "media_disconnect", False)
    for conn in (c1, c2):
        rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
