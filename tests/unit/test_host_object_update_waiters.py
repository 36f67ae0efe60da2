"""Requests waiting behind an update of a neighbor or path (spec §3.1: one update of an object
in flight at a time; a second update, or an invalidate, of it waits) whose connection is
closed meanwhile. Like any request of a connection that closed while it waited, each is
answered `NOT_FOUND`, as a fresh call on the closed connection is (docs/rpc.md `tcp.update`),
not `INVALID_STATE`; and a waiting connection that is still there is answered as before."""

from __future__ import annotations

from typing import Any

from chimneyd.testing.hostrig import HostRig, Reply


def _hold_next(rig: HostRig, call: str) -> Any:
    """Deliver until `call` is next, and take it out of the queue."""
    queue = rig.scheduler.queue
    while getattr(queue[0][1], "__name__", "") != call:
        rig.scheduler.run_one()
    return queue.popleft()


def _two_on_one_path() -> tuple[HostRig, int, int]:
    rig = HostRig()
    first, _ = rig.open()
    rig.offload(first)
    second, _ = rig.open()
    rig.offload(second)
    host = rig.host
    assert host.tcbs[first].path is host.tcbs[second].path
    return rig, first, second


def _update_held(rig: HostRig, conn: int) -> tuple[Reply, Any]:
    """An update of `conn`'s path, held at the NIC."""
    reply = Reply()
    rig.host.app_update_object(conn, "path", {"PathMtu": 1400}, reply)
    rig.host.after_batch()
    held = _hold_next(rig, "MiniportUpdateOffload")
    rig.run()
    assert not reply.done
    return reply, held


def _waiting_then_closed(request: str) -> tuple[Reply, Reply, HostRig, int]:
    rig, first, second = _two_on_one_path()
    host = rig.host
    update, held = _update_held(rig, first)
    waiting = Reply()
    if request == "update":
        host.app_update_object(second, "path", {"PathMtu": 1300}, waiting)
    else:
        host.app_invalidate(second, "path", waiting)
    rig.run()
    assert not waiting.done, "it waits for the update below (spec §3.1)"
    assert rig.call(host.app_close, second).value is True
    rig.release(held)
    return update, waiting, rig, second


def test_an_update_waiting_behind_one_whose_connection_closed_is_not_found() -> None:
    update, waiting, rig, second = _waiting_then_closed("update")
    assert update.error is None, update
    assert waiting.done and waiting.error is not None, waiting
    assert waiting.error.symbol == "NOT_FOUND", waiting
    fresh = rig.call(rig.host.app_update_object, second, "path", {"PathMtu": 1300})
    assert fresh.error.symbol == waiting.error.symbol
    assert rig.problems() == []


def test_an_invalidate_waiting_behind_an_update_whose_connection_closed_is_not_found() -> None:
    update, waiting, rig, _ = _waiting_then_closed("invalidate")
    assert update.error is None, update
    assert waiting.done and waiting.error is not None, waiting
    assert waiting.error.symbol == "NOT_FOUND", waiting
    assert rig.problems() == []


def test_an_update_waiting_behind_one_of_a_connection_still_there_goes_down() -> None:
    rig, first, second = _two_on_one_path()
    host = rig.host
    update, held = _update_held(rig, first)
    waiting = Reply()
    host.app_update_object(second, "path", {"PathMtu": 1300}, waiting)
    rig.run()
    rig.release(held)
    assert update.error is None and waiting.error is None, (update, waiting)
    assert host.tcbs[first].path.cached.PathMtu == 1300
    assert rig.problems() == []
