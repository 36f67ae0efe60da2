"""A failed update of a neighbor or path (spec §3.4): "after a failure the target goes on as
before; the host terminates the objects that failed" — every connection on the object goes
up, and the object with the last of them. A connection offloaded while that is under way is
not linked under the failed object (which would then live as long as it does, never
terminated), but waits for it to be gone and goes under a fresh one."""

from __future__ import annotations

from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply


def _hold_next(rig: HostRig, call: str) -> object:
    """Deliver until `call` is next, and take it out of the queue."""
    queue = rig.scheduler.queue
    while getattr(queue[0][1], "__name__", "") != call:
        rig.scheduler.run_one()
    return queue.popleft()


def test_no_connection_goes_under_a_neighbor_whose_update_failed() -> None:
    rig = HostRig()
    host = rig.host
    first, _ = rig.open()
    rig.offload(first)
    old_neighbor = host.tcbs[first].path.parent
    # a second connection's offload is below (held at the NIC) when the update fails: it
    # goes up once it is over (`state_ops._terminate_dependents`), holding the neighbor
    second, _ = rig.open()
    offloading = Reply()
    host.app_offload(second, None, offloading)
    host.after_batch()
    held = _hold_next(rig, "MiniportInitiateOffload")
    rig.run()
    fail_next(rig.target, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    update = rig.call(
        host.app_update_object, first, "neighbor", {"DlDestinationAddress": b"\x02" * 6}
    )
    assert update.done and update.error is not None, update
    assert host.tcbs[first].state == "host"
    # a third connection comes now
    third, _ = rig.open()
    later = Reply()
    host.app_offload(third, None, later)
    rig.run()
    rig.release(held)
    assert offloading.done
    assert host.tcbs[second].state == "host", "the second one goes up after its offload"
    assert later.done and later.error is None, later
    assert host.tcbs[third].state == "offloaded"
    assert host.tcbs[third].path.parent is not old_neighbor, (
        "the third connection was linked under the neighbor whose update failed"
    )
    assert old_neighbor.handle is None or old_neighbor not in host.objects.values()
    assert rig.checker.violations == []
