"""The trace a pass-through IM lends its own handle of a neighbor or path for a state call
(`passthrough._lend_trace`, spec §1.6) is given back at that call's completion. Two calls on
one object can overlap at the IM and complete in any order (an initiate linking a new
connection under the path, an update of the path): each completion must leave the handle
with no lent trace once no lending call is below, or the IM's handle keeps the trace of the
connection that asked for an earlier update, and every later call on the object (its
terminate, after that connection closed) records hops into a closed connection's trace."""

from __future__ import annotations

from typing import Any

from chimneyd.drivers.host.tcb import HostObject
from chimneyd.testing.hostrig import HostRig, Reply


def _hold_at(rig: HostRig, layer: Any, call: str) -> Any:
    """Deliver until `layer`'s `call` is next, and take it out of the queue."""
    queue = rig.scheduler.queue
    while not (
        getattr(queue[0][1], "__name__", "") == call
        and getattr(queue[0][1], "__self__", None) is layer
    ):
        rig.scheduler.run_one()
    return queue.popleft()


def _im_object_traces(rig: HostRig) -> list[Any]:
    """The traces of the IM's handles of neighbors and paths (none lends one of its own)."""
    im: Any = rig.layers()["im-nic0"]
    return [e.handle.trace for e in im.table if isinstance(e.upper.owner, HostObject)]


def test_an_initiate_and_two_updates_overlapping_on_a_path_leave_no_trace_lent() -> None:
    rig = HostRig(im=True)
    host = rig.host
    first, _ = rig.open()
    rig.offload(first)
    second, _ = rig.open()
    rig.offload(second)
    path = host.tcbs[first].path
    assert host.tcbs[second].path is path
    # a third connection's initiate links it under the path; the first connection's update of
    # the path is asked before the initiate reaches the IM, so the IM sees the host's path
    # handle with the first connection's trace lent for the initiate (spec §1.6)
    third, _ = rig.open()
    offloading = Reply()
    host.app_offload(third, None, offloading)
    host.after_batch()
    update = Reply()
    host.app_update_object(first, "path", {"PathMtu": 1400}, update)
    held = _hold_at(rig, rig.target, "MiniportInitiateOffload")
    rig.run()
    assert update.done and update.error is None, update
    # a second update of the path, by the second connection, while the initiate is below;
    # the initiate completes first, then the update
    again = Reply()
    host.app_update_object(second, "path", {"PathMtu": 1300}, again)
    held_update = _hold_at(rig, rig.target, "MiniportUpdateOffload")
    rig.run()
    rig.release(held)
    assert offloading.done and offloading.error is None, offloading
    rig.release(held_update)
    assert again.done and again.error is None, again
    first_trace = host.tcbs[first].trace
    assert all(t is None for t in _im_object_traces(rig)), (
        "the IM's path or neighbor handle kept a lent trace after every call on it completed"
    )
    # the first connection closes: nothing records into its trace any more
    assert rig.call(host.app_close, first).value is True
    held_records = first_trace.held()
    for conn in (second, third):
        assert rig.call(host.app_close, conn).value is True
    assert first_trace.held() == held_records, "hops of later calls went into a closed trace"
    assert rig.problems() == []
