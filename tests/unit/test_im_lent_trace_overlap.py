"""The trace a pass-through IM lends its own handle of a neighbor or path for a state call
(`passthrough._lend_trace`, spec §1.6) is given back at that call's completion. Two calls on
one object can overlap at the IM and complete in any order (an initiate linking a new
connection under the path, an update of the path): each completion must leave the handle
with no lent trace once no lending call is below, or the IM's handle keeps the trace of the
connection that asked for an earlier update, and every later call on the object (its
terminate, after that connection closed) records hops into a closed connection's trace."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.testing.factories import make_passthrough_on, make_target
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


def _rig(depth: int) -> HostRig:
    """host → `depth` pass-through IMs → nic0."""
    if depth == 1:
        return HostRig(im=True)
    rig = HostRig(targets=())
    upper: Any = rig.host
    for i in range(depth):
        im = make_passthrough_on(rig.ndis, rig.clock.timers(rig.ndis.post), f"im{i}")
        rig.ndis.bind(upper, im)
        upper = im
    target = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, "nic0")
    rig.targets["nic0"] = target
    rig.ndis.bind(upper, target)
    rig.run()
    return rig


def _lent_at_rest(rig: HostRig) -> list[str]:
    """IM entries whose handle carries another trace than the handle above it, with no call
    below: a connection's handles all carry its trace, a neighbor's or path's none."""
    return [
        str(entry)
        for layer in rig.layers().values()
        if isinstance(layer, PassthroughIm)
        for entry in layer.table
        if entry.handle.trace is not entry.upper.trace
    ]


@pytest.mark.parametrize("depth", [1, 2], ids=["one-im", "nested-ims"])
def test_an_initiate_and_two_updates_overlapping_on_a_path_leave_no_trace_lent(
    depth: int,
) -> None:
    rig = _rig(depth)
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
    assert _lent_at_rest(rig) == [], "a lent trace outlived every call on the object"
    # the first connection closes: nothing records into its trace any more
    assert rig.call(host.app_close, first).value is True
    held_records = first_trace.held()
    for conn in (second, third):
        assert rig.call(host.app_close, conn).value is True
    assert first_trace.held() == held_records, "hops of later calls went into a closed trace"
    assert rig.problems() == []
